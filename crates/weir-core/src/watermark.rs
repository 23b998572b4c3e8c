//! Combining watermarks across an operator's input channels (Flink's `StatusWatermarkValve`).
//!
//! An operator's input watermark is the minimum over its active channels; a channel that is idle
//! (its source has nothing to read) is left out until it becomes active again, so one quiet
//! partition does not hold event time back. The combined watermark never goes backwards: a channel
//! that comes back active behind it does not count until it catches up. Pure: the runtime feeds it
//! what arrives on each channel and forwards what it returns.

/// Event time in milliseconds since the epoch. `i64::MIN` before any watermark, `i64::MAX` at
/// the end of input (every event-time timer fires).
pub type Timestamp = i64;
pub const MIN_WATERMARK: Timestamp = i64::MIN;
pub const MAX_WATERMARK: Timestamp = i64::MAX;

/// What the operator emits after an input event, in this order: a watermark, then a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValveOutput {
    /// The combined watermark advanced to this value.
    pub watermark: Option<Timestamp>,
    /// The operator became idle (`Some(false)`: every channel is idle) or active again.
    pub active: Option<bool>,
}

impl ValveOutput {
    fn watermark(w: Timestamp) -> Option<ValveOutput> {
        Some(ValveOutput { watermark: Some(w), active: None })
    }
    fn status(active: bool) -> Option<ValveOutput> {
        Some(ValveOutput { watermark: None, active: Some(active) })
    }
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    watermark: Timestamp,
    active: bool,
    /// Counts towards the minimum: active and not behind the combined watermark.
    aligned: bool,
}

#[derive(Debug, Clone)]
pub struct WatermarkValve {
    channels: Vec<Channel>,
    last_output: Timestamp,
    idle: bool,
}

impl WatermarkValve {
    pub fn new(channels: usize) -> Self {
        let channel = Channel { watermark: MIN_WATERMARK, active: true, aligned: true };
        WatermarkValve { channels: vec![channel; channels], last_output: MIN_WATERMARK, idle: false }
    }

    /// The combined watermark so far.
    pub fn watermark(&self) -> Timestamp {
        self.last_output
    }

    /// A watermark arrived on `channel`. A channel's watermarks only go forward; an older one is
    /// ignored.
    pub fn on_watermark(&mut self, channel: usize, watermark: Timestamp) -> Option<ValveOutput> {
        let c = &mut self.channels[channel];
        if !c.active || watermark <= c.watermark {
            return None;
        }
        c.watermark = watermark;
        if !c.aligned && watermark >= self.last_output {
            c.aligned = true;
        }
        self.advance()
    }

    /// `channel` became idle (`false`) or active again (`true`).
    pub fn on_status(&mut self, channel: usize, active: bool) -> Option<ValveOutput> {
        let last_output = self.last_output;
        let c = &mut self.channels[channel];
        if c.active == active {
            return None;
        }
        c.active = active;
        if active {
            c.aligned = c.watermark >= last_output;
            if self.idle {
                self.idle = false;
                return ValveOutput::status(true);
            }
            return None;
        }
        c.aligned = false;
        if self.channels.iter().all(|c| !c.active) {
            self.idle = true;
            // The channels may carry event time the combined watermark never reached: flush it.
            let highest = self.channels.iter().map(|c| c.watermark).max().unwrap_or(MIN_WATERMARK);
            let watermark = (highest > self.last_output).then_some(highest);
            if let Some(w) = watermark {
                self.last_output = w;
            }
            return Some(ValveOutput { watermark, active: Some(false) });
        }
        self.advance()
    }

    /// Emits the minimum over aligned channels when it moved forward.
    fn advance(&mut self) -> Option<ValveOutput> {
        let min = self.channels.iter().filter(|c| c.active && c.aligned).map(|c| c.watermark).min()?;
        if min > self.last_output {
            self.last_output = min;
            return ValveOutput::watermark(min);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_minimum_of_the_active_channels_advances() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.on_watermark(0, 10), None, "channel 1 has no watermark yet");
        assert_eq!(v.on_watermark(1, 5), ValveOutput::watermark(5));
        assert_eq!(v.on_watermark(1, 20), ValveOutput::watermark(10));
        assert_eq!(v.on_watermark(1, 15), None, "a channel never goes back");
    }

    #[test]
    fn idle_channels_do_not_hold_event_time_back_and_rejoin_once_caught_up() {
        let mut v = WatermarkValve::new(2);
        v.on_watermark(0, 100);
        assert_eq!(v.on_status(1, false), ValveOutput::watermark(100), "only channel 0 counts");
        assert_eq!(v.on_watermark(0, 200), ValveOutput::watermark(200));
        // Channel 1 comes back behind: it does not pull the watermark back, nor hold it.
        assert_eq!(v.on_status(1, true), None);
        assert_eq!(v.on_watermark(1, 150), None);
        assert_eq!(v.on_watermark(0, 300), ValveOutput::watermark(300));
        // Once caught up, it counts again.
        assert_eq!(v.on_watermark(1, 310), None);
        assert_eq!(v.on_watermark(0, 400), ValveOutput::watermark(310));
    }

    #[test]
    fn all_idle_makes_the_operator_idle_until_one_returns() {
        let mut v = WatermarkValve::new(2);
        v.on_watermark(0, 7);
        v.on_watermark(1, 9);
        assert_eq!(v.watermark(), 7);
        assert_eq!(v.on_status(1, false), None, "channel 0 still holds it at 7");
        // The last channel going idle flushes the highest watermark, then the operator is idle.
        assert_eq!(v.on_status(0, false), Some(ValveOutput { watermark: Some(9), active: Some(false) }));
        assert_eq!(v.on_status(0, true), ValveOutput::status(true));
    }

    proptest! {
        /// Whatever arrives, the output never goes back and never passes an aligned active
        /// channel's watermark.
        #[test]
        fn output_is_monotonic_and_bounded(events in proptest::collection::vec((0usize..3, 0i64..1000, 0u8..10), 1..200)) {
            let mut v = WatermarkValve::new(3);
            let mut last = MIN_WATERMARK;
            for (channel, ts, action) in events {
                let out = match action {
                    0 => v.on_status(channel, false),
                    1 => v.on_status(channel, true),
                    _ => v.on_watermark(channel, ts),
                };
                if let Some(w) = out.and_then(|o| o.watermark) {
                    prop_assert!(w > last);
                    last = w;
                }
                prop_assert_eq!(v.watermark(), last);
                if v.channels.iter().any(|c| c.active) {
                    for c in v.channels.iter().filter(|c| c.active && c.aligned) {
                        prop_assert!(c.watermark >= last || last == MIN_WATERMARK);
                    }
                }
            }
        }
    }
}

//! Event time for a stream: where records' timestamps come from and how watermarks follow them
//! (Flink's `WatermarkStrategy`). A strategy is set on a source (`StreamEnv::from_source`) or
//! anywhere downstream (`assign_timestamps_and_watermarks`); its generator runs per subtask and
//! emits periodically (`pipeline.auto-watermark-interval`, 200 ms by default) or on events.

use std::sync::Arc;
use std::time::Duration;
use weir_core::watermark::{Timestamp, MAX_WATERMARK, MIN_WATERMARK};
use weir_runtime::channel::Record;
use weir_runtime::graph::{Instance, NodeSpec};
use weir_runtime::metrics::OperatorMetrics;
use weir_runtime::operator::{CapturedOperator, OperatorContext};
use weir_runtime::{ChainEvent, Output, ProcessingTimeService, SplitEvent, SplitIndex, TaskResult, WatermarkStatus};

/// Where a generator puts its watermarks and idleness.
#[derive(Debug, Default)]
pub struct WatermarkOutput {
    watermark: Option<Timestamp>,
    idle: bool,
}

impl WatermarkOutput {
    /// Event time reached `watermark`: no record with an earlier timestamp is expected. Only a
    /// watermark above the last one is forwarded.
    pub fn emit_watermark(&mut self, watermark: Timestamp) {
        self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
    }

    /// No records for now: downstream operators do not wait for this stream's event time until
    /// a record or a watermark comes again.
    pub fn mark_idle(&mut self) {
        self.idle = true;
    }
}

/// Generates watermarks from the timestamps seen (Flink's `WatermarkGenerator`).
pub trait WatermarkGenerator<T>: Send {
    /// Called for every record, after its timestamp is assigned; may emit (punctuated watermarks).
    fn on_event(&mut self, record: &T, timestamp: Timestamp, output: &mut WatermarkOutput);
    /// Called every `pipeline.auto-watermark-interval`.
    fn on_periodic_emit(&mut self, output: &mut WatermarkOutput);
}

/// Watermarks that trail the highest timestamp seen by a fixed delay: `max - delay - 1`, as
/// Flink's `BoundedOutOfOrdernessWatermarks` (a record `delay` behind the newest is still on time).
#[derive(Debug, Clone)]
pub struct BoundedOutOfOrderness {
    delay: Timestamp,
    max_timestamp: Option<Timestamp>,
}

impl BoundedOutOfOrderness {
    pub fn new(max_out_of_orderness: Duration) -> Self {
        BoundedOutOfOrderness { delay: max_out_of_orderness.as_millis() as Timestamp, max_timestamp: None }
    }
}

impl<T> WatermarkGenerator<T> for BoundedOutOfOrderness {
    fn on_event(&mut self, _: &T, timestamp: Timestamp, _: &mut WatermarkOutput) {
        self.max_timestamp = Some(self.max_timestamp.map_or(timestamp, |m| m.max(timestamp)));
    }
    fn on_periodic_emit(&mut self, output: &mut WatermarkOutput) {
        if let Some(max) = self.max_timestamp {
            output.emit_watermark(max.saturating_sub(self.delay).saturating_sub(1));
        }
    }
}

type TimestampAssigner<T> = Arc<dyn Fn(&T, Option<Timestamp>) -> Timestamp + Send + Sync>;
type GeneratorFactory<T> = Arc<dyn Fn() -> Box<dyn WatermarkGenerator<T>> + Send + Sync>;

/// How a stream gets event timestamps and watermarks.
pub struct WatermarkStrategy<T> {
    generator: GeneratorFactory<T>,
    assigner: Option<TimestampAssigner<T>>,
    idleness: Option<Duration>,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        WatermarkStrategy {
            generator: self.generator.clone(),
            assigner: self.assigner.clone(),
            idleness: self.idleness,
        }
    }
}

impl<T: 'static> WatermarkStrategy<T> {
    /// Timestamps never go back: the watermark is the highest timestamp seen (minus 1 ms).
    pub fn for_monotonous_timestamps() -> Self {
        Self::for_bounded_out_of_orderness(Duration::ZERO)
    }

    /// Records arrive at most `max_out_of_orderness` behind the newest one.
    pub fn for_bounded_out_of_orderness(max_out_of_orderness: Duration) -> Self {
        Self::for_generator(move || BoundedOutOfOrderness::new(max_out_of_orderness))
    }

    /// A custom generator, created once per subtask.
    pub fn for_generator<G: WatermarkGenerator<T> + 'static>(create: impl Fn() -> G + Send + Sync + 'static) -> Self {
        WatermarkStrategy { generator: Arc::new(move || Box::new(create())), assigner: None, idleness: None }
    }

    /// Takes each record's event time from the record (`previous` is the timestamp it already
    /// has, if any). Without an assigner, records keep the timestamp their source gave them.
    pub fn with_timestamp_assigner(
        mut self,
        assigner: impl Fn(&T, Option<Timestamp>) -> Timestamp + Send + Sync + 'static,
    ) -> Self {
        self.assigner = Some(Arc::new(assigner));
        self
    }

    /// Marks the stream idle after `timeout` of processing time without records, so downstream
    /// operators do not wait for it; a record makes it active again.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }
}

/// Builds a [`TimestampsAndWatermarks`] operator for each subtask.
pub(crate) struct WatermarksSpec<T> {
    pub strategy: WatermarkStrategy<T>,
}

impl<T: Record> NodeSpec for WatermarksSpec<T> {
    fn instantiate(
        &self,
        ctx: OperatorContext,
        downstream: Box<dyn std::any::Any + Send>,
        _side_outputs: weir_runtime::channel::SideOutputs,
    ) -> TaskResult<Instance> {
        let next = weir_runtime::channel::unerase_output::<T>(downstream)?;
        let metrics = ctx.metrics.clone();
        let op = TimestampsAndWatermarks::new(&self.strategy, &ctx, next, metrics);
        Ok(Instance::Operator(weir_runtime::channel::erase_output::<T>(Box::new(op))))
    }
}

/// The event time of one stream of records: the whole input, or one split of a split source.
struct Clock<T> {
    generator: Box<dyn WatermarkGenerator<T>>,
    /// The highest watermark its generator emitted.
    watermark: Timestamp,
    /// Records seen, and how many there were at the last wake-up with activity, when that was:
    /// idleness is noticed at wake-ups, so a record costs a counter, not a clock read (as
    /// Flink's `IdlenessTimer`).
    records: u64,
    records_at_activity: u64,
    last_activity_at: Timestamp,
    idle: bool,
}

impl<T> Clock<T> {
    fn new(strategy: &WatermarkStrategy<T>, now: Timestamp) -> Self {
        Clock {
            generator: (strategy.generator)(),
            watermark: MIN_WATERMARK,
            records: 0,
            records_at_activity: 0,
            last_activity_at: now,
            idle: false,
        }
    }

    /// Takes a record's timestamp; true when the generator emitted or the clock was idle (the
    /// stream's watermark or status may change).
    #[inline]
    fn on_event(&mut self, record: &T, timestamp: Timestamp) -> bool {
        self.records += 1;
        let mut output = WatermarkOutput::default();
        self.generator.on_event(record, timestamp, &mut output);
        let was_idle = std::mem::replace(&mut self.idle, false);
        self.take(output) || was_idle
    }

    /// A wake-up: periodic emission and idleness.
    fn on_wakeup(&mut self, now: Timestamp, periodic: bool, idleness: Option<Timestamp>) {
        let mut output = WatermarkOutput::default();
        if periodic {
            self.generator.on_periodic_emit(&mut output);
        }
        if self.records != self.records_at_activity {
            self.records_at_activity = self.records;
            self.last_activity_at = now;
        }
        if idleness.is_some_and(|timeout| now - self.last_activity_at >= timeout) {
            output.mark_idle();
        }
        self.take(output);
    }

    fn take(&mut self, output: WatermarkOutput) -> bool {
        let mut changed = false;
        if let Some(w) = output.watermark {
            if w > self.watermark {
                self.watermark = w;
                self.idle = false;
                changed = true;
            }
        }
        if output.idle && !self.idle {
            self.idle = true;
            changed = true;
        }
        changed
    }
}

/// Assigns timestamps and emits watermarks (Flink's `TimestampsAndWatermarksOperator`).
/// Watermarks from upstream are dropped, except the final one (end of input or drain), which
/// passes: this operator's generator defines the stream's event time.
///
/// Behind a split source it keeps one generator per split and emits the minimum over the splits
/// that are not idle (Flink's per-split watermarks): a partition that lags holds event time back
/// instead of seeing its records dropped as late. A subtask without splits is idle.
pub(crate) struct TimestampsAndWatermarks<T> {
    strategy: WatermarkStrategy<T>,
    /// The whole input's clock (records that come without a split).
    main: Clock<T>,
    /// Per-split clocks, by split index, once the source said it reads splits.
    splits: Option<Vec<Option<Clock<T>>>>,
    assigner: Option<TimestampAssigner<T>>,
    next: Box<dyn Output<T>>,
    clock: ProcessingTimeService,
    interval: Option<Duration>,
    idleness: Option<Timestamp>,
    /// The last watermark sent downstream (restored: the one sent before the snapshot).
    current: Timestamp,
    /// Whether `current` was sent in this run: a restored watermark is sent again first, so the
    /// operators downstream, whose channels start from nothing, know where this stream is.
    announced: bool,
    idle: bool,
    /// The operator its watermark is recorded under in snapshots.
    operator_id: weir_core::OperatorId,
    metrics: OperatorMetrics,
}

impl<T: Record> TimestampsAndWatermarks<T> {
    /// `metrics`: where records in are counted (the operator's own, or nothing when the strategy
    /// runs inside a source).
    pub(crate) fn new(
        strategy: &WatermarkStrategy<T>,
        ctx: &OperatorContext,
        next: Box<dyn Output<T>>,
        metrics: OperatorMetrics,
    ) -> Self {
        let clock = ctx.processing_time.clone();
        let interval = ctx.auto_watermark_interval;
        let idleness = strategy.idleness.map(|d| d.as_millis() as Timestamp);
        if interval.is_some() || idleness.is_some() {
            clock.request_wakeup(clock.now() + Self::tick(interval, idleness));
        }
        let current = ctx.restored.as_ref().and_then(|r| r.watermark).unwrap_or(MIN_WATERMARK);
        TimestampsAndWatermarks {
            strategy: strategy.clone(),
            main: Clock::new(strategy, clock.now()),
            splits: None,
            assigner: strategy.assigner.clone(),
            next,
            clock,
            interval,
            idleness,
            // A restored generator never emits below the watermark it had emitted.
            current,
            announced: current == MIN_WATERMARK,
            idle: false,
            operator_id: ctx.operator_id,
            metrics,
        }
    }

    /// How often to wake up: the emission interval, and often enough to notice idleness.
    fn tick(interval: Option<Duration>, idleness: Option<Timestamp>) -> Timestamp {
        let interval = interval.map(|d| d.as_millis() as Timestamp);
        match (interval, idleness) {
            (Some(i), Some(d)) => i.min(d),
            (i, d) => i.or(d).unwrap_or(200),
        }
        .max(1)
    }

    /// Sends the restored watermark once, before anything else.
    #[inline]
    fn announce(&mut self) -> TaskResult {
        if self.announced {
            return Ok(());
        }
        self.announced = true;
        self.next.event(&mut ChainEvent::Watermark(self.current))
    }

    /// Sends what the clocks say now: the stream is idle when every clock is (or, behind a split
    /// source, when there is no split), else its watermark is the minimum of the active clocks.
    fn forward(&mut self) -> TaskResult {
        let (idle, watermark) = match &self.splits {
            None => (self.main.idle, self.main.watermark),
            Some(splits) => {
                let active = splits.iter().flatten().filter(|c| !c.idle);
                match active.map(|c| c.watermark).min() {
                    Some(w) => (false, w),
                    None => (true, MIN_WATERMARK),
                }
            }
        };
        if idle {
            if !self.idle {
                self.set_idle(true)?;
            }
            return Ok(());
        }
        if self.idle {
            self.set_idle(false)?;
        }
        if watermark > self.current {
            self.current = watermark;
            self.next.event(&mut ChainEvent::Watermark(watermark))?;
        }
        Ok(())
    }

    fn set_idle(&mut self, idle: bool) -> TaskResult {
        self.idle = idle;
        let status = if idle { WatermarkStatus::Idle } else { WatermarkStatus::Active };
        self.next.event(&mut ChainEvent::Status(status))
    }

    #[inline]
    fn assign(&self, record: &T, timestamp: Option<Timestamp>) -> Option<Timestamp> {
        match &self.assigner {
            Some(assign) => Some(assign(record, timestamp)),
            None => timestamp,
        }
    }

    /// A record makes the stream active before it is sent; a watermark it caused follows it (as
    /// Flink orders them).
    #[inline]
    fn emit_then_forward(&mut self, record: T, timestamp: Option<Timestamp>, changed: bool) -> TaskResult {
        if self.idle {
            self.set_idle(false)?;
        }
        self.next.emit(record, timestamp)?;
        if changed {
            self.forward()?;
        }
        Ok(())
    }

    fn split_clock(&mut self, split: SplitIndex) -> Option<&mut Clock<T>> {
        self.splits.as_mut()?.get_mut(split as usize)?.as_mut()
    }
}

impl<T: Record> Output<T> for TimestampsAndWatermarks<T> {
    #[inline]
    fn emit(&mut self, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        self.metrics.records_in.inc();
        let timestamp = self.assign(&record, timestamp);
        self.announce()?;
        let Some(ts) = timestamp else { return self.next.emit(record, None) };
        let changed = self.main.on_event(&record, ts);
        self.emit_then_forward(record, timestamp, changed)
    }

    #[inline]
    fn emit_in_split(&mut self, split: SplitIndex, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        self.metrics.records_in.inc();
        let timestamp = self.assign(&record, timestamp);
        self.announce()?;
        let Some(ts) = timestamp else { return self.next.emit(record, None) };
        let changed = match self.split_clock(split) {
            Some(clock) => clock.on_event(&record, ts),
            None => self.main.on_event(&record, ts),
        };
        self.emit_then_forward(record, timestamp, changed)
    }

    fn split_event(&mut self, event: SplitEvent) -> TaskResult {
        let now = self.clock.now();
        let splits = self.splits.get_or_insert_with(Vec::new);
        match event {
            // A new split only lowers the minimum, which never moves event time: nothing to send.
            SplitEvent::Added(split) => {
                let at = split as usize;
                if splits.len() <= at {
                    splits.resize_with(at + 1, || None);
                }
                splits[at] = Some(Clock::new(&self.strategy, now));
                Ok(())
            }
            SplitEvent::Finished(split) => {
                if let Some(slot) = splits.get_mut(split as usize) {
                    *slot = None;
                }
                self.announce()?;
                self.forward()
            }
            SplitEvent::Reading => {
                self.announce()?;
                self.forward()
            }
        }
    }

    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        self.metrics.observe(event);
        match event {
            ChainEvent::Watermark(w) if *w == MAX_WATERMARK => {
                if self.current < MAX_WATERMARK || !self.announced {
                    self.current = MAX_WATERMARK;
                    self.announced = true;
                    // A watermark makes the stream active (an idle channel's would be ignored).
                    if self.idle {
                        self.set_idle(false)?;
                    }
                    self.next.event(event)?;
                }
                Ok(())
            }
            ChainEvent::Watermark(_) | ChainEvent::Status(_) => Ok(()),
            ChainEvent::Barrier(capture) => {
                CapturedOperator::record_watermark(capture, self.operator_id, self.current);
                self.next.event(event)
            }
            ChainEvent::ProcessingTime(now) => {
                let now = *now;
                self.announce()?;
                let periodic = self.interval.is_some();
                match &mut self.splits {
                    None => self.main.on_wakeup(now, periodic, self.idleness),
                    Some(splits) => {
                        for clock in splits.iter_mut().flatten() {
                            clock.on_wakeup(now, periodic, self.idleness);
                        }
                    }
                }
                self.forward()?;
                self.clock.request_wakeup(now + Self::tick(self.interval, self.idleness));
                self.next.event(event)
            }
            _ => self.next.event(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records what reaches it: `r<ts>`, `w<watermark>`, `idle`, `active`.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl Output<u64> for Seen {
        fn emit(&mut self, _: u64, ts: Option<Timestamp>) -> TaskResult {
            self.0.lock().unwrap().push(format!("r{}", ts.unwrap_or(-1)));
            Ok(())
        }
        fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
            let seen = match event {
                ChainEvent::Watermark(w) => format!("w{w}"),
                ChainEvent::Status(WatermarkStatus::Idle) => "idle".into(),
                ChainEvent::Status(WatermarkStatus::Active) => "active".into(),
                _ => return Ok(()),
            };
            self.0.lock().unwrap().push(seen);
            Ok(())
        }
    }

    fn split_strategy() -> (TimestampsAndWatermarks<u64>, Seen) {
        let seen = Seen::default();
        let ctx = OperatorContext {
            operator_id: weir_core::OperatorId::from_uid("source"),
            name: "Source".into(),
            uid: None,
            subtask: 0,
            parallelism: 1,
            max_parallelism: 128,
            key_groups: weir_core::KeyGroupRange::inclusive(0, 127),
            restored: None,
            attempt: 0,
            job_id: weir_core::JobId::from_bytes([7; 16]),
            state_backend: Default::default(),
            processing_time: ProcessingTimeService::default(),
            auto_watermark_interval: Some(Duration::from_millis(200)),
            metrics: OperatorMetrics::default(),
        };
        let strategy = WatermarkStrategy::<u64>::for_monotonous_timestamps();
        (TimestampsAndWatermarks::new(&strategy, &ctx, Box::new(seen.clone()), OperatorMetrics::default()), seen)
    }

    #[test]
    fn a_split_source_is_never_idle_before_its_splits_and_follows_the_slowest_one() {
        let (mut op, seen) = split_strategy();
        op.split_event(SplitEvent::Added(0)).unwrap();
        op.split_event(SplitEvent::Added(1)).unwrap();
        op.split_event(SplitEvent::Reading).unwrap();
        op.emit_in_split(0, 0, Some(5000)).unwrap();
        op.emit_in_split(1, 0, Some(10)).unwrap();
        op.event(&mut ChainEvent::ProcessingTime(1)).unwrap();
        assert_eq!(seen.0.lock().unwrap().clone(), ["r5000", "r10", "w9"], "the slower split's time, never idle");
        op.split_event(SplitEvent::Finished(1)).unwrap();
        assert_eq!(seen.0.lock().unwrap().last().unwrap(), "w4999", "a finished split no longer holds time back");
        op.split_event(SplitEvent::Finished(0)).unwrap();
        assert_eq!(seen.0.lock().unwrap().last().unwrap(), "idle", "no split left");
    }

    #[test]
    fn a_split_source_without_splits_is_idle() {
        let (mut op, seen) = split_strategy();
        op.split_event(SplitEvent::Reading).unwrap();
        assert_eq!(seen.0.lock().unwrap().clone(), ["idle"]);
    }

    #[test]
    fn bounded_out_of_orderness_trails_the_highest_timestamp() {
        let mut g = BoundedOutOfOrderness::new(Duration::from_millis(100));
        let mut out = WatermarkOutput::default();
        WatermarkGenerator::<()>::on_periodic_emit(&mut g, &mut out);
        assert_eq!(out.watermark, None, "nothing seen, nothing emitted");
        for ts in [1000, 3000, 2000] {
            g.on_event(&(), ts, &mut out);
        }
        WatermarkGenerator::<()>::on_periodic_emit(&mut g, &mut out);
        assert_eq!(out.watermark, Some(2899));
    }
}

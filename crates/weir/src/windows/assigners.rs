//! Window assigners and triggers, as Flink names them: which windows an element belongs to, on
//! which clock, and when a window fires.

use std::time::Duration;
use weir_core::watermark::Timestamp;
use weir_core::window::{self, TimeWindow};

/// The clock windows follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowTime {
    EventTime,
    ProcessingTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Tumbling { size: Timestamp, offset: Timestamp },
    Sliding { size: Timestamp, slide: Timestamp, offset: Timestamp },
    Session { gap: Timestamp },
    Global,
}

/// Assigns elements to windows. Build one with [`TumblingEventTimeWindows`],
/// [`SlidingEventTimeWindows`], [`EventTimeSessionWindows`], their processing-time twins, or
/// [`GlobalWindows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAssigner {
    shape: Shape,
    time: WindowTime,
}

fn millis(d: Duration) -> Timestamp {
    d.as_millis().min(i64::MAX as u128) as Timestamp
}

impl WindowAssigner {
    fn new(shape: Shape, time: WindowTime) -> Self {
        if let Shape::Tumbling { size, .. } | Shape::Sliding { size, .. } = shape {
            assert!(size > 0, "a window's size must be positive");
        }
        if let Shape::Sliding { slide, .. } = shape {
            assert!(slide > 0, "a sliding window's slide must be positive");
        }
        if let Shape::Session { gap } = shape {
            assert!(gap > 0, "a session gap must be positive");
        }
        WindowAssigner { shape, time }
    }

    /// Shifts tumbling or sliding windows by `offset` (e.g. hourly windows from quarter past:
    /// size 1 h, offset 15 min). Has no effect on session and global windows.
    pub fn with_offset(mut self, offset: Duration) -> Self {
        match &mut self.shape {
            Shape::Tumbling { offset: o, size } | Shape::Sliding { offset: o, slide: size, .. } => {
                *o = millis(offset) % *size
            }
            Shape::Session { .. } | Shape::Global => {}
        }
        self
    }

    /// The windows an element at `time` belongs to (before session merging).
    #[cfg(test)]
    fn assign(&self, time: Timestamp) -> Vec<TimeWindow> {
        let mut windows = Vec::new();
        self.assign_into(time, &mut windows);
        windows
    }

    /// Appends the windows an element at `time` belongs to (before session merging).
    #[inline]
    pub(crate) fn assign_into(&self, time: Timestamp, windows: &mut Vec<TimeWindow>) {
        match self.shape {
            Shape::Tumbling { size, offset } => windows.push(window::tumbling(time, size, offset)),
            Shape::Sliding { size, slide, offset } => windows.extend(window::sliding(time, size, slide, offset)),
            Shape::Session { gap } => windows.push(window::session(time, gap)),
            Shape::Global => windows.push(GLOBAL_WINDOW),
        }
    }

    #[inline]
    pub(crate) fn time(&self) -> WindowTime {
        self.time
    }

    #[inline]
    pub(crate) fn is_event_time(&self) -> bool {
        self.time == WindowTime::EventTime && self.shape != Shape::Global
    }

    /// Session windows merge when they touch.
    #[inline]
    pub(crate) fn is_merging(&self) -> bool {
        matches!(self.shape, Shape::Session { .. })
    }

    #[inline]
    pub(crate) fn is_global(&self) -> bool {
        self.shape == Shape::Global
    }

    /// What the operator's namespaced state holds, recorded in snapshots: a restore into another
    /// kind of window is refused (sizes may change, as in Flink).
    pub(crate) fn namespace(&self) -> String {
        let shape = match self.shape {
            Shape::Tumbling { .. } => "tumbling",
            Shape::Sliding { .. } => "sliding",
            Shape::Session { .. } => "session",
            Shape::Global => return "window:global".to_string(),
        };
        let time = match self.time {
            WindowTime::EventTime => "event-time",
            WindowTime::ProcessingTime => "processing-time",
        };
        format!("window:{shape}-{time}")
    }
}

/// The one window of [`GlobalWindows`]: all of time. It fires only through a trigger such as
/// [`CountTrigger`].
pub const GLOBAL_WINDOW: TimeWindow = TimeWindow { start: i64::MIN, end: i64::MAX };

/// Tumbling windows of a fixed size on event time: `[k * size + offset, (k + 1) * size + offset)`.
pub struct TumblingEventTimeWindows;
impl TumblingEventTimeWindows {
    pub fn of(size: Duration) -> WindowAssigner {
        WindowAssigner::new(Shape::Tumbling { size: millis(size), offset: 0 }, WindowTime::EventTime)
    }
}

/// Tumbling windows on the wall clock of the operator.
pub struct TumblingProcessingTimeWindows;
impl TumblingProcessingTimeWindows {
    pub fn of(size: Duration) -> WindowAssigner {
        WindowAssigner::new(Shape::Tumbling { size: millis(size), offset: 0 }, WindowTime::ProcessingTime)
    }
}

/// Windows of `size` starting every `slide` on event time; an element is in `size / slide` of them.
pub struct SlidingEventTimeWindows;
impl SlidingEventTimeWindows {
    pub fn of(size: Duration, slide: Duration) -> WindowAssigner {
        let shape = Shape::Sliding { size: millis(size), slide: millis(slide), offset: 0 };
        WindowAssigner::new(shape, WindowTime::EventTime)
    }
}

/// Sliding windows on the wall clock of the operator.
pub struct SlidingProcessingTimeWindows;
impl SlidingProcessingTimeWindows {
    pub fn of(size: Duration, slide: Duration) -> WindowAssigner {
        let shape = Shape::Sliding { size: millis(size), slide: millis(slide), offset: 0 };
        WindowAssigner::new(shape, WindowTime::ProcessingTime)
    }
}

/// Sessions on event time: a key's elements less than `gap` apart share a window, which closes
/// `gap` after its last element. Windows merge as elements bridge them.
pub struct EventTimeSessionWindows;
impl EventTimeSessionWindows {
    pub fn with_gap(gap: Duration) -> WindowAssigner {
        WindowAssigner::new(Shape::Session { gap: millis(gap) }, WindowTime::EventTime)
    }
}

/// Sessions on the wall clock of the operator.
pub struct ProcessingTimeSessionWindows;
impl ProcessingTimeSessionWindows {
    pub fn with_gap(gap: Duration) -> WindowAssigner {
        WindowAssigner::new(Shape::Session { gap: millis(gap) }, WindowTime::ProcessingTime)
    }
}

/// One window per key holding everything; give it a trigger (`CountTrigger::of(n)`).
pub struct GlobalWindows;
impl GlobalWindows {
    pub fn create() -> WindowAssigner {
        WindowAssigner::new(Shape::Global, WindowTime::EventTime)
    }
}

/// When a window fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// The assigner's own: time windows fire when time passes their end (event time: the
    /// watermark; processing time: the clock); global windows never fire.
    #[default]
    Default,
    /// Fires every `n` elements of a window and then empties it (Flink's
    /// `PurgingTrigger.of(CountTrigger.of(n))`, what `countWindow(n)` uses).
    Count(u64),
}

/// Fires a window every `n` elements, then purges it.
pub struct CountTrigger;
impl CountTrigger {
    pub fn of(n: u64) -> Trigger {
        assert!(n > 0, "a count trigger needs a positive count");
        Trigger::Count(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigners_place_elements_like_flink() {
        let s = Duration::from_secs;
        let tumbling = TumblingEventTimeWindows::of(s(10)).with_offset(s(2));
        assert_eq!(tumbling.assign(1_000), vec![TimeWindow::new(-8_000, 2_000)]);
        assert_eq!(tumbling.assign(2_000), vec![TimeWindow::new(2_000, 12_000)]);
        let sliding = SlidingEventTimeWindows::of(s(10), s(5));
        assert_eq!(sliding.assign(7_000), vec![TimeWindow::new(5_000, 15_000), TimeWindow::new(0, 10_000)]);
        assert_eq!(EventTimeSessionWindows::with_gap(s(3)).assign(100), vec![TimeWindow::new(100, 3_100)]);
        assert_eq!(GlobalWindows::create().assign(5), vec![GLOBAL_WINDOW]);
    }

    #[test]
    fn the_namespace_names_the_kind_of_window_not_its_size() {
        let s = Duration::from_secs;
        assert_eq!(TumblingEventTimeWindows::of(s(1)).namespace(), TumblingEventTimeWindows::of(s(9)).namespace());
        assert_ne!(TumblingEventTimeWindows::of(s(1)).namespace(), TumblingProcessingTimeWindows::of(s(1)).namespace());
        assert_eq!(EventTimeSessionWindows::with_gap(s(1)).namespace(), "window:session-event-time");
        assert!(EventTimeSessionWindows::with_gap(s(1)).is_merging());
        assert!(!GlobalWindows::create().is_event_time());
    }
}

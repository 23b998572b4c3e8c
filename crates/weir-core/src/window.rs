//! Time windows and their assigners (Flink's `TimeWindow`, tumbling, sliding and session
//! windows). Pure arithmetic over millisecond timestamps, with Flink's formulas, so the same
//! element lands in the same windows in both systems (negative timestamps included).

use crate::watermark::Timestamp;

/// `[start, end)`; its last timestamp is `end - 1`, when its event-time trigger fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct TimeWindow {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl TimeWindow {
    pub fn new(start: Timestamp, end: Timestamp) -> Self {
        TimeWindow { start, end }
    }

    pub fn max_timestamp(&self) -> Timestamp {
        self.end - 1
    }

    /// Overlapping or touching (Flink merges session windows that touch).
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && self.end >= other.start
    }

    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow { start: self.start.min(other.start), end: self.end.max(other.end) }
    }

    /// When its state and timers can go: after its last timestamp plus the allowed lateness.
    pub fn cleanup_time(&self, allowed_lateness: Timestamp) -> Timestamp {
        self.max_timestamp().saturating_add(allowed_lateness)
    }
}

/// The start of the window of `size` (shifted by `offset`) that holds `timestamp`
/// (Flink's `TimeWindow.getWindowStartWithOffset`).
pub fn window_start(timestamp: Timestamp, offset: Timestamp, size: Timestamp) -> Timestamp {
    let remainder = (timestamp - offset) % size;
    if remainder < 0 {
        timestamp - (remainder + size)
    } else {
        timestamp - remainder
    }
}

/// The tumbling window of `size` (shifted by `offset`) that holds `timestamp`.
pub fn tumbling(timestamp: Timestamp, size: Timestamp, offset: Timestamp) -> TimeWindow {
    let start = window_start(timestamp, offset, size);
    TimeWindow::new(start, start + size)
}

/// The sliding windows of `size`, one every `slide` (shifted by `offset`), that hold
/// `timestamp`, latest first (Flink's order).
pub fn sliding(timestamp: Timestamp, size: Timestamp, slide: Timestamp, offset: Timestamp) -> Vec<TimeWindow> {
    let last_start = window_start(timestamp, offset, slide);
    let mut windows = Vec::with_capacity((size / slide) as usize + 1);
    let mut start = last_start;
    while start > timestamp - size {
        windows.push(TimeWindow::new(start, start + size));
        start -= slide;
    }
    windows
}

/// The session window an element at `timestamp` opens, before merging: `[timestamp, timestamp + gap)`.
pub fn session(timestamp: Timestamp, gap: Timestamp) -> TimeWindow {
    TimeWindow::new(timestamp, timestamp + gap)
}

/// Merges windows that intersect (Flink's `TimeWindow.mergeWindows`): returns each merged window
/// with the windows it replaces, for groups of more than one.
pub fn merge_windows(windows: &[TimeWindow]) -> Vec<(TimeWindow, Vec<TimeWindow>)> {
    let mut sorted = windows.to_vec();
    sorted.sort();
    let mut merged: Vec<(TimeWindow, Vec<TimeWindow>)> = Vec::new();
    for w in sorted {
        match merged.last_mut() {
            Some((cover, members)) if cover.intersects(&w) => {
                *cover = cover.cover(&w);
                members.push(w);
            }
            _ => merged.push((w, vec![w])),
        }
    }
    merged.into_iter().filter(|(_, members)| members.len() > 1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tumbling_windows_match_flinks_formula_with_offsets_and_negative_times() {
        assert_eq!(tumbling(0, 10_000, 0), TimeWindow::new(0, 10_000));
        assert_eq!(tumbling(9_999, 10_000, 0), TimeWindow::new(0, 10_000));
        assert_eq!(tumbling(10_000, 10_000, 0), TimeWindow::new(10_000, 20_000));
        assert_eq!(tumbling(-1, 10_000, 0), TimeWindow::new(-10_000, 0));
        // Hourly windows offset by 15 minutes.
        assert_eq!(tumbling(3_600_000, 3_600_000, 900_000), TimeWindow::new(900_000, 4_500_000));
        assert_eq!(TimeWindow::new(0, 10_000).max_timestamp(), 9_999);
    }

    #[test]
    fn sliding_windows_hold_each_element_size_over_slide_times() {
        let w = sliding(12_000, 10_000, 5_000, 0);
        assert_eq!(w, vec![TimeWindow::new(10_000, 20_000), TimeWindow::new(5_000, 15_000)]);
    }

    #[test]
    fn sessions_merge_when_they_touch_or_overlap() {
        let a = session(0, 10);
        let b = session(10, 10); // touches a
        let c = session(25, 10); // separate
        let d = session(30, 10); // overlaps c
        let merged = merge_windows(&[c, a, d, b]);
        assert_eq!(merged, vec![(TimeWindow::new(0, 20), vec![a, b]), (TimeWindow::new(25, 40), vec![c, d])]);
        assert!(merge_windows(&[a, c]).is_empty(), "nothing to merge");
    }

    proptest! {
        #[test]
        fn every_assigned_window_holds_its_element(ts in -1_000_000i64..1_000_000, size in 1i64..10_000, slide in 1i64..10_000, offset in 0i64..10_000) {
            let w = tumbling(ts, size, offset % size);
            prop_assert!(w.start <= ts && ts < w.end && w.end - w.start == size);
            prop_assert_eq!((w.start - offset % size).rem_euclid(size), 0);
            let offset = offset % slide;
            let windows = sliding(ts, size, slide, offset);
            // Exactly the windows whose start is on the slide grid and that hold ts.
            let expected = (0..=size / slide + 1)
                .map(|k| window_start(ts, offset, slide) - k * slide)
                .filter(|start| *start <= ts && ts < start + size)
                .count();
            prop_assert_eq!(windows.len(), expected);
            for w in windows {
                prop_assert!(w.start <= ts && ts < w.end && w.end - w.start == size);
                prop_assert_eq!((w.start - offset).rem_euclid(slide), 0);
            }
        }

        #[test]
        fn merged_sessions_are_disjoint_and_cover_their_members(starts in proptest::collection::vec(0i64..1000, 1..30), gap in 1i64..50) {
            let windows: Vec<TimeWindow> = starts.iter().map(|s| session(*s, gap)).collect();
            let merged = merge_windows(&windows);
            for (cover, members) in &merged {
                for m in members {
                    prop_assert!(cover.start <= m.start && m.end <= cover.end);
                }
            }
            for (i, (a, _)) in merged.iter().enumerate() {
                for (b, _) in merged.iter().skip(i + 1) {
                    prop_assert!(!a.intersects(b));
                }
            }
        }
    }
}

//! The `window-count` job's pieces: words with event times read from JSON lines
//! (`{"word":"a","ts":1000}`), counted per word and tumbling event-time window, printed as
//! `WindowCount{word='a', window=[0, 10000), count=3}`; and the ground truth of such a count for
//! tests.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use weir::connectors::FileSink;
use weir::{
    BoxError, Collector, CountAggregate, DataStream, OutputTag, ProcessWindowFunction, TumblingEventTimeWindows,
    WatermarkStrategy, WindowContext,
};

/// One input record: a word at an event time, with the line it was read from (late records are
/// written out as that line).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct WordEvent {
    pub word: String,
    pub ts: i64,
    pub line: String,
}

#[derive(Deserialize)]
struct Line {
    word: String,
    ts: i64,
}

/// Parses one input line; malformed lines are skipped with a warning.
pub fn parse_word_event(line: String) -> Option<WordEvent> {
    if line.trim().is_empty() {
        return None;
    }
    match serde_json::from_str::<Line>(&line) {
        Ok(l) => Some(WordEvent { word: l.word, ts: l.ts, line }),
        Err(e) => {
            tracing::warn!("skipping malformed input line {}: {e}", weir::connectors::log_prefix(line.as_bytes()));
            None
        }
    }
}

/// How a window's count is printed.
pub fn window_count_line(word: &str, start: i64, end: i64, count: u64) -> String {
    format!("WindowCount{{word='{word}', window=[{start}, {end}), count={count}}}")
}

/// Formats each window's count with its word and window.
#[derive(Clone)]
pub struct FormatWindowCount;

impl ProcessWindowFunction<String, u64, String> for FormatWindowCount {
    fn process(
        &mut self,
        word: &String,
        ctx: &WindowContext<'_>,
        counts: Vec<u64>,
        out: &mut Collector<'_, String>,
    ) -> Result<(), BoxError> {
        let w = ctx.window();
        for count in counts {
            out.collect(window_count_line(word, w.start, w.end, count));
        }
        Ok(())
    }
}

/// The job's settings.
#[derive(Debug, Clone)]
pub struct WindowCountSettings {
    pub window: Duration,
    pub allowed_lateness: Duration,
}

/// Wires the job behind `events` (already timestamped): key by word, tumbling windows, count,
/// results to `output` and late records (as their lines) to `late_output`, both exactly once.
/// Returns the results, for other sinks.
pub fn count_windows(
    events: DataStream<WordEvent>,
    settings: &WindowCountSettings,
    output: &std::path::Path,
    late_output: &std::path::Path,
) -> DataStream<String> {
    let late = OutputTag::<WordEvent>::new("late");
    let counts = events
        .key_by(|e: &WordEvent| e.word.clone())
        .window(TumblingEventTimeWindows::of(settings.window))
        .allowed_lateness(settings.allowed_lateness)
        .side_output_late_data(&late)
        .aggregate_with(CountAggregate, FormatWindowCount)
        .uid("window")
        .name("Window");
    counts
        .get_side_output(&late)
        .map(|e: WordEvent| e.line)
        .name("Late Lines")
        .sink(FileSink::new(late_output))
        .uid("late-sink")
        .name("Late Sink");
    counts.clone().sink(FileSink::new(output)).uid("sink").name("File Sink");
    counts
}

/// Event time from the record, watermarks `out_of_orderness` behind the newest.
pub fn watermarks(out_of_orderness: Duration) -> WatermarkStrategy<WordEvent> {
    WatermarkStrategy::for_bounded_out_of_orderness(out_of_orderness).with_timestamp_assigner(|e: &WordEvent, _| e.ts)
}

/// The window counts of `events` `(word, ts)` in tumbling windows of `window_ms`, as the job
/// prints them, sorted: the ground truth of a run in which none of them is late.
pub fn window_counts<'a>(events: impl IntoIterator<Item = (&'a str, i64)>, window_ms: i64) -> Vec<String> {
    let mut counts: BTreeMap<(&str, i64), u64> = BTreeMap::new();
    for (word, ts) in events {
        *counts.entry((word, ts - ts.rem_euclid(window_ms))).or_default() += 1;
    }
    let mut lines: Vec<String> =
        counts.iter().map(|((w, start), n)| window_count_line(w, *start, start + window_ms, *n)).collect();
    lines.sort();
    lines
}

/// The input line of an event.
pub fn event_line(word: &str, ts: i64) -> String {
    format!("{{\"word\":\"{word}\",\"ts\":{ts}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_prints_counts() {
        let e = parse_word_event(event_line("a", 1000)).unwrap();
        assert_eq!((e.word.as_str(), e.ts), ("a", 1000));
        assert_eq!(e.line, r#"{"word":"a","ts":1000}"#);
        assert!(parse_word_event("{\"word\":\"a\"}".into()).is_none());
        assert_eq!(window_count_line("a", 0, 10_000, 3), "WindowCount{word='a', window=[0, 10000), count=3}");
    }

    #[test]
    fn the_truth_counts_each_word_per_window() {
        let lines = window_counts([("a", 1), ("a", 5), ("b", 12), ("a", -3)], 10);
        let mut want = vec![
            window_count_line("a", -10, 0, 1),
            window_count_line("a", 0, 10, 2),
            window_count_line("b", 10, 20, 1),
        ];
        want.sort();
        assert_eq!(lines, want);
    }
}

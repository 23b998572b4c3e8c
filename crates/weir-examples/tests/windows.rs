//! Windows through the public API, with the `window-count` job's pieces: exactly-once window
//! results and late data under injected failures on both backends, allowed lateness firing a
//! window again, session windows merging across a savepoint, and restores into another kind of
//! window or key refused before the job starts.

mod common;

use common::{committed_lines, diff, Backend, FaultyStorage, Rng, StorageFault};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::connectors::{FileSink, FileSource, GeneratorSource};
use weir::{
    Configuration, CountAggregate, EventTimeSessionWindows, JobStatus, SlidingEventTimeWindows, StreamEnv,
    WatermarkGenerator, WatermarkOutput, WatermarkStrategy,
};
use weir_examples::window_count::{
    count_windows, event_line, parse_word_event, window_count_line, window_counts, FormatWindowCount,
    WindowCountSettings, WordEvent,
};

/// A watermark after every record, `delay` behind the newest: event time then follows the
/// records exactly, so which records are late does not depend on timing.
#[derive(Clone)]
struct EveryRecord {
    delay: i64,
    max: Option<i64>,
}

impl WatermarkGenerator<WordEvent> for EveryRecord {
    fn on_event(&mut self, _: &WordEvent, ts: i64, out: &mut WatermarkOutput) {
        let max = self.max.map_or(ts, |m| m.max(ts));
        self.max = Some(max);
        out.emit_watermark(max - self.delay - 1);
    }
    fn on_periodic_emit(&mut self, _: &mut WatermarkOutput) {}
}

fn punctuated(delay: i64) -> WatermarkStrategy<WordEvent> {
    WatermarkStrategy::for_generator(move || EveryRecord { delay, max: None })
        .with_timestamp_assigner(|e: &WordEvent, _| e.ts)
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The input of one seeded run: mostly in order (within half the out-of-orderness), and now and
/// then a record 2.5 s behind, far behind any watermark the window operator can have then.
#[derive(Clone, Copy)]
struct Input {
    seed: u64,
    keys: u64,
    delay: i64,
}

impl Input {
    fn event(&self, i: u64) -> WordEvent {
        let r = mix(self.seed ^ (i << 20));
        let word = format!("w{}", r % self.keys);
        let ts =
            if self.is_very_late(i) { i as i64 - 2500 } else { i as i64 - ((r >> 8) % (self.delay as u64 / 2)) as i64 };
        WordEvent { line: event_line(&word, ts), word, ts }
    }

    fn is_very_late(&self, i: u64) -> bool {
        i > 3000 && (mix(self.seed ^ (i << 20)) >> 20).is_multiple_of(50)
    }

    /// Window counts of the on-time records and the lines of the late ones.
    fn truth(&self, records: u64, window_ms: i64) -> (Vec<String>, Vec<String>) {
        let (late, on_time): (Vec<u64>, Vec<u64>) = (0..records).partition(|&i| self.is_very_late(i));
        let on_time: Vec<WordEvent> = on_time.into_iter().map(|i| self.event(i)).collect();
        let lines = window_counts(on_time.iter().map(|e| (e.word.as_str(), e.ts)), window_ms);
        let mut late: Vec<String> = late.into_iter().map(|i| self.event(i).line).collect();
        late.sort();
        (lines, late)
    }
}

/// A sink that drops what it gets.
#[derive(Clone)]
struct Discard;

impl weir::SinkFunction<String> for Discard {
    fn invoke(&mut self, _: String) -> Result<(), weir::BoxError> {
        Ok(())
    }
}

/// Panics injected at the n-th record before the windows and the n-th window result after them
/// (shared by every subtask and restart).
#[derive(Clone, Default)]
struct Panics {
    at_record: u64,
    at_result: u64,
    records: Arc<AtomicU64>,
    results: Arc<AtomicU64>,
    fired: Arc<AtomicU64>,
}

impl Panics {
    fn count(&self, counter: &AtomicU64, at: u64, what: &str) {
        if counter.fetch_add(1, Ordering::SeqCst) + 1 == at && self.fired.fetch_add(1, Ordering::SeqCst) < 64 {
            panic!("injected failure: {what}");
        }
    }
}

fn settings(window_ms: u64) -> WindowCountSettings {
    WindowCountSettings { window: Duration::from_millis(window_ms), allowed_lateness: Duration::ZERO }
}

fn windows_with_failures(seed: u64, backend: Backend) -> (u32, u64) {
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let input = Input { seed, keys: 1 + rng.below(12), delay: 20 };
    let records = 4000 + rng.below(3000);
    let window_ms = 100;
    let panics = Panics {
        at_record: 1 + rng.below(records),
        at_result: if rng.below(2) == 0 { 1 + rng.below(records / window_ms / 2) } else { 0 },
        ..Panics::default()
    };
    let mut config = Configuration::new();
    for (k, v) in [
        ("weir.rest.enabled", "false"),
        ("execution.checkpointing.interval", "15 ms"),
        ("execution.checkpointing.dir", dir.path().join("ck").to_str().unwrap()),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.attempts", "50"),
        ("restart-strategy.fixed-delay.delay", "0 ms"),
        ("weir.network.batch-size", "32"),
    ] {
        config.set(k, v).unwrap();
    }
    backend.configure(&mut config, &dir.path().join("rocksdb"));
    let mut env = StreamEnv::with_config(config);
    if rng.below(3) == 0 {
        let fault = if rng.below(2) == 0 {
            StorageFault::StateFile(1 + rng.below(8))
        } else {
            StorageFault::Metadata(1 + rng.below(4))
        };
        env.set_checkpoint_storage(Arc::new(FaultyStorage::new(dir.path().join("ck"), fault)));
    }
    let p = 1 + rng.below(2) as u32;
    let (out, late) = (dir.path().join("out"), dir.path().join("late"));
    let before = panics.clone();
    let events = env
        .from_source(
            GeneratorSource::new(move |i| input.event(i)).with_count(records).with_rate(100_000.0),
            punctuated(input.delay),
        )
        .uid("source")
        .set_parallelism(1)
        .map(move |e: WordEvent| {
            before.count(&before.records, before.at_record, "panic before the windows");
            e
        })
        .uid("parse")
        .set_parallelism(1);
    let after = panics.clone();
    count_windows(events, &settings(window_ms), &out, &late)
        .set_parallelism(p)
        .map(move |line: String| {
            after.count(&after.results, after.at_result, "panic after a window fired");
            line
        })
        .sink(Discard);
    let outcome = env.execute_async("windows-exactly-once").unwrap().wait();
    assert_eq!(outcome.status, JobStatus::Finished, "seed {seed}: {:?}", outcome.failure);
    let (want, want_late) = input.truth(records, window_ms as i64);
    let (got, got_late) = (committed_lines(&out), committed_lines(&late));
    assert!(got == want, "seed {seed} (p={p}, {records} records): windows: {}", diff(&got, &want));
    assert!(got_late == want_late, "seed {seed} (p={p}): late records: {}", diff(&got_late, &want_late));
    assert!(!want_late.is_empty(), "seed {seed}: the input has late records");
    (outcome.restarts, panics.fired.load(Ordering::SeqCst))
}

fn exactly_once_runs(backend: Backend, default_runs: u64) {
    let runs: u64 =
        std::env::var("WEIR_WINDOW_EO_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_runs);
    let (mut restarted, mut panics) = (0, 0);
    for i in 0..runs {
        let (restarts, fired) = windows_with_failures(0x717D0 + i * 31, backend);
        restarted += u64::from(restarts > 0);
        panics += fired;
    }
    eprintln!("{backend:?}: {runs} runs, {restarted} restarted, {panics} injected panics");
    assert!(restarted >= runs * 3 / 4, "most runs failed over and restored: {restarted} of {runs}");
}

#[test]
fn window_results_and_late_data_are_exactly_once_under_failures_hashmap() {
    exactly_once_runs(Backend::HashMap, 30);
}

#[test]
fn window_results_and_late_data_are_exactly_once_under_failures_rocksdb() {
    exactly_once_runs(Backend::RocksDb, 20);
}

// ---- lateness ---------------------------------------------------------------------------------

fn events(list: &[(&str, i64)]) -> Vec<WordEvent> {
    list.iter().map(|(w, ts)| WordEvent { word: w.to_string(), ts: *ts, line: event_line(w, *ts) }).collect()
}

fn run_bounded(list: Vec<WordEvent>, settings: WindowCountSettings, delay: i64) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let env = common::test_env(&[
        ("execution.checkpointing.interval", "20 ms"),
        ("execution.checkpointing.dir", ck.to_str().unwrap()),
    ]);
    let n = list.len() as u64;
    let stream =
        env.from_source(GeneratorSource::new(move |i| list[i as usize].clone()).with_count(n), punctuated(delay));
    let (out, late) = (dir.path().join("out"), dir.path().join("late"));
    count_windows(stream, &settings, &out, &late);
    env.execute("lateness").unwrap();
    (committed_lines(&out), committed_lines(&late))
}

#[test]
fn a_record_within_the_allowed_lateness_fires_its_window_again_and_a_later_one_is_late_data() {
    let input = events(&[
        ("a", 1_000),
        ("a", 2_000),
        ("b", 25_000), // the watermark passes 10 000: [0, 10 000) fires with a=2
        ("a", 5_000),  // late, but within 20 s of lateness: [0, 10 000) fires again with a=3
        ("b", 45_000), // the watermark passes 29 999: [0, 10 000) is gone
        ("a", 6_000),  // too late: to the late output
    ]);
    let settings = WindowCountSettings { window: Duration::from_secs(10), allowed_lateness: Duration::from_secs(20) };
    let (out, late) = run_bounded(input.clone(), settings, 2_000);
    let mut want = vec![
        window_count_line("a", 0, 10_000, 2),
        window_count_line("a", 0, 10_000, 3),
        window_count_line("b", 20_000, 30_000, 1),
        window_count_line("b", 40_000, 50_000, 1),
    ];
    want.sort();
    assert_eq!(out, want);
    assert_eq!(late, vec![event_line("a", 6_000)]);

    // Without lateness, both late records are late data and the window fires once.
    let (out, late) =
        run_bounded(input, WindowCountSettings { allowed_lateness: Duration::ZERO, ..settings_10s() }, 2_000);
    assert!(
        out.contains(&window_count_line("a", 0, 10_000, 2)) && !out.iter().any(|l| l.contains("count=3")),
        "{out:?}"
    );
    let mut want_late = vec![event_line("a", 5_000), event_line("a", 6_000)];
    want_late.sort();
    assert_eq!(late, want_late);
}

fn settings_10s() -> WindowCountSettings {
    WindowCountSettings { window: Duration::from_secs(10), allowed_lateness: Duration::ZERO }
}

// ---- every kind of window -------------------------------------------------------------------

/// Runs `build` over `list` (one source subtask, a watermark after every record) to the end of
/// input; returns what reached the sink, sorted.
fn run_windows(
    list: Vec<WordEvent>,
    build: impl FnOnce(weir::KeyedStream<String, WordEvent>) -> weir::DataStream<String>,
) -> Vec<String> {
    let env = common::test_env(&[("parallelism.default", "2")]);
    let n = list.len() as u64;
    let keyed = env
        .from_source(GeneratorSource::new(move |i| list[i as usize].clone()).with_count(n), punctuated(0))
        .set_parallelism(1)
        .key_by(|e: &WordEvent| e.word.clone());
    let sink = Lines::default();
    build(keyed).sink(sink.clone());
    env.execute("windows").unwrap();
    let mut lines = sink.0.lock().unwrap().clone();
    lines.sort();
    lines
}

/// Collects lines from every subtask.
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<String>>>);

impl weir::SinkFunction<String> for Lines {
    fn invoke(&mut self, line: String) -> Result<(), weir::BoxError> {
        self.0.lock().unwrap().push(line);
        Ok(())
    }
}

/// Lists a window's elements' timestamps with its bounds.
#[derive(Clone)]
struct ListWindow;

impl weir::ProcessWindowFunction<String, WordEvent, String> for ListWindow {
    fn process(
        &mut self,
        word: &String,
        ctx: &weir::WindowContext<'_>,
        elements: Vec<WordEvent>,
        out: &mut weir::Collector<'_, String>,
    ) -> Result<(), weir::BoxError> {
        let mut ts: Vec<i64> = elements.iter().map(|e| e.ts).collect();
        ts.sort();
        out.collect(format!("{word} [{}, {}) {ts:?}", ctx.window().start, ctx.window().end));
        Ok(())
    }
}

#[test]
fn sliding_count_process_and_combined_windows_fire_what_flink_would() {
    let input = || events(&[("a", 1_000), ("a", 6_000), ("b", 7_000), ("a", 12_000), ("a", 26_000)]);
    let s = Duration::from_secs;
    // Sliding 10 s windows every 5 s: each element is in two windows.
    let sliding = run_windows(input(), |k| k.window(SlidingEventTimeWindows::of(s(10), s(5))).process(ListWindow));
    assert_eq!(
        sliding,
        vec![
            "a [-5000, 5000) [1000]",
            "a [0, 10000) [1000, 6000]",
            "a [10000, 20000) [12000]",
            "a [20000, 30000) [26000]",
            "a [25000, 35000) [26000]",
            "a [5000, 15000) [6000, 12000]",
            "b [0, 10000) [7000]",
            "b [5000, 15000) [7000]",
        ]
    );
    // Count windows of 2 per key: a fires twice (4 elements), b never (1 element).
    let counted = run_windows(input(), |k| {
        k.count_window(2)
            .reduce(|x: WordEvent, y: WordEvent| WordEvent { ts: x.ts + y.ts, ..x })
            .map(|e: WordEvent| format!("{} {}", e.word, e.ts))
    });
    assert_eq!(counted, vec!["a 38000", "a 7000"]);
    // Incremental reduce handed to a process function with the window: the latest element.
    let latest = run_windows(input(), |k| {
        k.window(weir::TumblingEventTimeWindows::of(s(10)))
            .reduce_with(|x: WordEvent, y: WordEvent| if y.ts > x.ts { y } else { x }, ListWindow)
    });
    assert_eq!(
        latest,
        vec!["a [0, 10000) [6000]", "a [10000, 20000) [12000]", "a [20000, 30000) [26000]", "b [0, 10000) [7000]"]
    );
}

#[test]
fn processing_time_windows_count_every_record_once() {
    // Windows on the operator's clock: which window a record lands in depends on when it
    // arrives, but every record is counted once, and every window is a whole 100 ms slot. (As in
    // Flink, the end of input does not fire processing-time windows, so the job keeps running.)
    let env = common::test_env(&[]);
    let sink = Lines::default();
    env.source(
        GeneratorSource::new(|i| WordEvent { word: format!("w{}", i % 3), ts: i as i64, line: String::new() })
            .with_rate(20_000.0),
    )
    .filter(|e: &WordEvent| e.ts < 2000)
    .key_by(|e: &WordEvent| e.word.clone())
    .window(weir::TumblingProcessingTimeWindows::of(Duration::from_millis(100)))
    .aggregate_with(CountAggregate, FormatWindowCount)
    .sink(sink.clone());
    let handle = env.execute_async("processing-time").unwrap();
    let total = |lines: &[String]| -> u64 {
        lines.iter().map(|l| l.split("count=").nth(1).unwrap().trim_end_matches('}').parse::<u64>().unwrap()).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while total(&sink.0.lock().unwrap()) < 2000 {
        assert!(Instant::now() < deadline, "{:?}", sink.0.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    handle.cancel();
    handle.wait();
    let lines = sink.0.lock().unwrap().clone();
    assert_eq!(total(&lines), 2000, "{lines:?}");
    for line in &lines {
        let window = line.split("window=[").nth(1).unwrap().split(')').next().unwrap();
        let (start, end) = window.split_once(", ").unwrap();
        let (start, end): (i64, i64) = (start.parse().unwrap(), end.parse().unwrap());
        assert!(end - start == 100 && start % 100 == 0, "{line}");
    }
}

#[test]
fn window_state_is_cleaned_up_so_it_does_not_grow() {
    // Many windows of 100 ms over a stream: once they fire, their contents and timers go, so a
    // checkpoint late in the stream is no bigger than one early in it.
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let env = common::test_env(&[
        ("execution.checkpointing.interval", "20 ms"),
        ("execution.checkpointing.dir", ck.to_str().unwrap()),
    ]);
    let input = Input { seed: 7, keys: 50, delay: 20 };
    env.from_source(
        GeneratorSource::new(move |i| input.event(i)).with_count(60_000).with_rate(30_000.0),
        punctuated(20),
    )
    .key_by(|e: &WordEvent| e.word.clone())
    .window(weir::TumblingEventTimeWindows::of(Duration::from_millis(100)))
    .aggregate(CountAggregate)
    .map(|n: u64| n.to_string())
    .sink(Lines::default());
    let handle = env.execute_async("cleanup").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.status() != JobStatus::Finished {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let sizes: Vec<u64> = handle.completed_checkpoints().iter().map(|c| c.state_size).collect();
    assert!(sizes.len() >= 10, "{sizes:?}");
    let (early, late) = (sizes[sizes.len() / 5], sizes[sizes.len() * 4 / 5]);
    assert!(late <= early * 2, "window state grows: {early} bytes early, {late} bytes late ({sizes:?})");
    handle.wait();
}

// ---- sessions across a savepoint, incompatible restores ------------------------------------

struct Staged {
    dir: tempfile::TempDir,
    backend: Backend,
}

impl Staged {
    fn new(backend: Backend) -> Self {
        let s = Staged { dir: tempfile::tempdir().unwrap(), backend };
        std::fs::write(s.input(), "").unwrap();
        s
    }
    fn input(&self) -> PathBuf {
        self.dir.path().join("input")
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    fn append(&self, list: &[(&str, i64)]) {
        let mut f = std::fs::OpenOptions::new().append(true).open(self.input()).unwrap();
        for (w, ts) in list {
            writeln!(f, "{}", event_line(w, *ts)).unwrap();
        }
    }
    fn late(&self) -> PathBuf {
        self.dir.path().join("late")
    }
    fn env(&self, restore: Option<&Path>) -> StreamEnv {
        self.env_with(restore, &[])
    }
    fn env_with(&self, restore: Option<&Path>, settings: &[&str]) -> StreamEnv {
        let mut all = vec!["execution.checkpointing.interval=30 ms"];
        all.extend_from_slice(settings);
        common::job_env(self.backend, self.dir.path(), restore, &all)
    }
    /// The source and parser of the staged input, with punctuated watermarks.
    fn events(&self, env: &StreamEnv) -> weir::DataStream<WordEvent> {
        self.events_behind(env, 0)
    }
    fn events_behind(&self, env: &StreamEnv, delay: i64) -> weir::DataStream<WordEvent> {
        env.source(FileSource::follow(self.input()))
            .uid("source")
            .flat_map(parse_word_event)
            .uid("parse")
            .assign_timestamps_and_watermarks(punctuated(delay))
    }
    fn wait_for(&self, what: &str, cond: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond(&committed_lines(&self.out())) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", committed_lines(&self.out()));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    fn stop_with_savepoint(&self, handle: weir::JobHandle) -> PathBuf {
        common::stop_with_savepoint(handle, &self.dir.path().join("sp"), self.backend.savepoint_format(), false)
    }
}

backend_tests! {
    fn session_windows_merge_across_a_savepoint_and_restore(backend) {
        let staged = Staged::new(backend);
        let job = |env: &StreamEnv| {
            staged
                .events(env)
                .key_by(|e: &WordEvent| e.word.clone())
                .window(EventTimeSessionWindows::with_gap(Duration::from_millis(1000)))
                .aggregate_with(CountAggregate, FormatWindowCount)
                .uid("window")
                .sink(FileSink::new(staged.out()))
                .uid("sink");
        };
        let env = staged.env(None);
        job(&env);
        let handle = env.execute_async("sessions").unwrap();
        // a: [0, 1500) from two records; b: [0, 1000); then c's far-off record closes nothing
        // of a (the watermark stops at 1199, inside a's session).
        staged.append(&[("a", 0), ("a", 500), ("b", 0), ("c", 1200)]);
        staged.wait_for("b's session", |lines| lines.contains(&window_count_line("b", 0, 1000, 1)));
        let savepoint = staged.stop_with_savepoint(handle);
        assert!(!committed_lines(&staged.out()).iter().any(|l| l.contains("word='a'")), "a's session is still open");

        // Restored: a record bridging a's open session merges with it; then time moves on.
        let env = staged.env(Some(&savepoint));
        job(&env);
        let handle = env.execute_async("sessions").unwrap();
        staged.append(&[("a", 1400), ("a", 2300), ("z", 10_000)]);
        staged.wait_for("a's merged session", |lines| lines.iter().any(|l| l.contains("word='a'")));
        let a: Vec<String> = committed_lines(&staged.out()).into_iter().filter(|l| l.contains("word='a'")).collect();
        assert_eq!(a, vec![window_count_line("a", 0, 3300, 4)], "one session of 4 records across the restore");
        handle.cancel();
        handle.wait();
    }

    fn a_record_late_before_a_failure_is_still_late_after_the_restore(backend) {
        // With watermarks restored (the default), the record that crashes the job and is replayed
        // right after the restore is late data, as it was before; restarting event time from
        // scratch (Flink's way, weir.watermarks.restore: false) counts it into a window that had
        // already fired, which then fires a second time.
        for restore_watermarks in [true, false] {
            let staged = Staged::new(backend);
            let setting = format!("weir.watermarks.restore={restore_watermarks}");
            let env = staged.env_with(None, &["restart-strategy.type=fixed-delay", "restart-strategy.fixed-delay.delay=0 ms", &setting]);
            let crashed = Arc::new(AtomicU64::new(0));
            let crash = crashed.clone();
            let events = staged.events_behind(&env, 2000).map(move |e: WordEvent| {
                if e.ts == 5_000 && crash.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("injected failure: the late record crashes the job once");
                }
                e
            });
            count_windows(events, &settings_10s(), &staged.out(), &staged.late());
            let handle = env.execute_async("late-across-a-failure").unwrap();
            staged.append(&[("a", 1_000), ("b", 25_000)]);
            // [0, 10 000) fired and was committed: a checkpoint holds the watermark past it.
            staged.wait_for("a's first window", |lines| lines.contains(&window_count_line("a", 0, 10_000, 1)));
            staged.append(&[("a", 5_000), ("c", 40_000)]);
            staged.wait_for("c's record to pass [20 000, 30 000)", |lines| lines.iter().any(|l| l.contains("word='b'")));
            handle.cancel();
            handle.wait();
            assert_eq!(crashed.load(Ordering::SeqCst), 2, "the job crashed once and replayed the record");
            let (out, late) = (committed_lines(&staged.out()), committed_lines(&staged.late()));
            let a_windows = out.iter().filter(|l| l.contains("word='a'")).count();
            if restore_watermarks {
                assert_eq!(late, vec![event_line("a", 5_000)], "still late after the restore");
                assert_eq!(a_windows, 1, "[0, 10 000) fired once: {out:?}");
            } else {
                assert!(late.is_empty(), "event time started over: the record was not late: {late:?}");
                assert_eq!(a_windows, 2, "the fired window took the record and fired again: {out:?}");
            }
        }
    }

    fn a_restore_into_another_kind_of_window_or_key_is_refused_before_the_job_starts(backend) {
        let staged = Staged::new(backend);
        let env = staged.env(None);
        staged
            .events(&env)
            .key_by(|e: &WordEvent| e.word.clone())
            .window(weir::TumblingEventTimeWindows::of(Duration::from_secs(10)))
            .aggregate_with(CountAggregate, FormatWindowCount)
            .uid("window")
            .sink(FileSink::new(staged.out()))
            .uid("sink");
        let handle = env.execute_async("tumbling").unwrap();
        staged.append(&[("a", 1000), ("b", 2000)]);
        // Wait for the records to be in a checkpoint, so the savepoint holds open windows.
        let deadline = Instant::now() + Duration::from_secs(30);
        while handle.completed_checkpoints().len() < 3 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        let savepoint = staged.stop_with_savepoint(handle);

        let env = staged.env(Some(&savepoint));
        staged
            .events(&env)
            .key_by(|e: &WordEvent| e.word.clone())
            .window(SlidingEventTimeWindows::of(Duration::from_secs(10), Duration::from_secs(5)))
            .aggregate_with(CountAggregate, FormatWindowCount)
            .uid("window")
            .sink(FileSink::new(staged.out()))
            .uid("sink");
        let outcome = env.execute_async("sliding").unwrap().wait();
        assert_eq!(outcome.status, JobStatus::Failed);
        assert_eq!(outcome.restarts, 0, "a restore that cannot succeed is not retried");
        let cause = outcome.failure.unwrap();
        assert!(
            cause.contains("uid 'window'") && cause.contains("'window-contents'") && cause.contains("window:tumbling-event-time") && cause.contains("window:sliding-event-time"),
            "{cause}"
        );

        // Keyed by a number instead of the word: the restored keys do not decode.
        let env = staged.env(Some(&savepoint));
        staged
            .events(&env)
            .key_by(|e: &WordEvent| e.ts as u64)
            .window(weir::TumblingEventTimeWindows::of(Duration::from_secs(10)))
            .aggregate(CountAggregate)
            .uid("window")
            .map(|n: u64| n.to_string())
            .sink(FileSink::new(staged.out()))
            .uid("sink");
        let outcome = env.execute_async("other key").unwrap().wait();
        assert_eq!(outcome.status, JobStatus::Failed);
        assert_eq!(outcome.restarts, 0);
        let cause = outcome.failure.unwrap();
        assert!(cause.contains("uid 'window'") && cause.contains("key type"), "{cause}");
    }
}

#[test]
fn an_event_time_window_without_timestamps_fails_the_job_with_the_fix() {
    // No watermark strategy: the records carry no event time. The job fails at once (a restart
    // would meet the same records), saying what to add.
    let env =
        common::test_env(&[("restart-strategy.type", "fixed-delay"), ("restart-strategy.fixed-delay.attempts", "5")]);
    env.source(GeneratorSource::new(|i| event_line("a", i as i64)).with_count(10))
        .key_by(|l: &String| l.clone())
        .window(weir::TumblingEventTimeWindows::of(Duration::from_secs(1)))
        .aggregate(CountAggregate)
        .uid("window")
        .map(|n: u64| n.to_string())
        .sink(Discard);
    let outcome = env.execute_async("no-timestamps").unwrap().wait();
    assert_eq!(outcome.status, JobStatus::Failed);
    assert_eq!(outcome.restarts, 0);
    let cause = outcome.failure.unwrap();
    assert!(
        cause.contains("uid 'window'") && cause.contains("without an event timestamp") && cause.contains("from_source"),
        "{cause}"
    );
}

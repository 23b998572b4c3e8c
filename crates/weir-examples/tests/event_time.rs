//! Event time through the public API: timestamps and watermarks from strategies, the minimum
//! watermark over an operator's inputs with idle inputs left out, event-time and processing-time
//! timers of keyed process functions (exactly once under failures, carried by savepoints,
//! overdue ones firing right after a restore), side outputs, and the end of input firing what
//! is left.

mod common;

use common::{committed_lines, diff, Backend, Collect, Rng};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::connectors::{FileSink, GeneratorSource};
use weir::{
    BoxError, Collector, Configuration, Context, JobStatus, KeyedProcessFunction, MapState, MapStateDescriptor,
    OutputTag, RuntimeContext, SinkFunction, SourceContext, SourceFunction, SourcePoll, StreamEnv, TimeDomain,
    ValueState, ValueStateDescriptor, WatermarkStrategy,
};

/// A source that never emits and never ends (a partition without data).
#[derive(Clone)]
struct Silent;

impl SourceFunction<(u64, i64)> for Silent {
    fn open(&mut self, _: &SourceContext<'_>) -> Result<(), BoxError> {
        Ok(())
    }
    fn poll(&mut self, _: &mut Collector<'_, (u64, i64)>) -> Result<SourcePoll, BoxError> {
        Ok(SourcePoll::Idle(Duration::from_millis(20)))
    }
    fn snapshot_state(&mut self, _: weir::CheckpointId, _: &mut weir::OperatorStateSnapshot) -> Result<(), BoxError> {
        Ok(())
    }
    fn is_stateful(&self) -> bool {
        false
    }
}

/// Registers an event-time timer at each record's timestamp; reports records that arrive at or
/// behind the watermark ("late") and timers that fire before the watermark reaches them.
#[derive(Clone)]
struct TimerAtTimestamp;

impl KeyedProcessFunction<u64, (u64, i64), String> for TimerAtTimestamp {
    fn process(
        &mut self,
        (key, ts): (u64, i64),
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, String>,
    ) -> Result<(), BoxError> {
        assert_eq!(ctx.timestamp(), Some(ts), "the record carries the timestamp the strategy assigned");
        let watermark = ctx.timer_service().current_watermark();
        if ts <= watermark {
            out.collect(format!("late {key} {ts} at watermark {watermark}"));
        }
        ctx.timer_service().register_event_time_timer(ts)?;
        Ok(())
    }

    fn on_timer(
        &mut self,
        ts: i64,
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, String>,
    ) -> Result<(), BoxError> {
        assert_eq!(ctx.time_domain(), Some(TimeDomain::EventTime));
        let watermark = ctx.timer_service().current_watermark();
        if watermark < ts {
            out.collect(format!("early {} {ts} at watermark {watermark}", ctx.key()));
        }
        out.collect(format!("fired {} {ts}", ctx.key()));
        Ok(())
    }
}

fn monotonous() -> WatermarkStrategy<(u64, i64)> {
    WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &(u64, i64), _| r.1)
}

fn env_with(settings: &[(&str, &str)]) -> StreamEnv {
    let mut all = vec![("pipeline.auto-watermark-interval", "5 ms")];
    all.extend_from_slice(settings);
    common::test_env(&all)
}

#[test]
fn union_waits_for_the_slowest_input_so_no_record_is_late_and_every_timer_fires_once() {
    let env = env_with(&[("parallelism.default", "2")]);
    // Both inputs cover the same event time; the slow one trails far behind in wall-clock time.
    // Taking the maximum instead of the minimum of the inputs' watermarks makes its records late.
    let fast = env
        .from_source(GeneratorSource::new(|i| (i % 7, (i * 10) as i64)).with_count(20_000), monotonous())
        .set_parallelism(1);
    let slow = env
        .from_source(
            GeneratorSource::new(|i| (100 + i % 5, (i * 100) as i64)).with_count(300).with_rate(1000.0),
            monotonous(),
        )
        .set_parallelism(1);
    let sink = Collect::default();
    fast.union([slow]).key_by(|r: &(u64, i64)| r.0).process(TimerAtTimestamp).sink(sink.clone());
    env.execute("union").unwrap();

    let lines = sink.lines();
    let wrong: Vec<&String> = lines.iter().filter(|l| !l.starts_with("fired")).collect();
    assert!(wrong.is_empty(), "{} records late or timers early, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    let mut fired: Vec<&String> = lines.iter().collect();
    fired.sort();
    let mut want: Vec<String> = (0..20_000u64)
        .map(|i| format!("fired {} {}", i % 7, i * 10))
        .chain((0..300u64).map(|i| format!("fired {} {}", 100 + i % 5, i * 100)))
        .collect();
    want.sort();
    want.dedup();
    let fired: Vec<String> = fired.into_iter().cloned().collect();
    assert_eq!(fired.len(), want.len(), "every distinct timer fires once: {}", diff(&fired, &want));
    assert_eq!(fired, want);
}

/// A running job's fired timers, polled until `n` of them arrived.
fn wait_for_lines(sink: &Collect, n: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if sink.lines().len() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn an_idle_input_does_not_hold_event_time_back() {
    let run = |idleness: bool| {
        let env = env_with(&[]);
        let busy = env.from_source(
            GeneratorSource::new(|i| (i % 3, (i * 10) as i64)).with_rate(2000.0),
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(20))
                .with_timestamp_assigner(|r: &(u64, i64), _| r.1),
        );
        let strategy = WatermarkStrategy::for_monotonous_timestamps();
        let strategy = if idleness { strategy.with_idleness(Duration::from_millis(50)) } else { strategy };
        let silent = env.from_source(Silent, strategy);
        let sink = Collect::default();
        busy.union([silent]).key_by(|r: &(u64, i64)| r.0).process(TimerAtTimestamp).sink(sink.clone());
        let handle = env.execute_async("idleness").unwrap();
        let fired = wait_for_lines(&sink, 10, Duration::from_secs(if idleness { 30 } else { 2 }));
        handle.cancel();
        handle.wait();
        (fired, sink.lines())
    };
    let (fired, lines) = run(false);
    assert!(!fired && lines.is_empty(), "a silent input without idleness holds every timer back: {lines:?}");
    let (fired, lines) = run(true);
    assert!(fired, "with idleness the silent input is left out and timers fire: {lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("fired")), "{lines:?}");
}

// ---- exactly once under failures ------------------------------------------------------------

/// Record `i` of key `i % keys` registers an event-time timer at the next multiple of 50 above
/// `i + 100`, and adds `i` to that timer's sum (map state by timer time). The timer emits
/// `key time sum` and clears its entry. Every record registering a timer has a timestamp below
/// it, so with monotonous sources all of them are counted before it fires: the output is known.
#[derive(Clone)]
struct SumUntilTimer {
    sums: Option<MapState<i64, u64>>,
    faults: Faults,
}

/// Failures injected into one run; counters are shared by every subtask and survive restarts.
#[derive(Clone, Default)]
struct Faults {
    panic_at_record: u64,
    panic_at_timer: u64,
    records: Arc<AtomicU64>,
    timers: Arc<AtomicU64>,
    fired: Arc<AtomicU64>,
}

impl Faults {
    fn maybe_panic(&self, count: &AtomicU64, at: u64, what: &str) {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        if n == at && self.fired.fetch_add(1, Ordering::SeqCst) < 64 {
            panic!("injected failure: {what}");
        }
    }
}

fn timer_of(i: u64) -> i64 {
    ((i + 100) / 50 * 50 + 50) as i64
}

impl KeyedProcessFunction<u64, (u64, i64), String> for SumUntilTimer {
    fn open(&mut self, ctx: &mut RuntimeContext<'_, u64>) -> Result<(), BoxError> {
        self.sums = Some(ctx.map_state(&MapStateDescriptor::new("sums"))?);
        Ok(())
    }

    fn process(
        &mut self,
        (_, ts): (u64, i64),
        ctx: &mut Context<'_, u64>,
        _: &mut Collector<'_, String>,
    ) -> Result<(), BoxError> {
        self.faults.maybe_panic(&self.faults.records, self.faults.panic_at_record, "panic in process");
        let sums = self.sums.ok_or("not opened")?;
        let at = timer_of(ts as u64);
        let sum = sums.get(ctx, &at)?.unwrap_or(0) + ts as u64;
        sums.put(ctx, at, sum)?;
        ctx.timer_service().register_event_time_timer(at)?;
        Ok(())
    }

    fn on_timer(
        &mut self,
        at: i64,
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, String>,
    ) -> Result<(), BoxError> {
        self.faults.maybe_panic(&self.faults.timers, self.faults.panic_at_timer, "panic in on_timer");
        let sums = self.sums.ok_or("not opened")?;
        let sum = sums.get(ctx, &at)?.ok_or("a timer without its sum")?;
        sums.remove(ctx, &at)?;
        out.collect(format!("{} {at} {sum}", ctx.key()));
        Ok(())
    }
}

fn sum_truth(records: u64, keys: u64) -> Vec<String> {
    let mut sums: BTreeMap<(u64, i64), u64> = BTreeMap::new();
    for i in 0..records {
        *sums.entry((i % keys, timer_of(i))).or_default() += i;
    }
    let mut lines: Vec<String> = sums.iter().map(|((k, at), s)| format!("{k} {at} {s}")).collect();
    lines.sort();
    lines
}

fn keyed_timestamps(keys: u64) -> GeneratorSource<(u64, i64)> {
    GeneratorSource::new(move |i| (i % keys, i as i64))
}

fn run_timers_with_failures(seed: u64, backend: Backend) -> (u32, u64) {
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let (records, keys) = (2000 + rng.below(3000), 1 + rng.below(20));
    let parallelism = 1 + rng.below(2);
    let faults = Faults {
        panic_at_record: 1 + rng.below(records),
        panic_at_timer: if rng.below(2) == 0 { 1 + rng.below(records / 50) } else { 0 },
        ..Faults::default()
    };
    let ck = dir.path().join("ck");
    let mut env = env_with(&[
        ("execution.checkpointing.interval", "15 ms"),
        ("execution.checkpointing.dir", ck.to_str().unwrap()),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.attempts", "50"),
        ("restart-strategy.fixed-delay.delay", "0 ms"),
        ("weir.network.batch-size", "32"),
        ("parallelism.default", &parallelism.to_string()),
    ]);
    let mut config = Configuration::new();
    backend.configure(&mut config, &dir.path().join("rocksdb"));
    for (k, v) in config.iter() {
        env.set(k, v).unwrap();
    }
    let out = dir.path().join("out");
    env.from_source(keyed_timestamps(keys).with_count(records).with_rate(200_000.0), monotonous())
        .uid("source")
        .key_by(|r: &(u64, i64)| r.0)
        .process(SumUntilTimer { sums: None, faults: faults.clone() })
        .uid("sums")
        .sink(FileSink::new(&out))
        .uid("sink")
        .set_parallelism(1);
    let outcome = env.execute("timers-exactly-once").unwrap();
    let got = committed_lines(&out);
    let want = sum_truth(records, keys);
    assert_eq!(got, want, "seed {seed}: {}", diff(&got, &want));
    (outcome.restarts, faults.fired.load(Ordering::SeqCst))
}

fn timers_exactly_once(backend: Backend, runs: u64) {
    let mut restarted = 0;
    for seed in 0..runs {
        let (restarts, fired) = run_timers_with_failures(seed * 7919 + 17, backend);
        assert!(fired >= 1, "seed {seed}: the injected failure happened");
        if restarts > 0 {
            restarted += 1;
        }
    }
    assert!(restarted >= runs * 3 / 4, "most runs restarted: {restarted} of {runs}");
}

#[test]
fn event_time_timers_fire_exactly_once_under_failures_hashmap() {
    timers_exactly_once(Backend::HashMap, 12);
}

#[test]
fn event_time_timers_fire_exactly_once_under_failures_rocksdb() {
    timers_exactly_once(Backend::RocksDb, 8);
}

// ---- savepoints, rescaling, processing time -------------------------------------------------

/// Registers a processing-time timer at a fixed wall-clock time for each key's first record,
/// and emits the key and how late the timer fired.
#[derive(Clone)]
struct WakeAt {
    at: i64,
    registered: Option<ValueState<bool>>,
}

impl KeyedProcessFunction<u64, u64, String> for WakeAt {
    fn open(&mut self, ctx: &mut RuntimeContext<'_, u64>) -> Result<(), BoxError> {
        self.registered = Some(ctx.value_state(&ValueStateDescriptor::new("registered"))?);
        Ok(())
    }

    fn process(&mut self, _: u64, ctx: &mut Context<'_, u64>, out: &mut Collector<'_, String>) -> Result<(), BoxError> {
        let registered = self.registered.ok_or("not opened")?;
        if registered.value(ctx)?.is_none() {
            registered.update(ctx, true)?;
            ctx.timer_service().register_processing_time_timer(self.at)?;
            out.collect(format!("registered {}", ctx.key()));
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        at: i64,
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, String>,
    ) -> Result<(), BoxError> {
        assert_eq!(ctx.time_domain(), Some(TimeDomain::ProcessingTime));
        let now = ctx.timer_service().current_processing_time();
        assert!(now >= at, "a processing-time timer fires once its time has come");
        out.collect(format!("woke {}", ctx.key()));
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

backend_tests! {
    fn processing_time_timers_due_while_the_job_was_down_fire_right_after_restore(backend) {
        let dir = tempfile::tempdir().unwrap();
        let keys = 8u64;
        let at = now_ms() + 5000;
        let job = |restore: Option<&Path>, sink: &Collect, p: u32| {
            let env = common::job_env(backend, dir.path(), restore, &[]);
            env.source(GeneratorSource::new(move |i| i % keys).with_rate(200.0))
                .uid("source")
                .set_parallelism(1)
                .key_by(|k: &u64| *k)
                .process(WakeAt { at, registered: None })
                .uid("wake")
                .set_parallelism(p)
                .sink(sink.clone())
                .set_parallelism(1);
            env.execute_async("wake").unwrap()
        };
        let first = Collect::default();
        let handle = job(None, &first, 2);
        assert!(wait_for_lines(&first, keys as usize, Duration::from_secs(20)), "every key registered: {:?}", first.lines());
        let savepoint = common::stop_with_savepoint(handle, &dir.path().join("sp"), backend.savepoint_format(), false);
        assert!(now_ms() < at, "the job stopped before its timers were due (the machine is too slow for this test)");
        assert!(first.lines().iter().all(|l| l.starts_with("registered")), "{:?}", first.lines());

        // The timers fall due while no job runs; a restore at another parallelism fires each
        // once, right away, on the subtask owning its key.
        while now_ms() <= at {
            std::thread::sleep(Duration::from_millis(20));
        }
        let second = Collect::default();
        let handle = job(Some(&savepoint), &second, 3);
        let restored_at = now_ms();
        assert!(wait_for_lines(&second, keys as usize, Duration::from_secs(20)), "{:?}", second.lines());
        let fired_within = now_ms() - restored_at;
        handle.cancel();
        handle.wait();
        let mut woke: Vec<String> = second.lines().into_iter().filter(|l| l.starts_with("woke")).collect();
        woke.sort();
        let want: Vec<String> = { let mut w: Vec<String> = (0..keys).map(|k| format!("woke {k}")).collect(); w.sort(); w };
        assert_eq!(woke, want, "each overdue timer fired once");
        assert!(second.lines().iter().all(|l| !l.starts_with("registered")), "the registrations were restored");
        eprintln!("overdue timers fired within {fired_within} ms of the restore");
    }

    fn event_time_timers_in_a_savepoint_fire_after_a_rescaled_restore_and_a_drain(backend) {
        let dir = tempfile::tempdir().unwrap();
        let (keys, total) = (13u64, 4000u64);
        let (input, out) = (dir.path().join("input"), dir.path().join("out"));
        std::fs::write(&input, "").unwrap();
        let mut savepoint: Option<PathBuf> = None;
        // Each round appends a third of the input and stops with a savepoint while the timers of
        // its last records are pending; they fire in the next round, at parallelism 1 → 3 → 2,
        // on the subtask owning their key. The last round drains: the end of event time fires
        // what is left, and the final savepoint commits it.
        for (round, p) in [1u32, 3, 2].into_iter().enumerate() {
            let settings = ["execution.checkpointing.interval=30 ms", "pipeline.auto-watermark-interval=5 ms"];
            let env = common::job_env(backend, dir.path(), savepoint.as_deref(), &settings);
            env.from_source(weir::connectors::FileSource::follow(&input), WatermarkStrategy::for_monotonous_timestamps()
                    .with_timestamp_assigner(|line: &String, _| line.trim().parse::<i64>().unwrap_or(0)))
                .uid("source")
                .set_parallelism(1)
                .map(move |line: String| { let i: u64 = line.trim().parse().unwrap(); (i % keys, i as i64) })
                .uid("parse")
                .set_parallelism(1)
                .key_by(|r: &(u64, i64)| r.0)
                .process(SumUntilTimer { sums: None, faults: Faults::default() })
                .uid("sums")
                .set_parallelism(p)
                .sink(FileSink::new(&out))
                .uid("sink")
                .set_parallelism(1);
            let handle = env.execute_async("rescale-timers").unwrap();
            let (from, to) = (total * round as u64 / 3, total * (round as u64 + 1) / 3);
            let lines: String = (from..to).map(|i| format!("{i}\n")).collect();
            std::fs::OpenOptions::new().append(true).open(&input).unwrap().write_all(lines.as_bytes()).unwrap();
            let sp = dir.path().join(format!("sp{round}"));
            // Timers well behind the newest record fired, so the source has read the round's
            // input (one write, read at once); the last timers are still pending. (A drain ends
            // the input where the source stands: one before that would leave records unread.)
            let deadline = Instant::now() + Duration::from_secs(30);
            let fired_up_to = || committed_lines(&out).iter().filter_map(|l| l.split(' ').nth(1)?.parse::<u64>().ok()).max().unwrap_or(0);
            while fired_up_to() + 200 < to {
                assert!(Instant::now() < deadline, "round {round} did not progress");
                std::thread::sleep(Duration::from_millis(10));
            }
            if round < 2 {
                savepoint = Some(common::stop_with_savepoint(handle, &sp, backend.savepoint_format(), false));
                assert!(fired_up_to() < timer_of(to - 1) as u64, "round {round}: the newest timers are still pending");
            } else {
                common::stop_with_savepoint(handle, &sp, backend.savepoint_format(), true);
            }
        }
        let got = committed_lines(&out);
        let want = sum_truth(total, keys);
        assert_eq!(got, want, "{}", diff(&got, &want));
    }
}

// ---- side outputs ---------------------------------------------------------------------------

/// Routes odd values to a side output and keeps even ones.
#[derive(Clone)]
struct SplitOdd(OutputTag<String>);

impl KeyedProcessFunction<u64, u64, String> for SplitOdd {
    fn process(&mut self, v: u64, ctx: &mut Context<'_, u64>, out: &mut Collector<'_, String>) -> Result<(), BoxError> {
        if v % 2 == 1 {
            ctx.output(&self.0, format!("odd {v}"));
        } else {
            out.collect(format!("even {v}"));
        }
        Ok(())
    }
}

#[test]
fn side_outputs_reach_their_consumers_and_keep_their_checkpoints_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_with(&[
        ("execution.checkpointing.interval", "10 ms"),
        ("execution.checkpointing.dir", dir.path().join("ck").to_str().unwrap()),
        ("parallelism.default", "2"),
    ]);
    let odd = OutputTag::<String>::new("odd");
    let main = env
        .source(GeneratorSource::counter().with_count(5000).with_rate(50_000.0))
        .uid("source")
        .key_by(|v: &u64| *v % 10)
        .process(SplitOdd(odd.clone()))
        .uid("split");
    let (evens, odds, chained) = (dir.path().join("evens"), dir.path().join("odds"), dir.path().join("chained"));
    // One consumer of the side output across a channel (parallelism 1), one chained to the
    // operator that emits it (parallelism 2, as the operator).
    main.get_side_output(&odd).sink(FileSink::new(&odds)).uid("odd-sink").set_parallelism(1);
    main.get_side_output(&odd).sink(FileSink::new(&chained)).uid("chained-odd-sink");
    main.sink(FileSink::new(&evens)).uid("even-sink");
    let handle = env.execute_async("side-outputs").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while handle.completed_checkpoints().len() < 3 {
        assert!(Instant::now() < deadline, "checkpoints complete with a side output in the graph");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(handle.wait().status, JobStatus::Finished);
    let sorted = |f: &dyn Fn(u64) -> bool, word: &str| {
        let mut v: Vec<String> = (0..5000u64).filter(|v| f(*v)).map(|v| format!("{word} {v}")).collect();
        v.sort();
        v
    };
    assert_eq!(committed_lines(&odds), sorted(&|v| v % 2 == 1, "odd"));
    assert_eq!(committed_lines(&chained), sorted(&|v| v % 2 == 1, "odd"));
    assert_eq!(committed_lines(&evens), sorted(&|v| v % 2 == 0, "even"));
}

#[test]
fn a_side_output_of_an_operator_that_has_none_is_refused() {
    let env = env_with(&[]);
    let tag = OutputTag::<u64>::new("nothing");
    let mapped = env.source(GeneratorSource::counter().with_count(10)).map(|v: u64| v + 1);
    mapped.get_side_output(&tag).sink(Collect::default().map_u64());
    mapped.sink(Collect::default().map_u64());
    let Err(err) = env.execute("bad") else { panic!("a side output of a map was accepted") };
    let err = err.to_string();
    assert!(err.contains("'Map' emits no side outputs"), "{err}");
}

/// A sink of numbers into the collector, as text.
#[derive(Clone)]
struct CollectNumbers(Collect);

impl Collect {
    fn map_u64(self) -> CollectNumbers {
        CollectNumbers(self)
    }
}

impl SinkFunction<u64> for CollectNumbers {
    fn invoke(&mut self, value: u64) -> Result<(), BoxError> {
        self.0.invoke(value.to_string())
    }
}

// ---- end of input ---------------------------------------------------------------------------

#[test]
fn the_end_of_a_bounded_input_fires_every_pending_event_time_timer() {
    // Timers far in the future of the data still fire: the end of input is the end of time.
    let env = env_with(&[("parallelism.default", "2")]);
    let sink = Collect::default();
    env.from_source(GeneratorSource::new(|i| (i % 4, 1_000_000 + i as i64)).with_count(100), monotonous())
        .key_by(|r: &(u64, i64)| r.0)
        .process(TimerAtTimestamp)
        .sink(sink.clone());
    env.execute("end").unwrap();
    let mut got = sink.lines();
    got.sort();
    let mut want: Vec<String> = (0..100u64).map(|i| format!("fired {} {}", i % 4, 1_000_000 + i)).collect();
    want.sort();
    assert_eq!(got, want);
}

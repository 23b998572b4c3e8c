//! The runtime through the public API: partitioners, keyed routing against state ownership, job
//! status transitions and restart limits, and checkpoint expiry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir::connectors::GeneratorSource;
use weir::{
    BoxError, CheckpointId, Collector, Configuration, Context, JobStatus, KeyedProcessFunction, OperatorStateSnapshot,
    RuntimeContext, SinkContext, SinkFunction, StreamEnv,
};

fn config(pairs: &[(&str, &str)]) -> Configuration {
    let mut c = Configuration::new();
    for (k, v) in pairs {
        c.set(k, v).unwrap();
    }
    c
}

/// Records which subtask received which value.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(u32, u64)>>>,
    subtask: u32,
}

impl SinkFunction<u64> for Recorder {
    fn open(&mut self, ctx: &SinkContext<'_>) -> Result<(), BoxError> {
        self.subtask = ctx.subtask;
        Ok(())
    }
    fn invoke(&mut self, value: u64) -> Result<(), BoxError> {
        self.seen.lock().unwrap().push((self.subtask, value));
        Ok(())
    }
}

fn per_subtask(seen: &[(u32, u64)]) -> BTreeMap<u32, Vec<u64>> {
    let mut m: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (s, v) in seen {
        m.entry(*s).or_default().push(*v);
    }
    m
}

#[test]
fn rebalance_deals_round_robin_and_broadcast_reaches_every_subtask() {
    let rebalanced = Recorder::default();
    let broadcast = Recorder::default();
    let env = StreamEnv::new();
    let source = env.source(GeneratorSource::counter().with_count(1000)).uid("numbers");
    source.clone().rebalance().sink(rebalanced.clone()).uid("rebalanced").set_parallelism(3);
    source.broadcast().sink(broadcast.clone()).uid("broadcast").set_parallelism(3);
    assert_eq!(env.execute("partitioners").unwrap().status, JobStatus::Finished);

    let r = per_subtask(&rebalanced.seen.lock().unwrap());
    let sizes: Vec<usize> = r.values().map(Vec::len).collect();
    assert_eq!(sizes, vec![334, 333, 333]);
    assert!(r[&0].iter().all(|v| v % 3 == 0), "one producer deals records in turn");
    let b = per_subtask(&broadcast.seen.lock().unwrap());
    assert_eq!(b.len(), 3);
    for values in b.values() {
        assert_eq!(values, &(0..1000).collect::<Vec<u64>>(), "every subtask sees every record, in order");
    }
}

/// Remembers its subtask's key-group range and checks every key against it.
#[derive(Clone)]
struct OwnershipCheck {
    subtask: u32,
    seen: Arc<Mutex<Vec<(u32, u64)>>>,
}

impl KeyedProcessFunction<u64, u64, u64> for OwnershipCheck {
    fn open(&mut self, ctx: &mut RuntimeContext<'_, u64>) -> Result<(), BoxError> {
        self.subtask = ctx.subtask();
        Ok(())
    }
    fn process(&mut self, v: u64, ctx: &mut Context<'_, u64>, _: &mut Collector<'_, u64>) -> Result<(), BoxError> {
        assert_eq!(*ctx.key(), v);
        self.seen.lock().unwrap().push((self.subtask, v));
        Ok(())
    }
}

#[test]
fn keyed_routing_matches_the_key_group_formula() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let env = StreamEnv::new();
    env.source(GeneratorSource::counter().with_count(2000))
        .uid("numbers")
        .set_parallelism(2)
        .key_by(|v: &u64| *v)
        .process(OwnershipCheck { subtask: 0, seen: seen.clone() })
        .uid("check")
        .set_parallelism(3)
        .set_max_parallelism(13);
    env.execute("routing").unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2000);
    for (subtask, key) in seen.iter() {
        let kg = weir_core::key_group::assign_to_key_group(key, 13);
        assert_eq!(*subtask, weir_core::key_group::operator_index_for_key_group(13, 3, kg), "key {key}");
    }
}

#[derive(Clone)]
struct AlwaysFails;

impl SinkFunction<u64> for AlwaysFails {
    fn invoke(&mut self, v: u64) -> Result<(), BoxError> {
        if v == 50 {
            return Err("injected: cannot write record 50".into());
        }
        Ok(())
    }
}

#[test]
fn restarts_until_attempts_are_exhausted_then_fails_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let env = StreamEnv::with_config(config(&[
        ("execution.checkpointing.interval", "50 ms"),
        ("execution.checkpointing.dir", dir.path().to_str().unwrap()),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.attempts", "2"),
        ("restart-strategy.fixed-delay.delay", "150 ms"),
    ]));
    // About 50 ms of running per attempt, so every status is observable.
    env.source(GeneratorSource::counter().with_count(100).with_rate(1000.0))
        .uid("numbers")
        .sink(AlwaysFails)
        .uid("fails");
    let handle = env.execute_async("failing").unwrap();
    let control = handle.control();
    let mut statuses = vec![handle.status()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !handle.status().is_terminal() && Instant::now() < deadline {
        let s = handle.status();
        if statuses.last() != Some(&s) {
            statuses.push(s);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let outcome = handle.wait();
    assert_eq!(outcome.status, JobStatus::Failed);
    assert_eq!(outcome.restarts, 2);
    let cause = outcome.failure.unwrap();
    assert!(
        cause.contains("injected: cannot write record 50") && cause.contains("restart attempts exhausted (2)"),
        "{cause}"
    );
    assert!(statuses.contains(&JobStatus::Restarting), "observed {statuses:?}");
    assert!(statuses.contains(&JobStatus::Running), "observed {statuses:?}");
    // The exception history (REST /jobs/:id/exceptions): each failure once, with the task that
    // failed, in order; the timestamps say when the job entered each status.
    let exceptions: Vec<_> = control.exceptions().entries().cloned().collect();
    assert_eq!(exceptions.len(), 3, "{exceptions:?}");
    for e in &exceptions {
        assert!(e.message.contains("injected: cannot write record 50"), "{e:?}");
        assert_eq!(e.task.as_deref(), Some("Source -> Sink (1/1)"), "{e:?}");
    }
    assert!(exceptions.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
    let times = control.status_timestamps();
    let (running, failed) = (times.get(JobStatus::Running).unwrap(), times.get(JobStatus::Failed).unwrap());
    assert!(times.get(JobStatus::Created).unwrap() <= running && running <= failed);
    assert!(times.get(JobStatus::Restarting).is_some());
}

/// A sink whose first snapshot takes longer than the checkpoint timeout.
#[derive(Clone)]
struct SlowFirstSnapshot {
    slowed: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
}

impl SinkFunction<u64> for SlowFirstSnapshot {
    fn invoke(&mut self, _: u64) -> Result<(), BoxError> {
        self.received.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn snapshot_state(&mut self, _: CheckpointId, _: &mut OperatorStateSnapshot) -> Result<(), BoxError> {
        if !self.slowed.swap(true, Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(400));
        }
        Ok(())
    }
}

#[test]
fn an_expired_checkpoint_fails_over_at_tolerable_zero_and_the_job_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let env = StreamEnv::with_config(config(&[
        ("execution.checkpointing.interval", "30 ms"),
        ("execution.checkpointing.timeout", "100 ms"),
        ("execution.checkpointing.dir", dir.path().to_str().unwrap()),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.attempts", "3"),
        ("restart-strategy.fixed-delay.delay", "0 ms"),
    ]));
    let sink = SlowFirstSnapshot { slowed: Arc::default(), received: Arc::default() };
    env.source(GeneratorSource::counter().with_count(2000).with_rate(10_000.0))
        .uid("numbers")
        .sink(sink.clone())
        .uid("slow");
    let handle = env.execute_async("expiry").unwrap();
    let control = handle.control();
    let failed_checkpoints = {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !handle.status().is_terminal() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        handle.failed_checkpoints()
    };
    let outcome = handle.wait();
    assert_eq!(outcome.status, JobStatus::Finished, "{:?}", outcome.failure);
    assert!(failed_checkpoints >= 1, "the slow checkpoint must have expired");
    assert_eq!(outcome.restarts, 1, "tolerable failures 0: the expiry fails the job over once");
    // The failed checkpoint is in the history with why and when, as Flink's statistics show it.
    let history = control.checkpoint_history();
    let expired = history.failed_recent().find(|f| f.message == "Checkpoint expired before completing.");
    let expired = expired.unwrap_or_else(|| panic!("{:?}", history.failed_recent().collect::<Vec<_>>()));
    // The coordinator counts whole milliseconds (the timeout can end up to 1 ms before 100 ms of
    // wall time have passed since the trigger was recorded).
    assert!(expired.failure_timestamp_ms >= expired.trigger_timestamp_ms + 99, "{expired:?}");
    assert!(history.pending().is_empty(), "nothing is pending once the job ended");
    assert!(history.completed_recent().all(|c| c.trigger_timestamp_ms <= c.completed_timestamp_ms));
    assert!(history.completed_recent().all(|c| c.vertices.len() == 1 && c.num_subtasks == 1));
}

/// Fails once, at the first record after `armed` is set.
#[derive(Clone)]
struct FailOnceArmed {
    armed: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
}

impl SinkFunction<u64> for FailOnceArmed {
    fn invoke(&mut self, _: u64) -> Result<(), BoxError> {
        if self.armed.load(Ordering::SeqCst) && !self.fired.swap(true, Ordering::SeqCst) {
            return Err("injected: one failure".into());
        }
        Ok(())
    }
}

/// Committed output a consumer moved away cannot be committed again after a failover: the job
/// fails at once with the file named, instead of failing over again and again (with the default
/// restart strategy, which would otherwise back off and retry forever).
#[test]
fn a_failure_a_restart_cannot_fix_fails_the_job_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (out, moved) = (dir.path().join("out"), dir.path().join("consumed"));
    std::fs::create_dir(&moved).unwrap();
    let env = StreamEnv::with_config(config(&[
        ("execution.checkpointing.interval", "50 ms"),
        ("execution.checkpointing.dir", dir.path().join("ck").to_str().unwrap()),
    ]));
    let fail = FailOnceArmed { armed: Arc::default(), fired: Arc::default() };
    let numbers = env.source(GeneratorSource::counter().with_rate(2000.0)).uid("numbers");
    numbers.clone().sink(fail.clone()).uid("maybe-fail");
    numbers.sink(weir::connectors::FileSink::new(&out)).uid("sink");
    let handle = env.execute_async("consumer-moves-output").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let part_files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&out)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("part-"))
            .collect()
    };
    while part_files().len() < 3 {
        assert!(Instant::now() < deadline, "no committed output");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A consumer takes every committed file, then the job fails over.
    for f in part_files() {
        std::fs::rename(&f, moved.join(f.file_name().unwrap())).unwrap();
    }
    fail.armed.store(true, Ordering::SeqCst);
    while !handle.status().is_terminal() {
        assert!(Instant::now() < deadline, "the job keeps restarting ({} restarts)", handle.restarts());
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome = handle.wait();
    assert_eq!(outcome.status, JobStatus::Failed);
    let cause = outcome.failure.unwrap();
    assert!(cause.contains("a restart cannot fix this") && cause.contains("committed file"), "{cause}");
    assert_eq!(outcome.restarts, 1, "one restart for the injected failure, none for the missing file");
}

/// A checkpoint in flight is counted as in progress until it completes.
#[test]
fn checkpoints_in_flight_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let env = StreamEnv::with_config(config(&[
        ("execution.checkpointing.interval", "1 h"),
        ("execution.checkpointing.dir", dir.path().to_str().unwrap()),
    ]));
    let sink = SlowFirstSnapshot { slowed: Arc::default(), received: Arc::default() };
    env.source(GeneratorSource::counter().with_rate(1000.0)).uid("numbers").sink(sink).uid("slow");
    let handle = env.execute_async("in-flight").unwrap();
    while handle.status() != JobStatus::Running {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(handle.checkpoints_in_progress(), 0);
    let token = handle.trigger_checkpoint().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while handle.checkpoints_in_progress() == 0 {
        assert!(Instant::now() < deadline && handle.completed_checkpoints().is_empty(), "never seen in flight");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(matches!(handle.wait_operation(token, Duration::from_secs(20)), Some(weir::Operation::Completed { .. })));
    assert_eq!(handle.checkpoints_in_progress(), 0);
    handle.cancel();
    handle.wait();
}

/// `union` merges two sources into one keyed count; a failure mid-way restores both sources'
/// positions from the checkpoint whose barriers were aligned across both inputs, so the committed
/// counts are exactly those of every record of both sources.
#[test]
fn union_merges_inputs_and_recovers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let env = StreamEnv::with_config(config(&[
        ("execution.checkpointing.interval", "20 ms"),
        ("execution.checkpointing.dir", dir.path().join("ck").to_str().unwrap()),
        ("restart-strategy.type", "fixed-delay"),
        ("restart-strategy.fixed-delay.attempts", "3"),
        ("restart-strategy.fixed-delay.delay", "0 ms"),
    ]));
    let fail = FailOnceArmed { armed: Arc::default(), fired: Arc::default() };
    let a = env.source(GeneratorSource::keyed(10).with_count(5000).with_rate(20_000.0)).uid("a");
    let b = env.source(GeneratorSource::keyed(10).with_count(5000).with_rate(20_000.0)).uid("b");
    let both = a.union([b]);
    both.clone().map(|(k, _): (u64, u64)| k).sink(fail.clone()).uid("maybe-fail");
    both.key_by(|r: &(u64, u64)| r.0)
        .process(weir_examples::keyed_count::CountPerKey::default())
        .uid("count")
        .sink(weir::connectors::FileSink::new(&out))
        .uid("sink");
    let handle = env.execute_async("union").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while weir::connectors::FileSink::read_committed(&out).map_or(0, |l| l.len()) < 2000 {
        assert!(Instant::now() < deadline && !handle.status().is_terminal(), "no committed output");
        std::thread::sleep(Duration::from_millis(5));
    }
    fail.armed.store(true, Ordering::SeqCst);
    let outcome = handle.wait();
    assert_eq!(outcome.status, JobStatus::Finished, "{:?}", outcome.failure);
    assert_eq!(outcome.restarts, 1);
    let got = weir::connectors::FileSink::read_committed(&out).unwrap();
    assert_eq!(got, weir_examples::keyed_count::expected_output(10_000, 10), "every record of both inputs once");
}

/// Fails with an error a restart cannot fix at its 100th record.
#[derive(Clone)]
struct FailsAtHundred {
    seen: u64,
}

impl SinkFunction<u64> for FailsAtHundred {
    fn invoke(&mut self, _: u64) -> Result<(), BoxError> {
        self.seen += 1;
        if self.seen == 100 {
            return Err(Box::new(weir::Unrecoverable("injected: cannot go on".into())));
        }
        Ok(())
    }
}

/// When a task fails, the tasks that send to it see their channels close and fail too ("a
/// connected task has stopped"). The failure that counts is the first task's own: the job fails at
/// once because that failure cannot be fixed by a restart, its cause and its exception history
/// name it, whichever failure reaches the master first.
#[test]
fn the_failing_task_is_blamed_not_the_tasks_it_disconnects() {
    for round in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let env = StreamEnv::with_config(config(&[
            ("execution.checkpointing.interval", "50 ms"),
            ("execution.checkpointing.dir", dir.path().to_str().unwrap()),
            ("parallelism.default", "2"),
        ]));
        env.source(GeneratorSource::counter()).uid("numbers").rebalance().sink(FailsAtHundred { seen: 0 }).uid("fails");
        let handle = env.execute_async("blame").unwrap();
        let control = handle.control();
        let outcome = handle.wait();
        let cause = outcome.failure.clone().unwrap_or_default();
        assert_eq!(outcome.status, JobStatus::Failed, "round {round}: {cause}");
        assert_eq!(outcome.restarts, 0, "round {round}: a failure a restart cannot fix is not restarted: {cause}");
        assert!(cause.contains("injected: cannot go on"), "round {round}: {cause}");
        let exceptions: Vec<_> = control.exceptions().entries().cloned().collect();
        assert_eq!(exceptions.len(), 1, "round {round}: {exceptions:?}");
        assert!(exceptions[0].task.as_deref().is_some_and(|t| t.starts_with("Sink (")), "{exceptions:?}");
    }
}

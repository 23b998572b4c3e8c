//! Savepoints and restores through the API, modelled on Flink's SavepointITCase, RescalingITCase
//! and ResumeCheckpointManuallyITCase: rescaling keyed state, relocation, claim modes, removed and
//! added operators, incompatible state types, what an intermediate savepoint commits, and what a
//! failed savepoint leaves behind.

mod common;

use common::wait_for;
use common::{local, uri, Backend, FaultyStorage, StorageFault};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use weir::connectors::{FileSink, FileSource, GeneratorSource};
use weir::{
    BoxError, Collector, Context, JobHandle, KeyedProcessFunction, Operation, RuntimeContext, SavepointFormat,
    SnapshotUri, StreamEnv, ValueState, ValueStateDescriptor,
};

const MAX_P: u32 = 13;

/// Counts per key (the record is its own key) and reports the subtask that holds the key:
/// `key count subtask`.
#[derive(Clone, Default)]
struct CountWhere {
    state: Option<ValueState<u64>>,
    subtask: u32,
}

impl<K: weir::Key + std::fmt::Display> KeyedProcessFunction<K, K, String> for CountWhere {
    fn open(&mut self, ctx: &mut RuntimeContext<'_, K>) -> Result<(), BoxError> {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("count"))?);
        self.subtask = ctx.subtask();
        Ok(())
    }
    fn process(&mut self, key: K, ctx: &mut Context<'_, K>, out: &mut Collector<'_, String>) -> Result<(), BoxError> {
        if ctx.key() != &key {
            return Err(weir::Unrecoverable::boxed(format!("scoped to key {:?} for record {key}", ctx.key())));
        }
        let h = self.state.ok_or("not opened")?;
        let n = h.value(ctx)?.unwrap_or(0) + 1;
        h.update(ctx, n)?;
        out.collect(format!("{key} {n} {}", self.subtask));
        Ok(())
    }
}

/// The same state name with another type.
#[derive(Clone, Default)]
struct CountAsText {
    state: Option<ValueState<String>>,
}

impl KeyedProcessFunction<u64, u64, String> for CountAsText {
    fn open(&mut self, ctx: &mut RuntimeContext<'_, u64>) -> Result<(), BoxError> {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }
    fn process(&mut self, key: u64, _: &mut Context<'_, u64>, out: &mut Collector<'_, String>) -> Result<(), BoxError> {
        out.collect(key.to_string());
        Ok(())
    }
}

struct Paths {
    backend: Backend,
    local: PathBuf,
    _dir: tempfile::TempDir,
    input: PathBuf,
    out: PathBuf,
    ck: PathBuf,
    sp: PathBuf,
}

fn paths(backend: Backend) -> Paths {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let paths = Paths {
        backend,
        local: p("rocksdb"),
        input: p("keys.txt"),
        out: p("out"),
        ck: p("ck"),
        sp: p("sp"),
        _dir: dir,
    };
    std::fs::write(&paths.input, "").unwrap();
    paths
}

fn append_keys(input: &Path, keys: impl IntoIterator<Item = u64>) {
    let mut f = std::fs::OpenOptions::new().append(true).open(input).unwrap();
    for k in keys {
        writeln!(f, "{k}").unwrap();
    }
}

fn job_env(paths: &Paths, args: &[&str]) -> StreamEnv {
    let mut all: Vec<String> = ["job", "-D", "execution.checkpointing.interval=40 ms"].map(String::from).to_vec();
    all.extend(paths.backend.args(&paths.local));
    all.extend(args.iter().map(|s| s.to_string()));
    let (mut env, _) = StreamEnv::from_arg_list(all).unwrap();
    env.set(weir::config_keys::CHECKPOINT_DIR, paths.ck.to_str().unwrap()).unwrap();
    env
}

/// file of keys → parse → key_by → count (parallelism `p`, max parallelism 13) → file sink.
fn counting_job(env: &StreamEnv, paths: &Paths, p: u32) {
    counting_job_to(env, paths, p, &paths.out)
}

/// [`counting_job`] writing to `out`.
fn counting_job_to(env: &StreamEnv, paths: &Paths, p: u32, out: &Path) {
    env.source(FileSource::follow(&paths.input))
        .uid("source")
        .set_parallelism(1)
        .map(|line: String| line.trim().parse::<u64>().unwrap_or(0))
        .uid("parse")
        .set_parallelism(1)
        .key_by(|k: &u64| *k)
        .process(CountWhere::default())
        .uid("count")
        .set_parallelism(p)
        .set_max_parallelism(MAX_P)
        .sink(FileSink::new(out))
        .uid("sink")
        .set_parallelism(1);
}

fn committed(out: &Path) -> Vec<String> {
    FileSink::read_committed(out).unwrap()
}

/// Takes a savepoint in `paths.sp`, in the format the backend under test exercises.
fn savepoint(handle: &JobHandle, paths: &Paths) -> PathBuf {
    local(&savepoint_to(handle, &uri(&paths.sp), paths.backend.savepoint_format()))
}

/// Takes a savepoint of a running job into `target`; returns where it is.
fn savepoint_to(handle: &JobHandle, target: &SnapshotUri, format: SavepointFormat) -> SnapshotUri {
    wait_for("the job to run", || handle.status() == weir::JobStatus::Running);
    let token = handle.trigger_savepoint(Some(target), format).unwrap();
    match handle.wait_operation(token, Duration::from_secs(30)) {
        Some(Operation::Completed { location, .. }) => location,
        other => panic!("savepoint did not complete: {other:?}"),
    }
}

fn finish(handle: JobHandle) {
    handle.cancel();
    handle.wait();
}

backend_tests! {
    fn keyed_rescale_1_to_3_to_2_keeps_every_key_once_on_its_subtask(backend) {
        let paths = paths(backend);
        let keys = 0..40u64;
        let mut snapshot: Option<PathBuf> = None;
        for (round, p) in [1u32, 3, 2].into_iter().enumerate() {
            let restore = snapshot.as_ref().map(|s| s.to_str().unwrap().to_string());
            let args: Vec<&str> = restore.as_deref().map(|s| vec!["-s", s]).unwrap_or_default();
            let env = job_env(&paths, &args);
            counting_job(&env, &paths, p);
            let handle = env.execute_async("rescale").unwrap();
            append_keys(&paths.input, keys.clone());
            let want = 40 * (round + 1);
            wait_for("this round's counts", || committed(&paths.out).len() == want);
            snapshot = Some(savepoint(&handle, &paths));
            finish(handle);
        }
        let lines = committed(&paths.out);
        for key in keys {
            let mut mine: Vec<(u64, u32)> = lines
                .iter()
                .map(|l| l.split(' ').collect::<Vec<_>>())
                .filter(|f| f[0] == key.to_string())
                .map(|f| (f[1].parse().unwrap(), f[2].parse().unwrap()))
                .collect();
            mine.sort();
            let counts: Vec<u64> = mine.iter().map(|m| m.0).collect();
            assert_eq!(counts, vec![1, 2, 3], "key {key}: state survived both rescales exactly once");
            let kg = weir_core::key_group::assign_to_key_group(&key, MAX_P);
            for ((_, subtask), p) in mine.iter().zip([1u32, 3, 2]) {
                assert_eq!(
                    *subtask,
                    weir_core::key_group::operator_index_for_key_group(MAX_P, p, kg),
                    "key {key} at p={p}"
                );
            }
        }
    }
}

backend_tests! {
    fn a_borrowed_key_selector_partitions_and_restores_like_a_computed_one(backend) {
        // Round 1 keys by a computed (cloned) key at p=1; round 2 restores its savepoint into the
        // same job keyed by `key_by_ref` at p=3: same key groups, so every word continues its count
        // on the subtask that owns its key group.
        let paths = paths(backend);
        let words: Vec<String> = (0..30).map(|i| format!("wörd-{i}")).collect();
        let mut snapshot: Option<PathBuf> = None;
        for (round, p) in [1u32, 3].into_iter().enumerate() {
            let restore = snapshot.as_ref().map(|s| s.to_str().unwrap().to_string());
            let args: Vec<&str> = restore.as_deref().map(|s| vec!["-s", s]).unwrap_or_default();
            let env = job_env(&paths, &args);
            let lines = env
                .source(FileSource::follow(&paths.input))
                .uid("source")
                .set_parallelism(1)
                .map(|line: String| line.trim().to_string())
                .uid("trim")
                .set_parallelism(1);
            let keyed = if round == 0 { lines.key_by(|w: &String| w.clone()) } else { lines.key_by_ref(|w: &String| w) };
            keyed
                .process(CountWhere::default())
                .uid("count")
                .set_parallelism(p)
                .set_max_parallelism(MAX_P)
                .sink(FileSink::new(&paths.out))
                .uid("sink")
                .set_parallelism(1);
            let handle = env.execute_async("borrowed-keys").unwrap();
            let mut f = std::fs::OpenOptions::new().append(true).open(&paths.input).unwrap();
            for w in &words {
                writeln!(f, "{w}").unwrap();
            }
            drop(f);
            wait_for("this round's counts", || committed(&paths.out).len() == words.len() * (round + 1));
            snapshot = Some(savepoint(&handle, &paths));
            finish(handle);
        }
        let lines = committed(&paths.out);
        for w in &words {
            let second: Vec<&String> = lines.iter().filter(|l| l.starts_with(&format!("{w} 2 "))).collect();
            assert_eq!(second.len(), 1, "{w} continued from its restored count once: {lines:?}");
            let subtask: u32 = second[0].rsplit(' ').next().unwrap().parse().unwrap();
            let kg = weir_core::key_group::assign_to_key_group(w, MAX_P);
            assert_eq!(subtask, weir_core::key_group::operator_index_for_key_group(MAX_P, 3, kg), "{w}");
        }
    }
}

backend_tests! {
    fn a_moved_savepoint_restores_from_its_new_place(backend) {
        let paths = paths(backend);
        let env1 = job_env(&paths, &[]);
        counting_job(&env1, &paths, 2);
        let handle = env1.execute_async("relocate").unwrap();
        append_keys(&paths.input, 0..10);
        wait_for("first counts", || committed(&paths.out).len() == 10);
        let original = savepoint(&handle, &paths);
        finish(handle);
        let moved = paths.sp.parent().unwrap().join("elsewhere").join("moved-savepoint");
        std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
        std::fs::rename(&original, &moved).unwrap();
        let env2 = job_env(&paths, &["-s", moved.to_str().unwrap()]);
        counting_job(&env2, &paths, 2);
        let handle = env2.execute_async("relocated").unwrap();
        append_keys(&paths.input, 0..10);
        wait_for("second counts", || committed(&paths.out).len() == 20);
        finish(handle);
        let second: Vec<String> = committed(&paths.out).into_iter().filter(|l| l.split(' ').nth(1) == Some("2")).collect();
        assert_eq!(second.len(), 10, "every key continued from its restored count");
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Runs a job until it retained a checkpoint, cancels it, and returns that checkpoint.
fn retained_checkpoint(paths: &Paths) -> PathBuf {
    let env =
        job_env(paths, &["-D", "execution.checkpointing.externalized-checkpoint-retention=RETAIN_ON_CANCELLATION"]);
    counting_job(&env, paths, 1);
    let handle = env.execute_async("retained").unwrap();
    append_keys(&paths.input, 0..5);
    wait_for("a committed checkpoint", || committed(&paths.out).len() == 5);
    let job_dir = handle.checkpoint_job_dir().map(|d| local(&d)).unwrap();
    finish(handle);
    weir::latest_checkpoint(&job_dir).unwrap().1
}

backend_tests! {
    fn no_claim_never_touches_the_snapshot_and_claim_deletes_it_once_subsumed(backend) {
        let paths = paths(backend);
        let checkpoint = retained_checkpoint(&paths);
        let before = listing(&checkpoint);

        let env = job_env(&paths, &["-s", checkpoint.to_str().unwrap()]);
        counting_job(&env, &paths, 1);
        let handle = env.execute_async("no-claim").unwrap();
        wait_for("two checkpoints of the new job", || handle.completed_checkpoints().len() >= 2);
        assert_eq!(handle.restored_from().unwrap().checkpoint_id + 1, handle.completed_checkpoints()[0].id);
        finish(handle);
        assert_eq!(listing(&checkpoint), before, "NO_CLAIM leaves every file of the snapshot in place");

        let env = job_env(&paths, &["-s", checkpoint.to_str().unwrap(), "--claim-mode", "claim"]);
        counting_job(&env, &paths, 1);
        let handle = env.execute_async("claim").unwrap();
        wait_for("the claimed checkpoint to be subsumed", || !checkpoint.exists());
        finish(handle);
    }
}

backend_tests! {
    fn removed_stateful_operator_needs_allow_non_restored_state(backend) {
        let paths = paths(backend);
        let env1 = job_env(&paths, &[]);
        counting_job(&env1, &paths, 1);
        let handle = env1.execute_async("before").unwrap();
        append_keys(&paths.input, 0..3);
        wait_for("counts", || committed(&paths.out).len() == 3);
        let sp = savepoint(&handle, &paths);
        finish(handle);

        // The new job has no "count" operator; its "parse" operator has another uid (its old state
        // is empty, so that alone never blocks a restore).
        let without_count = |env: &StreamEnv| {
            env.source(FileSource::follow(&paths.input))
                .uid("source")
                .map(|line: String| line)
                .uid("parse-v2")
                .sink(FileSink::new(paths.out.join("v2")))
                .uid("sink");
        };
        let env2 = job_env(&paths, &["-s", sp.to_str().unwrap()]);
        without_count(&env2);
        let err = env2.execute_async("after").err().expect("refused").to_string();
        assert!(err.contains("uid 'count'") && err.contains("--allow-non-restored-state (-n)"), "{err}");
        assert!(err.contains(&weir::OperatorId::from_uid("count").to_hex()), "{err}");

        let env3 = job_env(&paths, &["-s", sp.to_str().unwrap(), "-n"]);
        without_count(&env3);
        let handle = env3.execute_async("after").unwrap();
        append_keys(&paths.input, [7]);
        wait_for("the restored source to continue after its offset", || {
            committed(&paths.out.join("v2")) == vec!["7".to_string()]
        });
        finish(handle);
    }
}

backend_tests! {
    fn an_added_operator_starts_empty(backend) {
        let paths = paths(backend);
        let env1 = job_env(&paths, &[]);
        counting_job(&env1, &paths, 1);
        let handle = env1.execute_async("before").unwrap();
        append_keys(&paths.input, [1, 1]);
        wait_for("counts", || committed(&paths.out).len() == 2);
        let sp = savepoint(&handle, &paths);
        finish(handle);

        let env2 = job_env(&paths, &["-s", sp.to_str().unwrap()]);
        let counts = env2
            .source(FileSource::follow(&paths.input))
            .uid("source")
            .map(|l: String| l.trim().parse::<u64>().unwrap_or(0))
            .uid("parse");
        counts
            .clone()
            .key_by(|k: &u64| *k)
            .process(CountWhere::default())
            .uid("count")
            .set_max_parallelism(MAX_P)
            .sink(FileSink::new(&paths.out))
            .uid("sink");
        counts
            .key_by(|k: &u64| *k)
            .process(CountWhere::default())
            .uid("count-added")
            .sink(FileSink::new(paths.out.join("added")))
            .uid("sink-added");
        let handle = env2.execute_async("after").unwrap();
        append_keys(&paths.input, [1]);
        wait_for("both counts", || committed(&paths.out).len() == 3 && committed(&paths.out.join("added")).len() == 1);
        finish(handle);
        assert!(committed(&paths.out).contains(&"1 3 0".to_string()), "the restored operator continues");
        assert_eq!(committed(&paths.out.join("added")), vec!["1 1 0"], "the added operator starts empty");
    }
}

backend_tests! {
    fn state_that_cannot_decode_into_the_new_type_fails_the_restore_naming_the_state(backend) {
        let paths = paths(backend);
        let env1 = job_env(&paths, &[]);
        counting_job(&env1, &paths, 1);
        let handle = env1.execute_async("before").unwrap();
        append_keys(&paths.input, [5]);
        wait_for("counts", || committed(&paths.out).len() == 1);
        let sp = savepoint(&handle, &paths);
        finish(handle);

        let env2 = job_env(&paths, &["-s", sp.to_str().unwrap()]);
        env2.source(FileSource::follow(&paths.input))
            .uid("source")
            .map(|l: String| l.trim().parse::<u64>().unwrap_or(0))
            .uid("parse")
            .key_by(|k: &u64| *k)
            .process(CountAsText::default())
            .uid("count")
            .set_max_parallelism(MAX_P)
            .sink(FileSink::new(&paths.out))
            .uid("sink");
        let outcome = env2.execute_async("after").unwrap().wait();
        assert_eq!(outcome.status, weir::JobStatus::Failed);
        assert_eq!(outcome.restarts, 0, "a restore that cannot succeed is not retried");
        let cause = outcome.failure.unwrap();
        assert!(cause.contains("restored state 'count'") && cause.contains("value type"), "{cause}");
    }
}

backend_tests! {
    fn an_intermediate_savepoint_commits_nothing_and_stop_commits(backend) {
        let paths = paths(backend);
        // No periodic checkpoints: only the stop can commit.
        let mut all = vec!["job".to_string()];
        all.extend(backend.args(&paths.local));
        let (env, _) = StreamEnv::from_arg_list(all).unwrap();
        counting_job(&env, &paths, 1);
        let handle = env.execute_async("savepoints-only").unwrap();
        append_keys(&paths.input, 0..5);
        let sp = savepoint(&handle, &paths);
        assert!(sp.join("_metadata").is_file());
        std::thread::sleep(Duration::from_millis(100));
        assert!(committed(&paths.out).is_empty(), "an intermediate savepoint commits no output");
        let token = handle.stop_with_savepoint(Some(&uri(&paths.sp)), SavepointFormat::Canonical, false).unwrap();
        assert!(matches!(handle.wait_operation(token, Duration::from_secs(30)), Some(Operation::Completed { .. })));
        let outcome = handle.wait();
        assert_eq!(outcome.status, weir::JobStatus::Finished);
        assert_eq!(committed(&paths.out).len(), 5, "stop-with-savepoint commits");
    }
}

backend_tests! {
    fn a_failed_savepoint_leaves_no_savepoint_directory(backend) {
        let paths = paths(backend);
        let mut all = vec!["job".to_string()];
        all.extend(backend.args(&paths.local));
        let (mut env, _) = StreamEnv::from_arg_list(all).unwrap();
        env.set_checkpoint_storage(Arc::new(FaultyStorage::new(paths.ck.clone(), StorageFault::Metadata(1))));
        counting_job(&env, &paths, 1);
        let handle = env.execute_async("failing-savepoint").unwrap();
        append_keys(&paths.input, 0..3);
        wait_for("the job to run", || handle.status() == weir::JobStatus::Running);
        let token = handle.trigger_savepoint(Some(&uri(&paths.sp)), backend.savepoint_format()).unwrap();
        match handle.wait_operation(token, Duration::from_secs(30)) {
            Some(Operation::Failed { message }) => assert!(message.contains("metadata write failed"), "{message}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(handle.status(), weir::JobStatus::Running, "a failed savepoint does not fail the job");
        assert!(listing(&paths.sp).is_empty(), "nothing that looks like a savepoint is left: {:?}", listing(&paths.sp));
        // Without a savepoint directory configured or given, the request is refused up front.
        assert_eq!(
            handle.trigger_savepoint(None, SavepointFormat::Canonical).unwrap_err(),
            weir::ControlError::NoSavepointDir
        );
        finish(handle);
    }
}

/// Records the calls a sink receives, in order.
#[derive(Clone, Default)]
struct EventSink {
    events: Arc<std::sync::Mutex<Vec<String>>>,
}

impl EventSink {
    fn push(&self, e: String) {
        self.events.lock().unwrap().push(e);
    }
    fn after_records(&self) -> Vec<String> {
        self.events.lock().unwrap().iter().filter(|e| *e != "record").cloned().collect()
    }
}

impl weir::SinkFunction<String> for EventSink {
    fn invoke(&mut self, _: String) -> Result<(), BoxError> {
        self.push("record".into());
        Ok(())
    }
    fn end_of_input(&mut self) -> Result<(), BoxError> {
        self.push("end-of-input".into());
        Ok(())
    }
    fn snapshot_state(&mut self, id: weir::CheckpointId, _: &mut weir::OperatorStateSnapshot) -> Result<(), BoxError> {
        self.push(format!("snapshot {id}"));
        Ok(())
    }
    fn notify_checkpoint_complete(&mut self, id: weir::CheckpointId) -> Result<(), BoxError> {
        self.push(format!("complete {id}"));
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        self.push("finish".into());
        Ok(())
    }
}

fn stop_and_record(drain: bool) -> Vec<String> {
    let paths = paths(Backend::HashMap);
    let (env, _) = StreamEnv::from_arg_list(["job"].map(String::from)).unwrap();
    let sink = EventSink::default();
    env.source(FileSource::follow(&paths.input)).uid("source").sink(sink.clone()).uid("events");
    let handle = env.execute_async("stop").unwrap();
    append_keys(&paths.input, 0..3);
    wait_for("three records", || sink.events.lock().unwrap().len() == 3);
    let token = handle.stop_with_savepoint(Some(&uri(&paths.sp)), SavepointFormat::Canonical, drain).unwrap();
    let Some(Operation::Completed { checkpoint_id, location }) = handle.wait_operation(token, Duration::from_secs(30))
    else {
        panic!("stop did not complete");
    };
    assert!(local(&location).join("_metadata").is_file());
    assert_eq!(handle.wait().status, weir::JobStatus::Finished);
    let id = checkpoint_id;
    let events = sink.after_records();
    assert!(events.contains(&format!("snapshot {id}")) && events.contains(&format!("complete {id}")), "{events:?}");
    events
}

#[test]
fn stop_with_drain_runs_end_of_input_hooks_before_the_final_savepoint() {
    let events = stop_and_record(true);
    assert_eq!(events, vec!["end-of-input", "snapshot 1", "complete 1", "finish"]);
}

#[test]
fn stop_without_drain_takes_the_savepoint_without_ending_the_input() {
    let events = stop_and_record(false);
    assert_eq!(events, vec!["snapshot 1", "complete 1", "finish"]);
}

#[test]
fn a_failed_stop_leaves_the_job_running_and_reading() {
    let paths = paths(Backend::HashMap);
    let (mut env, _) = StreamEnv::from_arg_list(["job"].map(String::from)).unwrap();
    env.set_checkpoint_storage(Arc::new(FaultyStorage::new(paths.ck.clone(), StorageFault::Metadata(1))));
    let sink = EventSink::default();
    env.source(FileSource::follow(&paths.input)).uid("source").sink(sink.clone()).uid("events");
    let handle = env.execute_async("failed-stop").unwrap();
    append_keys(&paths.input, 0..2);
    wait_for("two records", || sink.events.lock().unwrap().len() == 2);
    let token = handle.stop_with_savepoint(Some(&uri(&paths.sp)), SavepointFormat::Canonical, false).unwrap();
    assert!(matches!(handle.wait_operation(token, Duration::from_secs(30)), Some(Operation::Failed { .. })));
    assert_eq!(handle.status(), weir::JobStatus::Running);
    // The sources stopped at the stop's barrier; they read again once it failed.
    append_keys(&paths.input, 2..4);
    wait_for("records after the failed stop", || {
        sink.events.lock().unwrap().iter().filter(|e| *e == "record").count() == 4
    });
    assert!(listing(&paths.sp).is_empty());
    finish(handle);
}

backend_tests! {
    fn the_generator_source_rescales_2_to_3_to_1_and_generates_every_record_once(backend) {
        let dir = tempfile::tempdir().unwrap();
        let (records, keys) = (30_000u64, 7u64);
        let out = dir.path().join("out");
        let mut savepoint: Option<PathBuf> = None;
        for (round, p) in [2u32, 3, 1].into_iter().enumerate() {
            let parallelism = format!("parallelism.default={p}");
            let settings = ["execution.checkpointing.interval=30 ms", parallelism.as_str()];
            let env = common::job_env(backend, dir.path(), savepoint.as_deref(), &settings);
            env.source(GeneratorSource::keyed(keys).with_count(records).with_rate(20_000.0))
                .uid("generator")
                .key_by(|r: &(u64, u64)| r.0)
                .process(weir_examples::keyed_count::CountPerKey::default())
                .uid("count")
                .set_max_parallelism(MAX_P)
                .sink(FileSink::new(&out))
                .uid("sink");
            if round < 2 {
                let handle = env.execute_async("generator-rescale").unwrap();
                let before = committed(&out).len();
                wait_for("this round's records", || committed(&out).len() > before + 1000);
                let sp = dir.path().join(format!("sp{round}"));
                savepoint = Some(common::stop_with_savepoint(handle, &sp, backend.savepoint_format(), false));
            } else {
                env.execute("generator-rescale").unwrap();
            }
        }
        let got = committed(&out);
        let want = common::keyed_count_truth(records, keys);
        assert!(got == want, "{}", common::diff(&got, &want));
    }
}

/// [`job_env`] with checkpoints under `ck` on the tests' S3 server.
fn job_env_on_s3(paths: &Paths, ck: &SnapshotUri, args: &[&str]) -> StreamEnv {
    let mut env = job_env(paths, args);
    for (k, v) in common::s3::s3_settings() {
        env.set(k, v).unwrap();
    }
    env.set(weir::config_keys::CHECKPOINT_DIR, &ck.to_string()).unwrap();
    env
}

/// Copies a savepoint's files (a flat directory) to `to`, as `aws s3 cp --recursive` would.
fn copy_savepoint(stores: &weir::Stores, from: &SnapshotUri, to: &SnapshotUri) {
    use weir::SnapshotStore;
    stores.make_dirs(to).unwrap();
    for file in stores.list(from).unwrap() {
        stores.link_or_copy(&from.join(&file.name), &to.join(&file.name)).unwrap();
    }
}

backend_tests! {
    fn a_savepoint_on_s3_restores_after_moving_to_another_prefix_another_bucket_and_local_disk(backend) {
        let paths = paths(backend);
        let base = common::s3::fresh_prefix("relocation");
        let env = job_env_on_s3(&paths, &base.join("ck"), &[]);
        counting_job(&env, &paths, 2);
        let handle = env.execute_async("on-s3").unwrap();
        append_keys(&paths.input, 0..10);
        wait_for("first counts", || committed(&paths.out).len() == 10);
        let original = savepoint_to(&handle, &base.join("sp"), backend.savepoint_format());
        assert!(original.to_string().starts_with(&format!("{base}/sp/savepoint-")), "{original}");
        finish(handle);
        append_keys(&paths.input, 0..10);

        let stores = common::s3::stores();
        let other_bucket = common::s3::other_bucket();
        let unique = base.file_name().unwrap();
        let places = [
            base.join("moved").join("savepoint"),
            SnapshotUri::parse(&format!("s3://{other_bucket}/{unique}/savepoint")).unwrap(),
            SnapshotUri::Local(paths.sp.join("from-s3")),
        ];
        for (i, place) in places.iter().enumerate() {
            copy_savepoint(&stores, &original, place);
            let out = paths.out.with_file_name(format!("out-{i}"));
            let env = job_env_on_s3(&paths, &base.join("ck"), &["-s", &place.to_string()]);
            counting_job_to(&env, &paths, 2, &out);
            let handle = env.execute_async("relocated").unwrap();
            wait_for("the counts after the restore", || committed(&out).len() == 10);
            finish(handle);
            let lines = committed(&out);
            assert!(lines.iter().all(|l| l.split(' ').nth(1) == Some("2")), "{place}: every key continued: {lines:?}");
        }
    }
}

backend_tests! {
    fn claim_mode_on_s3_deletes_the_claimed_checkpoint_once_subsumed(backend) {
        use weir::SnapshotStore;
        let paths = paths(backend);
        let ck = common::s3::fresh_prefix("claim").join("ck");
        let retain = ["-D", "execution.checkpointing.externalized-checkpoint-retention=RETAIN_ON_CANCELLATION"];
        let env = job_env_on_s3(&paths, &ck, &retain);
        counting_job(&env, &paths, 1);
        let handle = env.execute_async("retained").unwrap();
        append_keys(&paths.input, 0..5);
        wait_for("a committed checkpoint", || committed(&paths.out).len() == 5);
        finish(handle);
        let checkpoint = common::s3::latest_checkpoint(&ck).expect("a retained checkpoint on S3");
        let stores = common::s3::stores();
        let metadata = checkpoint.join("_metadata");
        assert!(stores.kind(&metadata).unwrap().is_some());

        let env = job_env_on_s3(&paths, &ck, &["-s", &checkpoint.to_string()]);
        counting_job(&env, &paths, 1);
        let handle = env.execute_async("no-claim").unwrap();
        wait_for("two checkpoints of the new job", || handle.completed_checkpoints().len() >= 2);
        finish(handle);
        assert!(stores.kind(&metadata).unwrap().is_some(), "NO_CLAIM leaves the snapshot in place");

        let env = job_env_on_s3(&paths, &ck, &["-s", &checkpoint.to_string(), "--claim-mode", "claim"]);
        counting_job(&env, &paths, 1);
        let handle = env.execute_async("claim").unwrap();
        wait_for("the claimed checkpoint to be subsumed", || stores.list(&checkpoint).unwrap().is_empty());
        finish(handle);
    }
}

#[test]
fn a_slow_savepoint_reports_the_files_and_bytes_written_and_the_subtasks_acknowledged_so_far() {
    let paths = paths(Backend::HashMap);
    let mut env = job_env(&paths, &[]);
    env.set_checkpoint_storage(Arc::new(FaultyStorage::new(paths.ck.clone(), StorageFault::SlowSavepointWrites(500))));
    counting_job(&env, &paths, 1);
    let handle = env.execute_async("slow").unwrap();
    append_keys(&paths.input, 0..100);
    wait_for("the counts", || committed(&paths.out).len() == 100);
    let token = handle.trigger_savepoint(Some(&uri(&paths.sp)), SavepointFormat::Canonical).unwrap();
    let mut seen = None;
    wait_for("progress while the savepoint is written", || {
        seen = handle.operation_progress(token).filter(|p| p.files >= 1 && p.bytes > 0);
        seen.is_some() || handle.operation(token) != Some(Operation::InProgress)
    });
    let Some(seen) = seen else {
        panic!("the operation ended before any progress was seen: {:?}", handle.operation(token))
    };
    assert_eq!(handle.operation(token), Some(Operation::InProgress), "still writing (finishing the file takes 500 ms)");
    assert!(
        seen.subtasks >= 1 && seen.acknowledged_subtasks < seen.subtasks,
        "the counting task has not acknowledged while it writes: {seen:?}"
    );
    let done = handle.wait_operation(token, Duration::from_secs(30));
    assert!(matches!(done, Some(Operation::Completed { .. })), "{done:?}");
    assert_eq!(handle.operation_progress(token), None, "a finished operation has no progress");
    finish(handle);
}

#[test]
fn a_hanging_savepoint_target_does_not_hold_up_cancel_and_leaves_nothing_behind() {
    let paths = paths(Backend::HashMap);
    let mut env = job_env(&paths, &[]);
    let storage = Arc::new(FaultyStorage::new(paths.ck.clone(), StorageFault::HoldSavepointLocation));
    env.set_checkpoint_storage(storage.clone());
    counting_job(&env, &paths, 1);
    let handle = env.execute_async("hanging").unwrap();
    append_keys(&paths.input, 0..10);
    wait_for("the counts", || committed(&paths.out).len() == 10);
    let held = storage.gate.write().unwrap();
    let token = handle.trigger_savepoint(Some(&uri(&paths.sp)), SavepointFormat::Canonical).unwrap();
    wait_for("the savepoint's directory to be asked for", || storage.fired.load(Ordering::SeqCst) == 1);
    handle.cancel();
    // The master handles the cancel while its storage work hangs: the savepoint fails at once.
    wait_for("the savepoint to fail with the cancel", || handle.operation(token) != Some(Operation::InProgress));
    assert!(matches!(handle.operation(token), Some(Operation::Failed { .. })), "{:?}", handle.operation(token));
    drop(held);
    assert_eq!(handle.wait().status, weir::JobStatus::Canceled);
    // The directory made once the store answered again was for a savepoint that will never be.
    assert!(listing(&paths.sp).is_empty(), "nothing is left of the savepoint: {:?}", listing(&paths.sp));
}

#[test]
fn a_slow_restore_from_s3_reports_the_files_and_bytes_downloaded_of_all() {
    let paths = paths(Backend::HashMap);
    let base = common::s3::fresh_prefix("slow-restore");
    let env = job_env_on_s3(&paths, &base.join("ck"), &[]);
    counting_job(&env, &paths, 2);
    let handle = env.execute_async("on-s3").unwrap();
    append_keys(&paths.input, 0..20);
    wait_for("first counts", || committed(&paths.out).len() == 20);
    let savepoint = savepoint_to(&handle, &base.join("sp"), SavepointFormat::Canonical);
    finish(handle);
    let files: Vec<u64> = {
        use weir::SnapshotStore;
        let entries = common::s3::stores().list(&savepoint).unwrap();
        entries.into_iter().filter(|e| e.name != "_metadata").map(|e| e.size).collect()
    };
    assert!(files.len() >= 2, "a state file per counting subtask: {files:?}");

    let mut env = job_env_on_s3(&paths, &base.join("ck"), &["-s", &savepoint.to_string()]);
    env.set_checkpoint_storage(Arc::new(FaultyStorage::new(base.join("ck"), StorageFault::SlowDownloads(1_500))));
    counting_job(&env, &paths, 2);
    let handle = env.execute_async("slow-restore").unwrap();
    let mut seen = None;
    wait_for("progress while the savepoint is downloaded", || {
        seen = seen.take().or_else(|| handle.restore_progress());
        seen.is_some() || handle.status() == weir::JobStatus::Running
    });
    let Some(seen) = seen else { panic!("the job ran before any restore progress was seen") };
    assert_eq!(seen.snapshot, savepoint);
    assert_eq!((seen.files, seen.files_total), (0, files.len() as u64), "{seen:?}");
    assert_eq!((seen.bytes, seen.bytes_total), (0, files.iter().sum::<u64>()), "{seen:?}");
    assert!(seen.bytes_total > 0);
    wait_for("the restored job to run", || handle.status() == weir::JobStatus::Running);
    assert_eq!(handle.restore_progress(), None, "a finished download has no progress");
    append_keys(&paths.input, 0..20);
    wait_for("counts that go on from the savepoint", || committed(&paths.out).len() == 40);
    assert!(committed(&paths.out).iter().any(|l| l.starts_with("19 2 ")), "{:?}", committed(&paths.out));
    finish(handle);
}

#[test]
fn a_damaged_file_of_a_savepoint_on_s3_fails_the_restore_naming_it() {
    let paths = paths(Backend::HashMap);
    let base = common::s3::fresh_prefix("damaged");
    let env = job_env_on_s3(&paths, &base.join("ck"), &[]);
    counting_job(&env, &paths, 1);
    let handle = env.execute_async("on-s3").unwrap();
    append_keys(&paths.input, 0..10);
    wait_for("first counts", || committed(&paths.out).len() == 10);
    let savepoint = savepoint_to(&handle, &base.join("sp"), SavepointFormat::Canonical);
    finish(handle);
    // Flip a byte of the state file where the server keeps it (s3s-fs: objects are files).
    let file = common::s3::object_file(&savepoint, "keyed-");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let env = job_env_on_s3(&paths, &base.join("ck"), &["-s", &savepoint.to_string()]);
    counting_job(&env, &paths, 1);
    let outcome = env.execute_async("damaged").unwrap().wait();
    assert_eq!(outcome.status, weir::JobStatus::Failed);
    let failure = outcome.failure.unwrap_or_default();
    assert!(
        failure.contains(&savepoint.to_string()) && failure.contains("checksum mismatch"),
        "names the damaged file on S3: {failure}"
    );
}

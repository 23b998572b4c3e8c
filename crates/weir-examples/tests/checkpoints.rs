//! Checkpoint layout, retention and subsumption, what counts as a checkpoint, restore errors,
//! operator ids in `_metadata`, and graph validation.

mod common;

use common::{FaultyStorage, StorageFault};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::connectors::{FileSink, GeneratorSource, PrintSink};
use weir::{Configuration, JobHandle, StreamEnv};

fn config(pairs: &[(&str, &str)]) -> Configuration {
    let mut c = Configuration::new();
    for (k, v) in pairs {
        c.set(k, v).unwrap();
    }
    c
}

fn keyed_job(env: &StreamEnv, out: &Path) {
    env.source(GeneratorSource::keyed(10).with_rate(20_000.0))
        .uid("source-id")
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a: (u64, u64), b: (u64, u64)| (a.0, a.1 + b.1))
        .uid("sum")
        .map(|(k, v): (u64, u64)| format!("{k} {v}"))
        .sink(FileSink::new(out))
        .uid("sink");
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Runs the keyed job until checkpoints 1..=5 completed (6 and later are declined), then cancels.
fn run_five_checkpoints(base: &Path, retained: &str) -> (JobHandle, PathBuf) {
    let ck = base.join("ck");
    let c = config(&[
        ("execution.checkpointing.interval", "20 ms"),
        ("execution.checkpointing.num-retained", retained),
        ("execution.checkpointing.tolerable-failed-checkpoints", "1000"),
        ("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION"),
    ]);
    let mut env = StreamEnv::with_config(c);
    env.set_checkpoint_storage(Arc::new(FaultyStorage::new(ck.clone(), StorageFault::DeclineAbove(5))));
    keyed_job(&env, &base.join("out"));
    let handle = env.execute_async("five-checkpoints").unwrap();
    wait_until("checkpoint 5 and a declined 6", || {
        handle.completed_checkpoints().iter().any(|c| c.id == 5) && handle.failed_checkpoints() > 0
    });
    let job_dir = ck.join(handle.job_id().to_hex());
    (handle, job_dir)
}

#[test]
fn num_retained_two_keeps_chk_4_and_5() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, job_dir) = run_five_checkpoints(dir.path(), "2");
    let ids: Vec<u64> = handle.completed_checkpoints().iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    handle.cancel();
    assert_eq!(handle.wait().status, weir::JobStatus::Canceled);
    assert_eq!(listing(&job_dir), vec!["chk-4", "chk-5", "shared", "taskowned"]);
    for chk in ["chk-4", "chk-5"] {
        let files = listing(&job_dir.join(chk));
        assert!(files.contains(&"_metadata".to_string()), "{chk}: {files:?}");
        assert!(files.iter().any(|f| f.starts_with("keyed-")), "{chk} holds the keyed state file: {files:?}");
    }
}

#[test]
fn default_retention_deletes_checkpoints_when_the_job_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let c =
        config(&[("execution.checkpointing.interval", "20 ms"), ("execution.checkpointing.dir", ck.to_str().unwrap())]);
    let env = StreamEnv::with_config(c);
    keyed_job(&env, &dir.path().join("out"));
    let handle = env.execute_async("default-retention").unwrap();
    wait_until("two checkpoints", || handle.completed_checkpoints().len() >= 2);
    let job_dir = ck.join(handle.job_id().to_hex());
    handle.cancel();
    handle.wait();
    assert!(!job_dir.exists(), "nothing retained: the job's directory goes, empty shared/ and taskowned/ with it");
    assert!(ck.is_dir(), "the configured checkpoint directory is the user's and stays");
}

/// Jobs that finish while checkpoints are in flight leave nothing behind: no `chk-N` directory of
/// a checkpoint that never completed, no empty job directory.
#[test]
fn finished_jobs_leave_no_directories_behind() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    for run in 0..10 {
        let c = config(&[
            ("execution.checkpointing.interval", "10 ms"),
            ("execution.checkpointing.dir", ck.to_str().unwrap()),
        ]);
        let env = StreamEnv::with_config(c);
        env.source(GeneratorSource::keyed(10).with_count(3000).with_rate(50_000.0))
            .uid("source-id")
            .key_by(|r: &(u64, u64)| r.0)
            .reduce(|a: (u64, u64), b: (u64, u64)| (a.0, a.1 + b.1))
            .uid("sum")
            .map(|(k, v): (u64, u64)| format!("{k} {v}"))
            .sink(FileSink::new(dir.path().join(format!("out-{run}"))))
            .uid("sink");
        let outcome = env.execute_async("finishes").unwrap().wait();
        assert_eq!(outcome.status, weir::JobStatus::Finished);
        assert!(listing(&ck).is_empty(), "run {run} left {:?}", listing(&ck));
    }
}

/// Snapshot files hold the job's data: only their owner may read them.
#[test]
fn checkpoint_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (handle, job_dir) = run_five_checkpoints(dir.path(), "1");
    handle.cancel();
    handle.wait();
    let chk = job_dir.join("chk-5");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&job_dir), 0o700);
    assert_eq!(mode(&chk), 0o700);
    for f in listing(&chk) {
        assert_eq!(mode(&chk.join(&f)), 0o600, "{f}");
    }
}

fn restore_error(snapshot: &Path, out: &Path) -> String {
    let args = ["job", "-s", snapshot.to_str().unwrap()].map(String::from);
    let (env, _) = StreamEnv::from_arg_list(args).unwrap();
    keyed_job(&env, out);
    match env.execute_async("restore") {
        Ok(h) => {
            h.cancel();
            panic!("restore from {} should have been refused", snapshot.display())
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn only_directories_with_valid_metadata_are_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, job_dir) = run_five_checkpoints(dir.path(), "1");
    handle.cancel();
    handle.wait();
    // An incomplete checkpoint (no _metadata) and a corrupted one beside the valid chk-5.
    std::fs::create_dir(job_dir.join("chk-7")).unwrap();
    std::fs::write(job_dir.join("chk-7").join("keyed-x"), b"partial").unwrap();
    std::fs::create_dir(job_dir.join("chk-8")).unwrap();
    let mut bytes = std::fs::read(job_dir.join("chk-5").join("_metadata")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(job_dir.join("chk-8").join("_metadata"), &bytes).unwrap();
    assert_eq!(weir::latest_checkpoint(&job_dir), Some((5, job_dir.join("chk-5"))));

    let out = dir.path().join("out2");
    let err = restore_error(&job_dir.join("chk-7"), &out);
    assert!(err.contains("Cannot find meta data file '_metadata' in directory") && err.contains("chk-7"), "{err}");
    let err = restore_error(&job_dir.join("chk-8"), &out);
    let file = job_dir.join("chk-8").join("_metadata");
    assert!(err.contains(&file.display().to_string()) && err.contains("corrupted"), "{err}");
    let err = restore_error(&dir.path().join("no-such-checkpoint"), &out);
    assert!(err.contains("Cannot find checkpoint or savepoint") && err.contains("no-such-checkpoint"), "{err}");
    // The refused snapshots are untouched.
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    assert!(!out.exists(), "a refused restore must not start the job");
}

#[test]
fn restore_continues_the_checkpoint_counter_and_metadata_names_operators_by_uid_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, job_dir) = run_five_checkpoints(dir.path(), "1");
    handle.cancel();
    handle.wait();
    let chk5 = job_dir.join("chk-5");
    let bytes = std::fs::read(chk5.join("_metadata")).unwrap();
    let meta = weir_core::metadata::decode(&bytes, "chk-5").unwrap();
    assert_eq!(meta.checkpoint_id, 5);
    let source = meta.operators.iter().find(|o| o.uid.as_deref() == Some("source-id")).unwrap();
    assert_eq!(source.operator_id.to_hex(), "bd9c186e89cc37a76d776844dfa8ccba");

    let ck2 = dir.path().join("ck2");
    let args = ["job", "-s", chk5.to_str().unwrap(), "-D", "execution.checkpointing.interval=20 ms"].map(String::from);
    let (mut env, _) = StreamEnv::from_arg_list(args).unwrap();
    env.set(weir::config_keys::CHECKPOINT_DIR, ck2.to_str().unwrap()).unwrap();
    keyed_job(&env, &dir.path().join("out"));
    let handle = env.execute_async("restored").unwrap();
    wait_until("a checkpoint after restore", || !handle.completed_checkpoints().is_empty());
    assert_eq!(handle.completed_checkpoints()[0].id, 6, "ids continue at snapshot id + 1");
    handle.cancel();
    handle.wait();
    assert!(chk5.join("_metadata").exists(), "the restored checkpoint is not deleted by the new job");
}

#[test]
fn duplicate_uids_are_refused_naming_the_uid() {
    let env = StreamEnv::new();
    env.source(GeneratorSource::counter().with_count(1)).uid("same").map(|x: u64| x).uid("same").sink(PrintSink::new());
    let err = env.execute_async("dup").err().unwrap().to_string();
    assert!(err.contains("uid 'same' is used by two operators"), "{err}");
}

#[test]
fn disabled_auto_uids_refuse_a_stateful_operator_without_uid() {
    let env = StreamEnv::with_config(config(&[("pipeline.auto-generate-uids", "false")]));
    env.source(GeneratorSource::counter().with_count(1))
        .uid("src")
        .map(|x: u64| x) // stateless: fine without uid
        .key_by(|x: &u64| *x)
        .reduce(|a: u64, b: u64| a + b)
        .name("Total")
        .sink(PrintSink::new());
    let err = env.execute_async("no-uid").err().unwrap().to_string();
    assert!(err.contains("operator 'Total' keeps state but has no uid"), "{err}");
}

#[test]
fn checkpointing_without_a_directory_is_refused() {
    let env = StreamEnv::with_config(config(&[("execution.checkpointing.interval", "1 s")]));
    env.source(GeneratorSource::counter().with_count(1)).uid("s").sink(PrintSink::new());
    let err = env.execute_async("no-dir").err().unwrap().to_string();
    assert!(err.contains("execution.checkpointing.dir"), "{err}");
}

#[test]
fn yaml_file_then_code_then_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        "execution:\n  checkpointing:\n    interval: 5 min\n    num-retained: 4\nparallelism.default: 3\npipeline.max-parallelism: 64\n",
    )
    .unwrap();
    let args = ["job", "--config", file.to_str().unwrap(), "-D", "parallelism.default=2"].map(String::from);
    let (mut env, rest) = StreamEnv::from_arg_list(args).unwrap();
    assert!(rest.is_empty());
    env.enable_checkpointing(Duration::from_millis(250)); // code beats the file
    env.set_parallelism(7); // the command line beats the code
    let c = env.config();
    assert_eq!(c.get_duration("execution.checkpointing.interval"), Some(Duration::from_millis(250)));
    assert_eq!(c.get_int("execution.checkpointing.num-retained"), Some(4));
    assert_eq!(c.get_int("parallelism.default"), Some(2));
    assert_eq!(c.get_int("pipeline.max-parallelism"), Some(64));

    std::fs::write(&file, "execution.checkpointing.intervall: 1 s\n").unwrap();
    let args = ["job", "--config", file.to_str().unwrap()].map(String::from);
    let err = StreamEnv::from_arg_list(args).err().unwrap().to_string();
    assert!(err.contains("'execution.checkpointing.intervall'") && err.contains("config.yaml"), "{err}");
}

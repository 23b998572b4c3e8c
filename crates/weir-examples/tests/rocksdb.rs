//! What only the rocksdb backend does, end to end through the API and the files on disk:
//! incremental checkpoints (size, sharing, exactly the referenced files kept, both claim modes),
//! state larger than the memory budget, and switching backends through a canonical savepoint;
//! and records a keyed operator holds back in batches, on both backends.

mod common;

use common::wait_for;
use common::{local, uri, Backend};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir::connectors::FileSource;
use weir::{
    BoxError, Collector, Context, JobHandle, KeyedProcessFunction, Operation, RuntimeContext, SavepointFormat,
    SinkFunction, StreamEnv, ValueState, ValueStateDescriptor,
};

/// Keeps a padded value per key: `(count, payload)`, and emits `key count`.
#[derive(Clone)]
struct Padded {
    state: Option<ValueState<(u64, String)>>,
    payload: usize,
}

impl KeyedProcessFunction<u64, u64, (u64, u64)> for Padded {
    fn open(&mut self, ctx: &mut RuntimeContext<'_, u64>) -> Result<(), BoxError> {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("padded"))?);
        Ok(())
    }
    fn process(
        &mut self,
        key: u64,
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> Result<(), BoxError> {
        let h = self.state.ok_or("not opened")?;
        let (n, pad) = h.value(ctx)?.unwrap_or_else(|| (0, noise(key, self.payload)));
        h.update(ctx, (n + 1, pad))?;
        out.collect((key, n + 1));
        Ok(())
    }
}

/// `len` hex digits that do not compress, derived from `key` (splitmix64).
fn noise(key: u64, len: usize) -> String {
    let mut x = key;
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        s.push_str(&format!("{:016x}", z ^ (z >> 31)));
    }
    s
}

/// Counts records and remembers the last count per key and every record in arrival order, in
/// memory (the tests read them).
#[derive(Clone, Default)]
struct Seen {
    records: Arc<AtomicU64>,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<u64, u64>>>,
    order: Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
}

impl SinkFunction<(u64, u64)> for Seen {
    fn invoke(&mut self, (k, n): (u64, u64)) -> Result<(), BoxError> {
        self.counts.lock().map_err(|_| "poisoned")?.insert(k, n);
        self.order.lock().map_err(|_| "poisoned")?.push((k, n));
        self.records.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Job {
    handle: JobHandle,
    seen: Seen,
}

fn start(dir: &Path, input: &Path, extra: &[(&str, String)], payload: usize) -> Job {
    start_keyed(dir, input, extra, payload, false)
}

/// [`start`], with the key borrowed from the record (`key_by_ref`) when `borrowed`.
fn start_keyed(dir: &Path, input: &Path, extra: &[(&str, String)], payload: usize, borrowed: bool) -> Job {
    let mut args = vec!["job".to_string()];
    for (k, v) in extra {
        args.extend(["-D".to_string(), format!("{k}={v}")]);
    }
    let (mut env, _) = StreamEnv::from_arg_list(args).unwrap();
    env.set(weir::config_keys::CHECKPOINT_DIR, dir.join("ck").to_str().unwrap()).unwrap();
    let seen = Seen::default();
    let keys = env
        .source(FileSource::follow(input))
        .uid("source")
        .map(|l: String| l.trim().parse::<u64>().unwrap_or(0))
        .uid("parse");
    let keyed = if borrowed { keys.key_by_ref(|k: &u64| k) } else { keys.key_by(|k: &u64| *k) };
    keyed
        .process(Padded { state: None, payload })
        .uid("padded")
        .set_max_parallelism(128)
        .sink(seen.clone())
        .uid("seen");
    Job { handle: env.execute_async("rocksdb-test").unwrap(), seen }
}

fn append(input: &Path, keys: impl IntoIterator<Item = u64>) {
    let mut f = std::io::BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(input).unwrap());
    for k in keys {
        writeln!(f, "{k}").unwrap();
    }
}

fn wait_records(job: &Job, n: u64) {
    wait_for(&format!("{n} records"), || job.seen.records.load(Ordering::SeqCst) >= n);
}

/// Triggers a checkpoint and returns its statistics.
fn checkpoint(job: &Job) -> weir::CheckpointStats {
    wait_for("the job to run", || job.handle.status() == weir::JobStatus::Running);
    let token = job.handle.trigger_checkpoint().unwrap();
    let id = match job.handle.wait_operation(token, Duration::from_secs(60)) {
        Some(Operation::Completed { checkpoint_id, .. }) => checkpoint_id,
        other => panic!("checkpoint failed: {other:?}"),
    };
    job.handle.completed_checkpoints().into_iter().find(|c| c.id == id).unwrap()
}

/// Files a snapshot references: its own directory's files and the files its `_metadata` names.
fn referenced(snapshot: &Path) -> BTreeSet<PathBuf> {
    let bytes = std::fs::read(snapshot.join("_metadata")).unwrap();
    let meta = weir_core::metadata::decode(&bytes, "m").unwrap();
    let mut files: BTreeSet<PathBuf> =
        std::fs::read_dir(snapshot).unwrap().map(|e| e.unwrap().path().canonicalize().unwrap()).collect();
    for op in &meta.operators {
        for sub in &op.subtasks {
            for f in sub.native.iter().flat_map(|n| &n.files) {
                let path = snapshot.join(&f.file.path);
                files.insert(
                    path.canonicalize().unwrap_or_else(|_| panic!("{} is referenced but missing", path.display())),
                );
            }
        }
    }
    files
}

fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

/// Every file under `dirs` (recursively).
fn on_disk(dirs: &[PathBuf]) -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().map(|e| e.unwrap()) {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p.canonicalize().unwrap());
            }
        }
    }
    let mut out = BTreeSet::new();
    for d in dirs {
        walk(d, &mut out);
    }
    out
}

fn retained(job_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(job_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("chk-"))
        .collect();
    v.sort();
    v
}

fn assert_only_referenced_files(job_dirs: &[PathBuf], what: &str) {
    let mut want = BTreeSet::new();
    for job_dir in job_dirs {
        for chk in retained(job_dir) {
            want.extend(referenced(&chk));
        }
    }
    let got = on_disk(job_dirs);
    let extra: Vec<_> = got.difference(&want).collect();
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(extra.is_empty() && missing.is_empty(), "{what}: unreferenced files {extra:?}, missing {missing:?}");
}

/// Cancels `job` and starts it again (with `args`, which then name the checkpoint) from its latest
/// retained checkpoint.
fn restart_from_latest_checkpoint(
    job: Job,
    dir: &Path,
    input: &Path,
    args: &mut Vec<(&'static str, String)>,
    payload: usize,
) -> Job {
    restart_keyed(job, dir, input, args, payload, false)
}

fn restart_keyed(
    job: Job,
    dir: &Path,
    input: &Path,
    args: &mut Vec<(&'static str, String)>,
    payload: usize,
    borrowed: bool,
) -> Job {
    let job_dir = job.handle.checkpoint_job_dir().map(|d| local(&d)).unwrap();
    job.handle.cancel();
    job.handle.wait();
    let latest = retained(&job_dir).pop().unwrap();
    args.push(("execution.state-recovery.path", latest.display().to_string()));
    start_keyed(dir, input, args, payload, borrowed)
}

fn rocksdb(dir: &Path, incremental: bool) -> Vec<(&'static str, String)> {
    let mut s = Backend::RocksDb.settings(&dir.join("rocksdb"));
    s.push(("execution.checkpointing.incremental", incremental.to_string()));
    s.push(("execution.checkpointing.num-retained", "2".into()));
    s.push(("state.backend.rocksdb.memory.fixed-per-slot", "64 mb".into()));
    s.push(("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION".into()));
    s
}

/// Checkpoints of the checkpoint-sharing tests: memtables large enough that the initial state
/// flushes as one SST file, so the only compactions are the ones the test provokes (RocksDB
/// compacts level 0 once it holds 4 files; a compaction rewrites what it merges, so an incremental
/// checkpoint right after one uploads the rewritten files, whatever the change was).
fn sharing(dir: &Path) -> Vec<(&'static str, String)> {
    let mut s = rocksdb(dir, true);
    s.push(("state.backend.rocksdb.memory.fixed-per-slot", "128 mb".into()));
    s.push(("state.backend.rocksdb.writebuffer.size", "64 mb".into()));
    s
}

#[test]
fn incremental_checkpoints_upload_what_changed_and_keep_exactly_the_referenced_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("keys.txt");
    let keys = 200_000u64;
    append(&input, 0..keys);
    let job = start(dir.path(), &input, &sharing(dir.path()), 32);
    wait_records(&job, keys);
    let full = checkpoint(&job);
    assert_eq!(full.state_size, full.checkpointed_size, "the first checkpoint uploads everything");
    // Change 1 % of the keys.
    append(&input, 0..keys / 100);
    wait_records(&job, keys + keys / 100);
    let delta = checkpoint(&job);
    let ratio = delta.checkpointed_size as f64 / full.checkpointed_size as f64;
    eprintln!(
        "full checkpoint {} bytes; after a 1% change: {} bytes uploaded ({:.2}%), {} bytes referenced",
        full.checkpointed_size,
        delta.checkpointed_size,
        ratio * 100.0,
        delta.state_size
    );
    assert!(ratio < 0.03, "a checkpoint after a 1% change uploads {:.2}% of a full one", ratio * 100.0);
    assert!(delta.state_size > full.state_size * 9 / 10, "it still references the whole state");
    let job_dir = job.handle.checkpoint_job_dir().map(|d| local(&d)).unwrap();
    assert_only_referenced_files(std::slice::from_ref(&job_dir), "after the first incremental checkpoint");
    job.handle.cancel();
    job.handle.wait();
    let first_job_files = on_disk(std::slice::from_ref(&job_dir));
    let latest = retained(&job_dir).pop().unwrap();

    // NO_CLAIM: the first checkpoint is full and references nothing of the restored snapshot,
    // whose files all stay.
    let mut args = sharing(dir.path());
    args.push(("execution.state-recovery.path", latest.display().to_string()));
    let job2 = start(dir.path(), &input, &args, 32);
    wait_for("the restored job", || job2.handle.status() == weir::JobStatus::Running);
    let first = checkpoint(&job2);
    let job2_dir = job2.handle.checkpoint_job_dir().map(|d| local(&d)).unwrap().canonicalize().unwrap();
    let refs = referenced(&local(&first.location));
    assert!(
        refs.iter().all(|f| f.starts_with(&job2_dir)),
        "NO_CLAIM: the first checkpoint references only its own files"
    );
    assert_eq!(first.state_size, first.checkpointed_size, "NO_CLAIM: the first checkpoint is full");
    append(&input, 0..500);
    wait_records(&job2, 500);
    checkpoint(&job2);
    let second = checkpoint(&job2);
    assert!(second.checkpointed_size < second.state_size / 10, "later checkpoints are incremental again");
    assert_only_referenced_files(std::slice::from_ref(&job2_dir), "NO_CLAIM job");
    job2.handle.cancel();
    job2.handle.wait();
    assert_eq!(on_disk(std::slice::from_ref(&job_dir)), first_job_files, "NO_CLAIM never touches the snapshot");

    // CLAIM: the first checkpoint adopts the claimed snapshot's files (hard links into the new
    // job's shared/ directory, no bytes copied), so every checkpoint references only its own job's
    // files; once the claimed snapshot is subsumed, only the files still referenced remain.
    let claimed = retained(&job2_dir).pop().unwrap();
    let mut args = sharing(dir.path());
    args.push(("execution.state-recovery.path", claimed.display().to_string()));
    args.push(("execution.state-recovery.claim-mode", "CLAIM".into()));
    let job3 = start(dir.path(), &input, &args, 32);
    wait_for("the claimed job", || job3.handle.status() == weir::JobStatus::Running);
    let first = checkpoint(&job3);
    let job3_dir = job3.handle.checkpoint_job_dir().map(|d| local(&d)).unwrap().canonicalize().unwrap();
    let claimed_inodes: BTreeSet<u64> = referenced(&claimed).iter().map(|f| inode(f)).collect();
    let refs = referenced(&local(&first.location));
    assert!(refs.iter().all(|f| f.starts_with(&job3_dir)), "CLAIM: checkpoints reference only their job's files");
    assert!(
        refs.iter().any(|f| claimed_inodes.contains(&inode(f))),
        "CLAIM: the first checkpoint reuses the claimed snapshot's files (as links)"
    );
    checkpoint(&job3);
    checkpoint(&job3);
    assert!(!claimed.exists(), "the claimed checkpoint is deleted once subsumed");
    // job2's other retained checkpoint is not claimed: it stays, with the files it references.
    let both = [job2_dir.clone(), job3_dir.clone()];
    assert_only_referenced_files(&both, "CLAIM job");

    // Many checkpoints with changes, so RocksDB compacts: subsumed checkpoints go, and files
    // (the claimed ones included) go with their last reference. Files job2's other checkpoint
    // shares with the claimed one stay: the claim covers the named snapshot only.
    for round in 0..6u64 {
        let from = round * 7919 % keys;
        append(&input, from..from + 2000);
        wait_records(&job3, (round + 1) * 2000);
        checkpoint(&job3);
        assert_only_referenced_files(&both, &format!("after checkpoint round {round}"));
    }
    assert_only_referenced_files(&both, "after the claimed files were compacted away");
    assert_eq!(retained(&job3_dir).len(), 2);
    let unclaimed = retained(&job2_dir).pop().unwrap();
    job3.handle.cancel();
    job3.handle.wait();
    assert_only_referenced_files(std::slice::from_ref(&job2_dir), "job2 after the claim");

    // That other checkpoint still restores.
    let mut args = sharing(dir.path());
    args.push(("execution.state-recovery.path", unclaimed.display().to_string()));
    let job4 = start(dir.path(), &input, &args, 32);
    wait_for("the job restored from the unclaimed checkpoint", || job4.handle.status() == weir::JobStatus::Running);
    checkpoint(&job4);
    job4.handle.cancel();
    job4.handle.wait();
}

#[test]
fn state_four_times_the_memory_budget_runs_checkpoints_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("keys.txt");
    let keys = 120_000u64;
    append(&input, 0..keys);
    let budget = 4u64 << 20;
    let mut args = rocksdb(dir.path(), false);
    args.push(("state.backend.rocksdb.memory.fixed-per-slot", "4 mb".into()));
    let job = start(dir.path(), &input, &args, 200);
    wait_records(&job, keys);
    let stats = checkpoint(&job);
    eprintln!("state {} bytes on disk with a {} byte memory budget", stats.state_size, budget);
    assert!(stats.state_size >= 4 * budget, "state of {} bytes is at least 4x the budget", stats.state_size);
    let job2 = restart_from_latest_checkpoint(job, dir.path(), &input, &mut args, 200);
    // The source resumes after the checkpoint, so only new lines arrive: every 10th key once more.
    append(&input, (0..keys).step_by(10));
    wait_records(&job2, keys / 10);
    let counts = job2.seen.counts.lock().unwrap();
    assert!(
        (0..keys).step_by(10).all(|k| counts.get(&k) == Some(&2)),
        "every updated key continued from its restored count"
    );
    drop(counts);
    job2.handle.cancel();
    job2.handle.wait();
}

/// Runs `keys` distinct keys four times over (then 37 more) through the padded count, checks that
/// the sink saw every record in input order with the counts a plain run gives (the last records,
/// not a whole batch, arrive while the input is quiet), takes a checkpoint, restarts from it and
/// checks that the counts continue exactly.
fn held_records_keep_their_order(mut args: Vec<(&'static str, String)>, keys: u64, payload: usize, borrowed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("keys.txt");
    let first: Vec<u64> = (0..4).flat_map(|_| 0..keys).chain(0..37).collect();
    append(&input, first.iter().copied());
    let job = start_keyed(dir.path(), &input, &args, payload, borrowed);
    wait_records(&job, first.len() as u64);
    let expected = |lines: &[u64], counts: &mut std::collections::HashMap<u64, u64>| -> Vec<(u64, u64)> {
        lines
            .iter()
            .map(|&k| {
                let n = counts.entry(k).or_default();
                *n += 1;
                (k, *n)
            })
            .collect()
    };
    let mut counts = std::collections::HashMap::new();
    assert!(job.seen.order.lock().unwrap().as_slice() == expected(&first, &mut counts), "input order and counts");
    checkpoint(&job);
    let job2 = restart_keyed(job, dir.path(), &input, &mut args, payload, borrowed);
    let more: Vec<u64> = (0..keys).rev().step_by(3).collect();
    append(&input, more.iter().copied());
    wait_records(&job2, more.len() as u64);
    assert!(job2.seen.order.lock().unwrap().as_slice() == expected(&more, &mut counts), "restored counts continue");
    job2.handle.cancel();
    job2.handle.wait();
}

/// With a write-back cache far smaller than the state, every read misses it and the keyed
/// operator holds records back in batches to prefetch their rows with one batched RocksDB lookup.
#[test]
fn records_held_back_for_prefetching_keep_their_order_and_do_not_wait_for_more_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = rocksdb(dir.path(), false);
    // 512 KB of cache for about 900 KB of rows (a 200-byte payload per key).
    args.push(("state.backend.rocksdb.memory.fixed-per-slot", "1 mb".into()));
    held_records_keep_their_order(args, 3000, 200, false);
}

/// On the heap, a keyed operator holds records back to locate their keys together while the
/// state it reads fits the CPU's caches, and passes them straight on once the state outgrows
/// them (here 30000 keys, about 1.2 MB of entries): the order and the counts are the same either
/// way, with the key computed from the record or borrowed from it.
#[test]
fn records_held_back_on_the_heap_keep_their_order_as_the_state_grows() {
    let heap = |dir: &Path| {
        let mut args = Backend::HashMap.settings(dir);
        args.push(("execution.checkpointing.num-retained", "2".into()));
        args.push(("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION".into()));
        args
    };
    let dir = tempfile::tempdir().unwrap();
    held_records_keep_their_order(heap(dir.path()), 3000, 16, false);
    held_records_keep_their_order(heap(dir.path()), 3000, 16, true);
    held_records_keep_their_order(heap(dir.path()), 30_000, 16, true);
}

fn savepoint(job: &Job, dir: &Path, format: SavepointFormat) -> PathBuf {
    wait_for("the job to run", || job.handle.status() == weir::JobStatus::Running);
    let token = job.handle.trigger_savepoint(Some(&uri(dir)), format).unwrap();
    match job.handle.wait_operation(token, Duration::from_secs(60)) {
        Some(Operation::Completed { location, .. }) => local(&location),
        other => panic!("savepoint failed: {other:?}"),
    }
}

#[test]
fn a_canonical_savepoint_switches_backends_in_both_directions() {
    for (from, to) in [(Backend::RocksDb, Backend::HashMap), (Backend::HashMap, Backend::RocksDb)] {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("keys.txt");
        append(&input, (0..3000).map(|i| i % 1000));
        let job = start(dir.path(), &input, &from.settings(&dir.path().join("rocksdb")), 16);
        wait_records(&job, 3000);
        let sp = savepoint(&job, &dir.path().join("sp"), SavepointFormat::Canonical);
        job.handle.cancel();
        job.handle.wait();
        let mut args = to.settings(&dir.path().join("rocksdb"));
        args.push(("execution.state-recovery.path", sp.display().to_string()));
        let job2 = start(dir.path(), &input, &args, 16);
        append(&input, 0..1000);
        wait_records(&job2, 1000);
        let counts = job2.seen.counts.lock().unwrap();
        assert!((0..1000).all(|k| counts.get(&k) == Some(&4)), "{from:?} -> {to:?}: every count continued at 4");
        drop(counts);
        job2.handle.cancel();
        job2.handle.wait();
    }
}

#[test]
fn a_native_rocksdb_savepoint_is_refused_by_a_hashmap_job_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("keys.txt");
    append(&input, 0..100);
    let job = start(dir.path(), &input, &Backend::RocksDb.settings(&dir.path().join("rocksdb")), 16);
    wait_records(&job, 100);
    let sp = savepoint(&job, &dir.path().join("sp"), SavepointFormat::Native);
    job.handle.cancel();
    job.handle.wait();
    let mut args = Backend::HashMap.settings(dir.path());
    args.push(("execution.state-recovery.path", sp.display().to_string()));
    let outcome = start(dir.path(), &input, &args, 16).handle.wait();
    assert_eq!(outcome.status, weir::JobStatus::Failed);
    let cause = outcome.failure.unwrap_or_default();
    assert!(cause.contains("native format") && cause.contains("canonical savepoint"), "{cause}");
}

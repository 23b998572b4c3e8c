//! Helpers shared by the integration tests: committed output, ground truth, fault injection.
#![allow(dead_code)]

pub mod kafka;
pub mod postgres;
pub mod s3;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use weir::{CheckpointStorage, Entry, EntryKind, FsCheckpointStorage, JobId, SnapshotStore, SnapshotUri, StateOutput};

/// The committed output of an exactly-once file sink, sorted.
pub fn committed_lines(dir: &Path) -> Vec<String> {
    weir::connectors::FileSink::read_committed(dir).expect("readable output directory")
}

#[allow(unused_imports)]
pub use weir_examples::keyed_count::expected_output as keyed_count_truth;

/// Describes the first difference between two sorted line lists.
pub fn diff(got: &[String], want: &[String]) -> String {
    let mut g: BTreeMap<&str, i64> = BTreeMap::new();
    for l in got {
        *g.entry(l).or_default() += 1;
    }
    for l in want {
        *g.entry(l).or_default() -= 1;
    }
    let dup: Vec<_> = g.iter().filter(|(_, n)| **n > 0).take(5).collect();
    let lost: Vec<_> = g.iter().filter(|(_, n)| **n < 0).take(5).collect();
    format!("{} lines vs {} expected; duplicated/extra: {dup:?}; lost: {lost:?}", got.len(), want.len())
}

/// A small deterministic random generator (xorshift), so failures are reproducible from a seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Which storage operation fails, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// Writing the n-th state file fails part-way.
    StateFile(u64),
    /// Writing the n-th `_metadata` fails.
    Metadata(u64),
    /// Every checkpoint above this id is declined (so the completed ones are exactly 1..=id).
    DeclineAbove(u64),
    /// A savepoint's state files take this many milliseconds more to start and to finish (a slow
    /// disk or network; checkpoints stay fast).
    SlowSavepointWrites(u64),
    /// Each download of a snapshot's file (restoring from object storage) takes this many
    /// milliseconds more.
    SlowDownloads(u64),
    /// Making a savepoint's directory hangs while the test holds [`FaultyStorage::gate`] (a
    /// storage endpoint that stops answering).
    HoldSavepointLocation,
}

/// Where a test's checkpoints go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `dir/ck`.
    Local,
    /// A fresh prefix in a bucket of the tests' S3 server.
    S3,
}

impl Storage {
    /// The checkpoint directory of a test run in `dir` (`name` marks its S3 prefix).
    pub fn checkpoint_base(self, dir: &Path, name: &str) -> SnapshotUri {
        match self {
            Storage::Local => SnapshotUri::Local(dir.join("ck")),
            Storage::S3 => s3::fresh_prefix(name),
        }
    }

    /// The configuration this storage needs (S3's endpoint and credentials).
    pub fn settings(self) -> &'static [(&'static str, String)] {
        match self {
            Storage::Local => &[],
            Storage::S3 => s3::s3_settings(),
        }
    }
}

/// The newest valid checkpoint under any job directory of `base`, local or on S3.
pub fn latest_checkpoint_at(base: &SnapshotUri) -> Option<SnapshotUri> {
    match base {
        SnapshotUri::Local(path) => latest_checkpoint(path).map(SnapshotUri::Local),
        remote => s3::latest_checkpoint(remote),
    }
}

/// A local directory as a snapshot location.
pub fn uri(path: &Path) -> SnapshotUri {
    SnapshotUri::Local(path.to_path_buf())
}

/// The local path of a snapshot location (tests that use local storage).
pub fn local(location: &SnapshotUri) -> PathBuf {
    location.as_local().unwrap_or_else(|| panic!("{location} is not local")).to_path_buf()
}

/// Checkpoint storage on the filesystem that fails on purpose, once.
#[derive(Debug)]
pub struct FaultyStorage {
    inner: FsCheckpointStorage,
    slow_store: SlowStore,
    fault: StorageFault,
    state_files: AtomicU64,
    metadata: AtomicU64,
    pub fired: Arc<AtomicU64>,
    last_id: Mutex<u64>,
    /// Held (written) by a test to hold savepoint directories back.
    pub gate: Arc<std::sync::RwLock<()>>,
}

impl FaultyStorage {
    /// Storage under `base`, a local directory or a prefix on the tests' S3 server.
    pub fn new(base: impl Into<SnapshotUri>, fault: StorageFault) -> Self {
        let base = base.into();
        let stores = match base {
            SnapshotUri::S3 { .. } => s3::stores(),
            _ => weir::Stores::default(),
        };
        let delay = match fault {
            StorageFault::SlowDownloads(ms) => std::time::Duration::from_millis(ms),
            _ => std::time::Duration::ZERO,
        };
        let inner = FsCheckpointStorage::new(base).with_stores(stores.clone());
        FaultyStorage {
            slow_store: SlowStore { inner: stores, download_delay: delay },
            inner,
            fault,
            state_files: AtomicU64::new(0),
            metadata: AtomicU64::new(0),
            fired: Arc::new(AtomicU64::new(0)),
            last_id: Mutex::new(0),
            gate: Arc::default(),
        }
    }
}

/// A state file slow to start and to finish.
struct SlowOutput {
    inner: Box<dyn StateOutput>,
    delay: std::time::Duration,
    started: bool,
}

impl Write for SlowOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !std::mem::replace(&mut self.started, true) {
            std::thread::sleep(self.delay);
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl StateOutput for SlowOutput {
    fn finish(self: Box<Self>) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.finish()
    }
}

struct FailingOutput {
    inner: Box<dyn StateOutput>,
    budget: usize,
}

impl Write for FailingOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.budget {
            return Err(io::Error::other("injected: disk full"));
        }
        self.budget -= buf.len();
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl StateOutput for FailingOutput {
    fn finish(self: Box<Self>) -> io::Result<()> {
        Err(io::Error::other("injected: fsync failed"))
    }
}

impl CheckpointStorage for FaultyStorage {
    fn initialize(&self, job: JobId) -> io::Result<SnapshotUri> {
        self.inner.initialize(job)
    }
    fn checkpoint_location(&self, job: JobId, id: u64) -> io::Result<SnapshotUri> {
        *self.last_id.lock().unwrap() = id;
        if let StorageFault::DeclineAbove(max) = self.fault {
            if id > max {
                return Err(io::Error::other("injected: no more checkpoints"));
            }
        }
        self.inner.checkpoint_location(job, id)
    }
    fn create_state_file(&self, location: &SnapshotUri, name: &str) -> io::Result<Box<dyn StateOutput>> {
        let out = self.inner.create_state_file(location, name)?;
        let n = self.state_files.fetch_add(1, Ordering::SeqCst) + 1;
        let savepoint = location.file_name().is_some_and(|n| n.starts_with("savepoint-"));
        if let (StorageFault::SlowSavepointWrites(ms), true) = (self.fault, savepoint) {
            return Ok(Box::new(SlowOutput {
                inner: out,
                delay: std::time::Duration::from_millis(ms),
                started: false,
            }));
        }
        if self.fault == StorageFault::StateFile(n) {
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Ok(Box::new(FailingOutput { inner: out, budget: 40 }));
        }
        Ok(out)
    }
    fn write_metadata(&self, location: &SnapshotUri, bytes: &[u8]) -> io::Result<()> {
        let n = self.metadata.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fault == StorageFault::Metadata(n) {
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::other("injected: metadata write failed"));
        }
        self.inner.write_metadata(location, bytes)
    }
    fn discard_incomplete(&self, location: &SnapshotUri) -> io::Result<()> {
        self.inner.discard_incomplete(location)
    }
    fn savepoint_location(&self, target: &SnapshotUri, job: JobId) -> io::Result<SnapshotUri> {
        if self.fault == StorageFault::HoldSavepointLocation {
            self.fired.fetch_add(1, Ordering::SeqCst);
            let _wait = self.gate.read().unwrap_or_else(|p| p.into_inner());
        }
        self.inner.savepoint_location(target, job)
    }
    fn store(&self) -> &dyn SnapshotStore {
        &self.slow_store
    }
}

/// A store whose downloads take longer (a slow network), the rest as it is.
#[derive(Debug)]
struct SlowStore {
    inner: weir::Stores,
    download_delay: std::time::Duration,
}

impl SnapshotStore for SlowStore {
    fn create(&self, file: &SnapshotUri) -> io::Result<Box<dyn StateOutput>> {
        self.inner.create(file)
    }
    fn write_new(&self, file: &SnapshotUri, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_new(file, bytes)
    }
    fn read(&self, file: &SnapshotUri) -> io::Result<Vec<u8>> {
        self.inner.read(file)
    }
    fn kind(&self, at: &SnapshotUri) -> io::Result<Option<EntryKind>> {
        self.inner.kind(at)
    }
    fn list(&self, dir: &SnapshotUri) -> io::Result<Vec<Entry>> {
        self.inner.list(dir)
    }
    fn make_dirs(&self, dir: &SnapshotUri) -> io::Result<()> {
        self.inner.make_dirs(dir)
    }
    fn delete(&self, file: &SnapshotUri) -> io::Result<()> {
        self.inner.delete(file)
    }
    fn remove_empty_dir(&self, dir: &SnapshotUri) -> io::Result<bool> {
        self.inner.remove_empty_dir(dir)
    }
    fn remove_all(&self, dir: &SnapshotUri) -> io::Result<()> {
        self.inner.remove_all(dir)
    }
    fn link_or_copy(&self, from: &SnapshotUri, to: &SnapshotUri) -> io::Result<()> {
        self.inner.link_or_copy(from, to)
    }
    fn download(&self, file: &SnapshotUri, to: &Path) -> io::Result<(u64, u32)> {
        std::thread::sleep(self.download_delay);
        self.inner.download(file, to)
    }
    fn canonical(&self, at: &SnapshotUri) -> SnapshotUri {
        self.inner.canonical(at)
    }
}

/// The keyed state backends the state tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    HashMap,
    /// rocksdb with incremental checkpoints, native savepoints and a small memory budget.
    RocksDb,
}

impl Backend {
    /// Configuration entries selecting this backend; rocksdb keeps its working files in `local`.
    pub fn settings(self, local: &Path) -> Vec<(&'static str, String)> {
        match self {
            Backend::HashMap => vec![("state.backend.type", "hashmap".into())],
            Backend::RocksDb => vec![
                ("state.backend.type", "rocksdb".into()),
                ("execution.checkpointing.incremental", "true".into()),
                ("state.backend.rocksdb.memory.fixed-per-slot", "16 mb".into()),
                ("state.backend.rocksdb.localdir", local.display().to_string()),
            ],
        }
    }

    /// The same as `-D key=value` arguments.
    pub fn args(self, local: &Path) -> Vec<String> {
        self.settings(local).into_iter().flat_map(|(k, v)| ["-D".to_string(), format!("{k}={v}")]).collect()
    }

    pub fn configure(self, config: &mut weir::Configuration, local: &Path) {
        for (k, v) in self.settings(local) {
            config.set(k, &v).unwrap();
        }
    }

    /// The savepoint format tests take: rocksdb's own (native) files, to test them end to end;
    /// canonical savepoints of rocksdb are tested by switching backends.
    pub fn savepoint_format(self) -> weir::SavepointFormat {
        match self {
            Backend::HashMap => weir::SavepointFormat::Canonical,
            Backend::RocksDb => weir::SavepointFormat::Native,
        }
    }
}

/// Declares tests that run once per backend: each `fn name(backend) { ... }` becomes the tests
/// `name::hashmap` and `name::rocksdb`.
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$meta])*
            fn run($backend: $crate::common::Backend) $body
            #[test]
            fn hashmap() {
                run($crate::common::Backend::HashMap)
            }
            #[test]
            fn rocksdb() {
                run($crate::common::Backend::RocksDb)
            }
        }
    )*};
}

/// A job environment for in-process tests: no REST server, and `settings` on top.
#[allow(dead_code)]
pub fn test_env(settings: &[(&str, &str)]) -> weir::StreamEnv {
    let mut config = weir::Configuration::new();
    config.set("weir.rest.enabled", "false").unwrap();
    for (k, v) in settings {
        config.set(k, v).unwrap();
    }
    weir::StreamEnv::with_config(config)
}

/// Waits until the job runs, stops it with a savepoint in `dir` (draining first with `drain`),
/// waits for it to end, and returns the savepoint's location.
#[allow(dead_code)]
pub fn stop_with_savepoint(handle: weir::JobHandle, dir: &Path, format: weir::SavepointFormat, drain: bool) -> PathBuf {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while handle.status() != weir::JobStatus::Running {
        assert!(std::time::Instant::now() < deadline, "the job did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let token = handle.stop_with_savepoint(Some(&uri(dir)), format, drain).unwrap();
    let location = match handle.wait_operation(token, std::time::Duration::from_secs(30)) {
        Some(weir::Operation::Completed { location, .. }) => local(&location),
        other => panic!("stop with savepoint did not complete: {other:?}"),
    };
    handle.wait();
    location
}

/// A job environment as a job binary gets it from its command line: `-D` for each of `settings`,
/// the backend's flags (working files under `dir`), `-s restore`; checkpoints in `dir/ck`, no REST.
#[allow(dead_code)]
pub fn job_env(backend: Backend, dir: &Path, restore: Option<&Path>, settings: &[&str]) -> weir::StreamEnv {
    let mut args: Vec<String> = vec!["job".into()];
    for s in settings {
        args.extend(["-D".to_string(), s.to_string()]);
    }
    args.extend(backend.args(&dir.join("rocksdb")));
    if let Some(s) = restore {
        args.extend(["-s".to_string(), s.display().to_string()]);
    }
    let (mut env, _) = weir::StreamEnv::from_arg_list(args).unwrap();
    env.set("weir.rest.enabled", "false").unwrap();
    env.set(weir::config_keys::CHECKPOINT_DIR, dir.join("ck").to_str().unwrap()).unwrap();
    env
}

/// A sink keeping records in arrival order in memory, shared by every subtask of the sink (exact
/// for jobs without failures).
#[derive(Clone, Default)]
#[allow(dead_code)]
pub struct Collect(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

#[allow(dead_code)]
impl Collect {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl weir::SinkFunction<String> for Collect {
    fn invoke(&mut self, value: String) -> Result<(), weir::BoxError> {
        self.0.lock().unwrap().push(value);
        Ok(())
    }
}

/// The newest valid checkpoint under any job directory of `base` (ids grow across restores).
pub fn latest_checkpoint(base: &Path) -> Option<PathBuf> {
    latest_completed(base).map(|(_, path)| path)
}

/// The id of [`latest_checkpoint`].
pub fn latest_checkpoint_id(base: &Path) -> Option<u64> {
    latest_completed(base).map(|(id, _)| id)
}

fn latest_completed(base: &Path) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(base)
        .ok()?
        .flatten()
        .filter_map(|job| weir::latest_checkpoint(&job.path()))
        .max_by_key(|(id, _)| *id)
}

/// The word-count job's exactly-once output for these words: a running total per record.
pub fn word_count_truth(words: &[&str]) -> Vec<String> {
    let mut counts = std::collections::BTreeMap::new();
    let mut lines: Vec<String> = words
        .iter()
        .map(|w| {
            let n = counts.entry(*w).or_insert(0u64);
            *n += 1;
            format!("WordCount{{word='{w}', frequency={n}}}")
        })
        .collect();
    lines.sort();
    lines
}

/// Waits until `done` holds, failing the test (naming `what`) after 90 s.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

//! How far the snapshots being written have got: files opened and bytes written per snapshot
//! location, counted by a [`CheckpointStorage`] wrapper, and the subtasks that have acknowledged,
//! reported by the master, for the status of long savepoints; and how far a restore's download
//! of a remote snapshot has got, of a total known from `_metadata`.

use super::{CheckpointStorage, SnapshotStore, SnapshotUri, StateOutput};
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_core::{CheckpointId, JobId};

/// Files and bytes written so far into one snapshot's directory.
#[derive(Debug, Default)]
struct Written {
    files: AtomicU64,
    bytes: AtomicU64,
    acknowledged: AtomicU64,
    subtasks: AtomicU64,
}

/// How far one snapshot has got: the bytes are known only as they are written (the state's size
/// is not known ahead), the subtasks that have acknowledged are counted of all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotProgress {
    pub files: u64,
    pub bytes: u64,
    pub acknowledged_subtasks: u64,
    pub subtasks: u64,
}

/// Progress of every snapshot location being written, shared with whoever reports it.
#[derive(Debug, Clone, Default)]
pub struct WriteProgress(Arc<Mutex<HashMap<SnapshotUri, Arc<Written>>>>);

impl WriteProgress {
    fn entry(&self, location: &SnapshotUri) -> Arc<Written> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(location.clone()).or_default().clone()
    }

    /// How far the snapshot at `location` has got, if it has started.
    pub fn of(&self, location: &SnapshotUri) -> Option<SnapshotProgress> {
        let written = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(location).cloned()?;
        Some(SnapshotProgress {
            files: written.files.load(Ordering::Relaxed),
            bytes: written.bytes.load(Ordering::Relaxed),
            acknowledged_subtasks: written.acknowledged.load(Ordering::Relaxed),
            subtasks: written.subtasks.load(Ordering::Relaxed),
        })
    }

    /// `acknowledged` of `subtasks` subtasks have acknowledged the snapshot at `location`.
    pub fn acknowledged(&self, location: &SnapshotUri, acknowledged: usize, subtasks: usize) {
        let written = self.entry(location);
        written.acknowledged.store(acknowledged as u64, Ordering::Relaxed);
        written.subtasks.store(subtasks as u64, Ordering::Relaxed);
    }

    /// The snapshot at `location` is done (complete or not): its counters go.
    pub fn forget(&self, location: &SnapshotUri) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(location);
    }
}

/// A transfer whose size is known ahead: the files of a snapshot being downloaded for a restore.
#[derive(Debug)]
pub struct Transfer {
    what: SnapshotUri,
    files: u64,
    bytes: u64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    started: Instant,
}

/// Files and bytes of a [`Transfer`] done so far, of its totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferStatus {
    pub snapshot: SnapshotUri,
    pub files: u64,
    pub files_total: u64,
    pub bytes: u64,
    pub bytes_total: u64,
    pub elapsed: Duration,
}

impl Transfer {
    /// A transfer of the files of `what`, of these sizes.
    pub fn new(what: SnapshotUri, sizes: &[u64]) -> Self {
        Transfer {
            what,
            files: sizes.len() as u64,
            bytes: sizes.iter().sum(),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// One more file of `bytes` is done.
    pub fn file_done(&self, bytes: u64) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn status(&self) -> TransferStatus {
        TransferStatus {
            snapshot: self.what.clone(),
            files: self.files_done.load(Ordering::Relaxed),
            files_total: self.files,
            bytes: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes,
            elapsed: self.started.elapsed(),
        }
    }
}

impl std::fmt::Display for TransferStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let percent = (self.bytes * 100).checked_div(self.bytes_total).unwrap_or(100);
        write!(
            f,
            "{} of {} files, {:.1} of {:.1} MB ({percent} %) in {:.1} s",
            self.files,
            self.files_total,
            self.bytes as f64 / 1e6,
            self.bytes_total as f64 / 1e6,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The download of the snapshot a job is restoring from, while it lasts; shared with whoever
/// reports it (the REST status of the job).
#[derive(Debug, Clone, Default)]
pub struct RestoreProgress(Arc<Mutex<Option<Arc<Transfer>>>>);

impl RestoreProgress {
    pub fn started(&self, transfer: Arc<Transfer>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(transfer);
    }

    pub fn ended(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// How far the download has got, while one runs.
    pub fn status(&self) -> Option<TransferStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|t| t.status())
    }
}

/// A [`CheckpointStorage`] that counts what goes through `create_state_file`.
#[derive(Debug)]
pub struct CountingStorage {
    inner: Arc<dyn CheckpointStorage>,
    progress: WriteProgress,
}

impl CountingStorage {
    pub fn new(inner: Arc<dyn CheckpointStorage>, progress: WriteProgress) -> Self {
        CountingStorage { inner, progress }
    }
}

struct CountingOutput {
    inner: Box<dyn StateOutput>,
    written: Arc<Written>,
}

impl Write for CountingOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl StateOutput for CountingOutput {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.inner.finish()
    }
}

impl CheckpointStorage for CountingStorage {
    fn initialize(&self, job: JobId) -> io::Result<SnapshotUri> {
        self.inner.initialize(job)
    }
    fn checkpoint_location(&self, job: JobId, id: CheckpointId) -> io::Result<SnapshotUri> {
        self.inner.checkpoint_location(job, id)
    }
    fn savepoint_location(&self, target: &SnapshotUri, job: JobId) -> io::Result<SnapshotUri> {
        self.inner.savepoint_location(target, job)
    }
    fn create_state_file(&self, location: &SnapshotUri, name: &str) -> io::Result<Box<dyn StateOutput>> {
        let inner = self.inner.create_state_file(location, name)?;
        let written = self.progress.entry(location);
        written.files.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(CountingOutput { inner, written }))
    }
    fn write_metadata(&self, location: &SnapshotUri, bytes: &[u8]) -> io::Result<()> {
        let result = self.inner.write_metadata(location, bytes);
        self.progress.forget(location);
        result
    }
    fn discard_incomplete(&self, location: &SnapshotUri) -> io::Result<()> {
        self.progress.forget(location);
        self.inner.discard_incomplete(location)
    }
    fn store(&self) -> &dyn SnapshotStore {
        self.inner.store()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FsCheckpointStorage;

    #[test]
    fn counts_files_and_bytes_per_snapshot_until_it_is_done() {
        let base = tempfile::tempdir().unwrap();
        let progress = WriteProgress::default();
        let storage =
            CountingStorage::new(Arc::new(FsCheckpointStorage::new(base.path().to_path_buf())), progress.clone());
        let job = JobId([2; 16]);
        let (one, two) = (storage.checkpoint_location(job, 1).unwrap(), storage.checkpoint_location(job, 2).unwrap());
        assert_eq!(progress.of(&one), None);
        for (location, sizes) in [(&one, [10usize, 5]), (&two, [7, 0])] {
            for (i, size) in sizes.into_iter().enumerate() {
                let mut out = storage.create_state_file(location, &format!("f{i}")).unwrap();
                out.write_all(&vec![1; size]).unwrap();
                out.finish().unwrap();
            }
        }
        progress.acknowledged(&one, 1, 3);
        let of = |location| progress.of(location).map(|p| (p.files, p.bytes, p.acknowledged_subtasks, p.subtasks));
        assert_eq!(of(&one), Some((2, 15, 1, 3)));
        assert_eq!(of(&two), Some((2, 7, 0, 0)));
        storage.write_metadata(&one, b"m").unwrap();
        storage.discard_incomplete(&two).unwrap();
        assert_eq!((progress.of(&one), progress.of(&two)), (None, None), "done snapshots are forgotten");
    }

    #[test]
    fn a_restore_download_counts_files_and_bytes_of_the_totals_while_it_runs() {
        let restoring = RestoreProgress::default();
        assert_eq!(restoring.status(), None);
        let snapshot: SnapshotUri = SnapshotUri::parse("s3://bucket/sp").unwrap();
        let transfer = Arc::new(Transfer::new(snapshot.clone(), &[1_500_000, 500_000, 0]));
        restoring.started(transfer.clone());
        transfer.file_done(1_500_000);
        let status = restoring.status().unwrap();
        assert_eq!(
            (status.snapshot.clone(), status.files, status.files_total, status.bytes, status.bytes_total),
            (snapshot, 1, 3, 1_500_000, 2_000_000)
        );
        let line = status.to_string();
        assert!(line.starts_with("1 of 3 files, 1.5 of 2.0 MB (75 %) in "), "{line}");
        restoring.ended();
        assert_eq!(restoring.status(), None);
        let empty = Transfer::new(SnapshotUri::parse("s3://bucket/empty").unwrap(), &[]).status().to_string();
        assert!(empty.starts_with("0 of 0 files, 0.0 of 0.0 MB (100 %)"), "{empty}");
    }
}

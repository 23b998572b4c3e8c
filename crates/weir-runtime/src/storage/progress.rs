//! How far the snapshots being written have got: files opened and bytes written per snapshot
//! location, counted by a [`CheckpointStorage`] wrapper, for the status of long savepoints.

use super::{CheckpointStorage, SnapshotStore, SnapshotUri, StateOutput};
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use weir_core::{CheckpointId, JobId};

/// Files and bytes written so far into one snapshot's directory.
#[derive(Debug, Default)]
pub struct Written {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

/// Progress of every snapshot location being written, shared with whoever reports it.
#[derive(Debug, Clone, Default)]
pub struct WriteProgress(Arc<Mutex<HashMap<SnapshotUri, Arc<Written>>>>);

impl WriteProgress {
    fn entry(&self, location: &SnapshotUri) -> Arc<Written> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(location.clone()).or_default().clone()
    }

    /// (files, bytes) written so far into `location`, if anything was.
    pub fn of(&self, location: &SnapshotUri) -> Option<(u64, u64)> {
        let written = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(location).cloned()?;
        Some((written.files.load(Ordering::Relaxed), written.bytes.load(Ordering::Relaxed)))
    }

    /// The snapshot at `location` is done (complete or not): its counters go.
    pub fn forget(&self, location: &SnapshotUri) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(location);
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
        assert_eq!(progress.of(&one), Some((2, 15)));
        assert_eq!(progress.of(&two), Some((2, 7)));
        storage.write_metadata(&one, b"m").unwrap();
        storage.discard_incomplete(&two).unwrap();
        assert_eq!((progress.of(&one), progress.of(&two)), (None, None), "done snapshots are forgotten");
    }
}

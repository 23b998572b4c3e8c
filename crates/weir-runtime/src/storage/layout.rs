//! Flink's checkpoint layout on any store: `<base>/<job id>/{chk-<n>/, shared/, taskowned/}`,
//! savepoints in `<target>/savepoint-<job prefix>-<random>/`.

use super::local::{create_savepoint_dir, savepoint_name, SavepointInProgress};
use super::{CheckpointStorage, SnapshotStore, SnapshotUri, StateOutput, Stores};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use weir_core::metadata::METADATA_FILE_NAME;
use weir_core::{CheckpointId, JobId};

#[derive(Debug, Clone)]
pub struct FsCheckpointStorage {
    base: SnapshotUri,
    stores: Stores,
    /// Local savepoints being written, by directory (their locks are held until they complete or
    /// go).
    in_progress: Arc<Mutex<HashMap<SnapshotUri, SavepointInProgress>>>,
}

impl FsCheckpointStorage {
    /// Storage under `base` (a local directory or an `s3://` prefix); local files and directories
    /// it creates are private to the user, S3 is reached with the AWS environment's settings
    /// ([`FsCheckpointStorage::with_stores`] for others).
    pub fn new(base: impl Into<SnapshotUri>) -> Self {
        FsCheckpointStorage { base: base.into(), stores: Stores::default(), in_progress: Default::default() }
    }

    pub fn with_stores(self, stores: Stores) -> Self {
        FsCheckpointStorage { stores, ..self }
    }

    /// A local savepoint at `location` is complete or abandoned: its in-progress mark goes.
    fn release(&self, location: &SnapshotUri) {
        if let Some(savepoint) = self.in_progress.lock().unwrap_or_else(|p| p.into_inner()).remove(location) {
            savepoint.finish();
        }
    }

    /// `<base>/<job id>`, absolute and without symbolic links once a local base exists, so the
    /// locations of one job's files compare equal however the base was spelled.
    pub fn job_dir(&self, job: JobId) -> SnapshotUri {
        self.stores.canonical(&self.base).join(&job.to_hex())
    }
}

impl CheckpointStorage for FsCheckpointStorage {
    fn initialize(&self, job: JobId) -> io::Result<SnapshotUri> {
        self.stores.check(&self.base)?;
        self.stores.make_dirs(&self.base)?;
        let dir = self.job_dir(job);
        self.stores.make_dirs(&dir.join("shared"))?;
        self.stores.make_dirs(&dir.join("taskowned"))?;
        Ok(dir)
    }

    fn checkpoint_location(&self, job: JobId, id: CheckpointId) -> io::Result<SnapshotUri> {
        let dir = self.job_dir(job).join(&format!("chk-{id}"));
        self.stores.make_dirs(&dir)?;
        Ok(dir)
    }

    fn savepoint_location(&self, target: &SnapshotUri, job: JobId) -> io::Result<SnapshotUri> {
        match target.as_local() {
            Some(path) => {
                let savepoint = create_savepoint_dir(path, job, self.stores.modes())?;
                let dir = SnapshotUri::Local(savepoint.dir.clone());
                self.in_progress.lock().unwrap_or_else(|p| p.into_inner()).insert(dir.clone(), savepoint);
                Ok(dir)
            }
            // No directories to create and no locks on object storage: a fresh random name with
            // nothing under it (the listing also checks the bucket and credentials), so a failed
            // savepoint's cleanup deletes only its own objects. A savepoint abandoned by a killed
            // process stays without `_metadata` (not a snapshot).
            None => {
                for _ in 0..10 {
                    let dir = target.join(&savepoint_name(job));
                    if self.stores.list(&dir)?.is_empty() {
                        return Ok(dir);
                    }
                }
                Err(io::Error::other(format!("Failed to create savepoint directory at {target}")))
            }
        }
    }

    fn create_state_file(&self, location: &SnapshotUri, name: &str) -> io::Result<Box<dyn StateOutput>> {
        self.stores.create(&location.join(name))
    }

    fn write_metadata(&self, location: &SnapshotUri, bytes: &[u8]) -> io::Result<()> {
        self.stores.write_new(&location.join(METADATA_FILE_NAME), bytes)?;
        self.release(location);
        Ok(())
    }

    fn discard_incomplete(&self, location: &SnapshotUri) -> io::Result<()> {
        self.release(location);
        self.stores.remove_all(location)
    }

    fn store(&self) -> &dyn SnapshotStore {
        &self.stores
    }
}

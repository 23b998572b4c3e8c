//! Checkpoint storage: the one door to snapshot bytes, addressed by [`SnapshotUri`].
//!
//! * [`SnapshotStore`] reads, writes, lists and deletes files by URI. [`Stores`] is the door
//!   itself: it sends a local location to the file system ([`local`]: file modes, fsync, atomic
//!   renames) and an `s3://` one to object storage ([`object`], over `weir-storage`).
//! * [`CheckpointStorage`] decides where a job's snapshots go (Flink's layout:
//!   `<execution.checkpointing.dir>/<job-id>/{chk-<n>/, shared/, taskowned/}`, savepoints as
//!   `<target>/savepoint-<job prefix>-<random>`); [`FsCheckpointStorage`] is that layout on any
//!   store, as Flink's `FileSystemCheckpointStorage` is on any file system.
//! * [`snapshot`] loads, lists, discards and disposes complete snapshots through a store, and
//!   stages a remote snapshot's files on local disk for a restore.
//!
//! A snapshot exists once its `_metadata` does: state files are written first, `_metadata` last
//! and atomically (rename on a file system, a create-if-absent put on S3), so a reader never sees a
//! half-written snapshot as valid.

mod layout;
pub mod local;
pub mod object;
pub mod progress;
pub mod snapshot;

use std::fmt::Debug;
use std::io;
use std::path::Path;
use weir_core::{CheckpointId, JobId};

pub use layout::FsCheckpointStorage;
pub use local::{sweep_partial_savepoints, FileModes};
pub use snapshot::{
    delete_file_and_empty_dir, discard_snapshot, dispose_snapshot, latest_checkpoint, latest_checkpoint_in,
    load_snapshot, sibling_snapshots, DisposeError, Disposed, LoadError, LoadedSnapshot,
};
pub use weir_core::location::SnapshotUri;
pub use weir_state::StateOutput;
pub use weir_storage::S3Settings;

/// What a location is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    /// A directory, or on object storage a prefix with objects under it.
    Dir,
    /// A symbolic link (local file systems only), not followed.
    Symlink,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    /// Bytes, for files.
    pub size: u64,
}

/// Snapshot bytes by URI. Every access to a snapshot's files goes through one of these.
pub trait SnapshotStore: Send + Sync + Debug {
    /// A new file, streamed; durable (and, on object storage, visible) once finished. Fails if
    /// the file exists.
    fn create(&self, file: &SnapshotUri) -> io::Result<Box<dyn StateOutput>>;
    /// A new file written at once: readers see all of it or nothing (on object storage, it fails
    /// if the file exists).
    fn write_new(&self, file: &SnapshotUri, bytes: &[u8]) -> io::Result<()>;
    fn read(&self, file: &SnapshotUri) -> io::Result<Vec<u8>>;
    /// What is at `at` (none when nothing is); symbolic links are reported, not followed.
    fn kind(&self, at: &SnapshotUri) -> io::Result<Option<EntryKind>>;
    /// The entries directly in `dir` (none when it does not exist).
    fn list(&self, dir: &SnapshotUri) -> io::Result<Vec<Entry>>;
    /// Creates `dir` and its parents (object storage has no directories: nothing to do).
    fn make_dirs(&self, dir: &SnapshotUri) -> io::Result<()>;
    /// Deletes a file; one that is not there counts as deleted.
    fn delete(&self, file: &SnapshotUri) -> io::Result<()>;
    /// Removes `dir` if it is empty; true when it is gone (or never was), false when it holds
    /// something.
    fn remove_empty_dir(&self, dir: &SnapshotUri) -> io::Result<bool>;
    /// Deletes `dir` and everything in it.
    fn remove_all(&self, dir: &SnapshotUri) -> io::Result<()>;
    /// Makes `to` a copy of `from` (a hard link where the file system allows).
    fn link_or_copy(&self, from: &SnapshotUri, to: &SnapshotUri) -> io::Result<()>;
    /// Copies `file` to the local path `to`; returns its size and CRC32C (computed while copying).
    fn download(&self, file: &SnapshotUri, to: &Path) -> io::Result<(u64, u32)>;
    /// The location without symbolic links or relative parts, so two spellings of one place
    /// compare equal (object storage locations already do).
    fn canonical(&self, at: &SnapshotUri) -> SnapshotUri;
}

/// Where a job's checkpoints and savepoints go, and how they are created.
pub trait CheckpointStorage: Send + Sync + Debug {
    /// Creates (if needed) the job's directory with `shared/` and `taskowned/`, after checking that
    /// the storage answers (wrong credentials or a missing bucket fail here, before the job runs).
    fn initialize(&self, job: JobId) -> io::Result<SnapshotUri>;
    /// Creates the directory of checkpoint `id` and returns it.
    fn checkpoint_location(&self, job: JobId, id: CheckpointId) -> io::Result<SnapshotUri>;
    /// Creates a new savepoint directory `savepoint-<first 6 hex of the job id>-<12 hex>` in
    /// `target`.
    fn savepoint_location(&self, target: &SnapshotUri, job: JobId) -> io::Result<SnapshotUri>;
    /// Opens a new state file `name` in `location`.
    fn create_state_file(&self, location: &SnapshotUri, name: &str) -> io::Result<Box<dyn StateOutput>>;
    /// Atomically writes `_metadata` into `location`: from then on the snapshot exists.
    fn write_metadata(&self, location: &SnapshotUri, bytes: &[u8]) -> io::Result<()>;
    /// Deletes the directory of a snapshot this job started and that never completed (no
    /// `_metadata`): everything in it is the job's own partial output.
    fn discard_incomplete(&self, location: &SnapshotUri) -> io::Result<()>;
    /// The door to every other access to snapshot bytes: reading, listing, deleting.
    fn store(&self) -> &dyn SnapshotStore;
}

/// The door: local locations to the file system, `s3://` ones to object storage.
#[derive(Debug, Clone)]
pub struct Stores {
    local: local::LocalStore,
    object: object::ObjectStores,
}

impl Default for Stores {
    fn default() -> Self {
        Stores::new(FileModes::PRIVATE, S3Settings::default())
    }
}

impl Stores {
    pub fn new(modes: FileModes, s3: S3Settings) -> Self {
        Stores { local: local::LocalStore { modes }, object: object::ObjectStores::new(s3) }
    }

    /// The store for configuration `config`: file modes from `weir.checkpointing.private-files`,
    /// S3 from Flink's `s3.*` keys and the AWS environment.
    pub fn from_config(config: &weir_core::config::Configuration) -> Self {
        let private = config.get_bool(weir_core::config::keys::PRIVATE_FILES).unwrap_or(true);
        Stores::new(if private { FileModes::PRIVATE } else { FileModes::UMASK }, S3Settings::from_config(config))
    }

    /// Local paths on the file system, `s3://` buckets in this process's memory: for tests of
    /// object-storage behaviour that need no server.
    pub fn with_buckets_in_memory() -> Self {
        Stores { local: local::LocalStore { modes: FileModes::PRIVATE }, object: object::ObjectStores::in_memory() }
    }

    pub fn modes(&self) -> FileModes {
        self.local.modes
    }

    fn route(&self, at: &SnapshotUri) -> &dyn SnapshotStore {
        match at {
            SnapshotUri::Local(_) => &self.local,
            SnapshotUri::S3 { .. } => &self.object,
        }
    }

    /// Checks that the store of `at` answers (an S3 bucket exists and the credentials work).
    pub fn check(&self, at: &SnapshotUri) -> io::Result<()> {
        match at {
            SnapshotUri::Local(_) => Ok(()),
            SnapshotUri::S3 { .. } => self.object.check(at),
        }
    }
}

impl SnapshotStore for Stores {
    fn create(&self, file: &SnapshotUri) -> io::Result<Box<dyn StateOutput>> {
        self.route(file).create(file)
    }
    fn write_new(&self, file: &SnapshotUri, bytes: &[u8]) -> io::Result<()> {
        self.route(file).write_new(file, bytes)
    }
    fn read(&self, file: &SnapshotUri) -> io::Result<Vec<u8>> {
        self.route(file).read(file)
    }
    fn kind(&self, at: &SnapshotUri) -> io::Result<Option<EntryKind>> {
        self.route(at).kind(at)
    }
    fn list(&self, dir: &SnapshotUri) -> io::Result<Vec<Entry>> {
        self.route(dir).list(dir)
    }
    fn make_dirs(&self, dir: &SnapshotUri) -> io::Result<()> {
        self.route(dir).make_dirs(dir)
    }
    fn delete(&self, file: &SnapshotUri) -> io::Result<()> {
        self.route(file).delete(file)
    }
    fn remove_empty_dir(&self, dir: &SnapshotUri) -> io::Result<bool> {
        self.route(dir).remove_empty_dir(dir)
    }
    fn remove_all(&self, dir: &SnapshotUri) -> io::Result<()> {
        self.route(dir).remove_all(dir)
    }
    fn link_or_copy(&self, from: &SnapshotUri, to: &SnapshotUri) -> io::Result<()> {
        if std::mem::discriminant(from) == std::mem::discriminant(to) {
            self.route(from).link_or_copy(from, to)
        } else {
            copy_across(self, from, to)
        }
    }
    fn download(&self, file: &SnapshotUri, to: &Path) -> io::Result<(u64, u32)> {
        self.route(file).download(file, to)
    }
    fn canonical(&self, at: &SnapshotUri) -> SnapshotUri {
        self.route(at).canonical(at)
    }
}

/// Copies a file between stores (a snapshot on local disk claimed by a job checkpointing to S3,
/// or the other way round), streaming it.
fn copy_across(stores: &Stores, from: &SnapshotUri, to: &SnapshotUri) -> io::Result<()> {
    let mut out = stores.create(to)?;
    match from.as_local() {
        Some(path) => {
            io::copy(&mut std::fs::File::open(path)?, &mut out)?;
        }
        None => {
            let staged = tempfile::NamedTempFile::new()?;
            stores.download(from, staged.path())?;
            io::copy(&mut std::fs::File::open(staged.path())?, &mut out)?;
        }
    }
    out.finish()
}

//! The seam between keyed backends and checkpoint storage: what a backend captures at a barrier,
//! where the snapshot writer puts its files, and what a restore hands back.
//!
//! A backend's synchronous part (on the task thread) returns a [`KeyedSnapshot`]; the snapshot
//! writer thread then calls [`KeyedSnapshot::write`] with the storage's [`SnapshotFiles`], and the
//! result goes into `_metadata`.

use crate::error::StateError;
use crate::heap::HeapSnapshot;
use std::io::{self, Write};
use std::path::PathBuf;
use weir_core::location::SnapshotUri;
use weir_core::metadata::{KeyedStateHandle, NativeStateHandle, SnapshotKind};
use weir_core::CheckpointId;

/// A state file being written. `finish` makes it durable.
pub trait StateOutput: Write + Send {
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// A file created for a snapshot: where to write, what `_metadata` records, where it lives.
pub struct NewFile {
    pub out: Box<dyn StateOutput>,
    /// The path recorded in `_metadata` (relative to the snapshot's directory when possible).
    pub reference: String,
    /// Where the file is on the storage.
    pub location: SnapshotUri,
}

/// Where one snapshot's files go.
pub trait SnapshotFiles: Sync {
    /// A file private to this snapshot, deleted with it.
    fn create_exclusive(&self, name: &str) -> io::Result<NewFile>;
    /// A file later checkpoints may reference (a checkpoint's `shared/` directory). A savepoint
    /// keeps these with its other files, so it stays self-contained.
    fn create_shared(&self, name: &str) -> io::Result<NewFile>;
    /// References a file an earlier snapshot uploaded: returns what `_metadata` records and the
    /// file's location. A file outside the job's own directory (one of a snapshot restored in
    /// CLAIM mode) is first linked into the job's `shared/` directory (copied where linking is
    /// impossible), so a snapshot only ever references files of its own directory and its job's
    /// `shared/` directory.
    fn reuse(&self, file: &SnapshotUri) -> io::Result<(String, SnapshotUri)>;
    /// Deletes a file this snapshot created, when writing it failed part-way.
    fn delete(&self, file: &SnapshotUri) -> io::Result<()>;
}

/// What a barrier asks a backend for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    /// Reference no file of an earlier snapshot (the first checkpoint after a NO_CLAIM restore).
    pub full: bool,
}

/// The handles a written keyed snapshot adds to `_metadata`: one of them, or none when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrittenKeyedState {
    pub keyed: Option<KeyedStateHandle>,
    pub native: Option<NativeStateHandle>,
}

/// The asynchronous part of a store backend's snapshot.
pub trait StoreSnapshot: Send {
    /// Writes the snapshot's files; `name` is unique to the operator subtask within the snapshot
    /// (`keyed-<operator id>-<subtask>`). On failure, files it created are removed.
    fn write(&self, files: &dyn SnapshotFiles, name: &str) -> Result<WrittenKeyedState, StateError>;
}

/// A keyed backend's capture at a barrier.
pub enum KeyedSnapshot {
    Heap(HeapSnapshot),
    Store(Box<dyn StoreSnapshot>),
}

impl KeyedSnapshot {
    pub fn write(&self, files: &dyn SnapshotFiles, name: &str) -> Result<WrittenKeyedState, StateError> {
        match self {
            KeyedSnapshot::Heap(snapshot) => {
                if snapshot.is_empty() {
                    return Ok(WrittenKeyedState::default());
                }
                let NewFile { out, reference, location } = files.create_exclusive(name).map_err(StateError::Write)?;
                let io = |error| StateError::Storage { location: location.to_string(), error };
                let (out, written) = snapshot.write(out)?;
                out.finish().map_err(io)?;
                Ok(WrittenKeyedState {
                    keyed: Some(written.into_handle(reference, snapshot.key_groups())),
                    native: None,
                })
            }
            KeyedSnapshot::Store(snapshot) => snapshot.write(files, name),
        }
    }
}

/// Keyed state a subtask restores: key-group files (canonical) and native handles, with their
/// files' local paths (on the local file system, or downloaded there from object storage).
#[derive(Debug, Clone, Default)]
pub struct RestoredKeyedState {
    pub files: Vec<(PathBuf, KeyedStateHandle)>,
    pub native: Vec<ResolvedNativeHandle>,
    /// The files the restore's subtasks checked already (shared by all of them).
    pub checked: std::sync::Arc<crate::checksum::CheckedFiles>,
}

impl RestoredKeyedState {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.native.is_empty()
    }
}

/// A native handle with, for each of its files (`[i]` is `handle.files[i]`), where it lives on
/// the snapshot's storage (what later incremental checkpoints reference) and a local path to read
/// it from (the same file on a local file system, a downloaded copy otherwise).
#[derive(Debug, Clone)]
pub struct ResolvedNativeHandle {
    pub handle: NativeStateHandle,
    pub locations: Vec<SnapshotUri>,
    pub paths: Vec<PathBuf>,
}

pub use weir_core::location::normalize_path;

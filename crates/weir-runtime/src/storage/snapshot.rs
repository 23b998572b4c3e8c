//! Complete snapshots on a store: loading one from what a user pointed at, finding a job's
//! latest checkpoint, deleting what a snapshot owns (and only that), and staging a remote
//! snapshot's files on local disk so the backends restore from local files.

use super::progress::{RestoreProgress, Transfer};
use super::{EntryKind, SnapshotStore, SnapshotUri};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use weir_core::metadata::{self, FileScope, MetadataError, SnapshotMetadata, METADATA_FILE_NAME};
use weir_core::{CheckpointId, JobId};
use weir_state::checksum;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("Cannot find checkpoint or savepoint file/directory '{0}'. Check the path given to -s.")]
    NotFound(SnapshotUri),
    #[error("Cannot find meta data file '_metadata' in directory '{0}'. A checkpoint or savepoint directory holds a _metadata file; this directory does not (it may be an incomplete snapshot, or not a snapshot at all).")]
    NoMetadata(SnapshotUri),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("cannot read '{location}': {error}")]
    Io { location: SnapshotUri, error: io::Error },
    #[error("'{0}' is not a snapshot's _metadata file: point at a checkpoint or savepoint directory, or at the _metadata file in it")]
    NotMetadataFile(SnapshotUri),
    #[error("'{0}' is a symbolic link: a snapshot's _metadata must be a regular file in the snapshot's directory; point at the directory the link leads to")]
    MetadataSymlink(SnapshotUri),
    #[error("'{0}' references shared files (../shared/...), but its directory is not a checkpoint inside a job's directory (<checkpoint dir>/<32-hex job id>/chk-<n>); only incremental checkpoints reference shared files, so restore it from where its job wrote it (the job directory may move as a whole)")]
    SharedOutsideJob(SnapshotUri),
}

/// A snapshot's files copied to local disk for a restore; deleted with the snapshot's last
/// reference.
#[derive(Debug)]
struct Staged {
    /// Held while the copies are in use, so another process's sweep leaves them alone.
    _lock: std::fs::File,
    root: tempfile::TempDir,
    /// The location `root` stands for: the snapshot's parent (so `../shared/` is inside).
    base: SnapshotUri,
}

/// A snapshot loaded from a store: its metadata and the directory its references resolve against.
#[derive(Debug, Clone)]
pub struct LoadedSnapshot {
    pub metadata: SnapshotMetadata,
    pub dir: SnapshotUri,
    staged: OnceLock<Arc<Staged>>,
}

impl LoadedSnapshot {
    /// Where a state file referenced by this snapshot lives (references are relative and stay in
    /// the snapshot's directory or its job's `shared/`: `load_snapshot` checked them).
    pub fn resolve(&self, file: &str) -> SnapshotUri {
        self.dir.resolve(file)
    }

    /// Every file the snapshot references, resolved, with where it lives.
    pub fn files(&self) -> impl Iterator<Item = (SnapshotUri, FileScope)> + '_ {
        self.metadata
            .file_references()
            .filter_map(|(_, _, f)| metadata::file_scope(&f.path).map(|scope| (self.resolve(&f.path), scope)))
    }

    /// A local path to read a referenced file from: the file itself on a local file system, its
    /// staged copy otherwise (none before [`LoadedSnapshot::stage`]).
    pub fn local_path(&self, file: &str) -> Option<PathBuf> {
        let location = self.resolve(file);
        if let Some(path) = location.as_local() {
            return Some(path.to_path_buf());
        }
        let staged = self.staged.get()?;
        Some(staged.root.path().join(location.relative_to(&staged.base)?))
    }

    /// Copies the files of a snapshot on object storage to a local directory (once; nothing to do
    /// for a local snapshot), several at a time, checking each file's size and checksum against
    /// `_metadata`. How far it has got is published in `progress` and, past a couple of seconds,
    /// logged every two seconds.
    pub fn stage(&self, store: &dyn SnapshotStore, progress: &RestoreProgress) -> io::Result<()> {
        if self.dir.as_local().is_some() || self.staged.get().is_some() {
            return Ok(());
        }
        let base = self.dir.parent().unwrap_or_else(|| self.dir.clone());
        let temp = std::env::temp_dir();
        sweep_stale_staging(&temp);
        let root = tempfile::Builder::new().prefix(STAGING_PREFIX).tempdir_in(&temp)?;
        let lock = super::local::lock_marker(root.path(), STAGING_LOCK, super::FileModes::PRIVATE)?;
        let mut files: Vec<(String, u64, Option<u32>)> = Vec::new();
        for s in self.metadata.operators.iter().flat_map(|op| &op.subtasks) {
            files.extend(s.keyed.iter().map(|k| (k.file.path.clone(), k.file.size, k.file.crc32c)));
            files.extend(s.native.iter().flat_map(|n| &n.files).map(|f| (f.file.path.clone(), f.file.size, f.crc32c)));
        }
        let mut seen = HashSet::new();
        files.retain(|(reference, ..)| seen.insert(self.resolve(reference)));
        let transfer = Arc::new(Transfer::new(self.dir.clone(), &files.iter().map(|f| f.1).collect::<Vec<_>>()));
        progress.started(transfer.clone());
        let result = self.download_all(store, &files, &root, &base, &transfer);
        progress.ended();
        result?;
        tracing::info!("Downloaded {} for the restore: {}", self.dir, transfer.status());
        let _ = self.staged.set(Arc::new(Staged { _lock: lock, root, base }));
        Ok(())
    }

    /// Downloads `files` into `root`, [`DOWNLOADS_IN_FLIGHT`] at a time, while this thread logs
    /// progress every [`PROGRESS_EVERY`].
    fn download_all(
        &self,
        store: &dyn SnapshotStore,
        files: &[(String, u64, Option<u32>)],
        root: &tempfile::TempDir,
        base: &SnapshotUri,
        transfer: &Transfer,
    ) -> io::Result<()> {
        let next = AtomicUsize::new(0);
        let fetch = |(reference, size, crc32c): &(String, u64, Option<u32>)| -> io::Result<()> {
            let location = self.resolve(reference);
            let rel =
                location.relative_to(base).ok_or_else(|| io::Error::other(format!("{location} is outside {base}")))?;
            let local = root.path().join(rel);
            if let Some(parent) = local.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let (found, crc) = store.download(&location, &local)?;
            let what = format!("state file {location}");
            if found != *size {
                return Err(io::Error::other(checksum::size_mismatch(&what, found, *size)));
            }
            if let Some(recorded) = crc32c.filter(|&r| r != crc) {
                return Err(io::Error::other(checksum::checksum_mismatch(&what, recorded, crc)));
            }
            transfer.file_done(*size);
            Ok(())
        };
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..DOWNLOADS_IN_FLIGHT.min(files.len()))
                .map(|_| {
                    scope.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(file) = files.get(i) else { return Ok(()) };
                        if let Err(e) = fetch(file) {
                            next.store(files.len(), Ordering::Relaxed); // the others stop too
                            return Err(e);
                        }
                    })
                })
                .collect();
            let mut next_report = Instant::now() + PROGRESS_EVERY;
            while !workers.iter().all(|w| w.is_finished()) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() >= next_report {
                    next_report += PROGRESS_EVERY;
                    tracing::info!("Downloading {} for the restore: {}", self.dir, transfer.status());
                }
            }
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|_| Err(io::Error::other("download panicked"))))
        })
    }
}

/// Staging directories are `weir-restore-<random>` in the temporary directory, each with a lock
/// file its process holds.
const STAGING_PREFIX: &str = "weir-restore-";
const STAGING_LOCK: &str = ".weir-restore.lock";

/// Deletes the staging directories of processes that are gone (killed before they could delete
/// their own: nobody holds their lock); those of live processes, and anything else, stay.
fn sweep_stale_staging(dir: &Path) {
    for stale in super::local::unlocked_dirs(dir, STAGING_PREFIX, STAGING_LOCK) {
        match std::fs::remove_dir_all(&stale) {
            Ok(()) => tracing::info!("deleted {}, the restore copies of a process that ended", stale.display()),
            Err(e) => tracing::warn!("could not delete {}: {e}", stale.display()),
        }
    }
}

/// Files downloaded at once when staging a snapshot.
const DOWNLOADS_IN_FLIGHT: usize = 8;

/// How often a long download logs how far it has got.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Loads a snapshot from its directory or its `_metadata` file.
pub fn load_snapshot(store: &dyn SnapshotStore, pointer: &SnapshotUri) -> Result<LoadedSnapshot, LoadError> {
    let io = |location: &SnapshotUri| {
        let location = location.clone();
        move |error| LoadError::Io { location, error }
    };
    let mut kind = store.kind(pointer).map_err(io(pointer))?;
    let names_metadata = pointer.file_name() == Some(METADATA_FILE_NAME);
    if kind == Some(EntryKind::Symlink) {
        if names_metadata {
            // A linked _metadata would make the link's directory stand for another snapshot's files.
            return Err(LoadError::MetadataSymlink(pointer.clone()));
        }
        kind = store.kind(&store.canonical(pointer)).map_err(io(pointer))?;
    }
    let (dir, file) = match kind {
        None => return Err(LoadError::NotFound(pointer.clone())),
        Some(EntryKind::Dir) => {
            let file = pointer.join(METADATA_FILE_NAME);
            match store.kind(&file).map_err(io(&file))? {
                Some(EntryKind::File) => {}
                Some(EntryKind::Symlink) => return Err(LoadError::MetadataSymlink(file)),
                _ => return Err(LoadError::NoMetadata(pointer.clone())),
            }
            (pointer.clone(), file)
        }
        Some(_) if names_metadata => {
            (pointer.parent().unwrap_or_else(|| SnapshotUri::Local(".".into())), pointer.clone())
        }
        Some(_) => return Err(LoadError::NotMetadataFile(pointer.clone())),
    };
    let bytes = store.read(&file).map_err(io(&file))?;
    let metadata = metadata::decode(&bytes, &file.to_string())?;
    let snapshot = LoadedSnapshot { metadata, dir: store.canonical(&dir), staged: OnceLock::new() };
    // `../shared/` is a job's shared directory only when the snapshot sits in a job directory:
    // anywhere else it would name (and a CLAIM or disposal could delete) files of nobody's job.
    let in_job_dir = snapshot
        .dir
        .parent()
        .and_then(|job| job.file_name().map(str::to_string))
        .is_some_and(|name| JobId::parse(&name).is_some());
    if !in_job_dir && snapshot.files().any(|(_, scope)| scope == FileScope::JobShared) {
        return Err(LoadError::SharedOutsideJob(file));
    }
    Ok(snapshot)
}

/// The newest valid checkpoint `chk-<n>` under a job directory. Directories without a `_metadata`
/// that verifies are not checkpoints and are skipped.
pub fn latest_checkpoint_in(store: &dyn SnapshotStore, job_dir: &SnapshotUri) -> Option<(CheckpointId, SnapshotUri)> {
    let mut found: Vec<(CheckpointId, SnapshotUri)> = store
        .list(job_dir)
        .ok()?
        .into_iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .filter_map(|e| Some((e.name.strip_prefix("chk-")?.parse().ok()?, job_dir.join(&e.name))))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().find(|(_, dir)| load_snapshot(store, dir).is_ok())
}

/// [`latest_checkpoint_in`] a local job directory.
pub fn latest_checkpoint(job_dir: &Path) -> Option<(CheckpointId, PathBuf)> {
    let store = super::local::LocalStore { modes: super::FileModes::PRIVATE };
    let (id, dir) = latest_checkpoint_in(&store, &SnapshotUri::Local(job_dir.to_path_buf()))?;
    Some((id, dir.as_local()?.to_path_buf()))
}

/// Deletes a completed snapshot: `_metadata` first, so a half-deleted snapshot is never mistaken
/// for one, then the files of its directory that it references, except `keep` (files later
/// snapshots still reference), then the directory if that left it empty. Nothing it does not
/// reference is touched.
pub fn discard_snapshot(
    store: &dyn SnapshotStore,
    snapshot: &LoadedSnapshot,
    keep: &HashSet<SnapshotUri>,
) -> io::Result<()> {
    store.delete(&snapshot.dir.join(METADATA_FILE_NAME))?;
    for (file, scope) in snapshot.files() {
        if scope == FileScope::Snapshot && !keep.contains(&file) {
            store.delete(&file)?;
        }
    }
    if !store.remove_empty_dir(&snapshot.dir)? && keep.is_empty() {
        tracing::info!("kept the directory {}: it holds files the snapshot does not reference", snapshot.dir);
    }
    Ok(())
}

/// Deletes a file no snapshot references any more, and its directory when that is left empty and
/// is not a job's `shared/` directory (a CLAIM-restored snapshot directory whose last kept file
/// this was).
pub fn delete_file_and_empty_dir(store: &dyn SnapshotStore, file: &SnapshotUri) {
    if let Err(e) = store.delete(file) {
        tracing::warn!("could not delete {file}: {e}");
    }
    if let Some(dir) = file.parent() {
        let has_metadata = store.kind(&dir.join(METADATA_FILE_NAME)).ok().flatten().is_some();
        if dir.file_name().is_some_and(|n| n != "shared") && !has_metadata {
            let _ = store.remove_empty_dir(&dir);
        }
    }
}

/// The snapshots in the same directory as `dir` (a job's other retained checkpoints). One that
/// cannot be read is skipped with a warning: it could not be restored either.
pub fn sibling_snapshots(store: &dyn SnapshotStore, dir: &SnapshotUri) -> Vec<LoadedSnapshot> {
    let Some(parent) = dir.parent() else {
        return Vec::new();
    };
    let entries = match store.list(&parent) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("could not list {parent} for snapshots beside {dir}: {e}");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.into_iter().filter(|e| e.kind == EntryKind::Dir) {
        let path = parent.join(&entry.name);
        if &path == dir || store.kind(&path.join(METADATA_FILE_NAME)).ok().flatten() != Some(EntryKind::File) {
            continue;
        }
        match load_snapshot(store, &path) {
            Ok(s) => out.push(s),
            Err(e) => tracing::warn!("snapshot {path} beside {dir} is unreadable: {e}"),
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum DisposeError {
    #[error("'{0}' is not a savepoint: {why}. Only a directory with a valid _metadata (or that file) can be disposed.", why = .1.to_string().trim_end_matches('.'))]
    NotASnapshot(SnapshotUri, Box<LoadError>),
    #[error("'{0}' is a symbolic link; dispose the snapshot at the path it points to, so the snapshot deleted is the one named")]
    Symlink(SnapshotUri),
    #[error("'{path}' belongs to job {job_id}, which is still running and owns it (a retained checkpoint, or a snapshot it restored in CLAIM mode). Cancel or stop the job first.")]
    OwnedByRunningJob { path: SnapshotUri, job_id: String },
    #[error("Failed to dispose the savepoint '{0}': {1}")]
    Io(SnapshotUri, io::Error),
}

/// What a disposal deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposed {
    pub dir: SnapshotUri,
    /// False when the directory holds files the snapshot does not reference: they and the
    /// directory stay.
    pub dir_removed: bool,
}

/// Disposes a savepoint (or retained checkpoint) named by its directory or its `_metadata`:
/// `_metadata` first, so it is no longer addressable even if deleting the data fails half-way;
/// then the files it references (a shared file of an incremental checkpoint only when no other
/// snapshot of its job references it); then its directory, if nothing else is in it.
/// `owned` are directories that running jobs own (their checkpoint directories, snapshots they
/// claimed): anything inside them is refused.
pub fn dispose_snapshot(
    store: &dyn SnapshotStore,
    pointer: &SnapshotUri,
    owned: &[(String, SnapshotUri)],
) -> Result<Disposed, DisposeError> {
    let not_a_snapshot = |e| DisposeError::NotASnapshot(pointer.clone(), Box::new(e));
    if store.kind(pointer).ok().flatten() == Some(EntryKind::Symlink) {
        return Err(DisposeError::Symlink(pointer.clone()));
    }
    let loaded = load_snapshot(store, pointer).map_err(not_a_snapshot)?;
    let dir = loaded.dir.clone();
    for (job_id, job_dir) in owned {
        if dir.starts_with(&store.canonical(job_dir)) {
            return Err(DisposeError::OwnedByRunningJob { path: dir, job_id: job_id.clone() });
        }
    }
    let io = |e| DisposeError::Io(dir.clone(), e);
    let shared: Vec<SnapshotUri> =
        loaded.files().filter(|(_, scope)| *scope == FileScope::JobShared).map(|f| f.0).collect();
    discard_snapshot(store, &loaded, &HashSet::new()).map_err(io)?;
    if !shared.is_empty() {
        let still_used: HashSet<SnapshotUri> =
            sibling_snapshots(store, &dir).iter().flat_map(|s| s.files().map(|f| f.0).collect::<Vec<_>>()).collect();
        for file in shared.iter().filter(|f| !still_used.contains(*f)) {
            store.delete(file).map_err(io)?;
        }
    }
    let dir_removed = store.list(&dir).map_err(io)?.is_empty();
    Ok(Disposed { dir_removed, dir })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::{CheckpointStorage, FsCheckpointStorage};
    use std::fs;
    use weir_core::metadata::SnapshotKind;

    pub(crate) fn meta(id: u64) -> Vec<u8> {
        metadata::encode(&SnapshotMetadata {
            checkpoint_id: id,
            job_id: "00".repeat(16),
            kind: SnapshotKind::Checkpoint,
            timestamp_ms: 0,
            operators: vec![],
        })
        .unwrap()
    }

    fn local(path: &Path) -> SnapshotUri {
        SnapshotUri::Local(path.to_path_buf())
    }

    fn path(uri: &SnapshotUri) -> &Path {
        uri.as_local().unwrap()
    }

    #[test]
    fn staging_directories_of_ended_processes_are_swept_and_nothing_else() {
        let temp = tempfile::tempdir().unwrap();
        for name in ["weir-restore-live", "weir-restore-gone", "weir-restore-unmarked", "other"] {
            fs::create_dir(temp.path().join(name)).unwrap();
            fs::write(temp.path().join(name).join("file"), b"x").unwrap();
        }
        let live = crate::storage::local::lock_marker(
            &temp.path().join("weir-restore-live"),
            STAGING_LOCK,
            crate::storage::FileModes::PRIVATE,
        )
        .unwrap();
        // What a killed process leaves: the lock file, with nobody holding it.
        fs::write(temp.path().join("weir-restore-gone").join(STAGING_LOCK), b"").unwrap();
        sweep_stale_staging(temp.path());
        let mut left: Vec<String> =
            fs::read_dir(temp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["other", "weir-restore-live", "weir-restore-unmarked"]);
        drop(live);
    }

    #[test]
    fn layout_and_latest_valid_checkpoint() {
        let base = tempfile::tempdir().unwrap();
        let s = FsCheckpointStorage::new(base.path().to_path_buf());
        let store = s.store();
        let job = JobId([7; 16]);
        let dir = s.initialize(job).unwrap();
        assert!(path(&dir).join("shared").is_dir() && path(&dir).join("taskowned").is_dir());
        for id in 1..=3 {
            let loc = s.checkpoint_location(job, id).unwrap();
            s.write_metadata(&loc, &meta(id)).unwrap();
        }
        // chk-4 has no _metadata, chk-5 a corrupted one: neither is a checkpoint.
        s.checkpoint_location(job, 4).unwrap();
        let loc5 = s.checkpoint_location(job, 5).unwrap();
        let mut bad = meta(5);
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        fs::write(path(&loc5).join("_metadata"), bad).unwrap();
        let (id, latest) = latest_checkpoint(path(&dir)).unwrap();
        assert_eq!(id, 3);
        assert_eq!(latest, path(&dir).join("chk-3"));
        let err = load_snapshot(store, &loc5).unwrap_err().to_string();
        assert!(
            err.contains(&path(&loc5).join("_metadata").display().to_string()) && err.contains("corrupted"),
            "{err}"
        );
        let err = load_snapshot(store, &dir.join("chk-4")).unwrap_err().to_string();
        assert!(err.starts_with("Cannot find meta data file '_metadata' in directory"), "{err}");
        assert!(matches!(load_snapshot(store, &dir.join("nope")), Err(LoadError::NotFound(_))));
        // The _metadata file itself is a valid pointer too.
        let pointer = dir.join("chk-2").join("_metadata");
        assert_eq!(load_snapshot(store, &pointer).unwrap().metadata.checkpoint_id, 2);
    }

    #[test]
    fn dispose_refuses_non_snapshots_and_running_jobs_checkpoints() {
        let base = tempfile::tempdir().unwrap();
        let s = FsCheckpointStorage::new(base.path().to_path_buf());
        let job = JobId([3; 16]);
        let loc = s.checkpoint_location(job, 1).unwrap();
        s.write_metadata(&loc, &meta(1)).unwrap();
        let err = dispose_snapshot(s.store(), &local(base.path()), &[]).unwrap_err().to_string();
        assert!(err.contains("is not a savepoint"), "{err}");
        let running = [(job.to_hex(), s.job_dir(job))];
        let err = dispose_snapshot(s.store(), &loc, &running).unwrap_err().to_string();
        assert!(err.contains("still running") && err.contains(&job.to_hex()), "{err}");
        assert!(path(&loc).join("_metadata").exists());
        dispose_snapshot(s.store(), &loc.join("_metadata"), &[]).unwrap();
        assert!(!path(&loc).exists());
    }

    /// Metadata of checkpoint `id` whose one operator references `files` (keyed state handles).
    pub(crate) fn meta_referencing(id: u64, files: &[&str]) -> Vec<u8> {
        use weir_core::metadata::{KeyedStateHandle, OperatorSnapshot, StateFileRef, SubtaskSnapshot};
        let subtasks = files
            .iter()
            .enumerate()
            .map(|(i, f)| SubtaskSnapshot {
                subtask: i as u32,
                keyed: Some(KeyedStateHandle {
                    file: StateFileRef { path: f.to_string(), size: 1, crc32c: None },
                    key_groups: weir_core::KeyGroupRange::inclusive(0, 0),
                    offsets: vec![0],
                }),
                ..Default::default()
            })
            .collect();
        let mut m = SnapshotMetadata {
            checkpoint_id: id,
            job_id: "00".repeat(16),
            kind: SnapshotKind::Checkpoint,
            timestamp_ms: 0,
            operators: vec![],
        };
        m.operators.push(OperatorSnapshot {
            operator_id: weir_core::OperatorId::from_uid("op"),
            uid: Some("op".into()),
            name: "op".into(),
            parallelism: files.len() as u32,
            max_parallelism: 1,
            subtasks,
        });
        metadata::encode(&m).unwrap()
    }

    #[test]
    fn discard_deletes_only_what_the_snapshot_references() {
        let base = tempfile::tempdir().unwrap();
        let s = FsCheckpointStorage::new(base.path().to_path_buf());
        let job = JobId([1; 16]);
        let loc = s.checkpoint_location(job, 1).unwrap();
        s.write_metadata(&loc, &meta_referencing(1, &["state", "kept"])).unwrap();
        for name in ["state", "kept", "notes.txt"] {
            fs::write(path(&loc).join(name), b"x").unwrap();
        }
        let snapshot = load_snapshot(s.store(), &loc).unwrap();
        let keep: HashSet<SnapshotUri> = [snapshot.resolve("kept")].into();
        discard_snapshot(s.store(), &snapshot, &keep).unwrap();
        let mut left: Vec<_> = fs::read_dir(path(&loc)).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["kept", "notes.txt"], "_metadata and the referenced file go; the rest stays");
        fs::remove_file(path(&loc).join("notes.txt")).unwrap();
        discard_snapshot(s.store(), &snapshot, &HashSet::new()).unwrap();
        assert!(!path(&loc).exists(), "an emptied directory goes");
        discard_snapshot(s.store(), &snapshot, &HashSet::new()).unwrap();
    }

    #[test]
    fn dispose_accepts_only_a_snapshot_directory_or_its_own_metadata() {
        let store = crate::storage::Stores::default();
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("sp");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("_metadata"), meta_referencing(1, &["state"])).unwrap();
        fs::write(dir.join("state"), b"x").unwrap();
        // A copy of _metadata under another name, and a link to it, beside unrelated files.
        let other = base.path().join("backups");
        fs::create_dir(&other).unwrap();
        fs::copy(dir.join("_metadata"), other.join("backup.meta")).unwrap();
        fs::write(other.join("state"), b"precious").unwrap();
        let err = dispose_snapshot(&store, &local(&other.join("backup.meta")), &[]).unwrap_err().to_string();
        assert!(err.contains("is not a snapshot's _metadata file"), "{err}");
        let linked = base.path().join("linked");
        fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(dir.join("_metadata"), linked.join("_metadata")).unwrap();
        let err = dispose_snapshot(&store, &local(&linked), &[]).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        std::os::unix::fs::symlink(&dir, base.path().join("dir-link")).unwrap();
        let err = dispose_snapshot(&store, &local(&base.path().join("dir-link")), &[]).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read(other.join("state")).unwrap(), b"precious");
        assert!(dir.join("_metadata").is_file() && dir.join("state").is_file());
        let disposed = dispose_snapshot(&store, &local(&dir), &[]).unwrap();
        assert!(disposed.dir_removed && !dir.exists());
    }

    #[test]
    fn shared_references_count_only_inside_a_job_directory() {
        let store = crate::storage::Stores::default();
        let base = tempfile::tempdir().unwrap();
        // A "savepoint" in a directory of the user's, pointing at ../shared/: refused at load.
        let sp = base.path().join("savepoints").join("sp");
        fs::create_dir_all(&sp).unwrap();
        fs::create_dir_all(base.path().join("savepoints/shared")).unwrap();
        fs::write(base.path().join("savepoints/shared/a"), b"the user's").unwrap();
        fs::write(sp.join("_metadata"), meta_referencing(1, &["../shared/a"])).unwrap();
        assert!(matches!(load_snapshot(&store, &local(&sp)), Err(LoadError::SharedOutsideJob(_))));
        assert!(dispose_snapshot(&store, &local(&sp), &[]).is_err());
        assert!(base.path().join("savepoints/shared/a").exists());
    }

    #[test]
    fn disposing_incremental_checkpoints_deletes_shared_files_with_their_last_reference() {
        let base = tempfile::tempdir().unwrap();
        let s = FsCheckpointStorage::new(base.path().to_path_buf());
        let job = JobId([5; 16]);
        let job_dir = s.initialize(job).unwrap();
        let shared = path(&job_dir).join("shared");
        for name in ["a", "b"] {
            fs::write(shared.join(name), b"sst").unwrap();
        }
        let one = s.checkpoint_location(job, 1).unwrap();
        s.write_metadata(&one, &meta_referencing(1, &["../shared/a", "../shared/b"])).unwrap();
        let two = s.checkpoint_location(job, 2).unwrap();
        s.write_metadata(&two, &meta_referencing(2, &["../shared/b"])).unwrap();
        dispose_snapshot(s.store(), &one, &[]).unwrap();
        assert!(!shared.join("a").exists(), "only chk-1 referenced a");
        assert!(shared.join("b").exists(), "chk-2 still references b");
        dispose_snapshot(s.store(), &two, &[]).unwrap();
        assert!(!shared.join("b").exists(), "the last reference went");
    }

    /// Storage under `s3://bucket/base`, its buckets in memory.
    fn in_memory_s3() -> FsCheckpointStorage {
        let base = SnapshotUri::parse("s3://bucket/base").unwrap();
        FsCheckpointStorage::new(base).with_stores(crate::storage::Stores::with_buckets_in_memory())
    }

    /// Every object under `prefix`, as `a/b` keys relative to it.
    fn objects(store: &dyn SnapshotStore, prefix: &SnapshotUri) -> Vec<String> {
        let mut found = Vec::new();
        for e in store.list(prefix).unwrap() {
            match e.kind {
                EntryKind::Dir => {
                    found.extend(objects(store, &prefix.join(&e.name)).into_iter().map(|o| format!("{}/{o}", e.name)))
                }
                _ => found.push(e.name),
            }
        }
        found.sort();
        found
    }

    #[test]
    fn on_object_storage_incremental_checkpoints_dispose_exactly_their_objects() {
        let s = in_memory_s3();
        let store = s.store();
        let job = JobId([5; 16]);
        let job_dir = s.initialize(job).unwrap();
        for name in ["a", "b"] {
            store.write_new(&job_dir.join("shared").join(name), b"sst").unwrap();
        }
        let one = s.checkpoint_location(job, 1).unwrap();
        s.write_metadata(&one, &meta_referencing(1, &["../shared/a", "../shared/b"])).unwrap();
        let two = s.checkpoint_location(job, 2).unwrap();
        store.write_new(&two.join("own"), b"x").unwrap();
        s.write_metadata(&two, &meta_referencing(2, &["../shared/b", "own"])).unwrap();
        // A prefix with objects that is not a snapshot: refused, nothing deleted.
        store.write_new(&job_dir.join("notes").join("readme"), b"mine").unwrap();
        let before = objects(store, &job_dir);
        assert!(dispose_snapshot(store, &job_dir.join("notes"), &[]).is_err());
        assert!(dispose_snapshot(store, &job_dir, &[]).is_err());
        assert_eq!(objects(store, &job_dir), before);
        assert_eq!(latest_checkpoint_in(store, &job_dir).map(|(id, _)| id), Some(2));

        dispose_snapshot(store, &one, &[]).unwrap();
        assert_eq!(objects(store, &job_dir), ["chk-2/_metadata", "chk-2/own", "notes/readme", "shared/b"]);
        dispose_snapshot(store, &two.join("_metadata"), &[]).unwrap();
        assert_eq!(objects(store, &job_dir), ["notes/readme"], "the last reference to b went with chk-2");
    }

    #[test]
    fn staging_a_snapshot_from_object_storage_checks_every_file() {
        use crate::storage::progress::RestoreProgress;
        let s = in_memory_s3();
        let store = s.store();
        let loc = s.checkpoint_location(JobId([6; 16]), 1).unwrap();
        let body = b"keyed state".to_vec();
        store.write_new(&loc.join("state"), &body).unwrap();
        let mut m = metadata::decode(&meta_referencing(1, &["state"]), "m").unwrap();
        let file = &mut m.operators[0].subtasks[0].keyed.as_mut().unwrap().file;
        (file.size, file.crc32c) = (body.len() as u64, Some(crc32c::crc32c(&body)));
        s.write_metadata(&loc, &metadata::encode(&m).unwrap()).unwrap();

        let snapshot = load_snapshot(store, &loc).unwrap();
        assert_eq!(snapshot.local_path("state"), None, "nothing is local before staging");
        let progress = RestoreProgress::default();
        snapshot.stage(store, &progress).unwrap();
        assert_eq!(fs::read(snapshot.local_path("state").unwrap()).unwrap(), body);
        assert_eq!(progress.status(), None, "the download is over");

        // The object changed behind the snapshot's back (same size, other bytes).
        store.delete(&loc.join("state")).unwrap();
        store.write_new(&loc.join("state"), b"keyed STATE").unwrap();
        let damaged = load_snapshot(store, &loc).unwrap();
        let err = damaged.stage(store, &progress).unwrap_err().to_string();
        assert!(err.contains(&loc.join("state").to_string()) && err.contains("checksum mismatch"), "{err}");
    }
}

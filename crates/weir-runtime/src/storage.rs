//! Checkpoint storage: where snapshot files go and how `_metadata` is made atomic.
//!
//! Layout of the filesystem storage (Flink's):
//! `<execution.checkpointing.dir>/<job-id>/{chk-<n>/, shared/, taskowned/}`. State files are
//! written into the snapshot's directory and referenced by relative path; `_metadata` is written
//! last through a temporary file, fsync, rename and directory fsync, so a directory without a valid
//! `_metadata` is never a snapshot.

use std::collections::HashSet;
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use weir_core::metadata::{self, FileScope, MetadataError, SnapshotMetadata, METADATA_FILE_NAME};
use weir_core::{CheckpointId, JobId};

pub use weir_state::StateOutput;

/// Where checkpoints live. The filesystem is the first implementation; object stores come later.
pub trait CheckpointStorage: Send + Sync + Debug {
    /// Creates (if needed) the job's directory with `shared/` and `taskowned/`.
    fn initialize(&self, job: JobId) -> io::Result<PathBuf>;
    /// Creates the directory of checkpoint `id` and returns it.
    fn checkpoint_location(&self, job: JobId, id: CheckpointId) -> io::Result<PathBuf>;
    /// Opens a new state file `name` in `location`.
    fn create_state_file(&self, location: &Path, name: &str) -> io::Result<Box<dyn StateOutput>>;
    /// Atomically writes `_metadata` into `location`.
    fn write_metadata(&self, location: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Deletes a completed snapshot: `_metadata` first, so a half-deleted snapshot is never
    /// mistaken for one, then the files of its directory that it references, except `keep`
    /// (files later snapshots still reference), then the directory if that left it empty.
    /// Nothing it does not reference is touched.
    fn discard(&self, snapshot: &LoadedSnapshot, keep: &HashSet<PathBuf>) -> io::Result<()>;
    /// Deletes the directory of a snapshot this job started and that never completed (no
    /// `_metadata`): everything in it is the job's own partial output.
    fn discard_incomplete(&self, location: &Path) -> io::Result<()>;

    /// Creates a new savepoint directory `savepoint-<first 6 hex of the job id>-<12 hex>` in `target`.
    fn savepoint_location(&self, target: &Path, job: JobId) -> io::Result<PathBuf>;
}

/// Who may read what the filesystem storage creates: by default only the job's user (state
/// holds the job's data), `weir.checkpointing.private-files: false` leaves it to the umask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileModes {
    pub file: u32,
    pub dir: u32,
}

impl FileModes {
    pub const PRIVATE: FileModes = FileModes { file: 0o600, dir: 0o700 };
    pub const UMASK: FileModes = FileModes { file: 0o666, dir: 0o777 };

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().recursive(true).mode(self.dir).create(dir)
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().mode(self.dir).create(dir)
    }

    fn create_new(&self, path: &Path) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new().write(true).create_new(true).mode(self.file).open(path)
    }
}

/// Marks a savepoint directory being written: the writing process holds a lock on it until
/// `_metadata` is in place, so a directory with this file, no `_metadata` and no lock holder is
/// what a killed process left, and Weir owns it.
const IN_PROGRESS_MARKER: &str = "_inprogress";

/// A savepoint directory being written, and the lock that says so.
#[derive(Debug)]
pub struct SavepointInProgress {
    pub dir: PathBuf,
    lock: File,
}

impl SavepointInProgress {
    /// The savepoint is complete (or abandoned): the marker goes and the lock is released.
    pub fn finish(self) {
        let _ = fs::remove_file(self.dir.join(IN_PROGRESS_MARKER));
        drop(self.lock);
    }
}

/// Deletes the savepoint directories under `target` that a killed process left half-written:
/// marked in progress, without `_metadata`, and with nobody holding the marker's lock. Anything
/// else (complete savepoints, directories Weir did not mark, those of live writers) stays.
pub fn sweep_partial_savepoints(target: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(target) else {
        return Vec::new();
    };
    let mut deleted = Vec::new();
    for dir in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let named = dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("savepoint-"));
        let marker = dir.join(IN_PROGRESS_MARKER);
        if !named || fs::symlink_metadata(&dir).map_or(true, |m| !m.is_dir()) || !marker.is_file() {
            continue;
        }
        let Ok(lock) = File::open(&marker) else { continue };
        if lock.try_lock().is_err() {
            continue; // a live process is writing it
        }
        if dir.join(METADATA_FILE_NAME).exists() {
            let _ = fs::remove_file(&marker); // complete; the writer died before tidying up
            continue;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(
                    "deleted the partial savepoint {} left by a process that ended while writing it",
                    dir.display()
                );
                deleted.push(dir);
            }
            Err(e) => tracing::warn!("could not delete the partial savepoint {}: {e}", dir.display()),
        }
    }
    deleted
}

/// Creates `savepoint-<job id prefix>-<12 random hex>` under `target` (Flink's naming), retrying on
/// the unlikely collision, marked and locked as in progress. Partial savepoints that killed
/// processes left in `target` are deleted first.
pub fn create_savepoint_dir(target: &Path, job: JobId, modes: FileModes) -> io::Result<SavepointInProgress> {
    modes.create_dir_all(target)?;
    sweep_partial_savepoints(target);
    let prefix = &job.to_hex()[..6];
    let mut last = None;
    for _ in 0..10 {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let dir = target.join(format!("savepoint-{prefix}-{}", &random[..12]));
        match modes.create_dir(&dir) {
            Ok(()) => {
                let dir = fs::canonicalize(&dir).unwrap_or(dir);
                let lock = modes.create_new(&dir.join(IN_PROGRESS_MARKER))?;
                lock.try_lock().map_err(|e| io::Error::other(format!("cannot lock {}: {e}", dir.display())))?;
                return Ok(SavepointInProgress { dir, lock });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::other(format!("Failed to create savepoint directory at {}", target.display()))))
}

#[derive(Debug, thiserror::Error)]
pub enum DisposeError {
    #[error("'{0}' is not a savepoint: {why}. Only a directory with a valid _metadata (or that file) can be disposed.", why = .1.to_string().trim_end_matches('.'))]
    NotASnapshot(PathBuf, LoadError),
    #[error("'{0}' is a symbolic link; dispose the snapshot at the path it points to, so the snapshot deleted is the one named")]
    Symlink(PathBuf),
    #[error("'{path}' belongs to job {job_id}, which is still running and owns it (a retained checkpoint, or a snapshot it restored in CLAIM mode). Cancel or stop the job first.")]
    OwnedByRunningJob { path: PathBuf, job_id: String },
    #[error("Failed to dispose the savepoint '{0}': {1}")]
    Io(PathBuf, io::Error),
}

/// What a disposal deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposed {
    pub dir: PathBuf,
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
pub fn dispose_snapshot(pointer: &Path, owned: &[(String, PathBuf)]) -> Result<Disposed, DisposeError> {
    let not_a_snapshot = |e| DisposeError::NotASnapshot(pointer.to_path_buf(), e);
    if fs::symlink_metadata(pointer).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(DisposeError::Symlink(pointer.to_path_buf()));
    }
    let loaded = load_snapshot(pointer).map_err(not_a_snapshot)?;
    let dir = loaded.dir.clone();
    for (job_id, job_dir) in owned {
        let job_dir = fs::canonicalize(job_dir).unwrap_or_else(|_| job_dir.clone());
        if dir.starts_with(&job_dir) {
            return Err(DisposeError::OwnedByRunningJob { path: dir, job_id: job_id.clone() });
        }
    }
    let io = |e| DisposeError::Io(dir.clone(), e);
    let shared: Vec<PathBuf> =
        loaded.files().filter(|(_, scope)| *scope == FileScope::JobShared).map(|f| f.0).collect();
    discard_snapshot(&loaded, &HashSet::new()).map_err(io)?;
    if !shared.is_empty() {
        let still_used: HashSet<PathBuf> =
            sibling_snapshots(&dir).iter().flat_map(|s| s.files().map(|f| f.0).collect::<Vec<_>>()).collect();
        for file in shared.iter().filter(|f| !still_used.contains(*f)) {
            remove_if_present(file).map_err(io)?;
        }
    }
    Ok(Disposed { dir_removed: !dir.exists(), dir })
}

/// The snapshots in the same directory as `dir` (a job's other retained checkpoints). One that
/// cannot be read is skipped with a warning: it could not be restored either.
pub fn sibling_snapshots(dir: &Path) -> Vec<LoadedSnapshot> {
    let Some(parent) = dir.parent() else {
        return Vec::new();
    };
    let entries = match fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("could not list {} for snapshots beside {}: {e}", parent.display(), dir.display());
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        if path == dir || !path.join(METADATA_FILE_NAME).is_file() {
            continue;
        }
        match load_snapshot(&path) {
            Ok(s) => out.push(s),
            Err(e) => tracing::warn!("snapshot {} beside {} is unreadable: {e}", path.display(), dir.display()),
        }
    }
    out
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// See [`CheckpointStorage::discard`].
pub fn discard_snapshot(snapshot: &LoadedSnapshot, keep: &HashSet<PathBuf>) -> io::Result<()> {
    remove_if_present(&snapshot.dir.join(METADATA_FILE_NAME))?;
    for (file, scope) in snapshot.files() {
        if scope == FileScope::Snapshot && !keep.contains(&file) {
            remove_if_present(&file)?;
        }
    }
    match fs::remove_dir(&snapshot.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) if fs::read_dir(&snapshot.dir).is_ok_and(|mut d| d.next().is_some()) => {
            if keep.is_empty() {
                tracing::info!(
                    "kept the directory {}: it holds files the snapshot does not reference",
                    snapshot.dir.display()
                );
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone)]
pub struct FsCheckpointStorage {
    base: PathBuf,
    modes: FileModes,
    /// Savepoints being written, by directory (their locks are held until they complete or go).
    in_progress: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, SavepointInProgress>>>,
}

impl FsCheckpointStorage {
    /// Storage under `base`; files and directories it creates are private to the user.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        FsCheckpointStorage { base: base.into(), modes: FileModes::PRIVATE, in_progress: Default::default() }
    }

    pub fn with_modes(self, modes: FileModes) -> Self {
        FsCheckpointStorage { modes, ..self }
    }

    /// A savepoint at `location` is complete or abandoned: its in-progress mark goes.
    fn release(&self, location: &Path) {
        if let Some(savepoint) = self.in_progress.lock().unwrap_or_else(|p| p.into_inner()).remove(location) {
            savepoint.finish();
        }
    }

    /// `<base>/<job id>`, absolute and without symbolic links once the base exists, so the paths
    /// of one job's files compare equal however the base was spelled.
    pub fn job_dir(&self, job: JobId) -> PathBuf {
        fs::canonicalize(&self.base).unwrap_or_else(|_| self.base.clone()).join(job.to_hex())
    }
}

struct FsStateOutput {
    file: io::BufWriter<File>,
}

impl Write for FsStateOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl StateOutput for FsStateOutput {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

impl CheckpointStorage for FsCheckpointStorage {
    fn initialize(&self, job: JobId) -> io::Result<PathBuf> {
        self.modes.create_dir_all(&self.base)?;
        let dir = self.job_dir(job);
        self.modes.create_dir_all(&dir.join("shared"))?;
        self.modes.create_dir_all(&dir.join("taskowned"))?;
        Ok(dir)
    }

    fn checkpoint_location(&self, job: JobId, id: CheckpointId) -> io::Result<PathBuf> {
        let dir = self.job_dir(job).join(format!("chk-{id}"));
        self.modes.create_dir_all(&dir)?;
        Ok(dir)
    }

    fn savepoint_location(&self, target: &Path, job: JobId) -> io::Result<PathBuf> {
        let savepoint = create_savepoint_dir(target, job, self.modes)?;
        let dir = savepoint.dir.clone();
        self.in_progress.lock().unwrap_or_else(|p| p.into_inner()).insert(dir.clone(), savepoint);
        Ok(dir)
    }

    fn create_state_file(&self, location: &Path, name: &str) -> io::Result<Box<dyn StateOutput>> {
        let file = self.modes.create_new(&location.join(name))?;
        Ok(Box::new(FsStateOutput { file: io::BufWriter::with_capacity(1 << 20, file) }))
    }

    fn write_metadata(&self, location: &Path, bytes: &[u8]) -> io::Result<()> {
        write_atomically(&location.join(METADATA_FILE_NAME), bytes, self.modes)?;
        self.release(location);
        Ok(())
    }

    fn discard(&self, snapshot: &LoadedSnapshot, keep: &HashSet<PathBuf>) -> io::Result<()> {
        discard_snapshot(snapshot, keep)
    }

    fn discard_incomplete(&self, location: &Path) -> io::Result<()> {
        self.release(location);
        match fs::remove_dir_all(location) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Writes `path` so that it is either absent or complete: temp file, fsync, rename, fsync dir.
pub fn write_atomically(path: &Path, bytes: &[u8], modes: FileModes) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.inprogress"));
    remove_if_present(&tmp)?;
    {
        let mut f = modes.create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

pub use weir_state::snapshot::normalize_path as normalize;

/// Deletes a file no snapshot references any more, and its directory when that is left empty and
/// is not a job's `shared/` directory (a CLAIM-restored snapshot directory whose last kept file
/// this was).
pub fn delete_file_and_empty_dir(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("could not delete {}: {e}", path.display());
        }
    }
    if let Some(dir) = path.parent() {
        if dir.file_name().is_some_and(|n| n != "shared") && !dir.join(METADATA_FILE_NAME).exists() {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("Cannot find checkpoint or savepoint file/directory '{0}'. Check the path given to -s.")]
    NotFound(PathBuf),
    #[error("Cannot find meta data file '_metadata' in directory '{0}'. A checkpoint or savepoint directory holds a _metadata file; this directory does not (it may be an incomplete snapshot, or not a snapshot at all).")]
    NoMetadata(PathBuf),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("cannot read '{path}': {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("'{0}' is not a snapshot's _metadata file: point at a checkpoint or savepoint directory, or at the _metadata file in it")]
    NotMetadataFile(PathBuf),
    #[error("'{0}' is a symbolic link: a snapshot's _metadata must be a regular file in the snapshot's directory; point at the directory the link leads to")]
    MetadataSymlink(PathBuf),
    #[error("'{0}' references shared files (../shared/...), but its directory is not a checkpoint inside a job's directory (<checkpoint dir>/<32-hex job id>/chk-<n>); only incremental checkpoints reference shared files, so restore it from where its job wrote it (the job directory may move as a whole)")]
    SharedOutsideJob(PathBuf),
}

/// A snapshot loaded from disk: its metadata and the directory relative paths resolve against.
#[derive(Debug, Clone)]
pub struct LoadedSnapshot {
    pub metadata: SnapshotMetadata,
    pub dir: PathBuf,
}

impl LoadedSnapshot {
    /// The path of a state file referenced by this snapshot (references are relative and stay in
    /// the snapshot's directory or its job's `shared/`: `load_snapshot` checked them).
    pub fn resolve(&self, file: &str) -> PathBuf {
        normalize(&self.dir.join(file))
    }

    /// Every file the snapshot references, resolved, with where it lives.
    pub fn files(&self) -> impl Iterator<Item = (PathBuf, FileScope)> + '_ {
        self.metadata
            .file_references()
            .filter_map(|(_, _, f)| metadata::file_scope(&f.path).map(|scope| (self.resolve(&f.path), scope)))
    }
}

/// Loads a snapshot from its directory or its `_metadata` file.
pub fn load_snapshot(pointer: &Path) -> Result<LoadedSnapshot, LoadError> {
    if !pointer.exists() {
        return Err(LoadError::NotFound(pointer.to_path_buf()));
    }
    let (dir, file) = if pointer.is_dir() {
        let file = pointer.join(METADATA_FILE_NAME);
        if !file.is_file() {
            return Err(LoadError::NoMetadata(pointer.to_path_buf()));
        }
        (pointer.to_path_buf(), file)
    } else if pointer.file_name().is_some_and(|n| n == METADATA_FILE_NAME) {
        (pointer.parent().unwrap_or(Path::new(".")).to_path_buf(), pointer.to_path_buf())
    } else {
        return Err(LoadError::NotMetadataFile(pointer.to_path_buf()));
    };
    // A linked _metadata would make the link's directory stand for another snapshot's files.
    if fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(LoadError::MetadataSymlink(file));
    }
    let bytes = fs::read(&file).map_err(|error| LoadError::Io { path: file.clone(), error })?;
    let metadata = metadata::decode(&bytes, &file.display().to_string())?;
    let dir = fs::canonicalize(&dir).unwrap_or(dir);
    let snapshot = LoadedSnapshot { metadata, dir };
    // `../shared/` is a job's shared directory only when the snapshot sits in a job directory:
    // anywhere else it would name (and a CLAIM or disposal could delete) files of nobody's job.
    let in_job_dir = snapshot
        .dir
        .parent()
        .and_then(|job| job.file_name())
        .and_then(|name| name.to_str())
        .is_some_and(|name| JobId::parse(name).is_some());
    if !in_job_dir && snapshot.files().any(|(_, scope)| scope == FileScope::JobShared) {
        return Err(LoadError::SharedOutsideJob(file));
    }
    Ok(snapshot)
}

/// The newest valid checkpoint `chk-<n>` under a job directory. Directories without a `_metadata`
/// that verifies are not checkpoints and are skipped.
pub fn latest_checkpoint(job_dir: &Path) -> Option<(CheckpointId, PathBuf)> {
    let mut found: Vec<(CheckpointId, PathBuf)> = fs::read_dir(job_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id: CheckpointId = name.strip_prefix("chk-")?.parse().ok()?;
            Some((id, e.path()))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().find(|(_, dir)| load_snapshot(dir).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::metadata::SnapshotKind;

    fn meta(id: u64) -> Vec<u8> {
        metadata::encode(&SnapshotMetadata {
            checkpoint_id: id,
            job_id: "00".repeat(16),
            kind: SnapshotKind::Checkpoint,
            timestamp_ms: 0,
            operators: vec![],
        })
        .unwrap()
    }

    #[test]
    fn layout_and_latest_valid_checkpoint() {
        let base = tempfile::tempdir().unwrap();
        let s = FsCheckpointStorage::new(base.path());
        let job = JobId([7; 16]);
        let dir = s.initialize(job).unwrap();
        assert!(dir.join("shared").is_dir() && dir.join("taskowned").is_dir());
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
        fs::write(loc5.join("_metadata"), bad).unwrap();
        let (id, path) = latest_checkpoint(&dir).unwrap();
        assert_eq!(id, 3);
        assert_eq!(path, dir.join("chk-3"));
        let err = load_snapshot(&loc5).unwrap_err().to_string();
        assert!(err.contains(&loc5.join("_metadata").display().to_string()) && err.contains("corrupted"), "{err}");
        let err = load_snapshot(&dir.join("chk-4")).unwrap_err().to_string();
        assert!(err.starts_with("Cannot find meta data file '_metadata' in directory"), "{err}");
        assert!(matches!(load_snapshot(&dir.join("nope")), Err(LoadError::NotFound(_))));
        // The _metadata file itself is a valid pointer too.
        assert_eq!(load_snapshot(&dir.join("chk-2").join("_metadata")).unwrap().metadata.checkpoint_id, 2);
    }

    #[test]
    fn savepoint_directories_are_named_like_flinks() {
        let base = tempfile::tempdir().unwrap();
        let job = JobId::parse("cca7bc1061d61cf15238e92312c2fc20").unwrap();
        let a = create_savepoint_dir(&base.path().join("sp"), job, FileModes::PRIVATE).unwrap().dir;
        let b = create_savepoint_dir(&base.path().join("sp"), job, FileModes::PRIVATE).unwrap().dir;
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("savepoint-cca7bc-") && name.len() == "savepoint-cca7bc-".len() + 12, "{name}");
        assert!(name["savepoint-cca7bc-".len()..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn dispose_refuses_non_snapshots_and_running_jobs_checkpoints() {
        let base = tempfile::tempdir().unwrap();
        let s = FsCheckpointStorage::new(base.path());
        let job = JobId([3; 16]);
        let loc = s.checkpoint_location(job, 1).unwrap();
        s.write_metadata(&loc, &meta(1)).unwrap();
        let err = dispose_snapshot(base.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("is not a savepoint"), "{err}");
        let running = [(job.to_hex(), s.job_dir(job))];
        let err = dispose_snapshot(&loc, &running).unwrap_err().to_string();
        assert!(err.contains("still running") && err.contains(&job.to_hex()), "{err}");
        assert!(loc.join("_metadata").exists());
        dispose_snapshot(&loc.join("_metadata"), &[]).unwrap();
        assert!(!loc.exists());
    }

    /// Metadata of checkpoint `id` whose one operator references `files` (keyed state handles).
    fn meta_referencing(id: u64, files: &[&str]) -> Vec<u8> {
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
        let s = FsCheckpointStorage::new(base.path());
        let job = JobId([1; 16]);
        let loc = s.checkpoint_location(job, 1).unwrap();
        s.write_metadata(&loc, &meta_referencing(1, &["state", "kept"])).unwrap();
        for name in ["state", "kept", "notes.txt"] {
            fs::write(loc.join(name), b"x").unwrap();
        }
        let snapshot = load_snapshot(&loc).unwrap();
        let keep: HashSet<PathBuf> = [snapshot.resolve("kept")].into();
        s.discard(&snapshot, &keep).unwrap();
        let mut left: Vec<_> = fs::read_dir(&loc).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["kept", "notes.txt"], "_metadata and the referenced file go; the rest stays");
        fs::remove_file(loc.join("notes.txt")).unwrap();
        s.discard(&snapshot, &HashSet::new()).unwrap();
        assert!(!loc.exists(), "an emptied directory goes");
        s.discard(&snapshot, &HashSet::new()).unwrap();
    }

    #[test]
    fn dispose_accepts_only_a_snapshot_directory_or_its_own_metadata() {
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
        let err = dispose_snapshot(&other.join("backup.meta"), &[]).unwrap_err().to_string();
        assert!(err.contains("is not a snapshot's _metadata file"), "{err}");
        let linked = base.path().join("linked");
        fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(dir.join("_metadata"), linked.join("_metadata")).unwrap();
        let err = dispose_snapshot(&linked, &[]).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        std::os::unix::fs::symlink(&dir, base.path().join("dir-link")).unwrap();
        let err = dispose_snapshot(&base.path().join("dir-link"), &[]).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read(other.join("state")).unwrap(), b"precious");
        assert!(dir.join("_metadata").is_file() && dir.join("state").is_file());
        let disposed = dispose_snapshot(&dir, &[]).unwrap();
        assert!(disposed.dir_removed && !dir.exists());
    }

    #[test]
    fn shared_references_count_only_inside_a_job_directory() {
        let base = tempfile::tempdir().unwrap();
        // A "savepoint" in a directory of the user's, pointing at ../shared/: refused at load.
        let sp = base.path().join("savepoints").join("sp");
        fs::create_dir_all(&sp).unwrap();
        fs::create_dir_all(base.path().join("savepoints/shared")).unwrap();
        fs::write(base.path().join("savepoints/shared/a"), b"the user's").unwrap();
        fs::write(sp.join("_metadata"), meta_referencing(1, &["../shared/a"])).unwrap();
        assert!(matches!(load_snapshot(&sp), Err(LoadError::SharedOutsideJob(_))));
        assert!(dispose_snapshot(&sp, &[]).is_err());
        assert!(base.path().join("savepoints/shared/a").exists());
    }

    #[test]
    fn disposing_incremental_checkpoints_deletes_shared_files_with_their_last_reference() {
        let base = tempfile::tempdir().unwrap();
        let s = FsCheckpointStorage::new(base.path());
        let job = JobId([5; 16]);
        let job_dir = s.initialize(job).unwrap();
        for name in ["a", "b"] {
            fs::write(job_dir.join("shared").join(name), b"sst").unwrap();
        }
        let one = s.checkpoint_location(job, 1).unwrap();
        s.write_metadata(&one, &meta_referencing(1, &["../shared/a", "../shared/b"])).unwrap();
        let two = s.checkpoint_location(job, 2).unwrap();
        s.write_metadata(&two, &meta_referencing(2, &["../shared/b"])).unwrap();
        dispose_snapshot(&one, &[]).unwrap();
        assert!(!job_dir.join("shared/a").exists(), "only chk-1 referenced a");
        assert!(job_dir.join("shared/b").exists(), "chk-2 still references b");
        dispose_snapshot(&two, &[]).unwrap();
        assert!(!job_dir.join("shared/b").exists(), "the last reference went");
    }

    #[test]
    fn partial_savepoints_of_ended_writers_are_swept_and_nothing_else() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("sp");
        let job = JobId([9; 16]);
        let live = create_savepoint_dir(&target, job, FileModes::PRIVATE).unwrap();
        // What a writer killed mid-savepoint leaves: the marker, no lock holder, no _metadata.
        let killed = target.join("savepoint-090909-000000000001");
        fs::create_dir(&killed).unwrap();
        fs::write(killed.join(IN_PROGRESS_MARKER), b"").unwrap();
        fs::write(killed.join("keyed-1-0"), b"half").unwrap();
        // Complete, but its writer died before removing the marker.
        let complete = target.join("savepoint-090909-000000000002");
        fs::create_dir(&complete).unwrap();
        fs::write(complete.join(IN_PROGRESS_MARKER), b"").unwrap();
        fs::write(complete.join(METADATA_FILE_NAME), meta(1)).unwrap();
        // Not marked by Weir: never touched.
        let unmarked = target.join("savepoint-090909-000000000003");
        fs::create_dir(&unmarked).unwrap();
        assert_eq!(sweep_partial_savepoints(&target), vec![killed.clone()]);
        assert!(live.dir.join(IN_PROGRESS_MARKER).exists(), "a live writer's savepoint stays");
        assert!(!complete.join(IN_PROGRESS_MARKER).exists() && complete.join(METADATA_FILE_NAME).exists());
        assert!(unmarked.exists());
        live.finish();
    }
}

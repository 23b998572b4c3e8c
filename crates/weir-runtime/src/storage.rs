//! Checkpoint storage: where snapshot files go and how `_metadata` is made atomic.
//!
//! Layout of the filesystem storage (Flink's):
//! `<execution.checkpointing.dir>/<job-id>/{chk-<n>/, shared/, taskowned/}`. State files are
//! written into the snapshot's directory and referenced by relative path; `_metadata` is written
//! last through a temporary file, fsync, rename and directory fsync, so a directory without a valid
//! `_metadata` is never a snapshot.

use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use weir_core::metadata::{self, MetadataError, SnapshotMetadata, METADATA_FILE_NAME};
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
    /// Deletes a snapshot: `_metadata` first, so a half-deleted snapshot is never mistaken for one.
    fn discard(&self, location: &Path) -> io::Result<()>;

    /// Creates a new savepoint directory `savepoint-<first 6 hex of the job id>-<12 hex>` in `target`.
    fn savepoint_location(&self, target: &Path, job: JobId) -> io::Result<PathBuf> {
        create_savepoint_dir(target, job)
    }
}

/// Creates `savepoint-<job id prefix>-<12 random hex>` under `target` (Flink's naming), retrying on
/// the unlikely collision.
pub fn create_savepoint_dir(target: &Path, job: JobId) -> io::Result<PathBuf> {
    fs::create_dir_all(target)?;
    let prefix = &job.to_hex()[..6];
    let mut last = None;
    for _ in 0..10 {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let dir = target.join(format!("savepoint-{prefix}-{}", &random[..12]));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(fs::canonicalize(&dir).unwrap_or(dir)),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::other(format!("Failed to create savepoint directory at {}", target.display()))))
}

#[derive(Debug, thiserror::Error)]
pub enum DisposeError {
    #[error("'{0}' is not a savepoint: {1}. Only a directory with a valid _metadata (or that file) can be disposed.")]
    NotASnapshot(PathBuf, LoadError),
    #[error("'{path}' is a retained checkpoint of job {job_id}, which is still running; it owns that checkpoint. Cancel or stop the job first.")]
    OwnedByRunningJob { path: PathBuf, job_id: String },
    #[error("Failed to dispose the savepoint '{0}': {1}")]
    Io(PathBuf, io::Error),
}

/// Disposes a savepoint (or retained checkpoint): `_metadata` first, so it is no longer addressable
/// even if deleting the data fails half-way; then the rest of its directory.
/// `running_job_dirs` are the checkpoint directories of running jobs, which own their checkpoints.
pub fn dispose_snapshot(pointer: &Path, running_job_dirs: &[(String, PathBuf)]) -> Result<PathBuf, DisposeError> {
    let loaded = load_snapshot(pointer).map_err(|e| DisposeError::NotASnapshot(pointer.to_path_buf(), e))?;
    let dir = loaded.dir.clone();
    for (job_id, job_dir) in running_job_dirs {
        let job_dir = fs::canonicalize(job_dir).unwrap_or_else(|_| job_dir.clone());
        if dir.starts_with(&job_dir) {
            return Err(DisposeError::OwnedByRunningJob { path: dir, job_id: job_id.clone() });
        }
    }
    discard_snapshot_dir(&dir).map_err(|e| DisposeError::Io(dir.clone(), e))?;
    Ok(dir)
}

#[derive(Debug, Clone)]
pub struct FsCheckpointStorage {
    base: PathBuf,
}

impl FsCheckpointStorage {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        FsCheckpointStorage { base: base.into() }
    }

    pub fn job_dir(&self, job: JobId) -> PathBuf {
        self.base.join(job.to_hex())
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
        let dir = self.job_dir(job);
        fs::create_dir_all(dir.join("shared"))?;
        fs::create_dir_all(dir.join("taskowned"))?;
        Ok(dir)
    }

    fn checkpoint_location(&self, job: JobId, id: CheckpointId) -> io::Result<PathBuf> {
        let dir = self.job_dir(job).join(format!("chk-{id}"));
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn create_state_file(&self, location: &Path, name: &str) -> io::Result<Box<dyn StateOutput>> {
        let file = fs::OpenOptions::new().write(true).create_new(true).open(location.join(name))?;
        Ok(Box::new(FsStateOutput { file: io::BufWriter::with_capacity(1 << 20, file) }))
    }

    fn write_metadata(&self, location: &Path, bytes: &[u8]) -> io::Result<()> {
        write_atomically(&location.join(METADATA_FILE_NAME), bytes)
    }

    fn discard(&self, location: &Path) -> io::Result<()> {
        discard_snapshot_dir(location)
    }
}

/// Writes `path` so that it is either absent or complete: temp file, fsync, rename, fsync dir.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.inprogress"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Deletes `_metadata` first, then the rest of the directory.
pub fn discard_snapshot_dir(location: &Path) -> io::Result<()> {
    match fs::remove_file(location.join(METADATA_FILE_NAME)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match fs::remove_dir_all(location) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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

/// Deletes a snapshot directory's `_metadata` first, then every other file but `keep` (files later
/// snapshots still reference); the directory goes with its last kept file.
pub fn discard_snapshot_dir_except(location: &Path, keep: &std::collections::HashSet<PathBuf>) -> io::Result<()> {
    match fs::remove_file(location.join(METADATA_FILE_NAME)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for entry in fs::read_dir(location)? {
        let path = entry?.path();
        if keep.contains(&path) {
            continue;
        }
        if path.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("Cannot find checkpoint or savepoint file/directory '{0}'. Check the path given to -s.")]
    NotFound(PathBuf),
    #[error("Cannot find meta data file '_metadata' in directory '{0}'. A checkpoint or savepoint directory holds a _metadata file; this directory does not (it may be an incomplete snapshot, or not a snapshot at all).")]
    NoMetadata(PathBuf),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("cannot read '{path}': {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A snapshot loaded from disk: its metadata and the directory relative paths resolve against.
#[derive(Debug, Clone)]
pub struct LoadedSnapshot {
    pub metadata: SnapshotMetadata,
    pub dir: PathBuf,
}

impl LoadedSnapshot {
    /// The path of a state file referenced by this snapshot.
    pub fn resolve(&self, file: &str) -> PathBuf {
        let p = Path::new(file);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
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
    } else {
        (pointer.parent().unwrap_or(Path::new(".")).to_path_buf(), pointer.to_path_buf())
    };
    let bytes = fs::read(&file).map_err(|source| LoadError::Io { path: file.clone(), source })?;
    let metadata = metadata::decode(&bytes, &file.display().to_string())?;
    let dir = fs::canonicalize(&dir).unwrap_or(dir);
    Ok(LoadedSnapshot { metadata, dir })
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
        let a = create_savepoint_dir(&base.path().join("sp"), job).unwrap();
        let b = create_savepoint_dir(&base.path().join("sp"), job).unwrap();
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

    #[test]
    fn discard_removes_metadata_and_directory() {
        let base = tempfile::tempdir().unwrap();
        let s = FsCheckpointStorage::new(base.path());
        let job = JobId([1; 16]);
        let loc = s.checkpoint_location(job, 1).unwrap();
        s.write_metadata(&loc, &meta(1)).unwrap();
        let mut f = s.create_state_file(&loc, "state").unwrap();
        f.write_all(b"x").unwrap();
        f.finish().unwrap();
        s.discard(&loc).unwrap();
        assert!(!loc.exists());
        s.discard(&loc).unwrap();
    }
}

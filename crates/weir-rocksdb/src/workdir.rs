//! Working directories of RocksDB instances under `state.backend.rocksdb.localdir`.
//!
//! An instance deletes its directory when its subtask ends, but a killed process cannot: its
//! directories would pile up, each as large as the state. So each directory `<name>` has a lock
//! file `<name>.lock` beside it that its instance keeps locked, and opening an instance first
//! deletes the directories whose lock nobody holds. Other live processes sharing the local
//! directory hold their locks, so their directories stay. (Flink leaves this to the
//! TaskManager's working-directory cleanup.)
//!
//! The lock exists, locked, before the directory does (it gets its name only once locked; a
//! rename keeps the lock), so no directory is ever without a lock, and a sweep never takes the
//! lock file of a directory being created.

use crate::io_err;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use weir_state::StateError;

/// Prefix of every instance's directory name.
pub(crate) const INSTANCE_PREFIX: &str = "job-";
const LOCK_SUFFIX: &str = ".lock";
/// A lock file before it is locked and renamed.
const PENDING_SUFFIX: &str = ".lock.new";

/// A working directory, locked for as long as this value lives. Dropping it deletes the lock
/// file; the owner deletes the directory first.
pub(crate) struct WorkingDir {
    pub path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl Drop for WorkingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

fn lock_path(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_os_string();
    name.push(LOCK_SUFFIX);
    PathBuf::from(name)
}

/// Locks, then creates, the directory `path`.
pub(crate) fn create(path: PathBuf) -> Result<WorkingDir, StateError> {
    let lock_path = lock_path(&path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let mut pending = path.clone().into_os_string();
    pending.push(PENDING_SUFFIX);
    let pending = PathBuf::from(pending);
    // A sweep in another subtask may take and delete the pending lock file between its creation
    // and our lock: then the lock or the rename fails, and we start over with a new file.
    let mut attempts = 0;
    let lock = loop {
        attempts += 1;
        let lock = File::create(&pending).map_err(io_err(&pending))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) if attempts < 100 => continue,
            Err(e) => {
                return Err(StateError::Backend(format!(
                    "could not lock {}: {e}; state.backend.rocksdb.localdir must be a local file system that supports file locks",
                    pending.display()
                )))
            }
        }
        match std::fs::rename(&pending, &lock_path) {
            Ok(()) => break lock,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 100 => continue,
            Err(e) => return Err(io_err(&lock_path)(e)),
        }
    };
    let dir = WorkingDir { path, lock_path, _lock: lock };
    std::fs::create_dir_all(&dir.path).map_err(io_err(&dir.path))?;
    Ok(dir)
}

/// Deletes the instance directories under `local_dir` whose lock nobody holds (left by a process
/// that was killed). Returns the directories deleted. Problems are logged, never fatal: a
/// leftover directory costs disk space, not correctness.
pub(crate) fn sweep_stale(local_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(local_dir) else {
        return Vec::new();
    };
    let mut deleted = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(INSTANCE_PREFIX) {
            continue;
        }
        let lock_file = entry.path();
        if name.ends_with(PENDING_SUFFIX) {
            // A process killed while creating its lock (no directory yet). Should its creator be
            // alive, between creating and locking it, its lock or rename fails and it retries.
            if File::open(&lock_file).is_ok_and(|f| f.try_lock().is_ok()) {
                let _ = std::fs::remove_file(&lock_file);
            }
            continue;
        }
        let Some(dir_name) = name.strip_suffix(LOCK_SUFFIX) else {
            continue;
        };
        let Ok(lock) = File::open(&lock_file) else {
            continue;
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => {
                tracing::warn!("could not check {}: {e}", lock_file.display());
                continue;
            }
        }
        // Ours now: the directory first, so a sweep interrupted here still finds the lock.
        let dir = local_dir.join(dir_name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!("deleted the RocksDB working directory {} left by an ended process", dir.display());
                deleted.push(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!("could not delete stale RocksDB working directory {}: {e}", dir.display());
                continue;
            }
        }
        let _ = std::fs::remove_file(&lock_file);
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_deletes_unlocked_instance_directories_only() {
        let local = tempfile::tempdir().unwrap();
        let live = create(local.path().join("job-live")).unwrap();
        // A killed process: its directory and lock file remain, the lock went with it.
        let stale = local.path().join("job-stale");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("000007.sst"), b"data").unwrap();
        std::fs::write(local.path().join("job-stale.lock"), b"").unwrap();
        std::fs::write(local.path().join("job-killed-while-locking.lock.new"), b"").unwrap();
        // Not ours: no lock file, or another name.
        let foreign = local.path().join("job-foreign");
        std::fs::create_dir(&foreign).unwrap();
        let other = local.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(local.path().join("other.lock"), b"").unwrap();

        assert_eq!(sweep_stale(local.path()), vec![stale.clone()]);
        assert!(!stale.exists() && !local.path().join("job-stale.lock").exists());
        assert!(!local.path().join("job-killed-while-locking.lock.new").exists());
        assert!(live.path.exists() && foreign.exists() && other.exists());
        std::fs::remove_dir_all(&live.path).unwrap();
        drop(live);
        assert!(!local.path().join("job-live.lock").exists(), "a dropped directory takes its lock file along");
    }

    #[test]
    fn concurrent_sweeps_never_break_a_directory_being_created() {
        let local = tempfile::tempdir().unwrap();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let local = local.path();
                scope.spawn(move || {
                    for i in 0..300 {
                        let dir = create(local.join(format!("job-{t}-{i}"))).expect("create while others sweep");
                        sweep_stale(local);
                        assert!(dir.path.is_dir(), "a sweep deleted a live directory");
                        std::fs::remove_dir_all(&dir.path).unwrap();
                    }
                });
            }
        });
    }
}

//! Snapshot files on the local file system: private file modes, fsync before a file counts as
//! written, `_metadata` through a temporary file and a rename, and lock-marked savepoint
//! directories so what a killed writer left can be told from a live one.

use super::{Entry, EntryKind, SnapshotStore, SnapshotUri, StateOutput};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use weir_core::metadata::METADATA_FILE_NAME;
use weir_core::JobId;

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

    pub(crate) fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
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

/// The local file system as a [`SnapshotStore`].
#[derive(Debug, Clone, Copy)]
pub struct LocalStore {
    pub modes: FileModes,
}

fn local(at: &SnapshotUri) -> io::Result<&Path> {
    at.as_local().ok_or_else(|| io::Error::other(format!("{at} is not on the local file system")))
}

struct LocalOutput {
    file: io::BufWriter<File>,
    /// Bytes written so far (some may still be in the buffer).
    written: u64,
    /// Where the file's bytes not yet sent on their way to the disk start.
    writeback_from: u64,
}

impl LocalOutput {
    fn new(file: File) -> Self {
        LocalOutput { file: io::BufWriter::with_capacity(1 << 20, file), written: 0, writeback_from: 0 }
    }
}

/// Bytes of a file after which their writing to the disk is started (see [`start_writeback`]).
const WRITEBACK_CHUNK: u64 = 8 << 20;

/// Starts writing `len` bytes of `file` at `offset` to the disk without waiting for them (Linux's
/// `sync_file_range`, what RocksDB's `bytes_per_sync` does), so the disk works while the rest of a
/// snapshot is still being encoded and the fsync that ends the file waits only for its last
/// chunk. Only a head start: durability is the fsync's, and a failure here changes nothing.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: a system call on a descriptor `file` keeps open; it reads and writes none of our memory.
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

impl Write for LocalOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        let in_file = self.written - self.file.buffer().len() as u64;
        if in_file - self.writeback_from >= WRITEBACK_CHUNK {
            start_writeback(self.file.get_ref(), self.writeback_from, in_file - self.writeback_from);
            self.writeback_from = in_file;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl StateOutput for LocalOutput {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

fn absent_ok<T: Default>(result: io::Result<T>) -> io::Result<T> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        other => other,
    }
}

impl SnapshotStore for LocalStore {
    fn create(&self, file: &SnapshotUri) -> io::Result<Box<dyn StateOutput>> {
        let file = self.modes.create_new(local(file)?)?;
        Ok(Box::new(LocalOutput::new(file)))
    }

    fn write_new(&self, file: &SnapshotUri, bytes: &[u8]) -> io::Result<()> {
        write_atomically(local(file)?, bytes, self.modes)
    }

    fn read(&self, file: &SnapshotUri) -> io::Result<Vec<u8>> {
        fs::read(local(file)?)
    }

    fn kind(&self, at: &SnapshotUri) -> io::Result<Option<EntryKind>> {
        match fs::symlink_metadata(local(at)?) {
            Ok(m) if m.file_type().is_symlink() => Ok(Some(EntryKind::Symlink)),
            Ok(m) if m.is_dir() => Ok(Some(EntryKind::Dir)),
            Ok(_) => Ok(Some(EntryKind::File)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, dir: &SnapshotUri) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for e in absent_ok(fs::read_dir(local(dir)?).map(Some))?.into_iter().flatten() {
            let e = e?;
            let Ok(name) = e.file_name().into_string() else { continue };
            let meta = e.metadata()?;
            let kind = if e.file_type()?.is_symlink() {
                EntryKind::Symlink
            } else if meta.is_dir() {
                EntryKind::Dir
            } else {
                EntryKind::File
            };
            entries.push(Entry { name, kind, size: meta.len() });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn make_dirs(&self, dir: &SnapshotUri) -> io::Result<()> {
        self.modes.create_dir_all(local(dir)?)
    }

    fn delete(&self, file: &SnapshotUri) -> io::Result<()> {
        absent_ok(fs::remove_file(local(file)?))
    }

    fn remove_empty_dir(&self, dir: &SnapshotUri) -> io::Result<bool> {
        let path = local(dir)?;
        match fs::remove_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(_) if fs::read_dir(path).is_ok_and(|mut d| d.next().is_some()) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn remove_all(&self, dir: &SnapshotUri) -> io::Result<()> {
        absent_ok(fs::remove_dir_all(local(dir)?))
    }

    fn link_or_copy(&self, from: &SnapshotUri, to: &SnapshotUri) -> io::Result<()> {
        let (from, to) = (local(from)?, local(to)?);
        if fs::hard_link(from, to).is_ok() {
            return Ok(());
        }
        // Another file system: a copy, written like any state file.
        let mut out = self.create(&SnapshotUri::Local(to.to_path_buf()))?;
        io::copy(&mut File::open(from)?, &mut out)?;
        out.finish()
    }

    fn download(&self, file: &SnapshotUri, to: &Path) -> io::Result<(u64, u32)> {
        let from = local(file)?;
        let mut out = File::create(to)?;
        let copied = weir_state::checksum::for_each_chunk(File::open(from)?, from, &mut |chunk| {
            out.write_all(chunk).map_err(|error| weir_state::StateError::Io { path: to.to_path_buf(), error })
        });
        let (size, crc) = copied.map_err(io::Error::other)?;
        out.sync_all()?;
        Ok((size, crc))
    }

    fn canonical(&self, at: &SnapshotUri) -> SnapshotUri {
        match at.as_local() {
            Some(path) => SnapshotUri::Local(fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())),
            None => at.clone(),
        }
    }
}

/// Writes `path` so that it is either absent or complete: temp file, fsync, rename, fsync dir.
pub fn write_atomically(path: &Path, bytes: &[u8], modes: FileModes) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.inprogress"));
    absent_ok(fs::remove_file(&tmp))?;
    {
        let mut f = modes.create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Marks a savepoint directory being written: the writing process holds a lock on it until
/// `_metadata` is in place, so a directory with this file, no `_metadata` and no lock holder is
/// what a killed process left, and Weir owns it.
pub(crate) const IN_PROGRESS_MARKER: &str = "_inprogress";

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

/// Creates `marker` in `dir` and locks it for as long as the returned file lives: the mark that a
/// live process owns `dir`. (A lock dies with its holder, a killed one too, and locks hold across
/// pid namespaces, which a pid in a name would not.)
pub(crate) fn lock_marker(dir: &Path, marker: &str, modes: FileModes) -> io::Result<File> {
    let lock = modes.create_new(&dir.join(marker))?;
    lock.try_lock().map_err(|e| io::Error::other(format!("cannot lock {}: {e}", dir.display())))?;
    Ok(lock)
}

/// The directories under `parent` named `prefix…` (directories, not links) holding `marker`
/// that nobody holds locked: the processes that made them are gone. Anything else is not listed.
pub(crate) fn unlocked_dirs(parent: &Path, prefix: &str, marker: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|dir| {
            let named = dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix));
            named
                && fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
                && File::open(dir.join(marker)).is_ok_and(|lock| lock.try_lock().is_ok())
        })
        .collect()
}

/// Deletes the savepoint directories under `target` that a killed process left half-written:
/// marked in progress, without `_metadata`, and with nobody holding the marker's lock. Anything
/// else (complete savepoints, directories Weir did not mark, those of live writers) stays.
pub fn sweep_partial_savepoints(target: &Path) -> Vec<PathBuf> {
    let mut deleted = Vec::new();
    for dir in unlocked_dirs(target, "savepoint-", IN_PROGRESS_MARKER) {
        if dir.join(METADATA_FILE_NAME).exists() {
            let _ = fs::remove_file(dir.join(IN_PROGRESS_MARKER)); // complete; the writer died before tidying up
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

/// A savepoint directory name: `savepoint-<job id prefix>-<12 random hex>` (Flink's naming).
pub(crate) fn savepoint_name(job: JobId) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("savepoint-{}-{}", &job.to_hex()[..6], &random[..12])
}

/// Creates a savepoint directory under `target`, retrying on the unlikely collision, marked and
/// locked as in progress. Partial savepoints that killed processes left in `target` are deleted
/// first.
pub fn create_savepoint_dir(target: &Path, job: JobId, modes: FileModes) -> io::Result<SavepointInProgress> {
    modes.create_dir_all(target)?;
    sweep_partial_savepoints(target);
    let mut last = None;
    for _ in 0..10 {
        let dir = target.join(savepoint_name(job));
        match modes.create_dir(&dir) {
            Ok(()) => {
                let dir = fs::canonicalize(&dir).unwrap_or(dir);
                let lock = lock_marker(&dir, IN_PROGRESS_MARKER, modes)?;
                return Ok(SavepointInProgress { dir, lock });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::other(format!("Failed to create savepoint directory at {}", target.display()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::snapshot::tests::meta;

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

//! Whole-file sizes and CRC32C checksums: `_metadata` records them for every state file, and a
//! restore checks them before it reads a byte of state, so a damaged file, or one swapped in from
//! another snapshot, is refused before the job starts.

use crate::error::StateError;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Reads `input` (at `path`) to its end, giving each chunk to `f`; returns the size and CRC32C.
pub fn for_each_chunk(
    mut input: impl Read,
    path: &Path,
    f: &mut dyn FnMut(&[u8]) -> Result<(), StateError>,
) -> Result<(u64, u32), StateError> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut size, mut crc) = (0u64, 0u32);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok((size, crc)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StateError::Io { path: path.to_path_buf(), error: e }),
        };
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        size += n as u64;
        f(&buf[..n])?;
    }
}

/// What to say of a file whose size is not the one `_metadata` recorded; `what` names the file.
pub fn size_mismatch(what: &str, found: u64, size: u64) -> String {
    damaged(format!("{what} has {found} bytes, the snapshot recorded {size}"))
}

/// What to say of a file whose CRC32C is not the one `_metadata` recorded.
pub fn checksum_mismatch(what: &str, recorded: u32, computed: u32) -> String {
    damaged(format!("{what}: checksum mismatch (recorded {recorded:08x}, computed {computed:08x})"))
}

fn damaged(detail: String) -> String {
    format!(
        "{detail}; the snapshot is damaged or the file belongs to another snapshot: restore from another checkpoint or savepoint"
    )
}

/// The files one restore has checked. Subtasks that share a file (after a rescale every subtask
/// reads its key groups from the same files) then read it for its checksum once between them,
/// not once each: the others wait for that check. A file that failed is checked again by each
/// subtask that asks, so each reports its own error.
#[derive(Debug, Default)]
pub struct CheckedFiles {
    checked: Mutex<HashMap<FileId, Arc<OnceLock<bool>>>>,
}

/// A file as `_metadata` records it: path, size and CRC32C.
type FileId = (PathBuf, u64, Option<u32>);

impl CheckedFiles {
    /// [`verify_file`], once per file for everyone sharing this.
    pub fn verify(&self, path: &Path, size: u64, crc32c: Option<u32>, what: &str) -> Result<(), StateError> {
        let once = {
            let mut checked = self.checked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            checked.entry((path.to_path_buf(), size, crc32c)).or_default().clone()
        };
        let mut checked_here = None;
        let passed = *once.get_or_init(|| {
            let result = verify_file(path, size, crc32c, what);
            let passed = result.is_ok();
            checked_here = Some(result);
            passed
        });
        match checked_here {
            Some(result) => result,
            None if passed => Ok(()),
            None => verify_file(path, size, crc32c, what),
        }
    }
}

/// Checks that the file at `path` has the size and (when recorded) the CRC32C that `_metadata`
/// recorded; `what` names the file in the error ("state file", "RocksDB file '000012.sst'").
pub fn verify_file(path: &Path, size: u64, crc32c: Option<u32>, what: &str) -> Result<(), StateError> {
    let io = |error| StateError::Io { path: path.to_path_buf(), error };
    let corrupt = |detail| StateError::CorruptFile { path: path.to_path_buf(), detail };
    let found = std::fs::metadata(path).map_err(io)?.len();
    if found != size {
        return Err(corrupt(size_mismatch(what, found, size)));
    }
    if let Some(recorded) = crc32c {
        let (_, computed) = for_each_chunk(std::fs::File::open(path).map_err(io)?, path, &mut |_| Ok(()))?;
        if computed != recorded {
            return Err(corrupt(checksum_mismatch(what, recorded, computed)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_checks_each_file_once_and_every_failure_for_each_subtask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, b"key groups").unwrap();
        let (size, crc) = (10, Some(crc32c::crc32c(b"key groups")));
        let checked = CheckedFiles::default();
        checked.verify(&path, size, crc, "state file").unwrap();
        // Damaged after the first subtask checked it: the others of this restore do not read it
        // again (their blocks' own checksums still guard what they read); a new restore does.
        std::fs::write(&path, b"key grouPs").unwrap();
        checked.verify(&path, size, crc, "state file").unwrap();
        let next_restore = CheckedFiles::default();
        let err = next_restore.verify(&path, size, crc, "state file").unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        let again = next_restore.verify(&path, size, crc, "state file").unwrap_err().to_string();
        assert_eq!(again, err, "a failed file fails for every subtask that asks");
    }
}

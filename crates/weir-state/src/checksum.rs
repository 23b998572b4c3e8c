//! Whole-file sizes and CRC32C checksums: `_metadata` records them for every state file, and a
//! restore checks them before it reads a byte of state, so a damaged file, or one swapped in from
//! another snapshot, is refused before the job starts.

use crate::error::StateError;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
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
        let computed = file_crc32c(path, size, CHECKSUM_PIECE_BYTES)?;
        if computed != recorded {
            return Err(corrupt(checksum_mismatch(what, recorded, computed)));
        }
    }
    Ok(())
}

/// Bytes of a file one thread checksums at a time.
const CHECKSUM_PIECE_BYTES: u64 = 16 << 20;

/// The CRC32C of the `size` bytes of the file at `path`, its pieces of `piece_bytes` read and
/// checksummed on every core and their checksums combined: a restore checks each file whole
/// before reading it, and on one thread that left the other cores idle (20 of the 160 ms of
/// restoring 10^7 keys at p=1).
fn file_crc32c(path: &Path, size: u64, piece_bytes: u64) -> Result<u32, StateError> {
    let io = |error| StateError::Io { path: path.to_path_buf(), error };
    let pieces: Vec<u64> = (0..size.div_ceil(piece_bytes)).map(|i| i * piece_bytes).collect();
    let crcs = crate::parallel::map_in_order(pieces, |start| -> Result<(u32, usize), StateError> {
        let mut file = std::fs::File::open(path).map_err(io)?;
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let piece = file.take(piece_bytes.min(size - start));
        let (len, crc) = for_each_chunk(piece, path, &mut |_| Ok(()))?;
        Ok((crc, len as usize))
    });
    crcs.into_iter().try_fold(0, |whole, piece| {
        let (crc, len) = piece?;
        Ok(crc32c::crc32c_combine(whole, crc, len))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_checksummed_in_pieces_has_its_whole_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for len in [0, 1, 999, 1000, 1001, 10_000] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            for piece in [1000, 3000, 1 << 20] {
                let crc = file_crc32c(&path, len as u64, piece).unwrap();
                assert_eq!(crc, crc32c::crc32c(&bytes[..len]), "{len} bytes in pieces of {piece}");
            }
        }
        let mut damaged = bytes.clone();
        damaged[4321] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        assert_ne!(file_crc32c(&path, 10_000, 1000).unwrap(), crc32c::crc32c(&bytes));
    }

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

//! The key-group-indexed keyed state file (documented in `docs/formats.md`).
//!
//! ```text
//! magic "WEIRKEYS" | u32 version | u32 header length | header (MessagePack) | u32 crc32c(header)
//! then one block per key group of the header's range, in order:
//!   u32 payload length | u32 crc32c(payload) | payload
//! payload: per state with entries in this key group:
//!   u16 state index | u32 entry count | count × (u32 key length, key, u32 value length, value)
//! ```
//!
//! The byte offset of each block is recorded in the snapshot's `_metadata`, so a restore seeks to
//! the key groups it owns and reads nothing else. Integers are big-endian.

use crate::error::StateError;
use crate::sorted_entries::SortedEntries;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use weir_core::KeyGroupRange;

pub const KEYED_MAGIC: [u8; 8] = *b"WEIRKEYS";
/// Version 2 added timer queues (state kind `timers`) and namespaced state (`StateMeta::namespace`)
/// to the header; version 1 files are still read.
pub const KEYED_VERSION: u32 = 2;

pub use weir_core::metadata::{StateKind, StateMeta};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    pub key_groups: KeyGroupRange,
    pub states: Vec<StateMeta>,
}

/// Writes a state file block by block, recording each key group's offset and the file's CRC32C.
pub struct StateFileWriter<W: Write> {
    inner: W,
    written: u64,
    offsets: Vec<u64>,
    crc: u32,
    /// The file's first key group, to name a key group in an error.
    first_key_group: u32,
}

/// A finished key-group file: where each key group starts, its size and its CRC32C.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    pub offsets: Vec<u64>,
    pub size: u64,
    pub crc32c: u32,
}

impl WrittenFile {
    /// The `_metadata` handle of this file, recorded as `reference`.
    pub fn into_handle(self, reference: String, key_groups: KeyGroupRange) -> weir_core::metadata::KeyedStateHandle {
        weir_core::metadata::KeyedStateHandle {
            file: weir_core::metadata::StateFileRef { path: reference, size: self.size, crc32c: Some(self.crc32c) },
            key_groups,
            offsets: self.offsets,
        }
    }
}

impl<W: Write> StateFileWriter<W> {
    pub fn new(inner: W, header: &FileHeader) -> io::Result<Self> {
        let head = rmp_serde::to_vec_named(header).map_err(io::Error::other)?;
        let mut writer = StateFileWriter {
            inner,
            written: 0,
            offsets: Vec::new(),
            crc: 0,
            first_key_group: header.key_groups.start,
        };
        writer.put(&KEYED_MAGIC)?;
        writer.put(&KEYED_VERSION.to_be_bytes())?;
        writer.put(&(head.len() as u32).to_be_bytes())?;
        writer.put(&head)?;
        writer.put(&crc32c::crc32c(&head).to_be_bytes())?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes the next key group's payload (built with [`push_entries`]).
    pub fn write_key_group(&mut self, payload: &[u8]) -> io::Result<()> {
        let key_group = self.first_key_group + self.offsets.len() as u32;
        self.write_block(&Block::frame(payload, key_group)?)
    }

    /// Writes a key group's block framed (and checksummed) by whoever encoded it.
    fn write_block(&mut self, block: &Block<'_>) -> io::Result<()> {
        self.offsets.push(self.written);
        self.inner.write_all(&block.head)?;
        self.inner.write_all(&block.payload)?;
        // The payload's CRC is in its head already: the file's is extended over the head and
        // combined with it, without reading the payload again. `crc32c_combine` costs 4-60 µs
        // (more for longer payloads), so it runs once per block, and not at all for an empty
        // key group: a file of max parallelism 32768 has that many blocks, mostly empty.
        self.crc = crc32c::crc32c_append(self.crc, &block.head);
        self.crc = crc32c::crc32c_combine(self.crc, block.payload_crc, block.payload.len());
        self.written += (block.head.len() + block.payload.len()) as u64;
        Ok(())
    }

    /// Writes key groups `0..count` (indices within the file's range) in order, each payload
    /// built by an encoder (see [`push_entries`]). Large files are encoded on several threads at
    /// once, each with an encoder of its own from `new_encoder`, while this thread writes blocks
    /// in order as they come: at most two encoded blocks per thread wait in memory,
    /// and the bytes written are the same whatever the number of threads.
    pub fn write_key_groups<E>(
        &mut self,
        count: usize,
        parallel: bool,
        new_encoder: &(dyn Fn() -> E + Sync),
    ) -> Result<(), StateError>
    where
        E: FnMut(usize, &mut Vec<u8>) -> Result<(), StateError>,
    {
        let threads = if parallel { crate::parallel::threads() } else { 1 };
        self.write_key_groups_on(threads, count, new_encoder)
    }

    fn write_key_groups_on<E>(
        &mut self,
        threads: usize,
        count: usize,
        new_encoder: &(dyn Fn() -> E + Sync),
    ) -> Result<(), StateError>
    where
        E: FnMut(usize, &mut Vec<u8>) -> Result<(), StateError>,
    {
        let threads = threads.min(count);
        if threads <= 1 {
            let mut encode = new_encoder();
            let mut payload = Vec::new();
            for index in 0..count {
                payload.clear();
                encode(index, &mut payload)?;
                self.write_key_group(&payload).map_err(StateError::Write)?;
            }
            return Ok(());
        }
        std::thread::scope(|scope| {
            let mut queues = Vec::with_capacity(threads);
            for first in 0..threads {
                let (send, receive) = std::sync::mpsc::sync_channel::<Result<Block<'static>, StateError>>(BLOCKS_AHEAD);
                // Written payloads go back to their encoder, so a large snapshot does not fault in
                // fresh pages for every key group.
                let (recycle, reuse) = std::sync::mpsc::channel::<Vec<u8>>();
                queues.push((receive, recycle));
                let first_key_group = self.first_key_group;
                let spawned =
                    std::thread::Builder::new().name(format!("encode-{first}")).spawn_scoped(scope, move || {
                        let mut encode = new_encoder();
                        for index in (first..count).step_by(threads) {
                            let mut payload = reuse.try_recv().unwrap_or_default();
                            payload.clear();
                            let block = encode(index, &mut payload).and_then(|()| {
                                Block::frame(payload, first_key_group + index as u32).map_err(StateError::Write)
                            });
                            let failed = block.is_err();
                            // The writer hung up (it failed): stop.
                            if send.send(block).is_err() || failed {
                                return;
                            }
                        }
                    });
                if let Err(e) = spawned {
                    return Err(StateError::Write(e));
                }
            }
            for index in 0..count {
                let (blocks, recycle) = &queues[index % threads];
                let block = blocks.recv().map_err(|_| {
                    StateError::Write(io::Error::other(format!("the encoder of key group index {index} stopped")))
                })??;
                self.write_block(&block).map_err(StateError::Write)?;
                if let std::borrow::Cow::Owned(payload) = block.payload {
                    let _ = recycle.send(payload);
                }
            }
            Ok(())
        })
    }

    /// Returns the writer and what was written.
    pub fn finish(mut self) -> io::Result<(W, WrittenFile)> {
        self.inner.flush()?;
        Ok((self.inner, WrittenFile { offsets: self.offsets, size: self.written, crc32c: self.crc }))
    }
}

/// Encoded key groups each encoding thread may have waiting for the writer.
const BLOCKS_AHEAD: usize = 2;

/// A key group's block as written: `len | crc32c(payload) | payload`.
struct Block<'p> {
    head: [u8; 8],
    payload: std::borrow::Cow<'p, [u8]>,
    payload_crc: u32,
}

impl<'p> Block<'p> {
    fn frame(payload: impl Into<std::borrow::Cow<'p, [u8]>>, key_group: u32) -> io::Result<Block<'p>> {
        let payload = payload.into();
        let len = u32::try_from(payload.len()).map_err(|_| {
            io::Error::other(format!(
                "the entries of key group {key_group} take {} bytes, more than the 4 GiB a state file's block can hold; {BLOCK_LIMIT_WAY_OUT}",
                payload.len()
            ))
        })?;
        let payload_crc = crc32c::crc32c(&payload);
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&len.to_be_bytes());
        head[4..].copy_from_slice(&payload_crc.to_be_bytes());
        Ok(Block { head, payload, payload_crc })
    }
}

/// What a user can do about a key group past a block's 32-bit length.
pub(crate) const BLOCK_LIMIT_WAY_OUT: &str = "spread such state over more keys (one key's value or list this large \
     belongs in a map or under several keys), or use the rocksdb backend, whose checkpoints and native savepoints \
     have no such limit";

/// Starts one state's entries in a block payload: `u16 state index | u32 entry count`.
pub(crate) fn push_state_head(payload: &mut Vec<u8>, state_index: u16, count: usize) {
    payload.extend_from_slice(&state_index.to_be_bytes());
    payload.extend_from_slice(&(count as u32).to_be_bytes());
}

/// Appends one state's entries of one key group to a block payload.
pub fn push_entries<'a>(
    payload: &mut Vec<u8>,
    state_index: u16,
    entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) {
    let mut appender = EntryAppender::start(payload, state_index);
    for (k, v) in entries {
        appender.push(k, v);
    }
    appender.finish();
}

/// Appends one state's entries of one key group to a block payload as they come, in the order
/// given, without knowing their count first: the count is written by [`EntryAppender::finish`].
/// Lets a store's rows go straight into the block instead of through a vector of copies.
pub struct EntryAppender<'p> {
    payload: &'p mut Vec<u8>,
    head_at: usize,
    count: u32,
}

impl<'p> EntryAppender<'p> {
    pub fn start(payload: &'p mut Vec<u8>, state_index: u16) -> Self {
        let head_at = payload.len();
        push_state_head(payload, state_index, 0);
        EntryAppender { payload, head_at, count: 0 }
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        self.push_with(key, |out| out.extend_from_slice(value));
    }

    /// Appends an entry whose value `write_value` appends to the payload.
    pub fn push_with(&mut self, key: &[u8], write_value: impl FnOnce(&mut Vec<u8>)) {
        let payload = &mut *self.payload;
        payload.extend_from_slice(&(key.len() as u32).to_be_bytes());
        payload.extend_from_slice(key);
        let len_at = payload.len();
        payload.extend_from_slice(&[0; 4]);
        write_value(payload);
        let value_len = (payload.len() - len_at - 4) as u32;
        payload[len_at..len_at + 4].copy_from_slice(&value_len.to_be_bytes());
        self.count += 1;
    }

    /// Writes the count; a state without entries leaves nothing in the block.
    pub fn finish(self) {
        if self.count == 0 {
            self.payload.truncate(self.head_at);
        } else {
            let at = self.head_at + 2;
            self.payload[at..at + 4].copy_from_slice(&self.count.to_be_bytes());
        }
    }
}

/// Appends one state's entries of one key group to a block payload, sorted by key bytes; `tag`
/// is given each entry's tag in that order.
pub(crate) fn push_sorted_entries(
    payload: &mut Vec<u8>,
    state_index: u16,
    entries: &mut SortedEntries,
    tag: impl FnMut(u32),
) {
    if entries.is_empty() {
        return;
    }
    push_state_head(payload, state_index, entries.len());
    entries.append_sorted(payload, tag);
}

/// One state's entries in one key group's block, borrowed from the block's bytes: `len` entries
/// `framed` as the block holds them (`u32 length | key | u32 length | value` each), checked to
/// be whole when the block was read.
#[derive(Debug, PartialEq)]
pub struct StateEntries<'b> {
    pub state_index: u16,
    pub framed: &'b [u8],
    pub len: usize,
}

impl<'b> StateEntries<'b> {
    /// Each entry's `(key, value)`.
    pub fn entries(&self) -> impl Iterator<Item = (&'b [u8], &'b [u8])> {
        crate::sorted_entries::framed_entries(self.framed)
    }
}

/// One key group's block: each state's entries.
pub type KeyGroupEntries<'b> = Vec<StateEntries<'b>>;

/// Reads key groups of a state file by offset.
#[derive(Debug)]
pub struct StateFileReader {
    file: BufReader<File>,
    path: PathBuf,
    header: FileHeader,
}

impl StateFileReader {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let io_err = |error| StateError::Io { path: path.to_path_buf(), error };
        let corrupt = |detail: &str| StateError::CorruptFile { path: path.to_path_buf(), detail: detail.to_string() };
        let mut file = BufReader::new(File::open(path).map_err(io_err)?);
        let mut fixed = [0u8; 16];
        file.read_exact(&mut fixed).map_err(|_| corrupt("truncated header"))?;
        if fixed[..8] != KEYED_MAGIC {
            return Err(corrupt("not a Weir keyed state file (unexpected magic number)"));
        }
        let version = u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        if version == 0 || version > KEYED_VERSION {
            return Err(StateError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: KEYED_VERSION,
            });
        }
        let len = u32::from_be_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
        if len > 64 << 20 {
            return Err(corrupt("header length is implausible"));
        }
        let mut head = vec![0u8; len + 4];
        file.read_exact(&mut head).map_err(|_| corrupt("truncated header"))?;
        let stored = u32::from_be_bytes([head[len], head[len + 1], head[len + 2], head[len + 3]]);
        if crc32c::crc32c(&head[..len]) != stored {
            return Err(corrupt("header checksum mismatch"));
        }
        let header: FileHeader = rmp_serde::from_slice(&head[..len]).map_err(|e| corrupt(&format!("header: {e}")))?;
        Ok(StateFileReader { file, path: path.to_path_buf(), header })
    }

    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// Reads the block of `key_group` at `offset` into `payload` and verifies its checksum; the
    /// entries borrow from `payload` (a restore copies only what it keeps).
    pub fn read_key_group<'b>(
        &mut self,
        key_group: u32,
        offset: u64,
        payload: &'b mut Vec<u8>,
    ) -> Result<KeyGroupEntries<'b>, StateError> {
        let path = self.path.clone();
        let corrupt = |detail: String| StateError::CorruptFile { path: path.clone(), detail };
        self.file.seek(SeekFrom::Start(offset)).map_err(|error| StateError::Io { path: path.clone(), error })?;
        let mut fixed = [0u8; 8];
        self.file.read_exact(&mut fixed).map_err(|_| corrupt(format!("truncated at key group {key_group}")))?;
        let len = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) as usize;
        let stored = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        payload.clear();
        (&mut self.file)
            .take(len as u64)
            .read_to_end(payload)
            .map_err(|error| StateError::Io { path: path.clone(), error })?;
        if payload.len() != len {
            return Err(corrupt(format!("truncated at key group {key_group}")));
        }
        if crc32c::crc32c(payload) != stored {
            return Err(corrupt(format!("checksum mismatch in key group {key_group}")));
        }
        parse_payload(payload).ok_or_else(|| corrupt(format!("malformed block of key group {key_group}")))
    }
}

/// Receives one state's entries of one key group: (file, state, key group, entries).
pub type KeyGroupSink<'a> = dyn FnMut(&Path, &StateMeta, u32, &StateEntries<'_>) -> Result<(), StateError> + 'a;

/// Checks each key-group file's size and checksum (once per restore, see [`CheckedFiles`]). A
/// restore that reads its files on the pool checks them first, on its own thread, so that each
/// file's checksum is computed on every core.
///
/// [`CheckedFiles`]: crate::checksum::CheckedFiles
pub fn verify_files(
    files: &[(PathBuf, weir_core::metadata::KeyedStateHandle)],
    checked: &crate::checksum::CheckedFiles,
) -> Result<(), StateError> {
    files.iter().try_for_each(|(path, handle)| checked.verify(path, handle.file.size, handle.file.crc32c, "state file"))
}

/// Reads the key groups of `range` from key-group files and hands each state's entries of a key
/// group to `f` as (path of the file, state, key group, entries). Both backends restore through it.
pub fn read_key_groups(
    files: &[(PathBuf, weir_core::metadata::KeyedStateHandle)],
    range: KeyGroupRange,
    checked: &crate::checksum::CheckedFiles,
    f: &mut KeyGroupSink<'_>,
) -> Result<(), StateError> {
    verify_files(files, checked)?;
    // A restore reads its key groups in chunks, each through this: a file without any of a
    // chunk's key groups is not opened for it.
    for (path, handle) in files.iter().filter(|(_, handle)| !handle.key_groups.intersection(&range).is_empty()) {
        let mut reader = StateFileReader::open(path)?;
        let states = reader.header().states.clone();
        let mut payload = Vec::new();
        for (i, kg) in handle.key_groups.iter().enumerate() {
            if range.offset_of(kg).is_none() {
                continue;
            }
            for state in reader.read_key_group(kg, handle.offsets[i], &mut payload)? {
                let meta = states.get(state.state_index as usize).ok_or_else(|| StateError::CorruptFile {
                    path: path.clone(),
                    detail: format!("key group {kg} refers to undeclared state index {}", state.state_index),
                })?;
                f(path, meta, kg, &state)?;
            }
        }
    }
    Ok(())
}

fn parse_payload(mut p: &[u8]) -> Option<KeyGroupEntries<'_>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Some(a)
    }
    fn u32_of(p: &mut &[u8]) -> Option<usize> {
        take(p, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut out = Vec::new();
    while !p.is_empty() {
        let state_index = take(&mut p, 2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
        let len = u32_of(&mut p)?;
        let start = p;
        for _ in 0..len {
            let key_len = u32_of(&mut p)?;
            take(&mut p, key_len)?;
            let value_len = u32_of(&mut p)?;
            take(&mut p, value_len)?;
        }
        let framed = &start[..start.len() - p.len()];
        out.push(StateEntries { state_index, framed, len });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_selected_key_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let header = FileHeader {
            key_groups: KeyGroupRange::inclusive(3, 5),
            states: vec![StateMeta::new("count", StateKind::Value)],
        };
        let mut w = StateFileWriter::new(File::create(&path).unwrap(), &header).unwrap();
        for kg in 3..=5u32 {
            let mut payload = Vec::new();
            let k = kg.to_be_bytes().to_vec();
            let v = vec![kg as u8; 3];
            push_entries(&mut payload, 0, [(k.as_slice(), v.as_slice())]);
            w.write_key_group(&payload).unwrap();
        }
        let (_, written) = w.finish().unwrap();
        let offsets = written.offsets;
        assert_eq!(written.size, std::fs::metadata(&path).unwrap().len());
        assert_eq!(written.crc32c, crc32c::crc32c(&std::fs::read(&path).unwrap()), "the whole file's checksum");
        let mut r = StateFileReader::open(&path).unwrap();
        assert_eq!(r.header(), &header);
        let mut buf = Vec::new();
        let kg4 = r.read_key_group(4, offsets[1], &mut buf).unwrap();
        let (key, value) = (&4u32.to_be_bytes()[..], &[4u8, 4, 4][..]);
        let framed = [&4u32.to_be_bytes()[..], key, &3u32.to_be_bytes(), value].concat();
        assert_eq!(kg4, vec![StateEntries { state_index: 0, framed: &framed, len: 1 }]);
        assert_eq!(kg4[0].entries().collect::<Vec<_>>(), vec![(key, value)]);

        // A flipped byte in a block is caught by that block's checksum, naming the key group.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let mut r = StateFileReader::open(&path).unwrap();
        let err = r.read_key_group(5, offsets[2], &mut buf).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch in key group 5") && err.contains(path.to_str().unwrap()), "{err}");
    }

    #[test]
    fn key_groups_encoded_on_several_threads_write_the_same_bytes_and_stop_at_an_error() {
        let header = FileHeader { key_groups: KeyGroupRange::inclusive(0, 40), states: Vec::new() };
        let encoder = || {
            |index: usize, payload: &mut Vec<u8>| {
                let entries = (0..index % 7).map(|i| (vec![index as u8, i as u8], vec![i as u8; index]));
                let entries: Vec<(Vec<u8>, Vec<u8>)> = entries.collect();
                push_entries(payload, 0, entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
                Ok(())
            }
        };
        let write = |threads: usize| {
            let mut w = StateFileWriter::new(Vec::new(), &header).unwrap();
            w.write_key_groups_on(threads, 41, &encoder).unwrap();
            w.finish().unwrap()
        };
        let (one, written) = write(1);
        assert_eq!(written.crc32c, crc32c::crc32c(&one), "the whole file's checksum");
        for threads in [2, 3, 8, 64] {
            let (many, w) = write(threads);
            assert_eq!(many, one, "{threads} threads");
            assert_eq!((w.offsets, w.crc32c), (written.offsets.clone(), written.crc32c));
        }
        let failing = || {
            |index: usize, payload: &mut Vec<u8>| {
                if index == 17 {
                    return Err(StateError::Encode { name: "s".into(), detail: "key group 17".into() });
                }
                payload.push(1);
                Ok(())
            }
        };
        let mut w = StateFileWriter::new(Vec::new(), &header).unwrap();
        let err = w.write_key_groups_on(3, 41, &failing).unwrap_err().to_string();
        assert!(err.contains("key group 17"), "{err}");
    }

    #[test]
    fn refuses_other_files_and_newer_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world, not state").unwrap();
        assert!(StateFileReader::open(&path).unwrap_err().to_string().contains("unexpected magic"));
        let mut bytes = KEYED_MAGIC.to_vec();
        bytes.extend_from_slice(&7u32.to_be_bytes());
        bytes.extend_from_slice(&[0; 8]);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(StateFileReader::open(&path), Err(StateError::UnsupportedVersion { found: 7, .. })));
    }
}

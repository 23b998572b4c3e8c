//! The `_metadata` file: what a checkpoint or savepoint contains and where its state lives.
//!
//! Layout (all integers big-endian), documented in `docs/formats.md`:
//!
//! ```text
//! magic    8 bytes  "WEIRMETA"
//! version  u32      METADATA_VERSION
//! length   u64      length of the body
//! body     MessagePack of `SnapshotMetadata` (maps with field names, so fields can be added)
//! crc32c   u32      over magic, version, length and body
//! ```
//!
//! A snapshot exists only once this file is in place and verifies; readers refuse a wrong magic,
//! an unknown version, a truncated file or a checksum mismatch with an error naming the file.

use crate::key_group::KeyGroupRange;
use crate::operator_id::OperatorId;
use crate::CheckpointId;
use serde::{Deserialize, Serialize};

pub const METADATA_FILE_NAME: &str = "_metadata";
pub const METADATA_MAGIC: [u8; 8] = *b"WEIRMETA";
/// Version 3 added timer queues (state kind `timers`), namespaced state (`StateMeta::namespace`)
/// and subtask watermarks; version 2 added native keyed state handles (`SubtaskSnapshot::native`); version 1 files are
/// still read.
pub const METADATA_VERSION: u32 = 3;
const HEADER_LEN: usize = 8 + 4 + 8;

/// What kind of snapshot this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotKind {
    Checkpoint,
    Savepoint { format: SavepointFormat },
}

impl SnapshotKind {
    pub fn is_savepoint(&self) -> bool {
        matches!(self, SnapshotKind::Savepoint { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SavepointFormat {
    Canonical,
    Native,
}

/// How operator list state is redistributed when parallelism changes (digest §3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Redistribution {
    /// Elements are split across the new subtasks (Flink's `SPLIT_DISTRIBUTE`, ListState).
    Split,
    /// Every new subtask receives all elements (Flink's `UNION`).
    Union,
    /// Every subtask holds the same copy (Flink's `BROADCAST`).
    Broadcast,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMetadata {
    pub checkpoint_id: CheckpointId,
    /// Job that wrote the snapshot (32 hex).
    pub job_id: String,
    pub kind: SnapshotKind,
    /// Wall-clock time the snapshot was triggered, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub operators: Vec<OperatorSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorSnapshot {
    pub operator_id: OperatorId,
    #[serde(default)]
    pub uid: Option<String>,
    pub name: String,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub subtasks: Vec<SubtaskSnapshot>,
}

impl OperatorSnapshot {
    /// True when no subtask holds any state: such an entry never blocks a restore.
    pub fn is_empty(&self) -> bool {
        self.subtasks.iter().all(SubtaskSnapshot::is_empty)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskSnapshot {
    pub subtask: u32,
    /// Keyed state of the subtask, if it has any.
    #[serde(default)]
    pub keyed: Option<KeyedStateHandle>,
    /// Operator (non-keyed) list states, stored inline: they are small (offsets, pending files).
    #[serde(default)]
    pub operator_lists: Vec<OperatorListState>,
    /// Keyed state in a backend's own (native) format, if the subtask's backend wrote one
    /// instead of a key-group-indexed file.
    #[serde(default)]
    pub native: Option<NativeStateHandle>,
    /// The operator subtask's event time (its input watermark, or the watermark its generator
    /// emitted) when the snapshot was taken; a restore starts from it, so a record late before a
    /// failure stays late after it (Weir-specific; Flink restarts event time from the minimum).
    /// Since version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<i64>,
}

impl SubtaskSnapshot {
    /// True when the subtask holds no state. A watermark alone is not state: it never blocks a
    /// restore into a job without the operator.
    pub fn is_empty(&self) -> bool {
        self.keyed.is_none() && self.native.is_none() && self.operator_lists.iter().all(|l| l.elements.is_empty())
    }
}

/// What a keyed state holds per key; fixes how its values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateKind {
    Value,
    List,
    Map,
    Reducing,
    /// A timer queue (`_timer_state/event_<service>` or `_timer_state/processing_<service>`):
    /// entries are [`crate::timers::encode`]d timers with empty values.
    Timers,
}

impl StateKind {
    pub fn label(&self) -> &'static str {
        match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
            StateKind::Reducing => "reducing",
            StateKind::Timers => "timers",
        }
    }
}

/// A declared keyed state: its name, its kind and, for namespaced state, what its namespaces are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMeta {
    pub name: String,
    pub kind: StateKind,
    /// Set for namespaced state (the window operator's: one value per key and window): the kind
    /// of namespace, e.g. `window:tumbling-event-time`. A restore into a state whose namespace
    /// differs is refused. Since format version 2 of state files and 3 of `_metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl StateMeta {
    pub fn new(name: impl Into<String>, kind: StateKind) -> Self {
        StateMeta { name: name.into(), kind, namespace: None }
    }

    /// Refuses a restored state's meta of another kind or namespace than the declared one.
    pub fn check_restored(&self, restored: &StateMeta) -> Result<(), String> {
        if self.kind != restored.kind {
            return Err(format!(
                "state '{}' was declared as {} state but the restored state is {} state; keep the kind of a state, or give the new state another name",
                self.name,
                self.kind.label(),
                restored.kind.label()
            ));
        }
        if self.namespace != restored.namespace {
            let label = |n: &Option<String>| n.clone().unwrap_or_else(|| "no namespace".into());
            return Err(format!(
                "state '{}' holds {} in the snapshot but {} in the job: the kind of window of an operator cannot change across a restore. Restore with the window kind the snapshot was taken with, or give the operator a new uid and restore with --allow-non-restored-state (its state is dropped)",
                self.name,
                label(&restored.namespace),
                label(&self.namespace)
            ));
        }
        Ok(())
    }
}

/// Keyed state of one subtask in a backend's native format (for `rocksdb`: the database's own
/// files). Only the backend that wrote it can read it; restoring it elsewhere is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeStateHandle {
    /// The backend that wrote the files (`rocksdb`).
    pub backend: String,
    /// Key groups held by the files (they may hold no other keys).
    pub key_groups: KeyGroupRange,
    /// The declared states, by name.
    pub states: Vec<StateMeta>,
    pub files: Vec<NativeFile>,
}

/// One file of a native snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeFile {
    /// The file's name inside the backend's own directory.
    pub name: String,
    /// Where the snapshot keeps it.
    pub file: StateFileRef,
    /// True for an immutable data file that later incremental checkpoints may reference instead
    /// of uploading it again (tracked by the shared-state registry).
    pub reusable: bool,
    /// CRC32C of the file's bytes, checked on restore before the backend opens it. Absent in
    /// snapshots written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
}

/// A key-group-indexed state file: `offsets[i]` is where key group `key_groups.start + i` begins,
/// so a restore reads only the key groups it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedStateHandle {
    pub file: StateFileRef,
    pub key_groups: KeyGroupRange,
    pub offsets: Vec<u64>,
}

impl KeyedStateHandle {
    /// The part of this handle that covers `range`, or `None` when they do not overlap.
    pub fn intersection(&self, range: &KeyGroupRange) -> Option<KeyedStateHandle> {
        let common = self.key_groups.intersection(range);
        if common.is_empty() {
            return None;
        }
        let first = (common.start - self.key_groups.start) as usize;
        Some(KeyedStateHandle {
            file: self.file.clone(),
            key_groups: common,
            offsets: self.offsets[first..first + common.count as usize].to_vec(),
        })
    }
}

/// A state file. `path` is relative to the directory holding `_metadata` (so a savepoint, or a
/// job's whole checkpoint directory, can be moved): a file of the snapshot's own directory, or
/// `../shared/<name>` for a shared file of incremental checkpoints. Nothing else is accepted (see
/// [`file_scope`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFileRef {
    pub path: String,
    pub size: u64,
    /// CRC32C of the whole file, so a file swapped in from another snapshot is refused. Key-group
    /// files carry it since metadata written by Weir 0.2; native files record theirs in
    /// [`NativeFile::crc32c`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
}

/// Where a file a snapshot references lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileScope {
    /// In the snapshot's own directory (deleted with the snapshot).
    Snapshot,
    /// In the `shared/` directory of the job the snapshot belongs to (`../shared/<name>`).
    JobShared,
}

/// Which directory a reference points into, or `None` for anything else: absolute paths, `..`
/// that leaves the snapshot's directory other than into `../shared/`, empty names. A snapshot
/// whose `_metadata` references such a path is refused, so a crafted `_metadata` can neither read
/// nor (through CLAIM) delete files outside the snapshot.
pub fn file_scope(reference: &str) -> Option<FileScope> {
    if reference.is_empty() || reference.starts_with('/') || reference.contains('\\') || reference.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    let mut ups = 0;
    for part in reference.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.pop().is_none() => ups += 1,
            ".." => {}
            p => parts.push(p),
        }
    }
    match (ups, parts.as_slice()) {
        (0, [_, ..]) => Some(FileScope::Snapshot),
        (1, ["shared", _]) => Some(FileScope::JobShared),
        _ => None,
    }
}

impl SnapshotMetadata {
    /// Every file the snapshot references, with the operator and subtask that references it.
    pub fn file_references(&self) -> impl Iterator<Item = (&OperatorSnapshot, u32, &StateFileRef)> {
        self.operators.iter().flat_map(|op| {
            op.subtasks.iter().flat_map(move |s| {
                let keyed = s.keyed.iter().map(|k| &k.file);
                let native = s.native.iter().flat_map(|n| n.files.iter().map(|f| &f.file));
                keyed.chain(native).map(move |f| (op, s.subtask, f))
            })
        })
    }

    /// Refuses a reference outside the snapshot's directory and its job's `shared/` directory.
    pub fn check_file_references(&self, path: &str) -> Result<(), MetadataError> {
        for (op, subtask, file) in self.file_references() {
            if file_scope(&file.path).is_none() {
                return Err(MetadataError::ForeignFile {
                    path: path.to_string(),
                    operator: op.describe(),
                    subtask,
                    file: file.path.clone(),
                });
            }
        }
        Ok(())
    }
}

impl OperatorSnapshot {
    /// `uid 'count' (id …)` or `'Name' (id …)` for messages.
    pub fn describe(&self) -> String {
        match &self.uid {
            Some(uid) => format!("uid '{uid}' (id {})", self.operator_id),
            None => format!("'{}' (id {})", self.name, self.operator_id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorListState {
    pub name: String,
    pub mode: Redistribution,
    pub elements: Vec<serde_bytes::ByteBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("'{path}' is not a Weir snapshot metadata file (unexpected magic number); point -s at a checkpoint or savepoint directory or its _metadata file")]
    BadMagic { path: String },
    #[error("'{path}' has metadata format version {found}, but this Weir reads versions up to {supported}; restore it with the Weir version that wrote it or a newer one")]
    UnsupportedVersion { path: String, found: u32, supported: u32 },
    #[error("'{path}' is truncated ({len} bytes); the snapshot is incomplete or damaged")]
    Truncated { path: String, len: usize },
    #[error("'{path}' is corrupted: checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    ChecksumMismatch { path: String, stored: u32, computed: u32 },
    #[error("'{path}' could not be decoded: {detail}")]
    Decode { path: String, detail: String },
    #[error("snapshot metadata could not be encoded: {0}")]
    Encode(String),
    #[error("'{path}' references the file '{file}' (operator {operator}, subtask {subtask}), which is outside the snapshot's directory and its job's shared/ directory; a snapshot references only its own files. The _metadata is damaged or was not written by Weir: restore from another snapshot")]
    ForeignFile { path: String, operator: String, subtask: u32, file: String },
}

/// Encodes metadata into the bytes of a `_metadata` file.
pub fn encode(meta: &SnapshotMetadata) -> Result<Vec<u8>, MetadataError> {
    let body = rmp_serde::to_vec_named(meta).map_err(|e| MetadataError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 4);
    out.extend_from_slice(&METADATA_MAGIC);
    out.extend_from_slice(&METADATA_VERSION.to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Decodes the bytes of a `_metadata` file; `path` only names the file in errors.
pub fn decode(bytes: &[u8], path: &str) -> Result<SnapshotMetadata, MetadataError> {
    let path_s = || path.to_string();
    if bytes.len() < 8 || bytes[..8] != METADATA_MAGIC {
        if bytes.len() < 8 && METADATA_MAGIC.starts_with(bytes) {
            return Err(MetadataError::Truncated { path: path_s(), len: bytes.len() });
        }
        return Err(MetadataError::BadMagic { path: path_s() });
    }
    if bytes.len() < HEADER_LEN {
        return Err(MetadataError::Truncated { path: path_s(), len: bytes.len() });
    }
    let version = u32::from_be_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version == 0 || version > METADATA_VERSION {
        return Err(MetadataError::UnsupportedVersion { path: path_s(), found: version, supported: METADATA_VERSION });
    }
    let body_len = u64::from_be_bytes(bytes[12..20].try_into().unwrap_or_default());
    let total = (HEADER_LEN as u64).saturating_add(body_len).saturating_add(4);
    if (bytes.len() as u64) < total {
        return Err(MetadataError::Truncated { path: path_s(), len: bytes.len() });
    }
    let end = HEADER_LEN + body_len as usize;
    let stored = u32::from_be_bytes(bytes[end..end + 4].try_into().unwrap_or_default());
    let computed = crc32c::crc32c(&bytes[..end]);
    if stored != computed || bytes.len() as u64 != total {
        return Err(MetadataError::ChecksumMismatch { path: path_s(), stored, computed });
    }
    let meta: SnapshotMetadata = rmp_serde::from_slice(&bytes[HEADER_LEN..end])
        .map_err(|e| MetadataError::Decode { path: path_s(), detail: e.to_string() })?;
    meta.check_file_references(path)?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapshotMetadata {
        SnapshotMetadata {
            checkpoint_id: 7,
            job_id: "ab".repeat(16),
            kind: SnapshotKind::Checkpoint,
            timestamp_ms: 1_700_000_000_000,
            operators: vec![
                OperatorSnapshot {
                    operator_id: OperatorId::from_uid("sum"),
                    uid: Some("sum".into()),
                    name: "Sum".into(),
                    parallelism: 2,
                    max_parallelism: 128,
                    subtasks: vec![SubtaskSnapshot {
                        subtask: 0,
                        keyed: Some(KeyedStateHandle {
                            file: StateFileRef { path: "op-0".into(), size: 100, crc32c: Some(7) },
                            key_groups: KeyGroupRange::inclusive(0, 3),
                            offsets: vec![10, 20, 30, 40],
                        }),
                        operator_lists: vec![],
                        native: None,
                        watermark: Some(1_700_000_000_000),
                    }],
                },
                OperatorSnapshot {
                    operator_id: OperatorId::from_uid("source"),
                    uid: None,
                    name: "Source".into(),
                    parallelism: 1,
                    max_parallelism: 128,
                    subtasks: vec![SubtaskSnapshot {
                        subtask: 0,
                        keyed: None,
                        operator_lists: vec![OperatorListState {
                            name: "offset".into(),
                            mode: Redistribution::Split,
                            elements: vec![serde_bytes::ByteBuf::from(vec![1, 2, 3])],
                        }],
                        native: Some(NativeStateHandle {
                            backend: "rocksdb".into(),
                            key_groups: KeyGroupRange::inclusive(0, 127),
                            states: vec![StateMeta::new("count", StateKind::Value)],
                            files: vec![NativeFile {
                                name: "000009.sst".into(),
                                file: StateFileRef { path: "../shared/abc".into(), size: 4096, crc32c: None },
                                reusable: true,
                                crc32c: Some(0xdead_beef),
                            }],
                        }),
                        watermark: None,
                    }],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = encode(&m).unwrap();
        assert_eq!(&bytes[..8], b"WEIRMETA");
        assert_eq!(decode(&bytes, "x").unwrap(), m);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b, "f").is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(&sample()).unwrap();
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len], "/x/_metadata").unwrap_err();
            assert!(err.to_string().contains("/x/_metadata"), "{err}");
        }
    }

    #[test]
    fn errors_name_the_file_and_the_version() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[11] = 9;
        let err = decode(&bytes, "/sp/_metadata").unwrap_err();
        assert_eq!(
            err,
            MetadataError::UnsupportedVersion { path: "/sp/_metadata".into(), found: 9, supported: METADATA_VERSION }
        );
        assert!(err.to_string().contains("version 9"));
        let err = decode(b"PK\x03\x04 not metadata at all", "/tmp/a.zip").unwrap_err();
        assert!(matches!(err, MetadataError::BadMagic { .. }));
    }

    #[test]
    fn handle_intersection_keeps_offsets_of_the_common_range() {
        let h = KeyedStateHandle {
            file: StateFileRef { path: "f".into(), size: 1, crc32c: None },
            key_groups: KeyGroupRange::inclusive(4, 9),
            offsets: vec![0, 1, 2, 3, 4, 5],
        };
        let i = h.intersection(&KeyGroupRange::inclusive(7, 20)).unwrap();
        assert_eq!(i.key_groups, KeyGroupRange::inclusive(7, 9));
        assert_eq!(i.offsets, vec![3, 4, 5]);
        assert!(h.intersection(&KeyGroupRange::inclusive(10, 12)).is_none());
    }

    #[test]
    fn references_must_stay_in_the_snapshot_or_its_jobs_shared_directory() {
        use FileScope::*;
        for (reference, scope) in [
            ("keyed-1-0", Some(Snapshot)),
            ("./sub/../keyed", Some(Snapshot)),
            ("../shared/abc-000009.sst", Some(JobShared)),
            ("../chk-3/../shared/x", Some(JobShared)),
            ("/etc/passwd", None),
            ("../other-savepoint/keyed-1-0", None),
            ("../shared", None),
            ("../shared/x/y", None),
            ("../../shared/x", None),
            ("..", None),
            ("", None),
            ("sub/..", None),
        ] {
            assert_eq!(file_scope(reference), scope, "{reference}");
        }
        let mut m = sample();
        m.operators[0].subtasks[0].keyed.as_mut().unwrap().file.path = "/home/user/precious".into();
        let err = decode(&encode(&m).unwrap(), "/sp/_metadata").unwrap_err().to_string();
        assert!(err.contains("'/sp/_metadata' references the file '/home/user/precious' (operator uid 'sum'"), "{err}");
    }
}

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A restored state whose kind or namespace is not the declared one.
    #[error("{0}")]
    Incompatible(String),
    #[error("state '{name}' is declared twice with different types in one operator")]
    DuplicateName { name: String },
    #[error("restored state '{name}' (key group {key_group}) cannot be decoded into the job's {what} type: {detail}. The job's state types changed in a way that is not compatible with the snapshot: add new fields with #[serde(default)], or restore with a job version whose types match")]
    Decode { name: String, key_group: u32, what: &'static str, detail: String },
    #[error("restored operator state '{name}' cannot be decoded into the job's type: {detail}")]
    DecodeOperatorState { name: String, detail: String },
    #[error("state file '{path}': {detail}")]
    CorruptFile { path: PathBuf, detail: String },
    #[error("state file '{path}' has format version {found}, but this Weir reads up to {supported}")]
    UnsupportedVersion { path: PathBuf, found: u32, supported: u32 },
    #[error("key in restored state '{name}' belongs to key group {actual} but was stored under {stored}: key hashing changed, which would misroute records")]
    KeyGroupMismatch { name: String, stored: u32, actual: u32 },
    #[error("cannot encode state '{name}': {detail}")]
    Encode { name: String, detail: String },
    #[error("I/O error on state file '{path}': {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("cannot write '{location}': {error}")]
    Storage { location: String, error: std::io::Error },
    /// Writing a snapshot stream failed; the caller names the file.
    #[error("{0}")]
    Write(std::io::Error),
    #[error("record with key group {key_group} reached a subtask owning key groups {owned}")]
    MisroutedKey { key_group: u32, owned: weir_core::KeyGroupRange },
    #[error("{operator}: the snapshot holds keyed state in the {written_by} backend's native format, which the {backend} backend cannot read. Restore it with state.backend.type: {written_by}, or take a canonical savepoint of the job (weir savepoint --type canonical, the default) and restore from that: canonical savepoints restore into any backend")]
    ForeignNativeSnapshot { operator: String, written_by: String, backend: &'static str },
    /// The storage engine of a store backend failed.
    #[error("state backend error: {0}")]
    Backend(String),
}

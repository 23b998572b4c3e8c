//! Identifiers that appear in paths, logs and metadata.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Checkpoint and savepoint ids come from one counter that starts at 1 (digest §1.6).
pub type CheckpointId = u64;

/// The first id a fresh job hands out.
pub const INITIAL_CHECKPOINT_ID: CheckpointId = 1;

/// A job id: 16 random bytes, shown as 32 lowercase hex characters like Flink's `JobID`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub [u8; 16]);

impl JobId {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        JobId(bytes)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn parse(s: &str) -> Option<Self> {
        parse_hex16(s).map(JobId)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.to_hex())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_hex_round_trip() {
        let id = JobId::from_bytes([0xab; 16]);
        assert_eq!(id.to_hex(), "ab".repeat(16));
        assert_eq!(JobId::parse(&id.to_hex()), Some(id));
        assert_eq!(JobId::parse("xyz"), None);
        assert_eq!(JobId::parse(&"zz".repeat(16)), None);
    }
}

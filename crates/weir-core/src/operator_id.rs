//! Operator ids: the stable identity under which an operator's state is stored in a snapshot.
//!
//! With a `uid`, the id is murmur3 x64 128 (seed 0) of the uid's UTF-8 bytes, exactly Flink's
//! (`uid("source-id")` → `bd9c186e89cc37a76d776844dfa8ccba`). Without one, the id is derived from
//! the operator's place in the topology (see [`generated`]), which changes when the topology does.

use crate::ids::{hex, parse_hex16};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperatorId(pub [u8; 16]);

impl OperatorId {
    /// The id of an operator with a user-given uid.
    pub fn from_uid(uid: &str) -> Self {
        OperatorId(murmur3_128(uid.as_bytes()))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn parse(s: &str) -> Option<Self> {
        parse_hex16(s).map(OperatorId)
    }
}

/// murmur3 x64 128 with seed 0, as the 16 bytes Guava's `HashCode.asBytes()` returns
/// (h1 little-endian, then h2 little-endian).
fn murmur3_128(bytes: &[u8]) -> [u8; 16] {
    let mut reader = bytes;
    // Reading from a byte slice cannot fail.
    let value = murmur3::murmur3_x64_128(&mut reader, 0).unwrap_or_default();
    value.to_le_bytes()
}

/// The id of an operator without uid, generated deterministically from the topology.
///
/// Like Flink's `StreamGraphHasherV2`: the hash covers the operator's position in a breadth-first
/// traversal from the sources and the number of its chainable outputs, and is then mixed with the
/// ids of its inputs (`h[j] = h[j] * 37 ^ input[j]`). So it is stable across runs of an unchanged
/// job, and changes when the operator moves in the graph: the reason to set a uid.
pub fn generated(traversal_position: u32, chainable_outputs: u32, inputs: &[OperatorId]) -> OperatorId {
    let mut material = Vec::with_capacity(8 + 4 * chainable_outputs as usize);
    material.extend_from_slice(&traversal_position.to_be_bytes());
    for _ in 0..chainable_outputs {
        material.extend_from_slice(&traversal_position.to_be_bytes());
    }
    let mut h = murmur3_128(&material);
    for input in inputs {
        for (b, i) in h.iter_mut().zip(input.0.iter()) {
            *b = b.wrapping_mul(37) ^ i;
        }
    }
    OperatorId(h)
}

impl fmt::Display for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorId({})", self.to_hex())
    }
}

impl Serialize for OperatorId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for OperatorId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        let arr: [u8; 16] =
            bytes.as_slice().try_into().map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"16 bytes"))?;
        Ok(OperatorId(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_vectors_from_appendix_a() {
        let cases = [
            ("source-id", "bd9c186e89cc37a76d776844dfa8ccba"),
            ("mapper-id", "c9cecfed5cae9d489451c50e442666e3"),
            ("uid1", "56669276f6f08c868fc17f16b2a5b825"),
            ("uid2", "d4503549458e0d15f6fb6adfcecec079"),
            ("my-uid", "8409efe6adc6d20787611f16017c808f"),
            ("a", "897859f6655555855a890e51483ab5e6"),
            ("CheckpointingSource1", "69f32d314b97c6f7f9ed7873983167f2"),
        ];
        for (uid, expected) in cases {
            assert_eq!(OperatorId::from_uid(uid).to_hex(), expected, "uid {uid}");
        }
    }

    #[test]
    fn guava_sanity_vector() {
        assert_eq!(hex(&murmur3_128(b"hell")), "67f8103e694299624753ebba820bdb92");
    }

    #[test]
    fn generated_ids_are_deterministic_and_position_dependent() {
        let src = generated(0, 1, &[]);
        assert_eq!(src, generated(0, 1, &[]));
        assert_ne!(src, generated(1, 1, &[]));
        assert_ne!(src, generated(0, 0, &[]));
        let map = generated(1, 0, &[src]);
        assert_eq!(map, generated(1, 0, &[src]));
        assert_ne!(map, generated(1, 0, &[generated(0, 0, &[])]));
    }

    #[test]
    fn hex_round_trip() {
        let id = OperatorId::from_uid("x");
        assert_eq!(OperatorId::parse(&id.to_hex()), Some(id));
    }
}

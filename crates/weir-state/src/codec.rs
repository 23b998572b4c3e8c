//! How state values become bytes: MessagePack with named fields. Self-describing (a tool can print
//! any state as JSON without the job's types) and tolerant of added fields with defaults and of
//! removed fields. Never depends on memory layout or `std::hash`.

use serde::de::DeserializeOwned;
use serde::Serialize;

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|e| e.to_string())
}

pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    rmp_serde::encode::write_named(out, value).map_err(|e| e.to_string())
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

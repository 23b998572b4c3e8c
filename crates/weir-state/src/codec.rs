//! How state values become bytes: MessagePack with named fields. Self-describing (a tool can print
//! any state as JSON without the job's types) and tolerant of added fields with defaults and of
//! removed fields. Never depends on memory layout or `std::hash`.

use serde::de::{Deserialize, DeserializeOwned};
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

/// Length in bytes of the one MessagePack value at the start of `bytes`. MessagePack values are
/// self-delimiting, which is what lets a backend store a list as its elements back to back and a
/// map entry under `key ++ user key`.
pub fn value_len(bytes: &[u8]) -> Result<usize, String> {
    let mut rest = bytes;
    serde::de::IgnoredAny::deserialize(&mut rmp_serde::Deserializer::new(&mut rest)).map_err(|e| e.to_string())?;
    Ok(bytes.len() - rest.len())
}

/// Splits concatenated MessagePack values.
pub fn split_values(mut bytes: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        Some(value_len(bytes).map(|n| {
            let (v, rest) = bytes.split_at(n);
            bytes = rest;
            v
        }))
    })
}

pub fn write_array_header(n: usize, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_array_len(out, n as u32);
}

pub fn write_map_header(n: usize, out: &mut Vec<u8>) {
    let _ = rmp::encode::write_map_len(out, n as u32);
}

/// Reads an array header; returns the element count and the bytes after the header.
pub fn read_array_header(bytes: &[u8]) -> Result<(usize, &[u8]), String> {
    let mut rest = bytes;
    let n = rmp::decode::read_array_len(&mut rest).map_err(|e| format!("expected a list: {e}"))?;
    Ok((n as usize, rest))
}

/// Reads a map header; returns the entry count and the bytes after the header.
pub fn read_map_header(bytes: &[u8]) -> Result<(usize, &[u8]), String> {
    let mut rest = bytes;
    let n = rmp::decode::read_map_len(&mut rest).map_err(|e| format!("expected a map: {e}"))?;
    Ok((n as usize, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn concatenated_values_split_back() {
        let mut bytes = Vec::new();
        let items = vec!["a".to_string(), "bc".repeat(40), String::new()];
        for i in &items {
            encode_into(i, &mut bytes).unwrap();
        }
        let back: Vec<String> = split_values(&bytes).map(|v| decode(v.unwrap()).unwrap()).collect();
        assert_eq!(back, items);
        let whole = encode(&items).unwrap();
        let (n, rest) = read_array_header(&whole).unwrap();
        assert_eq!((n, rest), (3, bytes.as_slice()));
        let map: BTreeMap<u32, String> = [(1, "x".to_string()), (300, "y".to_string())].into();
        let m = encode(&map).unwrap();
        let (n, rest) = read_map_header(&m).unwrap();
        let parts: Vec<_> = split_values(rest).map(|v| v.unwrap().to_vec()).collect();
        assert_eq!(n, 2);
        assert_eq!(decode::<u32>(&parts[2]).unwrap(), 300);
        assert!(value_len(&[0xdc]).is_err(), "a truncated value is an error");
    }
}

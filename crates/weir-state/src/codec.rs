//! How state values become bytes: MessagePack with named fields. Self-describing (a tool can print
//! any state as JSON without the job's types) and tolerant of added fields with defaults and of
//! removed fields. Never depends on memory layout or `std::hash`.

use rmp::Marker;
use serde::de::{Deserialize, DeserializeOwned};
use serde::Serialize;
use std::any::Any;

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|e| e.to_string())
}

/// Appends `value`'s encoding to `out`. Integers and strings, most keys and counters, are written
/// here, inlined into the caller's loop: through serde, rmp writes each with a call that a
/// snapshot's loop could not inline (over a quarter of writing a heap snapshot in a recorded key
/// order, measured). The bytes are rmp_serde's (`fast_paths_write_what_rmp_serde_writes`).
#[inline(always)]
pub fn encode_into<T: Serialize + 'static>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    let any = value as &dyn Any;
    if let Some(&v) = any.downcast_ref::<u64>() {
        write_uint(v, out);
    } else if let Some(&v) = any.downcast_ref::<u32>() {
        write_uint(v.into(), out);
    } else if let Some(&v) = any.downcast_ref::<i64>() {
        write_sint(v, out);
    } else if let Some(&v) = any.downcast_ref::<i32>() {
        write_sint(v.into(), out);
    } else if let Some(v) = any.downcast_ref::<String>() {
        write_str(v, out)?;
    } else {
        rmp_serde::encode::write_named(out, value).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A MessagePack unsigned integer in its shortest form, as `rmp::encode::write_uint` writes it.
#[inline(always)]
fn write_uint(v: u64, out: &mut Vec<u8>) {
    if v < 128 {
        out.push(v as u8);
    } else if v < 1 << 8 {
        marked(out, Marker::U8, &[v as u8]);
    } else if v < 1 << 16 {
        marked(out, Marker::U16, &(v as u16).to_be_bytes());
    } else if v < 1 << 32 {
        marked(out, Marker::U32, &(v as u32).to_be_bytes());
    } else {
        marked(out, Marker::U64, &v.to_be_bytes());
    }
}

/// A MessagePack signed integer in its shortest form, as `rmp::encode::write_sint` writes it
/// (non-negative values as unsigned ones).
#[inline(always)]
fn write_sint(v: i64, out: &mut Vec<u8>) {
    if v >= 0 {
        write_uint(v as u64, out);
    } else if v >= -32 {
        out.push(v as u8);
    } else if v >= i8::MIN.into() {
        marked(out, Marker::I8, &[v as u8]);
    } else if v >= i16::MIN.into() {
        marked(out, Marker::I16, &(v as i16).to_be_bytes());
    } else if v >= i32::MIN.into() {
        marked(out, Marker::I32, &(v as i32).to_be_bytes());
    } else {
        marked(out, Marker::I64, &v.to_be_bytes());
    }
}

/// A MessagePack string, as `rmp::encode::write_str` writes it.
#[inline(always)]
fn write_str(v: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let len = v.len();
    if len < 32 {
        out.push(Marker::FixStr(len as u8).to_u8());
    } else if len < 1 << 8 {
        marked(out, Marker::Str8, &[len as u8]);
    } else if len < 1 << 16 {
        marked(out, Marker::Str16, &(len as u16).to_be_bytes());
    } else {
        let len = u32::try_from(len).map_err(|_| {
            format!("a string of {len} bytes is longer than MessagePack allows (4 GiB); keep it in smaller pieces")
        })?;
        marked(out, Marker::Str32, &len.to_be_bytes());
    }
    out.extend_from_slice(v.as_bytes());
    Ok(())
}

/// A marker and the bytes that follow it.
#[inline(always)]
fn marked(out: &mut Vec<u8>, marker: Marker, bytes: &[u8]) {
    out.push(marker.to_u8());
    out.extend_from_slice(bytes);
}

/// Reads a value written by [`encode`] or [`encode_into`]. Integers and strings in the forms
/// rmp_serde reads as the same value are read here, inlined into the caller's loop (through serde
/// they took about a third of decoding a restore of 10^7 `u64` counts); anything else, including
/// every input either would refuse, goes to rmp_serde (`fast_paths_read_what_rmp_serde_reads`).
#[inline(always)]
pub fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    let mut read: Option<T> = None;
    let slot = &mut read as &mut dyn Any;
    if let Some(slot) = slot.downcast_mut::<Option<u64>>() {
        *slot = read_uint(bytes);
    } else if let Some(slot) = slot.downcast_mut::<Option<u32>>() {
        *slot = read_uint(bytes).and_then(|v| v.try_into().ok());
    } else if let Some(slot) = slot.downcast_mut::<Option<i64>>() {
        *slot = read_sint(bytes);
    } else if let Some(slot) = slot.downcast_mut::<Option<i32>>() {
        *slot = read_sint(bytes).and_then(|v| v.try_into().ok());
    } else if let Some(slot) = slot.downcast_mut::<Option<String>>() {
        *slot = read_str(bytes);
    }
    match read {
        Some(value) => Ok(value),
        None => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// The unsigned integer `bytes` holds, exactly, in any of MessagePack's unsigned forms.
#[inline(always)]
fn read_uint(bytes: &[u8]) -> Option<u64> {
    let (&marker, rest) = bytes.split_first()?;
    match Marker::from_u8(marker) {
        Marker::FixPos(v) if rest.is_empty() => Some(v.into()),
        Marker::U8 => Some(u8::from_be_bytes(rest.try_into().ok()?).into()),
        Marker::U16 => Some(u16::from_be_bytes(rest.try_into().ok()?).into()),
        Marker::U32 => Some(u32::from_be_bytes(rest.try_into().ok()?).into()),
        Marker::U64 => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// The signed integer `bytes` holds, exactly, in any of MessagePack's integer forms.
#[inline(always)]
fn read_sint(bytes: &[u8]) -> Option<i64> {
    let (&marker, rest) = bytes.split_first()?;
    match Marker::from_u8(marker) {
        Marker::FixNeg(v) if rest.is_empty() => Some(v.into()),
        Marker::I8 => Some(i8::from_be_bytes(rest.try_into().ok()?).into()),
        Marker::I16 => Some(i16::from_be_bytes(rest.try_into().ok()?).into()),
        Marker::I32 => Some(i32::from_be_bytes(rest.try_into().ok()?).into()),
        Marker::I64 => Some(i64::from_be_bytes(rest.try_into().ok()?)),
        _ => read_uint(bytes).and_then(|v| v.try_into().ok()),
    }
}

/// The UTF-8 string `bytes` holds, exactly, in any of MessagePack's string forms.
#[inline(always)]
fn read_str(bytes: &[u8]) -> Option<String> {
    let (&marker, rest) = bytes.split_first()?;
    let (len, text) = match Marker::from_u8(marker) {
        Marker::FixStr(len) => (len.into(), rest),
        Marker::Str8 => (rest.first().copied()?.into(), &rest[1..]),
        Marker::Str16 => (u16::from_be_bytes(rest.get(..2)?.try_into().ok()?).into(), &rest[2..]),
        Marker::Str32 => (u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize, &rest[4..]),
        _ => return None,
    };
    if text.len() != len {
        return None;
    }
    std::str::from_utf8(text).ok().map(str::to_string)
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

    fn as_rmp_serde_writes<T: Serialize + std::fmt::Debug + 'static>(value: T) {
        let mut ours = vec![7];
        encode_into(&value, &mut ours).unwrap();
        let mut theirs = vec![7];
        rmp_serde::encode::write_named(&mut theirs, &value).unwrap();
        assert_eq!(ours, theirs, "{value:?}");
    }

    fn every_integer_type_writes_as_rmp_serde_does(v: i128) {
        if let Ok(v) = u64::try_from(v) {
            as_rmp_serde_writes(v);
        }
        if let Ok(v) = u32::try_from(v) {
            as_rmp_serde_writes(v);
        }
        if let Ok(v) = i64::try_from(v) {
            as_rmp_serde_writes(v);
        }
        if let Ok(v) = i32::try_from(v) {
            as_rmp_serde_writes(v);
        }
        // A type without a fast path is encoded by rmp_serde itself.
        if let Ok(v) = i16::try_from(v) {
            as_rmp_serde_writes((v, f64::from(v)));
        }
    }

    #[test]
    fn fast_paths_write_what_rmp_serde_writes() {
        // At and around every boundary between MessagePack's integer forms, both signs.
        for edge in [0i128, 32, 128, 1 << 7, 1 << 8, 1 << 15, 1 << 16, 1 << 31, 1 << 32, 1 << 63, 1 << 64] {
            for v in (edge - 2..=edge + 2).chain(-edge - 2..=-edge + 2) {
                every_integer_type_writes_as_rmp_serde_does(v);
            }
        }
        // Strings at and around the boundaries between fixstr, str8, str16 and str32.
        for edge in [0usize, 32, 1 << 8, 1 << 16] {
            for len in edge.saturating_sub(2)..=edge + 2 {
                as_rmp_serde_writes("x".repeat(len));
            }
        }
        as_rmp_serde_writes("é".repeat(40));
    }

    proptest::proptest! {
        #[test]
        fn integers_anywhere_write_what_rmp_serde_writes(v in proptest::prelude::any::<i64>(), u in proptest::prelude::any::<u64>()) {
            every_integer_type_writes_as_rmp_serde_does(v.into());
            every_integer_type_writes_as_rmp_serde_does(u.into());
            every_integer_type_writes_as_rmp_serde_does((v >> (u % 64)).into());
        }
    }

    /// What the fast paths read from `bytes` as `T` is what rmp_serde reads: the same value, or
    /// an error from both.
    fn reads_as_rmp_serde_does<T: DeserializeOwned + PartialEq + std::fmt::Debug + 'static>(bytes: &[u8]) {
        let ours = decode::<T>(bytes);
        let theirs = rmp_serde::from_slice::<T>(bytes).map_err(|e| e.to_string());
        assert_eq!(ours, theirs, "{bytes:02x?} as {}", std::any::type_name::<T>());
    }

    fn every_fast_type_reads_as_rmp_serde_does(bytes: &[u8]) {
        reads_as_rmp_serde_does::<u64>(bytes);
        reads_as_rmp_serde_does::<u32>(bytes);
        reads_as_rmp_serde_does::<i64>(bytes);
        reads_as_rmp_serde_does::<i32>(bytes);
        reads_as_rmp_serde_does::<String>(bytes);
    }

    #[test]
    fn fast_paths_read_what_rmp_serde_reads() {
        // Every integer form at and around its boundaries, as written and cut short or extended.
        for edge in [0i128, 32, 128, 1 << 7, 1 << 8, 1 << 15, 1 << 16, 1 << 31, 1 << 32, 1 << 63, 1 << 64] {
            for v in (edge - 2..=edge + 2).chain(-edge - 2..=-edge + 2) {
                let mut written = Vec::new();
                if let Ok(v) = u64::try_from(v) {
                    write_uint(v, &mut written);
                } else if let Ok(v) = i64::try_from(v) {
                    write_sint(v, &mut written);
                } else {
                    continue;
                }
                every_fast_type_reads_as_rmp_serde_does(&written);
                every_fast_type_reads_as_rmp_serde_does(&written[..written.len() - 1]);
                every_fast_type_reads_as_rmp_serde_does(&[&written[..], &[0]].concat());
            }
        }
        // Longer forms than needed, which rmp_serde reads as the same value.
        for bytes in [
            &[0xcc, 5][..],
            &[0xcd, 0, 5],
            &[0xd0, 5],
            &[0xd0, 0xfb],
            &[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
        ] {
            every_fast_type_reads_as_rmp_serde_does(bytes);
        }
        // Strings in every form, cut short or extended, not UTF-8, and other types' markers.
        for edge in [0usize, 32, 1 << 8, 1 << 16] {
            for len in edge.saturating_sub(2)..=edge + 2 {
                let written = encode(&"y".repeat(len)).unwrap();
                every_fast_type_reads_as_rmp_serde_does(&written);
                every_fast_type_reads_as_rmp_serde_does(&written[..written.len() - 1]);
                every_fast_type_reads_as_rmp_serde_does(&[&written[..], b"z"].concat());
            }
        }
        for bytes in [
            &[0xa2, 0xff, 0xfe][..],
            &[0xd9, 1, b'a'],
            &[0xc4, 1, b'a'],
            &[0xc0],
            &[0xc3],
            &[0xcb, 0, 0, 0, 0, 0, 0, 0, 0],
            &[],
        ] {
            every_fast_type_reads_as_rmp_serde_does(bytes);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_read_as_rmp_serde_reads_them(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)) {
            every_fast_type_reads_as_rmp_serde_does(&bytes);
        }
    }

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

//! A small sorted map in a vector: what the heap backend keeps per key for namespaced state (a
//! key's open windows: one or a few). Lookups scan a handful of entries and a read-modify-write
//! moves the value out and back without allocating, where a `BTreeMap` would search and rebalance
//! nodes. It is encoded exactly like a `BTreeMap` (a MessagePack map ordered by key), so the
//! canonical format does not depend on it.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn position(&self, key: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.position(key).ok().map(|i| &self.0[i].1)
    }

    /// Replaces the value under `key` with `f(old)`; `None` removes it.
    #[inline]
    pub fn compute(&mut self, key: K, f: impl FnOnce(Option<V>) -> Option<V>) {
        match self.position(&key) {
            Ok(i) => {
                let (key, old) = self.0.remove(i);
                if let Some(new) = f(Some(old)) {
                    self.0.insert(i, (key, new));
                }
            }
            Err(i) => {
                if let Some(new) = f(None) {
                    self.0.insert(i, (key, new));
                }
            }
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.position(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Serialize, V: Serialize> Serialize for VecMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Deserialize<'de> for VecMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(PhantomData<fn() -> (K, V)>);
        impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for Entries<K, V> {
            type Value = VecMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(K, V)> = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                entries.dedup_by(|a, b| a.0 == b.0);
                Ok(VecMap(entries))
            }
        }
        deserializer.deserialize_map(Entries(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn encodes_like_a_btree_map_and_keeps_order() {
        let mut m: VecMap<i64, String> = VecMap::default();
        for k in [30, 10, 20] {
            m.compute(k, |_| Some(format!("v{k}")));
        }
        m.compute(20, |old| old.map(|v| v + "!"));
        m.compute(30, |_| None);
        let b: BTreeMap<i64, String> = [(10, "v10".to_string()), (20, "v20!".to_string())].into_iter().collect();
        assert_eq!(crate::codec::encode(&m).unwrap(), crate::codec::encode(&b).unwrap());
        let back: VecMap<i64, String> = crate::codec::decode(&crate::codec::encode(&b).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.get(&20).map(String::as_str), Some("v20!"));
        assert_eq!(m.remove(&10).as_deref(), Some("v10"));
        assert!(!m.is_empty());
    }
}

//! One key group's entries of one state: a hash table of `(key, value)` looked up by a hash the
//! current key's scope computed once, so a record that reads and then writes its state (`value()`
//! then `update()`) hashes its key once.
//!
//! The hash is `FxHash` of the key's `std::hash::Hash`: in memory only, never persisted (key
//! groups use [`weir_core::key_group::KeyHash`]).

use hashbrown::HashTable;
use std::hash::{BuildHasher, Hash};
use weir_core::key_group::KeyHash;

#[derive(Clone)]
pub(crate) struct KeyMap<K, V> {
    table: HashTable<(K, V)>,
}

impl<K, V> Default for KeyMap<K, V> {
    fn default() -> Self {
        KeyMap { table: HashTable::new() }
    }
}

/// The in-memory hash of a key, computed once per record.
#[inline]
pub(crate) fn hash_key<K: Hash + ?Sized>(key: &K) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(key)
}

impl<K: Hash + Eq + KeyHash, V> KeyMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.table.iter().map(|(k, v)| (k, v))
    }

    /// The value of `key`, whose hash is `hash`.
    #[inline]
    pub(crate) fn get(&self, hash: u64, key: &K) -> Option<&V> {
        self.table.find(hash, |(k, _)| k.same_key(key)).map(|(_, v)| v)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, hash: u64, key: &K) -> Option<&mut V> {
        self.table.find_mut(hash, |(k, _)| k.same_key(key)).map(|(_, v)| v)
    }

    /// The value of `key`, inserted with `init` when it has none; and whether it was inserted.
    #[inline]
    pub(crate) fn get_or_insert_with(&mut self, hash: u64, key: &K, init: impl FnOnce() -> V) -> (&mut V, bool)
    where
        K: Clone,
    {
        match self.table.entry(hash, |(k, _)| k.same_key(key), |(k, _)| hash_key(k)) {
            hashbrown::hash_table::Entry::Occupied(found) => (&mut found.into_mut().1, false),
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                (&mut vacant.insert((key.clone(), init())).into_mut().1, true)
            }
        }
    }

    /// Inserts `key`, which must not be in the map yet.
    #[inline]
    pub(crate) fn insert_new(&mut self, hash: u64, key: K, value: V) {
        self.table.insert_unique(hash, (key, value), |(k, _)| hash_key(k));
    }

    /// Inserts or replaces; for restores, which have no hash at hand.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        let hash = hash_key(&key);
        match self.get_mut(hash, &key) {
            Some(v) => *v = value,
            None => self.insert_new(hash, key, value),
        }
    }

    pub(crate) fn remove(&mut self, hash: u64, key: &K) -> Option<V> {
        let entry = self.table.find_entry(hash, |(k, _)| k.same_key(key)).ok()?;
        Some(entry.remove().0 .1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_their_hash_through_growth_and_removal() {
        let mut map = KeyMap::<String, u32>::default();
        for i in 0..1000 {
            let k = format!("k{i}");
            *map.get_or_insert_with(hash_key(&k), &k, || 0).0 += i;
        }
        map.insert("k7".to_string(), 70);
        assert_eq!(map.len(), 1000);
        assert_eq!(map.get(hash_key("k7"), &"k7".to_string()), Some(&70));
        assert_eq!(map.remove(hash_key("k8"), &"k8".to_string()), Some(8));
        assert_eq!(map.get(hash_key("k8"), &"k8".to_string()), None);
        assert_eq!(map.iter().map(|(_, v)| *v as u64).sum::<u64>(), (0..1000u64).sum::<u64>() - 7 - 8 + 70);
    }
}

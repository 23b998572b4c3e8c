//! The per-key operations of every state kind, as one trait that each backend implements once.
//! The state handles (`descriptors`) are written against it, so a new state kind (or a namespace
//! per key) is added once per backend instead of in every handle method. `Scope` dispatches to
//! the backend behind a [`crate::KeyScope`].

use crate::backend::Scope;
use crate::descriptors::{Key, StateData};
use crate::error::StateError;
use crate::heap::HeapScope;
use crate::serialized::SerializedScope;
use crate::vec_map::VecMap;
use std::collections::BTreeMap;

/// The current key's state in one backend, by declared slot.
pub(crate) trait KeyedOps {
    fn value_get<T: StateData>(&mut self, slot: usize) -> Result<Option<T>, StateError>;
    fn value_set<T: StateData>(&mut self, slot: usize, value: T) -> Result<(), StateError>;
    /// Deletes the current key's entry of a slot whose stored type is `S` (the heap keeps typed
    /// tables; the rocksdb backend deletes rows whatever their type).
    fn clear<S: StateData>(&mut self, slot: usize) -> Result<(), StateError>;
    fn list_get<T: StateData>(&mut self, slot: usize) -> Result<Vec<T>, StateError>;
    fn list_add<T: StateData>(&mut self, slot: usize, value: T) -> Result<(), StateError>;
    /// Replaces a non-empty list.
    fn list_set<T: StateData>(&mut self, slot: usize, values: Vec<T>) -> Result<(), StateError>;
    fn map_get<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize, key: &UK) -> Result<Option<UV>, StateError>;
    fn map_put<UK: StateData + Ord, UV: StateData>(
        &mut self,
        slot: usize,
        key: UK,
        value: UV,
    ) -> Result<(), StateError>;
    fn map_remove<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize, key: &UK) -> Result<(), StateError>;
    /// All entries, ordered by user key.
    fn map_entries<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize) -> Result<Vec<(UK, UV)>, StateError>;
    fn map_clear<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize) -> Result<(), StateError>;
    /// Combines `value` into the state with the slot's reduce function; returns the result.
    fn reduce_add<T: StateData>(&mut self, slot: usize, value: T) -> Result<T, StateError>;
    /// Registers (`add`) or deletes a timer of the current key in timer queue `queue`.
    fn change_timer(&mut self, queue: usize, timestamp: i64, namespace: &[u8], add: bool) -> Result<(), StateError>;
    fn namespace_get<N: StateData + Ord, V: StateData>(&mut self, slot: usize, ns: &N)
        -> Result<Option<V>, StateError>;
    /// Replaces the value in namespace `ns` with `f(old)`; `None` removes it.
    fn namespace_compute<N: StateData + Ord, V: StateData, F: FnOnce(Option<V>) -> Option<V>>(
        &mut self,
        slot: usize,
        ns: N,
        f: F,
    ) -> Result<(), StateError>;
    fn namespace_remove<N: StateData + Ord, V: StateData>(&mut self, slot: usize, ns: &N) -> Result<(), StateError>;
}

impl<K: Key> KeyedOps for HeapScope<'_, K> {
    #[inline]
    fn value_get<T: StateData>(&mut self, slot: usize) -> Result<Option<T>, StateError> {
        Ok(self.get::<T>(slot).cloned())
    }
    #[inline]
    fn value_set<T: StateData>(&mut self, slot: usize, value: T) -> Result<(), StateError> {
        self.put(slot, value);
        Ok(())
    }
    fn clear<S: StateData>(&mut self, slot: usize) -> Result<(), StateError> {
        self.remove::<S>(slot);
        Ok(())
    }
    fn list_get<T: StateData>(&mut self, slot: usize) -> Result<Vec<T>, StateError> {
        Ok(self.get::<Vec<T>>(slot).cloned().unwrap_or_default())
    }
    fn list_add<T: StateData>(&mut self, slot: usize, value: T) -> Result<(), StateError> {
        self.entry::<Vec<T>>(slot, Vec::new).push(value);
        Ok(())
    }
    fn list_set<T: StateData>(&mut self, slot: usize, values: Vec<T>) -> Result<(), StateError> {
        self.put(slot, values);
        Ok(())
    }
    fn map_get<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize, key: &UK) -> Result<Option<UV>, StateError> {
        Ok(self.get::<BTreeMap<UK, UV>>(slot).and_then(|m| m.get(key)).cloned())
    }
    fn map_put<UK: StateData + Ord, UV: StateData>(
        &mut self,
        slot: usize,
        key: UK,
        value: UV,
    ) -> Result<(), StateError> {
        self.entry::<BTreeMap<UK, UV>>(slot, BTreeMap::new).insert(key, value);
        Ok(())
    }
    fn map_remove<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize, key: &UK) -> Result<(), StateError> {
        if self.get::<BTreeMap<UK, UV>>(slot).is_some_and(|m| m.contains_key(key)) {
            let map = self.entry::<BTreeMap<UK, UV>>(slot, BTreeMap::new);
            map.remove(key);
            if map.is_empty() {
                self.remove::<BTreeMap<UK, UV>>(slot);
            }
        }
        Ok(())
    }
    fn map_entries<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize) -> Result<Vec<(UK, UV)>, StateError> {
        Ok(self
            .get::<BTreeMap<UK, UV>>(slot)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }
    fn map_clear<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize) -> Result<(), StateError> {
        self.remove::<BTreeMap<UK, UV>>(slot);
        Ok(())
    }
    fn reduce_add<T: StateData>(&mut self, slot: usize, value: T) -> Result<T, StateError> {
        let reduce = self.reduce_fn::<T>(slot);
        let mut value = Some(value);
        let stored = self.entry::<T>(slot, || value.take().unwrap_or_else(|| unreachable!()));
        if let (Some(v), Some(reduce)) = (value, reduce) {
            *stored = reduce(stored, &v);
        }
        Ok(stored.clone())
    }
    fn namespace_get<N: StateData + Ord, V: StateData>(
        &mut self,
        slot: usize,
        ns: &N,
    ) -> Result<Option<V>, StateError> {
        Ok(self.get::<VecMap<N, V>>(slot).and_then(|m| m.get(ns)).cloned())
    }
    fn namespace_compute<N: StateData + Ord, V: StateData, F: FnOnce(Option<V>) -> Option<V>>(
        &mut self,
        slot: usize,
        ns: N,
        f: F,
    ) -> Result<(), StateError> {
        self.update_namespaces::<N, V>(slot, |m| m.compute(ns, f));
        Ok(())
    }
    fn namespace_remove<N: StateData + Ord, V: StateData>(&mut self, slot: usize, ns: &N) -> Result<(), StateError> {
        if self.get::<VecMap<N, V>>(slot).is_some_and(|m| m.get(ns).is_some()) {
            self.update_namespaces::<N, V>(slot, |m| {
                m.remove(ns);
            });
        }
        Ok(())
    }
    fn change_timer(&mut self, queue: usize, timestamp: i64, namespace: &[u8], add: bool) -> Result<(), StateError> {
        let (timer, kg) = (self.timer(timestamp, namespace)?, self.key_group());
        if add {
            self.timers().register(queue, kg, timer);
        } else {
            self.timers().delete(queue, kg, &timer);
        }
        Ok(())
    }
}

impl<K: Key> KeyedOps for SerializedScope<'_, K> {
    fn value_get<T: StateData>(&mut self, slot: usize) -> Result<Option<T>, StateError> {
        self.get(slot)
    }
    fn value_set<T: StateData>(&mut self, slot: usize, value: T) -> Result<(), StateError> {
        self.put(slot, &value)
    }
    fn clear<S: StateData>(&mut self, slot: usize) -> Result<(), StateError> {
        self.delete(slot)
    }
    fn list_get<T: StateData>(&mut self, slot: usize) -> Result<Vec<T>, StateError> {
        SerializedScope::list_get(self, slot)
    }
    fn list_add<T: StateData>(&mut self, slot: usize, value: T) -> Result<(), StateError> {
        SerializedScope::list_add(self, slot, &value)
    }
    fn list_set<T: StateData>(&mut self, slot: usize, values: Vec<T>) -> Result<(), StateError> {
        self.list_update(slot, &values)
    }
    fn map_get<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize, key: &UK) -> Result<Option<UV>, StateError> {
        SerializedScope::map_get(self, slot, key)
    }
    fn map_put<UK: StateData + Ord, UV: StateData>(
        &mut self,
        slot: usize,
        key: UK,
        value: UV,
    ) -> Result<(), StateError> {
        SerializedScope::map_put(self, slot, &key, &value)
    }
    fn map_remove<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize, key: &UK) -> Result<(), StateError> {
        SerializedScope::map_remove(self, slot, key)
    }
    fn map_entries<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize) -> Result<Vec<(UK, UV)>, StateError> {
        let mut entries = SerializedScope::map_entries::<UK, UV>(self, slot)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }
    fn map_clear<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize) -> Result<(), StateError> {
        SerializedScope::map_clear(self, slot)
    }
    fn reduce_add<T: StateData>(&mut self, slot: usize, value: T) -> Result<T, StateError> {
        self.reducing_add(slot, value)
    }
    fn change_timer(&mut self, queue: usize, timestamp: i64, namespace: &[u8], add: bool) -> Result<(), StateError> {
        SerializedScope::change_timer(self, queue, timestamp, namespace, add)
    }
    fn namespace_get<N: StateData + Ord, V: StateData>(
        &mut self,
        slot: usize,
        ns: &N,
    ) -> Result<Option<V>, StateError> {
        SerializedScope::map_get(self, slot, ns)
    }
    fn namespace_compute<N: StateData + Ord, V: StateData, F: FnOnce(Option<V>) -> Option<V>>(
        &mut self,
        slot: usize,
        ns: N,
        f: F,
    ) -> Result<(), StateError> {
        let old = SerializedScope::map_get::<N, V>(self, slot, &ns)?;
        match f(old) {
            Some(v) => SerializedScope::map_put(self, slot, &ns, &v),
            None => SerializedScope::map_remove(self, slot, &ns),
        }
    }
    fn namespace_remove<N: StateData + Ord, V: StateData>(&mut self, slot: usize, ns: &N) -> Result<(), StateError> {
        SerializedScope::map_remove(self, slot, ns)
    }
}

/// Dispatches to the backend behind the scope: the one place that knows there are two.
macro_rules! dispatch {
    ($self:ident, $method:ident::<$($g:ty),+>($($arg:expr),*)) => {
        match $self {
            Scope::Heap(h) => KeyedOps::$method::<$($g),+>(h, $($arg),*),
            Scope::Serialized(s) => KeyedOps::$method::<$($g),+>(s, $($arg),*),
        }
    };
}

impl<K: Key> KeyedOps for Scope<'_, K> {
    #[inline]
    fn value_get<T: StateData>(&mut self, slot: usize) -> Result<Option<T>, StateError> {
        dispatch!(self, value_get::<T>(slot))
    }
    #[inline]
    fn value_set<T: StateData>(&mut self, slot: usize, value: T) -> Result<(), StateError> {
        dispatch!(self, value_set::<T>(slot, value))
    }
    fn clear<S: StateData>(&mut self, slot: usize) -> Result<(), StateError> {
        dispatch!(self, clear::<S>(slot))
    }
    fn list_get<T: StateData>(&mut self, slot: usize) -> Result<Vec<T>, StateError> {
        dispatch!(self, list_get::<T>(slot))
    }
    fn list_add<T: StateData>(&mut self, slot: usize, value: T) -> Result<(), StateError> {
        dispatch!(self, list_add::<T>(slot, value))
    }
    fn list_set<T: StateData>(&mut self, slot: usize, values: Vec<T>) -> Result<(), StateError> {
        dispatch!(self, list_set::<T>(slot, values))
    }
    fn map_get<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize, key: &UK) -> Result<Option<UV>, StateError> {
        dispatch!(self, map_get::<UK, UV>(slot, key))
    }
    fn map_put<UK: StateData + Ord, UV: StateData>(
        &mut self,
        slot: usize,
        key: UK,
        value: UV,
    ) -> Result<(), StateError> {
        dispatch!(self, map_put::<UK, UV>(slot, key, value))
    }
    fn map_remove<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize, key: &UK) -> Result<(), StateError> {
        dispatch!(self, map_remove::<UK, UV>(slot, key))
    }
    fn map_entries<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize) -> Result<Vec<(UK, UV)>, StateError> {
        dispatch!(self, map_entries::<UK, UV>(slot))
    }
    fn map_clear<UK: StateData + Ord, UV: StateData>(&mut self, slot: usize) -> Result<(), StateError> {
        dispatch!(self, map_clear::<UK, UV>(slot))
    }
    fn reduce_add<T: StateData>(&mut self, slot: usize, value: T) -> Result<T, StateError> {
        dispatch!(self, reduce_add::<T>(slot, value))
    }
    fn change_timer(&mut self, queue: usize, timestamp: i64, namespace: &[u8], add: bool) -> Result<(), StateError> {
        match self {
            Scope::Heap(h) => h.change_timer(queue, timestamp, namespace, add),
            Scope::Serialized(s) => KeyedOps::change_timer(s, queue, timestamp, namespace, add),
        }
    }
    fn namespace_get<N: StateData + Ord, V: StateData>(
        &mut self,
        slot: usize,
        ns: &N,
    ) -> Result<Option<V>, StateError> {
        dispatch!(self, namespace_get::<N, V>(slot, ns))
    }
    fn namespace_compute<N: StateData + Ord, V: StateData, F: FnOnce(Option<V>) -> Option<V>>(
        &mut self,
        slot: usize,
        ns: N,
        f: F,
    ) -> Result<(), StateError> {
        dispatch!(self, namespace_compute::<N, V, F>(slot, ns, f))
    }
    fn namespace_remove<N: StateData + Ord, V: StateData>(&mut self, slot: usize, ns: &N) -> Result<(), StateError> {
        dispatch!(self, namespace_remove::<N, V>(slot, ns))
    }
}

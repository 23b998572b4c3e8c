//! How operators declare keyed state (descriptors) and use it (handles), whatever the backend.
//!
//! A handle is a plain slot number, so it is `Copy` and costs nothing to keep in a function. Its
//! methods take the current key's [`KeyScope`] and return owned values, as Flink's state
//! interfaces do: the heap backend clones, the rocksdb backend decodes. Every method returns a
//! `Result`, because a backend on disk can fail where a hash map cannot.

use crate::backend::KeyScope;
use crate::error::StateError;
use crate::scope_ops::KeyedOps;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use weir_core::KeyHash;

/// What a key must be: stably hashable into a key group ([`KeyHash`]), serializable for
/// snapshots, and usable in an in-memory hash map.
pub trait Key: KeyHash + Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + Debug + 'static {}
impl<T: KeyHash + Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + Debug + 'static> Key for T {}

/// What a state value must be.
pub trait StateData: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> StateData for T {}

pub(crate) type ReduceFn<T> = Arc<dyn Fn(&T, &T) -> T + Send + Sync>;

/// A handle to a declared state: its slot in the backend, typed.
macro_rules! handle {
    ($(#[$doc:meta])* $handle:ident, [$($g:ident),+]) => {
        $(#[$doc])*
        pub struct $handle<$($g),+> {
            pub(crate) slot: usize,
            _types: PhantomData<fn() -> ($($g,)+)>,
        }

        impl<$($g),+> $handle<$($g),+> {
            pub(crate) fn at(slot: usize) -> Self {
                $handle { slot, _types: PhantomData }
            }
        }

        impl<$($g),+> Clone for $handle<$($g),+> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($g),+> Copy for $handle<$($g),+> {}
    };
}

macro_rules! descriptor {
    ($(#[$doc:meta])* $desc:ident, $handle:ident, [$($g:ident),+]) => {
        $(#[$doc])*
        pub struct $desc<$($g),+> {
            pub(crate) name: String,
            _types: PhantomData<fn() -> ($($g,)+)>,
        }

        impl<$($g),+> $desc<$($g),+> {
            pub fn new(name: impl Into<String>) -> Self {
                $desc { name: name.into(), _types: PhantomData }
            }
            pub fn name(&self) -> &str {
                &self.name
            }
        }

        handle!(
            /// Handle to a declared state; use it with the current key's [`KeyScope`].
            $handle, [$($g),+]
        );
    };
}

descriptor!(
    /// Declares a keyed value state: one `T` per key.
    ValueStateDescriptor, ValueState, [T]
);
descriptor!(
    /// Declares a keyed list state: a list of `T` per key.
    ListStateDescriptor, ListState, [T]
);
descriptor!(
    /// Declares a keyed map state: a map `UK → UV` per key.
    MapStateDescriptor, MapState, [UK, UV]
);

handle!(
    /// Handle to a declared reducing state.
    ReducingState, [T]
);
handle!(
    /// Handle to a namespaced state: one `V` per key and namespace `N` (a window operator's
    /// contents, per window), declared with `KeyedStateBackend::namespaced_state`.
    NamespacedState, [N, V]
);

/// Declares a keyed reducing state: one `T` per key, combined with `reduce` on every `add`.
pub struct ReducingStateDescriptor<T> {
    pub(crate) name: String,
    pub(crate) reduce: ReduceFn<T>,
}

impl<T> ReducingStateDescriptor<T> {
    pub fn new(name: impl Into<String>, reduce: impl Fn(&T, &T) -> T + Send + Sync + 'static) -> Self {
        ReducingStateDescriptor { name: name.into(), reduce: Arc::new(reduce) }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T: StateData> ValueState<T> {
    /// The current key's value.
    #[inline]
    pub fn value<K: Key>(&self, scope: &mut KeyScope<'_, K>) -> Result<Option<T>, StateError> {
        scope.inner.value_get(self.slot)
    }
    #[inline]
    pub fn update<K: Key>(&self, scope: &mut KeyScope<'_, K>, value: T) -> Result<(), StateError> {
        scope.inner.value_set(self.slot, value)
    }
    pub fn clear<K: Key>(&self, scope: &mut KeyScope<'_, K>) -> Result<(), StateError> {
        scope.inner.clear::<T>(self.slot)
    }
}

impl<T: StateData> ListState<T> {
    /// The current key's list (empty when it has none).
    pub fn get<K: Key>(&self, scope: &mut KeyScope<'_, K>) -> Result<Vec<T>, StateError> {
        scope.inner.list_get(self.slot)
    }
    /// Appends to the list. The rocksdb backend appends without reading the list.
    pub fn add<K: Key>(&self, scope: &mut KeyScope<'_, K>, value: T) -> Result<(), StateError> {
        scope.inner.list_add(self.slot, value)
    }
    /// Replaces the list; an empty list clears it.
    pub fn update<K: Key>(&self, scope: &mut KeyScope<'_, K>, values: Vec<T>) -> Result<(), StateError> {
        if values.is_empty() {
            return self.clear(scope);
        }
        scope.inner.list_set(self.slot, values)
    }
    pub fn clear<K: Key>(&self, scope: &mut KeyScope<'_, K>) -> Result<(), StateError> {
        scope.inner.clear::<Vec<T>>(self.slot)
    }
}

impl<UK: StateData + Ord, UV: StateData> MapState<UK, UV> {
    pub fn get<K: Key>(&self, scope: &mut KeyScope<'_, K>, user_key: &UK) -> Result<Option<UV>, StateError> {
        scope.inner.map_get(self.slot, user_key)
    }
    pub fn contains<K: Key>(&self, scope: &mut KeyScope<'_, K>, user_key: &UK) -> Result<bool, StateError> {
        Ok(self.get(scope, user_key)?.is_some())
    }
    pub fn put<K: Key>(&self, scope: &mut KeyScope<'_, K>, user_key: UK, value: UV) -> Result<(), StateError> {
        scope.inner.map_put(self.slot, user_key, value)
    }
    pub fn remove<K: Key>(&self, scope: &mut KeyScope<'_, K>, user_key: &UK) -> Result<(), StateError> {
        scope.inner.map_remove::<UK, UV>(self.slot, user_key)
    }
    /// All entries of the current key's map, ordered by user key.
    pub fn entries<K: Key>(&self, scope: &mut KeyScope<'_, K>) -> Result<Vec<(UK, UV)>, StateError> {
        scope.inner.map_entries(self.slot)
    }
    pub fn clear<K: Key>(&self, scope: &mut KeyScope<'_, K>) -> Result<(), StateError> {
        scope.inner.map_clear::<UK, UV>(self.slot)
    }
}

impl<N: StateData + Ord, V: StateData> NamespacedState<N, V> {
    pub fn get<K: Key>(&self, scope: &mut KeyScope<'_, K>, namespace: &N) -> Result<Option<V>, StateError> {
        scope.inner.namespace_get(self.slot, namespace)
    }
    /// Replaces the value in `namespace` with `f(old value)`; `None` removes it. The heap backend
    /// moves the value, it does not copy it.
    pub fn compute<K: Key>(
        &self,
        scope: &mut KeyScope<'_, K>,
        namespace: N,
        f: impl FnOnce(Option<V>) -> Option<V>,
    ) -> Result<(), StateError> {
        scope.inner.namespace_compute(self.slot, namespace, f)
    }
    pub fn remove<K: Key>(&self, scope: &mut KeyScope<'_, K>, namespace: &N) -> Result<(), StateError> {
        scope.inner.namespace_remove::<N, V>(self.slot, namespace)
    }
}

impl<T: StateData> ReducingState<T> {
    pub fn get<K: Key>(&self, scope: &mut KeyScope<'_, K>) -> Result<Option<T>, StateError> {
        scope.inner.value_get(self.slot)
    }
    /// Combines `value` into the state with the descriptor's reduce function; returns the result.
    pub fn add<K: Key>(&self, scope: &mut KeyScope<'_, K>, value: T) -> Result<T, StateError> {
        scope.inner.reduce_add(self.slot, value)
    }
    pub fn clear<K: Key>(&self, scope: &mut KeyScope<'_, K>) -> Result<(), StateError> {
        scope.inner.clear::<T>(self.slot)
    }
}

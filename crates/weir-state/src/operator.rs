//! Operator (non-keyed) list state, used by sources (offsets) and sinks (pending transactions).
//! Each state is a named list whose elements are redistributed on rescale by its mode (split,
//! union, broadcast; see `weir_core::assignment`).

use crate::codec;
use crate::error::StateError;
use crate::StateData;
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use weir_core::metadata::{OperatorListState, Redistribution};

/// What an operator subtask restored.
#[derive(Debug, Default, Clone)]
pub struct OperatorStateStore {
    restored: BTreeMap<String, OperatorListState>,
    was_restored: bool,
}

impl OperatorStateStore {
    pub fn new(lists: Vec<OperatorListState>, was_restored: bool) -> Self {
        OperatorStateStore { restored: lists.into_iter().map(|l| (l.name.clone(), l)).collect(), was_restored }
    }

    /// True when the job started from a snapshot (even if this operator had no state in it).
    pub fn is_restored(&self) -> bool {
        self.was_restored
    }

    /// Whether the snapshot held list `name` for this operator (even with no element for this
    /// subtask): tells a subtask that got no share after a rescale from an operator that had no
    /// state.
    pub fn has_list(&self, name: &str) -> bool {
        self.restored.contains_key(name)
    }

    /// The restored elements of list `name` (empty when there are none).
    pub fn list<T: StateData>(&self, name: &str) -> Result<Vec<T>, StateError> {
        let Some(list) = self.restored.get(name) else {
            return Ok(Vec::new());
        };
        list.elements
            .iter()
            .map(|b| {
                codec::decode(b).map_err(|detail| StateError::DecodeOperatorState { name: name.to_string(), detail })
            })
            .collect()
    }
}

/// Operator list states captured by one operator subtask at a barrier.
#[derive(Debug, Default, Clone)]
pub struct OperatorStateSnapshot {
    lists: Vec<OperatorListState>,
}

impl OperatorStateSnapshot {
    pub fn put_list<T: StateData>(&mut self, name: &str, mode: Redistribution, items: &[T]) -> Result<(), StateError> {
        let elements = items
            .iter()
            .map(|i| codec::encode(i).map(ByteBuf::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|detail| StateError::Encode { name: name.to_string(), detail })?;
        self.lists.retain(|l| l.name != name);
        self.lists.push(OperatorListState { name: name.to_string(), mode, elements });
        Ok(())
    }

    pub fn into_lists(self) -> Vec<OperatorListState> {
        self.lists
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_restore() {
        let mut s = OperatorStateSnapshot::default();
        s.put_list("offset", Redistribution::Split, &[42u64]).unwrap();
        let store = OperatorStateStore::new(s.into_lists(), true);
        assert_eq!(store.list::<u64>("offset").unwrap(), vec![42]);
        assert!(store.list::<u64>("missing").unwrap().is_empty());
        assert!(store.list::<String>("offset").is_err());
    }
}

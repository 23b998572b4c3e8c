//! The shared-state registry: which retained snapshots reference each reusable file, so that a
//! file is deleted exactly when the last snapshot referencing it goes (Flink's
//! `SharedStateRegistry`, digest §4.1).
//!
//! Incremental checkpoints reference data files uploaded by earlier checkpoints instead of
//! uploading them again, so deleting a subsumed checkpoint's directory is not enough and not
//! safe: its files may still be needed. Files registered by a snapshot the job does not own (a
//! NO_CLAIM restore) are never deleted, whoever else references them; nor are protected files
//! (those of snapshots next to a CLAIMed one, which the claim does not take over).

use crate::CheckpointId;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
struct Entry {
    refs: BTreeSet<CheckpointId>,
    deletable: bool,
}

#[derive(Debug, Clone)]
pub struct SharedStateRegistry<F: Ord + Clone> {
    files: BTreeMap<F, Entry>,
    protected: BTreeSet<F>,
}

impl<F: Ord + Clone> Default for SharedStateRegistry<F> {
    fn default() -> Self {
        SharedStateRegistry { files: BTreeMap::new(), protected: BTreeSet::new() }
    }
}

impl<F: Ord + Clone> SharedStateRegistry<F> {
    /// Records that snapshot `id` references `files`. `owned` is false for a snapshot whose files
    /// belong to the user (NO_CLAIM): those files stay forever, even once unreferenced.
    pub fn register(&mut self, id: CheckpointId, files: impl IntoIterator<Item = F>, owned: bool) {
        for f in files {
            let e = self.files.entry(f).or_insert_with(|| Entry { refs: BTreeSet::new(), deletable: true });
            e.refs.insert(id);
            e.deletable &= owned;
        }
    }

    /// `files` belong to snapshots the job does not own: never deleted, whoever references them.
    pub fn protect(&mut self, files: impl IntoIterator<Item = F>) {
        self.protected.extend(files);
    }

    /// Snapshot `id` is gone (subsumed, aborted or discarded): returns the files nothing references
    /// any more and that may be deleted.
    pub fn release(&mut self, id: CheckpointId) -> Vec<F> {
        let mut unused = Vec::new();
        self.files.retain(|f, e| {
            e.refs.remove(&id);
            if !e.refs.is_empty() {
                return true;
            }
            if e.deletable && !self.protected.contains(f) {
                unused.push(f.clone());
            }
            false
        });
        unused
    }

    /// Whether a snapshot other than `except` still references `file`.
    pub fn is_referenced_by_other(&self, file: &F, except: CheckpointId) -> bool {
        self.files.get(file).is_some_and(|e| e.refs.iter().any(|&id| id != except))
    }

    /// Whether any retained snapshot references `file`, or it is protected.
    pub fn contains(&self, file: &F) -> bool {
        self.files.contains_key(file) || self.protected.contains(file)
    }

    /// Every registered or protected file.
    pub fn files(&self) -> impl Iterator<Item = &F> {
        self.files.keys().chain(self.protected.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_goes_with_the_last_snapshot_that_references_it() {
        let mut r = SharedStateRegistry::default();
        r.register(1, ["a", "b"], true);
        r.register(2, ["b", "c"], true);
        assert_eq!(r.release(1), vec!["a"]);
        assert!(r.is_referenced_by_other(&"b", 3));
        r.register(3, ["c", "d"], true);
        assert_eq!(r.release(2), vec!["b"]);
        assert_eq!(r.release(3), vec!["c", "d"]);
        assert_eq!(r.files().count(), 0);
    }

    #[test]
    fn files_of_an_unowned_snapshot_are_never_deleted() {
        let mut r = SharedStateRegistry::default();
        r.register(5, ["restored"], false);
        r.register(6, ["restored", "new"], true);
        assert!(r.release(5).is_empty());
        assert_eq!(r.release(6), vec!["new"]);
    }

    #[test]
    fn protected_files_outlive_every_reference() {
        let mut r = SharedStateRegistry::default();
        r.protect(["sibling"]);
        r.register(5, ["sibling", "claimed"], true);
        r.register(6, ["sibling"], true);
        assert_eq!(r.release(5), vec!["claimed"]);
        assert!(r.release(6).is_empty());
        assert!(r.contains(&"sibling"), "still known, so no directory cleanup takes it");
        r.register(7, ["sibling"], true);
        assert!(r.release(7).is_empty(), "a later reference does not make it deletable");
    }

    #[test]
    fn releasing_an_unknown_snapshot_changes_nothing() {
        let mut r = SharedStateRegistry::default();
        r.register(1, ["a"], true);
        assert!(r.release(9).is_empty());
        assert!(!r.is_referenced_by_other(&"a", 1));
        assert!(r.is_referenced_by_other(&"a", 2));
    }
}

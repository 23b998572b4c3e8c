//! What the master deletes, and only that: retained snapshots once subsumed (with the data files
//! only they referenced), incomplete snapshot directories, orphaned shared files, and the job's
//! empty directories when it retains nothing.

use super::master::{Completed, Master};
use super::restore::native_files;
use crate::storage::{self, EntryKind, LoadedSnapshot, SnapshotUri};
use std::collections::HashSet;
use weir_core::store::Retained;

impl Master {
    /// Deletes a retained snapshot the job owns: the data files only it referenced, then its
    /// directory, except files a later checkpoint still references (a CLAIM-restored snapshot
    /// whose files later checkpoints reuse); those go when their last reference does.
    pub(super) fn discard_retained(&mut self, gone: &Retained<Completed>) {
        let store = self.storage.store();
        for file in self.registry.release(gone.id) {
            storage::delete_file_and_empty_dir(store, &file);
        }
        let dir = &gone.data.snapshot.dir;
        let keep: HashSet<SnapshotUri> = self.registry.files().filter(|f| f.starts_with(dir)).cloned().collect();
        if let Err(e) = storage::discard_snapshot(store, &gone.data.snapshot, &keep) {
            tracing::warn!("could not delete {dir}: {e}");
        }
    }

    /// Once the job has ended: its directory, when it holds nothing but empty `shared/` and
    /// `taskowned/` directories (no retained checkpoint, no file of anyone else's).
    pub(super) fn remove_empty_job_dir(&self) {
        let Some(job_dir) = &self.shared.job_dir else {
            return;
        };
        let store = self.storage.store();
        let Ok(entries) = store.list(job_dir) else {
            return;
        };
        let only_empty_layout = entries.iter().all(|e| {
            (e.name == "shared" || e.name == "taskowned")
                && e.kind == EntryKind::Dir
                && store.list(&job_dir.join(&e.name)).is_ok_and(|d| d.is_empty())
        });
        if only_empty_layout {
            for sub in ["shared", "taskowned"] {
                let _ = store.remove_empty_dir(&job_dir.join(sub));
            }
            let _ = store.remove_empty_dir(job_dir);
        }
    }

    /// After a failed checkpoint: deletes files in `shared/` that no retained snapshot references
    /// (what the failed checkpoint uploaded). No other checkpoint is in flight at that moment.
    pub(super) fn delete_unreferenced_shared_files(&self) {
        let Some(job_dir) = &self.shared.job_dir else {
            return;
        };
        let store = self.storage.store();
        let shared_dir = store.canonical(job_dir).join("shared");
        let Ok(entries) = store.list(&shared_dir) else {
            return;
        };
        for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
            let file = shared_dir.join(&e.name);
            if !self.registry.contains(&file) {
                let _ = store.delete(&file);
            }
        }
    }

    /// The snapshot's full size and the bytes it wrote itself (files in its directory, plus data
    /// files outside it that no earlier snapshot registered).
    pub(super) fn snapshot_sizes(&self, snapshot: &LoadedSnapshot) -> (u64, u64) {
        let own = self.snapshot_dir_size(&snapshot.dir);
        let (mut full, mut written) = (own, own);
        let mut seen = HashSet::new();
        for (path, size, _) in native_files(snapshot) {
            if path.starts_with(&snapshot.dir) || !seen.insert(path.clone()) {
                continue;
            }
            full += size;
            if !self.registry.contains(&path) {
                written += size;
            }
        }
        (full, written)
    }

    pub(super) fn discard_incomplete(&self, dir: &SnapshotUri) {
        if let Err(e) = self.storage.discard_incomplete(dir) {
            tracing::warn!("could not delete {dir}: {e}");
        }
    }

    /// Bytes of the files directly in a snapshot's directory.
    fn snapshot_dir_size(&self, dir: &SnapshotUri) -> u64 {
        let files = self.storage.store().list(dir).unwrap_or_default();
        files.iter().filter(|e| e.kind == EntryKind::File).map(|e| e.size).sum()
    }
}

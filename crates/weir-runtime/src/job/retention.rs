//! What the master deletes, and only that: retained snapshots once subsumed (with the data files
//! only they referenced), incomplete snapshot directories, orphaned shared files, and the job's
//! empty directories when it retains nothing. The master decides here; the deleting is done on its
//! storage thread, in order with the rest of its storage work.

use super::master::{Completed, Master};
use super::restore::native_files;
use super::stats::VertexCheckpointStats;
use crate::protocol::AckedState;
use crate::storage::{self, EntryKind, LoadedSnapshot, SnapshotUri};
use std::collections::HashSet;
use weir_core::store::Retained;
use weir_core::CheckpointId;

impl Master {
    /// Deletes a retained snapshot the job owns: the data files only it referenced, then its
    /// directory, except files a later checkpoint still references (a CLAIM-restored snapshot
    /// whose files later checkpoints reuse); those go when their last reference does.
    pub(super) fn discard_retained(&mut self, gone: &Retained<Completed>) {
        let released = self.registry.release(gone.id);
        let snapshot = gone.data.snapshot.clone();
        let keep: HashSet<SnapshotUri> =
            self.registry.files().filter(|f| f.starts_with(&snapshot.dir)).cloned().collect();
        let storage = self.storage.clone();
        self.io.submit(move || {
            let store = storage.store();
            for file in released {
                storage::delete_file_and_empty_dir(store, &file);
            }
            if let Err(e) = storage::discard_snapshot(store, &snapshot, &keep) {
                tracing::warn!("could not delete {}: {e}", snapshot.dir);
            }
        });
    }

    /// Once the job has ended: its directory, when it holds nothing but empty `shared/` and
    /// `taskowned/` directories (no retained checkpoint, no file of anyone else's).
    pub(super) fn remove_empty_job_dir(&self) {
        let Some(job_dir) = self.shared.job_dir.clone() else {
            return;
        };
        let storage = self.storage.clone();
        self.io.submit(move || {
            let store = storage.store();
            let Ok(entries) = store.list(&job_dir) else {
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
                let _ = store.remove_empty_dir(&job_dir);
            }
        });
    }

    /// After a failed checkpoint: deletes files in `shared/` that no retained snapshot references
    /// (what the failed checkpoint uploaded). No other checkpoint is in flight at that moment, and
    /// the next one's directory is made after this, so its uploads come later.
    pub(super) fn delete_unreferenced_shared_files(&self) {
        let Some(job_dir) = self.shared.job_dir.clone() else {
            return;
        };
        let referenced: HashSet<SnapshotUri> = self.registry.files().cloned().collect();
        let storage = self.storage.clone();
        self.io.submit(move || {
            let store = storage.store();
            let shared_dir = store.canonical(&job_dir).join("shared");
            let Ok(entries) = store.list(&shared_dir) else {
                return;
            };
            for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
                let file = shared_dir.join(&e.name);
                if !referenced.contains(&file) {
                    let _ = store.delete(&file);
                }
            }
        });
    }

    /// A task acknowledged snapshot `id` too late: the data files it uploaded that nothing
    /// references, then the snapshot's directory.
    pub(super) fn discard_late(&self, id: CheckpointId, state: &AckedState) {
        let Some(dir) = &self.shared.job_dir else {
            return;
        };
        let loc = dir.join(&format!("chk-{id}"));
        let orphans: Vec<SnapshotUri> = state
            .iter()
            .flat_map(|(_, sub)| sub.native.iter().flat_map(|n| &n.files))
            .map(|f| loc.resolve(&f.file.path))
            .filter(|file| !self.registry.contains(file))
            .collect();
        let storage = self.storage.clone();
        self.io.submit(move || {
            for file in orphans {
                storage::delete_file_and_empty_dir(storage.store(), &file);
            }
        });
        self.discard_incomplete(&loc);
    }

    /// Per vertex of the job, the bytes of the files its operators' state is in, and of those the
    /// bytes this snapshot wrote (files in its directory, and data files outside it that no earlier
    /// snapshot registered). `_metadata` belongs to no vertex.
    pub(super) fn vertex_sizes(&self, snapshot: &LoadedSnapshot) -> Vec<VertexCheckpointStats> {
        let graph = &self.graph;
        let mut sizes = vec![VertexCheckpointStats::default(); graph.chains.len()];
        let mut seen = HashSet::new();
        for op in &snapshot.metadata.operators {
            let Some(node) = graph.nodes.iter().find(|n| n.operator_id == op.operator_id) else { continue };
            let vertex = &mut sizes[node.chain];
            for subtask in &op.subtasks {
                let keyed = subtask.keyed.iter().map(|k| &k.file);
                let native = subtask.native.iter().flat_map(|n| n.files.iter().map(|f| &f.file));
                for file in keyed.chain(native) {
                    let path = snapshot.resolve(&file.path);
                    if !seen.insert(path.clone()) {
                        continue;
                    }
                    vertex.state_size += file.size;
                    if path.starts_with(&snapshot.dir) || !self.registry.contains(&path) {
                        vertex.checkpointed_size += file.size;
                    }
                }
            }
        }
        sizes
    }

    /// The snapshot's full size and the bytes it wrote itself (`own_bytes`, the files in its
    /// directory, plus data files outside it that no earlier snapshot registered).
    pub(super) fn snapshot_sizes(&self, snapshot: &LoadedSnapshot, own_bytes: u64) -> (u64, u64) {
        let (mut full, mut written) = (own_bytes, own_bytes);
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

    /// A snapshot that will not complete: its directory and what is in it.
    pub(super) fn discard_incomplete(&self, dir: &SnapshotUri) {
        let (storage, dir) = (self.storage.clone(), dir.clone());
        self.io.submit(move || {
            if let Err(e) = storage.discard_incomplete(&dir) {
                tracing::warn!("could not delete {dir}: {e}");
            }
        });
    }
}

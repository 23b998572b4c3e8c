//! What the master deletes, and only that: retained snapshots once subsumed (with the data files
//! only they referenced), incomplete snapshot directories, orphaned shared files, and the job's
//! empty directories when it retains nothing.

use super::master::{Completed, Master};
use super::restore::native_files;
use crate::storage::{self, LoadedSnapshot};
use std::collections::HashSet;
use std::path::PathBuf;
use weir_core::store::Retained;

impl Master {
    /// Deletes a retained snapshot the job owns: the data files only it referenced, then its
    /// directory, except files a later checkpoint still references (a CLAIM-restored snapshot
    /// whose files later checkpoints reuse); those go when their last reference does.
    pub(super) fn discard_retained(&mut self, gone: &Retained<Completed>) {
        for file in self.registry.release(gone.id) {
            storage::delete_file_and_empty_dir(&file);
        }
        let dir = &gone.data.snapshot.dir;
        let keep: HashSet<PathBuf> = self.registry.files().filter(|f| f.starts_with(dir)).cloned().collect();
        if let Err(e) = self.storage.discard(&gone.data.snapshot, &keep) {
            tracing::warn!("could not delete {}: {e}", dir.display());
        }
    }

    /// Once the job has ended: its directory, when it holds nothing but empty `shared/` and
    /// `taskowned/` directories (no retained checkpoint, no file of anyone else's).
    pub(super) fn remove_empty_job_dir(&self) {
        let Some(job_dir) = &self.shared.job_dir else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(job_dir) else {
            return;
        };
        let only_empty_layout = entries.filter_map(|e| e.ok()).all(|e| {
            let path = e.path();
            e.file_name().to_str().is_some_and(|n| n == "shared" || n == "taskowned")
                && std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none())
        });
        if only_empty_layout {
            for sub in ["shared", "taskowned"] {
                let _ = std::fs::remove_dir(job_dir.join(sub));
            }
            let _ = std::fs::remove_dir(job_dir);
        }
    }

    /// After a failed checkpoint: deletes files in `shared/` that no retained snapshot references
    /// (what the failed checkpoint uploaded). No other checkpoint is in flight at that moment.
    pub(super) fn delete_unreferenced_shared_files(&self) {
        let Some(job_dir) = &self.shared.job_dir else {
            return;
        };
        let shared_dir = storage::normalize(&std::fs::canonicalize(job_dir).unwrap_or(job_dir.clone()).join("shared"));
        let Ok(entries) = std::fs::read_dir(&shared_dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            if !self.registry.contains(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// The snapshot's full size and the bytes it wrote itself (files in its directory, plus data
    /// files outside it that no earlier snapshot registered).
    pub(super) fn snapshot_sizes(&self, snapshot: &LoadedSnapshot) -> (u64, u64) {
        let own = snapshot_size(&snapshot.dir);
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

    pub(super) fn discard_incomplete(&self, dir: &std::path::Path) {
        if let Err(e) = self.storage.discard_incomplete(dir) {
            tracing::warn!("could not delete {}: {e}", dir.display());
        }
    }
}

fn snapshot_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

//! Restoring from a snapshot: checking that its state maps onto the job before anything starts,
//! and the data files a snapshot shares with later incremental checkpoints.

use crate::graph::JobGraph;
use crate::storage::LoadedSnapshot;
use std::collections::HashSet;
use weir_core::assignment::{self, AssignmentError};
use weir_core::location::SnapshotUri;

/// Checks that a snapshot's state maps onto the job (before any task starts), and adopts the
/// snapshot's max parallelism where the rules allow. Each deployment computes its own assignment.
pub(super) fn validate_restore(
    graph: &mut JobGraph,
    snapshot: &LoadedSnapshot,
    allow_non_restored: bool,
) -> Result<(), AssignmentError> {
    let a = assignment::assign(
        &snapshot.dir.to_string(),
        &snapshot.metadata.operators,
        &graph.operator_infos(),
        allow_non_restored,
    )?;
    for (id, uid, name) in &a.skipped {
        let uid = uid.as_deref().map(|u| format!("uid '{u}', ")).unwrap_or_default();
        tracing::info!("Skipping savepoint state for operator {id} ({uid}name '{name}').");
    }
    for n in graph.nodes.iter_mut() {
        if let Some(&max_p) = a.adopted_max_parallelism.get(&n.operator_id) {
            tracing::debug!(
                "Rescaling maximum parallelism for operator {} from {} to {}",
                n.name,
                n.max_parallelism,
                max_p
            );
            n.max_parallelism = max_p;
        }
    }
    Ok(())
}

/// Every file of the snapshot's native handles: resolved and normalized path, size, reusable.
pub(super) fn native_files(snapshot: &LoadedSnapshot) -> impl Iterator<Item = (SnapshotUri, u64, bool)> + '_ {
    snapshot
        .metadata
        .operators
        .iter()
        .flat_map(|op| &op.subtasks)
        .filter_map(|s| s.native.as_ref())
        .flat_map(|n| &n.files)
        .map(|f| (snapshot.resolve(&f.file.path), f.file.size, f.reusable))
}

/// The data files of a snapshot that later incremental checkpoints may reference.
pub(super) fn reusable_files(snapshot: &LoadedSnapshot) -> Vec<SnapshotUri> {
    let files: HashSet<SnapshotUri> = native_files(snapshot).filter(|f| f.2).map(|f| f.0).collect();
    files.into_iter().collect()
}

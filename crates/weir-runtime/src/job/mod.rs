//! The job: `submit` checks everything a user can get wrong and starts the job master.
//!
//! * [`control`]: status, the job handle and the control API the REST server and tools use;
//! * `settings`: configuration read once;
//! * `restore`: mapping a snapshot onto the job before it starts;
//! * `master`: the master's loop, driving the pure coordinator;
//! * `deploy`: tasks and channels; `retention`: what the master deletes, and only that.
//!
//! Tasks talk to the master through [`crate::protocol`].

mod control;
mod deploy;
pub mod info;
mod io;
mod master;
mod restore;
mod retention;
mod settings;
pub mod stats;

pub use control::*;
use control::{with, Shared};
pub use stats::CheckpointStats;

use crate::graph::JobGraph;
use crate::storage::{self, load_snapshot, CheckpointStorage, FsCheckpointStorage, LoadError};
use master::{Completed, Master};
use restore::{reusable_files, validate_restore};
use settings::Settings;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use weir_core::assignment::AssignmentError;
use weir_core::config::{keys, Configuration};
use weir_core::coordinator::{Coordinator, TaskKey};
use weir_core::ids::INITIAL_CHECKPOINT_ID;
use weir_core::restart::RestartBackoff;
use weir_core::shared_state::SharedStateRegistry;
use weir_core::store::{CompletedCheckpointStore, Ownership, Retained};
use weir_core::JobId;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error("cannot restore: {0}")]
    Load(LoadError),
    #[error(transparent)]
    Assignment(#[from] AssignmentError),
    #[error("checkpointing is enabled (execution.checkpointing.interval) but no checkpoint directory is set; set execution.checkpointing.dir")]
    NoCheckpointDir,
    #[error("cannot use the checkpoint directory {location}: {error}; check execution.checkpointing.dir and its permissions (for s3://, that the bucket exists and the s3.endpoint, s3.access-key and s3.secret-key settings)")]
    Storage { location: String, error: std::io::Error },
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("cannot start the job: {0}")]
    Spawn(String),
}

// The message includes the cause, so it is not also the error's source (which would print it twice).
impl From<LoadError> for JobError {
    fn from(e: LoadError) -> Self {
        JobError::Load(e)
    }
}

/// Starts a job. Restore settings come from `execution.state-recovery.*` in `config`.
/// Everything a user can get wrong (graph, configuration, the snapshot to restore and whether its
/// state maps onto the job) is checked here, before any task starts.
pub fn submit(
    name: &str,
    graph: JobGraph,
    config: &Configuration,
    storage: Option<Arc<dyn CheckpointStorage>>,
    state_backend: weir_state::StateBackend,
) -> Result<JobHandle, JobError> {
    let settings = Settings::from_config(config)?;
    let job_id = JobId::from_bytes(*uuid::Uuid::new_v4().as_bytes());
    let checkpoint_dir = config.get_location(keys::CHECKPOINT_DIR);
    let stores = storage::Stores::from_config(config);
    let (storage, has_checkpoint_dir): (Arc<dyn CheckpointStorage>, bool) = match (storage, &checkpoint_dir) {
        (Some(s), _) => (s, true),
        (None, Some(dir)) => (Arc::new(FsCheckpointStorage::new(dir.clone()).with_stores(stores)), true),
        (None, None) if settings.coordinator.interval_ms.is_some() => return Err(JobError::NoCheckpointDir),
        // Savepoints still work: they go to their own directories.
        (None, None) => (Arc::new(FsCheckpointStorage::new(std::env::temp_dir()).with_stores(stores)), false),
    };
    // Files and bytes of the snapshots being written, for the status of long operations.
    let write_progress = storage::progress::WriteProgress::default();
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(storage::progress::CountingStorage::new(storage, write_progress.clone()));
    let claim_mode = match config.get_enum(keys::RECOVERY_CLAIM_MODE) {
        Some("CLAIM") => ClaimMode::Claim,
        _ => ClaimMode::NoClaim,
    };
    let mut graph = graph;
    let mut store = CompletedCheckpointStore::new(settings.num_retained);
    let mut restored = None;
    let mut registry = SharedStateRegistry::default();
    let mut force_full = false;
    if let Some(path) = config.get_location(keys::RECOVERY_PATH) {
        let allow = config.get_bool(keys::RECOVERY_IGNORE_UNCLAIMED).unwrap_or(false);
        let snapshot = Arc::new(load_snapshot(storage.store(), &path)?);
        validate_restore(&mut graph, &snapshot, allow)?;
        let meta = &snapshot.metadata;
        tracing::info!(
            "Starting job {job_id} from {} {} ({}{})",
            if meta.kind.is_savepoint() { "savepoint" } else { "checkpoint" },
            snapshot.dir,
            claim_mode,
            if allow { ", allowing non restored state" } else { "" }
        );
        restored = Some(RestoredFrom {
            checkpoint_id: meta.checkpoint_id,
            path: snapshot.dir.clone(),
            is_savepoint: meta.kind.is_savepoint(),
            claim_mode,
        });
        // The restored snapshot is the first entry of the store, so a failover before the first
        // checkpoint recovers from it. In CLAIM mode the job owns it and deletes it once a later
        // checkpoint subsumes it (never when the job fails before that); in NO_CLAIM mode never.
        let claimed = claim_mode == ClaimMode::Claim;
        // CLAIM: the snapshot's data files are the job's, deleted when it is subsumed (the first
        // incremental checkpoint links them into the job's own shared/ directory).
        // NO_CLAIM: the first checkpoint is full and the files are never deleted.
        registry.register(meta.checkpoint_id, reusable_files(&snapshot), claimed);
        if claimed {
            // The claim covers the named snapshot only: files that other snapshots beside it
            // (the old job's other retained checkpoints) share with it stay, so those remain
            // restorable. Flink deletes them once unused (only the claimed one stays valid).
            registry
                .protect(storage::sibling_snapshots(storage.store(), &snapshot.dir).iter().flat_map(reusable_files));
        }
        force_full = !claimed;
        store.add(Retained {
            id: meta.checkpoint_id,
            is_savepoint: !claimed,
            ownership: if claimed { Ownership::Claimed } else { Ownership::User },
            data: Completed { snapshot: snapshot.clone() },
        });
    }
    // Only now, with the snapshot accepted, does the job get a directory: a refused restore
    // leaves nothing behind.
    let job_dir = if has_checkpoint_dir {
        Some(storage.initialize(job_id).map_err(|error| JobError::Storage {
            location: checkpoint_dir.as_ref().map_or_else(|| format!("{storage:?}"), |d| d.to_string()),
            error,
        })?)
    } else {
        None
    };
    // Savepoints a killed process left half-written in the default target go when a job starts
    // on it (and before any savepoint is written into a directory).
    if let Some(dir) = config.get_location(keys::SAVEPOINT_DIR).as_ref().and_then(|d| d.as_local()) {
        storage::sweep_partial_savepoints(dir);
    }
    let next_id = restored.as_ref().map(|r| r.checkpoint_id + 1).unwrap_or(INITIAL_CHECKPOINT_ID);
    let tasks = task_keys(&graph);
    let (tx, rx) = crossbeam_channel::unbounded();
    let graph = Arc::new(graph);
    let shared = Arc::new(Shared {
        name: name.to_string(),
        savepoint_dir: config.get_location(keys::SAVEPOINT_DIR),
        job_dir,
        restored: restored.clone(),
        storage: Some(storage.clone()),
        write_progress,
        info: info::JobInfo::new(&graph, &settings, config, state_backend.name()),
        graph: Some(graph.clone()),
        ..Shared::default()
    });
    let mut coordinator = Coordinator::new(settings.coordinator.clone(), tasks, next_id, 0);
    if force_full {
        coordinator.force_full_checkpoints();
    }
    let restart = RestartBackoff::new(settings.restart.clone());
    let master = Master {
        job_id,
        name: name.to_string(),
        coordinator,
        store,
        registry,
        state_backend,
        settings,
        graph,
        storage,
        has_checkpoint_dir,
        restored_from_snapshot: restored.is_some(),
        completed_since_start: false,
        stopping: None,
        savepoint_targets: HashMap::new(),
        rx,
        tx: tx.clone(),
        shared: shared.clone(),
        clock: Instant::now(),
        attempt: 0,
        restarts: 0,
        restart,
        tasks: Vec::new(),
        locations: HashMap::new(),
        triggering: HashMap::new(),
        written: HashMap::new(),
        io: io::IoThread::start(format!("job-storage-{job_id}")).map_err(|e| JobError::Spawn(e.to_string()))?,
        exhausted: HashSet::new(),
        finished: HashSet::new(),
        finish_after_notify: false,
        failed_task: None,
        secondary_failure: None,
    };
    with(&shared.status, |s| *s = Some(JobStatus::Created));
    with(&shared.status_timestamps, |t| t.entered(JobStatus::Created, stats::wall_clock_ms()));
    let thread = std::thread::Builder::new()
        .name(format!("job-master-{job_id}"))
        .spawn(move || master.run())
        .map_err(|e| JobError::Spawn(e.to_string()))?;
    tracing::info!("Job '{name}' has been submitted with JobID {job_id}");
    Ok(JobHandle::new(job_id, shared, tx, thread))
}

fn task_keys(graph: &JobGraph) -> Vec<TaskKey> {
    graph
        .chains
        .iter()
        .enumerate()
        .flat_map(|(v, c)| (0..c.parallelism).map(move |s| TaskKey { vertex: v as u32, subtask: s }))
        .collect()
}

/// Re-exported for tools and tests: the newest valid checkpoint of a job directory.
pub use storage::latest_checkpoint;

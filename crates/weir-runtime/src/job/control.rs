//! The job's control API: its status, the handle that waits for it, and the cloneable control
//! the REST server and tools use (savepoints, stop, checkpoints, cancel, statistics).

use super::info::JobInfo;
use super::stats::{CheckpointHistory, CheckpointStats, ExceptionHistory, StatusTimestamps};
use crate::protocol::{MasterMsg, SavepointMode};
use crate::task;
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use weir_core::location::SnapshotUri;
use weir_core::metadata::SavepointFormat;
use weir_core::{CheckpointId, JobId};

/// Job status, as Flink names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Created,
    Running,
    Restarting,
    Finished,
    Failed,
    Canceled,
}

impl JobStatus {
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobStatus::Finished | JobStatus::Failed | JobStatus::Canceled)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobStatus::Created => "CREATED",
            JobStatus::Running => "RUNNING",
            JobStatus::Restarting => "RESTARTING",
            JobStatus::Finished => "FINISHED",
            JobStatus::Failed => "FAILED",
            JobStatus::Canceled => "CANCELED",
        })
    }
}

/// Ownership of a restored snapshot's files (`execution.state-recovery.claim-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimMode {
    /// Weir never deletes the snapshot nor depends on its files after the first checkpoint.
    NoClaim,
    /// Weir owns the snapshot: it becomes the job's first retained checkpoint and is deleted once
    /// subsumed.
    Claim,
}

impl fmt::Display for ClaimMode {
    /// As the configuration spells it (`execution.state-recovery.claim-mode`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClaimMode::NoClaim => "NO_CLAIM",
            ClaimMode::Claim => "CLAIM",
        })
    }
}

/// The state of a savepoint or manual checkpoint request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    InProgress,
    Completed { checkpoint_id: CheckpointId, location: SnapshotUri },
    Failed { message: String },
}

/// Why a request to a running job was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("No savepoint directory configured. You can either specify a directory for the savepoint, or configure a default via key 'execution.checkpointing.savepoint-dir'.")]
    NoSavepointDir,
    #[error("job {job_id} is {status}, not RUNNING; savepoints, stops and checkpoints need a running job (retry once it runs)")]
    NotRunning { job_id: String, status: JobStatus },
    #[error("job {0} has no checkpoint directory; set execution.checkpointing.dir to take checkpoints")]
    NoCheckpointDir(String),
    #[error("job {0} has ended")]
    Gone(String),
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub job_id: JobId,
    pub status: JobStatus,
    /// The cause, when the job failed.
    pub failure: Option<String>,
    pub restarts: u32,
}

/// The snapshot a job was started from.
#[derive(Debug, Clone)]
pub struct RestoredFrom {
    pub checkpoint_id: CheckpointId,
    pub path: SnapshotUri,
    pub is_savepoint: bool,
    pub claim_mode: ClaimMode,
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) status: Mutex<Option<JobStatus>>,
    /// What the job is: vertices, operators, checkpoint settings.
    pub(super) info: JobInfo,
    pub(super) history: Mutex<CheckpointHistory>,
    pub(super) exceptions: Mutex<ExceptionHistory>,
    pub(super) status_timestamps: Mutex<StatusTimestamps>,
    pub(super) metrics: Arc<crate::metrics::JobMetrics>,
    pub(super) graph: Option<Arc<crate::graph::JobGraph>>,
    /// Checkpoints and savepoints triggered and not yet completed or failed.
    pub(super) in_progress: Mutex<u64>,
    pub(super) restarts: Mutex<u32>,
    pub(super) operations: Mutex<HashMap<u64, Operation>>,
    /// Where each savepoint or checkpoint operation is being written, once triggered.
    pub(super) operation_locations: Mutex<HashMap<u64, SnapshotUri>>,
    pub(super) write_progress: crate::storage::progress::WriteProgress,
    /// The download of a remote snapshot the job is restoring from, while it runs.
    pub(super) restore_progress: crate::storage::progress::RestoreProgress,
    pub(super) next_token: Mutex<u64>,
    pub(super) savepoint_dir: Option<SnapshotUri>,
    pub(super) job_dir: Option<SnapshotUri>,
    pub(super) restored: Option<RestoredFrom>,
    pub(super) storage: Option<Arc<dyn crate::storage::CheckpointStorage>>,
}

/// A running job.
pub struct JobHandle {
    control: JobControl,
    thread: Option<JoinHandle<JobOutcome>>,
    /// Things that live as long as the job is waited on (its REST server, its registry entry).
    attachments: Vec<Box<dyn std::any::Any + Send>>,
}

/// A cloneable handle to a running job, for the REST server and tools: status, checkpoints,
/// savepoints, stop and cancel.
#[derive(Clone)]
pub struct JobControl {
    job_id: JobId,
    shared: Arc<Shared>,
    tx: Sender<MasterMsg>,
}

impl std::ops::Deref for JobHandle {
    type Target = JobControl;
    fn deref(&self) -> &JobControl {
        &self.control
    }
}

impl JobControl {
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The job's checkpoint storage: the door to its snapshots' bytes (local or on S3, with the
    /// job's settings).
    pub fn storage(&self) -> Arc<dyn crate::storage::CheckpointStorage> {
        match &self.shared.storage {
            Some(storage) => storage.clone(),
            None => Arc::new(crate::storage::FsCheckpointStorage::new(std::env::temp_dir())),
        }
    }

    /// Whether a completed snapshot is still where it was written (`_metadata` in place).
    pub fn snapshot_exists(&self, dir: &SnapshotUri) -> bool {
        let metadata = dir.join(weir_core::metadata::METADATA_FILE_NAME);
        self.storage().store().kind(&metadata).ok().flatten().is_some()
    }

    /// `<execution.checkpointing.dir>/<job-id>`, when checkpoints are configured.
    pub fn checkpoint_job_dir(&self) -> Option<SnapshotUri> {
        self.shared.job_dir.clone()
    }

    pub fn restored_from(&self) -> Option<RestoredFrom> {
        self.shared.restored.clone()
    }

    fn running(&self) -> Result<(), ControlError> {
        match self.status() {
            JobStatus::Running => Ok(()),
            status => Err(ControlError::NotRunning { job_id: self.job_id.to_hex(), status }),
        }
    }

    fn new_operation(&self) -> u64 {
        let mut token = 0;
        with(&self.shared.next_token, |t| {
            *t += 1;
            token = *t;
        });
        with(&self.shared.operations, |ops| {
            ops.insert(token, Operation::InProgress);
        });
        token
    }

    fn send(&self, msg: MasterMsg) -> Result<(), ControlError> {
        self.tx.send(msg).map_err(|_| ControlError::Gone(self.job_id.to_hex()))
    }

    fn savepoint_target(&self, target: Option<&SnapshotUri>) -> Result<SnapshotUri, ControlError> {
        target.cloned().or_else(|| self.shared.savepoint_dir.clone()).ok_or(ControlError::NoSavepointDir)
    }

    /// Triggers a savepoint into `target` (or `execution.checkpointing.savepoint-dir`); returns the
    /// operation's token. An intermediate savepoint commits nothing and is never used for recovery.
    pub fn trigger_savepoint(
        &self,
        target: Option<&SnapshotUri>,
        format: SavepointFormat,
    ) -> Result<u64, ControlError> {
        let target = self.savepoint_target(target)?;
        self.running()?;
        let token = self.new_operation();
        self.send(MasterMsg::TriggerSavepoint { token, target, format, mode: SavepointMode::Intermediate })?;
        Ok(token)
    }

    /// Stops the job with a savepoint: sources stop, the savepoint commits the sinks, and the job
    /// ends FINISHED. With `drain`, the inputs end first (end-of-input hooks run) and a failed
    /// savepoint fails the job over; without, a failed savepoint leaves the job running.
    pub fn stop_with_savepoint(
        &self,
        target: Option<&SnapshotUri>,
        format: SavepointFormat,
        drain: bool,
    ) -> Result<u64, ControlError> {
        let target = self.savepoint_target(target)?;
        self.running()?;
        let token = self.new_operation();
        let mode = if drain { SavepointMode::Drain } else { SavepointMode::Stop };
        self.send(MasterMsg::TriggerSavepoint { token, target, format, mode })?;
        Ok(token)
    }

    /// Triggers a checkpoint now (every checkpoint of the heap backend is full).
    pub fn trigger_checkpoint(&self) -> Result<u64, ControlError> {
        if self.shared.job_dir.is_none() {
            return Err(ControlError::NoCheckpointDir(self.job_id.to_hex()));
        }
        self.running()?;
        let token = self.new_operation();
        self.send(MasterMsg::TriggerCheckpoint { token })?;
        Ok(token)
    }

    /// The state of a savepoint or checkpoint request, if the token is known.
    pub fn operation(&self, token: u64) -> Option<Operation> {
        lock(&self.shared.operations).get(&token).cloned()
    }

    /// How far an operation in progress has got.
    pub fn operation_progress(&self, token: u64) -> Option<crate::storage::progress::SnapshotProgress> {
        let location = lock(&self.shared.operation_locations).get(&token).cloned()?;
        self.shared.write_progress.of(&location)
    }

    /// How far the download of the snapshot being restored has got, while the job restores from
    /// object storage.
    pub fn restore_progress(&self) -> Option<crate::storage::progress::TransferStatus> {
        self.shared.restore_progress.status()
    }

    /// Waits until the operation is no longer in progress, or `timeout` passes.
    pub fn wait_operation(&self, token: u64, timeout: Duration) -> Option<Operation> {
        let deadline = Instant::now() + timeout;
        loop {
            let op = self.operation(token);
            if op != Some(Operation::InProgress) || Instant::now() >= deadline {
                return op;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn status(&self) -> JobStatus {
        lock(&self.shared.status).unwrap_or(JobStatus::Created)
    }

    /// Cancels the job; `wait` returns once it has stopped.
    pub fn cancel(&self) {
        let _ = self.tx.send(MasterMsg::Cancel);
    }

    /// Completed checkpoints and savepoints, oldest first (the most recent
    /// [`super::stats::HISTORY_KEPT`]).
    pub fn completed_checkpoints(&self) -> Vec<CheckpointStats> {
        self.checkpoint_history().completed_recent().cloned().collect()
    }

    /// Checkpoints and savepoints that failed since the job was submitted.
    pub fn failed_checkpoints(&self) -> u64 {
        self.checkpoint_history().failed_total()
    }

    /// Pending, completed and failed checkpoints and savepoints.
    pub fn checkpoint_history(&self) -> CheckpointHistory {
        lock(&self.shared.history)
    }

    /// The failures the job restarted from or ended with.
    pub fn exceptions(&self) -> ExceptionHistory {
        lock(&self.shared.exceptions)
    }

    /// When the job last entered each status.
    pub fn status_timestamps(&self) -> StatusTimestamps {
        lock(&self.shared.status_timestamps)
    }

    /// The job's metrics (records in and out, watermarks, back pressure).
    pub fn metrics(&self) -> &crate::metrics::JobMetrics {
        &self.shared.metrics
    }

    /// The job graph the metrics are read against.
    pub fn graph(&self) -> Option<&crate::graph::JobGraph> {
        self.shared.graph.as_deref()
    }

    /// What the job is: its vertices and operators, and its checkpoint settings.
    pub fn info(&self) -> &JobInfo {
        &self.shared.info
    }

    /// Checkpoints and savepoints in flight right now.
    pub fn checkpoints_in_progress(&self) -> u64 {
        lock(&self.shared.in_progress)
    }

    pub fn restarts(&self) -> u32 {
        lock(&self.shared.restarts)
    }
}

impl JobHandle {
    pub(super) fn new(
        job_id: JobId,
        shared: Arc<Shared>,
        tx: Sender<MasterMsg>,
        thread: JoinHandle<JobOutcome>,
    ) -> JobHandle {
        JobHandle { control: JobControl { job_id, shared, tx }, thread: Some(thread), attachments: Vec::new() }
    }

    /// A cloneable handle to control the job while something else waits for it.
    pub fn control(&self) -> JobControl {
        self.control.clone()
    }

    /// Keeps `thing` alive until the job has ended and `wait` returns.
    pub fn attach(&mut self, thing: Box<dyn std::any::Any + Send>) {
        self.attachments.push(thing);
    }

    /// Waits until the job ends.
    pub fn wait(mut self) -> JobOutcome {
        let outcome = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(outcome)) => outcome,
            Some(Err(panic)) => JobOutcome {
                job_id: self.job_id,
                status: JobStatus::Failed,
                failure: Some(format!("job master panicked: {}", task::panic_message(&panic))),
                restarts: 0,
            },
            None => JobOutcome { job_id: self.job_id, status: self.status(), failure: None, restarts: 0 },
        };
        // The REST server outlives the job just long enough for clients to read final results.
        self.attachments.clear();
        outcome
    }
}

pub(super) fn lock<T: Clone>(m: &Mutex<T>) -> T {
    match m.lock() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

pub(super) fn with<T>(m: &Mutex<T>, f: impl FnOnce(&mut T)) {
    match m.lock() {
        Ok(mut g) => f(&mut g),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    }
}

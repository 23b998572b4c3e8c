//! The task <-> master protocol: what tasks report to the job master (initialized, acknowledged,
//! declined, exhausted, finished, failed), what the control API asks of it, and the restore plan
//! the master hands every task. Tasks and operators depend on this module, not on the master.

use crate::operator::TaskError;
use crate::storage::LoadedSnapshot;
use std::collections::HashMap;
use std::sync::Arc;
use weir_core::assignment::SubtaskAssignment;
use weir_core::coordinator::TaskKey;
use weir_core::location::SnapshotUri;
use weir_core::metadata::{SavepointFormat, SubtaskSnapshot};
use weir_core::{CheckpointId, OperatorId};

/// The state written for one operator subtask, as acknowledged to the master.
pub type AckedState = Vec<(OperatorId, SubtaskSnapshot)>;

/// Messages to the job master, from tasks and from the job handle.
pub enum MasterMsg {
    TaskInitialized {
        attempt: u32,
        task: TaskKey,
    },
    Ack {
        attempt: u32,
        id: CheckpointId,
        task: TaskKey,
        states: AckedState,
    },
    Decline {
        attempt: u32,
        id: CheckpointId,
        task: TaskKey,
        reason: String,
    },
    SourceExhausted {
        attempt: u32,
        task: TaskKey,
    },
    TaskFinished {
        attempt: u32,
        task: TaskKey,
    },
    TaskCanceled {
        attempt: u32,
        task: TaskKey,
    },
    TaskFailed {
        attempt: u32,
        task: TaskKey,
        failure: TaskFailure,
    },
    TriggerSavepoint {
        token: u64,
        target: SnapshotUri,
        format: SavepointFormat,
        mode: SavepointMode,
    },
    TriggerCheckpoint {
        token: u64,
    },
    Cancel,
    /// The master's storage thread made the directory of snapshot `id`, or could not.
    SnapshotLocation {
        id: CheckpointId,
        location: std::io::Result<SnapshotUri>,
    },
    /// The master's storage thread wrote snapshot `id`'s `_metadata` and read it back (with the
    /// bytes of the files directly in its directory), or says why it could not.
    MetadataWritten {
        id: CheckpointId,
        result: Result<(LoadedSnapshot, u64), String>,
    },
}

/// What a savepoint request does to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavepointMode {
    /// The job keeps running; the savepoint commits nothing and is never used for recovery.
    Intermediate,
    /// Stop with a savepoint: sources stop, the savepoint commits the sinks, the job finishes. If
    /// the savepoint fails, the job keeps running.
    Stop,
    /// Like `Stop`, but the inputs end first (end-of-input hooks run); a failed savepoint then
    /// fails the job over, since its inputs already ended.
    Drain,
}

/// Why a task failed: the task's name and its typed error, or the message of a panic.
#[derive(Debug)]
pub struct TaskFailure {
    /// `Name (subtask/parallelism)`.
    pub task: String,
    pub cause: FailureCause,
}

#[derive(Debug)]
pub enum FailureCause {
    Error(TaskError),
    Panic(String),
}

impl TaskFailure {
    /// A task whose channel to another task closed: the other task stopped, and its own failure
    /// is the one that counts (it may reach the master later, after dropping its operators).
    pub fn is_secondary(&self) -> bool {
        matches!(self.cause, FailureCause::Error(TaskError::Disconnected))
    }

    /// What the failure means for the job, from its type.
    pub fn kind(&self) -> FailureKind {
        match &self.cause {
            FailureCause::Error(TaskError::Restore { .. }) => FailureKind::Restore,
            FailureCause::Error(TaskError::Unrecoverable { .. }) => FailureKind::Unrecoverable,
            _ => FailureKind::Recoverable,
        }
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            FailureCause::Error(e) => write!(f, "{}: {e}", self.task),
            FailureCause::Panic(message) => write!(f, "{} panicked: {message}", self.task),
        }
    }
}

/// What a task failure means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A restart may fix it: the restart strategy decides.
    Recoverable,
    /// Restoring state failed; restarting reads the same snapshot again.
    Restore,
    /// A restart cannot fix it (the input or the environment must change): the job fails at once.
    Unrecoverable,
}

/// The state every operator subtask restores, computed once per deployment.
pub struct RestorePlan {
    pub snapshot: Arc<LoadedSnapshot>,
    pub operators: HashMap<OperatorId, Vec<SubtaskAssignment>>,
    /// The state files its subtasks checked already: each is read for its checksum once.
    pub checked_files: Arc<weir_state::checksum::CheckedFiles>,
}

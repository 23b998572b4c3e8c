//! Weir's runtime.
//!
//! A job graph of operator nodes is cut into chains (forward edges of equal parallelism become
//! plain calls); each subtask of a chain is a task on its own thread. Tasks exchange batches of
//! records through bounded channels, so a slow consumer slows its producers instead of growing
//! memory. Checkpoint barriers travel in-band; a task aligns them across its input channels,
//! captures its operators' state synchronously, forwards the barrier, and hands the capture to its
//! snapshot writer thread, which writes the files and acknowledges to the job master. The job
//! master feeds the pure [`weir_core::coordinator::Coordinator`] and carries out its decisions.

pub mod channel;
pub mod graph;
pub mod job;
pub mod metrics;
pub mod operator;
pub mod protocol;
pub mod storage;
mod task;

pub use graph::{EdgeKind, JobGraph, NodeBuilder, NodeSpec};
pub use job::{ClaimMode, ControlError, JobControl, JobHandle, JobOutcome, JobStatus, Operation};
pub use operator::{
    ChainEvent, Control, Output, ProcessingTimeService, SnapshotCapture, SourceRunner, SplitEvent, SplitIndex, TaskEnv,
    TaskError, TaskResult, Timestamp, WatermarkStatus,
};
pub use storage::{CheckpointStorage, FsCheckpointStorage};

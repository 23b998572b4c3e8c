//! Weir: a stateful stream processor whose checkpoints and savepoints work like Apache Flink's.
//!
//! A job is a Rust program: build a dataflow on a [`StreamEnv`], then [`StreamEnv::execute`] it.
//!
//! ```no_run
//! use std::time::Duration;
//! use weir::connectors::{FileSource, PrintSink};
//! use weir::StreamEnv;
//!
//! # fn main() -> Result<(), weir::Error> {
//! let (mut env, _job_args) = StreamEnv::from_args()?;
//! env.enable_checkpointing(Duration::from_secs(10));
//! env.source(FileSource::follow("words.txt")).uid("source")
//!     .key_by(|line: &String| line.clone())
//!     .reduce(|a: String, _b: String| a).uid("dedup")
//!     .sink(PrintSink::new()).uid("print");
//! env.execute("dedup")?;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "mimalloc")]
pub mod allocator;
mod backends;
pub mod connectors;
mod env;
mod error;
mod exclusive;
mod functions;
mod held;
mod keyed;
mod operators;
mod rest_access;
mod split_source;
mod stream;
mod watermarks;
mod windows;

pub use env::{JobFlags, StreamEnv};
pub use error::Error;
pub use exclusive::Exclusive;
pub use functions::put_list;
pub use functions::{
    BoxError, Collector, Context, KeyedProcessFunction, OutputTag, RuntimeContext, SinkContext, SinkFunction,
    SourceContext, SourceFunction, SourcePoll, TimerService, Unrecoverable,
};
pub use split_source::{
    source_kind, LegacySplits, Source, SourceSplit, SplitContext, SplitReader, SplitSource, SplitSourceFunction,
    SPLITS_STATE,
};
pub use stream::{DataStream, KeyedStream, SinkStream, SumField};
pub use watermarks::{BoundedOutOfOrderness, WatermarkGenerator, WatermarkOutput, WatermarkStrategy};
pub use weir_state::TimeDomain;
pub use windows::{
    AggregateFunction, CountAggregate, CountTrigger, EventTimeSessionWindows, GlobalWindows, ProcessWindowFunction,
    ProcessingTimeSessionWindows, SlidingEventTimeWindows, SlidingProcessingTimeWindows, TimeWindow, Trigger,
    TumblingEventTimeWindows, TumblingProcessingTimeWindows, WindowAssigner, WindowContext, WindowedStream,
    GLOBAL_WINDOW,
};

pub use weir_core::config::{keys as config_keys, parse_duration, Configuration};
pub use weir_core::metadata::Redistribution;
pub use weir_core::metadata::SavepointFormat;
pub use weir_core::{CheckpointId, JobId, KeyHash, OperatorId};
pub use weir_runtime::job::{latest_checkpoint, CheckpointStats, JobOutcome};
pub use weir_runtime::storage::{
    latest_checkpoint_in, CheckpointStorage, Entry, EntryKind, FsCheckpointStorage, LoadedSnapshot, SnapshotStore,
    SnapshotUri, StateOutput, Stores,
};
pub use weir_runtime::SplitIndex;
pub use weir_runtime::{ClaimMode, ControlError, JobControl, JobHandle, JobStatus, Operation};
pub use weir_state::{
    Key, KeyScope, ListState, ListStateDescriptor, MapState, MapStateDescriptor, OperatorStateSnapshot,
    OperatorStateStore, ReducingState, ReducingStateDescriptor, StateData, StateError, ValueState,
    ValueStateDescriptor,
};

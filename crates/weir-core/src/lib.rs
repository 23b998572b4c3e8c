//! Weir's pure core.
//!
//! Everything in this crate is a plain function or data structure: key-group arithmetic, operator-id
//! hashing, configuration parsing, the `_metadata` codec, the checkpoint coordinator's decisions, the
//! completed-checkpoint store, state assignment on restore, the locations users type, restart
//! back-off, and event time's decisions (watermark combination, window assignment and merging,
//! timer queues, split ownership). None of it starts a thread, reads a clock or touches a file, so all of it is unit-
//! and property-tested directly. The runtime calls it and performs the I/O the decisions ask for.

pub mod assignment;
pub mod config;
pub mod coordinator;
pub mod ids;
pub mod key_group;
pub mod location;
pub mod metadata;
pub mod operator_id;
pub mod restart;
pub mod shared_state;
pub mod splits;
pub mod store;
pub mod timers;
pub mod watermark;
pub mod window;

pub use ids::{CheckpointId, JobId};
pub use key_group::{KeyGroupRange, KeyHash};
pub use operator_id::OperatorId;

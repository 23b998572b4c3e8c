//! What a job is, fixed at submission, as operators see it in Flink's REST API and web UI: its
//! vertices (chains of operators, one task per subtask) with their operators' ids and uids, the
//! edges between vertices, and the checkpoint settings it runs with.

use super::settings::Settings;
use crate::graph::{EdgeKind, JobGraph};
use weir_core::config::{keys, Configuration};
use weir_core::location::SnapshotUri;
use weir_core::restart::RestartStrategy;
use weir_core::store::RetentionPolicy;

/// An operator inside a vertex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorInfo {
    /// 32 hex characters: the id state is stored under in snapshots.
    pub id: String,
    pub name: String,
    pub uid: Option<String>,
}

/// An edge into a vertex from another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexInput {
    /// Index of the producing vertex in [`JobInfo::vertices`].
    pub from: usize,
    /// Flink's ship strategy names: `FORWARD`, `REBALANCE`, `HASH`, `BROADCAST`.
    pub ship_strategy: &'static str,
}

/// A chain of operators that runs as one task per subtask (Flink's job vertex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexInfo {
    /// The id of the chain's head operator, as Flink names a vertex by it.
    pub id: String,
    /// The operators' names joined by ` -> `, as Flink names a chain.
    pub name: String,
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// In chain order, the head first.
    pub operators: Vec<OperatorInfo>,
    pub inputs: Vec<VertexInput>,
}

impl VertexInfo {
    /// Flink's task name of one subtask: `<vertex name> (<subtask + 1>/<parallelism>)`.
    pub fn task_name(&self, subtask: u32) -> String {
        format!("{} ({}/{})", self.name, subtask + 1, self.parallelism)
    }
}

/// The checkpoint settings of the job (Flink's `/jobs/:id/checkpoints/config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointConfigInfo {
    /// `None` when periodic checkpoints are off.
    pub interval_ms: Option<u64>,
    pub timeout_ms: u64,
    pub min_pause_ms: u64,
    pub max_concurrent: u32,
    pub tolerable_failures: u32,
    /// Whether checkpoints outlive the job (`externalized-checkpoint-retention`), and whether a
    /// cancelled job deletes them.
    pub externalized: bool,
    pub delete_on_cancellation: bool,
    /// `hashmap` or `rocksdb`.
    pub state_backend: String,
    pub incremental: bool,
    pub num_retained: u32,
    /// Where checkpoints go (`execution.checkpointing.dir`), and the default savepoint directory.
    pub checkpoint_dir: Option<String>,
    pub savepoint_dir: Option<String>,
}

/// The job as submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobInfo {
    /// In topological order of their heads (sources first).
    pub vertices: Vec<VertexInfo>,
    /// `parallelism.default`.
    pub parallelism: u32,
    pub checkpoint_config: CheckpointConfigInfo,
    /// How the job restarts after a failure, in words (Flink's `restart-strategy`).
    pub restart_strategy: String,
}

impl JobInfo {
    /// Tasks of the job: the subtasks of all its vertices.
    pub fn num_subtasks(&self) -> u32 {
        self.vertices.iter().map(|v| v.parallelism).sum()
    }

    pub(super) fn new(graph: &JobGraph, settings: &Settings, config: &Configuration, state_backend: &str) -> JobInfo {
        let vertices = graph
            .chains
            .iter()
            .map(|chain| {
                let operators: Vec<OperatorInfo> = chain
                    .nodes
                    .iter()
                    .map(|&n| {
                        let node = &graph.nodes[n];
                        OperatorInfo { id: node.operator_id.to_hex(), name: node.name.clone(), uid: node.uid.clone() }
                    })
                    .collect();
                let head = &graph.nodes[chain.head];
                let inputs = head
                    .inputs
                    .iter()
                    .map(|&e| {
                        let edge = &graph.edges[e];
                        VertexInput { from: graph.nodes[edge.from].chain, ship_strategy: ship_strategy(edge.kind) }
                    })
                    .collect();
                VertexInfo {
                    id: head.operator_id.to_hex(),
                    name: operators.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(" -> "),
                    parallelism: chain.parallelism,
                    max_parallelism: head.max_parallelism,
                    operators,
                    inputs,
                }
            })
            .collect();
        let retention = settings.retention;
        let checkpoint_config = CheckpointConfigInfo {
            interval_ms: settings.coordinator.interval_ms,
            timeout_ms: settings.coordinator.timeout_ms,
            min_pause_ms: settings.coordinator.min_pause_ms,
            max_concurrent: 1,
            tolerable_failures: settings.coordinator.tolerable_failures,
            externalized: retention != RetentionPolicy::NeverRetainAfterTermination,
            delete_on_cancellation: retention != RetentionPolicy::RetainOnCancellation,
            state_backend: state_backend.to_string(),
            incremental: config.get_bool(keys::CHECKPOINT_INCREMENTAL).unwrap_or(false),
            num_retained: settings.num_retained as u32,
            checkpoint_dir: config.get_location(keys::CHECKPOINT_DIR).map(absolute),
            savepoint_dir: config.get_location(keys::SAVEPOINT_DIR).map(absolute),
        };
        JobInfo {
            vertices,
            parallelism: config.get_int(keys::PARALLELISM_DEFAULT).unwrap_or(1).max(1) as u32,
            checkpoint_config,
            restart_strategy: describe_restarts(&settings.restart),
        }
    }
}

fn describe_restarts(strategy: &RestartStrategy) -> String {
    match strategy {
        RestartStrategy::None => "No restart.".to_string(),
        RestartStrategy::FixedDelay { attempts, delay } => {
            format!("Restart with fixed delay ({} ms). #{attempts} restart attempts.", delay.as_millis())
        }
        RestartStrategy::ExponentialDelay(d) => format!(
            "Restart with exponential delay: initial backoff {} ms, max backoff {} ms, multiplier {}, reset after {} ms without failure, jitter {}.",
            d.initial_backoff.as_millis(),
            d.max_backoff.as_millis(),
            d.multiplier,
            d.reset_backoff_threshold.as_millis(),
            d.jitter_factor
        ),
    }
}

/// A directory as every command accepts it: a relative local path made absolute (`file:/...`).
fn absolute(dir: SnapshotUri) -> String {
    let resolved = match dir.as_local() {
        Some(path) if path.is_relative() => {
            std::path::absolute(path).ok().and_then(|p| SnapshotUri::parse(&p.to_string_lossy()).ok())
        }
        _ => None,
    };
    resolved.unwrap_or(dir).to_string()
}

fn ship_strategy(kind: EdgeKind) -> &'static str {
    match kind {
        EdgeKind::Forward => "FORWARD",
        EdgeKind::Rebalance => "REBALANCE",
        EdgeKind::KeyGroup => "HASH",
        EdgeKind::Broadcast => "BROADCAST",
    }
}

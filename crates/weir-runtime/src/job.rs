//! The job master: deploys tasks, drives the checkpoint coordinator, keeps the completed-checkpoint
//! store, and restarts the job from the latest checkpoint when a task fails.

use crate::graph::JobGraph;
use crate::operator::{Barrier, Control};
use crate::storage::{self, load_snapshot, CheckpointStorage, FsCheckpointStorage, LoadError, LoadedSnapshot};
use crate::task::{self, AckedState, TaskPlan};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use weir_core::assignment::{self, AssignmentError, SubtaskAssignment};
use weir_core::config::{keys, Configuration};
use weir_core::coordinator::{Action, Coordinator, CoordinatorSettings, FailureReason, TaskKey};
use weir_core::ids::INITIAL_CHECKPOINT_ID;
use weir_core::metadata::{self, OperatorSnapshot, SavepointFormat, SnapshotKind, SnapshotMetadata};
use weir_core::restart::{ExponentialDelay, RestartBackoff, RestartDecision, RestartStrategy};
use weir_core::shared_state::SharedStateRegistry;
use weir_core::store::{CompletedCheckpointStore, Ownership, Retained, RetentionPolicy, Termination};
use weir_core::{CheckpointId, JobId, OperatorId};

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
    Completed { checkpoint_id: CheckpointId, location: PathBuf },
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
    #[error("cannot create the checkpoint directory {location}: {error}; check execution.checkpointing.dir and its permissions")]
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

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub job_id: JobId,
    pub status: JobStatus,
    /// The cause, when the job failed.
    pub failure: Option<String>,
    pub restarts: u32,
}

/// Statistics of one completed checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointStats {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub location: PathBuf,
    pub duration: Duration,
    /// Bytes of everything the snapshot references (its full size), `_metadata` included.
    pub state_size: u64,
    /// Bytes this snapshot wrote: less than `state_size` for an incremental checkpoint, which
    /// references files earlier checkpoints uploaded.
    pub checkpointed_size: u64,
}

/// The snapshot a job was started from.
#[derive(Debug, Clone)]
pub struct RestoredFrom {
    pub checkpoint_id: CheckpointId,
    pub path: PathBuf,
    pub is_savepoint: bool,
    pub claim_mode: ClaimMode,
}

#[derive(Default)]
struct Shared {
    name: String,
    status: Mutex<Option<JobStatus>>,
    completed: Mutex<Vec<CheckpointStats>>,
    failed_checkpoints: Mutex<u64>,
    /// Checkpoints and savepoints triggered and not yet completed or failed.
    in_progress: Mutex<u64>,
    restarts: Mutex<u32>,
    operations: Mutex<HashMap<u64, Operation>>,
    next_token: Mutex<u64>,
    savepoint_dir: Option<PathBuf>,
    job_dir: Option<PathBuf>,
    restored: Option<RestoredFrom>,
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

    /// `<execution.checkpointing.dir>/<job-id>`, when checkpoints are configured.
    pub fn checkpoint_job_dir(&self) -> Option<PathBuf> {
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

    fn savepoint_target(&self, target: Option<&std::path::Path>) -> Result<PathBuf, ControlError> {
        target.map(PathBuf::from).or_else(|| self.shared.savepoint_dir.clone()).ok_or(ControlError::NoSavepointDir)
    }

    /// Triggers a savepoint into `target` (or `execution.checkpointing.savepoint-dir`); returns the
    /// operation's token. An intermediate savepoint commits nothing and is never used for recovery.
    pub fn trigger_savepoint(
        &self,
        target: Option<&std::path::Path>,
        format: SavepointFormat,
    ) -> Result<u64, ControlError> {
        let target = self.savepoint_target(target)?;
        self.running()?;
        let token = self.new_operation();
        self.send(MasterMsg::TriggerSavepoint { token, target, format, stop: None })?;
        Ok(token)
    }

    /// Stops the job with a savepoint: sources stop, the savepoint commits the sinks, and the job
    /// ends FINISHED. With `drain`, the inputs end first (end-of-input hooks run) and a failed
    /// savepoint fails the job over; without, a failed savepoint leaves the job running.
    pub fn stop_with_savepoint(
        &self,
        target: Option<&std::path::Path>,
        format: SavepointFormat,
        drain: bool,
    ) -> Result<u64, ControlError> {
        let target = self.savepoint_target(target)?;
        self.running()?;
        let token = self.new_operation();
        self.send(MasterMsg::TriggerSavepoint { token, target, format, stop: Some(drain) })?;
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

    /// Completed checkpoints so far, oldest first.
    pub fn completed_checkpoints(&self) -> Vec<CheckpointStats> {
        lock(&self.shared.completed).clone()
    }

    pub fn failed_checkpoints(&self) -> u64 {
        lock(&self.shared.failed_checkpoints)
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

fn lock<T: Clone>(m: &Mutex<T>) -> T {
    match m.lock() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn with<T>(m: &Mutex<T>, f: impl FnOnce(&mut T)) {
    match m.lock() {
        Ok(mut g) => f(&mut g),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    }
}

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
        error: String,
        kind: FailureKind,
    },
    /// `stop`: `None` for an intermediate savepoint, `Some(drain)` for stop-with-savepoint.
    TriggerSavepoint {
        token: u64,
        target: PathBuf,
        format: SavepointFormat,
        stop: Option<bool>,
    },
    TriggerCheckpoint {
        token: u64,
    },
    Cancel,
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
}

/// The job's settings, read from configuration once.
struct Settings {
    coordinator: CoordinatorSettings,
    num_retained: usize,
    retention: RetentionPolicy,
    restart: RestartStrategy,
    batch_size: usize,
    channel_capacity: usize,
}

impl Settings {
    fn from_config(c: &Configuration) -> Result<Settings, JobError> {
        let interval = c.get_duration(keys::CHECKPOINT_INTERVAL);
        if let Some(i) = interval {
            if i < Duration::from_millis(10) {
                return Err(JobError::Config {
                    key: keys::CHECKPOINT_INTERVAL,
                    reason: "Checkpoint interval must be larger than or equal to 10 ms".into(),
                });
            }
        }
        let timeout = c.get_duration(keys::CHECKPOINT_TIMEOUT).unwrap_or(Duration::from_secs(600));
        if timeout < Duration::from_millis(10) {
            return Err(JobError::Config {
                key: keys::CHECKPOINT_TIMEOUT,
                reason: "Checkpoint timeout must be larger than or equal to 10 ms".into(),
            });
        }
        let tolerable = c.get_int(keys::CHECKPOINT_TOLERABLE_FAILURES).unwrap_or(0);
        if tolerable < 0 {
            return Err(JobError::Config {
                key: keys::CHECKPOINT_TOLERABLE_FAILURES,
                reason: "The tolerable checkpoint failure number is illegal, it must be greater than or equal to 0."
                    .into(),
            });
        }
        let max_concurrent = c.get_int(keys::CHECKPOINT_MAX_CONCURRENT).unwrap_or(1);
        if max_concurrent != 1 {
            return Err(JobError::Config {
                key: keys::CHECKPOINT_MAX_CONCURRENT,
                reason: "Weir runs one checkpoint at a time; set it to 1".into(),
            });
        }
        let retained = c.get_int(keys::CHECKPOINT_NUM_RETAINED).unwrap_or(1);
        if retained <= 0 {
            tracing::warn!(
                "The setting for '{} : {}' is invalid. Using default value of 1",
                keys::CHECKPOINT_NUM_RETAINED,
                retained
            );
        }
        let retention = c
            .get_enum(keys::CHECKPOINT_RETENTION)
            .and_then(RetentionPolicy::from_config_value)
            .unwrap_or(RetentionPolicy::NeverRetainAfterTermination);
        let restart = match c.get_enum(keys::RESTART_STRATEGY) {
            Some("none" | "disable" | "off") => RestartStrategy::None,
            Some("fixed-delay" | "fixeddelay") => RestartStrategy::FixedDelay {
                attempts: c.get_int(keys::RESTART_ATTEMPTS).unwrap_or(1).clamp(0, u32::MAX as i64) as u32,
                delay: c.get_duration(keys::RESTART_DELAY).unwrap_or(Duration::from_secs(1)),
            },
            Some(_) => RestartStrategy::ExponentialDelay(exponential_delay(c)),
            None if interval.is_some() => RestartStrategy::ExponentialDelay(exponential_delay(c)),
            None => RestartStrategy::None,
        };
        Ok(Settings {
            coordinator: CoordinatorSettings {
                interval_ms: interval.map(|d| d.as_millis() as u64),
                min_pause_ms: c.get_duration(keys::CHECKPOINT_MIN_PAUSE).unwrap_or_default().as_millis() as u64,
                timeout_ms: timeout.as_millis() as u64,
                tolerable_failures: tolerable as u32,
            },
            num_retained: retained.max(1) as usize,
            retention,
            restart,
            batch_size: c.get_int(keys::BATCH_SIZE).unwrap_or(1024).clamp(1, 1 << 20) as usize,
            channel_capacity: c.get_int(keys::CHANNEL_CAPACITY).unwrap_or(16).clamp(1, 1 << 16) as usize,
        })
    }
}

fn exponential_delay(c: &Configuration) -> ExponentialDelay {
    let d = ExponentialDelay::default();
    ExponentialDelay {
        initial_backoff: c.get_duration(keys::RESTART_INITIAL_BACKOFF).unwrap_or(d.initial_backoff),
        max_backoff: c.get_duration(keys::RESTART_MAX_BACKOFF).unwrap_or(d.max_backoff),
        multiplier: c.get_multiplier(keys::RESTART_BACKOFF_MULTIPLIER).unwrap_or(d.multiplier),
        reset_backoff_threshold: c.get_duration(keys::RESTART_RESET_THRESHOLD).unwrap_or(d.reset_backoff_threshold),
        jitter_factor: c.get_fraction(keys::RESTART_JITTER).unwrap_or(d.jitter_factor),
        attempts_before_reset: c
            .get_int(keys::RESTART_ATTEMPTS_BEFORE_RESET)
            .map(|a| a.clamp(0, u32::MAX as i64) as u32)
            .unwrap_or(d.attempts_before_reset),
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
    let modes = if config.get_bool(keys::PRIVATE_FILES).unwrap_or(true) {
        storage::FileModes::PRIVATE
    } else {
        storage::FileModes::UMASK
    };
    let (storage, has_checkpoint_dir): (Arc<dyn CheckpointStorage>, bool) = match (storage, &checkpoint_dir) {
        (Some(s), _) => (s, true),
        (None, Some(dir)) => (Arc::new(FsCheckpointStorage::new(dir).with_modes(modes)), true),
        (None, None) if settings.coordinator.interval_ms.is_some() => return Err(JobError::NoCheckpointDir),
        // Savepoints still work: they go to their own directories.
        (None, None) => (Arc::new(FsCheckpointStorage::new(std::env::temp_dir()).with_modes(modes)), false),
    };
    let job_dir = if has_checkpoint_dir {
        Some(
            storage
                .initialize(job_id)
                .map_err(|error| JobError::Storage { location: format!("for job {job_id} in {storage:?}"), error })?,
        )
    } else {
        None
    };
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
        let snapshot = Arc::new(load_snapshot(&path)?);
        validate_restore(&mut graph, &snapshot, allow)?;
        let meta = &snapshot.metadata;
        tracing::info!(
            "Starting job {job_id} from {} {} ({}{})",
            if meta.kind.is_savepoint() { "savepoint" } else { "checkpoint" },
            snapshot.dir.display(),
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
        // CLAIM: later checkpoints may reference the snapshot's data files, deleted once unused.
        // NO_CLAIM: the first checkpoint is full and the files are never deleted.
        registry.register(meta.checkpoint_id, reusable_files(&snapshot), claimed);
        if claimed {
            // The claim covers the named snapshot only: files that other snapshots beside it
            // (the old job's other retained checkpoints) share with it stay, so those remain
            // restorable. Flink deletes them once unused (only the claimed one stays valid).
            registry.protect(storage::sibling_snapshots(&snapshot.dir).iter().flat_map(reusable_files));
        }
        force_full = !claimed;
        store.add(Retained {
            id: meta.checkpoint_id,
            is_savepoint: !claimed,
            ownership: if claimed { Ownership::Claimed } else { Ownership::User },
            data: Completed { snapshot: snapshot.clone() },
        });
    }
    // Savepoints a killed process left half-written in the default target go when a job starts
    // on it (and before any savepoint is written into a directory).
    if let Some(dir) = config.get_location(keys::SAVEPOINT_DIR) {
        storage::sweep_partial_savepoints(&dir);
    }
    let next_id = restored.as_ref().map(|r| r.checkpoint_id + 1).unwrap_or(INITIAL_CHECKPOINT_ID);
    let tasks = task_keys(&graph);
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        name: name.to_string(),
        savepoint_dir: config.get_location(keys::SAVEPOINT_DIR),
        job_dir,
        restored: restored.clone(),
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
        graph: Arc::new(graph),
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
        exhausted: HashSet::new(),
        finished: HashSet::new(),
        finish_after_notify: false,
    };
    with(&shared.status, |s| *s = Some(JobStatus::Created));
    let thread = std::thread::Builder::new()
        .name(format!("job-master-{job_id}"))
        .spawn(move || master.run())
        .map_err(|e| JobError::Spawn(e.to_string()))?;
    tracing::info!("Job '{name}' has been submitted with JobID {job_id}");
    Ok(JobHandle { control: JobControl { job_id, shared, tx }, thread: Some(thread), attachments: Vec::new() })
}

fn task_keys(graph: &JobGraph) -> Vec<TaskKey> {
    graph
        .chains
        .iter()
        .enumerate()
        .flat_map(|(v, c)| (0..c.parallelism).map(move |s| TaskKey { vertex: v as u32, subtask: s }))
        .collect()
}

/// Checks that a snapshot's state maps onto the job (before any task starts), and adopts the
/// snapshot's max parallelism where the rules allow. Each deployment computes its own assignment.
fn validate_restore(
    graph: &mut JobGraph,
    snapshot: &LoadedSnapshot,
    allow_non_restored: bool,
) -> Result<(), AssignmentError> {
    let a = assignment::assign(
        &snapshot.dir.display().to_string(),
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

/// Sent as the request token of the final checkpoint taken when all sources are exhausted.
const FINAL_CHECKPOINT: u64 = u64::MAX;

struct DeployedTask {
    key: TaskKey,
    control: Sender<Control>,
    thread: JoinHandle<()>,
    is_source: bool,
}

/// A completed checkpoint as the store keeps it.
struct Completed {
    snapshot: Arc<LoadedSnapshot>,
}

struct Master {
    job_id: JobId,
    name: String,
    settings: Settings,
    graph: Arc<JobGraph>,
    storage: Arc<dyn CheckpointStorage>,
    has_checkpoint_dir: bool,
    coordinator: Coordinator<AckedState>,
    store: CompletedCheckpointStore<Completed>,
    /// Which retained snapshots reference each reusable data file (incremental checkpoints).
    registry: SharedStateRegistry<PathBuf>,
    state_backend: weir_state::StateBackend,
    /// Started from a `-s` snapshot.
    restored_from_snapshot: bool,
    /// A checkpoint completed since the job started.
    completed_since_start: bool,
    /// Token of a stop-with-savepoint in progress, and whether it drains.
    stopping: Option<(u64, bool)>,
    /// Target directory of each savepoint request, by token.
    savepoint_targets: HashMap<u64, PathBuf>,
    rx: Receiver<MasterMsg>,
    tx: Sender<MasterMsg>,
    shared: Arc<Shared>,
    clock: Instant,
    attempt: u32,
    restarts: u32,
    restart: RestartBackoff,
    tasks: Vec<DeployedTask>,
    /// Directory and trigger time of each pending snapshot.
    locations: HashMap<CheckpointId, (PathBuf, Instant)>,
    exhausted: HashSet<TaskKey>,
    finished: HashSet<TaskKey>,
    finish_after_notify: bool,
}

enum Step {
    Continue,
    Failover { cause: String, kind: FailureKind },
    End(JobStatus, Option<String>),
}

impl Master {
    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn set_status(&self, status: JobStatus) {
        tracing::info!("Job {} ({}) switched to {status}.", self.name, self.job_id);
        with(&self.shared.status, |s| *s = Some(status));
    }

    fn run(mut self) -> JobOutcome {
        let (status, failure) = loop {
            match self.deploy_and_run() {
                Step::End(status, failure) => break (status, failure),
                Step::Continue => continue,
                Step::Failover { cause, kind } => {
                    tracing::warn!("Job {} ({}) failed: {cause}", self.name, self.job_id);
                    let actions = self.coordinator.abort_all(FailureReason::TaskFailure);
                    self.execute_all(actions);
                    self.stop_tasks();
                    if kind == FailureKind::Restore && self.restored_from_snapshot && !self.completed_since_start {
                        break (
                            JobStatus::Failed,
                            Some(format!("the job could not restore its state and was not started: {cause}")),
                        );
                    }
                    if kind == FailureKind::Unrecoverable {
                        break (JobStatus::Failed, Some(format!("{cause} (a restart cannot fix this; not restarted)")));
                    }
                    // Jitter only needs to differ between jobs and failures; uuid's generator is at hand.
                    let random = (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
                    let delay = match self.restart.on_failure(wall_clock_ms(), random) {
                        RestartDecision::RestartAfter(delay) => delay,
                        RestartDecision::GiveUp(why) => break (JobStatus::Failed, Some(format!("{cause} ({why})"))),
                    };
                    self.set_status(JobStatus::Restarting);
                    tracing::info!("Restarting job {} in {} ms.", self.job_id, delay.as_millis());
                    if self.wait_or_cancel(delay) {
                        break (JobStatus::Canceled, None);
                    }
                    self.restarts += 1;
                    self.attempt += 1;
                    with(&self.shared.restarts, |r| *r = self.restarts);
                }
            }
        };
        let how = match status {
            JobStatus::Finished => Termination::Finished,
            JobStatus::Canceled => Termination::Canceled,
            _ => Termination::Failed,
        };
        let retained = self.store.len();
        let gone = self.store.shutdown(self.settings.retention, how);
        let kept_any = gone.len() < retained;
        for gone in gone {
            self.discard_retained(&gone);
        }
        // Snapshots still in flight never complete: their directories go.
        for (_, (loc, _)) in std::mem::take(&mut self.locations) {
            self.discard_incomplete(&loc);
        }
        with(&self.shared.in_progress, |n| *n = 0);
        if !kept_any {
            self.remove_empty_job_dir();
        }
        if let Some(f) = &failure {
            tracing::error!("Job {} ({}) failed: {f}", self.name, self.job_id);
        }
        self.set_status(status);
        JobOutcome { job_id: self.job_id, status, failure, restarts: self.restarts }
    }

    /// Waits out the restart delay; true if the job was cancelled meanwhile.
    fn wait_or_cancel(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(MasterMsg::Cancel) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    fn deploy_and_run(&mut self) -> Step {
        let restore = match self.store.latest() {
            Some(latest) => {
                let snapshot = latest.data.snapshot.clone();
                // The same graph that wrote the checkpoint: the mapping cannot fail.
                match assignment::assign(
                    &snapshot.dir.display().to_string(),
                    &snapshot.metadata.operators,
                    &self.graph.operator_infos(),
                    true,
                ) {
                    Ok(a) => Some(Arc::new(RestorePlan { snapshot, operators: a.operators })),
                    Err(e) => {
                        return Step::End(
                            JobStatus::Failed,
                            Some(format!("cannot map the latest checkpoint onto the job: {e}")),
                        )
                    }
                }
            }
            None => None,
        };
        if let Some(r) = &restore {
            tracing::info!("Restoring job {} from {}.", self.job_id, r.snapshot.dir.display());
        }
        if let Err(e) = self.deploy(restore) {
            return Step::End(JobStatus::Failed, Some(e));
        }
        // Wait until every task has restored its state, then start them all at once.
        let mut initialized = HashSet::new();
        while initialized.len() < self.tasks.len() {
            match self.rx.recv() {
                Ok(MasterMsg::TaskInitialized { attempt, task }) if attempt == self.attempt => {
                    initialized.insert(task);
                }
                // Any failure while tasks restore and open counts as a failed restore: retrying reads
                // the same snapshot again.
                Ok(MasterMsg::TaskFailed { attempt, error, kind, .. }) if attempt == self.attempt => {
                    // Unless it says a restart cannot fix it, it is a failed restore.
                    let kind = if kind == FailureKind::Unrecoverable { kind } else { FailureKind::Restore };
                    return Step::Failover { cause: error, kind };
                }
                Ok(MasterMsg::Cancel) => {
                    self.stop_tasks();
                    return Step::End(JobStatus::Canceled, None);
                }
                Ok(_) => {}
                Err(_) => return Step::End(JobStatus::Failed, Some("job master channel closed".into())),
            }
        }
        for t in &self.tasks {
            let _ = t.control.send(Control::Start);
        }
        self.set_status(JobStatus::Running);
        let now = self.now();
        self.coordinator.set_tasks(self.tasks.iter().map(|t| t.key));
        self.coordinator.set_periodic(true, now);
        self.exhausted.clear();
        self.finished.clear();
        self.finish_after_notify = false;
        loop {
            let timeout = match self.coordinator.next_deadline_ms() {
                Some(d) => Duration::from_millis(d.saturating_sub(self.now())),
                None => Duration::from_secs(3600),
            };
            let msg = match self.rx.recv_timeout(timeout) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    return Step::End(JobStatus::Failed, Some("job master channel closed".into()))
                }
            };
            let step = match msg {
                None => {
                    let actions = self.coordinator.tick(self.now());
                    self.execute_all(actions)
                }
                Some(m) => self.handle(m),
            };
            if !matches!(step, Step::Continue) {
                return step;
            }
        }
    }

    fn handle(&mut self, msg: MasterMsg) -> Step {
        let current = self.attempt;
        match msg {
            MasterMsg::Cancel => {
                let actions = self.coordinator.abort_all(FailureReason::CoordinatorShutdown);
                self.execute_all(actions);
                self.stop_tasks();
                Step::End(JobStatus::Canceled, None)
            }
            MasterMsg::Ack { attempt, id, task, states } => {
                let actions = if attempt == current {
                    self.coordinator.acknowledge(id, task, states)
                } else {
                    vec![Action::DiscardLate { id, task, state: states }]
                };
                self.execute_all(actions)
            }
            MasterMsg::Decline { attempt, id, reason, task } if attempt == current => {
                tracing::warn!("Decline checkpoint {id} by task {task:?} of job {}: {reason}", self.job_id);
                let actions = self.coordinator.decline(id, FailureReason::AsyncException(reason), self.now());
                self.execute_all(actions)
            }
            MasterMsg::SourceExhausted { attempt, task } if attempt == current => {
                self.exhausted.insert(task);
                let sources = self.tasks.iter().filter(|t| t.is_source).count();
                if self.exhausted.len() == sources {
                    if self.settings.coordinator.interval_ms.is_some() && self.has_checkpoint_dir {
                        tracing::info!(
                            "All sources of job {} are exhausted; taking the final checkpoint.",
                            self.job_id
                        );
                        let actions =
                            self.coordinator.request(SnapshotKind::Checkpoint, Some(FINAL_CHECKPOINT), self.now());
                        return self.execute_all(actions);
                    }
                    self.finish_sources();
                }
                Step::Continue
            }
            MasterMsg::TaskFinished { attempt, task } if attempt == current => {
                self.finished.insert(task);
                if self.finished.len() == self.tasks.len() {
                    self.stop_tasks();
                    return Step::End(JobStatus::Finished, None);
                }
                Step::Continue
            }
            MasterMsg::TaskFailed { attempt, error, kind, .. } if attempt == current => {
                Step::Failover { cause: error, kind }
            }
            MasterMsg::TriggerSavepoint { token, target, format, stop } => {
                let now = self.now();
                let kind = SnapshotKind::Savepoint { format };
                if stop.is_some() && self.stopping.is_some() {
                    let message = "a stop-with-savepoint is already in progress".to_string();
                    self.finish_operation(token, Operation::Failed { message });
                    return Step::Continue;
                }
                self.savepoint_targets.insert(token, target);
                let actions = match stop {
                    Some(drain) => {
                        let how = if drain { "Draining" } else { "Suspending" };
                        tracing::info!("{how} job {} with a {format:?} savepoint.", self.job_id);
                        self.stopping = Some((token, drain));
                        // Only the final savepoint's data is committed from here on.
                        self.coordinator.set_periodic(false, now);
                        if drain {
                            for t in self.tasks.iter().filter(|t| t.is_source) {
                                let _ = t.control.send(Control::Drain);
                            }
                        }
                        self.coordinator.request_stop_savepoint(kind, Some(token), now)
                    }
                    None => self.coordinator.request(kind, Some(token), now),
                };
                self.execute_all(actions)
            }
            MasterMsg::TriggerCheckpoint { token } => {
                let actions = self.coordinator.request(SnapshotKind::Checkpoint, Some(token), self.now());
                self.execute_all(actions)
            }
            MasterMsg::TaskCanceled { .. } | MasterMsg::TaskInitialized { .. } => Step::Continue,
            _ => Step::Continue, // messages of an earlier attempt
        }
    }

    fn finish_sources(&self) {
        for t in self.tasks.iter().filter(|t| t.is_source) {
            let _ = t.control.send(Control::FinishSource);
        }
    }

    fn execute_all(&mut self, actions: Vec<Action<AckedState>>) -> Step {
        let mut queue: std::collections::VecDeque<_> = actions.into();
        let mut step = Step::Continue;
        while let Some(a) = queue.pop_front() {
            let (more, s) = self.execute(a);
            queue.extend(more);
            if let Some(s) = s {
                step = s;
            }
        }
        with(&self.shared.in_progress, |n| *n = self.locations.len() as u64);
        step
    }

    fn execute(&mut self, action: Action<AckedState>) -> (Vec<Action<AckedState>>, Option<Step>) {
        match action {
            Action::Trigger { id, kind, timestamp_ms: _, token, full } => {
                let location = match token.and_then(|t| self.savepoint_targets.remove(&t)) {
                    Some(target) if kind.is_savepoint() => self.storage.savepoint_location(&target, self.job_id),
                    _ if self.has_checkpoint_dir => self.storage.checkpoint_location(self.job_id, id),
                    _ => Err(std::io::Error::other("no checkpoint directory configured (execution.checkpointing.dir)")),
                };
                match location {
                    Ok(loc) => {
                        tracing::info!("Triggering checkpoint {id} (type={kind:?}) for job {}.", self.job_id);
                        self.locations.insert(id, (loc.clone(), Instant::now()));
                        let stop = token.is_some() && self.stopping.map(|(t, _)| t) == token;
                        let barrier =
                            Barrier { id, kind, timestamp_ms: wall_clock_ms(), location: Arc::new(loc), stop, full };
                        for t in self.tasks.iter().filter(|t| t.is_source) {
                            let _ = t.control.send(Control::Trigger(barrier.clone()));
                        }
                        (Vec::new(), None)
                    }
                    Err(e) => {
                        let reason = FailureReason::Declined(format!("cannot create the snapshot directory: {e}"));
                        (self.coordinator.decline(id, reason, self.now()), None)
                    }
                }
            }
            Action::Finalize { id, kind, timestamp_ms: _, acks } => {
                let outcome = self.write_metadata(id, kind, acks);
                (self.coordinator.finalized(id, outcome, self.now()), None)
            }
            Action::Completed { id, kind, token } => {
                let Some((loc, started)) = self.locations.remove(&id) else {
                    return (Vec::new(), None);
                };
                match load_snapshot(&loc) {
                    Ok(snapshot) => {
                        let (size, written) = self.snapshot_sizes(&snapshot);
                        tracing::info!(
                            "Completed checkpoint {id} for job {} ({size} bytes, checkpointDuration={} ms).",
                            self.job_id,
                            started.elapsed().as_millis()
                        );
                        with(&self.shared.completed, |c| {
                            c.push(CheckpointStats {
                                id,
                                kind,
                                location: loc.clone(),
                                duration: started.elapsed(),
                                state_size: size,
                                checkpointed_size: written,
                            });
                            if c.len() > 100 {
                                c.remove(0);
                            }
                        });
                        if kind.is_savepoint() {
                            // Savepoints never enter the store: they are the user's, never deleted.
                            tracing::info!("Savepoint stored in {}.", loc.display());
                        } else {
                            self.completed_since_start = true;
                            self.registry.register(id, reusable_files(&snapshot), true);
                            let subsumed = self.store.add(Retained {
                                id,
                                is_savepoint: false,
                                ownership: Ownership::Job,
                                data: Completed { snapshot: Arc::new(snapshot) },
                            });
                            for gone in subsumed {
                                self.discard_retained(&gone);
                            }
                        }
                        if let Some(t) = token.filter(|t| *t != FINAL_CHECKPOINT) {
                            self.finish_operation(t, Operation::Completed { checkpoint_id: id, location: loc.clone() });
                        }
                    }
                    Err(e) => {
                        tracing::error!("snapshot {id} was written but cannot be read back: {e}");
                        if let Some(t) = token.filter(|t| *t != FINAL_CHECKPOINT) {
                            self.finish_operation(t, Operation::Failed { message: e.to_string() });
                        }
                    }
                }
                if token == Some(FINAL_CHECKPOINT) || (token.is_some() && token == self.stopping.map(|(t, _)| t)) {
                    self.finish_after_notify = true;
                }
                (Vec::new(), None)
            }
            Action::NotifyComplete { id } => {
                for t in &self.tasks {
                    let _ = t.control.send(Control::CheckpointComplete(id));
                }
                if std::mem::take(&mut self.finish_after_notify) {
                    self.finish_sources();
                }
                (Vec::new(), None)
            }
            Action::Aborted { id, kind, reason, token } => {
                let what = if kind.is_savepoint() { "Savepoint" } else { "Checkpoint" };
                tracing::warn!("{what} {id} of job {} failed: {}", self.job_id, reason.message());
                with(&self.shared.failed_checkpoints, |n| *n += 1);
                // A failed snapshot leaves nothing that looks like one.
                if let Some((loc, _)) = self.locations.remove(&id) {
                    self.discard_incomplete(&loc);
                }
                if !kind.is_savepoint() {
                    self.delete_unreferenced_shared_files();
                }
                for t in &self.tasks {
                    let _ = t.control.send(Control::CheckpointAborted(id));
                }
                let mut step = None;
                if let Some(t) = token.filter(|t| *t != FINAL_CHECKPOINT) {
                    let message = format!("{what} {id} failed: {}", reason.message());
                    self.finish_operation(t, Operation::Failed { message });
                    if let Some((_, drain)) = self.stopping.filter(|(s, _)| *s == t) {
                        self.stopping = None;
                        if drain {
                            // The inputs already ended: the job cannot simply resume.
                            let cause = format!("stop with --drain failed: {}", reason.message());
                            step = Some(Step::Failover { cause, kind: FailureKind::Recoverable });
                        } else {
                            // The stop failed: the job keeps running, with periodic checkpoints.
                            let now = self.now();
                            self.coordinator.set_periodic(true, now);
                        }
                    }
                }
                let retry = token == Some(FINAL_CHECKPOINT)
                    && reason != FailureReason::TaskFailure
                    && reason != FailureReason::CoordinatorShutdown;
                let more = if retry {
                    self.coordinator.request(SnapshotKind::Checkpoint, Some(FINAL_CHECKPOINT), self.now())
                } else {
                    Vec::new()
                };
                (more, step)
            }
            Action::Rejected { token, reason } => {
                if let Some(t) = token.filter(|t| *t != FINAL_CHECKPOINT) {
                    self.savepoint_targets.remove(&t);
                    if self.stopping.is_some_and(|(s, _)| s == t) {
                        self.stopping = None;
                    }
                    self.finish_operation(t, Operation::Failed { message: reason.message() });
                }
                (Vec::new(), None)
            }
            Action::DiscardLate { id, state, .. } => {
                let retained = self.store.iter().any(|e| e.id == id);
                if !retained && !self.locations.contains_key(&id) && self.has_checkpoint_dir {
                    if let Some(dir) = &self.shared.job_dir {
                        let loc = dir.join(format!("chk-{id}"));
                        // Data files the late task uploaded to shared/ that nothing references.
                        for (_, sub) in &state {
                            for f in sub.native.iter().flat_map(|n| &n.files) {
                                let path = storage::normalize(&loc.join(&f.file.path));
                                if !self.registry.contains(&path) {
                                    storage::delete_file_and_empty_dir(&path);
                                }
                            }
                        }
                        self.discard_incomplete(&loc);
                    }
                }
                (Vec::new(), None)
            }
            Action::FailJob { message } => {
                (Vec::new(), Some(Step::Failover { cause: message, kind: FailureKind::Recoverable }))
            }
        }
    }

    /// Deletes a retained snapshot the job owns: the data files only it referenced, then its
    /// directory, except files a later checkpoint still references (a CLAIM-restored snapshot
    /// whose files later checkpoints reuse); those go when their last reference does.
    fn discard_retained(&mut self, gone: &Retained<Completed>) {
        for file in self.registry.release(gone.id) {
            storage::delete_file_and_empty_dir(&file);
        }
        let dir = &gone.data.snapshot.dir;
        let keep: HashSet<PathBuf> = self.registry.files().filter(|f| f.starts_with(dir)).cloned().collect();
        if let Err(e) = self.storage.discard(&gone.data.snapshot, &keep) {
            tracing::warn!("could not delete {}: {e}", dir.display());
        }
    }

    /// Once a job that retains nothing has ended: its `shared/` and `taskowned/` directories and
    /// its job directory, if they are empty (nothing else is touched).
    fn remove_empty_job_dir(&self) {
        let Some(job_dir) = &self.shared.job_dir else {
            return;
        };
        for sub in ["shared", "taskowned"] {
            let _ = std::fs::remove_dir(job_dir.join(sub));
        }
        let _ = std::fs::remove_dir(job_dir);
    }

    /// After a failed checkpoint: deletes files in `shared/` that no retained snapshot references
    /// (what the failed checkpoint uploaded). No other checkpoint is in flight at that moment.
    fn delete_unreferenced_shared_files(&self) {
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
    fn snapshot_sizes(&self, snapshot: &LoadedSnapshot) -> (u64, u64) {
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

    fn discard_incomplete(&self, dir: &std::path::Path) {
        if let Err(e) = self.storage.discard_incomplete(dir) {
            tracing::warn!("could not delete {}: {e}", dir.display());
        }
    }

    fn finish_operation(&self, token: u64, outcome: Operation) {
        with(&self.shared.operations, |ops| {
            ops.insert(token, outcome);
        });
    }

    fn write_metadata(
        &self,
        id: CheckpointId,
        kind: SnapshotKind,
        acks: Vec<(TaskKey, AckedState)>,
    ) -> Result<(), String> {
        let (storage, Some((loc, _))) = (&self.storage, self.locations.get(&id)) else {
            return Err("no checkpoint location".into());
        };
        let mut by_op: HashMap<OperatorId, Vec<metadata::SubtaskSnapshot>> = HashMap::new();
        for (_, states) in acks {
            for (op, sub) in states {
                by_op.entry(op).or_default().push(sub);
            }
        }
        let operators = self
            .graph
            .nodes
            .iter()
            .map(|n| {
                let mut subtasks = by_op.remove(&n.operator_id).unwrap_or_default();
                subtasks.sort_by_key(|s| s.subtask);
                OperatorSnapshot {
                    operator_id: n.operator_id,
                    uid: n.uid.clone(),
                    name: n.name.clone(),
                    parallelism: n.parallelism,
                    max_parallelism: n.max_parallelism,
                    subtasks,
                }
            })
            .collect();
        let meta = SnapshotMetadata {
            checkpoint_id: id,
            job_id: self.job_id.to_hex(),
            kind,
            timestamp_ms: wall_clock_ms(),
            operators,
        };
        let bytes = metadata::encode(&meta).map_err(|e| e.to_string())?;
        storage
            .write_metadata(loc, &bytes)
            .map_err(|e| format!("writing {}: {e}", loc.join(metadata::METADATA_FILE_NAME).display()))
    }

    fn deploy(&mut self, restore: Option<Arc<RestorePlan>>) -> Result<(), String> {
        let graph = self.graph.clone();
        let cap = self.settings.channel_capacity;
        // senders[edge][producer subtask] and receivers[edge][consumer subtask]
        let mut senders: HashMap<usize, Vec<Vec<Box<dyn std::any::Any + Send>>>> = HashMap::new();
        let mut receivers: HashMap<usize, Vec<Vec<Box<dyn std::any::Any + Send>>>> = HashMap::new();
        for (e, edge) in graph.edges.iter().enumerate() {
            if edge.chained {
                continue;
            }
            let (pf, pt) = (graph.nodes[edge.from].parallelism as usize, graph.nodes[edge.to].parallelism as usize);
            let ty = graph.nodes[edge.from].output.clone().ok_or("an edge leaves an operator without output")?;
            let mut s: Vec<Vec<_>> = (0..pf).map(|_| Vec::new()).collect();
            let mut r: Vec<Vec<_>> = (0..pt).map(|_| Vec::new()).collect();
            for (i, si) in s.iter_mut().enumerate() {
                for (j, rj) in r.iter_mut().enumerate() {
                    if edge.kind == crate::graph::EdgeKind::Forward && i != j {
                        continue;
                    }
                    let (tx, rx) = ty.channel(cap);
                    si.push(tx);
                    rj.push(rx);
                }
            }
            senders.insert(e, s);
            receivers.insert(e, r);
        }
        self.tasks.clear();
        for (v, chain) in graph.chains.iter().enumerate() {
            for s in 0..chain.parallelism as usize {
                let mut task_senders = HashMap::new();
                for &n in &chain.nodes {
                    for &e in &graph.nodes[n].outputs {
                        if let Some(per_producer) = senders.get_mut(&e) {
                            task_senders.insert(e, std::mem::take(&mut per_producer[s]));
                        }
                    }
                }
                let mut task_receivers = Vec::new();
                for &e in &graph.nodes[chain.head].inputs {
                    if let Some(per_consumer) = receivers.get_mut(&e) {
                        task_receivers.extend(std::mem::take(&mut per_consumer[s]));
                    }
                }
                let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
                let key = TaskKey { vertex: v as u32, subtask: s as u32 };
                let plan = TaskPlan {
                    key,
                    attempt: self.attempt,
                    job_id: self.job_id,
                    graph: graph.clone(),
                    restore: restore.clone(),
                    senders: task_senders,
                    receivers: task_receivers,
                    control: ctl_rx,
                    master: self.tx.clone(),
                    storage: Some(self.storage.clone()),
                    batch_size: self.settings.batch_size,
                    state_backend: self.state_backend.clone(),
                };
                let thread = task::spawn(plan).map_err(|e| format!("cannot start a task thread: {e}"))?;
                self.tasks.push(DeployedTask {
                    key,
                    control: ctl_tx,
                    thread,
                    is_source: graph.nodes[chain.head].is_source,
                });
            }
        }
        Ok(())
    }

    /// Cancels every task and waits for its thread.
    fn stop_tasks(&mut self) {
        for t in &self.tasks {
            let _ = t.control.send(Control::Cancel);
        }
        for t in self.tasks.drain(..) {
            drop(t.control);
            let _ = t.thread.join();
        }
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Every file of the snapshot's native handles: resolved and normalized path, size, reusable.
fn native_files(snapshot: &LoadedSnapshot) -> impl Iterator<Item = (PathBuf, u64, bool)> + '_ {
    snapshot
        .metadata
        .operators
        .iter()
        .flat_map(|op| &op.subtasks)
        .filter_map(|s| s.native.as_ref())
        .flat_map(|n| &n.files)
        .map(|f| (storage::normalize(&snapshot.resolve(&f.file.path)), f.file.size, f.reusable))
}

/// The data files of a snapshot that later incremental checkpoints may reference.
fn reusable_files(snapshot: &LoadedSnapshot) -> Vec<PathBuf> {
    let files: HashSet<PathBuf> = native_files(snapshot).filter(|f| f.2).map(|f| f.0).collect();
    files.into_iter().collect()
}

fn snapshot_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Re-exported for tools and tests: the newest valid checkpoint of a job directory.
pub use storage::latest_checkpoint;

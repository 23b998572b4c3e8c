//! The job master: deploys tasks, drives the checkpoint coordinator, keeps the completed-checkpoint
//! store, and restarts the job from the latest checkpoint when a task fails.

use super::control::{with, JobOutcome, JobStatus, Operation, Shared};
use super::deploy::DeployedTask;
use super::restore::reusable_files;
use super::settings::Settings;
use super::stats::{wall_clock_ms, CheckpointStats, ExceptionRecord};
use crate::graph::JobGraph;
use crate::operator::{Barrier, Control};
use crate::protocol::{AckedState, FailureKind, MasterMsg, RestorePlan, SavepointMode, TaskFailure};
use crate::storage::{self, load_snapshot, CheckpointStorage, LoadedSnapshot};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::assignment;
use weir_core::coordinator::{Action, Coordinator, FailureReason, TaskKey};
use weir_core::location::SnapshotUri;
use weir_core::metadata::{self, OperatorSnapshot, SnapshotKind, SnapshotMetadata};
use weir_core::restart::{RestartBackoff, RestartDecision};
use weir_core::shared_state::SharedStateRegistry;
use weir_core::store::{CompletedCheckpointStore, Ownership, Retained, Termination};
use weir_core::{CheckpointId, JobId, OperatorId};

/// Who asked for a snapshot; the coordinator hands it back in the actions about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Requester {
    /// An operation of the control API (savepoint, stop, manual checkpoint), by its token.
    Operation(u64),
    /// The checkpoint taken once every source is exhausted; the job finishes after it.
    FinalCheckpoint,
}

impl Requester {
    /// The control-API operation's token, if a user asked.
    fn operation(self) -> Option<u64> {
        match self {
            Requester::Operation(token) => Some(token),
            Requester::FinalCheckpoint => None,
        }
    }
}

/// A completed checkpoint as the store keeps it.
pub(super) struct Completed {
    pub snapshot: Arc<LoadedSnapshot>,
}

pub(super) struct Master {
    pub(super) job_id: JobId,
    pub(super) name: String,
    pub(super) settings: Settings,
    pub(super) graph: Arc<JobGraph>,
    pub(super) storage: Arc<dyn CheckpointStorage>,
    pub(super) has_checkpoint_dir: bool,
    pub(super) coordinator: Coordinator<AckedState, Requester>,
    pub(super) store: CompletedCheckpointStore<Completed>,
    /// Which retained snapshots reference each reusable data file (incremental checkpoints).
    pub(super) registry: SharedStateRegistry<SnapshotUri>,
    pub(super) state_backend: weir_state::StateBackend,
    /// Started from a `-s` snapshot.
    pub(super) restored_from_snapshot: bool,
    /// A checkpoint completed since the job started.
    pub(super) completed_since_start: bool,
    /// Token of a stop-with-savepoint in progress, and whether it drains.
    pub(super) stopping: Option<(u64, SavepointMode)>,
    /// Target directory of each savepoint request, by token.
    pub(super) savepoint_targets: HashMap<u64, SnapshotUri>,
    pub(super) rx: Receiver<MasterMsg>,
    pub(super) tx: Sender<MasterMsg>,
    pub(super) shared: Arc<Shared>,
    pub(super) clock: Instant,
    pub(super) attempt: u32,
    pub(super) restarts: u32,
    pub(super) restart: RestartBackoff,
    pub(super) tasks: Vec<DeployedTask>,
    /// Directory and trigger time of each pending snapshot whose directory exists.
    pub(super) locations: HashMap<CheckpointId, (SnapshotUri, Instant)>,
    /// Snapshots triggered whose directory the storage thread is making: kind, requester, full,
    /// and when they were triggered.
    pub(super) triggering: HashMap<CheckpointId, (SnapshotKind, Option<Requester>, bool, Instant)>,
    /// Snapshots whose `_metadata` is written and read back, until the coordinator completes
    /// them: the snapshot and the bytes directly in its directory.
    pub(super) written: HashMap<CheckpointId, (Arc<LoadedSnapshot>, u64)>,
    /// Where the storage work goes (see [`super::io`]).
    pub(super) io: super::io::IoThread,
    pub(super) exhausted: HashSet<TaskKey>,
    pub(super) finished: HashSet<TaskKey>,
    pub(super) finish_after_notify: bool,
    /// The task whose failure is failing the job over, as Flink names tasks.
    pub(super) failed_task: Option<String>,
    /// A task that failed because a connected task stopped, held until
    /// [`SECONDARY_FAILURE_GRACE`] has passed in case the stopped task's own failure follows.
    pub(super) secondary_failure: Option<(TaskFailure, TaskKey, Instant)>,
}

/// How long a failure that only says a connected task stopped waits for that task's own failure:
/// a failing task drops its operators (closing a RocksDB instance can take a while) before it
/// reports, so its neighbours often report first.
const SECONDARY_FAILURE_GRACE: Duration = Duration::from_secs(2);

pub(super) enum Step {
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
        with(&self.shared.status_timestamps, |t| t.entered(status, wall_clock_ms()));
    }

    /// Adds a failure to the exception history (Flink's `/jobs/:id/exceptions`).
    fn record_exception(&mut self, message: &str) {
        let record = ExceptionRecord {
            timestamp_ms: wall_clock_ms(),
            message: message.to_string(),
            task: self.failed_task.take(),
        };
        with(&self.shared.exceptions, |e| e.record(record));
    }

    fn note_failed_task(&mut self, task: TaskKey) {
        self.failed_task = self.shared.info.vertices.get(task.vertex as usize).map(|v| v.task_name(task.subtask));
    }

    pub(super) fn run(mut self) -> JobOutcome {
        let (status, failure) = loop {
            match self.deploy_and_run() {
                Step::End(status, failure) => {
                    if let Some(f) = &failure {
                        self.record_exception(f);
                    }
                    break (status, failure);
                }
                Step::Continue => continue,
                Step::Failover { cause, kind } => {
                    tracing::warn!("Job {} ({}) failed: {cause}", self.name, self.job_id);
                    self.record_exception(&cause);
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
        for gone in self.store.shutdown(self.settings.retention, how) {
            self.discard_retained(&gone);
        }
        // Snapshots still in flight never complete: their directories go.
        for (_, (loc, _)) in std::mem::take(&mut self.locations) {
            self.discard_incomplete(&loc);
        }
        with(&self.shared.in_progress, |n| *n = 0);
        with(&self.shared.history, |h| h.clear_pending());
        self.finish_storage_work();
        if let Some(f) = &failure {
            tracing::error!("Job {} ({}) failed: {f}", self.name, self.job_id);
        }
        self.set_status(status);
        JobOutcome { job_id: self.job_id, status, failure, restarts: self.restarts }
    }

    /// Waits out the restart delay; true if the job was cancelled meanwhile.
    fn wait_or_cancel(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(MasterMsg::Cancel) => return true,
                Ok(msg) => self.refuse_operation(msg, "RESTARTING"),
                Err(_) => return false,
            }
        }
    }

    fn deploy_and_run(&mut self) -> Step {
        let restore = match self.store.latest() {
            Some(latest) => {
                let snapshot = latest.data.snapshot.clone();
                // A snapshot on object storage is restored from local copies of its files.
                if let Err(e) = snapshot.stage(self.storage.store(), &self.shared.restore_progress) {
                    let cause = format!("cannot download {} for the restore: {e}", snapshot.dir);
                    return Step::Failover { cause, kind: FailureKind::Restore };
                }
                // The same graph that wrote the checkpoint: the mapping cannot fail.
                match assignment::assign(
                    &snapshot.dir.to_string(),
                    &snapshot.metadata.operators,
                    &self.graph.operator_infos(),
                    true,
                ) {
                    Ok(a) => Some(Arc::new(RestorePlan {
                        snapshot,
                        operators: a.operators,
                        checked_files: Default::default(),
                    })),
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
            tracing::info!("Restoring job {} from {}.", self.job_id, r.snapshot.dir);
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
                Ok(MasterMsg::TaskFailed { attempt, failure, task }) if attempt == self.attempt => {
                    self.note_failed_task(task);
                    // Unless it says a restart cannot fix it, it is a failed restore.
                    let kind = match failure.kind() {
                        FailureKind::Unrecoverable => FailureKind::Unrecoverable,
                        _ => FailureKind::Restore,
                    };
                    return Step::Failover { cause: failure.to_string(), kind };
                }
                Ok(MasterMsg::Cancel) => {
                    self.stop_tasks();
                    return Step::End(JobStatus::Canceled, None);
                }
                Ok(msg) => self.refuse_operation(msg, "still restoring its state"),
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
        self.secondary_failure = None;
        loop {
            let mut timeout = match self.coordinator.next_deadline_ms() {
                Some(d) => Duration::from_millis(d.saturating_sub(self.now())),
                None => Duration::from_secs(3600),
            };
            if let Some(since) = self.secondary_failure.as_ref().map(|(.., since)| *since) {
                let left = SECONDARY_FAILURE_GRACE.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    timeout = timeout.min(left);
                } else if let Some((failure, task, _)) = self.secondary_failure.take() {
                    // No failure of its own came: the secondary one is all there is.
                    self.note_failed_task(task);
                    return Step::Failover { cause: failure.to_string(), kind: failure.kind() };
                }
            }
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
                    let actions = self.coordinator.acknowledge(id, task, states);
                    self.report_acknowledged(id);
                    actions
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
                        let final_checkpoint = Some(Requester::FinalCheckpoint);
                        let actions = self.coordinator.request(SnapshotKind::Checkpoint, final_checkpoint, self.now());
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
            MasterMsg::TaskFailed { attempt, failure, task } if attempt == current => {
                if failure.is_secondary() {
                    if self.secondary_failure.is_none() {
                        self.secondary_failure = Some((failure, task, Instant::now()));
                    }
                    return Step::Continue;
                }
                self.secondary_failure = None;
                self.note_failed_task(task);
                Step::Failover { cause: failure.to_string(), kind: failure.kind() }
            }
            MasterMsg::TriggerSavepoint { token, target, format, mode } => {
                let now = self.now();
                let kind = SnapshotKind::Savepoint { format };
                let requester = Some(Requester::Operation(token));
                if mode != SavepointMode::Intermediate && self.stopping.is_some() {
                    let message = "a stop-with-savepoint is already in progress".to_string();
                    self.finish_operation(token, Operation::Failed { message });
                    return Step::Continue;
                }
                self.savepoint_targets.insert(token, target);
                let actions = match mode {
                    SavepointMode::Stop | SavepointMode::Drain => {
                        let drain = mode == SavepointMode::Drain;
                        let how = if drain { "Draining" } else { "Suspending" };
                        tracing::info!("{how} job {} with a {format:?} savepoint.", self.job_id);
                        self.stopping = Some((token, mode));
                        // Only the final savepoint's data is committed from here on.
                        self.coordinator.set_periodic(false, now);
                        if drain {
                            for t in self.tasks.iter().filter(|t| t.is_source) {
                                let _ = t.control.send(Control::Drain);
                            }
                        }
                        self.coordinator.request_stop_savepoint(kind, requester, now)
                    }
                    SavepointMode::Intermediate => self.coordinator.request(kind, requester, now),
                };
                self.execute_all(actions)
            }
            MasterMsg::TriggerCheckpoint { token } => {
                let requester = Some(Requester::Operation(token));
                let actions = self.coordinator.request(SnapshotKind::Checkpoint, requester, self.now());
                self.execute_all(actions)
            }
            MasterMsg::SnapshotLocation { id, location } => self.located(id, location),
            MasterMsg::MetadataWritten { id, result } => {
                let outcome = result.map(|(snapshot, own_bytes)| {
                    self.written.insert(id, (Arc::new(snapshot), own_bytes));
                });
                let actions = self.coordinator.finalized(id, outcome, self.now());
                let step = self.execute_all(actions);
                // Completing took it; if the snapshot was aborted meanwhile, it goes.
                self.written.remove(&id);
                step
            }
            MasterMsg::TaskCanceled { .. } | MasterMsg::TaskInitialized { .. } => Step::Continue,
            _ => Step::Continue, // messages of an earlier attempt
        }
    }

    /// The job ends once its storage work is done (unless the store hangs): directories made for
    /// snapshots that will never be are deleted, then the job's directory if nothing is left in it.
    fn finish_storage_work(&mut self) {
        let mut done = self.io.drain(CLEANUP_TIMEOUT);
        if done {
            while let Ok(msg) = self.rx.try_recv() {
                if let MasterMsg::SnapshotLocation { location: Ok(loc), .. } = msg {
                    self.discard_incomplete(&loc);
                }
            }
            self.remove_empty_job_dir();
            done = self.io.drain(CLEANUP_TIMEOUT);
        }
        if !done {
            tracing::warn!(
                "Job {}: the checkpoint storage has not finished its work after {} s; the job ends without it (what is left behind has no _metadata and never restores)",
                self.job_id,
                CLEANUP_TIMEOUT.as_secs()
            );
        }
    }

    /// The storage thread made (or failed to make) the directory of snapshot `id`: its barriers go
    /// out, or it is declined. A snapshot aborted meanwhile only has its directory deleted.
    fn located(&mut self, id: CheckpointId, location: std::io::Result<SnapshotUri>) -> Step {
        let triggered = self.triggering.remove(&id);
        let (Some((kind, token, full, triggered_at)), true) = (triggered, self.coordinator.acknowledged(id).is_some())
        else {
            if let Ok(loc) = location {
                self.discard_incomplete(&loc);
            }
            return Step::Continue;
        };
        let loc = match location {
            Ok(loc) => loc,
            Err(e) => {
                let reason = FailureReason::Declined(format!("cannot create the snapshot directory: {e}"));
                let actions = self.coordinator.decline(id, reason, self.now());
                return self.execute_all(actions);
            }
        };
        tracing::info!("Triggering checkpoint {id} (type={kind:?}) for job {}.", self.job_id);
        let operation = token.and_then(Requester::operation);
        if let Some(t) = operation {
            with(&self.shared.operation_locations, |l| {
                l.insert(t, loc.clone());
            });
        }
        self.locations.insert(id, (loc.clone(), triggered_at));
        self.report_acknowledged(id);
        let stop = operation.is_some() && self.stopping.map(|(t, _)| t) == operation;
        let barrier = Barrier { id, kind, timestamp_ms: wall_clock_ms(), location: Arc::new(loc), stop, full };
        for t in self.tasks.iter().filter(|t| t.is_source) {
            let _ = t.control.send(Control::Trigger(barrier.clone()));
        }
        Step::Continue
    }

    /// Publishes how many subtasks have acknowledged a pending snapshot, for its progress.
    fn report_acknowledged(&self, id: CheckpointId) {
        if let (Some((acknowledged, subtasks)), Some((location, _))) =
            (self.coordinator.acknowledged(id), self.locations.get(&id))
        {
            self.shared.write_progress.acknowledged(location, acknowledged, subtasks);
        }
    }

    fn finish_sources(&self) {
        for t in self.tasks.iter().filter(|t| t.is_source) {
            let _ = t.control.send(Control::FinishSource);
        }
    }

    fn execute_all(&mut self, actions: Vec<Action<AckedState, Requester>>) -> Step {
        let mut queue: std::collections::VecDeque<_> = actions.into();
        let mut step = Step::Continue;
        while let Some(a) = queue.pop_front() {
            let (more, s) = self.execute(a);
            queue.extend(more);
            if let Some(s) = s {
                step = s;
            }
        }
        with(&self.shared.in_progress, |n| *n = self.coordinator.pending_ids().len() as u64);
        step
    }

    fn execute(&mut self, action: Action<AckedState, Requester>) -> (Vec<Action<AckedState, Requester>>, Option<Step>) {
        match action {
            Action::Trigger { id, kind, timestamp_ms: _, token, full } => {
                let target = token
                    .and_then(Requester::operation)
                    .and_then(|t| self.savepoint_targets.remove(&t))
                    .filter(|_| kind.is_savepoint());
                self.triggering.insert(id, (kind, token, full, Instant::now()));
                with(&self.shared.history, |h| h.triggered(id, kind, wall_clock_ms()));
                let (storage, tx, job, has_dir) =
                    (self.storage.clone(), self.tx.clone(), self.job_id, self.has_checkpoint_dir);
                self.io.submit(move || {
                    let location = match target {
                        Some(target) => storage.savepoint_location(&target, job),
                        None if has_dir => storage.checkpoint_location(job, id),
                        None => Err(std::io::Error::other(
                            "no checkpoint directory configured (execution.checkpointing.dir)",
                        )),
                    };
                    let _ = tx.send(MasterMsg::SnapshotLocation { id, location });
                });
                (Vec::new(), None)
            }
            Action::Finalize { id, kind, timestamp_ms: _, acks } => match self.metadata(id, kind, acks) {
                Ok((location, bytes)) => {
                    let (storage, tx) = (self.storage.clone(), self.tx.clone());
                    self.io.submit(move || {
                        let result = write_and_read_back(storage.as_ref(), id, &location, &bytes);
                        let _ = tx.send(MasterMsg::MetadataWritten { id, result });
                    });
                    (Vec::new(), None)
                }
                Err(e) => (self.coordinator.finalized(id, Err(e), self.now()), None),
            },
            Action::Completed { id, kind, token } => {
                let (Some((loc, started)), Some((snapshot, own_bytes))) =
                    (self.locations.remove(&id), self.written.remove(&id))
                else {
                    return (Vec::new(), None);
                };
                let (size, written) = self.snapshot_sizes(&snapshot, own_bytes);
                let vertices = self.vertex_sizes(&snapshot);
                tracing::info!(
                    "Completed checkpoint {id} for job {} ({size} bytes, checkpointDuration={} ms).",
                    self.job_id,
                    started.elapsed().as_millis()
                );
                let num_subtasks = self.tasks.len() as u32;
                with(&self.shared.history, |h| {
                    let now = wall_clock_ms();
                    h.completed(CheckpointStats {
                        id,
                        kind,
                        location: loc.clone(),
                        duration: started.elapsed(),
                        state_size: size,
                        checkpointed_size: written,
                        trigger_timestamp_ms: h.trigger_time(id, now),
                        completed_timestamp_ms: now,
                        num_subtasks,
                        vertices,
                    })
                });
                if kind.is_savepoint() {
                    // Savepoints never enter the store: they are the user's, never deleted.
                    tracing::info!("Savepoint stored in {loc}.");
                } else {
                    self.completed_since_start = true;
                    self.registry.register(id, reusable_files(&snapshot), true);
                    let subsumed = self.store.add(Retained {
                        id,
                        is_savepoint: false,
                        ownership: Ownership::Job,
                        data: Completed { snapshot },
                    });
                    for gone in subsumed {
                        self.discard_retained(&gone);
                    }
                }
                if let Some(t) = token.and_then(Requester::operation) {
                    // Reported once the storage work queued before it (deleting what this
                    // checkpoint subsumed) is done: whoever asked then sees retention applied.
                    let (shared, completed) =
                        (self.shared.clone(), Operation::Completed { checkpoint_id: id, location: loc.clone() });
                    self.io.submit(move || finish_operation(&shared, t, completed));
                }
                let stop =
                    token.and_then(Requester::operation).is_some_and(|t| self.stopping.is_some_and(|(s, _)| s == t));
                if token == Some(Requester::FinalCheckpoint) || stop {
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
                with(&self.shared.history, |h| h.failed(id, kind, reason.message(), wall_clock_ms()));
                // A failed snapshot leaves nothing that looks like one.
                let discarding = match self.locations.remove(&id) {
                    Some((loc, _)) => {
                        self.discard_incomplete(&loc);
                        true
                    }
                    None => false,
                };
                if !kind.is_savepoint() {
                    self.delete_unreferenced_shared_files();
                }
                for t in &self.tasks {
                    let _ = t.control.send(Control::CheckpointAborted(id));
                }
                let mut step = None;
                if let Some(t) = token.and_then(Requester::operation) {
                    let message = format!("{what} {id} failed: {}", reason.message());
                    if discarding {
                        // Reported once the deletion of its directory queued above is done: whoever
                        // asked then finds nothing that looks like a savepoint.
                        let shared = self.shared.clone();
                        self.io.submit(move || finish_operation(&shared, t, Operation::Failed { message }));
                    } else {
                        // No directory yet (the storage may hang making it): reported at once.
                        self.finish_operation(t, Operation::Failed { message });
                    }
                    if let Some((_, mode)) = self.stopping.filter(|(s, _)| *s == t) {
                        self.stopping = None;
                        if mode == SavepointMode::Drain {
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
                let retry = token == Some(Requester::FinalCheckpoint)
                    && reason != FailureReason::TaskFailure
                    && reason != FailureReason::CoordinatorShutdown;
                let more = if retry {
                    self.coordinator.request(SnapshotKind::Checkpoint, token, self.now())
                } else {
                    Vec::new()
                };
                (more, step)
            }
            Action::Rejected { token, reason } => {
                if let Some(t) = token.and_then(Requester::operation) {
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
                    self.discard_late(id, &state);
                }
                (Vec::new(), None)
            }
            Action::FailJob { message } => {
                (Vec::new(), Some(Step::Failover { cause: message, kind: FailureKind::Recoverable }))
            }
        }
    }

    /// A savepoint or checkpoint request that reached the master while the job was not running
    /// (it was RUNNING when asked, then failed over): it fails at once, so nobody waits for it.
    fn refuse_operation(&mut self, msg: MasterMsg, state: &str) {
        let token = match msg {
            MasterMsg::TriggerSavepoint { token, .. } | MasterMsg::TriggerCheckpoint { token } => token,
            // The directory of a snapshot the failover aborted: nothing will use it.
            MasterMsg::SnapshotLocation { id, location } => {
                self.located(id, location);
                return;
            }
            _ => return,
        };
        let message = format!("job {} is {state}; retry once it runs again", self.job_id);
        self.finish_operation(token, Operation::Failed { message });
    }

    fn finish_operation(&self, token: u64, outcome: Operation) {
        finish_operation(&self.shared, token, outcome);
    }

    /// Snapshot `id`'s directory and `_metadata`, from the acknowledged states.
    fn metadata(
        &self,
        id: CheckpointId,
        kind: SnapshotKind,
        acks: Vec<(TaskKey, AckedState)>,
    ) -> Result<(SnapshotUri, Vec<u8>), String> {
        let Some((loc, _)) = self.locations.get(&id) else {
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
        Ok((loc.clone(), bytes))
    }
}

fn finish_operation(shared: &Shared, token: u64, outcome: Operation) {
    with(&shared.operation_locations, |l| {
        l.remove(&token);
    });
    with(&shared.operations, |ops| {
        ops.insert(token, outcome);
    });
}

/// Writes a snapshot's `_metadata` last, then reads the snapshot back as a restore would: a
/// snapshot that cannot be read back does not complete.
fn write_and_read_back(
    storage: &dyn CheckpointStorage,
    id: CheckpointId,
    location: &SnapshotUri,
    bytes: &[u8],
) -> Result<(LoadedSnapshot, u64), String> {
    storage
        .write_metadata(location, bytes)
        .map_err(|e| format!("writing {}: {e}", location.join(metadata::METADATA_FILE_NAME)))?;
    let snapshot = load_snapshot(storage.store(), location)
        .map_err(|e| format!("snapshot {id} was written but cannot be read back: {e}"))?;
    let own_bytes = storage
        .store()
        .list(location)
        .map(|entries| entries.iter().filter(|e| e.kind == storage::EntryKind::File).map(|e| e.size).sum())
        .unwrap_or(0);
    Ok((snapshot, own_bytes))
}

/// How long an ending job waits for its storage work (deleting what it no longer keeps).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

//! The checkpoint coordinator's decisions, as a pure state machine.
//!
//! The runtime feeds it events (a clock tick, an acknowledgement, a decline, the outcome of writing
//! `_metadata`) with the current time in milliseconds, and performs the [`Action`]s it returns:
//! inject barriers, write metadata, notify tasks, delete a failed checkpoint's files, fail the job.
//! Semantics follow Flink's `CheckpointCoordinator`, `CheckpointRequestDecider` and
//! `CheckpointFailureManager` (digest §1): one id counter for checkpoints and savepoints, at most
//! one snapshot in flight, min pause for periodic checkpoints only, expiry after the timeout,
//! tolerable failures counted per checkpoint id, and savepoints that complete without committing.

use crate::metadata::SnapshotKind;
use crate::CheckpointId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A task: one subtask of one vertex (a chain of operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    pub vertex: u32,
    pub subtask: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorSettings {
    /// Periodic interval in ms; `None` disables periodic checkpoints.
    pub interval_ms: Option<u64>,
    pub min_pause_ms: u64,
    pub timeout_ms: u64,
    pub tolerable_failures: u32,
}

/// Why a snapshot did not complete (Flink's `CheckpointFailureReason`, the subset Weir produces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    Expired,
    /// A task declined, with the task's reason.
    Declined(String),
    /// Writing a task's state failed, with the cause.
    AsyncException(String),
    /// Writing `_metadata` failed, with the cause.
    FinalizeFailure(String),
    TaskFailure,
    CoordinatorShutdown,
    /// A stop-with-savepoint or end-of-input request is already in flight.
    TooManyRequests,
}

impl FailureReason {
    pub fn message(&self) -> String {
        match self {
            FailureReason::Expired => "Checkpoint expired before completing.".into(),
            FailureReason::Declined(why) => format!("Checkpoint was declined: {why}"),
            FailureReason::AsyncException(why) => {
                format!("Asynchronous task checkpoint failed: {why}")
            }
            FailureReason::FinalizeFailure(why) => format!("Failure to finalize checkpoint: {why}"),
            FailureReason::TaskFailure => "Task has failed.".into(),
            FailureReason::CoordinatorShutdown => "CheckpointCoordinator shutdown.".into(),
            FailureReason::TooManyRequests => "The maximum number of queued checkpoint requests exceeded".into(),
        }
    }

    /// Only these reasons count against `tolerable-failed-checkpoints` (digest §1.5).
    fn counts(&self) -> bool {
        matches!(
            self,
            FailureReason::Expired
                | FailureReason::Declined(_)
                | FailureReason::AsyncException(_)
                | FailureReason::FinalizeFailure(_)
        )
    }
}

/// What the runtime must do. `T` is the requester's token type: requests carry one, and the
/// actions about a request hand it back.
#[derive(Debug, PartialEq)]
pub enum Action<S, T = u64> {
    /// Inject barriers for snapshot `id` at the sources. `token` is the requester's, if any.
    /// `full`: a checkpoint that must reference no file of an earlier snapshot (the first
    /// checkpoint after a NO_CLAIM restore).
    Trigger { id: CheckpointId, kind: SnapshotKind, timestamp_ms: u64, token: Option<T>, full: bool },
    /// All tasks acknowledged: write `_metadata` from these acks, then call `finalized`.
    Finalize { id: CheckpointId, kind: SnapshotKind, timestamp_ms: u64, acks: Vec<(TaskKey, S)> },
    /// The snapshot is complete (its `_metadata` is in place).
    Completed { id: CheckpointId, kind: SnapshotKind, token: Option<T> },
    /// Tell every task the checkpoint is complete, so sinks commit. Never sent for an
    /// intermediate savepoint.
    NotifyComplete { id: CheckpointId },
    /// The snapshot failed; its files must be deleted and tasks told.
    Aborted { id: CheckpointId, kind: SnapshotKind, reason: FailureReason, token: Option<T> },
    /// A request that never got an id failed.
    Rejected { token: Option<T>, reason: FailureReason },
    /// An acknowledgement arrived for a snapshot no longer pending: delete what it wrote.
    DiscardLate { id: CheckpointId, task: TaskKey, state: S },
    /// Too many consecutive failures: the job must fail with this message.
    FailJob { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Request<T> {
    kind: SnapshotKind,
    periodic: bool,
    /// A stop-with-savepoint: completing it commits side effects like a checkpoint.
    synchronous: bool,
    token: Option<T>,
}

#[derive(Debug)]
struct Pending<S, T> {
    id: CheckpointId,
    kind: SnapshotKind,
    token: Option<T>,
    synchronous: bool,
    timestamp_ms: u64,
    deadline_ms: u64,
    waiting_for: BTreeSet<TaskKey>,
    acks: Vec<(TaskKey, S)>,
    finalizing: bool,
}

#[derive(Debug)]
pub struct Coordinator<S, T = u64> {
    settings: CoordinatorSettings,
    tasks: BTreeSet<TaskKey>,
    next_id: CheckpointId,
    pending: BTreeMap<CheckpointId, Pending<S, T>>,
    queue: VecDeque<Request<T>>,
    periodic_enabled: bool,
    next_periodic_ms: Option<u64>,
    last_completion_ms: Option<u64>,
    last_success_id: CheckpointId,
    consecutive_failures: u32,
    counted_ids: BTreeSet<CheckpointId>,
    force_full: bool,
}

impl<S, T: Copy> Coordinator<S, T> {
    /// A coordinator for a job whose tasks are `tasks`, handing out ids from `next_id` (1 for a new
    /// job, snapshot id + 1 after a restore). The first periodic checkpoint is due one interval
    /// after `now_ms`.
    pub fn new(
        settings: CoordinatorSettings,
        tasks: impl IntoIterator<Item = TaskKey>,
        next_id: CheckpointId,
        now_ms: u64,
    ) -> Self {
        let next_periodic_ms = settings.interval_ms.map(|i| now_ms + i.max(settings.min_pause_ms));
        Coordinator {
            periodic_enabled: settings.interval_ms.is_some(),
            settings,
            tasks: tasks.into_iter().collect(),
            next_id,
            pending: BTreeMap::new(),
            queue: VecDeque::new(),
            next_periodic_ms,
            last_completion_ms: None,
            last_success_id: 0,
            consecutive_failures: 0,
            counted_ids: BTreeSet::new(),
            force_full: false,
        }
    }

    /// Checkpoints are triggered full until one completes: after a NO_CLAIM restore, no
    /// checkpoint may depend on the restored snapshot's files (digest §4.1). Savepoints neither
    /// honour nor clear this.
    pub fn force_full_checkpoints(&mut self) {
        self.force_full = true;
    }

    pub fn next_checkpoint_id(&self) -> CheckpointId {
        self.next_id
    }

    pub fn pending_ids(&self) -> Vec<CheckpointId> {
        self.pending.keys().copied().collect()
    }

    /// How many tasks have acknowledged snapshot `id`, of how many, while it is pending.
    pub fn acknowledged(&self, id: CheckpointId) -> Option<(usize, usize)> {
        let p = self.pending.get(&id)?;
        Some((self.tasks.len().saturating_sub(p.waiting_for.len()), self.tasks.len()))
    }

    /// The tasks may change between attempts (same graph, new deployment).
    pub fn set_tasks(&mut self, tasks: impl IntoIterator<Item = TaskKey>) {
        self.tasks = tasks.into_iter().collect();
    }

    /// Stops or restarts periodic triggering (stopped while the job is not running, or during a
    /// stop-with-savepoint).
    pub fn set_periodic(&mut self, enabled: bool, now_ms: u64) {
        self.periodic_enabled = enabled && self.settings.interval_ms.is_some();
        self.queue.retain(|r| !r.periodic);
        self.next_periodic_ms = if self.periodic_enabled {
            self.settings.interval_ms.map(|i| now_ms + i.max(self.settings.min_pause_ms))
        } else {
            None
        };
    }

    /// The next time `tick` has something to do, if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let expiry = self.pending.values().filter(|p| !p.finalizing).map(|p| p.deadline_ms).min();
        match (expiry, self.next_periodic_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires overdue snapshots, queues a due periodic checkpoint, and triggers what may start.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action<S, T>> {
        let mut actions = Vec::new();
        let expired: Vec<_> =
            self.pending.values().filter(|p| !p.finalizing && p.deadline_ms <= now_ms).map(|p| p.id).collect();
        for id in expired {
            self.abort(id, FailureReason::Expired, &mut actions);
        }
        if let Some(due) = self.next_periodic_ms {
            if self.periodic_enabled && now_ms >= due {
                if !self.queue.iter().any(|r| r.periodic) {
                    self.queue.push_back(Request {
                        kind: SnapshotKind::Checkpoint,
                        periodic: true,
                        synchronous: false,
                        token: None,
                    });
                }
                let interval = self.settings.interval_ms.unwrap_or(u64::MAX / 4);
                self.next_periodic_ms = Some(now_ms + interval);
            }
        }
        self.try_trigger(now_ms, &mut actions);
        actions
    }

    /// A user request (manual checkpoint, savepoint, or the final checkpoint at end of input).
    /// Ignores min pause. `token` comes back in the actions about this request.
    pub fn request(&mut self, kind: SnapshotKind, token: Option<T>, now_ms: u64) -> Vec<Action<S, T>> {
        self.enqueue(Request { kind, periodic: false, synchronous: false, token }, now_ms)
    }

    /// A stop-with-savepoint: a savepoint whose completion is notified to tasks, so sinks commit
    /// (an intermediate savepoint commits nothing). Stop periodic checkpoints before calling this.
    pub fn request_stop_savepoint(&mut self, kind: SnapshotKind, token: Option<T>, now_ms: u64) -> Vec<Action<S, T>> {
        self.enqueue(Request { kind, periodic: false, synchronous: true, token }, now_ms)
    }

    fn enqueue(&mut self, req: Request<T>, now_ms: u64) -> Vec<Action<S, T>> {
        let kind = req.kind;
        // Savepoints go before checkpoints, user requests before periodic ones.
        let pos = self
            .queue
            .iter()
            .position(|r| r.periodic || (kind.is_savepoint() && !r.kind.is_savepoint()))
            .unwrap_or(self.queue.len());
        self.queue.insert(pos, req);
        let mut actions = Vec::new();
        self.try_trigger(now_ms, &mut actions);
        actions
    }

    fn try_trigger(&mut self, now_ms: u64, actions: &mut Vec<Action<S, T>>) {
        if !self.pending.is_empty() {
            return; // max concurrent checkpoints: 1
        }
        while let Some(head) = self.queue.front() {
            if head.periodic {
                if let Some(last) = self.last_completion_ms {
                    let earliest = last + self.settings.min_pause_ms;
                    if now_ms < earliest {
                        // MINIMUM_TIME_BETWEEN_CHECKPOINTS: not a failure, just later.
                        self.queue.pop_front();
                        self.next_periodic_ms = Some(earliest);
                        continue;
                    }
                }
            }
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            let id = self.next_id;
            self.next_id += 1;
            self.pending.insert(
                id,
                Pending {
                    id,
                    kind: req.kind,
                    token: req.token,
                    synchronous: req.synchronous,
                    timestamp_ms: now_ms,
                    deadline_ms: now_ms + self.settings.timeout_ms,
                    waiting_for: self.tasks.clone(),
                    acks: Vec::new(),
                    finalizing: false,
                },
            );
            let full = self.force_full && !req.kind.is_savepoint();
            actions.push(Action::Trigger { id, kind: req.kind, timestamp_ms: now_ms, token: req.token, full });
            return;
        }
    }

    /// A task acknowledged snapshot `id` with its state.
    pub fn acknowledge(&mut self, id: CheckpointId, task: TaskKey, state: S) -> Vec<Action<S, T>> {
        let mut actions = Vec::new();
        match self.pending.get_mut(&id) {
            Some(p) if !p.finalizing && p.waiting_for.contains(&task) => {
                p.waiting_for.remove(&task);
                p.acks.push((task, state));
                if p.waiting_for.is_empty() {
                    p.finalizing = true;
                    let acks = std::mem::take(&mut p.acks);
                    actions.push(Action::Finalize { id, kind: p.kind, timestamp_ms: p.timestamp_ms, acks });
                }
            }
            Some(p) if p.acks.iter().any(|(t, _)| *t == task) => {
                // Duplicate acknowledgement: ignored, its state is the one already recorded.
            }
            _ => actions.push(Action::DiscardLate { id, task, state }),
        }
        actions
    }

    /// A task declined snapshot `id`.
    pub fn decline(&mut self, id: CheckpointId, reason: FailureReason, now_ms: u64) -> Vec<Action<S, T>> {
        let mut actions = Vec::new();
        if self.pending.get(&id).is_some_and(|p| !p.finalizing) {
            self.abort(id, reason, &mut actions);
            self.try_trigger(now_ms, &mut actions);
        }
        actions
    }

    /// The outcome of writing `_metadata` for snapshot `id`.
    pub fn finalized(&mut self, id: CheckpointId, outcome: Result<(), String>, now_ms: u64) -> Vec<Action<S, T>> {
        let mut actions = Vec::new();
        match outcome {
            Ok(()) => {
                if let Some(p) = self.pending.remove(&id) {
                    self.last_completion_ms = Some(now_ms);
                    if !p.kind.is_savepoint() {
                        self.last_success_id = self.last_success_id.max(id);
                        self.consecutive_failures = 0;
                        self.force_full = false;
                    }
                    actions.push(Action::Completed { id, kind: p.kind, token: p.token });
                    if !p.kind.is_savepoint() || p.synchronous {
                        actions.push(Action::NotifyComplete { id });
                    }
                }
            }
            Err(cause) => {
                if let Some(p) = self.pending.get_mut(&id) {
                    p.finalizing = false;
                    self.abort(id, FailureReason::FinalizeFailure(cause), &mut actions);
                }
            }
        }
        self.try_trigger(now_ms, &mut actions);
        actions
    }

    /// A task failed: every pending snapshot is aborted (not counted as a checkpoint failure) and
    /// queued requests are rejected.
    pub fn abort_all(&mut self, reason: FailureReason) -> Vec<Action<S, T>> {
        let mut actions = Vec::new();
        let ids: Vec<_> = self.pending.keys().copied().collect();
        for id in ids {
            self.abort(id, reason.clone(), &mut actions);
        }
        for req in self.queue.drain(..) {
            if !req.periodic {
                actions.push(Action::Rejected { token: req.token, reason: reason.clone() });
            }
        }
        actions
    }

    fn abort(&mut self, id: CheckpointId, reason: FailureReason, actions: &mut Vec<Action<S, T>>) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let count =
            !p.kind.is_savepoint() && reason.counts() && id > self.last_success_id && self.counted_ids.insert(id);
        let message = reason.message();
        actions.push(Action::Aborted { id, kind: p.kind, reason, token: p.token });
        if count {
            self.consecutive_failures += 1;
            if self.consecutive_failures > self.settings.tolerable_failures {
                self.consecutive_failures = 0;
                actions.push(Action::FailJob {
                    message: format!(
                        "Exceeded checkpoint tolerable failure threshold. The latest checkpoint failed due to {}. \
                         See the job's log for why consecutive checkpoints failed, or raise \
                         execution.checkpointing.tolerable-failed-checkpoints.",
                        message.trim_end_matches('.')
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(interval: u64, min_pause: u64, timeout: u64, tolerable: u32) -> CoordinatorSettings {
        CoordinatorSettings {
            interval_ms: Some(interval),
            min_pause_ms: min_pause,
            timeout_ms: timeout,
            tolerable_failures: tolerable,
        }
    }

    fn tasks(n: u32) -> Vec<TaskKey> {
        (0..n).map(|s| TaskKey { vertex: 0, subtask: s }).collect()
    }

    fn triggered<S>(actions: &[Action<S>]) -> Option<CheckpointId> {
        actions.iter().find_map(|a| match a {
            Action::Trigger { id, .. } => Some(*id),
            _ => None,
        })
    }

    /// Acks every task and finalizes successfully; returns all actions.
    fn complete(c: &mut Coordinator<u32>, id: CheckpointId, n: u32, now: u64) -> Vec<Action<u32>> {
        let mut all = vec![];
        for t in tasks(n) {
            all.extend(c.acknowledge(id, t, t.subtask));
        }
        assert!(all.iter().any(|a| matches!(a, Action::Finalize { id: i, .. } if *i == id)));
        all.extend(c.finalized(id, Ok(()), now));
        all
    }

    #[test]
    fn first_id_is_one_and_periodic_trigger_waits_for_the_interval() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(100, 0, 1000, 0), tasks(2), 1, 0);
        assert_eq!(c.next_deadline_ms(), Some(100));
        assert!(triggered(&c.tick(99)).is_none());
        assert_eq!(triggered(&c.tick(100)), Some(1));
        // Max concurrent 1: the next period does not trigger while 1 is pending.
        assert!(triggered(&c.tick(200)).is_none());
        let actions = complete(&mut c, 1, 2, 210);
        assert!(actions.contains(&Action::NotifyComplete { id: 1 }));
        // The periodic request queued at 200 runs right after completion.
        assert_eq!(triggered(&actions), Some(2));
    }

    #[test]
    fn finalize_carries_every_ack_and_duplicates_are_ignored_and_acks_are_counted() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(10, 0, 1000, 0), tasks(2), 1, 0);
        c.tick(10);
        assert_eq!(c.acknowledged(1), Some((0, 2)));
        assert!(c.acknowledge(1, TaskKey { vertex: 0, subtask: 0 }, 7).is_empty());
        assert!(c.acknowledge(1, TaskKey { vertex: 0, subtask: 0 }, 8).is_empty());
        assert_eq!(c.acknowledged(1), Some((1, 2)), "a duplicate counts once");
        let a = c.acknowledge(1, TaskKey { vertex: 0, subtask: 1 }, 9);
        assert_eq!(c.acknowledged(1), Some((2, 2)));
        match &a[..] {
            [Action::Finalize { id: 1, acks, .. }] => {
                assert_eq!(acks.iter().map(|(_, s)| *s).collect::<Vec<_>>(), vec![7, 9]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn min_pause_delays_periodic_but_not_user_requests() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(10, 50, 1000, 0), tasks(1), 1, 0);
        assert_eq!(triggered(&c.tick(50)), Some(1));
        complete(&mut c, 1, 1, 60);
        // Due at 100 by interval, but min pause says not before 110.
        assert!(triggered(&c.tick(100)).is_none());
        assert_eq!(c.next_deadline_ms(), Some(110));
        assert_eq!(triggered(&c.tick(110)), Some(2));
        complete(&mut c, 2, 1, 111);
        let a = c.request(SnapshotKind::Checkpoint, Some(5), 112);
        assert!(matches!(a[..], [Action::Trigger { id: 3, token: Some(5), .. }]));
    }

    #[test]
    fn expiry_aborts_and_fails_the_job_at_tolerable_zero() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(10, 0, 100, 0), tasks(1), 1, 0);
        c.tick(10);
        let a = c.tick(110);
        assert!(a.iter().any(|x| matches!(x, Action::Aborted { id: 1, reason: FailureReason::Expired, .. })));
        let msg = a.iter().find_map(|x| match x {
            Action::FailJob { message } => Some(message.clone()),
            _ => None,
        });
        let msg = msg.expect("job must fail at tolerable 0");
        assert!(msg.starts_with("Exceeded checkpoint tolerable failure threshold. The latest checkpoint failed due to Checkpoint expired before completing."), "{msg}");
    }

    #[test]
    fn tolerable_failures_count_consecutively_and_success_resets() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(10, 0, 1000, 2), tasks(1), 1, 0);
        let mut now = 10;
        let decline = |c: &mut Coordinator<u32>, now: &mut u64| {
            let id = triggered(&c.tick(*now)).expect("trigger");
            let a = c.decline(id, FailureReason::Declined("boom".into()), *now);
            *now += 10;
            a.iter().any(|x| matches!(x, Action::FailJob { .. }))
        };
        assert!(!decline(&mut c, &mut now));
        assert!(!decline(&mut c, &mut now));
        let id = triggered(&c.tick(now)).unwrap();
        complete(&mut c, id, 1, now);
        now += 10;
        assert!(!decline(&mut c, &mut now));
        assert!(!decline(&mut c, &mut now));
        assert!(decline(&mut c, &mut now), "third consecutive counted failure fails the job");
    }

    #[test]
    fn task_failure_aborts_without_counting() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(10, 0, 1000, 0), tasks(1), 1, 0);
        c.tick(10);
        let a = c.abort_all(FailureReason::TaskFailure);
        assert!(a.iter().any(|x| matches!(x, Action::Aborted { id: 1, .. })));
        assert!(!a.iter().any(|x| matches!(x, Action::FailJob { .. })));
        // The id is consumed: the next checkpoint is 2.
        assert_eq!(triggered(&c.tick(20)), Some(2));
    }

    #[test]
    fn late_ack_is_discarded() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(10, 0, 100, 5), tasks(2), 1, 0);
        c.tick(10);
        c.tick(200); // expired
        let a = c.acknowledge(1, TaskKey { vertex: 0, subtask: 0 }, 3);
        assert!(matches!(a[..], [Action::DiscardLate { id: 1, state: 3, .. }]));
    }

    #[test]
    fn savepoint_completes_without_notify_and_is_not_counted_on_failure() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(1000, 0, 100, 0), tasks(1), 1, 0);
        let kind = SnapshotKind::Savepoint { format: crate::metadata::SavepointFormat::Canonical };
        assert_eq!(triggered(&c.request(kind, Some(1), 0)), Some(1));
        let a = complete(&mut c, 1, 1, 5);
        assert!(a.iter().any(|x| matches!(x, Action::Completed { id: 1, .. })));
        assert!(!a.iter().any(|x| matches!(x, Action::NotifyComplete { .. })));
        c.request(kind, Some(2), 10);
        let a = c.decline(2, FailureReason::Declined("x".into()), 11);
        assert!(!a.iter().any(|x| matches!(x, Action::FailJob { .. })));
    }

    #[test]
    fn stop_with_savepoint_commits_like_a_checkpoint() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(1000, 0, 100, 0), tasks(1), 1, 0);
        let kind = SnapshotKind::Savepoint { format: crate::metadata::SavepointFormat::Canonical };
        c.set_periodic(false, 0);
        assert_eq!(triggered(&c.request_stop_savepoint(kind, Some(9), 0)), Some(1));
        let a = complete(&mut c, 1, 1, 5);
        assert!(a.contains(&Action::NotifyComplete { id: 1 }));
        assert!(a.iter().any(|x| matches!(x, Action::Completed { id: 1, token: Some(9), .. })));
        assert_eq!(c.next_deadline_ms(), None, "periodic checkpoints stay stopped");
    }

    #[test]
    fn finalize_failure_aborts_and_counts() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(10, 0, 1000, 0), tasks(1), 1, 0);
        c.tick(10);
        c.acknowledge(1, TaskKey { vertex: 0, subtask: 0 }, 1);
        let a = c.finalized(1, Err("disk full".into()), 12);
        assert!(a
            .iter()
            .any(|x| matches!(x, Action::Aborted { id: 1, reason: FailureReason::FinalizeFailure(_), .. })));
        assert!(a.iter().any(|x| matches!(x, Action::FailJob { .. })));
    }

    #[test]
    fn restored_counter_continues_after_the_snapshot_id() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(10, 0, 1000, 0), tasks(1), 43, 0);
        assert_eq!(triggered(&c.tick(10)), Some(43));
    }

    #[test]
    fn disabled_periodic_never_triggers_by_itself() {
        let mut c: Coordinator<u32> = Coordinator::new(
            CoordinatorSettings { interval_ms: None, min_pause_ms: 0, timeout_ms: 100, tolerable_failures: 0 },
            tasks(1),
            1,
            0,
        );
        assert_eq!(c.next_deadline_ms(), None);
        assert!(c.tick(1_000_000).is_empty());
        assert_eq!(triggered(&c.request(SnapshotKind::Checkpoint, None, 5)), Some(1));
    }

    #[test]
    fn checkpoints_are_full_until_one_completes_after_a_no_claim_restore() {
        let mut c: Coordinator<u32> = Coordinator::new(settings(10, 0, 1000, 0), tasks(1), 5, 0);
        c.force_full_checkpoints();
        let full = |a: &[Action<u32>]| {
            a.iter().find_map(|x| match x {
                Action::Trigger { full, .. } => Some(*full),
                _ => None,
            })
        };
        // A savepoint right after the restore is unaffected and does not clear the flag.
        let a = c.request(SnapshotKind::Savepoint { format: crate::metadata::SavepointFormat::Native }, Some(1), 1);
        assert_eq!(full(&a), Some(false));
        complete(&mut c, 5, 1, 2);
        let a = c.tick(20);
        assert_eq!(full(&a), Some(true));
        // An aborted full checkpoint leaves the next one full too.
        c.decline(6, FailureReason::Declined("x".into()), 21);
        let a = c.tick(40);
        assert_eq!(full(&a), Some(true));
        complete(&mut c, 7, 1, 41);
        let a = c.tick(60);
        assert_eq!(full(&a), Some(false));
    }
}

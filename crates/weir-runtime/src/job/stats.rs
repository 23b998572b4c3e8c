//! What a job remembers about itself for the people operating it: its checkpoint history
//! (pending, completed, failed), the failures it recovered from, and when it entered each status.
//! Flink's REST API and web UI read the same facts (`CheckpointStatsTracker`, the exception
//! history, `JobDetails.timestamps`). Pure data: the master records, the control API reads.

use super::control::JobStatus;
use std::collections::VecDeque;
use std::time::Duration;
use weir_core::location::SnapshotUri;
use weir_core::metadata::SnapshotKind;
use weir_core::CheckpointId;

/// Entries of each kind kept: Flink's `web.checkpoints.history` shows 10; the summary statistics
/// and the UI's chart use more.
pub const HISTORY_KEPT: usize = 100;

/// Failures kept in the exception history (Flink's `web.exception-history-size` is 16).
pub const EXCEPTIONS_KEPT: usize = 16;

/// Statistics of one completed checkpoint or savepoint.
#[derive(Debug, Clone)]
pub struct CheckpointStats {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub location: SnapshotUri,
    pub duration: Duration,
    /// Bytes of everything the snapshot references (its full size), `_metadata` included.
    pub state_size: u64,
    /// Bytes this snapshot wrote: less than `state_size` for an incremental checkpoint, which
    /// references files earlier checkpoints uploaded.
    pub checkpointed_size: u64,
    /// Wall clock, milliseconds since the Unix epoch.
    pub trigger_timestamp_ms: u64,
    pub completed_timestamp_ms: u64,
    /// Subtasks that acknowledged it (all of the job's).
    pub num_subtasks: u32,
    /// Sizes per vertex of the job, in the order of its vertices.
    pub vertices: Vec<VertexCheckpointStats>,
}

/// What one vertex (all its subtasks) put into a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VertexCheckpointStats {
    /// Bytes of the files holding the vertex's state.
    pub state_size: u64,
    /// Of those, bytes the snapshot wrote (not referenced from an earlier checkpoint).
    pub checkpointed_size: u64,
}

/// A checkpoint or savepoint that was triggered and has neither completed nor failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCheckpoint {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub trigger_timestamp_ms: u64,
}

/// A checkpoint or savepoint that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCheckpoint {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub trigger_timestamp_ms: u64,
    pub failure_timestamp_ms: u64,
    pub message: String,
}

/// The job's checkpoints and savepoints since it was submitted (restarts included).
#[derive(Debug, Clone, Default)]
pub struct CheckpointHistory {
    pending: Vec<PendingCheckpoint>,
    completed: VecDeque<CheckpointStats>,
    failed: VecDeque<FailedCheckpoint>,
    completed_total: u64,
    failed_total: u64,
}

impl CheckpointHistory {
    pub(super) fn triggered(&mut self, id: CheckpointId, kind: SnapshotKind, now_ms: u64) {
        self.pending.push(PendingCheckpoint { id, kind, trigger_timestamp_ms: now_ms });
    }

    /// When a pending snapshot was triggered (`now_ms` for one this history never saw).
    pub(super) fn trigger_time(&self, id: CheckpointId, now_ms: u64) -> u64 {
        self.pending.iter().find(|p| p.id == id).map_or(now_ms, |p| p.trigger_timestamp_ms)
    }

    pub(super) fn completed(&mut self, stats: CheckpointStats) {
        self.pending.retain(|p| p.id != stats.id);
        push_capped(&mut self.completed, stats, HISTORY_KEPT);
        self.completed_total += 1;
    }

    pub(super) fn failed(&mut self, id: CheckpointId, kind: SnapshotKind, message: String, now_ms: u64) {
        let trigger_timestamp_ms = self.trigger_time(id, now_ms);
        self.pending.retain(|p| p.id != id);
        let failed = FailedCheckpoint { id, kind, trigger_timestamp_ms, failure_timestamp_ms: now_ms, message };
        push_capped(&mut self.failed, failed, HISTORY_KEPT);
        self.failed_total += 1;
    }

    /// Snapshots that will never complete (the job failed over or ended) leave the pending list;
    /// the coordinator reports each as failed, so this only drops what it did not report.
    pub(super) fn clear_pending(&mut self) {
        self.pending.clear();
    }

    pub fn pending(&self) -> &[PendingCheckpoint] {
        &self.pending
    }

    /// The most recent completed snapshots, oldest first (at most [`HISTORY_KEPT`]).
    pub fn completed_recent(&self) -> impl DoubleEndedIterator<Item = &CheckpointStats> + ExactSizeIterator {
        self.completed.iter()
    }

    /// The most recent failed snapshots, oldest first (at most [`HISTORY_KEPT`]).
    pub fn failed_recent(&self) -> impl DoubleEndedIterator<Item = &FailedCheckpoint> + ExactSizeIterator {
        self.failed.iter()
    }

    /// Completed since the job was submitted, including those no longer kept.
    pub fn completed_total(&self) -> u64 {
        self.completed_total
    }

    pub fn failed_total(&self) -> u64 {
        self.failed_total
    }
}

/// A failure the job recovered from (restart) or ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionRecord {
    pub timestamp_ms: u64,
    pub message: String,
    /// The task that failed, as Flink names it: `<vertex name> (<subtask + 1>/<parallelism>)`.
    pub task: Option<String>,
}

/// The failures of the job, newest last, at most [`EXCEPTIONS_KEPT`]; `truncated` says some went.
#[derive(Debug, Clone, Default)]
pub struct ExceptionHistory {
    entries: VecDeque<ExceptionRecord>,
    truncated: bool,
}

impl ExceptionHistory {
    pub(super) fn record(&mut self, record: ExceptionRecord) {
        self.truncated |= self.entries.len() == EXCEPTIONS_KEPT;
        push_capped(&mut self.entries, record, EXCEPTIONS_KEPT);
    }

    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &ExceptionRecord> + ExactSizeIterator {
        self.entries.iter()
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

/// When the job first and last entered each status (wall clock, ms since the Unix epoch).
#[derive(Debug, Clone, Default)]
pub struct StatusTimestamps(Vec<(JobStatus, u64, u64)>);

impl StatusTimestamps {
    pub(super) fn entered(&mut self, status: JobStatus, now_ms: u64) {
        match self.0.iter_mut().find(|(s, ..)| *s == status) {
            Some(entry) => entry.2 = now_ms,
            None => self.0.push((status, now_ms, now_ms)),
        }
    }

    /// When the job last entered `status`.
    pub fn get(&self, status: JobStatus) -> Option<u64> {
        self.0.iter().find(|(s, ..)| *s == status).map(|(.., last)| *last)
    }

    /// When the job first entered `status` (for RUNNING: when its restored state was loaded).
    pub fn first(&self, status: JobStatus) -> Option<u64> {
        self.0.iter().find(|(s, ..)| *s == status).map(|(_, first, _)| *first)
    }
}

/// Milliseconds since the Unix epoch: the unit of every timestamp here (and of Flink's REST API).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn push_capped<T>(list: &mut VecDeque<T>, item: T, cap: usize) {
    if list.len() == cap {
        list.pop_front();
    }
    list.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::metadata::SavepointFormat;

    fn stats(id: CheckpointId) -> CheckpointStats {
        CheckpointStats {
            id,
            kind: SnapshotKind::Checkpoint,
            location: SnapshotUri::parse(&format!("/ck/chk-{id}")).unwrap(),
            duration: Duration::from_millis(5),
            state_size: 10,
            checkpointed_size: 10,
            trigger_timestamp_ms: 1_000 + id,
            completed_timestamp_ms: 2_000 + id,
            num_subtasks: 2,
            vertices: Vec::new(),
        }
    }

    #[test]
    fn pending_snapshots_leave_when_they_complete_or_fail_with_their_trigger_time() {
        let mut h = CheckpointHistory::default();
        let savepoint = SnapshotKind::Savepoint { format: SavepointFormat::Canonical };
        h.triggered(1, SnapshotKind::Checkpoint, 100);
        h.triggered(2, savepoint, 200);
        assert_eq!(h.pending().len(), 2);
        h.completed(stats(1));
        h.failed(2, savepoint, "disk full".into(), 250);
        assert!(h.pending().is_empty());
        let failed: Vec<_> = h.failed_recent().collect();
        assert_eq!(failed[0].trigger_timestamp_ms, 200, "the trigger time survives the failure");
        assert_eq!((failed[0].failure_timestamp_ms, failed[0].kind), (250, savepoint));
        assert_eq!((h.completed_total(), h.failed_total()), (1, 1));
    }

    #[test]
    fn only_the_most_recent_entries_are_kept_but_all_are_counted() {
        let mut h = CheckpointHistory::default();
        for id in 1..=(HISTORY_KEPT as u64 + 5) {
            h.triggered(id, SnapshotKind::Checkpoint, id);
            h.completed(stats(id));
        }
        assert_eq!(h.completed_recent().len(), HISTORY_KEPT);
        assert_eq!(h.completed_recent().next().unwrap().id, 6, "the oldest went first");
        assert_eq!(h.completed_total(), HISTORY_KEPT as u64 + 5);
    }

    #[test]
    fn exception_history_keeps_the_newest_and_says_when_it_dropped_some() {
        let mut h = ExceptionHistory::default();
        for i in 0..EXCEPTIONS_KEPT as u64 {
            h.record(ExceptionRecord { timestamp_ms: i, message: format!("boom {i}"), task: None });
        }
        assert!(!h.truncated());
        h.record(ExceptionRecord { timestamp_ms: 99, message: "last".into(), task: Some("map (1/2)".into()) });
        assert!(h.truncated());
        assert_eq!(h.entries().len(), EXCEPTIONS_KEPT);
        assert_eq!(h.entries().next_back().unwrap().message, "last");
        assert_eq!(h.entries().next().unwrap().message, "boom 1");
    }

    #[test]
    fn status_timestamps_hold_the_latest_entry_into_each_status() {
        let mut t = StatusTimestamps::default();
        t.entered(JobStatus::Running, 10);
        t.entered(JobStatus::Restarting, 20);
        t.entered(JobStatus::Running, 30);
        assert_eq!(t.get(JobStatus::Running), Some(30));
        assert_eq!(t.first(JobStatus::Running), Some(10));
        assert_eq!(t.get(JobStatus::Restarting), Some(20));
        assert_eq!(t.get(JobStatus::Failed), None);
    }
}

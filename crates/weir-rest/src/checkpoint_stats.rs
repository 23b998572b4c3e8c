//! Checkpoint statistics in the shapes of Flink's `CheckpointingStatistics`,
//! `CheckpointStatistics` and `CheckpointConfigInfo` (`/jobs/:id/checkpoints`, `.../details/:id`,
//! `.../config`). Pure: built from the job's history, tested against numbers Flink 2.3 reported.

use serde_json::{json, Map, Value};
use weir_core::metadata::{SavepointFormat, SnapshotKind};
use weir_runtime::job::info::{CheckpointConfigInfo, JobInfo};
use weir_runtime::job::stats::{CheckpointHistory, CheckpointStats, FailedCheckpoint, PendingCheckpoint};
use weir_runtime::job::RestoredFrom;

/// Entries in `history`, as Flink's default `web.checkpoints.history`.
const HISTORY_SHOWN: usize = 10;

/// Min, max, average and percentiles the way Flink's `StatsSummaryDto` reports them: integer
/// min/max/avg (the average truncated), percentiles interpolated as Apache Commons Math's default
/// estimator does (position `p * (n + 1)`).
pub fn summary(values: &[u64]) -> Value {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let percentile = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let pos = p * (n as f64 + 1.0);
        if pos < 1.0 {
            return sorted[0] as f64;
        }
        if pos >= n as f64 {
            return sorted[n - 1] as f64;
        }
        let lower = sorted[pos.floor() as usize - 1] as f64;
        let upper = sorted[pos.floor() as usize] as f64;
        lower + (pos - pos.floor()) * (upper - lower)
    };
    let sum: u128 = sorted.iter().map(|&v| u128::from(v)).sum();
    json!({
        "min": sorted.first().copied().unwrap_or(0),
        "max": sorted.last().copied().unwrap_or(0),
        "avg": if n == 0 { 0 } else { (sum / n as u128) as u64 },
        "p50": percentile(0.5),
        "p90": percentile(0.9),
        "p95": percentile(0.95),
        "p99": percentile(0.99),
        "p999": percentile(0.999),
    })
}

fn savepoint_format(kind: SnapshotKind) -> Value {
    match kind {
        SnapshotKind::Savepoint { format: SavepointFormat::Native } => json!("NATIVE"),
        SnapshotKind::Savepoint { format: SavepointFormat::Canonical } => json!("CANONICAL"),
        SnapshotKind::Checkpoint => Value::Null,
    }
}

fn checkpoint_type(kind: SnapshotKind) -> &'static str {
    if kind.is_savepoint() {
        "SAVEPOINT"
    } else {
        "CHECKPOINT"
    }
}

/// The fields every entry has, as a snapshot not (yet) acknowledged has them. Weir aligns
/// barriers and keeps no in-flight data, so the unaligned-checkpoint figures are 0, as Flink
/// reports them for aligned ones.
fn base(class: &str, status: &str, id: u64, kind: SnapshotKind, trigger_ms: u64, subtasks: u32, took_ms: u64) -> Value {
    json!({
        "className": class,
        "id": id,
        "status": status,
        "is_savepoint": kind.is_savepoint(),
        "savepointFormat": savepoint_format(kind),
        "trigger_timestamp": trigger_ms,
        "latest_ack_timestamp": -1,
        "checkpointed_size": 0,
        "state_size": 0,
        "end_to_end_duration": took_ms,
        "alignment_buffered": 0,
        "processed_data": 0,
        "persisted_data": 0,
        "num_subtasks": subtasks,
        "num_acknowledged_subtasks": 0,
        "checkpoint_type": checkpoint_type(kind),
        "tasks": {},
    })
}

pub fn completed(s: &CheckpointStats) -> Value {
    let took = s.duration.as_millis() as u64;
    let mut v = base("completed", "COMPLETED", s.id, s.kind, s.trigger_timestamp_ms, s.num_subtasks, took);
    v["latest_ack_timestamp"] = json!(s.completed_timestamp_ms);
    v["checkpointed_size"] = json!(s.checkpointed_size);
    v["state_size"] = json!(s.state_size);
    v["num_acknowledged_subtasks"] = json!(s.num_subtasks);
    v["external_path"] = json!(s.location.to_string());
    // Whether the files are gone is known only by looking; Flink reports what it deleted itself,
    // and a retained snapshot is not discarded.
    v["discarded"] = json!(false);
    v
}

fn failed(f: &FailedCheckpoint, subtasks: u32) -> Value {
    let took = f.failure_timestamp_ms.saturating_sub(f.trigger_timestamp_ms);
    let mut v = base("failed", "FAILED", f.id, f.kind, f.trigger_timestamp_ms, subtasks, took);
    v["failure_timestamp"] = json!(f.failure_timestamp_ms);
    v["failure_message"] = json!(f.message);
    v
}

fn in_progress(p: &PendingCheckpoint, subtasks: u32, now_ms: u64) -> Value {
    let took = now_ms.saturating_sub(p.trigger_timestamp_ms);
    base("in_progress", "IN_PROGRESS", p.id, p.kind, p.trigger_timestamp_ms, subtasks, took)
}

/// `GET /jobs/:id/checkpoints`.
pub fn statistics(
    info: &JobInfo,
    history: &CheckpointHistory,
    restored: Option<&RestoredFrom>,
    restore_timestamp_ms: Option<u64>,
    now_ms: u64,
) -> Value {
    let subtasks = info.num_subtasks();
    let done: Vec<&CheckpointStats> = history.completed_recent().collect();
    let column = |f: fn(&CheckpointStats) -> u64| summary(&done.iter().map(|s| f(s)).collect::<Vec<_>>());
    let zeros = summary(&vec![0; done.len()]);
    // Youngest first, as Flink lists them: pending, completed and failed by id.
    let mut entries: Vec<(u64, Value)> = history
        .pending()
        .iter()
        .map(|p| (p.id, in_progress(p, subtasks, now_ms)))
        .chain(done.iter().map(|s| (s.id, completed(s))))
        .chain(history.failed_recent().map(|f| (f.id, failed(f, subtasks))))
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    entries.truncate(HISTORY_SHOWN);
    let restored = restored.map(|r| {
        json!({
            "id": r.checkpoint_id,
            "restore_timestamp": restore_timestamp_ms.unwrap_or(0),
            "is_savepoint": r.is_savepoint,
            "external_path": r.path.to_string(),
        })
    });
    let pending = history.pending().len() as u64;
    json!({
        "counts": {
            "restored": u64::from(restored.is_some()),
            "total": history.completed_total() + history.failed_total() + pending,
            "in_progress": pending,
            "completed": history.completed_total(),
            "failed": history.failed_total(),
        },
        "summary": {
            "checkpointed_size": column(|s| s.checkpointed_size),
            "state_size": column(|s| s.state_size),
            "end_to_end_duration": column(|s| s.duration.as_millis() as u64),
            "alignment_buffered": zeros,
            "processed_data": zeros,
            "persisted_data": zeros,
        },
        "latest": {
            "completed": done.iter().rev().find(|s| !s.kind.is_savepoint()).map(|s| completed(s)),
            "savepoint": done.iter().rev().find(|s| s.kind.is_savepoint()).map(|s| completed(s)),
            "failed": history.failed_recent().next_back().map(|f| failed(f, subtasks)),
            "restored": restored,
        },
        "history": entries.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    })
}

/// `GET /jobs/:id/checkpoints/details/:checkpointid`: the entry with a per-vertex breakdown.
/// Weir times a snapshot as a whole, so a vertex's last acknowledgement and duration are the
/// snapshot's (its completion); sizes are the vertex's own.
pub fn details(info: &JobInfo, history: &CheckpointHistory, id: u64, now_ms: u64) -> Option<Value> {
    let subtasks = info.num_subtasks();
    let (mut entry, status, done) = if let Some(s) = history.completed_recent().find(|s| s.id == id) {
        (completed(s), "COMPLETED", Some(s))
    } else if let Some(f) = history.failed_recent().find(|f| f.id == id) {
        (failed(f, subtasks), "FAILED", None)
    } else {
        let p = history.pending().iter().find(|p| p.id == id)?;
        (in_progress(p, subtasks, now_ms), "IN_PROGRESS", None)
    };
    let tasks: Map<String, Value> = info
        .vertices
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let sizes = done.and_then(|s| s.vertices.get(i)).cloned().unwrap_or_default();
            (
                v.id.clone(),
                json!({
                    "id": id,
                    "status": status,
                    "latest_ack_timestamp": done.map_or(-1, |s| s.completed_timestamp_ms as i64),
                    "checkpointed_size": sizes.checkpointed_size,
                    "state_size": sizes.state_size,
                    "end_to_end_duration": done.map_or(0, |s| s.duration.as_millis() as u64),
                    "num_subtasks": v.parallelism,
                    "num_acknowledged_subtasks": if done.is_some() { v.parallelism } else { 0 },
                    "alignment_buffered": 0,
                    "processed_data": 0,
                    "persisted_data": 0,
                }),
            )
        })
        .collect();
    entry["tasks"] = Value::Object(tasks);
    Some(entry)
}

/// `GET /jobs/:id/checkpoints/config`, with Weir's additions (`incremental`, `num_retained`,
/// the directories).
pub fn config(c: &CheckpointConfigInfo) -> Value {
    json!({
        "mode": "exactly_once",
        // Flink reports Long.MAX_VALUE when periodic checkpoints are off.
        "interval": c.interval_ms.unwrap_or(i64::MAX as u64),
        "timeout": c.timeout_ms,
        "min_pause": c.min_pause_ms,
        "max_concurrent": c.max_concurrent,
        "externalization": { "enabled": c.externalized, "delete_on_cancellation": c.delete_on_cancellation },
        "state_backend": match c.state_backend.as_str() {
            "rocksdb" => "EmbeddedRocksDBStateBackend",
            _ => "HashMapStateBackend",
        },
        "checkpoint_storage": if c.checkpoint_dir.as_deref().is_some_and(|d| d.starts_with("s3://")) {
            "FileSystemCheckpointStorage (s3)"
        } else {
            "FileSystemCheckpointStorage"
        },
        "unaligned_checkpoints": false,
        "tolerable_failed_checkpoints": c.tolerable_failures,
        "aligned_checkpoint_timeout": 0,
        "checkpoints_after_tasks_finish": true,
        "state_changelog_enabled": false,
        "changelog_periodic_materialization_interval": 0,
        "changelog_storage": "none",
        "incremental": c.incremental,
        "num_retained": c.num_retained,
        "checkpoint_dir": c.checkpoint_dir,
        "savepoint_dir": c.savepoint_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flink 2.3 reported these for ten checkpoints of a running job on this machine
    /// (`tests/flink-2.3/jobs_checkpoints.json` holds the whole answer).
    #[test]
    fn summaries_match_flinks_numbers() {
        let durations = [20, 25, 26, 27, 44, 30, 42, 38, 60, 165];
        let s = summary(&durations);
        assert_eq!((s["min"].as_u64(), s["max"].as_u64(), s["avg"].as_u64()), (Some(20), Some(165), Some(47)));
        assert_eq!(s["p50"].as_f64(), Some(34.0));
        assert!((s["p90"].as_f64().unwrap() - 154.5).abs() < 1e-9);
        assert_eq!((s["p95"].as_f64(), s["p99"].as_f64(), s["p999"].as_f64()), (Some(165.0), Some(165.0), Some(165.0)));
        let sizes = [18023, 18023, 18023, 18023, 18023, 18023, 18023, 18023, 5983, 4773];
        let s = summary(&sizes);
        assert_eq!((s["min"].as_u64(), s["avg"].as_u64(), s["p50"].as_f64()), (Some(4773), Some(15494), Some(18023.0)));
    }

    #[test]
    fn summaries_of_nothing_and_of_one_value() {
        assert_eq!(summary(&[])["p99"].as_f64(), Some(0.0));
        let one = summary(&[7]);
        assert_eq!((one["min"].as_u64(), one["p50"].as_f64(), one["p999"].as_f64()), (Some(7), Some(7.0), Some(7.0)));
    }
}

//! The read-only answers about the job, in the JSON shapes Flink 2.3's REST API gives them
//! (recorded from a running Flink 2.3 in `tests/flink-2.3/`): cluster overview, dashboard
//! configuration, job lists, job details with vertices, plan, configuration, exceptions, status.
//! Where Weir has more to say it adds fields; it never renames Flink's.

use serde_json::{json, Map, Value};
use weir_runtime::job::info::JobInfo;
use weir_runtime::job::stats::{wall_clock_ms, ExceptionHistory, StatusTimestamps};
use weir_runtime::{JobControl, JobStatus};

/// The Flink version whose REST API Weir answers like; Flink's tools read `flink-version`.
pub const FLINK_API_VERSION: &str = "2.3.0";

const STATUSES: [JobStatus; 6] = [
    JobStatus::Created,
    JobStatus::Running,
    JobStatus::Restarting,
    JobStatus::Finished,
    JobStatus::Failed,
    JobStatus::Canceled,
];

/// Flink's job statuses Weir never enters, reported with timestamp 0 as Flink does for those a
/// job did not pass through.
const OTHER_FLINK_STATUSES: [&str; 5] = ["INITIALIZING", "FAILING", "CANCELLING", "SUSPENDED", "RECONCILING"];

/// Flink's execution states, in its order; counts per state go under these names.
const EXECUTION_STATES: [&str; 10] = [
    "CREATED",
    "SCHEDULED",
    "DEPLOYING",
    "RUNNING",
    "FINISHED",
    "CANCELING",
    "CANCELED",
    "FAILED",
    "RECONCILING",
    "INITIALIZING",
];

/// Everything the answers need, read from the job once per request.
pub struct JobView<'a> {
    pub control: &'a JobControl,
    pub id: String,
    pub status: JobStatus,
    pub timestamps: StatusTimestamps,
    pub now_ms: u64,
}

impl<'a> JobView<'a> {
    pub fn of(control: &'a JobControl) -> JobView<'a> {
        JobView {
            control,
            id: control.job_id().to_hex(),
            status: control.status(),
            timestamps: control.status_timestamps(),
            now_ms: wall_clock_ms(),
        }
    }

    fn info(&self) -> &JobInfo {
        self.control.info()
    }

    pub fn start_ms(&self) -> u64 {
        self.timestamps.get(JobStatus::Created).unwrap_or(self.now_ms)
    }

    /// -1 while the job runs, as in Flink.
    pub fn end_ms(&self) -> i64 {
        if self.status.is_terminal() {
            self.timestamps.get(self.status).map_or(-1, |t| t as i64)
        } else {
            -1
        }
    }

    fn duration_ms(&self) -> u64 {
        let end = if self.end_ms() >= 0 { self.end_ms() as u64 } else { self.now_ms };
        end.saturating_sub(self.start_ms())
    }

    fn last_modification_ms(&self) -> u64 {
        STATUSES.iter().filter_map(|s| self.timestamps.get(*s)).max().unwrap_or(self.now_ms)
    }

    /// The execution state of every task: Weir deploys, restarts and ends all tasks of a job
    /// together, so each task is in the state the job's status implies.
    pub fn task_state(&self) -> &'static str {
        match self.status {
            JobStatus::Created => "INITIALIZING",
            JobStatus::Running => "RUNNING",
            JobStatus::Restarting => "SCHEDULED",
            JobStatus::Finished => "FINISHED",
            JobStatus::Failed => "FAILED",
            JobStatus::Canceled => "CANCELED",
        }
    }

    /// Tasks per execution state, with `lower` names and `total` as `/jobs/overview` has them,
    /// or upper-case names as job details have them.
    fn task_counts(&self, tasks: u32, lower: bool) -> Value {
        let mut m = Map::new();
        for state in EXECUTION_STATES {
            let n = if state == self.task_state() { tasks } else { 0 };
            let name = if lower { state.to_ascii_lowercase() } else { state.to_string() };
            m.insert(name, json!(n));
        }
        if lower {
            m.insert("total".into(), json!(tasks));
        }
        Value::Object(m)
    }
}

/// The machine's host name, as the metrics' `host` label has it.
pub fn host() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// `GET /overview`: one process is one "task manager" whose slots are the job's tasks.
pub fn overview(v: &JobView) -> Value {
    let count = |s: JobStatus| u32::from(v.status == s);
    json!({
        "taskmanagers": 1,
        "slots-total": v.info().num_subtasks(),
        "slots-available": if v.status.is_terminal() { v.info().num_subtasks() } else { 0 },
        "jobs-running": u32::from(!v.status.is_terminal()),
        "jobs-finished": count(JobStatus::Finished),
        "jobs-cancelled": count(JobStatus::Canceled),
        "jobs-failed": count(JobStatus::Failed),
        "flink-version": FLINK_API_VERSION,
        "flink-commit": env!("CARGO_PKG_VERSION"),
        "weir-version": env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /config`: the web UI's configuration. Weir submits no jars and cannot rescale a running
/// job; it can cancel.
pub fn dashboard_config() -> Value {
    json!({
        "refresh-interval": 3000,
        "timezone-name": "Coordinated Universal Time",
        "timezone-offset": 0,
        "flink-version": FLINK_API_VERSION,
        "flink-revision": format!("weir {}", env!("CARGO_PKG_VERSION")),
        "features": { "web-submit": false, "web-cancel": true, "web-rescale": false, "web-history": false },
        "weir-version": env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /jobs`.
pub fn jobs(v: &JobView) -> Value {
    json!({ "jobs": [ { "id": v.id, "status": v.status.to_string() } ] })
}

/// One entry of `GET /jobs/overview` (Flink's `JobDetails`).
fn job_summary(v: &JobView) -> Value {
    json!({
        "jid": v.id,
        "name": v.control.name(),
        "jobType": "STREAMING",
        "schedulerType": "Default",
        "start-time": v.start_ms(),
        "end-time": v.end_ms(),
        "duration": v.duration_ms(),
        "state": v.status.to_string(),
        "last-modification": v.last_modification_ms(),
        "tasks": v.task_counts(v.info().num_subtasks(), true),
        "pending-operators": 0,
    })
}

/// `GET /jobs/overview`.
pub fn jobs_overview(v: &JobView) -> Value {
    json!({ "jobs": [ job_summary(v) ] })
}

/// `GET /jobs/:id/status`.
pub fn status(v: &JobView) -> Value {
    json!({ "status": v.status.to_string() })
}

/// `GET /jobs/:id/plan`'s `plan`: vertices sinks first, as Flink lists them, each with the
/// edges into it. Weir adds each vertex's operators with their ids and uids.
pub fn plan(v: &JobView) -> Value {
    let info = v.info();
    let nodes: Vec<Value> = info
        .vertices
        .iter()
        .rev()
        .map(|vertex| {
            let description: String = vertex
                .operators
                .iter()
                .enumerate()
                .map(|(i, o)| if i == 0 { format!("{}<br/>", o.name) } else { format!("+- {}<br/>", o.name) })
                .collect();
            let mut node = json!({
                "id": vertex.id,
                "operator": "",
                "parallelism": vertex.parallelism,
                "operator_strategy": "",
                "description": description,
                "optimizer_properties": {},
                "operators": vertex.operators.iter().map(|o| json!({ "id": o.id, "name": o.name, "uid": o.uid })).collect::<Vec<_>>(),
            });
            if !vertex.inputs.is_empty() {
                node["inputs"] = vertex
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(num, input)| {
                        json!({
                            "id": info.vertices[input.from].id,
                            "num": num,
                            "exchange": "pipelined_bounded",
                            "ship_strategy": input.ship_strategy,
                        })
                    })
                    .collect();
            }
            node
        })
        .collect();
    json!({ "jid": v.id, "name": v.control.name(), "type": "STREAMING", "nodes": nodes })
}

/// `GET /jobs/:id`: details with vertices; `vertex_records` holds, per vertex in the job's
/// order, the records it read and wrote (from the job's metrics).
pub fn job_details(v: &JobView, vertex_records: &[(u64, u64)]) -> Value {
    let info = v.info();
    let mut timestamps = Map::new();
    for s in STATUSES {
        timestamps.insert(s.to_string(), json!(v.timestamps.get(s).unwrap_or(0)));
    }
    for s in OTHER_FLINK_STATUSES {
        timestamps.insert(s.to_string(), json!(0));
    }
    let running_since = v.timestamps.get(JobStatus::Running).unwrap_or(v.start_ms());
    let vertices: Vec<Value> = info
        .vertices
        .iter()
        .enumerate()
        .map(|(i, vertex)| {
            let (read, written) = vertex_records.get(i).copied().unwrap_or_default();
            json!({
                "id": vertex.id,
                "slotSharingGroupId": v.id,
                "name": vertex.name,
                "maxParallelism": vertex.max_parallelism,
                "parallelism": vertex.parallelism,
                "status": v.task_state(),
                "start-time": running_since,
                "end-time": v.end_ms(),
                "duration": (if v.end_ms() >= 0 { v.end_ms() as u64 } else { v.now_ms }).saturating_sub(running_since),
                "tasks": v.task_counts(vertex.parallelism, false),
                "metrics": {
                    // Records cross threads as objects, not bytes: Weir counts records only.
                    "read-bytes": 0,
                    "read-bytes-complete": false,
                    "write-bytes": 0,
                    "write-bytes-complete": false,
                    "read-records": read,
                    "read-records-complete": true,
                    "write-records": written,
                    "write-records-complete": true,
                    "accumulated-backpressured-time": 0,
                    "accumulated-idle-time": 0,
                    "accumulated-busy-time": 0.0,
                },
                "operators": vertex.operators.iter().map(|o| json!({ "id": o.id, "name": o.name, "uid": o.uid })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut body = json!({
        "jid": v.id,
        "application-id": v.id,
        "name": v.control.name(),
        "isStoppable": false,
        "state": v.status.to_string(),
        "job-type": "STREAMING",
        "schedulerType": "Default",
        "start-time": v.start_ms(),
        "end-time": v.end_ms(),
        "duration": v.duration_ms(),
        "maxParallelism": -1,
        "now": v.now_ms,
        "timestamps": timestamps,
        "vertices": vertices,
        "status-counts": v.task_counts(v.info().num_subtasks(), false),
        "plan": plan(v),
        "pending-operators": 0,
    });
    // Weir adds how far the download of a snapshot on object storage has got while the job
    // restores from it.
    if let Some(p) = v.control.restore_progress() {
        body["restore-progress"] = json!({
            "snapshot": p.snapshot.to_string(),
            "files": p.files,
            "files-total": p.files_total,
            "bytes": p.bytes,
            "bytes-total": p.bytes_total,
        });
    }
    body
}

/// `GET /jobs/:id/config`. Weir has no global job parameters, so `user-config` is empty. Weir
/// adds the job process's command line (`weir-command-line`), from which the web UI composes the
/// command that restores a savepoint, with the values of secret settings redacted.
pub fn job_config(v: &JobView) -> Value {
    json!({
        "jid": v.id,
        "name": v.control.name(),
        "execution-config": {
            "restart-strategy": v.info().restart_strategy,
            "job-parallelism": v.info().parallelism,
            "object-reuse-mode": false,
            "user-config": {},
        },
        "weir-command-line": redacted(std::env::args()),
    })
}

/// Settings whose values are secrets: Flink's list of sensitive key parts
/// (`GlobalConfiguration.SENSITIVE_KEYS`) and S3 access keys.
const SENSITIVE: [&str; 12] = [
    "password",
    "secret",
    "fs.azure.account.key",
    "apikey",
    "api-key",
    "auth-params",
    "service-key",
    "token",
    "basic-auth",
    "jaas.config",
    "http-headers",
    "access-key",
];

/// A command line with the values of sensitive `-D key=value` settings (and `--key=value`
/// arguments) replaced by `<redacted>`.
pub fn redacted(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let is_secret = |key: &str| {
        let key = key.to_ascii_lowercase();
        SENSITIVE.iter().any(|s| key.contains(s))
    };
    let mut out: Vec<String> = Vec::new();
    let mut after_d = false;
    for arg in args {
        // `-D key=value`, `-Dkey=value` or `--key=value`: what comes before the key, and the key.
        let setting = if after_d {
            Some(("", arg.as_str()))
        } else if let Some(rest) = arg.strip_prefix("-D").filter(|r| !r.is_empty()) {
            Some(("-D", rest))
        } else {
            arg.starts_with("--").then_some(("", arg.as_str()))
        };
        after_d = arg == "-D";
        match setting.and_then(|(prefix, s)| s.split_once('=').map(|(key, _)| (prefix, key))) {
            Some((prefix, key)) if is_secret(key) => out.push(format!("{prefix}{key}=<redacted>")),
            _ => out.push(arg),
        }
    }
    // `--token-file`-like flags followed by their value stay: a path is not the secret.
    out
}

/// `GET /jobs/:id/exceptions`: the failures the job restarted from or ended with, newest first.
pub fn exceptions(history: &ExceptionHistory) -> Value {
    let entries: Vec<Value> = history
        .entries()
        .rev()
        .map(|e| {
            json!({
                "exceptionName": if e.task.is_some() { "weir.TaskFailure" } else { "weir.JobFailure" },
                "stacktrace": e.message,
                "timestamp": e.timestamp_ms,
                "taskName": e.task,
                // One process runs every task: its host, and the task manager id the metrics use.
                "endpoint": e.task.as_ref().map(|_| host()),
                "taskManagerId": e.task.as_ref().map(|_| format!("{}:{}", host(), std::process::id())),
                "failureLabels": {},
                "concurrentExceptions": [],
            })
        })
        .collect();
    json!({ "exceptionHistory": { "entries": entries, "truncated": history.truncated() } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_the_command_line_are_redacted() {
        let args = [
            "/bin/job",
            "-D",
            "s3.secret-key=abc",
            "-Ds3.access-key=AKIA",
            "-D",
            "rest.port=8081",
            "--password=hunter2",
            "--output",
            "out",
        ]
        .map(String::from);
        assert_eq!(
            redacted(args),
            [
                "/bin/job",
                "-D",
                "s3.secret-key=<redacted>",
                "-Ds3.access-key=<redacted>",
                "-D",
                "rest.port=8081",
                "--password=<redacted>",
                "--output",
                "out"
            ]
        );
    }
}

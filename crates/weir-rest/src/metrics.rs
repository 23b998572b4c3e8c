//! The job's metrics with Flink's names and scopes, for the REST metric paths
//! (`/jobs/:id/metrics`, `/jobs/:id/vertices/:vid/metrics`) and for Prometheus (`/metrics`, in the
//! shape of Flink's `PrometheusReporter`: `flink_<scope>_<name>{labels} value`, every metric a
//! gauge, as Flink exports them).
//!
//! Counts come from the runtime ([`weir_runtime::metrics`]); rates per second are computed here
//! from samples taken every second over the last minute, as Flink's `MeterView` averages over 60 s.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use weir_runtime::{JobControl, JobStatus};

/// Samples kept per series: one a second for a minute.
const RATE_WINDOW: usize = 61;

/// Where a metric lives: Flink's job, task (a vertex's subtask) and operator scopes.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    Job,
    Task { vertex: usize, subtask: u32 },
    Operator { vertex: usize, subtask: u32, operator: usize },
}

/// One metric's current value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub scope: Scope,
    /// Flink's name; a state store's own gauges are named `<state>.rocksdb.<property>`.
    pub name: Cow<'static, str>,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    /// A text metric (`lastCheckpointExternalPath`): served by REST, not by Prometheus.
    Text(String),
}

impl Value {
    fn rest(&self) -> String {
        match self {
            // Whole numbers as Java prints a long (a watermark of Long.MIN_VALUE included).
            Value::Number(n) if n.fract() == 0.0 && *n >= i64::MIN as f64 && *n < i64::MAX as f64 => {
                format!("{}", *n as i64)
            }
            Value::Number(n) => n.to_string(),
            Value::Text(t) => t.clone(),
        }
    }
}

/// The counts sampled each second, by series, to turn counts into rates.
#[derive(Default)]
pub struct Rates {
    series: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

impl Rates {
    /// Records the current counts (called every second).
    pub fn sample(&self, control: &JobControl) {
        let now = Instant::now();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for (key, count) in counts(control) {
            let s = series.entry(key).or_default();
            // A restart starts the counts over: the old samples say nothing about the new ones.
            if s.back().is_some_and(|&(_, last)| count < last) {
                s.clear();
            }
            if s.len() == RATE_WINDOW {
                s.pop_front();
            }
            s.push_back((now, count));
        }
    }

    /// Per second over the samples kept; 0 until two samples a second apart exist.
    fn per_second(&self, key: &str) -> f64 {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = series.get(key) else { return 0.0 };
        match (s.front(), s.back()) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1.duration_since(t0) >= Duration::from_millis(500) => {
                (c1 - c0) as f64 / t1.duration_since(t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// The counters rates are computed from: records in and out of every operator and task, and the
/// nanoseconds each task was back-pressured.
fn counts(control: &JobControl) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for_each_subtask(control, |vertex, subtask, reading| {
        out.push((key(vertex, subtask, None, "in"), reading.task_in));
        out.push((key(vertex, subtask, None, "out"), reading.task_out));
        out.push((key(vertex, subtask, None, "bp"), reading.backpressured_nanos));
        for (i, op) in reading.operators.iter().enumerate() {
            out.push((key(vertex, subtask, Some(i), "in"), op.records_in));
            out.push((key(vertex, subtask, Some(i), "out"), op.records_out));
        }
    });
    out
}

fn key(vertex: usize, subtask: u32, operator: Option<usize>, what: &str) -> String {
    match operator {
        Some(o) => format!("{vertex}/{subtask}/{o}/{what}"),
        None => format!("{vertex}/{subtask}/{what}"),
    }
}

struct SubtaskReading {
    task_in: u64,
    task_out: u64,
    task_watermark: i64,
    backpressured_nanos: u64,
    operators: Vec<weir_runtime::metrics::OperatorReading>,
}

/// Reads every subtask of every vertex. A task's records in are its head operator's; its records
/// out are what its network writers sent.
fn for_each_subtask(control: &JobControl, mut f: impl FnMut(usize, u32, &SubtaskReading)) {
    let Some(graph) = control.graph() else { return };
    let metrics = control.metrics();
    for (v, chain) in graph.chains.iter().enumerate() {
        for subtask in 0..chain.parallelism {
            let operators: Vec<_> = chain.nodes.iter().map(|&n| metrics.read_operator(graph, n, subtask)).collect();
            let sent = chain
                .nodes
                .iter()
                .flat_map(|&n| graph.nodes[n].outputs.iter())
                .filter(|&&e| !graph.edges[e].chained)
                .map(|&e| metrics.records_sent(e, subtask))
                .sum();
            let reading = SubtaskReading {
                task_in: operators[0].records_in,
                task_out: sent,
                task_watermark: operators[0].input_watermark,
                backpressured_nanos: metrics.backpressured_nanos(graph, v, subtask),
                operators,
            };
            f(v, subtask, &reading);
        }
    }
}

/// Records read and written by each vertex (all subtasks), for the job details' vertex metrics.
pub fn vertex_records(control: &JobControl) -> Vec<(u64, u64)> {
    let mut totals = vec![(0, 0); control.info().vertices.len()];
    for_each_subtask(control, |v, _, r| {
        totals[v].0 += r.task_in;
        totals[v].1 += r.task_out;
    });
    totals
}

impl Sample {
    fn number(scope: &Scope, name: impl Into<Cow<'static, str>>, value: f64) -> Sample {
        Sample { scope: scope.clone(), name: name.into(), value: Value::Number(value) }
    }
}

/// Every metric of the job, now. (A watermark not yet seen is `Long.MIN_VALUE`, as in Flink.)
pub fn samples(control: &JobControl, rates: &Rates) -> Vec<Sample> {
    let mut all = job_samples(control);
    for_each_subtask(control, |vertex, subtask, r| {
        let per_second = |op: Option<usize>, what: &str| rates.per_second(&key(vertex, subtask, op, what));
        let task = Scope::Task { vertex, subtask };
        let backpressured_ms_per_s = (per_second(None, "bp") / 1e6).min(1000.0).round();
        all.extend([
            Sample::number(&task, "numRecordsIn", r.task_in as f64),
            Sample::number(&task, "numRecordsOut", r.task_out as f64),
            Sample::number(&task, "numRecordsInPerSecond", per_second(None, "in")),
            Sample::number(&task, "numRecordsOutPerSecond", per_second(None, "out")),
            Sample::number(&task, "currentInputWatermark", r.task_watermark as f64),
            Sample::number(&task, "backPressuredTimeMsPerSecond", backpressured_ms_per_s),
            Sample::number(&task, "accumulateBackPressuredTimeMs", (r.backpressured_nanos / 1_000_000) as f64),
        ]);
        for (operator, o) in r.operators.iter().enumerate() {
            let scope = Scope::Operator { vertex, subtask, operator };
            all.extend([
                Sample::number(&scope, "numRecordsIn", o.records_in as f64),
                Sample::number(&scope, "numRecordsOut", o.records_out as f64),
                Sample::number(&scope, "numRecordsInPerSecond", per_second(Some(operator), "in")),
                Sample::number(&scope, "numRecordsOutPerSecond", per_second(Some(operator), "out")),
                Sample::number(&scope, "currentInputWatermark", o.input_watermark as f64),
                Sample::number(&scope, "numLateRecordsDropped", o.late_records_dropped as f64),
            ]);
            let node = control.graph().map_or(0, |g| g.chains[vertex].nodes[operator]);
            let native = control.metrics().native(node, subtask);
            all.extend(native.into_iter().map(|(name, v)| Sample::number(&scope, name, v)));
        }
    });
    all
}

/// The job scope: restarts, uptime and the checkpoint figures of Flink's `CheckpointStatsTracker`.
pub fn job_samples(control: &JobControl) -> Vec<Sample> {
    let history = control.checkpoint_history();
    let last = history.completed_recent().next_back();
    let timestamps = control.status_timestamps();
    let now = weir_runtime::job::stats::wall_clock_ms();
    let uptime = match (control.status(), timestamps.get(JobStatus::Running)) {
        (JobStatus::Running, Some(since)) => now.saturating_sub(since),
        _ => 0,
    };
    let restore = control.restored_from().and(timestamps.first(JobStatus::Running));
    let n = |name: &'static str, v: f64| Sample::number(&Scope::Job, name, v);
    let pending = history.pending().len() as f64;
    let mut samples = vec![
        n("numRestarts", f64::from(control.restarts())),
        n("uptime", uptime as f64),
        n("numberOfCompletedCheckpoints", history.completed_total() as f64),
        n("numberOfFailedCheckpoints", history.failed_total() as f64),
        n("numberOfInProgressCheckpoints", pending),
        n("totalNumberOfCheckpoints", (history.completed_total() + history.failed_total()) as f64 + pending),
        n("lastCheckpointDuration", last.map_or(-1.0, |c| c.duration.as_millis() as f64)),
        n("lastCheckpointSize", last.map_or(-1.0, |c| c.checkpointed_size as f64)),
        n("lastCheckpointFullSize", last.map_or(-1.0, |c| c.state_size as f64)),
        n("lastCompletedCheckpointId", last.map_or(-1.0, |c| c.id as f64)),
        n("lastCheckpointCompletedTimestamp", last.map_or(-1.0, |c| c.completed_timestamp_ms as f64)),
        n("lastCheckpointRestoreTimestamp", restore.map_or(-1.0, |t| t as f64)),
    ];
    samples.push(Sample {
        scope: Scope::Job,
        name: "lastCheckpointExternalPath".into(),
        value: Value::Text(last.map_or_else(|| "n/a".to_string(), |c| c.location.to_string())),
    });
    samples
}

/// Flink's REST metric ids: `<subtask>.<name>` for a task, `<subtask>.<operator>.<name>` for an
/// operator, the operator's name with every character but letters, digits and `_` as `_`.
fn rest_id(control: &JobControl, sample: &Sample) -> String {
    match sample.scope {
        Scope::Job => sample.name.to_string(),
        Scope::Task { subtask, .. } => format!("{subtask}.{}", sample.name),
        Scope::Operator { vertex, subtask, operator } => {
            let name = &control.info().vertices[vertex].operators[operator].name;
            let name: String =
                name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
            format!("{subtask}.{name}.{}", sample.name)
        }
    }
}

/// The answer of a REST metrics path: the ids, or with `get` the values of those asked for, as
/// Flink's `[{"id": ..}]` / `[{"id": .., "value": ".."}]`.
pub fn rest(control: &JobControl, samples: &[Sample], get: Option<&str>) -> serde_json::Value {
    let listed = samples.iter().map(|s| (rest_id(control, s), s));
    match get {
        None => listed.map(|(id, _)| serde_json::json!({ "id": id })).collect(),
        Some(wanted) => {
            let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();
            listed
                .filter(|(id, _)| wanted.contains(&id.as_str()))
                .map(|(id, s)| serde_json::json!({ "id": id, "value": s.value.rest() }))
                .collect()
        }
    }
}

/// A label value as Flink's Prometheus reporter writes it: characters other than letters,
/// digits, `_` and `:` become `_`.
fn label(value: &str) -> String {
    value.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect()
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The Prometheus text exposition (format 0.0.4) of every numeric metric.
pub fn prometheus(control: &JobControl, samples: &[Sample]) -> String {
    let info = control.info();
    let job_id = control.job_id().to_hex();
    let job_name = label(control.name());
    let host = crate::views::host();
    let attempt = control.restarts();
    // One process runs the whole job: it is the "task manager" of every task.
    let tm_id = label(&format!("{host}:{}", std::process::id()));
    // By family: its name, the metric's own name and scope (for HELP), and its samples.
    let mut families: Vec<(String, String, &str, Vec<String>)> = Vec::new();
    for s in samples {
        let Value::Number(v) = s.value else { continue };
        let (scope, labels) = match s.scope {
            Scope::Job => {
                ("jobmanager_job", format!(r#"job_id="{job_id}",host="{}",job_name="{job_name}""#, escape(&host)))
            }
            Scope::Task { vertex, subtask } => {
                let vertex = &info.vertices[vertex];
                (
                    "taskmanager_job_task",
                    format!(
                        r#"job_id="{job_id}",task_id="{}",task_attempt_id="{job_id}_{}_{subtask}_{attempt}",host="{}",task_name="{}",task_attempt_num="{attempt}",job_name="{job_name}",tm_id="{tm_id}",subtask_index="{subtask}""#,
                        vertex.id,
                        vertex.id,
                        escape(&host),
                        label(&vertex.name)
                    ),
                )
            }
            Scope::Operator { vertex, subtask, operator } => {
                let vertex = &info.vertices[vertex];
                let op = &vertex.operators[operator];
                (
                    "taskmanager_job_task_operator",
                    format!(
                        r#"job_id="{job_id}",task_id="{}",task_attempt_id="{job_id}_{}_{subtask}_{attempt}",host="{}",operator_id="{}",operator_name="{}",task_name="{}",task_attempt_num="{attempt}",job_name="{job_name}",tm_id="{tm_id}",subtask_index="{subtask}""#,
                        vertex.id,
                        vertex.id,
                        escape(&host),
                        op.id,
                        label(&op.name),
                        label(&vertex.name)
                    ),
                )
            }
        };
        // Metric names become part of the family name: `.` and `-` (RocksDB's) as `_`.
        let name: String =
            s.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        let family = format!("flink_{scope}_{name}");
        let line = format!("{family}{{{labels},}} {}", prometheus_number(v));
        match families.iter_mut().find(|(f, ..)| *f == family) {
            Some((.., lines)) => lines.push(line),
            None => families.push((family, s.name.to_string(), scope, vec![line])),
        }
    }
    let mut text = String::new();
    for (family, name, scope, lines) in families {
        let _ = writeln!(text, "# HELP {family} {name} (scope: {scope})");
        let _ = writeln!(text, "# TYPE {family} gauge");
        for line in lines {
            let _ = writeln!(text, "{line}");
        }
    }
    text
}

fn prometheus_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:?}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_numbers_as_flinks_reporter_writes_them() {
        assert_eq!(label("Source: Sequence Source -> Map"), "Source:_Sequence_Source____Map");
        assert_eq!(label("reference-count"), "reference_count");
        assert_eq!(prometheus_number(431.0), "431.0");
        assert_eq!(prometheus_number(1.796455075085e12), "1796455075085.0");
        assert_eq!(prometheus_number(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn rest_values_are_strings_of_integers_when_whole() {
        assert_eq!(Value::Number(15681.0).rest(), "15681");
        assert_eq!(Value::Number(210.5).rest(), "210.5");
        assert_eq!(Value::Number(i64::MIN as f64).rest(), "-9223372036854775808");
    }
}

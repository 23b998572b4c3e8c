//! Flink's own tools against Weir: the real Flink 2.3 CLI (`scripts/flink-cli.sh`) drives a
//! running Weir job, the REST answers have the shapes Flink 2.3 gave on this machine
//! (`fixtures/flink-2.3/`, recorded from a running Flink job), and a Prometheus scrape moves.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flink-2.3").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn flink_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// Runs the Flink CLI (installed on first use); returns its stdout and stderr.
fn flink(args: &[&str]) -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/flink-cli.sh");
    let out = Command::new(script).arg("--").args(args).output().expect("scripts/flink-cli.sh runs");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| !l.is_empty()).collect()
}

/// `dd.MM.yyyy HH:mm:ss` as Flink's `list` prints a start time.
fn is_flink_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            2 | 5 => *c == b'.',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

fn printed_savepoint(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.strip_prefix("Savepoint completed. Path: ")).expect("a savepoint path").to_string()
}

fn local(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file:").unwrap_or(uri))
}

/// The CLI's lines, compared with what the same CLI printed against Flink 2.3 itself
/// (`fixtures/flink-2.3/cli-*.txt`): the same lines, with Weir's ids and paths.
#[test]
fn the_flink_cli_lists_savepoints_disposes_stops_and_cancels_a_weir_job() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let (job, out) = weir.start_keyed_count(dir.path(), Backend::HashMap);
    let address = weir.address(&job);
    let m = address.as_str();

    let (stdout, stderr) = flink(&["list", "-m", m]);
    let listed = lines(&stdout);
    assert_eq!(listed.len(), 5, "{stdout}{stderr}");
    assert_eq!(listed[0], "Waiting for response...");
    assert_eq!(listed[1], "------------------ Running/Restarting Jobs -------------------");
    let (time, rest) = listed[2].split_at(19);
    assert!(is_flink_time(time), "{}", listed[2]);
    assert_eq!(rest, format!(" : {job} : keyed-count (RUNNING)"));
    assert_eq!(listed[3..], ["--------------------------------------------------------------", "No scheduled jobs."]);

    let sp = dir.path().join("flink-savepoints");
    let (stdout, stderr) = flink(&["savepoint", "-m", m, &job, sp.to_str().unwrap()]);
    let printed = printed_savepoint(&stdout);
    assert_eq!(
        lines(&stdout),
        [
            format!("Triggering savepoint for job {job}."),
            "Waiting for response...".to_string(),
            format!("Savepoint completed. Path: {printed}"),
            "You can resume your program from this savepoint with the run command.".to_string(),
        ],
        "{stderr}"
    );
    let savepoint = local(&printed);
    assert!(printed.starts_with(&format!("file:{}/savepoint-{}-", sp.display(), &job[..6])), "{printed}");
    assert!(savepoint.join("_metadata").is_file());

    let (stdout, _) = flink(&["savepoint", "-detached", "-m", m, &job, sp.to_str().unwrap()]);
    let detached = lines(&stdout);
    assert_eq!(detached[0], format!("Triggering savepoint in detached mode for job {job}."), "{stdout}");
    let trigger = detached[1].strip_prefix("Successfully trigger manual savepoint, triggerId: ").expect(&stdout);
    assert!(trigger.len() == 32 && trigger.bytes().all(|b| b.is_ascii_hexdigit()), "{trigger}");

    // Disposing the savepoint Flink printed, by the same path.
    let (stdout, stderr) = flink(&["savepoint", "-d", &printed, "-m", m]);
    assert_eq!(
        lines(&stdout),
        [
            format!("Disposing savepoint '{printed}'."),
            "Waiting for response...".to_string(),
            format!("Savepoint '{printed}' disposed."),
        ],
        "{stderr}"
    );
    assert!(!savepoint.exists(), "disposed");

    let final_dir = dir.path().join("final");
    let (stdout, stderr) = flink(&["stop", "-m", m, "--savepointPath", final_dir.to_str().unwrap(), &job]);
    let stopped_at = printed_savepoint(&stdout);
    assert_eq!(
        lines(&stdout),
        [
            format!("Suspending job \"{job}\" with a CANONICAL savepoint."),
            format!("Triggering stop-with-savepoint for job {job}."),
            "Waiting for response...".to_string(),
            format!("Savepoint completed. Path: {stopped_at}"),
        ],
        "{stderr}"
    );
    weir.wait_gone(&job);
    let before = committed(&out).len();

    // The path Flink printed restores with weir; the restored job continues, and Flink cancels it.
    // (The same output directory: the file sink commits the savepoint's pending files there.)
    let mut args = vec!["-s".to_string(), stopped_at.clone()];
    args.extend(keyed_count_args("100 ms", &dir.path().join("ck2"), &out));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let job2 = weir.run_detached(&args);
    wait_for("the restored job to commit output", || committed(&out).len() >= before + 10);
    let (stdout, stderr) = flink(&["cancel", "-m", &weir.address(&job2), &job2]);
    assert_eq!(lines(&stdout), [format!("Cancelling job {job2}."), format!("Cancelled job {job2}.")], "{stderr}");
    weir.wait_gone(&job2);
    assert!(before >= 50);
}

/// Where Flink's answer has a field, Weir's has it with the same JSON type; Weir may add fields.
/// Maps keyed by ids (vertex ids, checkpoint task maps) are compared entry shape to entry shape,
/// arrays by their first elements. Returns the paths that differ.
fn shape_differences(path: &str, flink: &Value, weir: &Value, out: &mut Vec<String>) {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    match (flink, weir) {
        (Value::Null, _) => {}
        (Value::Object(f), Value::Object(w)) => {
            let is_id = |k: &String| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit());
            if !f.is_empty() && f.keys().all(is_id) {
                if let (Some(fv), Some(wv)) = (f.values().next(), w.values().next()) {
                    shape_differences(&format!("{path}.<id>"), fv, wv, out);
                }
                return;
            }
            for (k, fv) in f {
                match w.get(k) {
                    Some(wv) => shape_differences(&format!("{path}.{k}"), fv, wv, out),
                    None => out.push(format!("{path}.{k}: missing")),
                }
            }
        }
        (Value::Array(f), Value::Array(w)) => {
            // Entries of different kinds (a checkpoint history holds in-progress, completed and
            // failed checkpoints, each with its own fields) are compared with an entry of the same
            // status, whatever the order the job's timing gave them.
            if let Some(fv) = f.first() {
                let same_status =
                    w.iter().find(|wv| fv.get("status").is_some() && wv.get("status") == fv.get("status"));
                if let Some(wv) = same_status.or(w.first()) {
                    shape_differences(&format!("{path}[0]"), fv, wv, out);
                }
            }
        }
        (f, w) if kind(f) == kind(w) => {}
        (f, w) => out.push(format!("{path}: Flink has {} ({f}), Weir {} ({w})", kind(f), kind(w))),
    }
}

#[test]
fn rest_answers_have_flinks_shapes() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    // Parallelism 2: the source and the keyed operator are two vertices with an edge between them.
    let (job, _) = weir.start_keyed_count_with(dir.path(), Backend::HashMap, &["-p", "2"]);
    let base = format!("http://{}/v1", weir.address(&job));
    let get = |path: &str| {
        let (status, body) = http("GET", &format!("{base}{path}"), None);
        assert_eq!(status, 200, "{path}: {body}");
        body
    };
    // A savepoint, so that the statistics have a latest savepoint besides checkpoints.
    let target = dir.path().join("sp");
    let (status, trigger) = http(
        "POST",
        &format!("{base}/jobs/{job}/savepoints"),
        Some(serde_json::json!({ "target-directory": target.to_str().unwrap() })),
    );
    assert_eq!(status, 202);
    let request = trigger["request-id"].as_str().unwrap().to_string();
    let mut status_answer = Value::Null;
    wait_for("the savepoint", || {
        status_answer = get(&format!("/jobs/{job}/savepoints/{request}"));
        status_answer["status"]["id"] == "COMPLETED"
    });
    wait_for("a checkpoint after the savepoint", || {
        let latest = &get(&format!("/jobs/{job}/checkpoints"))["latest"];
        latest["completed"]["id"].as_u64() > latest["savepoint"]["id"].as_u64()
    });
    let checkpoints = get(&format!("/jobs/{job}/checkpoints"));
    let checkpoint = checkpoints["latest"]["completed"]["id"].as_u64().unwrap();
    let details = get(&format!("/jobs/{job}/checkpoints/details/{checkpoint}"));
    let vertex = get(&format!("/jobs/{job}"))["vertices"][1]["id"].as_str().unwrap().to_string();

    let answers = [
        ("overview.json", get("/overview")),
        ("config.json", get("/config")),
        ("jobs.json", get("/jobs")),
        ("jobs_overview.json", get("/jobs/overview")),
        ("job.json", get(&format!("/jobs/{job}"))),
        ("job_plan.json", get(&format!("/jobs/{job}/plan"))),
        ("job_config.json", get(&format!("/jobs/{job}/config"))),
        ("job_exceptions.json", get(&format!("/jobs/{job}/exceptions"))),
        ("job_status.json", get(&format!("/jobs/{job}/status"))),
        ("job_checkpoints.json", checkpoints.clone()),
        ("job_checkpoints_config.json", get(&format!("/jobs/{job}/checkpoints/config"))),
        ("job_checkpoint_details.json", details.clone()),
        ("savepoint_trigger.json", trigger.clone()),
        ("savepoint_status.json", status_answer.clone()),
    ];
    let mut differences = Vec::new();
    for (name, weir_answer) in &answers {
        shape_differences(name, &flink_json(name), weir_answer, &mut differences);
    }
    assert!(differences.is_empty(), "fields that differ from Flink 2.3's answers:\n{}", differences.join("\n"));

    // The values are the job's, not placeholders.
    assert_eq!(answers[4].1["vertices"].as_array().unwrap().len(), 2);
    assert_eq!(answers[4].1["vertices"][1]["parallelism"], 2);
    assert_eq!(answers[5].1["plan"]["nodes"][0]["inputs"][0]["ship_strategy"], "HASH");
    let uids: BTreeSet<&str> = answers[5].1["plan"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["operators"].as_array().unwrap().iter().filter_map(|o| o["uid"].as_str()))
        .collect();
    assert_eq!(uids, BTreeSet::from(["generator", "count", "sink"]));
    assert!(checkpoints["counts"]["completed"].as_u64() >= Some(2));
    assert_eq!(checkpoints["latest"]["savepoint"]["external_path"], status_answer["operation"]["location"]);
    assert_eq!(checkpoints["latest"]["savepoint"]["savepointFormat"], "CANONICAL");
    assert!(checkpoints["summary"]["end_to_end_duration"]["max"].as_u64() >= Some(0));
    assert_eq!(details["tasks"][&vertex]["num_acknowledged_subtasks"], 2);
    let (status, missing) = http("GET", &format!("{base}/jobs/{job}/checkpoints/details/999999"), None);
    assert_eq!(status, 404, "{missing}");

    // Metric names: every job metric Weir serves is one of Flink's, and the vertex metrics come in
    // Flink's task (`0.name`) and operator (`0.Operator.name`) forms.
    let flink_job_metrics: BTreeSet<String> =
        flink_json("job_metrics.json").as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().into()).collect();
    let weir_job_metrics: BTreeSet<String> = get(&format!("/jobs/{job}/metrics"))
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().into())
        .collect();
    assert!(weir_job_metrics.is_subset(&flink_job_metrics), "{:?}", weir_job_metrics.difference(&flink_job_metrics));
    for name in ["numRestarts", "lastCheckpointDuration", "lastCheckpointSize", "numberOfCompletedCheckpoints"] {
        assert!(weir_job_metrics.contains(name), "{name}");
    }
    let flink_vertex: Vec<String> = flink_json("vertex_metrics.json")
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().into())
        .collect();
    let weir_vertex: Vec<String> = get(&format!("/jobs/{job}/vertices/{vertex}/metrics"))
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().into())
        .collect();
    for name in ["numRecordsIn", "numRecordsOut", "numRecordsInPerSecond", "currentInputWatermark"] {
        assert!(flink_vertex.contains(&format!("0.{name}")) && weir_vertex.contains(&format!("0.{name}")), "{name}");
        assert!(flink_vertex.iter().any(|id| id.starts_with("0.KeyedProcess.") && id.ends_with(name)));
        assert!(
            weir_vertex.iter().any(|id| id.starts_with("0.KeyedProcess.") && id.ends_with(&format!(".{name}"))),
            "{name}"
        );
    }
    let values = get(&format!("/jobs/{job}/vertices/{vertex}/metrics?get=0.numRecordsIn,1.numRecordsIn"));
    let counted: u64 =
        values.as_array().unwrap().iter().map(|m| m["value"].as_str().unwrap().parse::<u64>().unwrap()).sum();
    assert!(counted > 0, "records reached the keyed vertex: {values}");
    weir.ok(&["cancel", &job]);
}

/// A job that fails over: its exception history has Flink's shape (recorded from a failing Flink
/// 2.3 job), names the failed task, and the restarts show in the job metrics.
#[test]
fn exceptions_of_a_failing_job_have_flinks_shape() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let mut args = keyed_count_args("100 ms", &dir.path().join("ck"), &dir.path().join("out"));
    args.extend(["--fail-at-count".to_string(), "30".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let job = weir.run_detached(&args);
    let base = format!("http://{}/v1/jobs/{job}", weir.address(&job));
    let mut exceptions = Value::Null;
    wait_for("a failure in the exception history", || {
        exceptions = http("GET", &format!("{base}/exceptions"), None).1;
        exceptions["exceptionHistory"]["entries"].as_array().is_some_and(|e| !e.is_empty())
    });
    let mut differences = Vec::new();
    shape_differences("exceptions", &flink_json("job_exceptions_failed.json"), &exceptions, &mut differences);
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    let entry = &exceptions["exceptionHistory"]["entries"][0];
    assert_eq!(entry["taskName"], "Source -> KeyedProcess -> Sink (1/1)", "{entry}");
    assert!(entry["stacktrace"].as_str().unwrap().contains("injected failure: key"), "{entry}");
    wait_for("the restart counted", || {
        let (_, m) = http("GET", &format!("{base}/metrics?get=numRestarts"), None);
        m[0]["value"].as_str().and_then(|v| v.parse::<u32>().ok()) >= Some(1)
    });
    weir.ok(&["cancel", &job]);
    weir.wait_gone(&job);
}

/// One Prometheus family's label names, from a line `name{a="x",b="y",} value`.
fn label_names(line: &str) -> BTreeSet<String> {
    let labels = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
    labels.split("\",").filter_map(|l| l.split_once('=')).map(|(k, _)| k.trim_start_matches(',').to_string()).collect()
}

fn scrape(url: &str) -> Vec<(String, String, f64)> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent.get(url).call().unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.body_mut().read_to_string().unwrap();
    let mut samples = Vec::new();
    let mut typed = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split_whitespace().next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name = &line[..line.find('{').expect(line)];
        assert!(typed.contains(name), "{name} has a # TYPE line before its samples");
        let value: f64 = line.rsplit(' ').next().unwrap().parse().expect(line);
        samples.push((name.to_string(), line.to_string(), value));
    }
    samples
}

fn sum_of(samples: &[(String, String, f64)], family: &str, label: &str) -> f64 {
    samples.iter().filter(|(n, l, _)| n == family && l.contains(label)).map(|(_, _, v)| v).sum()
}

#[test]
fn prometheus_scrapes_show_counts_moving_and_checkpoints_completing() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let (job, _) = weir.start_keyed_count(dir.path(), Backend::RocksDb);
    let url = format!("http://{}/metrics", weir.address(&job));
    let first = scrape(&url);
    // Families Flink's reporter also exports have the same label names.
    let flink = fixture("prometheus.txt");
    for (name, line, _) in &first {
        if let Some(flink_line) = flink.lines().find(|l| l.starts_with(&format!("{name}{{"))) {
            assert_eq!(label_names(line), label_names(flink_line), "{name}");
        }
    }
    let process = "operator_name=\"KeyedProcess\"";
    let records = |s: &[(String, String, f64)]| sum_of(s, "flink_taskmanager_job_task_operator_numRecordsIn", process);
    let checkpoints = |s: &[(String, String, f64)]| sum_of(s, "flink_jobmanager_job_numberOfCompletedCheckpoints", "");
    let last_id = |s: &[(String, String, f64)]| sum_of(s, "flink_jobmanager_job_lastCompletedCheckpointId", "");
    let (records0, checkpoints0, id0) = (records(&first), checkpoints(&first), last_id(&first));
    let mut later = first.clone();
    wait_for("records and checkpoints to move", || {
        later = scrape(&url);
        records(&later) > records0 && checkpoints(&later) >= checkpoints0 + 2.0
    });
    assert!(last_id(&later) > id0, "lastCompletedCheckpointId follows the checkpoints");
    assert!(sum_of(&later, "flink_jobmanager_job_lastCheckpointDuration", "") >= 0.0);
    assert!(sum_of(&later, "flink_jobmanager_job_lastCheckpointFullSize", "") > 0.0);
    // RocksDB's own gauges per state, as Flink's RocksDB native metrics: the 10 keys are in.
    let keys = |s: &[(String, String, f64)]| {
        s.iter().filter(|(n, ..)| n.ends_with("_rocksdb_estimate_num_keys")).map(|(_, _, v)| v).sum::<f64>()
    };
    wait_for("RocksDB's key estimate", || keys(&scrape(&url)) >= 10.0);
    assert!(later
        .iter()
        .any(|(n, ..)| n.starts_with("flink_taskmanager_job_task_operator_")
            && n.ends_with("_rocksdb_total_sst_files_size")));
    // The source generates 2000 records/s: after a few seconds the rate shows it.
    wait_for("a rate", || {
        sum_of(&scrape(&url), "flink_taskmanager_job_task_operator_numRecordsInPerSecond", process) > 100.0
    });
    weir.ok(&["cancel", &job]);
}

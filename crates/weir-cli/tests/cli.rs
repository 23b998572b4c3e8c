//! The `weir` CLI and the job REST API, end to end with the bundled example jobs. Each test has its
//! own registry of running jobs (`WEIR_HOME`), so tests never see each other's jobs.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

#[test]
fn seed_scenario_savepoint_stop_and_restore_through_the_cli() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let (input, ck, sp) = (dir.path().join("words.jsonl"), dir.path().join("ck"), dir.path().join("savepoints"));
    std::fs::write(&input, "").unwrap();
    let out1 = dir.path().join("out1");
    let common = ["--input", input.to_str().unwrap(), "--checkpoints", ck.to_str().unwrap(), "--quiet"];
    let mut args = vec!["word-count", "--output", out1.to_str().unwrap()];
    args.extend_from_slice(&common);
    let job = weir.run_detached(&args);
    assert!(weir.ok(&["list"]).contains(&format!("{job} : word-count (RUNNING)")));

    append(&input, &["a", "b", "a"]);
    wait_for("a=1 b=1 a=2 committed", || committed(&out1).len() == 3);
    let stdout = weir.ok(&["savepoint", &job, sp.to_str().unwrap()]);
    assert!(
        stdout.starts_with(&format!(
            "Triggering savepoint for job {job}.\nWaiting for response...\nSavepoint completed. Path: file:"
        )),
        "{stdout}"
    );
    let savepoint = savepoint_path(&stdout);
    let name = savepoint.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with(&format!("savepoint-{}-", &job[..6])) && name.len() == 29, "{name}");
    assert!(savepoint.join("_metadata").is_file());

    append(&input, &["b", "a"]);
    wait_for("all five totals committed", || committed(&out1).len() == 5);
    let stdout = weir.ok(&["stop", &job, "--savepoint-path", sp.to_str().unwrap()]);
    assert!(stdout.starts_with(&format!("Suspending job \"{job}\" with a CANONICAL savepoint.\nTriggering stop-with-savepoint for job {job}.\nWaiting for response...\nSavepoint completed. Path: file:")), "{stdout}");
    weir.wait_gone(&job);
    assert_eq!(committed(&out1), totals(&[("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]));

    // Resume from the first savepoint: exactly the two lines appended after it are read again.
    let out2 = dir.path().join("out2");
    let mut args = vec!["-s", savepoint.to_str().unwrap(), "word-count", "--output", out2.to_str().unwrap()];
    args.extend_from_slice(&common);
    let job2 = weir.run_detached(&args);
    wait_for("the replayed totals", || committed(&out2).len() == 2);
    std::thread::sleep(Duration::from_millis(300));
    let stdout = weir.ok(&["cancel", &job2]);
    assert_eq!(stdout, format!("Cancelling job {job2}.\nCancelled job {job2}.\n"));
    assert_eq!(committed(&out2), totals(&[("b", 2), ("a", 3)]));
    assert!(savepoint.join("_metadata").is_file(), "NO_CLAIM never deletes the savepoint");
}

#[test]
fn rest_savepoint_lifecycle_disposal_and_stop() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("sp");
    let (job, _) = weir.start_keyed_count(dir.path(), Backend::HashMap);
    let base = format!("http://{}", weir.address(&job));
    let (status, v) = http("GET", &format!("{base}/jobs"), None);
    assert_eq!((status, v["jobs"][0]["id"].as_str()), (200, Some(job.as_str())));

    // No target and no default directory: 400 with Flink's message.
    let (status, v) = http("POST", &format!("{base}/jobs/{job}/savepoints"), Some(json!({})));
    assert_eq!(status, 400);
    assert_eq!(
        v["errors"][0],
        "Config key [execution.checkpointing.savepoint-dir] is not set. Property [target-directory] must be provided."
    );

    // Trigger twice with the same triggerId: one savepoint.
    let body = json!({ "target-directory": sp, "triggerId": "0123456789abcdef0123456789abcdef" });
    let (status, v) = http("POST", &format!("{base}/jobs/{job}/savepoints"), Some(body.clone()));
    assert_eq!((status, v["request-id"].as_str()), (202, Some("0123456789abcdef0123456789abcdef")));
    let (status, _) = http("POST", &format!("{base}/jobs/{job}/savepoints"), Some(body));
    assert_eq!(status, 202);
    let mut location = String::new();
    wait_for("savepoint completed", || {
        let (_, v) = http("GET", &format!("{base}/jobs/{job}/savepoints/0123456789abcdef0123456789abcdef"), None);
        if v["status"]["id"] == "COMPLETED" {
            location = v["operation"]["location"].as_str().unwrap().to_string();
            true
        } else {
            assert_eq!(v["status"]["id"], "IN_PROGRESS");
            false
        }
    });
    assert_eq!(std::fs::read_dir(&sp).unwrap().count(), 1, "an idempotent retry triggers no second savepoint");
    let savepoint = PathBuf::from(location.strip_prefix("file:").unwrap());
    assert!(savepoint.join("_metadata").is_file());
    let (status, v) = http("GET", &format!("{base}/jobs/{job}/savepoints/ffffffffffffffffffffffffffffffff"), None);
    assert_eq!(status, 404);
    assert_eq!(
        v["errors"][0],
        format!("There is no savepoint operation with triggerId=ffffffffffffffffffffffffffffffff for job {job}.")
    );

    // Checkpoint statistics: the savepoint is the latest savepoint, not the latest checkpoint.
    let (_, stats) = http("GET", &format!("{base}/jobs/{job}/checkpoints"), None);
    assert_eq!(stats["latest"]["savepoint"]["external_path"], location.as_str());
    assert_eq!(stats["latest"]["savepoint"]["is_savepoint"], true);
    assert!(stats["counts"]["completed"].as_u64().unwrap() >= 1);
    assert_eq!(stats["latest"]["restored"], Value::Null);

    // A manual checkpoint through the CLI.
    let stdout = weir.ok(&["checkpoint", &job]);
    assert!(stdout.contains(&format!(" for job {job} completed.")), "{stdout}");

    // Disposal: a running job's checkpoint is refused; the savepoint goes.
    let (_, stats) = http("GET", &format!("{base}/jobs/{job}/checkpoints"), None);
    let checkpoint = stats["latest"]["completed"]["external_path"].as_str().unwrap().to_string();
    let (status, v) =
        http("POST", &format!("{base}/savepoint-disposal"), Some(json!({ "savepoint-path": checkpoint })));
    assert_eq!(status, 200);
    let (_, v) = http("GET", &format!("{base}/savepoint-disposal/{}", v["request-id"].as_str().unwrap()), None);
    assert!(v["operation"]["failure-cause"]["stack-trace"].as_str().unwrap().contains("still running"), "{v}");
    let (status, v) = http("POST", &format!("{base}/savepoint-disposal"), Some(json!({})));
    assert_eq!((status, v["errors"][0].as_str()), (400, Some("Field savepoint-path must not be omitted or be null.")));
    let (_, v) = http("POST", &format!("{base}/savepoint-disposal"), Some(json!({ "savepoint-path": location })));
    let (_, v) = http("GET", &format!("{base}/savepoint-disposal/{}", v["request-id"].as_str().unwrap()), None);
    assert_eq!(v, json!({ "status": { "id": "COMPLETED" }, "operation": {} }));
    assert!(!savepoint.exists());

    // Stop with a savepoint over REST: the job finishes.
    let (status, v) = http("POST", &format!("{base}/jobs/{job}/stop"), Some(json!({ "targetDirectory": sp })));
    assert_eq!(status, 202);
    let trigger = v["request-id"].as_str().unwrap().to_string();
    wait_for("stop completed", || {
        http("GET", &format!("{base}/jobs/{job}/savepoints/{trigger}"), None).1["status"]["id"] == "COMPLETED"
    });
    weir.wait_gone(&job);
    assert!(weir.fails(&["savepoint", &job, sp.to_str().unwrap()]).contains(&format!("No running job {job}")));
}

#[test]
fn bad_snapshots_are_refused_before_the_job_starts_hashmap() {
    bad_snapshots_are_refused_before_the_job_starts(Backend::HashMap);
}

/// The same with rocksdb and a native savepoint: damaged RocksDB files are caught by their
/// recorded sizes and checksums before RocksDB opens them.
#[test]
fn bad_snapshots_are_refused_before_the_job_starts_rocksdb() {
    bad_snapshots_are_refused_before_the_job_starts(Backend::RocksDb);
}

fn bad_snapshots_are_refused_before_the_job_starts(backend: Backend) {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let flags = backend.flags(dir.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (input, out) = (dir.path().join("in.jsonl"), dir.path().join("out"));
    append(&input, &["a"]);
    let refused_ck = dir.path().join("ck-refused");
    let run = |snapshot: &Path| {
        let out = out.to_str().unwrap();
        let mut args = vec!["run", "-s", snapshot.to_str().unwrap()];
        args.extend_from_slice(&flags);
        args.extend_from_slice(&[
            "word-count",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out,
            "--bounded",
            "--quiet",
            "--checkpoints",
            refused_ck.to_str().unwrap(),
        ]);
        weir.fails(&args)
    };
    let missing = dir.path().join("nope");
    assert!(run(&missing)
        .contains(&format!("Cannot find checkpoint or savepoint file/directory 'file:{}'", missing.display())));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(run(&empty).contains("Cannot find meta data file '_metadata' in directory"));

    // A real savepoint, then damaged copies of it.
    let sp = dir.path().join("sp");
    let follow_in = dir.path().join("follow.jsonl");
    append(&follow_in, &["a", "b"]);
    let checkpoints = dir.path().join("ck");
    let mut args = flags.clone();
    args.extend_from_slice(&[
        "word-count",
        "--input",
        follow_in.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--checkpoints",
        checkpoints.to_str().unwrap(),
        "--quiet",
    ]);
    let job = weir.run_detached(&args);
    wait_for("the first totals", || committed(&out).len() == 2);
    let stopped = weir.ok(&["stop", &job, "-p", sp.to_str().unwrap(), "--type", backend.savepoint_type()]);
    let savepoint = savepoint_path(&stopped);
    weir.wait_gone(&job);
    let copy = |name: &str| {
        let to = dir.path().join(name);
        copy_dir(&savepoint, &to);
        to
    };
    let truncated = copy("truncated");
    let meta = std::fs::read(truncated.join("_metadata")).unwrap();
    std::fs::write(truncated.join("_metadata"), &meta[..meta.len() / 2]).unwrap();
    assert!(run(&truncated).contains("is truncated"));
    let newer = copy("newer");
    let mut bytes = meta.clone();
    bytes[11] = 99;
    std::fs::write(newer.join("_metadata"), &bytes).unwrap();
    assert!(run(&newer).contains("has metadata format version 99, but this Weir reads versions up to 3"));

    // Damaged keyed state: the canonical file's key-group checksums, RocksDB files' recorded
    // CRC32C and sizes.
    let state_file = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("keyed-"))
            .max_by_key(|p| p.extension().is_some_and(|e| e == "sst"))
            .unwrap()
    };
    let damaged = copy("damaged");
    let state = state_file(&damaged);
    let mut bytes = std::fs::read(&state).unwrap();
    // In an SST file, a byte of the first data block: RocksDB itself reads it only on a lookup.
    let at = if backend == Backend::RocksDb { 5 } else { bytes.len() - 2 };
    bytes[at] ^= 0xff;
    std::fs::write(&state, &bytes).unwrap();
    let err = run(&damaged);
    assert!(
        err.contains("could not restore its state and was not started") && err.contains("checksum mismatch"),
        "{err}"
    );
    assert!(err.contains(&state.display().to_string()), "the error names the damaged file: {err}");
    assert_eq!(committed(&out).len(), 2, "the refused restore wrote nothing");
    let left: Vec<_> =
        std::fs::read_dir(&refused_ck).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "refused restores leave no job directory: {left:?}");
    // The damaged snapshot is left as it was.
    assert_eq!(std::fs::read(&state).unwrap(), bytes);
    if backend == Backend::RocksDb {
        let short = copy("short");
        let state = state_file(&short);
        let bytes = std::fs::read(&state).unwrap();
        std::fs::write(&state, &bytes[..bytes.len() - 100]).unwrap();
        let err = run(&short);
        assert!(err.contains("could not restore its state and was not started"), "{err}");
        assert!(err.contains(&format!("bytes, the snapshot recorded {}", bytes.len())), "{err}");
        assert!(
            std::fs::read_dir(dir.path().join("rocksdb")).map_or(true, |mut d| d.next().is_none()),
            "a refused restore leaves no RocksDB working directory behind"
        );
    }
}

#[test]
fn dispose_through_the_cli() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    append(&input, &["x"]);
    let job = weir.run_detached(&[
        "word-count",
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.path().join("o").to_str().unwrap(),
        "--checkpoints",
        dir.path().join("ck").to_str().unwrap(),
        "--quiet",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let savepoint = savepoint_path(&weir.ok(&["savepoint", &job, dir.path().join("sp").to_str().unwrap()]));
    weir.ok(&["cancel", &job]);
    let err = weir.fails(&["savepoint", "--dispose", dir.path().to_str().unwrap()]);
    assert!(err.contains("is not a savepoint"), "{err}");
    let out = weir.ok(&["savepoint", "--dispose", savepoint.to_str().unwrap()]);
    assert_eq!(out, format!("Disposing savepoint '{0}'.\nSavepoint '{0}' disposed.\n", savepoint.display()));
    assert!(!savepoint.exists());
    let err = weir.fails(&[
        "run",
        "--claim-mode",
        "legacy",
        "word-count",
        "--input",
        input.to_str().unwrap(),
        "--output",
        "o",
    ]);
    assert!(err.contains("claim mode LEGACY is not supported"), "{err}");
}

/// POSTs a 3 MB JSON body on a raw connection, writing it from another thread and ignoring write
/// errors (the server may answer and close before taking it all, which makes HTTP clients report
/// a broken pipe instead of the answer); returns the answer's status and JSON body.
fn oversized_request(address: &str, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        3 << 20
    );
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        for _ in 0..48 {
            if writer.write_all(&[b' '; 64 << 10]).is_err() {
                break;
            }
        }
    });
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let _ = sender.join();
    let answer = String::from_utf8_lossy(&bytes).to_string();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// keyed-count for one record: what a run that is refused before it starts is given.
const ONE_RECORD: [&str; 7] = ["keyed-count", "--output", "o", "--count", "1", "--keys", "1"];

/// What Weir prints, Weir accepts: the `file:` paths `weir savepoint` prints paste into `run -s`,
/// `--dispose` and savepoint targets, in every spelling of a local `file:` URI.
#[test]
fn printed_paths_paste_back() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let (job, out) = weir.start_keyed_count(dir.path(), Backend::HashMap);
    let target = dir.path().join("sp");
    // A file:/// target is the directory it names, not a directory called "file:".
    let stdout = weir.ok(&["savepoint", &job, &format!("file://{}", target.display())]);
    let printed = stdout.lines().find_map(|l| l.strip_prefix("Savepoint completed. Path: ")).unwrap().to_string();
    assert!(printed.starts_with(&format!("file:{}/savepoint-", target.display())), "{printed}");
    assert!(!Path::new("file:").exists() && !dir.path().join("file:").exists());
    let stdout = weir.ok(&["stop", &job, "-p", &format!("file:{}", target.display())]);
    let stopped = stdout.lines().find_map(|l| l.strip_prefix("Savepoint completed. Path: ")).unwrap().to_string();
    weir.wait_gone(&job);

    // Restore from the printed path, attached and detached.
    let mut args = vec!["-s".to_string(), stopped.clone()];
    args.extend(keyed_count_args("100 ms", &dir.path().join("ck"), &out));
    let job2 = weir.run_detached(&args.iter().map(String::as_str).collect::<Vec<_>>());
    weir.ok(&["cancel", &job2]);
    let refused = weir.fails(&[&["run", "-s", "file://elsewhere/sp"], ONE_RECORD.as_slice()].concat());
    assert!(refused.contains("names the host 'elsewhere'"), "{refused}");
    assert!(refused.contains("its error is printed above"), "{refused}");

    // Dispose by the printed path, and by the file:/// spelling.
    let stdout = weir.ok(&["savepoint", "--dispose", &printed]);
    assert!(stdout.contains("disposed"), "{stdout}");
    let path = stopped.strip_prefix("file:").unwrap();
    weir.ok(&["savepoint", "--dispose", &format!("file://{path}")]);
    assert!(!Path::new(path).exists());
    // An s3:// location is disposed through S3; with the server away, the error names it.
    let err = weir.fails_with_env(&["savepoint", "--dispose", "s3://bucket/savepoint-1"], &UNREACHABLE_S3);
    assert!(err.contains("s3://bucket/savepoint-1") && err.contains("127.0.0.1:1"), "{err}");
}

/// S3 settings (the AWS environment) that point at a port nothing listens on.
const UNREACHABLE_S3: [(&str, &str); 4] = [
    ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
    ("AWS_ALLOW_HTTP", "true"),
    ("AWS_ACCESS_KEY_ID", "weir-test"),
    ("AWS_SECRET_ACCESS_KEY", "weir-test"),
];

/// Every REST error is `{"errors": [...]}`, including those of malformed requests; checkpoint
/// statistics report what each incremental checkpoint uploaded, not the whole state.
#[test]
fn rest_errors_are_json_and_statistics_are_real() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let (job, _) =
        weir.start_keyed_count_with(dir.path(), Backend::RocksDb, &["-D", "execution.checkpointing.incremental=true"]);
    let base = format!("http://{}", weir.address(&job));
    // A fresh connection per request: a server may close one after refusing a large body.
    let agent = || -> ureq::Agent { ureq::Agent::config_builder().http_status_as_error(false).build().into() };
    let answer = |mut r: ureq::http::Response<ureq::Body>| {
        let status = r.status().as_u16();
        let body: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        (status, body)
    };
    let cases = [
        (
            "malformed JSON",
            answer(
                agent()
                    .post(format!("{base}/savepoint-disposal"))
                    .content_type("application/json")
                    .send("{not json")
                    .unwrap(),
            ),
            400,
        ),
        (
            "wrong type",
            answer(
                agent().post(format!("{base}/savepoint-disposal")).send_json(json!({ "savepoint-path": 7 })).unwrap(),
            ),
            422,
        ),
        (
            "not JSON",
            answer(agent().post(format!("{base}/savepoint-disposal")).content_type("text/plain").send("x").unwrap()),
            415,
        ),
        ("too large", oversized_request(&weir.address(&job), "/savepoint-disposal"), 413),
        ("wrong method", answer(agent().delete(format!("{base}/jobs")).call().unwrap()), 405),
        ("unknown path", answer(agent().get(format!("{base}/nope")).call().unwrap()), 404),
    ];
    for (what, (status, body), want) in cases {
        assert_eq!(status, want, "{what}: {body}");
        assert!(body["errors"][0].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
    }

    wait_for("a few checkpoints", || {
        http("GET", &format!("{base}/jobs/{job}/checkpoints"), None).1["counts"]["completed"].as_u64() >= Some(5)
    });
    let (_, stats) = http("GET", &format!("{base}/jobs/{job}/checkpoints"), None);
    let history = stats["history"].as_array().unwrap();
    assert!(
        history.iter().any(|c| c["checkpointed_size"].as_u64() < c["state_size"].as_u64()),
        "an incremental checkpoint uploads less than the state it references: {history:?}"
    );
    assert!(stats["counts"]["in_progress"].as_u64().is_some());
    weir.ok(&["cancel", &job]);
}

/// With `rest.auth.token`, every REST request needs the bearer token, and the CLI sends it from
/// WEIR_REST_TOKEN or --token-file; a non-loopback bind address without a token is refused before
/// the job starts.
#[test]
fn rest_access_needs_the_token_when_one_is_set() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let keyed = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "keyed-count",
                "--output",
                dir.path().join("out").to_str().unwrap(),
                "--count",
                "100000000",
                "--keys",
                "3",
                "--rate",
                "500",
            ]
            .map(String::from),
        );
        args
    };
    let refused = keyed(&["-D", "rest.bind-address=0.0.0.0"]);
    let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    let mut run = vec!["run"];
    run.extend(&refused);
    let err = weir.fails(&run);
    assert!(err.contains("0.0.0.0 is not a loopback address") && err.contains("rest.auth.token"), "{err}");

    let args = keyed(&["-D", "rest.auth.token=s3cret"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let job = weir.run_detached(&args);
    let base = format!("http://{}", weir.address(&job));
    let (status, v) = http("GET", &format!("{base}/jobs"), None);
    assert_eq!(status, 401);
    assert!(v["errors"][0].as_str().unwrap().contains("bearer token"), "{v}");
    let err = weir.fails(&["savepoint", &job, dir.path().join("sp").to_str().unwrap()]);
    assert!(err.contains("requires a bearer token"), "{err}");
    let listed = weir.ok(&["list"]);
    assert!(listed.contains(&format!("{job} : keyed-count (UNREACHABLE) at {}", base)), "{listed}");

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let out = weir.ok(&[
        "--token-file",
        token_file.to_str().unwrap(),
        "savepoint",
        &job,
        dir.path().join("sp").to_str().unwrap(),
    ]);
    assert!(out.contains("Savepoint completed."), "{out}");
    let listed = weir.ok(&["list", "--token-file", token_file.to_str().unwrap()]);
    assert!(listed.contains(&format!("{job} : keyed-count (RUNNING) at {}", base)), "{listed}");
    // The address as `weir list` prints it pastes into --address.
    let out = weir.ok(&[
        "--token-file",
        token_file.to_str().unwrap(),
        "--address",
        &base,
        "savepoint",
        &job,
        dir.path().join("sp").to_str().unwrap(),
    ]);
    assert!(out.contains("Savepoint completed."), "{out}");
    let cancel = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["cancel", &job])
        .env("WEIR_HOME", weir.home.path())
        .env("WEIR_REST_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(cancel.status.success(), "{}", String::from_utf8_lossy(&cancel.stderr));
}

/// What a newcomer meets first: errors printed once and readable with RUST_BACKTRACE=1, a job's
/// --help, Flink's single-dash long options, plain-text log files.
#[test]
fn newcomer_friction() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-savepoint");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "-d", "-s", missing.to_str().unwrap()])
        .args(ONE_RECORD)
        .env("WEIR_HOME", weir.home.path())
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert_eq!(err.matches("Cannot find checkpoint or savepoint file/directory").count(), 1, "{err}");
    assert!(!err.to_ascii_lowercase().contains("stack backtrace"), "{err}");

    // A reader that goes away (`weir list | head -1`) ends the CLI quietly, not with a panic.
    let mut list = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["list", "-a"])
        .env("WEIR_HOME", weir.home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(list.stdout.take());
    let listed = list.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&listed.stderr);
    assert!(!err.contains("panicked"), "{err}");

    let help = std::process::Command::new(example("word-count")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{}", String::from_utf8_lossy(&help.stderr));
    assert!(text.contains("--fromSavepoint") && text.contains("--input") && text.contains("--bounded"), "{text}");

    let (job, out2) = weir.start_keyed_count(dir.path(), Backend::RocksDb);
    let out = weir.ok(&["savepoint", &job, dir.path().join("sp").to_str().unwrap(), "-type", "native", "-detached"]);
    assert!(out.contains("Successfully trigger manual savepoint, triggerId:"), "{out}");
    let stopped = weir.ok(&["stop", "-savepointPath", dir.path().join("sp").to_str().unwrap(), &job]);
    let savepoint = savepoint_path(&stopped);
    weir.wait_gone(&job);
    let rocksdb = Backend::RocksDb.flags(dir.path());
    let mut args = vec!["run", "-detached", "-restoreMode", "claim", "-s", savepoint.to_str().unwrap()];
    args.extend(rocksdb.iter().map(String::as_str));
    args.extend(["keyed-count", "--output", out2.to_str().unwrap(), "--count", "100000000", "--keys", "10"]);
    // With info logging, so the log file shows the restore line.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(&args)
        .env("WEIR_HOME", weir.home.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out = String::from_utf8(run.stdout).unwrap();
    let job2 = out.lines().find_map(|l| l.strip_prefix("Job has been submitted with JobID ")).unwrap().to_string();
    let log = out.lines().find_map(|l| l.strip_prefix("Job output: ")).unwrap().to_string();
    weir.ok(&["cancel", &job2]);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("(CLAIM)") && !log.contains("Claim)"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file");
}

/// Ended jobs stay in `weir list -a` with their final status and last checkpoint, also when
/// their process was killed.
#[test]
fn ended_jobs_stay_listed_with_their_last_checkpoint() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let (stopped, _) = weir.start_keyed_count(dir.path(), Backend::HashMap);
    weir.ok(&["stop", &stopped, "-p", dir.path().join("sp").to_str().unwrap()]);
    weir.wait_gone(&stopped);
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (killed, _) = weir.start_keyed_count(&other, Backend::HashMap);
    let entry = weir.home.path().join("jobs").join(format!("{killed}.json"));
    wait_for("a checkpoint recorded in the registry", || {
        let v: Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        v["last_checkpoint"].is_string()
    });
    let v: Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
    let pid = v["pid"].as_u64().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    wait_for("the killed job to be gone", || !weir.ok(&["list"]).contains(&killed));
    let listed = weir.ok(&["list", "-a"]);
    let line =
        |job: &str| listed.lines().find(|l| l.contains(job)).unwrap_or_else(|| panic!("{job} missing: {listed}"));
    assert!(line(&stopped).contains("(FINISHED) last checkpoint file:"), "{listed}");
    // A stopped job deleted its checkpoints: what it points at is its final savepoint, which exists.
    let stopped_at = line(&stopped).rsplit("last checkpoint file:").next().unwrap().to_string();
    assert!(Path::new(&stopped_at).join("_metadata").is_file(), "{stopped_at}");
    assert!(
        line(&killed).contains("(GONE: the process ended without a final status) last checkpoint file:"),
        "{listed}"
    );
    // The printed checkpoint restores the killed job.
    let last = line(&killed).rsplit("last checkpoint ").next().unwrap().to_string();
    let path = last.strip_prefix("file:").unwrap();
    assert!(Path::new(path).join("_metadata").is_file(), "the newest retained checkpoint: {last}");
}

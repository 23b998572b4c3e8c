//! Checkpoints and savepoints on S3 through the CLI, against a real S3 server on loopback
//! (`scripts/s3.sh`: s3s-fs with SigV4 credentials): the seed scenario with every printed location
//! pasted back verbatim, a restore from a retained checkpoint in the bucket, a savepoint copied to
//! local disk and restored from there, disposal, and wrong settings refused before a job starts.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

fn s3_script(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3.sh");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(out.status.success(), "scripts/s3.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A `weir` whose jobs and commands reach the test server through `$WEIR_CONF_DIR/config.yaml`
/// (Flink's `s3.*` keys), and a fresh prefix in a bucket of it.
fn weir_on_s3(conf: &Path, secret: &str) -> (Weir, String) {
    s3_script(&["start"]);
    let endpoint = s3_script(&["endpoint"]);
    s3_script(&["create-bucket", "weir-cli-test"]);
    let access = std::env::var("WEIR_S3_ACCESS_KEY").unwrap_or_else(|_| "weir-test-access".into());
    std::fs::write(
        conf.join("config.yaml"),
        format!(
            "s3:\n  endpoint: {endpoint}\n  access-key: {access}\n  secret-key: {secret}\n  path.style.access: true\n"
        ),
    )
    .unwrap();
    let mut weir = Weir::new();
    weir.env.push(("WEIR_CONF_DIR".into(), conf.display().to_string()));
    let prefix = format!("s3://weir-cli-test/run-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    (weir, prefix)
}

fn secret() -> String {
    std::env::var("WEIR_S3_SECRET_KEY").unwrap_or_else(|_| "weir-test-secret".into())
}

/// The location a command printed after "Savepoint completed. Path: ".
fn printed_location(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.strip_prefix("Savepoint completed. Path: ")).expect("savepoint path line").to_string()
}

#[test]
fn seed_scenario_with_checkpoints_and_savepoints_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let (weir, prefix) = weir_on_s3(dir.path(), &secret());
    let (ck, sp) = (format!("{prefix}/ck"), format!("{prefix}/savepoints"));
    let input = dir.path().join("words.jsonl");
    std::fs::write(&input, "").unwrap();
    let common = ["--input", input.to_str().unwrap(), "--checkpoints", ck.as_str(), "--quiet"];
    let out1 = dir.path().join("out1");
    let job = weir.run_detached(&[&["word-count", "--output", out1.to_str().unwrap()], common.as_slice()].concat());

    append(&input, &["a", "b", "a"]);
    wait_for("a=1 b=1 a=2 committed", || committed(&out1).len() == 3);
    let savepoint = printed_location(&weir.ok(&["savepoint", &job, &sp]));
    assert!(savepoint.starts_with(&format!("{sp}/savepoint-{}-", &job[..6])), "{savepoint}");

    append(&input, &["b", "a"]);
    wait_for("all five totals committed", || committed(&out1).len() == 5);
    let stopped = printed_location(&weir.ok(&["stop", &job, "--savepoint-path", &sp]));
    assert!(stopped.starts_with(&format!("{sp}/savepoint-")), "{stopped}");
    weir.wait_gone(&job);
    assert_eq!(committed(&out1), totals(&[("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]));

    // Resume from the first savepoint, by its printed s3:// location: exactly the two lines
    // appended after it are read again.
    let out2 = dir.path().join("out2");
    let job2 = weir.run_detached(
        &[&["-s", savepoint.as_str(), "word-count", "--output", out2.to_str().unwrap()], common.as_slice()].concat(),
    );
    wait_for("the replayed totals", || committed(&out2).len() == 2);
    // A checkpoint after them; then kill -9: `weir list -a` names the job's last checkpoint in
    // the bucket, and restoring from it resumes the counts (b=2 → b=3).
    let stdout = weir.ok(&["checkpoint", &job2]);
    let id = stdout.lines().find_map(|l| l.strip_prefix("Checkpoint ")?.split(' ').next()).expect("checkpoint id");
    let entry = weir.home.path().join("jobs").join(format!("{job2}.json"));
    wait_for("the checkpoint recorded in the registry", || {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        v["last_checkpoint"].as_str().is_some_and(|c| c.ends_with(&format!("/chk-{id}")))
    });
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
    let pid = v["pid"].as_u64().unwrap().to_string();
    assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    wait_for("the killed job to be gone", || !weir.ok(&["list"]).contains(&job2));
    assert_eq!(committed(&out2), totals(&[("b", 2), ("a", 3)]));
    let listed = weir.ok(&["list", "-a"]);
    let line = listed.lines().find(|l| l.contains(&job2)).unwrap_or_else(|| panic!("{job2} missing: {listed}"));
    let checkpoint = line.rsplit("last checkpoint ").next().unwrap().to_string();
    assert_eq!(checkpoint, format!("{ck}/{job2}/chk-{id}"), "{listed}");
    let out3 = dir.path().join("out3");
    let job3 = weir.run_detached(
        &[&["-s", checkpoint.as_str(), "word-count", "--output", out3.to_str().unwrap()], common.as_slice()].concat(),
    );
    append(&input, &["b"]);
    wait_for("b=3 after the checkpoint", || committed(&out3) == totals(&[("b", 3)]));
    weir.ok(&["cancel", &job3]);
    weir.wait_gone(&job3);

    // Disposal by the printed location: afterwards it no longer restores.
    let out = weir.ok(&["savepoint", "--dispose", &savepoint]);
    assert_eq!(out, format!("Disposing savepoint '{savepoint}'.\nSavepoint '{savepoint}' disposed.\n"));
    let refused =
        weir.fails(&[&["run", "-s", savepoint.as_str(), "word-count", "--output", "x"], common.as_slice()].concat());
    assert!(refused.contains(&format!("'{savepoint}'")), "{refused}");
    assert!(weir.ok(&["savepoint", "--dispose", &stopped]).contains("disposed"));
}

#[test]
fn wrong_credentials_and_missing_buckets_are_refused_before_the_job_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (weir, prefix) = weir_on_s3(dir.path(), "not-the-secret");
    let input = dir.path().join("words.jsonl");
    std::fs::write(&input, "").unwrap();
    let run = |ck: &str| {
        let args = ["run", "word-count", "--input", input.to_str().unwrap(), "--output", "out", "--checkpoints", ck];
        weir.fails(&args)
    };
    let endpoint = s3_script(&["endpoint"]);
    let err = run(&format!("{prefix}/ck"));
    assert!(err.contains("weir-cli-test") && err.contains(&endpoint), "names the bucket and endpoint: {err}");
    let (weir, _) = weir_on_s3(dir.path(), &secret());
    let args = ["run", "word-count", "--input", input.to_str().unwrap(), "--output", "out"];
    let err = weir.fails(&[&args[..], &["--checkpoints", "s3://weir-no-such-bucket/ck"]].concat());
    assert!(err.contains("weir-no-such-bucket") && err.contains(&endpoint), "{err}");
}

/// A server of its own (port 9011), so stopping it disturbs no other test.
struct OwnServer {
    env: Vec<(String, String)>,
}

impl OwnServer {
    fn start(data: &Path) -> OwnServer {
        let env = vec![
            ("WEIR_S3_PORT".to_string(), "9011".to_string()),
            ("WEIR_S3_DIR".to_string(), data.display().to_string()),
        ];
        let server = OwnServer { env };
        server.script(&["start"]);
        server
    }

    fn script(&self, args: &[&str]) -> String {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3.sh");
        let out = Command::new(script).args(args).envs(self.env.iter().map(|(k, v)| (k, v))).output().unwrap();
        assert!(out.status.success(), "scripts/s3.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.script(&["stop"]));
    }
}

#[test]
fn the_server_going_away_fails_savepoints_and_checkpoints_cleanly_and_the_job_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("s3");
    let server = OwnServer::start(&data);
    server.script(&["create-bucket", "faults"]);
    let endpoint = server.script(&["endpoint"]);
    let access = std::env::var("WEIR_S3_ACCESS_KEY").unwrap_or_else(|_| "weir-test-access".into());
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "s3:\n  endpoint: {endpoint}\n  access-key: {access}\n  secret-key: {}\n  path.style.access: true\n",
            secret()
        ),
    )
    .unwrap();
    let mut weir = Weir::new();
    weir.env.push(("WEIR_CONF_DIR".into(), dir.path().display().to_string()));
    let input = dir.path().join("words.jsonl");
    std::fs::write(&input, "").unwrap();
    let out = dir.path().join("out");
    let args = ["word-count", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()];
    // Checkpoints declined while the server is away do not fail the job over (Flink's default
    // tolerates none).
    let tolerate = ["-D", "execution.checkpointing.tolerable-failed-checkpoints=1000"];
    let job = weir.run_detached(&[&tolerate[..], &args[..], &["--checkpoints", "s3://faults/ck", "--quiet"]].concat());
    append(&input, &["a", "b"]);
    wait_for("the first totals committed", || committed(&out).len() == 2);

    server.script(&["stop"]);
    let failed = weir.fails(&["savepoint", &job, "s3://faults/sp"]);
    assert!(failed.contains("Failed to trigger a savepoint") && failed.contains(&endpoint), "{failed}");
    let checkpoints = || http("GET", &format!("http://{}/jobs/{job}/checkpoints", weir.address(&job)), None).1;
    wait_for("a checkpoint declined while the server is away", || checkpoints()["counts"]["failed"].as_u64() > Some(0));
    assert!(weir.ok(&["list"]).contains(&format!("{job} : word-count (RUNNING)")), "the job keeps running");

    server.script(&["start"]);
    let completed_before = checkpoints()["counts"]["completed"].as_u64().unwrap();
    append(&input, &["a"]);
    wait_for("checkpoints complete again (the sink commits a=2)", || committed(&out).len() == 3);
    assert!(checkpoints()["counts"]["completed"].as_u64().unwrap() > completed_before);

    // A server that hangs rather than refuses (frozen for 5 s): the savepoint waits it out, and the
    // CLI says every two seconds that it is still at it.
    server.script(&["pause"]);
    let frozen = weir.spawn(&["savepoint", &job, "s3://faults/sp"]);
    std::thread::sleep(std::time::Duration::from_secs(5));
    server.script(&["resume"]);
    let out = frozen.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    for line in ["In progress for 2 s", "In progress for 4 s"] {
        assert!(stderr.contains(line), "{line:?} in {stderr}");
    }
    let savepoint = printed_location(&stdout);
    weir.ok(&["cancel", &job]);
    // Only the savepoint that completed has a _metadata; the failed one left no valid-looking
    // savepoint behind.
    let written: Vec<_> = std::fs::read_dir(data.join("data/faults/sp")).unwrap().map(|e| e.unwrap().path()).collect();
    let valid: Vec<_> = written.iter().filter(|d| d.join("_metadata").is_file()).collect();
    assert_eq!(valid.len(), 1, "{written:?}");
    assert!(savepoint.ends_with(valid[0].file_name().unwrap().to_str().unwrap()), "{savepoint}");
}

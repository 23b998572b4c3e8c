//! The word-count example through its binary: bounded, following a file across a kill -9 and a
//! restore from the latest retained checkpoint, and failures a restart cannot fix.

mod common;

use common::committed_lines as committed;
use common::wait_for;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn append(path: &Path, words: &[&str]) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for w in words {
        writeln!(f, r#"{{"word":"{w}","frequency":1}}"#).unwrap();
    }
}

fn word_count(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_word-count"));
    c.args(args).env("RUST_LOG", "warn");
    c
}

/// word-count with Weir's `flags`, then its input, output and checkpoint directory; the caller
/// adds the job's other arguments.
fn word_count_over(flags: &[&str], input: &Path, out: &Path, ck: &Path) -> Command {
    let mut c = word_count(flags);
    c.args(["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    c.args(["--checkpoints", ck.to_str().unwrap(), "--quiet"]);
    c
}

/// What word-count prints for the input a, b, a, b, a.
const TOTALS: [&str; 5] = [
    "WordCount{word='a', frequency=1}",
    "WordCount{word='b', frequency=1}",
    "WordCount{word='a', frequency=2}",
    "WordCount{word='b', frequency=2}",
    "WordCount{word='a', frequency=3}",
];

fn sorted(lines: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn bounded_word_count_prints_and_commits_running_totals() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.jsonl"), dir.path().join("out"));
    append(&input, &["a", "b", "a"]);
    std::fs::OpenOptions::new().append(true).open(&input).unwrap().write_all(b"not json\n").unwrap();
    append(&input, &["b", "a"]);
    let ck = dir.path().join("ck");
    let output = word_count(&[
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--bounded",
        "--checkpoints",
        ck.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed.lines().collect::<Vec<_>>(), TOTALS);
    assert_eq!(committed(&out), sorted(&TOTALS));
}

#[test]
fn followed_file_survives_kill_and_restore_from_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, ck) = (dir.path().join("in.jsonl"), dir.path().join("out"), dir.path().join("ck"));
    let args = [
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--checkpoints",
        ck.to_str().unwrap(),
        "--quiet",
    ];
    let spawn = |extra: &[&str]| -> Child {
        let mut c = word_count(&["-D", "execution.checkpointing.interval=50 ms"]);
        c.args(extra).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
    };
    let mut job = spawn(&[]);
    append(&input, &["a", "b", "a"]);
    wait_for("the first three totals", || committed(&out).len() == 3);
    // Let a checkpoint complete after the output, then kill the process hard.
    std::thread::sleep(Duration::from_millis(200));
    job.kill().unwrap();
    job.wait().unwrap();
    append(&input, &["b", "a"]);
    let job_dir = std::fs::read_dir(&ck).unwrap().next().unwrap().unwrap().path();
    let (_, latest) = weir::latest_checkpoint(&job_dir).expect("a retained checkpoint");
    let mut job = spawn(&["-s", latest.to_str().unwrap()]);
    wait_for("all five totals", || committed(&out).len() >= 5);
    std::thread::sleep(Duration::from_millis(200));
    job.kill().unwrap();
    job.wait().unwrap();
    let expected = [
        "WordCount{word='a', frequency=1}",
        "WordCount{word='b', frequency=1}",
        "WordCount{word='a', frequency=2}",
        "WordCount{word='b', frequency=2}",
        "WordCount{word='a', frequency=3}",
    ];
    assert_eq!(committed(&out), sorted(&expected), "the lines after the checkpoint are read exactly once");
}

/// Waits for a process at most `secs` seconds; kills it and fails the test if it is still running
/// (a job that restarts forever).
fn wait_at_most(mut child: Child, secs: u64, what: &str) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{what}: still running after {secs} s (restarting over and over?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A restored read offset beyond the end of a bounded input cannot heal by restarting: the job
/// fails at once and says why, instead of restarting every second forever.
#[test]
fn a_bounded_input_shorter_than_the_restored_offset_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, ck) = (dir.path().join("in.jsonl"), dir.path().join("out"), dir.path().join("ck"));
    append(&input, &["a", "b", "a", "b", "a"]);
    let mut job = word_count_over(&["-D", "execution.checkpointing.interval=50 ms"], &input, &out, &ck)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("all five totals", || committed(&out).len() == 5);
    std::thread::sleep(Duration::from_millis(200));
    job.kill().unwrap();
    job.wait().unwrap();
    let job_dir = std::fs::read_dir(&ck).unwrap().next().unwrap().unwrap().path();
    let (_, latest) = weir::latest_checkpoint(&job_dir).expect("a retained checkpoint");
    let short = dir.path().join("short.jsonl");
    append(&short, &["a"]);
    let child = word_count_over(&["-s", latest.to_str().unwrap()], &short, &out, &ck)
        .arg("--bounded")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = wait_at_most(child, 60, "word-count over a shorter input");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("is shorter") && stderr.contains("restored read offset"), "{stderr}");
    assert!(stderr.contains("a restart cannot fix this"), "{stderr}");
}

fn bounded_run(dir: &Path, input_bytes: &[u8]) -> (std::process::Output, Vec<String>) {
    let (input, out) = (dir.join("in.jsonl"), dir.join("out"));
    std::fs::write(&input, input_bytes).unwrap();
    let ck = dir.join("ck");
    let child = word_count_over(&[], &input, &out, &ck)
        .arg("--bounded")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = wait_at_most(child, 60, "bounded word-count");
    (output, committed(&out))
}

/// Bad input never turns into wrong totals silently: overflow fails naming the key, invalid UTF-8
/// is a malformed line (not merged with other words), a BOM is skipped, and a huge bad line is
/// logged by its start only.
#[test]
fn bad_input_is_reported_not_silently_miscounted() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = bounded_run(
        dir.path(),
        b"{\"word\":\"big\",\"frequency\":18446744073709551615}\n{\"word\":\"big\",\"frequency\":1}\n",
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains(r#"the sum of key "big" overflows u64"#), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let mut input = b"\xEF\xBB\xBF{\"word\":\"a\",\"frequency\":1}\n".to_vec();
    input.extend_from_slice(b"{\"word\":\"\xff\",\"frequency\":1}\n{\"word\":\"\xfe\",\"frequency\":1}\n");
    let mut huge = vec![b'x'; 10 << 20];
    huge.push(b'\n');
    input.extend_from_slice(&huge);
    let (run, lines) = bounded_run(dir.path(), &input);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert_eq!(lines, sorted(&["WordCount{word='a', frequency=1}"]), "the BOM line counts, invalid UTF-8 does not");
    assert_eq!(stderr.matches("not valid UTF-8").count(), 2, "{stderr}");
    assert!(stderr.contains(&format!("({} bytes)", 10 << 20)), "the huge line is named by its length");
    assert!(stderr.len() < 10_000, "a bad line is logged by its start only ({} bytes of log)", stderr.len());
}

/// A followed file that is truncated or replaced fails the job with a clear message (lines would be
/// lost or read twice otherwise); with --start-over-when-replaced, the new file is read from its start.
#[test]
fn a_followed_file_replaced_or_truncated_is_noticed() {
    for (how, start_over) in [("truncate", false), ("replace", false), ("replace", true)] {
        let dir = tempfile::tempdir().unwrap();
        let (input, out, ck) = (dir.path().join("in.jsonl"), dir.path().join("out"), dir.path().join("ck"));
        append(&input, &["a", "b", "a"]);
        let mut cmd = word_count_over(&["-D", "execution.checkpointing.interval=50 ms"], &input, &out, &ck);
        if start_over {
            cmd.arg("--start-over-when-replaced");
        }
        let mut job = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        wait_for("the first totals", || committed(&out).len() == 3);
        match how {
            "truncate" => {
                std::fs::write(&input, "").unwrap();
            }
            _ => {
                let new = dir.path().join("new.jsonl");
                append(&new, &["c"]);
                std::fs::rename(&new, &input).unwrap();
            }
        }
        if start_over {
            wait_for("the new file's line", || committed(&out).len() == 4);
            job.kill().unwrap();
            job.wait().unwrap();
            assert!(committed(&out).contains(&"WordCount{word='c', frequency=1}".to_string()));
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while job.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{how}: the job did not notice");
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = job.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = if how == "truncate" { "was truncated" } else { "was replaced by another file" };
        assert!(!output.status.success() && stderr.contains(said), "{how}: {stderr}");
        assert!(stderr.contains("a restart cannot fix this"), "{stderr}");
    }
}

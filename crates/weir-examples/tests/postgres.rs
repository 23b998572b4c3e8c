//! The exactly-once PostgreSQL sink against a real server (`scripts/postgres.sh`), fed by the
//! word-count job reading Kafka: kill -9 at random moments and right after `PREPARE TRANSACTION`,
//! restoring twice from one checkpoint, and the server going away during commits.

mod common;

use common::kafka::{kafka, word_lines};
use common::postgres::{connect, postgres, postgres_script, prepared, table_name, word_rows};
use common::wait_for;
use common::{committed_lines, diff, latest_checkpoint, latest_checkpoint_id, word_count_truth, Rng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One word-count run: Kafka `topic` → totals → exactly-once files in `dir/out` and a row per
/// total in PostgreSQL `table`; restored from `restore`; logs (info) to `log`.
fn word_count(dir: &Path, topic: &str, url: &str, table: &str, restore: Option<&Path>, log: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_word-count"));
    cmd.args(["-D", "execution.checkpointing.interval=50 ms", "-D", "weir.rest.enabled=false"]);
    if let Some(path) = restore {
        cmd.args(["-s", path.to_str().unwrap()]);
    }
    cmd.args(["--kafka-brokers", &kafka().brokers, "--topic", topic, "--quiet"])
        .args(["--output", dir.join("out").to_str().unwrap(), "--checkpoints", dir.join("ck").to_str().unwrap()])
        .args(["--postgres", url, "--table", table, "--postgres-insert"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Where a prepared transaction stands when the job is killed.
#[derive(Clone, Copy)]
enum Moment {
    /// Its checkpoint completed, `COMMIT PREPARED` not done yet: only the restore can commit it.
    CheckpointCompleted,
    /// Its checkpoint did not complete: no checkpoint lists it, the restore rolls it back.
    CheckpointPending,
}

/// Kills the job at `moment`, judged with the job frozen (SIGSTOP), so that what the test sees
/// in PostgreSQL and the checkpoint directory is exactly what the job had done when it died.
/// Tries at random instants for a few seconds (once the input is all read nothing is prepared);
/// kills it anyway in the end. True when the kill hit the moment.
fn kill_frozen_at(
    child: Child,
    moment: Moment,
    observer: &mut postgres::Client,
    prefix: &str,
    ck: &Path,
    rng: &mut Rng,
) -> bool {
    let signal = |name: &str| {
        let status = Command::new("kill").args([name, &child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {name}");
    };
    let give_up = Instant::now() + Duration::from_secs(4);
    while Instant::now() < give_up {
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        signal("-STOP");
        let completed = latest_checkpoint_id(ck).unwrap_or(0);
        let checkpoints =
            prepared(observer, prefix).into_iter().filter_map(|gid| gid.rsplit('-').nth(1)?.parse::<u64>().ok());
        let hit = checkpoints.into_iter().any(|id| match moment {
            Moment::CheckpointCompleted => id <= completed,
            Moment::CheckpointPending => id > completed,
        });
        if hit {
            kill(child);
            return true;
        }
        signal("-CONT");
    }
    kill(child);
    false
}

/// What the restores' logs say they did with prepared transactions: (committed at restore,
/// found committed already, rolled back).
fn recoveries(logs: &[PathBuf]) -> (u32, u32, u32) {
    let mut totals = (0, 0, 0);
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("of the restored snapshot")) {
            // "... subtask S: committed C transaction(s) of the restored snapshot (A committed
            // before), rolled back R not in it[: ids]"
            let number_after = |marker: &str| -> u32 {
                let rest = &line[line.find(marker).map_or(line.len(), |i| i + marker.len())..];
                rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0)
            };
            totals.0 += number_after(": committed ");
            totals.1 += number_after("snapshot (");
            totals.2 += number_after("rolled back ");
        }
    }
    totals
}

fn prefix(table: &str) -> String {
    format!("weir-{table}")
}

#[test]
fn kill_dash_nine_kafka_to_postgres_including_between_prepare_and_commit() {
    let url = postgres();
    let runs = std::env::var("WEIR_KILL_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let (mut committed, mut before, mut rolled_back) = (0, 0, 0);
    let mut hits = [0u32; 2];
    for run in 0..runs {
        let mut rng = Rng::new(0x7067 + run);
        let kafka = kafka();
        let topic = kafka.create_topic("pg-kill", 1 + rng.below(2) as u32);
        let table = table_name("pg_kill");
        let words: Vec<&str> = (0..1000).map(|_| ["a", "b", "c", "d", "e"][rng.below(5) as usize]).collect();
        let producer = kafka.produce_at(&topic, 300.0, word_lines(&words));
        let want = word_count_truth(&words);
        let dir = tempfile::tempdir().unwrap();
        let mut observer = connect(url);
        let mut logs = Vec::new();
        for attempt in 0..4 {
            let log = dir.path().join(format!("log{attempt}"));
            logs.push(log.clone());
            let child =
                word_count(dir.path(), &topic, url, &table, latest_checkpoint(&dir.path().join("ck")).as_deref(), &log);
            if attempt == 3 {
                wait_for("every total in the table", || word_rows(url, &table).len() >= want.len());
                std::thread::sleep(Duration::from_millis(300));
                kill(child);
                break;
            }
            if attempt % 2 == 0 {
                // Right after a PREPARE TRANSACTION: once after its checkpoint completed (the
                // restore must commit it), once before (the restore must roll it back).
                let moment = if attempt == 0 { Moment::CheckpointCompleted } else { Moment::CheckpointPending };
                std::thread::sleep(Duration::from_millis(300));
                if kill_frozen_at(child, moment, &mut observer, &prefix(&table), &dir.path().join("ck"), &mut rng) {
                    hits[moment as usize] += 1;
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
            kill(child);
        }
        producer.join().unwrap();
        let got = word_rows(url, &table);
        assert!(got == want, "run {run}: table {table}: {}", diff(&got, &want));
        let files = committed_lines(&dir.path().join("out"));
        assert!(files == want, "run {run}: files: {}", diff(&files, &want));
        assert!(prepared(&mut observer, &prefix(&table)).is_empty(), "run {run}: nothing stays prepared");
        let (c, b, r) = recoveries(&logs);
        (committed, before, rolled_back) = (committed + c, before + b, rolled_back + r);
    }
    assert!(hits.iter().all(|&n| n > 0), "kills after / before the checkpoint of a prepared transaction: {hits:?}");
    assert!(committed > 0, "no restore committed a transaction prepared before the kill ({before} found committed, {rolled_back} rolled back)");
    assert!(rolled_back > 0, "no restore rolled back an orphaned prepared transaction ({committed} committed)");
}

#[test]
fn restoring_twice_from_one_checkpoint_commits_nothing_twice() {
    // Every checkpoint taken while rows flow lists the transaction prepared at its barrier (its
    // state is captured before the commit). Restoring from one commits that transaction if the
    // crash came before its commit, and finds it committed otherwise; a second restore from the
    // same checkpoint must find it committed and commit nothing.
    let url = postgres();
    let kafka = kafka();
    let topic = kafka.create_topic("pg-twice", 1);
    let table = table_name("pg_twice");
    let words: Vec<&str> = (0..1200).map(|i| ["x", "y", "z"][i % 3]).collect();
    let producer = kafka.produce_at(&topic, 400.0, word_lines(&words));
    let dir = tempfile::tempdir().unwrap();
    let child = word_count(dir.path(), &topic, url, &table, None, &dir.path().join("log-first"));
    wait_for("rows flowing", || word_rows(url, &table).len() > 50);
    kill(child);
    let checkpoint = latest_checkpoint(&dir.path().join("ck")).expect("a checkpoint");
    let logs: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("log-restore{i}"))).collect();
    for log in &logs {
        let child = word_count(dir.path(), &topic, url, &table, Some(&checkpoint), log);
        wait_for("the restore", || {
            std::fs::read_to_string(log).unwrap_or_default().contains("of the restored snapshot")
        });
        std::thread::sleep(Duration::from_millis(100));
        kill(child);
    }
    let (committed_first, before_first, _) = recoveries(&logs[..1]);
    let (committed_second, before_second, _) = recoveries(&logs[1..]);
    assert!(committed_first + before_first > 0, "the checkpoint lists a prepared transaction");
    assert_eq!(committed_second, 0, "the second restore from {} commits nothing again", checkpoint.display());
    assert_eq!(before_second, committed_first + before_first, "it finds committed what the checkpoint lists");
    // A last run from the same checkpoint reads to the end: every total exactly once.
    producer.join().unwrap();
    let want = word_count_truth(&words);
    let child = word_count(dir.path(), &topic, url, &table, Some(&checkpoint), &dir.path().join("log-last"));
    wait_for("every total in the table", || word_rows(url, &table).len() >= want.len());
    std::thread::sleep(Duration::from_millis(300));
    kill(child);
    let got = word_rows(url, &table);
    assert!(got == want, "{}", diff(&got, &want));
}

#[test]
fn postgres_going_away_during_commits_loses_nothing_and_doubles_nothing() {
    // A server of its own: this test stops it.
    let port = 55433;
    postgres_script("start", port);
    let url = postgres_script("url", port);
    let kafka = kafka();
    let topic = kafka.create_topic("pg-down", 2);
    let table = table_name("pg_down");
    let words: Vec<&str> = (0..1500).map(|i| ["p", "q", "r", "s"][i * 7 % 4]).collect();
    let producer = kafka.produce_at(&topic, 500.0, word_lines(&words));
    let want = word_count_truth(&words);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let child = word_count(dir.path(), &topic, &url, &table, None, &log);
    wait_for("some totals in the table", || word_rows(&url, &table).len() > 100);
    postgres_script("stop", port);
    std::thread::sleep(Duration::from_secs(2));
    postgres_script("start", port);
    wait_for("every total in the table", || word_rows(&url, &table).len() >= want.len());
    std::thread::sleep(Duration::from_millis(500));
    kill(child);
    producer.join().unwrap();
    let got = word_rows(&url, &table);
    assert!(got == want, "{}", diff(&got, &want));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("PostgreSQL sink (table {table})")), "the failure names the table:\n{text}");
    postgres_script("stop", port);
}

#[test]
fn upsert_mode_keeps_the_latest_total_per_word() {
    // word-count's default PostgreSQL table: one row per word, its latest total (many updates of
    // one word land in one statement; the last one wins).
    let url = postgres();
    let kafka = kafka();
    let topic = kafka.create_topic("pg-upsert", 2);
    let table = table_name("pg_upsert");
    let words: Vec<&str> = (0..3000).map(|i| ["u", "v", "w", "u", "u"][i % 5]).collect();
    kafka.produce(&topic, None, &word_lines(&words));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_word-count"));
    let child = cmd
        .args(["-D", "execution.checkpointing.interval=50 ms", "-D", "weir.rest.enabled=false"])
        .args(["--kafka-brokers", &kafka.brokers, "--topic", &topic, "--quiet"])
        .args([
            "--output",
            dir.path().join("out").to_str().unwrap(),
            "--checkpoints",
            dir.path().join("ck").to_str().unwrap(),
        ])
        .args(["--postgres", url, "--table", &table])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let want = vec![
        "WordCount{word='u', frequency=1800}".to_string(),
        "WordCount{word='v', frequency=600}".to_string(),
        "WordCount{word='w', frequency=600}".to_string(),
    ];
    // Not `wait_for`: a run that never gets there shows what the table held and what the job did.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut got = word_rows(url, &table);
    while got != want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        got = word_rows(url, &table);
    }
    kill(child);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(got == want, "the table holds {got:?}, not {want:?}; the job's log ends:\n{}", tail.join("\n"));
}

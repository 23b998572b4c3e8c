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

/// How word-count writes its totals to PostgreSQL.
#[derive(Clone, Copy, PartialEq)]
enum Rows {
    /// A row per total.
    Insert,
    /// A row per word, its latest total (word-count's default).
    Upsert,
}

/// One word-count run: Kafka `topic` → totals → exactly-once files in `dir/out` and rows in
/// PostgreSQL `table`; restored from `restore`; logs (info) to `log`.
fn word_count(dir: &Path, topic: &str, url: &str, table: &str, restore: Option<&Path>, log: &Path) -> Child {
    word_count_writing(Rows::Insert, dir, topic, url, table, restore, log)
}

fn word_count_writing(
    rows: Rows,
    dir: &Path,
    topic: &str,
    url: &str,
    table: &str,
    restore: Option<&Path>,
    log: &Path,
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_word-count"));
    cmd.args(["-D", "execution.checkpointing.interval=50 ms", "-D", "weir.rest.enabled=false"]);
    if let Some(path) = restore {
        cmd.args(["-s", path.to_str().unwrap()]);
    }
    cmd.args(["--kafka-brokers", &kafka().brokers, "--topic", topic, "--quiet"])
        .args(["--output", dir.join("out").to_str().unwrap(), "--checkpoints", dir.join("ck").to_str().unwrap()])
        .args(["--postgres", url, "--table", table])
        .args(if rows == Rows::Insert { &["--postgres-insert"][..] } else { &[] })
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
        // Every other run upserts: a row per word, its latest total.
        let (rows, want_in_table) =
            if run % 2 == 0 { (Rows::Insert, want.clone()) } else { (Rows::Upsert, latest_totals(&words)) };
        let dir = tempfile::tempdir().unwrap();
        let mut observer = connect(url);
        let mut logs = Vec::new();
        for attempt in 0..4 {
            let log = dir.path().join(format!("log{attempt}"));
            logs.push(log.clone());
            let restore = latest_checkpoint(&dir.path().join("ck"));
            let child = word_count_writing(rows, dir.path(), &topic, url, &table, restore.as_deref(), &log);
            if attempt == 3 {
                wait_for("every total in the table", || word_rows(url, &table) == want_in_table);
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
        assert!(got == want_in_table, "run {run}: table {table}: {}", diff(&got, &want_in_table));
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

/// What an upsert table ends with: a row per word, its total.
fn latest_totals(words: &[&str]) -> Vec<String> {
    let mut totals = std::collections::BTreeMap::new();
    for w in words {
        *totals.entry(*w).or_insert(0u64) += 1;
    }
    totals.iter().map(|(w, n)| format!("WordCount{{word='{w}', frequency={n}}}")).collect()
}

/// Waits until `table` holds `want` (at most 90 s), then kills the job; a run that never gets
/// there shows what the table held and how the job's log ends.
fn await_table_then_kill(child: Child, url: &str, table: &str, want: &[String], log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut got = word_rows(url, table);
    while got != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        got = word_rows(url, table);
    }
    kill(child);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(got == want, "the table holds {got:?}, not {want:?}; the job's log ends:\n{}", tail.join("\n"));
}

#[test]
fn upsert_mode_keeps_the_latest_total_per_word() {
    // word-count's default PostgreSQL table: one row per word, its latest total. Thousands of
    // updates of three words per checkpoint interval: every interval's transaction upserts the
    // keys the previous one (prepared, not yet committed) holds locks on. The sink used to wait
    // for those locks inside the server, where the commit that releases them could never reach
    // it: the job hung with an empty table.
    let url = postgres();
    let kafka = kafka();
    let topic = kafka.create_topic("pg-upsert", 2);
    let table = table_name("pg_upsert");
    let words: Vec<&str> = (0..40_000).map(|i| ["u", "v", "w", "u", "u"][i % 5]).collect();
    kafka.produce(&topic, None, &word_lines(&words));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let child = word_count_writing(Rows::Upsert, dir.path(), &topic, url, &table, None, &log);
    let want = latest_totals(&words);
    await_table_then_kill(child, url, &table, &want, &log);
}

#[test]
fn a_key_locked_by_another_client_holds_rows_back_and_checkpoints_go_on() {
    // Another client locks a word's row while totals flow. The sink's upserts give up on the
    // lock after a moment and hold their rows (in memory and in the checkpoints) instead of
    // waiting inside the server, so checkpoints keep completing. The job is killed while the
    // row is still locked, after the last record: only the checkpoint has that word's final
    // total, and the restore writes it.
    let url = postgres();
    let kafka = kafka();
    let topic = kafka.create_topic("pg-locked", 1);
    let table = table_name("pg_locked");
    let words: Vec<&str> = (0..6000).map(|i| ["u", "v", "w"][i % 3]).collect();
    let want = latest_totals(&words);
    let producer = kafka.produce_at(&topic, 1500.0, word_lines(&words));
    let dir = tempfile::tempdir().unwrap();
    let (log, ck) = (dir.path().join("log"), dir.path().join("ck"));
    let child = word_count_writing(Rows::Upsert, dir.path(), &topic, url, &table, None, &log);
    wait_for("a row for every word", || word_rows(url, &table).len() == 3);
    let mut locker = connect(url);
    let mut lock = locker.transaction().unwrap();
    lock.execute(&format!("SELECT 1 FROM \"{table}\" WHERE word = 'u' FOR UPDATE"), &[]).unwrap();
    let locked_at = latest_checkpoint_id(&ck).unwrap_or(0);
    wait_for("checkpoints completing while the row is locked", || {
        latest_checkpoint_id(&ck).unwrap_or(0) >= locked_at + 5
    });
    producer.join().unwrap();
    // The job's files commit a line per total with each checkpoint: all there, and a checkpoint
    // after the last record completed.
    let out = dir.path().join("out");
    wait_for("a checkpoint after the last record", || committed_lines(&out).len() == words.len());
    kill(child);
    let table_at_kill = word_rows(url, &table);
    lock.rollback().unwrap();
    assert!(table_at_kill != want, "the locked row's rows were held back: {table_at_kill:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("stayed locked"), "the log says why rows were held back:\n{text}");
    let log = dir.path().join("log-restored");
    let checkpoint = latest_checkpoint(&ck).unwrap();
    let child = word_count_writing(Rows::Upsert, dir.path(), &topic, url, &table, Some(&checkpoint), &log);
    await_table_then_kill(child, url, &table, &want, &log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("row(s) the restored snapshot held back"), "the restore wrote held rows:\n{text}");
}

#[test]
fn inserting_a_duplicate_of_a_unique_key_fails_with_the_fix_instead_of_hanging() {
    // A table whose word is its primary key, written in insert mode: the second total of a word
    // is a duplicate. When the first is in a prepared transaction, the insert waits for its
    // commit, which this subtask would never get to run: the sink gives up on the lock after a
    // while and fails, saying what to do (as it does when the first is committed already).
    let url = postgres();
    let kafka = kafka();
    let topic = kafka.create_topic("pg-dup", 1);
    let table = table_name("pg_dup");
    connect(url)
        .batch_execute(&format!("CREATE TABLE \"{table}\" (word TEXT PRIMARY KEY, frequency BIGINT NOT NULL)"))
        .unwrap();
    let words: Vec<&str> = (0..40).map(|i| ["a", "b"][i % 2]).collect();
    let producer = kafka.produce_at(&topic, 20.0, word_lines(&words));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let child = word_count_writing(Rows::Insert, dir.path(), &topic, url, &table, None, &log);
    wait_for("the failure", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("write rows that share a key with PostgresSink::upsert")
    });
    kill(child);
    producer.join().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("PostgreSQL sink (table {table})")), "the failure names the table:\n{text}");
    assert!(text.contains("duplicate key value") || text.contains("lock timeout"), "and PostgreSQL's reason:\n{text}");
}

type WordSink = weir_postgres::PostgresSink<(String, i64)>;

/// An upsert sink of `(word, frequency)` rows into a new table named after `name`, opened as
/// subtask 0 of 1, to be driven directly; `configure` adds settings.
fn opened_word_upsert_sink(url: &str, name: &str, configure: impl FnOnce(WordSink) -> WordSink) -> (WordSink, String) {
    use weir::{OperatorStateStore, SinkContext, SinkFunction};
    let table = table_name(name);
    let configured = configure(
        weir_postgres::PostgresSink::insert(url, table.as_str(), &["word", "frequency"], |r: &(String, i64)| {
            vec![r.0.as_str().into(), r.1.into()]
        })
        .upsert(&["word"]),
    );
    configured.create_table("word TEXT PRIMARY KEY, frequency BIGINT NOT NULL").unwrap();
    let mut sink = configured.clone();
    let state = OperatorStateStore::default();
    sink.open(&SinkContext { subtask: 0, parallelism: 1, state: &state, attempt: 0 }).unwrap();
    (sink, table)
}

#[test]
fn an_upsert_transaction_rolled_back_for_a_lock_is_written_again() {
    // The sink driven directly, one subtask. A statement's worth of rows goes into the open
    // transaction; the next upsert meets a row another client locked, and the sink rolls the
    // whole transaction back: the rows it had written come back as held rows, with the rest,
    // and land once the lock is gone. Were they forgotten, 'v' and 'w' would never reach the
    // table (nothing after them updates them).
    use weir::{OperatorStateSnapshot, SinkFunction};
    let url = postgres();
    let (mut sink, table) = opened_word_upsert_sink(url, "pg_again", |s| s);
    let checkpoint = |sink: &mut WordSink, id: u64| {
        sink.snapshot_state(id, &mut OperatorStateSnapshot::default()).unwrap();
        sink.notify_checkpoint_complete(id).unwrap();
    };
    sink.invoke(("u".to_string(), 1)).unwrap();
    checkpoint(&mut sink, 1);
    assert_eq!(word_rows(url, &table), vec!["WordCount{word='u', frequency=1}"]);
    let mut locker = connect(url);
    let mut lock = locker.transaction().unwrap();
    lock.execute(&format!("SELECT 1 FROM \"{table}\" WHERE word = 'u' FOR UPDATE"), &[]).unwrap();
    for i in 0..1000i64 {
        sink.invoke((["v", "w"][i as usize % 2].to_string(), i)).unwrap(); // the 1000th sends them
    }
    sink.invoke(("u".to_string(), 2)).unwrap();
    checkpoint(&mut sink, 2); // 'u' is locked: rolled back, all held
    assert_eq!(word_rows(url, &table), vec!["WordCount{word='u', frequency=1}"], "nothing of interval 2 yet");
    lock.rollback().unwrap();
    checkpoint(&mut sink, 3);
    assert_eq!(
        word_rows(url, &table),
        vec![
            "WordCount{word='u', frequency=2}",
            "WordCount{word='v', frequency=998}",
            "WordCount{word='w', frequency=999}"
        ]
    );
}

#[test]
fn an_upsert_transaction_past_max_rows_kept_fails_on_a_lock_and_loses_nothing() {
    // The sink driven directly, one subtask, keeping at most 100 keys' rows. 1000 words go into
    // the open transaction; the next upsert meets a row another client locked. The sink cannot
    // write those 1000 again after a rollback, so it fails (the job would restart from its last
    // checkpoint) naming the setting, and the table holds only what checkpoint 1 committed.
    // A sink that rewrote nothing would leave the same table: the error is what tells them apart.
    use weir::{OperatorStateSnapshot, SinkFunction};
    let url = postgres();
    let (mut sink, table) = opened_word_upsert_sink(url, "pg_kept", |s| s.max_rows_kept(100));
    sink.invoke(("u".to_string(), 1)).unwrap();
    sink.snapshot_state(1, &mut OperatorStateSnapshot::default()).unwrap();
    sink.notify_checkpoint_complete(1).unwrap();
    let mut locker = connect(url);
    let mut lock = locker.transaction().unwrap();
    lock.execute(&format!("SELECT 1 FROM \"{table}\" WHERE word = 'u' FOR UPDATE"), &[]).unwrap();
    for i in 0..2000i64 {
        sink.invoke((format!("w{i}"), i)).unwrap(); // two statements of 1000 distinct words
    }
    sink.invoke(("u".to_string(), 2)).unwrap();
    let err = sink.snapshot_state(2, &mut OperatorStateSnapshot::default()).unwrap_err().to_string();
    assert!(err.contains("max_rows_kept") && err.contains(&table) && err.contains("locked"), "{err}");
    lock.rollback().unwrap();
    assert_eq!(word_rows(url, &table), vec!["WordCount{word='u', frequency=1}"]);
}

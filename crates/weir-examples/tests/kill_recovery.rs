//! kill -9 of the job process at random moments, then a restart with `-s` from the latest retained
//! checkpoint, until the job finishes (keyed-count) or has fired every window (window-count). The
//! committed output must equal the ground truth.

mod common;

use common::{committed_lines, keyed_count_truth, latest_checkpoint, latest_checkpoint_at, Backend, Rng, Storage};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn run_iteration(seed: u64, backend: Backend, storage: Storage) -> (u32, u32) {
    let mut rng = Rng::new(seed);
    let mut rand = |n| rng.below(n);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ck = storage.checkpoint_base(dir.path(), "kill-recovery");
    let (records, keys) = (10_000 + rand(4000), 1 + rand(30));
    let parallelism = 1 + rand(2);
    // rocksdb: on every other seed, a write-back cache with room for about a dozen rows, so rows
    // are evicted into RocksDB between checkpoints and kills.
    let small_cache = backend == Backend::RocksDb && rand(2) == 0;
    let (mut kills, mut restores) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "seed {seed}: job did not finish");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyed-count"));
        cmd.args(["-p", &parallelism.to_string()])
            .args(["-D", "execution.checkpointing.interval=40 ms"])
            .args(["-D", &format!("execution.checkpointing.dir={ck}")])
            .args(["-D", "weir.network.batch-size=64"])
            .args(backend.args(&dir.path().join("rocksdb")));
        if small_cache {
            cmd.args(["-D", "state.backend.rocksdb.memory.write-back-cache-ratio=0.00005"]);
        }
        cmd.args(storage.settings().iter().flat_map(|(k, v)| ["-D".to_string(), format!("{k}={v}")]));
        if let Some(location) = latest_checkpoint_at(&ck) {
            cmd.args(["-s", &location.to_string()]);
            restores += 1;
        }
        cmd.args([
            "--output",
            out.to_str().unwrap(),
            "--count",
            &records.to_string(),
            "--keys",
            &keys.to_string(),
            "--rate",
            "8000",
        ]);
        let mut child = cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        // Kill at a random moment in the first two runs, and on until a run has restored from a
        // checkpoint (under load, a job can be killed before its first checkpoint completes).
        let kill = kills < 2 || (restores == 0 && kills < 8);
        let kill_after = if kill { Some(Duration::from_millis(100 + rand(500))) } else { None };
        // After two random kills without a checkpoint to restore (slow checkpoints on a loaded
        // machine, on S3 above all), the next kill waits until one exists, so a restore happens.
        let wait_for_checkpoint = kills >= 2 && restores == 0;
        let mut checkpoint_seen = false;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            let due = kill_after.is_some_and(|k| started.elapsed() >= k);
            if due && wait_for_checkpoint && !checkpoint_seen {
                checkpoint_seen = latest_checkpoint_at(&ck).is_some();
                if !checkpoint_seen {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
            if due {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(status) = status {
            let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap_or_default();
            assert!(status.success(), "seed {seed}: job failed: {stderr}");
            break;
        }
    }
    let got = committed_lines(&out);
    let want = keyed_count_truth(records, keys);
    assert_eq!(got.len(), want.len(), "seed {seed}: {kills} kills, {restores} restores");
    assert!(got == want, "seed {seed}: output differs from the ground truth");
    assert!(kills >= 1 && restores >= 1, "seed {seed}: the job was never killed and restored");
    // The killed processes' RocksDB working directories were deleted by the next start, and the
    // last process deleted its own.
    let local = dir.path().join("rocksdb");
    let left: Vec<_> =
        std::fs::read_dir(&local).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "seed {seed}: left in {}: {left:?}", local.display());
    (kills, restores)
}

backend_tests! {
    fn kill_dash_nine_then_restore_from_latest_checkpoint(backend) {
        kill_runs(backend, Storage::Local, 10)
    }

    /// The same with checkpoints on S3 (rocksdb: incremental, shared files in the bucket): fewer
    /// runs by default, since each start lists and downloads through the server.
    fn kill_dash_nine_with_checkpoints_on_s3(backend) {
        kill_runs(backend, Storage::S3, 4)
    }
}

fn kill_runs(backend: Backend, storage: Storage, default_iterations: u64) {
    let iterations: u64 =
        std::env::var("WEIR_KILL_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_iterations);
    let (mut kills, mut restores) = (0, 0);
    for i in 0..iterations {
        let (k, r) = run_iteration(0xC0FFEE + i, backend, storage);
        kills += k;
        restores += r;
    }
    eprintln!("{backend:?}, {storage:?}: {iterations} runs: {kills} kill -9, {restores} restores with -s");
    assert!(kills as u64 >= iterations && restores as u64 >= iterations);
}

/// Appends `events` to `input` in chunks, as a live feed would, from another thread.
fn feed(input: PathBuf, events: Vec<String>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for chunk in events.chunks(200) {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&input).unwrap();
            f.write_all(chunk.concat().as_bytes()).unwrap();
            drop(f);
            std::thread::sleep(Duration::from_millis(40));
        }
    })
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// window-count over a live feed of in-order events (1 s windows), killed at random moments and
/// restarted from the latest retained checkpoint; a last event far in the future then fires
/// every window. Each window's count must be committed exactly once.
fn run_window_iteration(seed: u64, backend: Backend) -> (u32, u32) {
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let (ck, out, late, input) =
        (dir.path().join("ck"), dir.path().join("out"), dir.path().join("late"), dir.path().join("events.jsonl"));
    let (records, words) = (3000 + rng.below(2000), 1 + rng.below(8));
    let events: Vec<(String, u64)> = (0..records).map(|i| (format!("w{}", i % words), i * 7)).collect();
    let lines: Vec<String> = events.iter().map(|(w, ts)| format!("{{\"word\":\"{w}\",\"ts\":{ts}}}\n")).collect();
    std::fs::write(&input, "").unwrap();
    let feeder = feed(input.clone(), lines);
    let parallelism = 1 + rng.below(2);
    let start = |restores: &mut u32| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_window-count"));
        cmd.args(["-p", &parallelism.to_string()])
            .args(["-D", "execution.checkpointing.interval=40 ms"])
            .args(["-D", "pipeline.auto-watermark-interval=10 ms"])
            .args(["-D", "weir.network.batch-size=64"])
            .args(backend.args(&dir.path().join("rocksdb")));
        if let Some(path) = latest_checkpoint(&ck) {
            cmd.args(["-s", path.to_str().unwrap()]);
            *restores += 1;
        }
        cmd.args(["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()])
            .args(["--late-output", late.to_str().unwrap(), "--checkpoints", ck.to_str().unwrap()])
            .args(["--window-ms", "1000", "--out-of-orderness-ms", "50", "--quiet"]);
        cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
    };
    let (mut kills, mut restores) = (0u32, 0u32);
    // Kill while the feed runs, until a run has restored from a checkpoint.
    while kills < 2 || (restores == 0 && kills < 8) {
        let child = start(&mut restores);
        std::thread::sleep(Duration::from_millis(150 + rng.below(500)));
        kill(child);
        kills += 1;
    }
    feeder.join().unwrap();
    let child = start(&mut restores);
    // The end of the feed: an event far ahead of the others moves event time past every window.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all(b"{\"word\":\"end\",\"ts\":100000000}\n")
        .unwrap();
    let want = weir_examples::window_count::window_counts(events.iter().map(|(w, ts)| (w.as_str(), *ts as i64)), 1000);
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed_lines(&out).len() < want.len() {
        assert!(Instant::now() < deadline, "seed {seed}: windows did not all fire: {}", committed_lines(&out).len());
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(child);
    let got = committed_lines(&out);
    assert!(got == want, "seed {seed} ({kills} kills, {restores} restores): {}", common::diff(&got, &want));
    assert!(committed_lines(&late).is_empty(), "seed {seed}: in-order events are never late");
    assert!(restores >= 1, "seed {seed}: no run restored");
    (kills, restores)
}

backend_tests! {
    fn kill_dash_nine_window_count_then_restore_from_latest_checkpoint(backend) {
        let iterations: u64 = std::env::var("WEIR_KILL_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
        let (mut kills, mut restores) = (0, 0);
        for i in 0..iterations {
            let (k, r) = run_window_iteration(0x71D0 + i, backend);
            kills += k;
            restores += r;
        }
        eprintln!("{backend:?} window-count: {iterations} runs: {kills} kill -9, {restores} restores with -s");
    }
}

//! kill -9 of the job process at random moments, then a restart with `-s` from the latest retained
//! checkpoint, until the job finishes. The committed output must equal the ground truth.

mod common;

use common::{committed_lines, keyed_count_truth, Backend, Rng};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The newest valid checkpoint under any job directory of `base` (ids grow across restores).
fn latest_checkpoint(base: &Path) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(base)
        .ok()?
        .flatten()
        .filter_map(|job| weir::latest_checkpoint(&job.path()))
        .max_by_key(|(id, _)| *id)
}

fn run_iteration(seed: u64, backend: Backend) -> (u32, u32) {
    let mut rng = Rng::new(seed);
    let mut rand = |n| rng.below(n);
    let dir = tempfile::tempdir().unwrap();
    let (ck, out) = (dir.path().join("ck"), dir.path().join("out"));
    let (records, keys) = (10_000 + rand(4000), 1 + rand(30));
    let parallelism = 1 + rand(2);
    let (mut kills, mut restores) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "seed {seed}: job did not finish");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyed-count"));
        cmd.args(["-p", &parallelism.to_string()])
            .args(["-D", "execution.checkpointing.interval=40 ms"])
            .args(["-D", &format!("execution.checkpointing.dir={}", ck.display())])
            .args(["-D", "weir.network.batch-size=64"])
            .args(backend.args(&dir.path().join("rocksdb")));
        if let Some((_, path)) = latest_checkpoint(&ck) {
            cmd.args(["-s", path.to_str().unwrap()]);
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
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if kill_after.is_some_and(|k| started.elapsed() >= k) {
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
        kill_runs(backend)
    }
}

fn kill_runs(backend: Backend) {
    let iterations: u64 = std::env::var("WEIR_KILL_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let (mut kills, mut restores) = (0, 0);
    for i in 0..iterations {
        let (k, r) = run_iteration(0xC0FFEE + i, backend);
        kills += k;
        restores += r;
    }
    eprintln!("{backend:?}: {iterations} runs: {kills} kill -9, {restores} restores with -s");
    assert!(kills as u64 >= iterations && restores as u64 >= iterations);
}

//! `--suite savepoints`: savepoint duration and size, and restore time (start of the job to its
//! first processed record) for 10^6 and 10^7 keys, canonical format, heap backend; restores at
//! parallelism 1 and 2 from a parallelism-1 savepoint. Also measures the disk's sequential write
//! bandwidth, the yardstick for savepoint writing.

use crate::count::{start_keyed_count, Progress};
use anyhow::{bail, Result};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::connectors::GeneratorSource;
use weir::{Configuration, Operation, SavepointFormat, SnapshotStore, SnapshotUri, Stores};

#[derive(Serialize)]
pub struct SavepointResult {
    keys: u64,
    savepoint_seconds: f64,
    savepoint_bytes: u64,
    savepoint_mb_per_second: f64,
    restore_p1_seconds: f64,
    restore_p2_seconds: f64,
}

#[derive(Serialize)]
pub struct Report {
    disk_sequential_write_mb_per_second: f64,
    results: Vec<SavepointResult>,
}

fn start(
    keys: u64,
    parallelism: u32,
    restore: Option<&SnapshotUri>,
    extra: &[(&str, String)],
    progress: &Arc<Progress>,
) -> Result<weir::JobHandle> {
    let mut config = Configuration::new();
    config.set("parallelism.default", &parallelism.to_string())?;
    config.set("weir.rest.enabled", "false")?;
    for (k, v) in extra {
        config.set(k, v)?;
    }
    if let Some(r) = restore {
        config.set("execution.state-recovery.path", &r.to_string())?;
    }
    // The generator's position cannot be rescaled; the keyed state, the subject here, can.
    start_keyed_count(config, GeneratorSource::new(move |i| i % keys), progress, "savepoint-bench")
}

pub(crate) fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// Waits until `cond`, or fails if the job ends first.
pub(crate) fn wait_while_running(handle: &weir::JobHandle, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    while !cond() {
        if handle.status().is_terminal() {
            bail!("the job ended ({}) while waiting for {what}", handle.status());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

fn one(keys: u64, work: &Path) -> Result<SavepointResult> {
    let target = SnapshotUri::Local(work.join("sp"));
    one_at(keys, &target, &[], &Stores::default(), &[1, 2])
}

/// A savepoint of `keys` keys into `target` (a local directory or an S3 prefix, reached with
/// `extra` settings through `stores`), then restores from it at each of `restore_parallelism`.
fn one_at(
    keys: u64,
    target: &SnapshotUri,
    extra: &[(&str, String)],
    stores: &Stores,
    restore_parallelism: &[u32],
) -> Result<SavepointResult> {
    let progress = Progress::new();
    let handle = start(keys, 1, None, extra, &progress)?;
    // Every key has state once the generator has gone round once.
    wait_while_running(&handle, "every key to have state", || {
        progress.processed.load(Ordering::Relaxed) >= keys + keys / 10
    })?;
    let t = Instant::now();
    let token = handle.trigger_savepoint(Some(target), SavepointFormat::Canonical)?;
    let location = match handle.wait_operation(token, Duration::from_secs(600)) {
        Some(Operation::Completed { location, .. }) => location,
        other => bail!("savepoint of {keys} keys did not complete: {other:?}"),
    };
    let savepoint_seconds = t.elapsed().as_secs_f64();
    handle.cancel();
    handle.wait();
    let savepoint_bytes: u64 = stores.list(&location)?.iter().map(|e| e.size).sum();

    let mut restore = [0.0; 2];
    for (i, &p) in restore_parallelism.iter().enumerate() {
        let progress = Progress::new();
        let handle = start(keys, p, Some(&location), extra, &progress)?;
        wait_while_running(&handle, "the first record", || progress.first_record_us.load(Ordering::Relaxed) > 0)?;
        restore[i] = progress.first_record_us.load(Ordering::Relaxed) as f64 / 1e6;
        handle.cancel();
        handle.wait();
    }
    stores.remove_all(&location).ok();
    Ok(SavepointResult {
        keys,
        savepoint_seconds,
        savepoint_bytes,
        savepoint_mb_per_second: savepoint_bytes as f64 / 1e6 / savepoint_seconds,
        restore_p1_seconds: restore[0],
        restore_p2_seconds: restore[1],
    })
}

/// One comparison of the object-storage suite: the same savepoint and restore on local disk and
/// on S3, medians of `repeat` runs each.
#[derive(Serialize)]
pub struct ObjectStorageResult {
    keys: u64,
    savepoint_bytes: u64,
    local_savepoint_seconds: f64,
    s3_savepoint_seconds: f64,
    local_restore_seconds: f64,
    s3_restore_seconds: f64,
    /// S3 time over local time (the aim: at most 2).
    savepoint_ratio: f64,
    restore_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `--suite object-storage`: canonical savepoints and restores (p=1, heap backend) on local disk
/// and on the S3 server of `scripts/s3.sh` (started here if it is not running; s3s-fs keeps
/// objects as files on the same disk, so the difference is the protocol's cost, not a network's).
pub fn run_object_storage(keys: &[u64], repeat: usize) -> Result<Vec<ObjectStorageResult>> {
    let s3 = |args: &[&str]| -> Result<String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3.sh");
        let out = std::process::Command::new(script).args(args).output()?;
        if !out.status.success() {
            bail!("scripts/s3.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    s3(&["start"])?;
    s3(&["create-bucket", "weir-bench"])?;
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let extra = vec![
        ("s3.endpoint", s3(&["endpoint"])?),
        ("s3.access-key", var("WEIR_S3_ACCESS_KEY", "weir-test-access")),
        ("s3.secret-key", var("WEIR_S3_SECRET_KEY", "weir-test-secret")),
        ("s3.path.style.access", "true".to_string()),
    ];
    let mut config = Configuration::new();
    for (k, v) in &extra {
        config.set(k, v)?;
    }
    let stores = Stores::from_config(&config);
    let work = tempfile::tempdir()?;
    let mut results = Vec::new();
    for &k in keys {
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        for i in 0..repeat {
            local.push(one_at(k, &SnapshotUri::Local(work.path().join("sp")), &[], &stores, &[1])?);
            let target = SnapshotUri::parse(&format!("s3://weir-bench/run-{}-{i}", std::process::id()))?;
            remote.push(one_at(k, &target, &extra, &stores, &[1])?);
        }
        let m = |v: &[SavepointResult], f: fn(&SavepointResult) -> f64| median(v.iter().map(f).collect());
        let r = ObjectStorageResult {
            keys: k,
            savepoint_bytes: remote[0].savepoint_bytes,
            local_savepoint_seconds: m(&local, |r| r.savepoint_seconds),
            s3_savepoint_seconds: m(&remote, |r| r.savepoint_seconds),
            local_restore_seconds: m(&local, |r| r.restore_p1_seconds),
            s3_restore_seconds: m(&remote, |r| r.restore_p1_seconds),
            savepoint_ratio: 0.0,
            restore_ratio: 0.0,
        };
        let r = ObjectStorageResult {
            savepoint_ratio: r.s3_savepoint_seconds / r.local_savepoint_seconds,
            restore_ratio: r.s3_restore_seconds / r.local_restore_seconds,
            ..r
        };
        eprintln!(
            "{:>9} keys, {:.1} MB: savepoint local {:.2} s, S3 {:.2} s ({:.2}x); restore local {:.2} s, S3 {:.2} s ({:.2}x)",
            r.keys,
            r.savepoint_bytes as f64 / 1e6,
            r.local_savepoint_seconds,
            r.s3_savepoint_seconds,
            r.savepoint_ratio,
            r.local_restore_seconds,
            r.s3_restore_seconds,
            r.restore_ratio
        );
        results.push(r);
    }
    Ok(results)
}

/// Sequential write bandwidth of the disk under `dir`: 512 MB in 1 MB writes, then fsync.
fn disk_bandwidth(dir: &Path) -> Result<f64> {
    let path = dir.join("bandwidth.bin");
    let block = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for _ in 0..512 {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    let mb_s = 512.0 * 1.048576 / t.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(mb_s)
}

pub fn run(keys: &[u64]) -> Result<Report> {
    let work = tempfile::tempdir()?;
    let disk = disk_bandwidth(work.path())?;
    eprintln!("disk: {disk:.0} MB/s sequential write");
    let mut results = Vec::new();
    for &k in keys {
        let r = one(k, work.path())?;
        eprintln!(
            "{:>9} keys: savepoint {:.2} s, {:.1} MB ({:.0} MB/s); restore to first record: p=1 {:.2} s, p=2 {:.2} s",
            r.keys,
            r.savepoint_seconds,
            r.savepoint_bytes as f64 / 1e6,
            r.savepoint_mb_per_second,
            r.restore_p1_seconds,
            r.restore_p2_seconds
        );
        results.push(r);
    }
    Ok(Report { disk_sequential_write_mb_per_second: disk, results })
}

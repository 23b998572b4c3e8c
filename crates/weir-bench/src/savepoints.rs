//! `--suite savepoints`: savepoint duration and size, and restore time (start of the job to its
//! first processed record) for 10^6 and 10^7 keys, canonical format, heap backend; restores at
//! parallelism 1 and 2 from a parallelism-1 savepoint. Also measures the disk's sequential write
//! bandwidth, the yardstick for savepoint writing.

use crate::count::{start_keyed_count, Progress};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::connectors::GeneratorSource;
use weir::{Configuration, Operation, SavepointFormat};

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

fn start(keys: u64, parallelism: u32, restore: Option<&Path>, progress: &Arc<Progress>) -> Result<weir::JobHandle> {
    let mut config = Configuration::new();
    config.set("parallelism.default", &parallelism.to_string())?;
    config.set("weir.rest.enabled", "false")?;
    if let Some(r) = restore {
        config.set("execution.state-recovery.path", r.to_str().context("path")?)?;
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
    let progress = Progress::new();
    let handle = start(keys, 1, None, &progress)?;
    // Every key has state once the generator has gone round once.
    wait_while_running(&handle, "every key to have state", || {
        progress.processed.load(Ordering::Relaxed) >= keys + keys / 10
    })?;
    let t = Instant::now();
    let token = handle.trigger_savepoint(Some(&work.join("sp").into()), SavepointFormat::Canonical)?;
    let location = match handle.wait_operation(token, Duration::from_secs(600)) {
        Some(Operation::Completed { location, .. }) => location.as_local().context("a local savepoint")?.to_path_buf(),
        other => bail!("savepoint of {keys} keys did not complete: {other:?}"),
    };
    let savepoint_seconds = t.elapsed().as_secs_f64();
    handle.cancel();
    handle.wait();
    let savepoint_bytes = dir_size(&location);

    let mut restore = [0.0; 2];
    for (i, p) in [1u32, 2].into_iter().enumerate() {
        let progress = Progress::new();
        let handle = start(keys, p, Some(&location), &progress)?;
        wait_while_running(&handle, "the first record", || progress.first_record_us.load(Ordering::Relaxed) > 0)?;
        restore[i] = progress.first_record_us.load(Ordering::Relaxed) as f64 / 1e6;
        handle.cancel();
        handle.wait();
    }
    std::fs::remove_dir_all(&location).ok();
    Ok(SavepointResult {
        keys,
        savepoint_seconds,
        savepoint_bytes,
        savepoint_mb_per_second: savepoint_bytes as f64 / 1e6 / savepoint_seconds,
        restore_p1_seconds: restore[0],
        restore_p2_seconds: restore[1],
    })
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

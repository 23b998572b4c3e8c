//! `--suite rocksdb`: the rocksdb backend's checkpoints, savepoints and restores at 10^7 keys.
//!
//! * Checkpoints, full vs incremental: fill 10^7 keys, checkpoint, update 1 % of the keys,
//!   checkpoint again; duration and bytes written, with `execution.checkpointing.incremental`
//!   false and true.
//! * Savepoints, native vs canonical, of the same state: duration and size.
//! * Restores from each savepoint at the same parallelism (1) and another (2): time from the start
//!   of the job to its first processed record.
//!
//! Throughput of the reference shape with rocksdb is measured by the engine harness
//! (`--suite rocksdb` runs it too, with `state.backend.type: rocksdb`).

use crate::count::{start_keyed_count, Progress};
use crate::savepoints::{dir_size, wait_while_running as wait};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::{
    BoxError, CheckpointId, Collector, Configuration, Operation, OperatorStateSnapshot, SavepointFormat, SourceContext,
    SourceFunction, SourcePoll,
};

/// Emits keys `0..keys` once, then `updates` spread over the key space, up to a budget the
/// benchmark raises; idles at the budget.
#[derive(Clone)]
struct Budgeted {
    keys: u64,
    budget: Arc<AtomicU64>,
    emitted: Arc<AtomicU64>,
}

impl SourceFunction<u64> for Budgeted {
    fn open(&mut self, _: &SourceContext<'_>) -> Result<(), BoxError> {
        Ok(())
    }
    fn poll(&mut self, out: &mut Collector<'_, u64>) -> Result<SourcePoll, BoxError> {
        let (budget, mut at) = (self.budget.load(Ordering::Acquire), self.emitted.load(Ordering::Relaxed));
        if at >= budget {
            return Ok(SourcePoll::Idle(Duration::from_millis(1)));
        }
        let end = budget.min(at + 4096);
        while at < end {
            // Updates walk the key space with a stride, so 1 % of the keys changes, spread out.
            let key = if at < self.keys { at } else { (at - self.keys).wrapping_mul(7_919) % self.keys };
            out.collect(key);
            at += 1;
        }
        self.emitted.store(at, Ordering::Release);
        Ok(SourcePoll::More)
    }
    fn snapshot_state(&mut self, _: CheckpointId, _: &mut OperatorStateSnapshot) -> Result<(), BoxError> {
        Ok(())
    }
}

#[derive(Serialize)]
pub struct CheckpointResult {
    incremental: bool,
    first_checkpoint_seconds: f64,
    first_checkpoint_bytes: u64,
    after_1pct_checkpoint_seconds: f64,
    after_1pct_checkpoint_bytes: u64,
    after_1pct_state_bytes: u64,
}

#[derive(Serialize)]
pub struct SavepointResult {
    format: String,
    #[serde(skip)]
    location: PathBuf,
    savepoint_seconds: f64,
    savepoint_bytes: u64,
    restore_p1_seconds: f64,
    restore_p2_seconds: f64,
}

#[derive(Serialize)]
pub struct Report {
    keys: u64,
    fill_records_per_second: f64,
    checkpoints: Vec<CheckpointResult>,
    savepoints: Vec<SavepointResult>,
}

fn config(work: &Path, parallelism: u32, incremental: bool) -> Result<Configuration> {
    let mut c = Configuration::new();
    c.set("parallelism.default", &parallelism.to_string())?;
    c.set("weir.rest.enabled", "false")?;
    c.set("state.backend.type", "rocksdb")?;
    c.set("state.backend.rocksdb.localdir", work.join("rocksdb").to_str().context("path")?)?;
    c.set("execution.checkpointing.dir", work.join("ck").to_str().context("path")?)?;
    c.set("execution.checkpointing.incremental", &incremental.to_string())?;
    Ok(c)
}

fn operation(handle: &weir::JobHandle, token: u64) -> Result<(CheckpointId, PathBuf)> {
    match handle.wait_operation(token, Duration::from_secs(900)) {
        Some(Operation::Completed { checkpoint_id, location }) => {
            Ok((checkpoint_id, location.as_local().context("a local snapshot")?.to_path_buf()))
        }
        other => bail!("snapshot did not complete: {other:?}"),
    }
}

fn checkpoint(handle: &weir::JobHandle) -> Result<(f64, u64, u64)> {
    let t = Instant::now();
    let (id, _) = operation(handle, handle.trigger_checkpoint()?)?;
    let secs = t.elapsed().as_secs_f64();
    let stats = handle.completed_checkpoints().into_iter().find(|c| c.id == id).context("checkpoint stats")?;
    Ok((secs, stats.checkpointed_size, stats.state_size))
}

fn restore_time(work: &Path, keys: u64, p: u32, from: &Path) -> Result<f64> {
    let mut c = config(work, p, false)?;
    c.set("execution.state-recovery.path", from.to_str().context("path")?)?;
    let progress = Progress::new();
    let source = Budgeted { keys, budget: Arc::new(AtomicU64::new(u64::MAX)), emitted: Arc::new(AtomicU64::new(keys)) };
    let handle = start_keyed_count(c, source, &progress, "rocksdb-restore")?;
    wait(&handle, "the first record", || progress.first_record_us.load(Ordering::Relaxed) > 0)?;
    let secs = progress.first_record_us.load(Ordering::Relaxed) as f64 / 1e6;
    handle.cancel();
    handle.wait();
    Ok(secs)
}

pub fn run(keys: u64) -> Result<Report> {
    let work = tempfile::tempdir()?;
    let mut checkpoints = Vec::new();
    let mut savepoints = Vec::new();
    let mut fill_rate = 0.0;
    for incremental in [false, true] {
        let budget = Arc::new(AtomicU64::new(keys));
        let emitted = Arc::new(AtomicU64::new(0));
        let source = Budgeted { keys, budget: budget.clone(), emitted: emitted.clone() };
        let handle =
            start_keyed_count(config(work.path(), 1, incremental)?, source, &Progress::new(), "rocksdb-bench")?;
        let t = Instant::now();
        wait(&handle, "the fill", || emitted.load(Ordering::Acquire) >= keys)?;
        let (first_s, first_bytes, _) = checkpoint(&handle)?;
        fill_rate = keys as f64 / t.elapsed().as_secs_f64();
        budget.fetch_add(keys / 100, Ordering::AcqRel);
        wait(&handle, "the 1% update", || emitted.load(Ordering::Acquire) >= keys + keys / 100)?;
        let (delta_s, delta_bytes, state_bytes) = checkpoint(&handle)?;
        eprintln!(
            "incremental={incremental}: first checkpoint {first_s:.2} s, {:.1} MB; after a 1% update {delta_s:.2} s, {:.1} MB written of {:.1} MB",
            first_bytes as f64 / 1e6,
            delta_bytes as f64 / 1e6,
            state_bytes as f64 / 1e6
        );
        checkpoints.push(CheckpointResult {
            incremental,
            first_checkpoint_seconds: first_s,
            first_checkpoint_bytes: first_bytes,
            after_1pct_checkpoint_seconds: delta_s,
            after_1pct_checkpoint_bytes: delta_bytes,
            after_1pct_state_bytes: state_bytes,
        });
        if incremental {
            for (name, format) in [("native", SavepointFormat::Native), ("canonical", SavepointFormat::Canonical)] {
                let t = Instant::now();
                let (_, location) =
                    operation(&handle, handle.trigger_savepoint(Some(&work.path().join("sp").into()), format)?)?;
                let secs = t.elapsed().as_secs_f64();
                savepoints.push(SavepointResult {
                    format: name.into(),
                    savepoint_bytes: dir_size(&location),
                    location,
                    savepoint_seconds: secs,
                    restore_p1_seconds: 0.0,
                    restore_p2_seconds: 0.0,
                });
            }
        }
        handle.cancel();
        handle.wait();
    }
    for s in savepoints.iter_mut() {
        s.restore_p1_seconds = restore_time(work.path(), keys, 1, &s.location)?;
        s.restore_p2_seconds = restore_time(work.path(), keys, 2, &s.location)?;
        eprintln!(
            "{} savepoint: {:.2} s, {:.1} MB; restore to first record p=1 {:.2} s, p=2 {:.2} s",
            s.format,
            s.savepoint_seconds,
            s.savepoint_bytes as f64 / 1e6,
            s.restore_p1_seconds,
            s.restore_p2_seconds
        );
    }
    Ok(Report { keys, fill_records_per_second: fill_rate, checkpoints, savepoints })
}

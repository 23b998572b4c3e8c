//! `--suite savepoints`: savepoint duration and size, and restore time (start of the job to its
//! first processed record) for 10^6 and 10^7 keys, canonical format, heap backend; restores at
//! parallelism 1 and 2 from a parallelism-1 savepoint. A savepoint of the running job (which keeps
//! processing while its state is written), two more (the third written in the key order the
//! second recorded, as after checkpoints of keys that hold still), then a stop with a savepoint
//! (the sources stop at the barrier, so the state is written with the cores to itself: an
//! upgrade's downtime). Also measures the disk's sequential write bandwidth, the yardstick for
//! savepoint writing, and the heap backend's snapshot encoding apart from any job (`encoding`).

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
    pub keys: u64,
    pub savepoint_seconds: f64,
    pub savepoint_bytes: u64,
    pub savepoint_mb_per_second: f64,
    /// A savepoint of the running job after two others of the same keys (measured by the
    /// savepoints suite only): the heap backend writes each key group in the key order the one
    /// before recorded, instead of sorting it, as it does after two checkpoints of keys that hold
    /// still.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub third_savepoint_seconds: Option<f64>,
    /// Stop with a savepoint, request to completion (measured by the savepoints suite only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_savepoint_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_savepoint_mb_per_second: Option<f64>,
    pub restore_p1_seconds: f64,
    pub restore_p2_seconds: f64,
}

#[derive(Serialize)]
pub struct Report {
    disk_sequential_write_mb_per_second: f64,
    results: Vec<SavepointResult>,
    /// The heap backend's snapshot encoding apart from any job (see `encoding`).
    encoding: Vec<crate::encoding::EncodingResult>,
}

pub(crate) fn start(
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
    let run = SavepointRun {
        target: &target,
        extra: &[],
        stores: &Stores::default(),
        format: SavepointFormat::Canonical,
        then_stop: true,
    };
    Ok(run.measure(keys, &[1, 2], &|| 0.0)?.0)
}

/// Where a savepoint goes and how: `target` (a local directory or an S3 prefix, reached with
/// `extra` settings, which also choose the backend, through `stores`) in `format`.
pub(crate) struct SavepointRun<'a> {
    pub target: &'a SnapshotUri,
    pub extra: &'a [(&'a str, String)],
    pub stores: &'a Stores,
    pub format: SavepointFormat,
    /// After the savepoint, stop the job with another and time that too.
    pub then_stop: bool,
}

/// CPU seconds another process (the S3 server) spent during the savepoint and during the
/// first restore.
pub(crate) type ServerCpu = (f64, f64);

impl SavepointRun<'_> {
    /// A savepoint of `keys` keys, then restores from it at each of `restore_parallelism`;
    /// `server_cpu` reads the CPU seconds the storage server has used so far.
    pub fn measure(
        &self,
        keys: u64,
        restore_parallelism: &[u32],
        server_cpu: &dyn Fn() -> f64,
    ) -> Result<(SavepointResult, ServerCpu)> {
        let progress = Progress::new();
        let handle = start(keys, 1, None, self.extra, &progress)?;
        // Every key has state once the generator has gone round once.
        wait_while_running(&handle, "every key to have state", || {
            progress.processed.load(Ordering::Relaxed) >= keys + keys / 10
        })?;
        // Seconds from the request to the savepoint's completion, and where it went.
        let timed = |what: &str, request: &dyn Fn() -> Result<u64>| -> Result<(f64, SnapshotUri)> {
            let t = Instant::now();
            match handle.wait_operation(request()?, Duration::from_secs(900)) {
                Some(Operation::Completed { location, .. }) => Ok((t.elapsed().as_secs_f64(), location)),
                other => bail!("{what} of {keys} keys did not complete: {other:?}"),
            }
        };
        let savepoint = || Ok(handle.trigger_savepoint(Some(self.target), self.format)?);
        let cpu = server_cpu();
        let (savepoint_seconds, location) = timed("savepoint", &savepoint)?;
        let savepoint_cpu = server_cpu() - cpu;
        let savepoint_bytes = tree_size(self.stores, &location)?;
        let mut third_savepoint_seconds = None;
        let mut stop_savepoint = None;
        if self.then_stop {
            for _ in 0..2 {
                let (seconds, again) = timed("another savepoint", &savepoint)?;
                third_savepoint_seconds = Some(seconds);
                self.stores.remove_all(&again).ok();
            }
            let stop = || Ok(handle.stop_with_savepoint(Some(self.target), self.format, false)?);
            let (seconds, stopped) = timed("stop with a savepoint", &stop)?;
            stop_savepoint = Some((seconds, tree_size(self.stores, &stopped)? as f64 / 1e6 / seconds));
            self.stores.remove_all(&stopped).ok();
        }
        if !self.then_stop {
            handle.cancel();
        }
        handle.wait();

        let mut restore = [0.0; 2];
        let mut restore_cpu = 0.0;
        for (i, &p) in restore_parallelism.iter().enumerate() {
            let progress = Progress::new();
            let cpu = server_cpu();
            let handle = start(keys, p, Some(&location), self.extra, &progress)?;
            wait_while_running(&handle, "the first record", || progress.first_record_us.load(Ordering::Relaxed) > 0)?;
            restore[i] = progress.first_record_us.load(Ordering::Relaxed) as f64 / 1e6;
            if i == 0 {
                restore_cpu = server_cpu() - cpu;
            }
            handle.cancel();
            handle.wait();
        }
        self.stores.remove_all(&location).ok();
        let result = SavepointResult {
            keys,
            savepoint_seconds,
            savepoint_bytes,
            savepoint_mb_per_second: savepoint_bytes as f64 / 1e6 / savepoint_seconds,
            third_savepoint_seconds,
            stop_savepoint_seconds: stop_savepoint.map(|s| s.0),
            stop_savepoint_mb_per_second: stop_savepoint.map(|s| s.1),
            restore_p1_seconds: restore[0],
            restore_p2_seconds: restore[1],
        };
        Ok((result, (savepoint_cpu, restore_cpu)))
    }
}

/// Bytes of every file under `dir` (native savepoints keep files in subdirectories).
fn tree_size(stores: &Stores, dir: &SnapshotUri) -> Result<u64> {
    let mut total = 0;
    for e in stores.list(dir)? {
        total += match e.kind {
            weir::EntryKind::Dir => tree_size(stores, &dir.join(&e.name))?,
            _ => e.size,
        };
    }
    Ok(total)
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
            "{:>9} keys: savepoint {:.2} s, {:.1} MB ({:.0} MB/s); a third {:.2} s; stop with a savepoint {:.2} s ({:.0} MB/s); restore to first record: p=1 {:.2} s, p=2 {:.2} s",
            r.keys,
            r.savepoint_seconds,
            r.savepoint_bytes as f64 / 1e6,
            r.savepoint_mb_per_second,
            r.third_savepoint_seconds.unwrap_or(f64::NAN),
            r.stop_savepoint_seconds.unwrap_or(f64::NAN),
            r.stop_savepoint_mb_per_second.unwrap_or(f64::NAN),
            r.restore_p1_seconds,
            r.restore_p2_seconds
        );
        results.push(r);
    }
    let mut encoding = Vec::new();
    for &k in keys {
        let e = crate::encoding::run(k)?;
        eprintln!("{:>9} keys, encoding apart from any job: {e}", k);
        encoding.push(e);
    }
    Ok(Report { disk_sequential_write_mb_per_second: disk, results, encoding })
}

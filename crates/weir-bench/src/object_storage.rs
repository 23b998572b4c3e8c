//! `--suite object-storage`: savepoints and restores (p=1) on local disk and on the S3 server of
//! `scripts/s3.sh` (started here if it is not running), for the heap backend (canonical) and
//! RocksDB (canonical and native). s3s-fs keeps objects as files on the same disk and shares this
//! machine's cores with the job, so the difference is the protocol's cost plus the server's CPU,
//! which is measured (from /proc) and reported beside each S3 time.

use crate::median;
use crate::savepoints::{SavepointResult, SavepointRun};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;
use weir::{Configuration, SavepointFormat, SnapshotUri, Stores};

/// A backend and the savepoint format written with it.
#[derive(Debug, Clone, Copy)]
enum Variant {
    HeapCanonical,
    RocksDbCanonical,
    RocksDbNative,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::HeapCanonical, Variant::RocksDbCanonical, Variant::RocksDbNative];

    fn backend(self) -> &'static str {
        match self {
            Variant::HeapCanonical => "hashmap",
            Variant::RocksDbCanonical | Variant::RocksDbNative => "rocksdb",
        }
    }

    fn format(self) -> SavepointFormat {
        match self {
            Variant::RocksDbNative => SavepointFormat::Native,
            _ => SavepointFormat::Canonical,
        }
    }

    fn settings(self, work: &Path) -> Result<Vec<(&'static str, String)>> {
        let mut settings = vec![("state.backend.type", self.backend().to_string())];
        if self.backend() == "rocksdb" {
            let dir = work.join("rocksdb");
            settings.push(("state.backend.rocksdb.localdir", dir.to_str().context("work path")?.to_string()));
        }
        Ok(settings)
    }
}

/// One comparison: the same savepoint and restore on local disk and on S3, medians of the runs.
#[derive(Serialize)]
pub struct ObjectStorageResult {
    backend: &'static str,
    format: &'static str,
    keys: u64,
    savepoint_bytes: u64,
    local_savepoint_seconds: f64,
    s3_savepoint_seconds: f64,
    local_savepoint_mb_per_second: f64,
    s3_savepoint_mb_per_second: f64,
    /// CPU seconds the S3 server itself spent during the savepoint (it shares the machine).
    s3_server_cpu_seconds_savepoint: f64,
    local_restore_seconds: f64,
    s3_restore_seconds: f64,
    local_restore_mb_per_second: f64,
    s3_restore_mb_per_second: f64,
    s3_server_cpu_seconds_restore: f64,
    /// S3 time over local time (the aim: at most 2).
    savepoint_ratio: f64,
    restore_ratio: f64,
}

fn s3_script(args: &[&str]) -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3.sh");
    let out = std::process::Command::new(script).args(args).output()?;
    if !out.status.success() {
        bail!("scripts/s3.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// CPU seconds (user + system) process `pid` has used so far, from /proc/PID/stat.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces, so split after its closing ')').
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / ticks_per_second
}

fn clock_ticks_per_second() -> Result<f64> {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().context("getconf CLK_TCK")?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

pub fn run(keys: &[u64], repeat: usize) -> Result<Vec<ObjectStorageResult>> {
    s3_script(&["start"])?;
    s3_script(&["create-bucket", "weir-bench"])?;
    let server: u32 = s3_script(&["pid"])?.parse().context("the S3 server's pid")?;
    let ticks = clock_ticks_per_second()?;
    let server_cpu = move || cpu_seconds(server, ticks);
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let s3_settings = vec![
        ("s3.endpoint", s3_script(&["endpoint"])?),
        ("s3.access-key", var("WEIR_S3_ACCESS_KEY", "weir-test-access")),
        ("s3.secret-key", var("WEIR_S3_SECRET_KEY", "weir-test-secret")),
        ("s3.path.style.access", "true".to_string()),
    ];
    let mut config = Configuration::new();
    for (k, v) in &s3_settings {
        config.set(k, v)?;
    }
    let stores = Stores::from_config(&config);
    let work = tempfile::tempdir()?;
    let local_target = SnapshotUri::Local(work.path().join("sp"));
    let mut results = Vec::new();
    for variant in Variant::ALL {
        let backend = variant.settings(work.path())?;
        let with_s3: Vec<_> = backend.iter().cloned().chain(s3_settings.iter().cloned()).collect();
        for &k in keys {
            let (mut local, mut remote) = (Vec::new(), Vec::new());
            for i in 0..repeat {
                let run = SavepointRun {
                    target: &local_target,
                    extra: &backend,
                    stores: &stores,
                    format: variant.format(),
                    then_stop: false,
                };
                local.push(run.measure(k, &[1], &|| 0.0)?.0);
                let target = SnapshotUri::parse(&format!("s3://weir-bench/run-{}-{i}", std::process::id()))?;
                let run = SavepointRun {
                    target: &target,
                    extra: &with_s3,
                    stores: &stores,
                    format: variant.format(),
                    then_stop: false,
                };
                remote.push(run.measure(k, &[1], &server_cpu)?);
            }
            let r = compare(variant, k, &local, &remote);
            eprintln!(
                "{:<8} {:<9} {:>9} keys, {:.1} MB: savepoint local {:.2} s, S3 {:.2} s ({:.2}x, server {:.2} s CPU); restore local {:.2} s, S3 {:.2} s ({:.2}x)",
                r.backend,
                r.format,
                r.keys,
                r.savepoint_bytes as f64 / 1e6,
                r.local_savepoint_seconds,
                r.s3_savepoint_seconds,
                r.savepoint_ratio,
                r.s3_server_cpu_seconds_savepoint,
                r.local_restore_seconds,
                r.s3_restore_seconds,
                r.restore_ratio
            );
            results.push(r);
        }
    }
    Ok(results)
}

fn compare(
    variant: Variant,
    keys: u64,
    local: &[SavepointResult],
    remote: &[(SavepointResult, (f64, f64))],
) -> ObjectStorageResult {
    let m = |v: Vec<f64>| median(v);
    let bytes = remote[0].0.savepoint_bytes;
    let mb = bytes as f64 / 1e6;
    let local_savepoint = m(local.iter().map(|r| r.savepoint_seconds).collect());
    let s3_savepoint = m(remote.iter().map(|r| r.0.savepoint_seconds).collect());
    let local_restore = m(local.iter().map(|r| r.restore_p1_seconds).collect());
    let s3_restore = m(remote.iter().map(|r| r.0.restore_p1_seconds).collect());
    ObjectStorageResult {
        backend: variant.backend(),
        format: match variant.format() {
            SavepointFormat::Native => "native",
            _ => "canonical",
        },
        keys,
        savepoint_bytes: bytes,
        local_savepoint_seconds: local_savepoint,
        s3_savepoint_seconds: s3_savepoint,
        local_savepoint_mb_per_second: mb / local_savepoint,
        s3_savepoint_mb_per_second: mb / s3_savepoint,
        s3_server_cpu_seconds_savepoint: m(remote.iter().map(|r| r.1 .0).collect()),
        local_restore_seconds: local_restore,
        s3_restore_seconds: s3_restore,
        local_restore_mb_per_second: mb / local_restore,
        s3_restore_mb_per_second: mb / s3_restore,
        s3_server_cpu_seconds_restore: m(remote.iter().map(|r| r.1 .1).collect()),
        savepoint_ratio: s3_savepoint / local_savepoint,
        restore_ratio: s3_restore / local_restore,
    }
}

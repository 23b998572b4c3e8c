//! `cargo run --release -p weir-bench -- [--seconds S] [--out FILE]` (the engine suite), and
//! `cargo run --release -p weir-bench -- --suite savepoints` (savepoint and restore times), and
//! `cargo run --release -p weir-bench -- --suite rocksdb` (the rocksdb backend: throughput of the
//! reference shape, full vs incremental checkpoints, native vs canonical savepoints, restores;
//! `--suite rocksdb-snapshots` runs only its snapshot part), and
//! `cargo run --release -p weir-bench -- --suite windows` (event-time windows, both backends), and
//! `cargo run --release -p weir-bench -- --suite connectors` (Kafka source and sink, PostgreSQL sink), and
//! `cargo run --release -p weir-bench -- --suite object-storage` (savepoints and restores on S3 vs local disk), and
//! `cargo run --release -p weir-bench -- --suite all --quick` (every suite, short: the regression guard, one
//! JSON file to compare between commits).
//!
//! Runs each configuration in a child process (so peak RSS is its own): three job shapes, the heap
//! backend, parallelism 1 and 2, without checkpoints and with 10 s and 1 s checkpoints.
//! * `reference`: counter source → map `i` to `"w" + (i % 1000)` → key_by → count in keyed
//!   `ValueState<u64>` (1000 keys); the shape Flink 2.3 runs at ~6.6 M records/s (p=1) and
//!   ~8.3 M/s (p=2) on this machine. The key is borrowed from the record (`key_by_ref(|w| w)`,
//!   as Flink's `keyBy(w -> w)`); `reference-computed-key` (`--single` only) clones it instead
//!   (`key_by(|w| w.clone())`), to show what a key allocated per record costs.
//! * `large-state`: the same with 10^6 distinct u64 keys.
//! * `reference-max-parallelism`: the reference shape with `pipeline.max-parallelism: 32768`
//!   (Flink's upper bound, which jobs set to keep room for scaling out): 1000 keys over that many
//!   key groups, each group's state and each checkpoint block mostly empty.
//!
//! Throughput is measured after a one-second warm-up over the given window.

use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use weir::connectors::GeneratorSource;
use weir::{Configuration, StreamEnv};

/// A job binary picks its allocator; like most high-throughput Rust services, this one uses
/// mimalloc (records are small, short-lived allocations), for RocksDB's allocations too
/// (`weir`'s `mimalloc` feature).
#[global_allocator]
static ALLOCATOR: weir::allocator::MiMalloc = weir::allocator::MiMalloc;

mod connectors;
mod count;
mod encoding;
mod object_storage;
mod rocksdb;
mod savepoints;
mod windows;

use count::{Count, Progress};

#[derive(Parser)]
struct Args {
    /// engine (throughput, checkpoints, memory) or savepoints (savepoint and restore times).
    #[arg(long, default_value = "engine")]
    suite: String,
    /// Measurement window per configuration, in seconds.
    #[arg(long, default_value_t = 12)]
    seconds: u64,
    /// Runs per configuration; the median (by throughput) is reported, with every run's rate.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where to write the JSON results (default: bench-results/<suite>.json).
    #[arg(long)]
    out: Option<String>,
    /// Run one configuration in this process: SHAPE,PARALLELISM,CHECKPOINT_MS[,BACKEND] (0 = none).
    #[arg(long)]
    single: Option<String>,
    /// Run one part of the connectors suite in this process: PART,PARALLELISM,RECORDS,TARGET.
    #[arg(long)]
    connector: Option<String>,
    /// Records per Kafka measurement in the connectors suite.
    #[arg(long, default_value_t = 2_000_000)]
    kafka_records: u64,
    /// Key counts of the savepoints and object-storage suites (default 1000000,10000000); the first
    /// is also the large-state shape's (default 1000000).
    #[arg(long, value_delimiter = ',')]
    keys: Vec<u64>,
    /// Rows per PostgreSQL measurement in the connectors suite.
    #[arg(long, default_value_t = 300_000)]
    postgres_rows: u64,
    /// A short run of every measurement (with `--suite all`, the regression guard: a few minutes):
    /// 4 s windows, one run each, 10^6 keys, smaller connector volumes.
    #[arg(long)]
    quick: bool,
    /// A configuration entry for every job the engine, rocksdb and windows suites run (repeatable),
    /// e.g. `--set state.backend.rocksdb.writebuffer.size=16mb`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

impl Args {
    fn quick(self) -> Args {
        Args {
            seconds: 4,
            repeat: 1,
            keys: if self.keys.is_empty() { vec![1_000_000] } else { self.keys },
            kafka_records: 300_000,
            postgres_rows: 50_000,
            ..self
        }
    }
}

/// The key counts given, or 10^6 and 10^7.
fn key_counts(given: &[u64]) -> Vec<u64> {
    if given.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        given.to_vec()
    }
}

#[derive(Serialize, serde::Deserialize, Debug)]
struct Result {
    shape: String,
    #[serde(default)]
    backend: String,
    parallelism: u32,
    checkpoint_interval_ms: u64,
    records: u64,
    seconds: f64,
    records_per_second: f64,
    checkpoints: usize,
    checkpoint_duration_ms_avg: Option<f64>,
    checkpoint_duration_ms_max: Option<f64>,
    checkpoint_bytes_avg: Option<f64>,
    peak_rss_bytes: u64,
    /// Throughput of every repetition (records/s), when repeated.
    #[serde(default)]
    runs_records_per_second: Vec<f64>,
    /// Distinct keys of the large-state shape.
    #[serde(default)]
    keys: Option<u64>,
    /// The `--set` entries the job ran with.
    #[serde(default)]
    settings: Vec<String>,
}

/// `"w" + n`, built with one allocation (what `format!` does with several).
pub(crate) fn word(n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut s = String::with_capacity(1 + digits.len() - at);
    s.push('w');
    s.extend(digits[at..].iter().map(|&d| d as char));
    s
}

pub(crate) fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Distinct keys of the large-state shape unless `--keys` says otherwise.
const LARGE_STATE_KEYS: u64 = 1_000_000;

/// What a `--single` run measures beyond its spec.
#[derive(Clone, Default)]
struct SingleOptions {
    seconds: u64,
    /// Distinct keys of the large-state shape (default 10^6).
    keys: Option<u64>,
    settings: Vec<String>,
}

impl SingleOptions {
    fn from_args(args: &Args) -> Self {
        SingleOptions { seconds: args.seconds, keys: args.keys.first().copied(), settings: args.settings.clone() }
    }

    fn to_args(&self) -> Vec<String> {
        let mut out = vec!["--seconds".to_string(), self.seconds.to_string()];
        if let Some(k) = self.keys {
            out.extend(["--keys".to_string(), k.to_string()]);
        }
        for s in &self.settings {
            out.extend(["--set".to_string(), s.clone()]);
        }
        out
    }
}

fn run_single(spec: &str, options: &SingleOptions) -> anyhow::Result<Result> {
    let seconds = options.seconds;
    let parts: Vec<&str> = spec.split(',').collect();
    let (shape, p, interval, backend) = match parts[..] {
        [shape, p, interval] => (shape, p, interval, "hashmap"),
        [shape, p, interval, backend] => (shape, p, interval, backend),
        _ => bail!("--single SHAPE,P,INTERVAL_MS[,BACKEND]"),
    };
    let parallelism: u32 = p.parse()?;
    let interval_ms: u64 = interval.parse()?;
    let dir = tempfile::tempdir()?;
    let mut config = Configuration::new();
    config.set("parallelism.default", p)?;
    config.set("execution.checkpointing.dir", dir.path().to_str().context("temp dir")?)?;
    if interval_ms > 0 {
        config.set("execution.checkpointing.interval", &format!("{interval_ms} ms"))?;
    }
    config.set("state.backend.type", backend)?;
    config.set("state.backend.rocksdb.localdir", dir.path().join("rocksdb").to_str().context("temp dir")?)?;
    config.set("execution.checkpointing.incremental", "true")?;
    if shape == "reference-max-parallelism" {
        config.set("pipeline.max-parallelism", "32768")?;
    }
    for entry in &options.settings {
        let (key, value) = entry.split_once('=').with_context(|| format!("--set {entry}: expected KEY=VALUE"))?;
        config.set(key.trim(), value.trim())?;
    }
    let env = StreamEnv::with_config(config);
    let progress = Progress::new();
    let source = if shape == "windows" { None } else { Some(env.source(GeneratorSource::counter()).uid("source")) };
    match shape {
        "reference" | "reference-computed-key" | "reference-max-parallelism" => {
            let counter = Count::<String>::new(progress.clone());
            let words = source.context("source")?.map(|i: u64| word(i % 1000)).uid("map");
            let keyed = if shape != "reference-computed-key" {
                words.key_by_ref(|w: &String| w)
            } else {
                words.key_by(|w: &String| w.clone())
            };
            keyed.process::<(), _>(counter).uid("count");
        }
        "large-state" => {
            let counter = Count::<u64>::new(progress.clone());
            let keys = options.keys.unwrap_or(LARGE_STATE_KEYS);
            source
                .context("source")?
                .map(move |i: u64| i % keys)
                .uid("map")
                .key_by(|k: &u64| *k)
                .process::<(), _>(counter)
                .uid("count");
        }
        "windows" => windows::build(&env, &progress),
        other => bail!("unknown shape {other}"),
    }
    let handle = env.execute_async("bench")?;
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (progress.processed.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (c1, elapsed) = (progress.processed.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    let checkpoints = handle.completed_checkpoints();
    handle.cancel();
    handle.wait();
    let n = checkpoints.len() as f64;
    let some = |v: f64| (n > 0.0).then_some(v);
    Ok(Result {
        shape: shape.to_string(),
        backend: backend.to_string(),
        parallelism,
        checkpoint_interval_ms: interval_ms,
        records: c1 - c0,
        seconds: elapsed,
        records_per_second: (c1 - c0) as f64 / elapsed,
        checkpoints: checkpoints.len(),
        checkpoint_duration_ms_avg: some(
            checkpoints.iter().map(|c| c.duration.as_secs_f64() * 1000.0).sum::<f64>() / n,
        ),
        checkpoint_duration_ms_max: some(
            checkpoints.iter().map(|c| c.duration.as_secs_f64() * 1000.0).fold(0.0, f64::max),
        ),
        checkpoint_bytes_avg: some(checkpoints.iter().map(|c| c.state_size as f64).sum::<f64>() / n),
        peak_rss_bytes: peak_rss(),
        runs_records_per_second: Vec::new(),
        keys: (shape == "large-state").then(|| options.keys.unwrap_or(LARGE_STATE_KEYS)),
        settings: options.settings.clone(),
    })
}

/// Every suite, in the order `--suite all` runs them.
const SUITES: &[&str] = &["engine", "rocksdb", "windows", "savepoints", "object-storage", "connectors"];

fn machine() -> serde_json::Value {
    serde_json::json!({ "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) })
}

/// The commit measured, so results of two commits can be told apart (`None` outside a checkout).
fn git_commit() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The middle value (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One suite's results, as `--suite NAME` writes them.
fn run_suite(suite: &str, args: &Args) -> anyhow::Result<serde_json::Value> {
    let throughput_matrix: (&[&str], &[u64], &[&str]) = match suite {
        "savepoints" => {
            let report = savepoints::run(&key_counts(&args.keys))?;
            return Ok(serde_json::json!({ "benchmark": "savepoints", "report": report }));
        }
        "object-storage" => {
            let results = object_storage::run(&key_counts(&args.keys), args.repeat.max(1))?;
            return Ok(serde_json::json!({ "benchmark": "object-storage", "results": results }));
        }
        "connectors" => {
            let report = connectors::run(args.kafka_records, args.postgres_rows, args.repeat)?;
            return Ok(serde_json::json!({ "benchmark": "connectors", "machine": machine(), "report": report }));
        }
        "rocksdb-snapshots" => {
            let report = rocksdb_snapshots(args)?;
            return Ok(
                serde_json::json!({ "benchmark": "rocksdb-snapshots", "machine": machine(), "snapshots": report }),
            );
        }
        "rocksdb" => (&["reference", "large-state"], &[0, 10_000], &["rocksdb"]),
        "windows" => (&["windows"], &[10_000, 1_000], &["hashmap", "rocksdb"]),
        "engine" => (&["reference", "large-state", "reference-max-parallelism"], &[0, 10_000, 1_000], &["hashmap"]),
        other => bail!("unknown suite '{other}': all, {}", SUITES.join(", ")),
    };
    let results = throughput(throughput_matrix, args)?;
    if suite == "rocksdb" {
        let report = rocksdb_snapshots(args)?;
        return Ok(serde_json::json!({
            "benchmark": "rocksdb", "machine": machine(), "throughput": results, "snapshots": report
        }));
    }
    Ok(serde_json::json!({ "benchmark": suite, "machine": machine(), "results": results }))
}

/// The rocksdb suite's checkpoints, savepoints and restores: 10^7 keys (10^6 with `--quick`).
fn rocksdb_snapshots(args: &Args) -> anyhow::Result<rocksdb::Report> {
    rocksdb::run(if args.quick { 1_000_000 } else { 10_000_000 })
}

/// Every (shape, backend, parallelism 1 and 2, checkpoint interval), each run `--repeat` times in
/// a child process; the median run, with every run's rate.
fn throughput((shapes, intervals, backends): (&[&str], &[u64], &[&str]), args: &Args) -> anyhow::Result<Vec<Result>> {
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    for (&shape, &backend) in shapes.iter().flat_map(|s| backends.iter().map(move |b| (s, b))) {
        for p in [1, 2] {
            for &interval in intervals {
                let spec = format!("{shape},{p},{interval},{backend}");
                let mut runs = Vec::new();
                for _ in 0..args.repeat.max(1) {
                    runs.push(run_child(&exe, &spec, &SingleOptions::from_args(args))?);
                }
                runs.sort_by(|a, b| a.records_per_second.total_cmp(&b.records_per_second));
                let rates: Vec<f64> = runs.iter().map(|r| r.records_per_second).collect();
                let mut r = runs.swap_remove(runs.len() / 2);
                r.runs_records_per_second = rates;
                eprintln!(
                    "{:<12} {:<8} p={} checkpoints={:>6}: {:>6.2} M records/s (median), {} checkpoints (avg {:.1} ms, {:.0} bytes), peak RSS {:.1} MB",
                    r.shape,
                    r.backend,
                    r.parallelism,
                    if interval == 0 { "none".to_string() } else { format!("{} s", interval / 1000) },
                    r.records_per_second / 1e6,
                    r.checkpoints,
                    r.checkpoint_duration_ms_avg.unwrap_or(0.0),
                    r.checkpoint_bytes_avg.unwrap_or(0.0),
                    r.peak_rss_bytes as f64 / 1e6
                );
                results.push(r);
            }
        }
    }
    Ok(results)
}

/// Runs one configuration in a child process and parses its JSON line.
fn run_child(exe: &std::path::Path, spec: &str, options: &SingleOptions) -> anyhow::Result<Result> {
    let out = Command::new(exe).args(["--single", spec]).args(options.to_args()).env("RUST_LOG", "warn").output()?;
    if !out.status.success() {
        bail!("{spec} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8(out.stdout)?;
    serde_json::from_str(line.trim()).with_context(|| format!("{spec}: {line}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    weir::allocator::purge_freed_pages_promptly();
    // Quiet unless asked: RUST_LOG=info shows when each checkpoint and savepoint was triggered and
    // completed; RUST_LOG=weir_rocksdb=info with `--set state.backend.rocksdb.statistics=true`
    // shows the RocksDB profile when a job ends.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    if let Some(spec) = &args.single {
        let r = run_single(spec, &SingleOptions::from_args(&args))?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    if let Some(spec) = &args.connector {
        let parts: Vec<&str> = spec.split(',').collect();
        let [part, p, records, target] = parts[..] else { bail!("--connector PART,P,RECORDS,TARGET") };
        let v = connectors::run_part(part, p.parse()?, records.parse()?, target)?;
        println!("{v}");
        return Ok(());
    }
    let args = if args.quick { args.quick() } else { args };
    let out = args.out.clone().unwrap_or_else(|| format!("bench-results/{}.json", args.suite));
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    let report = if args.suite == "all" {
        let mut all = serde_json::json!({
            "benchmark": "all",
            "quick": args.quick,
            "commit": git_commit(),
            "machine": machine(),
        });
        for suite in SUITES {
            eprintln!("== {suite}");
            all[*suite] = run_suite(suite, &args)?;
        }
        all
    } else {
        run_suite(&args.suite, &args)?
    };
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {out}");
    Ok(())
}

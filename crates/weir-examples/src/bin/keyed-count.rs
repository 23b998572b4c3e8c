//! A test job for crash tests: a generator of `(key, i)` records, a running count per key in
//! keyed `ValueState`, and the exactly-once file sink. Each committed line is `key count`; with
//! exactly-once, every key `k` has the lines `k 1`, `k 2`, ... `k n_k` exactly once.
//!
//! ```text
//! keyed-count [-s SNAPSHOT] [-p N] [-D key=value]... --output DIR --count N --keys K [--rate R] [--fail-at-count C]
//! ```

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use weir::connectors::{FileSink, GeneratorSource};
use weir::StreamEnv;
use weir_examples::keyed_count::CountPerKey;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    output: PathBuf,
    #[arg(long)]
    count: u64,
    #[arg(long)]
    keys: u64,
    /// Records per second over all subtasks.
    #[arg(long)]
    rate: Option<f64>,
    /// Fail whenever a key's count reaches this (an injected failure; restarts reach it again).
    #[arg(long)]
    fail_at_count: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let (env, job_args) = StreamEnv::from_args()?;
    let args = Args::parse_from(std::iter::once("keyed-count".to_string()).chain(job_args));
    let mut source = GeneratorSource::keyed(args.keys).with_count(args.count);
    if let Some(rate) = args.rate {
        source = source.with_rate(rate);
    }
    env.source(source)
        .uid("generator")
        .key_by(|r: &(u64, u64)| r.0)
        .process(CountPerKey::failing_at(args.fail_at_count))
        .uid("count")
        .sink(FileSink::new(&args.output))
        .uid("sink");
    env.execute("keyed-count").context("keyed-count failed")?;
    Ok(())
}

//! Counts words per event-time window: reads JSON lines `{"word":"a","ts":1000}` from a followed
//! file (event time = `ts`, in ms), with watermarks `--out-of-orderness-ms` behind the newest
//! record, counts each word per tumbling window of `--window-ms`, prints
//! `WindowCount{word='a', window=[0, 10000), count=3}` and writes those lines exactly once to
//! `--output`; records too late for their window go, as their original lines, to
//! `--late-output` (exactly once too).
//!
//! ```text
//! window-count [-s SNAPSHOT] [-n] [-p N] [-D key=value]... --input FILE --output DIR
//!              --late-output DIR [--window-ms 10000] [--out-of-orderness-ms 2000] [--bounded]
//! ```
//!
//! `weir stop --drain` ends event time first: every open window fires and is committed with the
//! final savepoint. A plain `weir stop` keeps open windows in the savepoint; a job restored from
//! it fires them when its watermark passes their end.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use weir::connectors::PrintSink;
use weir::StreamEnv;
use weir_examples::window_count::{count_windows, parse_word_event, watermarks, WindowCountSettings};
use weir_examples::FileJobArgs;

/// Input: JSON lines `{"word":..,"ts":..}`; output: the window counts.
#[derive(Parser)]
#[command(name = "window-count")]
struct Args {
    #[command(flatten)]
    files: FileJobArgs,
    /// Directory of the exactly-once late records.
    #[arg(long)]
    late_output: PathBuf,
    /// Size of the tumbling windows, in ms.
    #[arg(long, default_value_t = 10_000)]
    window_ms: u64,
    /// How far behind the newest record a record may arrive and still count, in ms.
    #[arg(long, default_value_t = 2_000)]
    out_of_orderness_ms: u64,
    /// How long after its end a window still takes late records (firing again), in ms.
    #[arg(long, default_value_t = 0)]
    allowed_lateness_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let (mut env, job_args) = StreamEnv::from_args()?;
    let args = Args::parse_from(std::iter::once("window-count".to_string()).chain(job_args));
    let source = args.files.source()?;
    anyhow::ensure!(args.window_ms > 0, "--window-ms must be positive");
    env.enable_checkpointing(Duration::from_secs(1));
    env.set(weir::config_keys::CHECKPOINT_DIR, &args.files.checkpoints)?;

    let events = env
        .source(source)
        .uid("source")
        .name("File Source")
        .flat_map(parse_word_event)
        .uid("parse")
        .name("Parse")
        .assign_timestamps_and_watermarks(watermarks(Duration::from_millis(args.out_of_orderness_ms)))
        .name("Watermarks");
    let settings = WindowCountSettings {
        window: Duration::from_millis(args.window_ms),
        allowed_lateness: Duration::from_millis(args.allowed_lateness_ms),
    };
    let counts = count_windows(events, &settings, &args.files.output, &args.late_output);
    if !args.files.quiet {
        counts.sink(PrintSink::new()).uid("print").name("Print");
    }
    env.execute("window-count").context("window-count failed")?;
    Ok(())
}

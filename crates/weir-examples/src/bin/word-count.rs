//! The seed job: sums `frequency` per word from JSON lines in a followed file, prints running
//! totals, and writes them exactly once to an output directory.
//!
//! ```text
//! word-count [-s SNAPSHOT] [-n] [-p N] [-D key=value]... --input FILE --output DIR [--bounded]
//! ```

use anyhow::Context;
use clap::Parser;
use std::time::Duration;
use weir::connectors::{FileSink, PrintSink};
use weir::StreamEnv;
use weir_examples::{parse_word_count, FileJobArgs, WordCount};

/// Input: JSON lines `{"word":..,"frequency":..}`.
#[derive(Parser)]
#[command(name = "word-count")]
struct Args {
    #[command(flatten)]
    files: FileJobArgs,
    /// When the followed input is truncated or replaced, read the new file from its start
    /// (default: fail, since lines could be lost or read twice).
    #[arg(long)]
    start_over_when_replaced: bool,
}

fn main() -> anyhow::Result<()> {
    let (mut env, job_args) = StreamEnv::from_args()?;
    let args = Args::parse_from(std::iter::once("word-count".to_string()).chain(job_args));
    args.files.check()?;
    env.enable_checkpointing(Duration::from_secs(1));
    env.set(weir::config_keys::CHECKPOINT_DIR, &args.files.checkpoints)?;

    let mut source = args.files.source();
    if args.start_over_when_replaced {
        source = source.start_over_when_replaced();
    }
    let totals = env
        .source(source)
        .uid("source")
        .name("File Source")
        .flat_map(parse_word_count)
        .uid("parse")
        .name("Parse")
        .key_by(|wc: &WordCount| wc.word.clone())
        .sum(|wc: &mut WordCount| &mut wc.frequency)
        .uid("sum")
        .name("Sum");
    if !args.files.quiet {
        totals.clone().sink(PrintSink::new()).uid("print").name("Print");
    }
    totals.sink(FileSink::new(&args.files.output)).uid("sink").name("File Sink");
    env.execute("word-count").context("word-count failed")?;
    Ok(())
}

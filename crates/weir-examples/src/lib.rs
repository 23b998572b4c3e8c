//! Shared pieces of the example jobs.

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod keyed_count;
pub mod window_count;

/// Every example job runs on mimalloc, set up to keep the process near its state budget (`weir`'s
/// `mimalloc` feature): a global allocator declared in a library serves every binary that links it.
#[global_allocator]
static ALLOCATOR: weir::allocator::MiMalloc = weir::allocator::MiMalloc;

/// The arguments of the example jobs that read a file of JSON lines and write exactly once.
#[derive(clap::Args, Debug)]
pub struct FileJobArgs {
    /// JSON lines, followed as the file grows (required unless the job reads another source).
    #[arg(long)]
    pub input: Option<std::path::PathBuf>,
    /// Directory of the exactly-once output files.
    #[arg(long)]
    pub output: std::path::PathBuf,
    /// Stop at the end of the input instead of following it.
    #[arg(long)]
    pub bounded: bool,
    /// Checkpoint directory, unless execution.checkpointing.dir is given with -D.
    #[arg(long, default_value = "checkpoints")]
    pub checkpoints: String,
    /// Do not print results to stdout.
    #[arg(long)]
    pub quiet: bool,
}

impl FileJobArgs {
    /// The file source these arguments describe. Refuses a bounded run over a missing file (a
    /// followed file may appear later).
    pub fn source(&self) -> anyhow::Result<weir::connectors::FileSource> {
        let Some(input) = &self.input else { anyhow::bail!("--input FILE is required") };
        if self.bounded && !input.is_file() {
            anyhow::bail!("input file '{}' does not exist", input.display());
        }
        Ok(if self.bounded {
            weir::connectors::FileSource::bounded(input)
        } else {
            weir::connectors::FileSource::follow(input)
        })
    }
}

/// One word with a count, as read from JSON lines like `{"word":"a","frequency":1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordCount {
    pub word: String,
    pub frequency: u64,
}

impl fmt::Display for WordCount {
    /// Printed the way the seed's Flink job prints it: `WordCount{word='a', frequency=3}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WordCount{{word='{}', frequency={}}}", self.word, self.frequency)
    }
}

/// Parses one input line; malformed lines are skipped with a warning (one bad line must not stop
/// the job, nor make it restart forever).
pub fn parse_word_count(line: String) -> Option<WordCount> {
    if line.trim().is_empty() {
        return None;
    }
    match serde_json::from_str::<WordCount>(&line) {
        Ok(wc) => Some(wc),
        Err(e) => {
            tracing::warn!("skipping malformed input line {}: {e}", weir::connectors::log_prefix(line.as_bytes()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_the_seed_job() {
        let wc = parse_word_count(r#"{"word":"a","frequency":3}"#.into()).unwrap();
        assert_eq!(wc.to_string(), "WordCount{word='a', frequency=3}");
        assert!(parse_word_count("not json".into()).is_none());
        assert!(parse_word_count("   ".into()).is_none());
    }
}

//! The seed job: sums `frequency` per word from JSON lines in a followed file or a Kafka topic,
//! prints running totals, and writes them exactly once to an output directory.
//!
//! ```text
//! word-count [-s SNAPSHOT] [-n] [-p N] [-D key=value]... --input FILE --output DIR [--bounded]
//! word-count [-s SNAPSHOT] ... --kafka-brokers HOST:PORT --topic word [--group-id word-count] --output DIR
//! ```

use anyhow::Context;
use clap::Parser;
use std::time::Duration;
use weir::connectors::{FileSink, PrintSink};
use weir::StreamEnv;
use weir_examples::{parse_word_count, FileJobArgs, WordCount};
use weir_kafka::KafkaSource;
use weir_postgres::PostgresSink;

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
    /// Read the JSON lines from Kafka instead of a file: the brokers' bootstrap list.
    #[arg(long, requires = "topic", conflicts_with_all = ["input", "bounded"])]
    kafka_brokers: Option<String>,
    /// The topic to read (with --kafka-brokers).
    #[arg(long, requires = "kafka_brokers")]
    topic: Option<String>,
    /// The consumer group offsets are committed to when checkpoints complete (for monitoring).
    #[arg(long, default_value = "word-count", requires = "kafka_brokers")]
    group_id: String,
    /// How often to look for new partitions of the topic.
    #[arg(long, default_value = "5 min", value_parser = weir::parse_duration, requires = "kafka_brokers")]
    partition_discovery: Duration,
    /// Also write the totals, exactly once, to this PostgreSQL database (a URL such as
    /// postgres://user@host:5432/db); the server needs max_prepared_transactions > 0.
    #[arg(long, requires = "table")]
    postgres: Option<String>,
    /// The table for --postgres (word TEXT PRIMARY KEY, frequency BIGINT; created if missing).
    #[arg(long, requires = "postgres")]
    table: Option<String>,
    /// With --postgres: insert a row per running total (word, frequency) instead of keeping the
    /// latest total per word (the table then has no key).
    #[arg(long, requires = "postgres")]
    postgres_insert: bool,
}

fn main() -> anyhow::Result<()> {
    let (mut env, job_args) = StreamEnv::from_args()?;
    let args = Args::parse_from(std::iter::once("word-count".to_string()).chain(job_args));
    env.enable_checkpointing(Duration::from_secs(1));
    env.set(weir::config_keys::CHECKPOINT_DIR, &args.files.checkpoints)?;

    let lines = match (&args.kafka_brokers, &args.topic) {
        (Some(brokers), Some(topic)) => {
            let source = KafkaSource::utf8(brokers.as_str())
                .topics(&[topic])
                .group_id(&args.group_id)
                .partition_discovery_interval(Some(args.partition_discovery));
            env.source(source).uid("KafkaSource").name("Kafka Source")
        }
        _ => {
            let mut source = args.files.source()?;
            if args.start_over_when_replaced {
                source = source.start_over_when_replaced();
            }
            env.source(source).uid("source").name("File Source")
        }
    };
    let totals = lines
        .flat_map(parse_word_count)
        .uid("parse")
        .name("Parse")
        .key_by_ref(|wc: &WordCount| &wc.word)
        .sum(|wc: &mut WordCount| &mut wc.frequency)
        .uid("sum")
        .name("Sum");
    if !args.files.quiet {
        totals.clone().sink(PrintSink::new()).uid("print").name("Print");
    }
    if let (Some(url), Some(table)) = (&args.postgres, &args.table) {
        let sink = PostgresSink::insert(url.as_str(), table.as_str(), &["word", "frequency"], |wc: &WordCount| {
            vec![wc.word.as_str().into(), wc.frequency.into()]
        });
        let (sink, key) = if args.postgres_insert { (sink, "") } else { (sink.upsert(&["word"]), " PRIMARY KEY") };
        sink.create_table(&format!("word TEXT NOT NULL{key}, frequency BIGINT NOT NULL"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        totals.clone().sink(sink).uid("postgres").name("PostgreSQL Sink");
    }
    totals.sink(FileSink::new(&args.files.output)).uid("sink").name("File Sink");
    env.execute("word-count").context("word-count failed")?;
    Ok(())
}

//! The connectors suite: the Kafka source into a keyed count (p=1, p=2), the at-least-once Kafka
//! sink, and the exactly-once PostgreSQL sink (inserts, and upserts of a new key per record), against the broker and server the tests use
//! (`scripts/kafka.sh`, `scripts/postgres.sh`), with 10 s checkpoints. Beside each, the same work
//! done by the client library alone (no engine), to say where the time goes. Each measurement runs
//! in a process of its own (peak RSS is per process).

use crate::count::{Count, Progress};
use crate::{peak_rss, word};
use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use weir::connectors::GeneratorSource;
use weir::{Configuration, StreamEnv};
use weir_kafka::{KafkaSink, KafkaSource};
use weir_postgres::PostgresSink;

fn script(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(name);
    let out = Command::new(&path).args(args).output().with_context(|| format!("running {}", path.display()))?;
    if !out.status.success() {
        bail!("{name} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn config(p: u32) -> anyhow::Result<(Configuration, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut config = Configuration::new();
    config.set("parallelism.default", &p.to_string())?;
    config.set("execution.checkpointing.dir", dir.path().to_str().context("temp dir")?)?;
    config.set("execution.checkpointing.interval", "10 s")?;
    config.set("weir.rest.enabled", "false")?;
    Ok((config, dir))
}

/// One measurement, in this process: `part` is `sink`, `source`, `produce`, `consume` or
/// `postgres`; returns its JSON.
pub fn run_part(part: &str, p: u32, records: u64, target: &str) -> anyhow::Result<Value> {
    let started = Instant::now();
    let value = match part {
        // Generator → KafkaSink (at-least-once) into `target`.
        "sink" => {
            let (config, _dir) = config(p)?;
            let env = StreamEnv::with_config(config);
            env.source(GeneratorSource::new(|i| word(i % 1000)).with_count(records))
                .uid("generator")
                .sink(KafkaSink::utf8(brokers()?, target))
                .uid("sink");
            env.execute("bench-kafka-sink")?;
            json!({ "records": records })
        }
        // KafkaSource(`target`) → key_by → count in ValueState, until every record is counted.
        "source" => {
            let (config, _dir) = config(p)?;
            let env = StreamEnv::with_config(config);
            let progress = Progress::new();
            env.source(KafkaSource::utf8(brokers()?).topics(&[target]))
                .uid("kafka")
                .key_by(|w: &String| w.clone())
                .process::<(), _>(Count::<String>::new(progress.clone()))
                .uid("count");
            let handle = env.execute_async("bench-kafka-source")?;
            // Counts are published per 65536 records and subtask: wait for all but the last chunks.
            let floor = records.saturating_sub(u64::from(p) * (1 << 16));
            let deadline = Instant::now() + Duration::from_secs(600);
            while progress.processed.load(Ordering::Relaxed) < floor {
                if Instant::now() > deadline || handle.status().is_terminal() {
                    bail!("the source read {} of {records} records", progress.processed.load(Ordering::Relaxed));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let elapsed = started.elapsed().as_secs_f64();
            let first = progress.first_record_us.load(Ordering::Relaxed) as f64 / 1e6;
            let counted = progress.processed.load(Ordering::Relaxed);
            handle.cancel();
            handle.wait();
            // From the job's start (consumer start-up included), and from its first record (by
            // then librdkafka has prefetched part of the topic, so this is partly the engine
            // draining its client's queue).
            return Ok(json!({
                "part": part, "parallelism": p, "records": counted, "seconds": elapsed,
                "records_per_second": counted as f64 / elapsed,
                "records_per_second_after_first_record": counted as f64 / (elapsed - first).max(1e-9),
                "first_record_after_s": first, "peak_rss_bytes": peak_rss(),
            }));
        }
        // The client alone: produce with one rdkafka producer as fast as it goes.
        "produce" => {
            let producer: ThreadedProducer<_> = ClientConfig::new()
                .set("bootstrap.servers", brokers()?)
                .set("linger.ms", "5")
                .set("enable.idempotence", "true")
                .create()?;
            for i in 0..records {
                let value = word(i % 1000);
                let mut record = BaseRecord::<(), _>::to(target).payload(&value);
                while let Err((_, back)) = producer.send(record) {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
            producer.flush(Duration::from_secs(120))?;
            json!({ "records": records })
        }
        // The client alone: read every record of `target` with one consumer.
        "consume" => {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers()?)
                .set("group.id", "weir-bench")
                .set("enable.auto.commit", "false")
                .create()?;
            let metadata = consumer.fetch_metadata(Some(target), Duration::from_secs(10))?;
            let mut tpl = TopicPartitionList::new();
            for t in metadata.topics() {
                for part in t.partitions() {
                    tpl.add_partition_offset(t.name(), part.id(), Offset::Beginning)?;
                }
            }
            consumer.assign(&tpl)?;
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(600);
            while n < records && Instant::now() < deadline {
                if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                    n += 1;
                }
            }
            json!({ "records": n })
        }
        // Generator → PostgresSink (exactly-once) into table `target`: inserts of 1000 words, or
        // upserts of a new key per record (what an upsert sink keeps of its open transaction is
        // what grows then).
        "postgres" | "postgres-upsert" => {
            let (config, _dir) = config(p)?;
            let url = script("postgres.sh", &["url"])?;
            let sink = if part == "postgres" {
                let sink = PostgresSink::insert(url.as_str(), target, &["k", "n"], |i: &u64| {
                    vec![word(i % 1000).into(), (*i).into()]
                });
                sink.create_table("k TEXT NOT NULL, n BIGINT NOT NULL").map_err(|e| anyhow::anyhow!("{e}"))?;
                sink
            } else {
                let sink = PostgresSink::insert(url.as_str(), target, &["k", "n"], |i: &u64| {
                    vec![word(*i).into(), (*i).into()]
                })
                .upsert(&["k"]);
                sink.create_table("k TEXT PRIMARY KEY, n BIGINT NOT NULL").map_err(|e| anyhow::anyhow!("{e}"))?;
                sink
            };
            let env = StreamEnv::with_config(config);
            env.source(GeneratorSource::counter().with_count(records)).uid("generator").sink(sink).uid("postgres");
            env.execute("bench-postgres")?;
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            let rows: i64 = client.query_one(&format!("SELECT count(*) FROM \"{target}\""), &[])?.get(0);
            if rows as u64 != records {
                bail!("the table holds {rows} rows for {records} records");
            }
            json!({ "records": records })
        }
        // The client alone: the same multi-row inserts in one transaction, no engine.
        "postgres-client" => {
            let url = script("postgres.sh", &["url"])?;
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            client.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS \"{target}\" (k TEXT NOT NULL, n BIGINT NOT NULL)"
            ))?;
            let mut tx = client.transaction()?;
            let rows: Vec<(String, i64)> = (0..records).map(|i| (word(i % 1000), i as i64)).collect();
            for chunk in rows.chunks(1000) {
                let values: Vec<String> =
                    (0..chunk.len()).map(|r| format!("(${}, ${})", 2 * r + 1, 2 * r + 2)).collect();
                let sql = format!("INSERT INTO \"{target}\" (k, n) VALUES {}", values.join(", "));
                let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    chunk.iter().flat_map(|(k, n)| [k as &(dyn postgres::types::ToSql + Sync), n as _]).collect();
                tx.execute(sql.as_str(), &params)?;
            }
            tx.commit()?;
            json!({ "records": records })
        }
        other => bail!("unknown connectors part '{other}'"),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let records = value["records"].as_u64().unwrap_or(0);
    Ok(json!({
        "part": part, "parallelism": p, "records": records, "seconds": elapsed,
        "records_per_second": records as f64 / elapsed, "peak_rss_bytes": peak_rss(),
    }))
}

fn brokers() -> anyhow::Result<String> {
    script("kafka.sh", &["brokers"])
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

fn child(exe: &std::path::Path, part: &str, p: u32, records: u64, target: &str) -> anyhow::Result<Value> {
    let out = Command::new(exe)
        .args(["--connector", &format!("{part},{p},{records},{target}")])
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!("{part} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8(out.stdout)?;
    let v: Value = serde_json::from_str(line.trim()).with_context(|| format!("{part}: {line}"))?;
    eprintln!(
        "{part:<16} p={p}: {:>9.0} records/s ({} records in {:.2} s), peak RSS {:.1} MB",
        v["records_per_second"].as_f64().unwrap_or(0.0),
        v["records"],
        v["seconds"].as_f64().unwrap_or(0.0),
        v["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1e6
    );
    Ok(v)
}

/// The whole suite: `repeat` runs of each part, each in a child process.
pub fn run(records: u64, pg_rows: u64, repeat: usize) -> anyhow::Result<Value> {
    script("kafka.sh", &["start"])?;
    script("postgres.sh", &["start"])?;
    let exe = std::env::current_exe()?;
    let mut runs: Vec<Value> = Vec::new();
    for _ in 0..repeat.max(1) {
        // The Weir sink writes the topic the sources then read.
        let topic = unique("bench");
        script("kafka.sh", &["create-topic", &topic, "2"])?;
        runs.push(child(&exe, "sink", 1, records, &topic)?);
        runs.push(child(&exe, "source", 1, records, &topic)?);
        runs.push(child(&exe, "source", 2, records, &topic)?);
        runs.push(child(&exe, "consume", 1, records, &topic)?);
        let raw = unique("bench_raw");
        script("kafka.sh", &["create-topic", &raw, "2"])?;
        runs.push(child(&exe, "produce", 1, records, &raw)?);
        runs.push(child(&exe, "postgres", 1, pg_rows, &unique("bench_pg"))?);
        runs.push(child(&exe, "postgres-upsert", 1, pg_rows, &unique("bench_pg_up"))?);
        runs.push(child(&exe, "postgres-client", 1, pg_rows, &unique("bench_pg_raw"))?);
    }
    // Medians per part and parallelism.
    let mut medians = Vec::new();
    let mut keys: Vec<(String, u64)> = runs
        .iter()
        .map(|r| (r["part"].as_str().unwrap_or("").to_string(), r["parallelism"].as_u64().unwrap_or(0)))
        .collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    for (part, p) in keys {
        let mut these: Vec<&Value> =
            runs.iter().filter(|r| r["part"] == part.as_str() && r["parallelism"] == p).collect();
        these.sort_by(|a, b| {
            a["records_per_second"].as_f64().unwrap_or(0.0).total_cmp(&b["records_per_second"].as_f64().unwrap_or(0.0))
        });
        let median = these[these.len() / 2];
        medians.push(json!({
            "part": part, "parallelism": p,
            "records_per_second": median["records_per_second"],
            "peak_rss_bytes": median["peak_rss_bytes"],
            "runs_records_per_second": these.iter().map(|r| r["records_per_second"].clone()).collect::<Vec<_>>(),
        }));
    }
    Ok(json!({ "records": records, "postgres_rows": pg_rows, "medians": medians, "runs": runs }))
}

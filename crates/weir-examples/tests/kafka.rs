//! The Kafka source against a real broker (tansu on loopback, `scripts/kafka.sh`), with records
//! produced by an independent client: kill -9 at random moments, rescaling, partitions found
//! while running, and the failures a user can cause.

mod common;

use common::kafka::{kafka, word_lines};
use common::wait_for;
use common::{committed_lines, diff, latest_checkpoint, word_count_truth, Collect, Rng};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use weir_kafka::KafkaSource;

/// One run: returns the kills, the restores, and the kills that hit while records were flowing
/// (some, not all, committed).
fn kill_iteration(seed: u64) -> (u32, u32, u32) {
    let mut rng = Rng::new(seed);
    let kafka = kafka();
    let partitions = 1 + rng.below(3) as u32;
    let topic = kafka.create_topic("kill", partitions);
    let vocabulary = ["a", "b", "c", "d", "e", "f", "g"];
    let words: Vec<&str> = (0..1500).map(|_| vocabulary[rng.below(7) as usize]).collect();
    let producer = kafka.produce_at(&topic, 600.0, word_lines(&words));
    let dir = tempfile::tempdir().unwrap();
    let (ck, out) = (dir.path().join("ck"), dir.path().join("out"));
    let parallelism = 1 + rng.below(2);
    let want = word_count_truth(&words);
    let (mut kills, mut restores, mut mid_stream) = (0u32, 0u32, 0u32);
    loop {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_word-count"));
        cmd.args(["-p", &parallelism.to_string()]).args([
            "-D",
            "execution.checkpointing.interval=50 ms",
            "-D",
            "weir.rest.enabled=false",
        ]);
        if let Some(path) = latest_checkpoint(&ck) {
            cmd.args(["-s", path.to_str().unwrap()]);
            restores += 1;
        }
        cmd.args(["--kafka-brokers", &kafka.brokers, "--topic", &topic, "--quiet"]).args([
            "--output",
            out.to_str().unwrap(),
            "--checkpoints",
            ck.to_str().unwrap(),
        ]);
        let mut child = cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let last = kills >= 3 && restores > 0;
        if last {
            wait_for("every record counted", || committed_lines(&out).len() >= want.len());
            // Anything read twice would be committed by now.
            std::thread::sleep(Duration::from_millis(300));
        } else {
            std::thread::sleep(Duration::from_millis(200 + rng.below(1000)));
            let committed = committed_lines(&out).len();
            mid_stream += u32::from(committed > 0 && committed < want.len());
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if last {
            break;
        }
    }
    producer.join().unwrap();
    let got = committed_lines(&out);
    assert!(got == want, "seed {seed}, {partitions} partitions, p={parallelism}: {}", diff(&got, &want));
    (kills, restores, mid_stream)
}

#[test]
fn kill_dash_nine_kafka_to_exactly_once_files() {
    let seed0 = std::env::var("WEIR_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6b61666b61);
    let runs = std::env::var("WEIR_KILL_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut mid_stream = 0;
    for i in 0..runs {
        let (kills, restores, mid) = kill_iteration(seed0 + i);
        assert!(restores > 0, "run {i}: no restore from a checkpoint ({kills} kills)");
        mid_stream += mid;
    }
    assert!(mid_stream >= runs as u32, "only {mid_stream} kills in {runs} runs hit while records flowed");
}

/// A job reading `source` into an in-memory sink at parallelism `p`, restored from `savepoint`.
fn start(dir: &Path, source: KafkaSource<String>, p: u32, savepoint: Option<&Path>, sink: &Collect) -> weir::JobHandle {
    let parallelism = format!("parallelism.default={p}");
    let env = common::job_env(common::Backend::HashMap, dir, savepoint, &[parallelism.as_str()]);
    env.source(source).uid("kafka").sink(sink.clone()).uid("sink");
    env.execute_async("kafka-rescale").unwrap()
}

#[test]
fn a_4_partition_topic_rescales_1_to_3_to_2_and_new_topics_are_found_while_running() {
    let kafka = kafka();
    let topic = kafka.create_topic("rescale", 4);
    let dir = tempfile::tempdir().unwrap();
    let source = KafkaSource::utf8(kafka.brokers.as_str())
        .topic_pattern(&format!("{topic}(-new)?"))
        .unwrap()
        .partition_discovery_interval(Some(Duration::from_millis(200)));
    let sink = Collect::default();
    let produce = |round: u32| {
        for partition in 0..4 {
            let lines: Vec<String> = (0..25).map(|i| format!("r{round}-p{partition}-{i}")).collect();
            kafka.produce(&topic, Some(partition), &lines);
        }
    };
    let mut want: Vec<String> = Vec::new();
    let mut savepoint: Option<PathBuf> = None;
    for (round, p) in [(0u32, 1u32), (1, 3), (2, 2)] {
        let handle = start(dir.path(), source.clone(), p, savepoint.as_deref(), &sink);
        produce(round);
        want.extend((0..4).flat_map(|p| (0..25).map(move |i| format!("r{round}-p{p}-{i}"))));
        if round == 1 {
            // A topic that matches the pattern, created while the job runs: read from its start.
            let new = format!("{topic}-new");
            common::kafka::kafka_script(None, &["create-topic", &new, "2"]);
            for partition in 0..2 {
                let lines: Vec<String> = (0..10).map(|i| format!("new-p{partition}-{i}")).collect();
                kafka.produce(&new, Some(partition), &lines);
                want.extend(lines);
            }
        }
        wait_for("this round's records", || sink.lines().len() >= want.len());
        let sp = dir.path().join(format!("sp{round}"));
        savepoint = Some(common::stop_with_savepoint(handle, &sp, weir::SavepointFormat::Canonical, false));
    }
    let mut got = sink.lines();
    got.sort();
    want.sort();
    assert!(got == want, "{}", diff(&got, &want));
}

/// Runs a job reading `source` that must fail; returns the failure's message.
fn failure(source: KafkaSource<String>) -> String {
    let env = common::test_env(&[("restart-strategy.type", "none")]);
    env.source(source).uid("kafka").sink(Collect::default());
    format!("{:?}", env.execute_async("kafka-failure").unwrap().wait())
}

#[test]
fn a_missing_topic_an_unreachable_broker_and_an_undeserializable_record_fail_clearly() {
    let kafka = kafka();
    let missing = failure(KafkaSource::utf8(kafka.brokers.as_str()).topics(&["no-such-topic-here"]));
    assert!(missing.contains("topic 'no-such-topic-here' does not exist on the Kafka brokers 127.0.0.1"), "{missing}");

    let unreachable = failure(KafkaSource::utf8("127.0.0.1:1").topics(&["word"]));
    assert!(unreachable.contains("Kafka brokers 127.0.0.1:1 did not answer"), "{unreachable}");

    let topic = kafka.create_topic("bad", 1);
    kafka.produce(&topic, Some(0), &["{\"word\":\"a\",\"frequency\":1}".to_string(), "not json".to_string()]);
    let env = common::test_env(&[("restart-strategy.type", "fixed-delay")]);
    env.source(KafkaSource::<weir_examples::WordCount>::json(kafka.brokers.as_str()).topics(&[&topic]))
        .uid("kafka")
        .map(|w: weir_examples::WordCount| w.to_string())
        .sink(Collect::default());
    let outcome = format!("{:?}", env.execute_async("bad").unwrap().wait());
    assert!(
        outcome.contains(&format!("cannot deserialize the record at offset 1 of partition {topic}-0"))
            && outcome.contains("not a JSON document"),
        "a bad record fails the job at once, even with a restart strategy: {outcome}"
    );

    // Routed to a side output instead, the bad record is kept there and the job goes on.
    kafka.produce(&topic, Some(0), &["{\"word\":\"b\",\"frequency\":2}".to_string()]);
    let env = common::test_env(&[]);
    let bad = weir::OutputTag::<weir_kafka::UndeserializableRecord>::new("bad");
    let (good, refused) = (Collect::default(), Collect::default());
    let words = env
        .source(
            KafkaSource::<weir_examples::WordCount>::json(kafka.brokers.as_str())
                .topics(&[&topic])
                .undeserializable_to(bad.clone()),
        )
        .uid("kafka");
    words
        .get_side_output(&bad)
        .map(|r: weir_kafka::UndeserializableRecord| {
            format!(
                "{}-{}@{}: {:?}",
                r.topic,
                r.partition,
                r.offset,
                String::from_utf8_lossy(&r.value.unwrap_or_default())
            )
        })
        .sink(refused.clone());
    words.map(|w: weir_examples::WordCount| w.to_string()).sink(good.clone());
    let handle = env.execute_async("side").unwrap();
    wait_for("both good records", || good.lines().len() == 2);
    handle.cancel();
    assert_eq!(handle.wait().status, weir::JobStatus::Canceled, "the job did not fail");
    assert_eq!(good.lines(), ["WordCount{word='a', frequency=1}", "WordCount{word='b', frequency=2}"]);
    assert_eq!(refused.lines(), [format!("{topic}-0@1: \"not json\"")]);
}

#[test]
fn the_at_least_once_sink_delivers_every_record_through_failures() {
    // Kafka → map (which fails twice, at random records) → Kafka, checkpointing every 30 ms:
    // every input record is in the output topic, some perhaps twice.
    let kafka = kafka();
    let (input, output) = (kafka.create_topic("sink-in", 2), kafka.create_topic("sink-out", 3));
    let records: Vec<String> = (0..2000).map(|i| format!("record-{i}")).collect();
    kafka.produce(&input, None, &records);
    let dir = tempfile::tempdir().unwrap();
    let env = common::job_env(
        common::Backend::HashMap,
        dir.path(),
        None,
        &[
            "execution.checkpointing.interval=30 ms",
            "restart-strategy.type=fixed-delay",
            "restart-strategy.fixed-delay.attempts=5",
            "restart-strategy.fixed-delay.delay=100 ms",
        ],
    );
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (f, s) = (failures.clone(), seen.clone());
    env.source(KafkaSource::utf8(kafka.brokers.as_str()).topics(&[&input]).partition_discovery_interval(None))
        .uid("in")
        .map(move |r: String| {
            let n = s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if (n == 700 || n == 1900) && f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                panic!("injected failure at record {n}");
            }
            r
        })
        .sink(weir_kafka::KafkaSink::utf8(kafka.brokers.as_str(), &output))
        .uid("out");
    let handle = env.execute_async("kafka-sink").unwrap();
    let mut got = kafka.consume(&output, 3, records.len());
    handle.cancel();
    assert_eq!(failures.load(std::sync::atomic::Ordering::SeqCst), 2, "both failures happened");
    got.sort();
    got.dedup();
    let mut want = records.clone();
    want.sort();
    assert!(got == want, "{}", diff(&got, &want));
}

#[test]
fn brokers_unreachable_at_start_then_frozen_while_running_lose_nothing() {
    // A broker of its own (this test starts it late and freezes it), on another port.
    let port = 9094;
    common::kafka::kafka_script(Some(port), &["stop"]);
    let broker = common::kafka::Kafka::on_port(Some(port));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let env = common::job_env(
        common::Backend::HashMap,
        dir.path(),
        None,
        &[
            "execution.checkpointing.interval=50 ms",
            "restart-strategy.type=fixed-delay",
            "restart-strategy.fixed-delay.attempts=1000",
            "restart-strategy.fixed-delay.delay=200 ms",
        ],
    );
    let topic = "frozen";
    env.source(KafkaSource::utf8(broker.brokers.as_str()).topics(&[topic]))
        .uid("kafka")
        .sink(weir::connectors::FileSink::new(&out))
        .uid("sink");
    let handle = env.execute_async("kafka-faults").unwrap();
    // Unreachable: the job fails and restarts until the broker is there.
    wait_for("a restart", || handle.restarts() > 0);
    common::kafka::kafka_script(Some(port), &["start"]);
    common::kafka::kafka_script(Some(port), &["create-topic", topic, "1"]);
    let lines: Vec<String> = (0..400).map(|i| format!("line-{i}")).collect();
    broker.produce(topic, Some(0), &lines[..200]);
    wait_for("the first records committed", || committed_lines(&out).len() >= 100);
    // Frozen: it accepts connections but answers nothing for 3 s.
    common::kafka::kafka_script(Some(port), &["pause"]);
    std::thread::sleep(Duration::from_secs(3));
    common::kafka::kafka_script(Some(port), &["resume"]);
    broker.produce(topic, Some(0), &lines[200..]);
    wait_for("every record committed", || committed_lines(&out).len() >= lines.len());
    std::thread::sleep(Duration::from_millis(300));
    handle.cancel();
    handle.wait();
    common::kafka::kafka_script(Some(port), &["stop"]);
    let mut want = lines;
    want.sort();
    let got = committed_lines(&out);
    assert!(got == want, "{}", diff(&got, &want));
}

#[test]
fn committed_group_offsets_are_where_a_fresh_job_starts_when_asked() {
    // Offsets reach the group when checkpoints complete; a job started without a snapshot, with
    // StartingOffsets::Committed, starts there (a partition without a commit: at `reset`).
    let kafka = kafka();
    let topic = kafka.create_topic("committed", 1);
    let group = format!("group-{topic}");
    let run = |records: &[&str], end: i64| {
        kafka.produce(&topic, Some(0), &records.iter().map(|r| r.to_string()).collect::<Vec<_>>());
        let dir = tempfile::tempdir().unwrap();
        let env =
            common::job_env(common::Backend::HashMap, dir.path(), None, &["execution.checkpointing.interval=30 ms"]);
        let sink = Collect::default();
        let source = KafkaSource::utf8(kafka.brokers.as_str())
            .topics(&[&topic])
            .group_id(&group)
            .starting_offsets(weir_kafka::StartingOffsets::Committed { reset: weir_kafka::Reset::Earliest });
        env.source(source).uid("kafka").sink(sink.clone()).uid("sink");
        let handle = env.execute_async("committed").unwrap();
        wait_for("the group's committed offset", || kafka.committed(&group, &topic, 1) == [end]);
        handle.cancel();
        handle.wait();
        sink.lines()
    };
    assert_eq!(run(&["one", "two", "three"], 3), ["one", "two", "three"], "no commit yet: from the earliest offset");
    assert_eq!(run(&["four", "five"], 5), ["four", "five"], "from the group's committed offset");
}

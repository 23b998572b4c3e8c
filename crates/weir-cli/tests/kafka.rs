//! The seed scenario on a Kafka broker, through the `weir` CLI, with records produced by an
//! independent client (see `scripts/kafka.sh`).

#[path = "../../weir-examples/tests/common/kafka.rs"]
mod kafka;
mod support;

use kafka::{kafka, word_lines};
use std::time::Duration;
use support::*;

#[test]
fn seed_scenario_on_kafka_savepoint_stop_and_restore_through_the_cli() {
    let kafka = kafka();
    let topic = kafka.create_topic("word", 1);
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let (ck, sp) = (dir.path().join("ck"), dir.path().join("savepoints"));
    let out1 = dir.path().join("out1");
    let common = [
        "--kafka-brokers",
        kafka.brokers.as_str(),
        "--topic",
        topic.as_str(),
        "--checkpoints",
        ck.to_str().unwrap(),
        "--quiet",
    ];
    let mut args = vec!["word-count", "--output", out1.to_str().unwrap()];
    args.extend_from_slice(&common);
    let (job, _) = weir.run_detached_logging(&args, "info");

    kafka.produce(&topic, None, &word_lines(&["a", "b", "a"]));
    wait_for("a=1 b=1 a=2 committed", || committed(&out1).len() == 3);
    let stdout = weir.ok(&["savepoint", &job, sp.to_str().unwrap()]);
    let savepoint = savepoint_path(&stdout);
    assert!(savepoint.join("_metadata").is_file());

    kafka.produce(&topic, None, &word_lines(&["b", "a"]));
    wait_for("all five totals committed", || committed(&out1).len() == 5);
    // Offsets reach the group when checkpoints complete (for monitoring).
    wait_for("the group's committed offset", || kafka.committed("word-count", &topic, 1) == vec![5]);
    weir.ok(&["stop", &job, "--savepoint-path", sp.to_str().unwrap()]);
    weir.wait_gone(&job);
    assert_eq!(committed(&out1), totals(&[("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]));

    // Resume from the first savepoint, with the path exactly as printed: the consumer seeks to the
    // restored offset and reads exactly the two later records.
    let out2 = dir.path().join("out2");
    let printed = stdout.lines().find_map(|l| l.split_once("Path: ")).map(|(_, p)| p.to_string()).unwrap();
    let mut args = vec!["-s", printed.as_str(), "word-count", "--output", out2.to_str().unwrap()];
    args.extend_from_slice(&common);
    let (job2, log) = weir.run_detached_logging(&args, "info");
    wait_for("the replayed totals", || committed(&out2).len() == 2);
    std::thread::sleep(Duration::from_millis(500));
    weir.ok(&["cancel", &job2]);
    assert_eq!(committed(&out2), totals(&[("b", 2), ("a", 3)]), "nothing counted twice");
    let log = std::fs::read_to_string(log).unwrap();
    let line =
        format!("Consumer subtask 0 will start reading 1 partitions with offsets in restored state: {{{topic}-0=3}}");
    assert!(log.contains(&line), "the restore log names the offsets:\n{log}");
}

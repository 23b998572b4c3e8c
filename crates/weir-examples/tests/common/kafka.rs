//! The Kafka broker of the tests (tansu on loopback, `scripts/kafka.sh`) and an independent client
//! (Python confluent-kafka, `scripts/kafka-client.py`). Shared by the example and CLI tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub struct Kafka {
    pub brokers: String,
    python: PathBuf,
    root: PathBuf,
    port: Option<u16>,
}

/// Starts the shared broker (installing it when missing) once per test process.
pub fn kafka() -> &'static Kafka {
    static KAFKA: OnceLock<Kafka> = OnceLock::new();
    KAFKA.get_or_init(|| Kafka::on_port(None))
}

/// Runs `scripts/kafka.sh ARGS` for the broker on `port` (the shared one: `None`); its stdout.
pub fn kafka_script(port: Option<u16>, args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka.sh");
    let mut cmd = Command::new(&script);
    if let Some(port) = port {
        cmd.env("WEIR_KAFKA_PORT", port.to_string()).env_remove("WEIR_KAFKA_DIR");
    }
    let out = cmd.args(args).stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "scripts/kafka.sh {args:?} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Kafka {
    /// The broker on `port` (not started: see [`kafka_script`]), with the test client.
    pub fn on_port(port: Option<u16>) -> Kafka {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        if port.is_none() {
            kafka_script(None, &["start"]);
        }
        Kafka {
            brokers: kafka_script(port, &["brokers"]),
            python: PathBuf::from(kafka_script(None, &["python"])),
            root,
            port,
        }
    }

    /// Creates a topic with a name no other test uses.
    pub fn create_topic(&self, prefix: &str, partitions: u32) -> String {
        let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        kafka_script(self.port, &["create-topic", &name, &partitions.to_string()]);
        name
    }

    /// Produces one record per line (to `partition`, or as the client's partitioner decides).
    pub fn produce(&self, topic: &str, partition: Option<u32>, lines: &[String]) {
        let out = self.client(&self.produce_args(topic, partition, None), Some(lines.join("\n")));
        assert!(out.is_empty(), "{out}");
    }

    /// Produces in the background at `rate` records per second; join the handle to wait.
    pub fn produce_at(&'static self, topic: &str, rate: f64, lines: Vec<String>) -> std::thread::JoinHandle<()> {
        let args = self.produce_args(topic, None, Some(rate));
        std::thread::spawn(move || {
            let out = self.client(&args, Some(lines.join("\n")));
            assert!(out.is_empty(), "{out}");
        })
    }

    fn produce_args(&self, topic: &str, partition: Option<u32>, rate: Option<f64>) -> Vec<String> {
        let mut args = vec!["produce".to_string(), self.brokers.clone(), topic.to_string()];
        if let Some(p) = partition {
            args.extend(["--partition".to_string(), p.to_string()]);
        }
        if let Some(r) = rate {
            args.extend(["--rate".to_string(), r.to_string()]);
        }
        args
    }

    /// The group's committed offsets of partitions `0..n` (negative: none).
    pub fn committed(&self, group: &str, topic: &str, n: u32) -> Vec<i64> {
        let out =
            self.client(&["committed".into(), self.brokers.clone(), group.into(), topic.into(), n.to_string()], None);
        out.split_whitespace().map(|o| o.parse().unwrap()).collect()
    }

    /// Every value in partitions `0..partitions` of `topic`, once at least `at_least` are there.
    pub fn consume(&self, topic: &str, partitions: u32, at_least: usize) -> Vec<String> {
        let args = [
            "consume".to_string(),
            self.brokers.clone(),
            topic.to_string(),
            partitions.to_string(),
            "--at-least".to_string(),
            at_least.to_string(),
        ];
        self.client(&args, None).lines().map(str::to_string).collect()
    }

    fn client(&self, args: &[String], stdin: Option<String>) -> String {
        let mut child = Command::new(&self.python)
            .arg(self.root.join("scripts/kafka-client.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kafka-client.py {args:?} failed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

/// JSON lines of the word-count job, one word each.
pub fn word_lines(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| format!("{{\"word\":\"{w}\",\"frequency\":1}}")).collect()
}

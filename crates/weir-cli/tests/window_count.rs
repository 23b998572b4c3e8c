//! The `window-count` example through the `weir` CLI, as an operator runs it: open windows kept by
//! a plain stop and fired by the job restored from its savepoint at another parallelism (1 → 3 →
//! 2), late records written once (and still late right after a restore), and `stop --drain`
//! firing and committing what is left.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use support::*;

struct Job<'a> {
    weir: &'a Weir,
    dir: &'a Path,
    backend: Backend,
}

impl Job<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn append(&self, events: &[(&str, i64)]) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.path("events.jsonl")).unwrap();
        for (word, ts) in events {
            writeln!(f, "{{\"word\":\"{word}\",\"ts\":{ts}}}").unwrap();
        }
    }

    /// `weir run [-s SNAPSHOT] -p P window-count ...`, detached; returns the job id.
    fn start(&self, snapshot: Option<&Path>, parallelism: u32) -> String {
        let p = parallelism.to_string();
        let mut args: Vec<String> = Vec::new();
        if let Some(s) = snapshot {
            args.extend(["-s".into(), s.display().to_string()]);
        }
        args.extend(["-p".into(), p]);
        args.extend(self.backend.flags(self.dir));
        args.extend(["-D".into(), "execution.checkpointing.interval=100 ms".into()]);
        args.extend(["-D".into(), "pipeline.auto-watermark-interval=20 ms".into()]);
        args.push("window-count".into());
        for (flag, value) in [
            ("--input", self.path("events.jsonl")),
            ("--output", self.path("out")),
            ("--late-output", self.path("late")),
            ("--checkpoints", self.path("ck")),
        ] {
            args.extend([flag.to_string(), value.display().to_string()]);
        }
        args.push("--quiet".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.weir.run_detached(&args)
    }

    /// `weir stop [--drain]`; returns the savepoint's path as printed.
    fn stop(&self, job: &str, drain: bool, name: &str) -> PathBuf {
        let target = self.path(name);
        let mut args = vec!["stop", job, "-p", target.to_str().unwrap(), "--type", self.backend.savepoint_type()];
        if drain {
            args.push("--drain");
        }
        let stopped = self.weir.ok(&args);
        self.weir.wait_gone(job);
        savepoint_path(&stopped)
    }

    fn counts(&self) -> Vec<String> {
        committed(&self.path("out"))
    }

    fn late(&self) -> Vec<String> {
        committed(&self.path("late"))
    }

    fn wait_for_count(&self, line: &str) {
        wait_for(line, || self.counts().iter().any(|l| l == line));
    }
}

fn count(word: &str, start: i64, end: i64, n: u64) -> String {
    format!("WindowCount{{word='{word}', window=[{start}, {end}), count={n}}}")
}

fn event(word: &str, ts: i64) -> String {
    format!("{{\"word\":\"{word}\",\"ts\":{ts}}}")
}

fn windows_fire_once_across_stops_rescales_and_a_drain(backend: Backend) {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let job = Job { weir: &weir, dir: dir.path(), backend };

    // p=1. 10 s windows, watermarks 2 s behind: b@15000 moves event time to 12 999, so
    // [0, 10 000) fires; [10 000, 20 000) stays open.
    let id = job.start(None, 1);
    job.append(&[("a", 1000), ("a", 2000), ("b", 3000), ("a", 12_000), ("b", 15_000)]);
    job.wait_for_count(&count("b", 0, 10_000, 1));
    job.append(&[("a", 4000)]); // its window has fired: late
    wait_for("the late record", || job.late() == vec![event("a", 4000)]);
    let first = job.stop(&id, false, "sp1");
    assert!(
        !job.counts().iter().any(|l| l.contains("[10000, 20000)")),
        "a plain stop fires nothing: {:?}",
        job.counts()
    );

    // p=3 from the savepoint. The first record is late for a window that fired before the stop:
    // restored event time keeps it late. c@25000 fires the open window, with exact counts.
    let id = job.start(Some(&first), 3);
    job.append(&[("a", 5000), ("a", 16_000), ("c", 25_000)]);
    job.wait_for_count(&count("a", 10_000, 20_000, 2));
    wait_for("the second late record", || job.late().len() == 2);
    let second = job.stop(&id, false, "sp2");

    // p=2 from the second savepoint, then a drain: event time ends, every open window fires and
    // the final savepoint commits it.
    let id = job.start(Some(&second), 2);
    job.append(&[("b", 27_000), ("x", 41_000)]);
    job.wait_for_count(&count("c", 20_000, 30_000, 1));
    assert!(!job.counts().iter().any(|l| l.contains("word='x'")), "x's window is open until the drain");
    let drained = job.stop(&id, true, "sp3");

    let mut want = vec![
        count("a", 0, 10_000, 2),
        count("b", 0, 10_000, 1),
        count("a", 10_000, 20_000, 2),
        count("b", 10_000, 20_000, 1),
        count("b", 20_000, 30_000, 1),
        count("c", 20_000, 30_000, 1),
        count("x", 40_000, 50_000, 1),
    ];
    want.sort();
    assert_eq!(job.counts(), want, "every window once, with its exact count");
    let mut late = vec![event("a", 4000), event("a", 5000)];
    late.sort();
    assert_eq!(job.late(), late, "late records once each");

    // A drained savepoint holds no end-of-time watermark: a job restored from it counts new
    // records (as Flink's would) instead of finding them all late.
    let id = job.start(Some(&drained), 1);
    job.append(&[("y", 52_000), ("z", 70_000)]);
    job.wait_for_count(&count("y", 50_000, 60_000, 1));
    weir.ok(&["cancel", &id]);
    weir.wait_gone(&id);
    assert_eq!(job.late(), late);
}

#[test]
fn windows_fire_once_across_stops_rescales_and_a_drain_hashmap() {
    windows_fire_once_across_stops_rescales_and_a_drain(Backend::HashMap);
}

#[test]
fn windows_fire_once_across_stops_rescales_and_a_drain_rocksdb() {
    windows_fire_once_across_stops_rescales_and_a_drain(Backend::RocksDb);
}

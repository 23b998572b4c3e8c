//! An idle job stays idle: waiting for input while operators ask for periodic wake-ups must not
//! become a busy loop. Alone in its test binary, so the process's CPU time is the job's.

mod common;

use std::time::{Duration, Instant};
use weir::connectors::FileSource;
use weir::{BoxError, CountAggregate, JobStatus, SinkFunction, TumblingEventTimeWindows, WatermarkStrategy};

/// CPU time this process has used, in seconds (Linux: utime + stime in /proc/self/stat).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[derive(Clone)]
struct Discard;

impl SinkFunction<u64> for Discard {
    fn invoke(&mut self, _: u64) -> Result<(), BoxError> {
        Ok(())
    }
}

#[test]
fn an_idle_job_with_periodic_watermarks_does_not_spin() {
    // A followed file read at p=2: subtask 1 has nothing to read (its source is exhausted at
    // once) while its chain still asks for periodic watermarks, and subtask 0 waits for lines.
    // Over two idle seconds the job must use a small fraction of one core.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::write(&input, "1\n").unwrap();
    let env = common::test_env(&[("parallelism.default", "2"), ("pipeline.auto-watermark-interval", "10 ms")]);
    let strategy =
        WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|l: &String, _| l.len() as i64);
    env.from_source(FileSource::follow(&input), strategy)
        .key_by(|l: &String| l.clone())
        .window(TumblingEventTimeWindows::of(Duration::from_secs(1)))
        .aggregate(CountAggregate)
        .sink(Discard);
    let handle = env.execute_async("idle").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds() - cpu;
    assert_eq!(handle.status(), JobStatus::Running, "the job ran all along");
    handle.cancel();
    handle.wait();
    assert!(used < 0.5, "an idle job used {used:.2} s of CPU in {:.1} s", wall.elapsed().as_secs_f64());
}

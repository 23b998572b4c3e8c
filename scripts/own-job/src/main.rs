//! A job of one's own, outside Weir's workspace: a running count per key in keyed state, written
//! exactly once to files. `scripts/own-job.sh` builds and operates it; docs/write-your-own-job.md
//! walks through it.

use std::time::Duration;
use weir::connectors::{FileSink, GeneratorSource};
use weir::{BoxError, Collector, Context, KeyedProcessFunction, RuntimeContext, StreamEnv, ValueState};
use weir::ValueStateDescriptor;

/// Counts the records of each key; the count lives in keyed state, so checkpoints and savepoints
/// carry it and a restored job counts on.
#[derive(Clone, Default)]
struct CountPerKey {
    count: Option<ValueState<u64>>,
}

impl KeyedProcessFunction<u64, (u64, u64), String> for CountPerKey {
    fn open(&mut self, ctx: &mut RuntimeContext<'_, u64>) -> Result<(), BoxError> {
        self.count = Some(ctx.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }

    fn process(
        &mut self,
        (key, _): (u64, u64),
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, String>,
    ) -> Result<(), BoxError> {
        let count = self.count.ok_or("count state used before open")?;
        let n = count.value(ctx)?.unwrap_or(0) + 1;
        count.update(ctx, n)?;
        out.collect(format!("{key} {n}"));
        Ok(())
    }
}

fn main() -> Result<(), weir::Error> {
    // Weir's flags (-s, -n, -p, -D key=value, --claim-mode) come first; the rest is the job's.
    let (mut env, args) = StreamEnv::from_args()?;
    let output = args.first().cloned().unwrap_or_else(|| "out".to_string());
    env.enable_checkpointing(Duration::from_secs(1));
    env.set(weir::config_keys::CHECKPOINT_DIR, "checkpoints")?;
    env.source(GeneratorSource::keyed(10).with_rate(200.0))
        .uid("numbers")
        .key_by(|record: &(u64, u64)| record.0)
        .process(CountPerKey::default())
        .uid("count")
        .sink(FileSink::new(output))
        .uid("sink");
    env.execute("my-job")?;
    Ok(())
}

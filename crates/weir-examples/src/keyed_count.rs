//! The crash-test job's logic: a running count per key in keyed `ValueState`, emitted as
//! `"<key> <count>"`. With exactly-once, the output is known in advance ([`expected_output`]).

use std::collections::BTreeMap;
use weir::{BoxError, Collector, Context, KeyedProcessFunction, RuntimeContext, ValueState, ValueStateDescriptor};

#[derive(Clone, Default)]
pub struct CountPerKey {
    count: Option<ValueState<u64>>,
    /// Fails the task when a key's count reaches this (an injected failure, for tests of what
    /// a failing job reports); after the restart the key reaches it again.
    fail_at_count: Option<u64>,
}

impl CountPerKey {
    /// A counter that fails whenever a key's count reaches `count`.
    pub fn failing_at(count: Option<u64>) -> CountPerKey {
        CountPerKey { count: None, fail_at_count: count }
    }
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
        if self.fail_at_count == Some(n) {
            return Err(format!("injected failure: key {key} reached count {n}").into());
        }
        count.update(ctx, n)?;
        out.collect(format!("{key} {n}"));
        Ok(())
    }
}

/// The sorted output of counting `records` generated records `(i % keys, i)`: the lines `k 1` ...
/// `k n_k` once each.
pub fn expected_output(records: u64, keys: u64) -> Vec<String> {
    let mut per_key: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..records {
        *per_key.entry(i % keys.max(1)).or_default() += 1;
    }
    let mut lines: Vec<String> = per_key.iter().flat_map(|(k, n)| (1..=*n).map(move |c| format!("{k} {c}"))).collect();
    lines.sort();
    lines
}

#[cfg(test)]
mod tests {
    #[test]
    fn expected_output_counts_each_key() {
        assert_eq!(super::expected_output(5, 2), vec!["0 1", "0 2", "0 3", "1 1", "1 2"]);
    }
}

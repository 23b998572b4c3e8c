//! Work spread over the machine's cores, for what a subtask does while its job is not running:
//! restoring (no record flows until every subtask has its state).
//!
//! The work of every subtask of the process goes to one pool of one thread per core, so that
//! subtasks restoring at once share the cores instead of each starting a thread per core (two
//! subtasks on two cores, each with two threads of its own, restored 10^7 keys 15 % slower than
//! with one thread each).

use crate::StateError;
use rayon::prelude::*;
use std::sync::OnceLock;
use weir_core::KeyGroupRange;

/// Threads of the pool, and of a snapshot's encoders, at most.
const MAX_THREADS: usize = 8;

/// One per core, at most [`MAX_THREADS`].
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_THREADS)
}

/// The process's pool for key group work; `None` if its threads could not be started, and the
/// work then runs on the calling thread.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads())
            .thread_name(|i| format!("weir-state-{i}"))
            .build()
            .map_err(|e| tracing::warn!("restoring on one thread per subtask: no thread pool ({e})"))
            .ok()
    })
    .as_ref()
}

/// `work` applied to each of `items` on the process's pool, the results in the order of the
/// items. The calling thread waits; a panic in `work` is raised in it. A single item, or work
/// asked for by one of the pool's own threads, is done by the calling thread: a pool thread
/// waiting for nested work takes on other pending work meanwhile, which could wait for what the
/// outer work holds (a file's checksum being computed, say) and never return.
pub fn map_in_order<T: Send, R: Send>(items: Vec<T>, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    match pool() {
        Some(pool) if items.len() > 1 && pool.current_thread_index().is_none() => {
            pool.install(|| items.into_par_iter().map(&work).collect())
        }
        _ => items.into_iter().map(work).collect(),
    }
}

/// Runs `work` on `chunks` contiguous chunks of `range` (the chunk's index and its key groups)
/// on the process's pool (see [`map_in_order`]), and returns what each returned, in key group
/// order: the first error in that order if any failed.
pub fn for_each_chunk<T: Send>(
    range: KeyGroupRange,
    chunks: usize,
    work: impl Fn(usize, KeyGroupRange) -> Result<T, StateError> + Sync,
) -> Result<Vec<T>, StateError> {
    let chunks = range.split(u32::try_from(chunks).unwrap_or(u32::MAX)).into_iter().enumerate().collect();
    map_in_order(chunks, |(i, chunk)| work(i, chunk)).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_key_group_order_and_the_first_failure_wins() {
        let range = KeyGroupRange { start: 3, count: 20 };
        for chunks in [1, 2, 3, 8, 40] {
            let each = for_each_chunk(range, chunks, |_, chunk| Ok(chunk.iter().collect::<Vec<_>>())).unwrap();
            assert_eq!(each.concat(), range.iter().collect::<Vec<_>>(), "{chunks} chunks");
            let failed = for_each_chunk(range, chunks, |_, chunk| match chunk.iter().find(|kg| kg % 5 == 0) {
                Some(kg) => Err(StateError::Backend(format!("key group {kg}"))),
                None => Ok(()),
            });
            assert_eq!(failed.unwrap_err().to_string(), StateError::Backend("key group 5".into()).to_string());
        }
    }

    /// Work on the pool that asks for more work gets it done, in order, by its own thread, also
    /// while other chunks wait for what it holds.
    #[test]
    fn nested_work_is_done_in_order_by_the_thread_that_asks() {
        let shared = std::sync::OnceLock::new();
        let range = KeyGroupRange { start: 0, count: 64 };
        let each = for_each_chunk(range, 16, |_, chunk| {
            let total = shared.get_or_init(|| map_in_order((1..=100u64).collect(), |i| i * i).iter().sum::<u64>());
            Ok((*total, map_in_order(chunk.iter().collect(), |kg| kg * 2)))
        })
        .unwrap();
        assert!(each.iter().all(|(total, _)| *total == 338_350));
        let doubled: Vec<u32> = each.into_iter().flat_map(|(_, d)| d).collect();
        assert_eq!(doubled, (0..64).map(|kg| kg * 2).collect::<Vec<_>>());
    }
}

//! An opt-in profile of an instance (`state.backend.rocksdb.statistics`): RocksDB's statistics
//! (tickers and histograms of the database), its compaction and stall summary, and the perf
//! counters of the task thread (thread-local in RocksDB: every get and put of the subtask runs on
//! it), logged when the instance closes. Counting per record where the time of a state-heavy job
//! goes needs all three; they cost throughput (timers around each call), so they are off by
//! default.

use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
use rocksdb::DB;
use std::thread::ThreadId;

/// The perf counters worth a line each; the statistics string has the rest.
const PERF_METRICS: &[(&str, PerfMetric)] = &[
    ("get_from_memtable_count", PerfMetric::GetFromMemtableCount),
    ("get_from_memtable_nanos", PerfMetric::GetFromMemtableTime),
    ("get_from_output_files_nanos", PerfMetric::GetFromOutputFilesTime),
    ("block_cache_hit_count", PerfMetric::BlockCacheHitCount),
    ("block_read_count", PerfMetric::BlockReadCount),
    ("block_read_nanos", PerfMetric::BlockReadTime),
    ("block_decompress_nanos", PerfMetric::BlockDecompressTime),
    ("block_seek_nanos", PerfMetric::BlockSeekNanos),
    ("find_table_nanos", PerfMetric::FindTableNanos),
    ("read_index_block_nanos", PerfMetric::ReadIndexBlockNanos),
    ("read_filter_block_nanos", PerfMetric::ReadFilterBlockNanos),
    ("bloom_sst_hit_count", PerfMetric::BloomSstHitCount),
    ("bloom_sst_miss_count", PerfMetric::BloomSstMissCount),
    ("bloom_memtable_hit_count", PerfMetric::BloomMemtableHitCount),
    ("bloom_memtable_miss_count", PerfMetric::BloomMemtableMissCount),
    ("user_key_comparison_count", PerfMetric::UserKeyComparisonCount),
    ("write_memtable_nanos", PerfMetric::WriteMemtableTime),
    ("write_delay_nanos", PerfMetric::WriteDelayTime),
    ("write_pre_and_post_process_nanos", PerfMetric::WritePreAndPostProcessTime),
    ("db_mutex_lock_nanos", PerfMetric::DbMutexLockNanos),
];

/// Started on the thread that opens the instance (the task thread).
pub(crate) struct Profile {
    thread: ThreadId,
}

impl Profile {
    pub(crate) fn start() -> Profile {
        set_perf_stats(PerfStatsLevel::EnableTimeExceptForMutex);
        PerfContext::default().reset();
        Profile { thread: std::thread::current().id() }
    }

    /// Logs the profile. The perf counters are the thread's: reported only when the instance
    /// closes on the thread it was opened on.
    pub(crate) fn report(&self, db: &DB, column_families: &[String]) {
        let property = |name: &str| db.property_value(name).ok().flatten().unwrap_or_default();
        if std::thread::current().id() == self.thread {
            let perf = PerfContext::default();
            let counters: Vec<String> =
                PERF_METRICS.iter().map(|(name, metric)| format!("{name}={}", perf.metric(*metric))).collect();
            tracing::info!("rocksdb perf counters of the task thread: {}", counters.join(" "));
            // The thread may go on with other work: no more timers around its calls.
            set_perf_stats(PerfStatsLevel::Disable);
        }
        tracing::info!("rocksdb statistics:\n{}", property("rocksdb.options-statistics"));
        // Where the instance's memory is when it closes.
        let memory: Vec<String> = [
            "rocksdb.cur-size-all-mem-tables",
            "rocksdb.block-cache-usage",
            "rocksdb.block-cache-pinned-usage",
            "rocksdb.estimate-table-readers-mem",
        ]
        .iter()
        .map(|name| {
            let per_cf = column_families
                .iter()
                .filter_map(|cf| db.cf_handle(cf))
                .filter_map(|cf| db.property_int_value_cf(cf, *name).ok().flatten());
            // Column families share the block cache: its figures are the same in each.
            let total: u64 = if name.contains("block-cache") { per_cf.max().unwrap_or(0) } else { per_cf.sum() };
            format!("{}={total}", name.trim_start_matches("rocksdb."))
        })
        .collect();
        tracing::info!("rocksdb memory: {}", memory.join(" "));
        for name in column_families {
            if let Some(cf) = db.cf_handle(name) {
                let stats = db.property_value_cf(cf, "rocksdb.cfstats-no-file-histogram").ok().flatten();
                tracing::info!("rocksdb column family {name}:\n{}", stats.unwrap_or_default());
            }
        }
    }
}

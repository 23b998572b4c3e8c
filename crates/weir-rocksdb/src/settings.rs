//! Configuration of the rocksdb backend and the RocksDB options it implies.

use rocksdb::{BlockBasedIndexType, BlockBasedOptions, Cache, MergeOperands, Options};
use std::path::PathBuf;
use weir_core::config::{keys, Configuration};

/// A bound on one instance's memory: write buffers (memtables) get `write_buffer_ratio` of it,
/// the block cache (data, index and filter blocks) the rest. Like Flink's managed memory for
/// RocksDB, it bounds what RocksDB allocates, not the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryBudget {
    pub bytes: u64,
    pub write_buffer_ratio: f64,
}

impl MemoryBudget {
    /// The write buffers' share of the budget.
    pub fn write_buffer_share(&self) -> usize {
        (self.bytes as f64 * self.write_buffer_ratio) as usize
    }

    /// The limit RocksDB is given for all memtables (`db_write_buffer_size`): two thirds of their
    /// share. RocksDB starts a flush when the memtables being written pass 7/8 of the limit, but
    /// while earlier ones are still being flushed their memory reaches about half as much again
    /// (and each memtable's arena grows in blocks of an eighth of its size), so a limit of the
    /// whole share let them overrun it. Flink sizes its write buffer manager the same way, for
    /// the same reason (`RocksDBMemoryControllerUtils`): the overrun then stays within the share.
    pub fn write_buffer_bytes(&self) -> usize {
        self.write_buffer_share() / 3 * 2
    }

    pub fn cache_bytes(&self) -> usize {
        (self.bytes as usize).saturating_sub(self.write_buffer_share()).max(1 << 20)
    }
}

#[derive(Debug, Clone)]
pub struct RocksDbSettings {
    /// Parent directory of instances' working directories.
    pub local_dir: PathBuf,
    /// `None`: RocksDB's defaults (unbounded).
    pub memory: Option<MemoryBudget>,
    /// Checkpoints reference SST files earlier checkpoints uploaded.
    pub incremental: bool,
    /// Size of one memtable; `None` derives it from the budget and the write-back cache.
    pub write_buffer_size: Option<usize>,
    /// Bytes of the [`weir_state::WriteBackCache`] in front of each instance; 0: none. Taken from
    /// the per-subtask budget before RocksDB's share (`memory`) is computed.
    pub write_back_cache: usize,
    /// Profile each instance (`state.backend.rocksdb.statistics`, see [`crate::statistics`]).
    pub statistics: bool,
    pub table: TableSettings,
}

/// How SST files are laid out and what lookups keep in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TableSettings {
    /// Bits per key of bloom filters in SST files and memtables; `None`: no filters.
    pub bloom_bits_per_key: Option<f64>,
    /// Index and filter blocks partitioned, with only their top level pinned in the block cache.
    pub partitioned_index_filters: bool,
    /// Size of a data block.
    pub block_size: usize,
    /// Size of the SST files flushes and compactions write (RocksDB's `target_file_size_base`).
    /// A table builder holds its file's partitioned index and filter in memory until the file
    /// is finished, so this bounds the working memory of each flush and compaction, which the
    /// budget does not count: 16 MB instead of RocksDB's (and Flink's) 64 MB took the peak RSS
    /// of 10^7 keys beyond the write-back cache 3-5 MB lower, at the same throughput.
    pub target_file_size: usize,
}

/// Defaults of [`TableSettings`], also what the configuration falls back to.
const BLOOM_BITS_PER_KEY: f64 = 10.0;
const BLOCK_SIZE: usize = 4 << 10;
const TARGET_FILE_SIZE: usize = 16 << 20;

impl Default for TableSettings {
    fn default() -> Self {
        TableSettings {
            bloom_bits_per_key: Some(BLOOM_BITS_PER_KEY),
            partitioned_index_filters: true,
            block_size: BLOCK_SIZE,
            target_file_size: TARGET_FILE_SIZE,
        }
    }
}

impl RocksDbSettings {
    pub fn from_config(config: &Configuration) -> Self {
        let local_dir = config
            .get_str(keys::ROCKSDB_LOCAL_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("weir-rocksdb"));
        let per_subtask = config.get_memory_size(keys::ROCKSDB_MEMORY_FIXED).unwrap_or(128 << 20);
        let cache_ratio = config.get_fraction(keys::ROCKSDB_WRITE_BACK_CACHE_RATIO).unwrap_or(0.5);
        let write_back_cache = (per_subtask as f64 * cache_ratio) as u64;
        let memory = config.get_bool(keys::ROCKSDB_MEMORY_MANAGED).unwrap_or(true).then(|| MemoryBudget {
            bytes: per_subtask - write_back_cache,
            write_buffer_ratio: config.get_fraction(keys::ROCKSDB_WRITE_BUFFER_RATIO).unwrap_or(0.5),
        });
        RocksDbSettings {
            local_dir,
            memory,
            incremental: config.get_bool(keys::CHECKPOINT_INCREMENTAL).unwrap_or(false),
            write_buffer_size: config.get_memory_size(keys::ROCKSDB_WRITE_BUFFER_SIZE).map(|b| b as usize),
            write_back_cache: write_back_cache as usize,
            statistics: config.get_bool(keys::ROCKSDB_STATISTICS).unwrap_or(false),
            table: TableSettings {
                bloom_bits_per_key: config
                    .get_bool(keys::ROCKSDB_USE_BLOOM_FILTER)
                    .unwrap_or(true)
                    .then(|| config.get_multiplier(keys::ROCKSDB_BLOOM_BITS_PER_KEY).unwrap_or(BLOOM_BITS_PER_KEY)),
                partitioned_index_filters: config.get_bool(keys::ROCKSDB_PARTITIONED_INDEX_FILTERS).unwrap_or(true),
                block_size: config.get_memory_size(keys::ROCKSDB_BLOCK_SIZE).map_or(BLOCK_SIZE, |b| b as usize),
                target_file_size: config
                    .get_memory_size(keys::ROCKSDB_TARGET_FILE_SIZE_BASE)
                    .map_or(TARGET_FILE_SIZE, |b| b as usize),
            },
        }
    }

    /// Options for the database and every column family. `cache` must outlive the database.
    pub(crate) fn options(&self, cache: Option<&Cache>) -> Options {
        let mut o = Options::default();
        if let (None, Some(size)) = (self.memory, self.write_buffer_size) {
            o.set_write_buffer_size(size);
        }
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_merge_operator_associative(APPEND_OPERATOR, append);
        // One instance per subtask, each on its task's thread: a couple of background threads
        // for flushes and compactions are plenty.
        o.set_max_background_jobs(2);
        if self.statistics {
            o.enable_statistics();
        }
        // The table layout applies with or without a memory budget: a setting is never ignored.
        let mut table = BlockBasedOptions::default();
        table.set_block_size(self.table.block_size);
        o.set_target_file_size_base(self.table.target_file_size as u64);
        if self.table.partitioned_index_filters {
            // Only the small top level of each index and filter stays pinned; the partitions
            // come and go with the cache like data blocks. A whole-file filter of a large SST
            // is bigger than a shard of the block cache (64 shards for 32 MB; 10^6 keys make
            // 1.2 MB of filter), so it was dropped after each use and read back from disk for
            // the next lookup (measured: 0.03 M records/s, against 0.11 partitioned).
            table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
            table.set_partition_filters(true);
            table.set_pin_top_level_index_and_filter(true);
        }
        if let Some(bits) = self.table.bloom_bits_per_key {
            table.set_bloom_filter(bits, false);
            table.set_whole_key_filtering(true);
            // Memtables get a whole-key filter too: a lookup skips those without the key
            // (measured: 2.4 -> 0.16 us per lookup of a key not in them).
            o.set_memtable_prefix_bloom_ratio(0.02);
            o.set_memtable_whole_key_filtering(true);
        }
        if let (Some(m), Some(cache)) = (self.memory, cache) {
            let write_buffers = m.write_buffer_bytes().max(2 << 20);
            // The sum of all column families' memtables; reaching it flushes the largest.
            o.set_db_write_buffer_size(write_buffers);
            let memtable = self.write_buffer_size.unwrap_or_else(|| self.derived_memtable_bytes(write_buffers));
            o.set_write_buffer_size(memtable);
            o.set_max_write_buffer_number(2);
            table.set_block_cache(cache);
            // Index and filter blocks count against the cache instead of growing with the data.
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        }
        o.set_block_based_table_factory(&table);
        o
    }

    /// Options to open a snapshot's files read-only: what reading merged rows needs.
    pub(crate) fn reader_options() -> Options {
        let mut o = Options::default();
        o.set_merge_operator_associative(APPEND_OPERATOR, append);
        o
    }

    /// One memtable's size from the write buffers' share of the budget: half of it (two
    /// memtables, the one filling and the one flushing). Without a write-back cache every write
    /// of a hot key is a new memtable entry, so the memtable stays small
    /// ([`MAX_MEMTABLE_BYTES_UNCACHED`]). With one, a memtable sees each row once per eviction
    /// or checkpoint, and a larger one means fewer L0 files for every read to search and fewer
    /// compactions (measured on 10^6 keys with a quarter-budget cache: 0.19 -> 0.24 M records/s
    /// going from 4 MB to 24 MB memtables).
    fn derived_memtable_bytes(&self, write_buffers: usize) -> usize {
        let most = if self.write_back_cache > 0 { write_buffers } else { MAX_MEMTABLE_BYTES_UNCACHED };
        (write_buffers / 2).clamp(1 << 20, most.max(1 << 20))
    }

    pub(crate) fn cache(&self) -> Result<Option<Cache>, rocksdb::Error> {
        self.memory.map(|m| Cache::new_lru_cache(m.cache_bytes())).transpose()
    }
}

/// Largest memtable without a write-back cache. Every write is a new memtable entry, so a large
/// memtable makes each lookup walk a skip list of more versions: this took the reference shape
/// from 0.14 (32 MB memtables) to 0.19 M records/s (4 MB) before the cache existed.
const MAX_MEMTABLE_BYTES_UNCACHED: usize = 4 << 20;

/// Name of the merge operator list state uses; recorded in RocksDB's OPTIONS files.
pub const APPEND_OPERATOR: &str = "weir-append";

/// List append: MessagePack elements are self-delimiting, so appending is concatenation.
fn append(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let len = existing.map_or(0, <[u8]>::len) + operands.iter().map(<[u8]>::len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    if let Some(e) = existing {
        out.extend_from_slice(e);
    }
    for op in operands.iter() {
        out.extend_from_slice(op);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memtables_overrunning_their_limit_stay_within_their_share() {
        for bytes in [8u64 << 20, 64 << 20, 100_000_000, 1 << 30] {
            for ratio in [0.1, 0.25, 0.5, 0.9] {
                let budget = MemoryBudget { bytes, write_buffer_ratio: ratio };
                let (share, limit) = (budget.write_buffer_share(), budget.write_buffer_bytes());
                // RocksDB lets memtables reach about 1.5 times their limit while flushes lag.
                assert!(limit * 3 / 2 <= share, "{bytes} bytes at {ratio}: limit {limit}, share {share}");
                assert!(limit * 3 / 2 + 3 >= share, "the limit gives away no more than it must");
                // The block cache gets the rest, or its floor of 1 MB.
                let rest = (bytes as usize - share).max(1 << 20);
                assert_eq!(budget.cache_bytes(), rest, "{bytes} bytes at {ratio}");
            }
        }
    }

    #[test]
    fn sst_files_are_sized_from_the_configuration() {
        let mut config = Configuration::new();
        assert_eq!(RocksDbSettings::from_config(&config).table.target_file_size, 16 << 20);
        config.set(keys::ROCKSDB_TARGET_FILE_SIZE_BASE, "64 mb").unwrap();
        assert_eq!(RocksDbSettings::from_config(&config).table.target_file_size, 64 << 20);
    }
}

//! A RocksDB instance holding one operator subtask's keyed state.

use crate::restore;
use crate::settings::RocksDbSettings;
use crate::snapshot::{RocksDbSnapshot, Uploads};
use crate::statistics::Profile;
use crate::workdir::{self, WorkingDir};
use crate::{db_err, io_err};
use rocksdb::checkpoint::Checkpoint;
use rocksdb::{Cache, ColumnFamily, ReadOptions, WriteBatch, WriteOptions, DB};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use weir_core::metadata::StateMeta;
use weir_core::{CheckpointId, KeyGroupRange};
use weir_state::{KvStore, RestoredKeyedState, RowWrite, SnapshotRequest, StateError, StoreContext, StoreSnapshot};

/// Column family of a state: prefixed, so no state name collides with RocksDB's `default`.
pub(crate) fn cf_name(state: &str) -> String {
    format!("state:{state}")
}

/// The smallest key above every key starting with `prefix` (`None`: no such key).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub struct RocksDbStore {
    /// `Option` only so `Drop` can close the database before deleting its directory.
    db: Option<DB>,
    /// The working directory, locked so no other process's sweep deletes it.
    workdir: WorkingDir,
    key_groups: KeyGroupRange,
    settings: Arc<RocksDbSettings>,
    /// Every state in the database (declared or restored), by name.
    known: BTreeMap<String, StateMeta>,
    /// Column family names of declared states, by state index.
    declared: Vec<String>,
    write: WriteOptions,
    /// Built once: a get with default options creates and frees them in C on every call.
    read: ReadOptions,
    uploads: Arc<Mutex<Uploads>>,
    _cache: Option<Cache>,
    profile: Option<Profile>,
    native_metrics: weir_state::NativeMetrics,
}

/// RocksDB's properties reported per state (column family), as Flink's RocksDB native metrics
/// name them (`<state>.rocksdb.<property>`): sampled at open, at every declared state and at
/// every snapshot, on the task thread.
const NATIVE_PROPERTIES: [&str; 10] = [
    "rocksdb.estimate-num-keys",
    "rocksdb.estimate-live-data-size",
    "rocksdb.total-sst-files-size",
    "rocksdb.cur-size-all-mem-tables",
    "rocksdb.block-cache-usage",
    "rocksdb.block-cache-capacity",
    "rocksdb.num-running-compactions",
    "rocksdb.num-running-flushes",
    "rocksdb.estimate-pending-compaction-bytes",
    "rocksdb.background-errors",
];

impl RocksDbStore {
    /// Creates the instance in a fresh working directory and restores `restored` into it.
    pub fn open(
        settings: Arc<RocksDbSettings>,
        ctx: &StoreContext,
        restored: &RestoredKeyedState,
    ) -> Result<Self, StateError> {
        workdir::sweep_stale(&settings.local_dir);
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let workdir = workdir::create(settings.local_dir.join(format!(
            "{}{}-op-{}-{}-{}",
            workdir::INSTANCE_PREFIX,
            ctx.job_id.to_hex(),
            ctx.operator_id,
            ctx.subtask,
            &unique[..8]
        )))?;
        let cache = settings.cache().map_err(db_err("creating the block cache"))?;
        let options = settings.options(cache.as_ref());
        let opened = restore::open_instance(&workdir.path, &options, ctx, restored, settings.incremental);
        let (db, known, baseline) = match opened {
            Ok(o) => o,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&workdir.path);
                return Err(e);
            }
        };
        // After the restore, whose reads of snapshot files turn the thread's perf counters off.
        let profile = settings.statistics.then(Profile::start);
        if profile.is_none() {
            // RocksDB counts every operation in a thread-local perf context unless told not to;
            // from Debian's shared library each count is a call to resolve the thread-local.
            rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
        }
        let mut write = WriteOptions::default();
        // Checkpoints, not a write-ahead log, make state durable.
        write.disable_wal(true);
        Ok(RocksDbStore {
            db: Some(db),
            workdir,
            key_groups: ctx.key_groups,
            settings,
            known,
            declared: Vec::new(),
            write,
            read: ReadOptions::default(),
            uploads: Arc::new(Mutex::new(Uploads { baseline, pending: BTreeMap::new() })),
            _cache: cache,
            profile,
            native_metrics: ctx.native_metrics.clone(),
        })
    }

    fn sample_native_metrics(&self) {
        let db = self.db();
        let mut values = Vec::new();
        for state in self.known.keys() {
            let Some(cf) = db.cf_handle(&cf_name(state)) else { continue };
            for property in NATIVE_PROPERTIES {
                if let Ok(Some(v)) = db.property_int_value_cf(cf, property) {
                    values.push((format!("{state}.{property}"), v as f64));
                }
            }
        }
        self.native_metrics.set(values);
    }

    fn db(&self) -> &DB {
        match &self.db {
            Some(db) => db,
            None => unreachable!("the database is open until drop"),
        }
    }

    fn cf(&self, state: usize) -> Result<&ColumnFamily, StateError> {
        let name = self.declared.get(state).ok_or_else(|| StateError::Backend(format!("no state {state}")))?;
        self.db().cf_handle(name).ok_or_else(|| StateError::Backend(format!("column family {name} missing")))
    }
}

impl Drop for RocksDbStore {
    fn drop(&mut self) {
        if let (Some(profile), Some(db)) = (&self.profile, &self.db) {
            let column_families: Vec<String> = self.known.keys().map(|state| cf_name(state)).collect();
            profile.report(db, &column_families);
        }
        drop(self.db.take());
        let dir = &self.workdir.path;
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!("could not delete RocksDB working directory {}: {e}", dir.display());
        }
    }
}

impl KvStore for RocksDbStore {
    fn declare(&mut self, meta: &StateMeta) -> Result<usize, StateError> {
        let name = cf_name(&meta.name);
        match self.known.get(&meta.name) {
            Some(stored) => meta.check_restored(stored).map_err(StateError::Incompatible)?,
            None => {
                let options = self.settings.options(self._cache.as_ref());
                let db = self.db.as_mut().ok_or_else(|| StateError::Backend("database closed".into()))?;
                db.create_cf(&name, &options).map_err(db_err("creating a column family"))?;
                self.known.insert(meta.name.clone(), meta.clone());
            }
        }
        self.declared.push(name);
        self.sample_native_metrics();
        Ok(self.declared.len() - 1)
    }

    fn get(&mut self, state: usize, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StateError> {
        let cf = self.cf(state)?;
        match self.db().get_pinned_cf_opt(cf, key, &self.read).map_err(db_err("reading state"))? {
            Some(v) => {
                out.clear();
                out.extend_from_slice(&v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn get_many(
        &mut self,
        state: usize,
        keys: &[&[u8]],
        found: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StateError> {
        let cf = self.cf(state)?;
        let values = self.db().batched_multi_get_cf_opt(cf, keys, false, &self.read);
        for (i, value) in values.into_iter().enumerate() {
            found(i, value.map_err(db_err("reading state"))?.as_deref());
        }
        Ok(())
    }

    fn put(&mut self, state: usize, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let cf = self.cf(state)?;
        self.db().put_cf_opt(cf, key, value, &self.write).map_err(db_err("writing state"))
    }

    fn append(&mut self, state: usize, key: &[u8], operand: &[u8]) -> Result<(), StateError> {
        let cf = self.cf(state)?;
        self.db().merge_cf_opt(cf, key, operand, &self.write).map_err(db_err("appending to list state"))
    }

    fn delete(&mut self, state: usize, key: &[u8]) -> Result<(), StateError> {
        let cf = self.cf(state)?;
        self.db().delete_cf_opt(cf, key, &self.write).map_err(db_err("deleting state"))
    }

    fn write_rows(&mut self, rows: &[RowWrite<'_>]) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        for row in rows {
            let cf = self.cf(row.state)?;
            match row.value {
                Some(value) => batch.put_cf(cf, row.key, value),
                None => batch.delete_cf(cf, row.key),
            }
        }
        self.db().write_opt(batch, &self.write).map_err(db_err("writing state"))
    }

    fn scan_prefix(
        &mut self,
        state: usize,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let cf = self.cf(state)?;
        scan(self.db(), cf, prefix, Reading::State, f)
    }

    fn delete_prefix(&mut self, state: usize, prefix: &[u8]) -> Result<(), StateError> {
        let cf = self.cf(state)?;
        match prefix_end(prefix) {
            Some(end) => {
                self.db().delete_range_cf_opt(cf, prefix, end.as_slice(), &self.write).map_err(db_err("deleting state"))
            }
            None => Err(StateError::Backend("cannot delete an unbounded prefix".into())),
        }
    }

    fn snapshot(&mut self, request: &SnapshotRequest) -> Result<Box<dyn StoreSnapshot>, StateError> {
        self.sample_native_metrics();
        let dir = self.workdir.path.join(format!("chk-{}", request.id));
        if dir.exists() {
            // Left by an earlier attempt at this id that failed before its writer ran.
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        // Flushes the memtables and hard-links the live files: the only synchronous work.
        Checkpoint::new(self.db())
            .and_then(|c| c.create_checkpoint(&dir))
            .map_err(db_err("creating a local RocksDB checkpoint"))?;
        let states = self.known.values().cloned().collect();
        Ok(Box::new(RocksDbSnapshot::new(
            dir,
            *request,
            states,
            self.key_groups,
            self.settings.incremental,
            self.uploads.clone(),
        )))
    }

    fn checkpoint_complete(&mut self, id: CheckpointId) {
        if let Ok(mut u) = self.uploads.lock() {
            u.complete(id);
        }
    }
}

/// What a scan is for, which decides whether the blocks it reads are worth caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Reading state a job uses: its blocks may be read again soon.
    State,
    /// Reading a snapshot's files once, start to end (canonical savepoints, restores): caching
    /// each block would only evict others, at a cache insertion per block.
    Once,
}

/// Calls `f` for each row of `cf` starting with `prefix`, in key order, until it returns false.
pub(crate) fn scan(
    db: &DB,
    cf: &ColumnFamily,
    prefix: &[u8],
    reading: Reading,
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StateError> {
    let mut opts = ReadOptions::default();
    opts.fill_cache(reading == Reading::State);
    if reading == Reading::Once {
        // Snapshot threads are never profiled: no perf counts per row (see `RocksDbStore::open`).
        rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
    }
    if !prefix.is_empty() {
        opts.set_iterate_lower_bound(prefix.to_vec());
        if let Some(end) = prefix_end(prefix) {
            opts.set_iterate_upper_bound(end);
        }
    }
    let mut it = db.raw_iterator_cf_opt(cf, opts);
    it.seek_to_first();
    while it.valid() {
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !f(k, v) {
                return Ok(());
            }
        }
        it.next();
    }
    it.status().map_err(db_err("scanning state"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}

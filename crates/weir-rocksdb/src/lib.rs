//! The embedded RocksDB keyed state backend (`state.backend.type: rocksdb`).
//!
//! State lives in a RocksDB instance per keyed operator subtask, on local disk, in the row layout
//! of [`weir_state::serialized`] (key-group prefix, one column family per state), so it can be
//! many times larger than memory: a memory budget bounds write buffers and block cache, and a
//! write-back cache of hot value rows ([`weir_state::WriteBackCache`]) in front of RocksDB.
//!
//! Snapshots start with a RocksDB checkpoint of the instance (a flush and hard links, on the task
//! thread); the snapshot writer thread then either copies those files (native: checkpoints and
//! `--type native` savepoints) or reads them back into the canonical key-group file. Incremental
//! checkpoints upload each immutable SST file once into the job's `shared/` directory and
//! reference it from later checkpoints.
//!
//! * [`settings`]: configuration and RocksDB options (memory budget, merge operator).
//! * [`store`]: the [`weir_state::KvStore`] implementation.
//! * [`restore`]: building an instance from native or canonical snapshots, clipping or merging
//!   key-group ranges when parallelism changes.
//! * [`snapshot`]: the asynchronous part of snapshots.
//! * `workdir`: locked working directories, and deleting those a killed process left.
//! * `statistics`: the opt-in profile of an instance.

pub mod restore;
pub mod settings;
pub mod snapshot;
mod statistics;
pub mod store;
mod workdir;

pub use settings::{MemoryBudget, RocksDbSettings, TableSettings};
pub use store::RocksDbStore;

use std::sync::Arc;
use weir_state::{KvStore, RestoredKeyedState, StateError, StoreContext, StoreFactory, WriteBackCache};

/// The factory operators get their store from.
#[derive(Debug, Clone)]
pub struct RocksDbStateBackend {
    settings: Arc<RocksDbSettings>,
}

impl RocksDbStateBackend {
    pub fn new(settings: RocksDbSettings) -> Self {
        RocksDbStateBackend { settings: Arc::new(settings) }
    }

    pub fn from_config(config: &weir_core::config::Configuration) -> Self {
        Self::new(RocksDbSettings::from_config(config))
    }
}

impl StoreFactory for RocksDbStateBackend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn create(&self, ctx: &StoreContext, restored: &RestoredKeyedState) -> Result<Box<dyn KvStore>, StateError> {
        let store = Box::new(RocksDbStore::open(self.settings.clone(), ctx, restored)?);
        Ok(match self.settings.write_back_cache {
            0 => store,
            bytes if self.settings.statistics => Box::new(WriteBackCache::new(store, bytes).report_on_drop()),
            bytes => Box::new(WriteBackCache::new(store, bytes)),
        })
    }
}

/// The name native handles carry.
pub const BACKEND_NAME: &str = "rocksdb";

pub(crate) fn db_err(what: &str) -> impl Fn(rocksdb::Error) -> StateError + '_ {
    move |e| StateError::Backend(format!("{what}: {e}"))
}

pub(crate) fn io_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |error| StateError::Io { path: path.to_path_buf(), error }
}

/// An error writing a snapshot file on the checkpoint storage.
pub(crate) fn storage_err(location: &weir_core::location::SnapshotUri) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |error| StateError::Storage { location: location.to_string(), error }
}

//! The asynchronous part of rocksdb snapshots, run by the snapshot writer thread on a local
//! RocksDB checkpoint (hard links, so it does not change while the task goes on writing).
//!
//! * Native (checkpoints, `--type native` savepoints): the checkpoint's files are copied. In an
//!   incremental checkpoint, an SST file the last completed checkpoint already uploaded is
//!   referenced instead, and new SST files go to the job's `shared/` directory; the rest
//!   (MANIFEST, OPTIONS, CURRENT) is small and exclusive to the checkpoint.
//! * Canonical savepoints: the checkpoint is opened read-only and its rows are written as the
//!   canonical key-group file.

use crate::settings::RocksDbSettings;
use crate::store::{cf_name, scan, Reading};
use crate::{db_err, io_err, storage_err, BACKEND_NAME};
use rocksdb::DB;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use weir_core::location::SnapshotUri;
use weir_core::metadata::{NativeFile, NativeStateHandle, SavepointFormat, SnapshotKind, StateFileRef, StateMeta};
use weir_core::{CheckpointId, KeyGroupRange};
use weir_state::serialized::{key_group_prefix, write_canonical, RowSource};
use weir_state::{NewFile, SnapshotFiles, SnapshotRequest, StateError, StoreSnapshot, WrittenKeyedState};

/// An SST file a checkpoint uploaded: where it is, its size and checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Uploaded {
    pub location: SnapshotUri,
    pub size: u64,
    pub crc32c: Option<u32>,
}

/// What incremental checkpoints may reference: the SST files of the last completed checkpoint
/// (or of the restored snapshot), by local file name.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    pub baseline: BTreeMap<String, Uploaded>,
    pub pending: BTreeMap<CheckpointId, BTreeMap<String, Uploaded>>,
}

impl Uploads {
    /// Checkpoint `id` completed: its files become the baseline. Only completed checkpoints may
    /// be referenced, since a failed one's files are deleted.
    pub fn complete(&mut self, id: CheckpointId) {
        if let Some(files) = self.pending.remove(&id) {
            self.baseline = files;
        }
        self.pending.retain(|&p, _| p > id);
    }
}

pub(crate) struct RocksDbSnapshot {
    dir: PathBuf,
    request: SnapshotRequest,
    states: Vec<StateMeta>,
    key_groups: KeyGroupRange,
    incremental: bool,
    uploads: Arc<Mutex<Uploads>>,
}

impl RocksDbSnapshot {
    pub fn new(
        dir: PathBuf,
        request: SnapshotRequest,
        states: Vec<StateMeta>,
        key_groups: KeyGroupRange,
        incremental: bool,
        uploads: Arc<Mutex<Uploads>>,
    ) -> Self {
        RocksDbSnapshot { dir, request, states, key_groups, incremental, uploads }
    }

    fn canonical(&self) -> bool {
        self.request.kind == SnapshotKind::Savepoint { format: SavepointFormat::Canonical }
    }

    /// Files to reuse: only for incremental, non-full checkpoints.
    fn reusable(&self) -> BTreeMap<String, Uploaded> {
        if !self.incremental || self.request.full || self.request.kind.is_savepoint() {
            return BTreeMap::new();
        }
        self.uploads.lock().map(|u| u.baseline.clone()).unwrap_or_default()
    }

    fn write_native(
        &self,
        files: &dyn SnapshotFiles,
        name: &str,
        created: &mut Vec<SnapshotUri>,
    ) -> Result<WrittenKeyedState, StateError> {
        let mut local: Vec<(String, PathBuf)> = std::fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .collect();
        local.sort();
        if !local.iter().any(|(n, _)| is_sst(n)) {
            return Ok(WrittenKeyedState::default()); // nothing was ever written: no state
        }
        let reusable = self.reusable();
        let share = self.incremental && !self.request.kind.is_savepoint();
        let mut handle_files = Vec::with_capacity(local.len());
        let mut uploaded = BTreeMap::new();
        for (file_name, path) in local {
            let sst = is_sst(&file_name);
            if sst && share {
                if let Some(up) = reusable.get(&file_name) {
                    let (reference, location) = files.reuse(&up.location).map_err(storage_err(&up.location))?;
                    if location != up.location {
                        created.push(location.clone());
                    }
                    handle_files.push(native_file(&file_name, reference, up.size, up.crc32c, true));
                    uploaded.insert(file_name, Uploaded { location, ..up.clone() });
                    continue;
                }
            }
            let new = if sst && share {
                let unique = uuid::Uuid::new_v4().simple().to_string();
                files.create_shared(&format!("{}-{file_name}", &unique[..16]))
            } else {
                files.create_exclusive(&format!("{name}-{file_name}"))
            };
            let NewFile { out, reference, location: target } = new.map_err(StateError::Write)?;
            created.push(target.clone());
            let (size, crc) = copy_into(&path, out, &target)?;
            if sst && share {
                uploaded.insert(file_name.clone(), Uploaded { location: target, size, crc32c: Some(crc) });
            }
            handle_files.push(native_file(&file_name, reference, size, Some(crc), sst));
        }
        if share {
            if let Ok(mut u) = self.uploads.lock() {
                u.pending.insert(self.request.id, uploaded);
            }
        }
        Ok(WrittenKeyedState {
            keyed: None,
            native: Some(NativeStateHandle {
                backend: BACKEND_NAME.to_string(),
                key_groups: self.key_groups,
                states: self.states.clone(),
                files: handle_files,
            }),
        })
    }

    fn write_canonical(
        &self,
        files: &dyn SnapshotFiles,
        name: &str,
        created: &mut Vec<SnapshotUri>,
    ) -> Result<WrittenKeyedState, StateError> {
        let names: Vec<String> = self.states.iter().map(|s| cf_name(&s.name)).collect();
        let db = open_read_only(&RocksDbSettings::reader_options(), &self.dir, &names)?;
        let rows = CheckpointRows { db: &db, names: &names };
        if rows.is_empty()? {
            return Ok(WrittenKeyedState::default());
        }
        let mut states = self.states.clone();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        let NewFile { out, reference, location } = files.create_exclusive(name).map_err(StateError::Write)?;
        created.push(location.clone());
        let (out, written) = write_canonical(out, self.key_groups, &states, &rows)?;
        out.finish().map_err(storage_err(&location))?;
        Ok(WrittenKeyedState { keyed: Some(written.into_handle(reference, self.key_groups)), native: None })
    }
}

impl StoreSnapshot for RocksDbSnapshot {
    fn write(&self, files: &dyn SnapshotFiles, name: &str) -> Result<WrittenKeyedState, StateError> {
        let mut created = Vec::new();
        let result = if self.canonical() {
            self.write_canonical(files, name, &mut created)
        } else {
            self.write_native(files, name, &mut created)
        };
        if result.is_err() {
            for file in created {
                if let Err(e) = files.delete(&file) {
                    tracing::warn!("could not delete {file} after a failed snapshot: {e}");
                }
            }
        }
        result
    }
}

impl Drop for RocksDbSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens a database's files read-only; every column family needs the options (merge operator).
pub(crate) fn open_read_only(options: &rocksdb::Options, dir: &Path, names: &[String]) -> Result<DB, StateError> {
    let descriptors = names.iter().map(|n| rocksdb::ColumnFamilyDescriptor::new(n, options.clone()));
    DB::open_cf_descriptors_read_only(options, dir, descriptors, false)
        .map_err(db_err("opening RocksDB files read-only"))
}

fn is_sst(file_name: &str) -> bool {
    file_name.ends_with(".sst")
}

fn native_file(name: &str, reference: String, size: u64, crc32c: Option<u32>, reusable: bool) -> NativeFile {
    NativeFile { name: name.to_string(), file: StateFileRef { path: reference, size, crc32c: None }, reusable, crc32c }
}

/// Copies `from` into `out`; returns the size and CRC32C of what was copied.
fn copy_into(
    from: &Path,
    mut out: Box<dyn weir_state::StateOutput>,
    target: &SnapshotUri,
) -> Result<(u64, u32), StateError> {
    let input = File::open(from).map_err(io_err(from))?;
    let (size, crc) = weir_state::checksum::for_each_chunk(input, from, &mut |chunk| {
        out.write_all(chunk).map_err(storage_err(target))
    })?;
    out.finish().map_err(storage_err(target))?;
    Ok((size, crc))
}

/// Rows of a read-only local checkpoint, by state (in `names` order) and key group.
struct CheckpointRows<'a> {
    db: &'a DB,
    names: &'a [String],
}

impl CheckpointRows<'_> {
    fn is_empty(&self) -> Result<bool, StateError> {
        for name in self.names {
            let cf =
                self.db.cf_handle(name).ok_or_else(|| StateError::Backend(format!("column family {name} missing")))?;
            let mut any = false;
            scan(self.db, cf, &[], Reading::Once, &mut |_, _| {
                any = true;
                false
            })?;
            if any {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl RowSource for CheckpointRows<'_> {
    fn scan_key_group(
        &self,
        state: usize,
        key_group: u32,
        f: &mut weir_state::serialized::RowSink<'_>,
    ) -> Result<(), StateError> {
        // `states` given to write_canonical is sorted by name; so are column family names.
        let name = &self.names[state];
        let cf = self.db.cf_handle(name).ok_or_else(|| StateError::Backend(format!("column family {name} missing")))?;
        let prefix = key_group_prefix(key_group);
        let mut failure = None;
        scan(self.db, cf, &prefix, Reading::Once, &mut |k, v| match f(&k[prefix.len()..], v) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        })?;
        failure.map_or(Ok(()), Err)
    }
}

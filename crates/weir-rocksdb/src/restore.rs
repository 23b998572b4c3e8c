//! Building a subtask's RocksDB instance from a snapshot.
//!
//! * Native, one handle covering the subtask's key groups (same parallelism, or scaling up): its
//!   files are linked into the working directory, the database is opened, and key groups outside
//!   the subtask's range are deleted by range (clip). Its SST files become the baseline later
//!   incremental checkpoints may reference.
//! * Native, several handles (scaling down): each is linked into a temporary directory, opened
//!   read-only, and the rows of the subtask's key groups are copied into a fresh database.
//! * Canonical: the key groups of the subtask are read from the key-group files into a fresh
//!   database.

use crate::snapshot::{open_read_only, Uploaded};
use crate::store::{cf_name, prefix_end, scan};
use crate::{db_err, io_err, BACKEND_NAME};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use std::collections::BTreeMap;
use std::path::Path;
use weir_core::metadata::StateMeta;
use weir_core::KeyGroupRange;
use weir_state::serialized::{key_group_prefix, read_canonical_rows};
use weir_state::{ResolvedNativeHandle, RestoredKeyedState, StateError, StoreContext};

type Opened = (DB, BTreeMap<String, StateMeta>, BTreeMap<String, Uploaded>);

/// Bytes buffered in a write batch before it is written.
const BATCH_BYTES: usize = 8 << 20;

pub(crate) fn open_instance(
    instance_dir: &Path,
    options: &Options,
    ctx: &StoreContext,
    restored: &RestoredKeyedState,
    incremental: bool,
) -> Result<Opened, StateError> {
    let db_dir = instance_dir.join("db");
    if !restored.native.is_empty() && !restored.files.is_empty() {
        return Err(StateError::Backend(format!(
            "{}: the snapshot mixes native and canonical keyed state for one operator, which Weir never writes; restore from another checkpoint or savepoint of the job",
            ctx.operator
        )));
    }
    let covering = restored.native.iter().find(|n| n.handle.key_groups.contains_range(&ctx.key_groups));
    if let Some(base) = covering {
        return open_clipped(&db_dir, options, base, ctx.key_groups, incremental);
    }
    let mut known = BTreeMap::new();
    let mut db = DB::open(options, &db_dir).map_err(db_err("creating the RocksDB instance"))?;
    let mut batch = Batch::default();
    for (i, native) in restored.native.iter().enumerate() {
        let temp = instance_dir.join(format!("restore-{i}"));
        link_files(native, &temp)?;
        let names = cf_names(native);
        let source = open_read_only(options, &temp, &names)?;
        for meta in &native.handle.states {
            ensure_cf(&mut db, options, &mut known, meta)?;
            let name = cf_name(&meta.name);
            let (Some(from), Some(_)) = (source.cf_handle(&name), db.cf_handle(&name)) else {
                continue;
            };
            for kg in native.handle.key_groups.intersection(&ctx.key_groups).iter() {
                let mut failure = None;
                scan(&source, from, &key_group_prefix(kg), &mut |k, v| {
                    if let Err(e) = batch.put(&db, &name, k, v) {
                        failure = Some(e);
                        return false;
                    }
                    true
                })?;
                if let Some(e) = failure {
                    return Err(e);
                }
            }
        }
        drop(source);
        let _ = std::fs::remove_dir_all(&temp);
    }
    if !restored.files.is_empty() {
        read_canonical_rows(restored, ctx.key_groups, &mut |meta, key, value| {
            ensure_cf(&mut db, options, &mut known, meta)?;
            batch.put(&db, &cf_name(&meta.name), key, value)
        })?;
    }
    batch.flush(&db)?;
    Ok((db, known, BTreeMap::new()))
}

fn open_clipped(
    db_dir: &Path,
    options: &Options,
    base: &ResolvedNativeHandle,
    range: KeyGroupRange,
    incremental: bool,
) -> Result<Opened, StateError> {
    link_files(base, db_dir)?;
    let names = cf_names(base);
    let descriptors = names.iter().map(|n| ColumnFamilyDescriptor::new(n, options.clone()));
    let db = DB::open_cf_descriptors(options, db_dir, descriptors)
        .map_err(db_err("opening the restored RocksDB instance"))?;
    let known: BTreeMap<String, StateMeta> = base.handle.states.iter().map(|s| (s.name.clone(), s.clone())).collect();
    let owned = base.handle.key_groups;
    if owned != range {
        let write = WriteOptions::default();
        for name in &names {
            let cf = db.cf_handle(name).ok_or_else(|| StateError::Backend(format!("column family {name} missing")))?;
            if range.start > owned.start {
                db.delete_range_cf_opt(cf, key_group_prefix(owned.start), key_group_prefix(range.start), &write)
                    .map_err(db_err("clipping restored state"))?;
            }
            let after = range.start + range.count;
            if after < owned.start + owned.count {
                let end = prefix_end(&key_group_prefix(owned.start + owned.count - 1)).unwrap_or_else(|| vec![0xff; 3]);
                db.delete_range_cf_opt(cf, key_group_prefix(after).as_slice(), end.as_slice(), &write)
                    .map_err(db_err("clipping restored state"))?;
            }
        }
    }
    let baseline = if incremental {
        base.handle
            .files
            .iter()
            .zip(&base.locations)
            .filter(|(f, _)| f.reusable)
            .map(|(f, l)| (f.name.clone(), Uploaded { location: l.clone(), size: f.file.size, crc32c: f.crc32c }))
            .collect()
    } else {
        BTreeMap::new()
    };
    Ok((db, known, baseline))
}

/// Column families of a native handle's states, in the order RocksDB needs them listed.
fn cf_names(native: &ResolvedNativeHandle) -> Vec<String> {
    native.handle.states.iter().map(|s| cf_name(&s.name)).collect()
}

/// Makes a native handle's files a RocksDB directory: SST files are hard-linked (immutable, and
/// RocksDB only ever unlinks them), the others copied (RocksDB writes to them). Falls back to
/// copying where linking is impossible (another file system).
fn link_files(native: &ResolvedNativeHandle, dir: &Path) -> Result<(), StateError> {
    if native.handle.backend != BACKEND_NAME {
        return Err(StateError::Backend(format!("native state of backend '{}'", native.handle.backend)));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for (file, source) in native.handle.files.iter().zip(&native.paths) {
        if file.name.contains('/') || file.name.contains("..") {
            return Err(StateError::CorruptFile {
                path: source.clone(),
                detail: format!(
                    "invalid RocksDB file name '{}' in the snapshot's _metadata; the snapshot is damaged",
                    file.name
                ),
            });
        }
        // RocksDB checks block checksums only when it reads a block, so a damaged file would
        // fail the job later, half-restored in effect: check every byte before opening.
        let what = format!("RocksDB file '{}'", file.name);
        weir_state::checksum::verify_file(source, file.file.size, file.crc32c, &what)?;
        let target = dir.join(&file.name);
        let linked = file.name.ends_with(".sst") && std::fs::hard_link(source, &target).is_ok();
        if !linked {
            std::fs::copy(source, &target).map_err(io_err(source))?;
        }
    }
    Ok(())
}

fn ensure_cf(
    db: &mut DB,
    options: &Options,
    known: &mut BTreeMap<String, StateMeta>,
    meta: &StateMeta,
) -> Result<(), StateError> {
    match known.get(&meta.name) {
        Some(k) if k == meta => Ok(()),
        Some(k) => Err(StateError::Backend(format!(
            "restored state '{}' is {} state{} in one file and {} state{} in another",
            meta.name,
            k.kind.label(),
            k.namespace.as_ref().map(|n| format!(" of {n}")).unwrap_or_default(),
            meta.kind.label(),
            meta.namespace.as_ref().map(|n| format!(" of {n}")).unwrap_or_default(),
        ))),
        None => {
            db.create_cf(cf_name(&meta.name), options).map_err(db_err("creating a column family"))?;
            known.insert(meta.name.clone(), meta.clone());
            Ok(())
        }
    }
}

/// Rows on their way into the database, written in batches without a write-ahead log.
#[derive(Default)]
struct Batch {
    batch: WriteBatch,
    bytes: usize,
}

impl Batch {
    fn put(&mut self, db: &DB, cf: &str, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let handle = db.cf_handle(cf).ok_or_else(|| StateError::Backend(format!("column family {cf} missing")))?;
        self.batch.put_cf(handle, key, value);
        self.bytes += key.len() + value.len();
        if self.bytes >= BATCH_BYTES {
            self.flush(db)?;
        }
        Ok(())
    }

    fn flush(&mut self, db: &DB) -> Result<(), StateError> {
        let batch = std::mem::take(&mut self.batch);
        self.bytes = 0;
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        db.write_opt(batch, &write).map_err(db_err("writing restored state"))
    }
}

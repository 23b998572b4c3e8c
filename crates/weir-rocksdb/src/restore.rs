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
//!
//! Rows copied into a fresh database (the last two cases) are written as SST files, each column
//! family's rows in key order, and ingested at the end ([`SstLoad`]): no memtable, no write-ahead
//! log, and nothing to compact, since the files land in the bottom level of the empty instance.
//! Row-by-row puts spent most of a large restore in memtable inserts, flushes and compactions.

use crate::snapshot::{open_read_only, Uploaded};
use crate::store::{cf_name, prefix_end, scan, Reading};
use crate::{db_err, io_err, BACKEND_NAME};
use rocksdb::{ColumnFamilyDescriptor, IngestExternalFileOptions, Options, SstFileWriter, WriteOptions, DB};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use weir_core::metadata::StateMeta;
use weir_core::KeyGroupRange;
use weir_state::checksum::CheckedFiles;
use weir_state::format::verify_files;
use weir_state::serialized::{key_group_prefix, read_canonical_rows};
use weir_state::{parallel, ResolvedNativeHandle, RestoredKeyedState, StateError, StoreContext};

type Opened = (DB, BTreeMap<String, StateMeta>, BTreeMap<String, Uploaded>);

/// Size at which a column family's SST file is finished and the next one started.
const SST_FILE_BYTES: u64 = 64 << 20;

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
        return open_clipped(&db_dir, options, base, &restored.checked, ctx.key_groups, incremental);
    }
    let mut known = BTreeMap::new();
    let mut db = DB::open(options, &db_dir).map_err(db_err("creating the RocksDB instance"))?;
    let mut load = SstLoad::new(instance_dir.join("ingest"), options)?;
    // In key-group order, so that each column family's rows arrive in key order.
    let mut natives: Vec<&ResolvedNativeHandle> = restored.native.iter().collect();
    natives.sort_by_key(|n| n.handle.key_groups.start);
    for (i, native) in natives.into_iter().enumerate() {
        let temp = instance_dir.join(format!("restore-{i}"));
        link_files(native, &restored.checked, &temp)?;
        let names = cf_names(native);
        let source = open_read_only(options, &temp, &names)?;
        for meta in &native.handle.states {
            ensure_cf(&mut db, options, &mut known, meta)?;
            let name = cf_name(&meta.name);
            let Some(from) = source.cf_handle(&name) else {
                continue;
            };
            for kg in native.handle.key_groups.intersection(&ctx.key_groups).iter() {
                let mut failure = None;
                scan(&source, from, &key_group_prefix(kg), Reading::Once, &mut |k, v| {
                    if let Err(e) = load.put(&name, k, v) {
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
        for (metas, chunk) in load_canonical_in_parallel(instance_dir, options, restored, ctx.key_groups)? {
            for meta in &metas {
                ensure_cf(&mut db, options, &mut known, meta)?;
            }
            load.take_files_of(chunk)?;
        }
    }
    load.ingest(&db)?;
    Ok((db, known, BTreeMap::new()))
}

/// Writes the canonical rows of `range` as SST files, the range split into one contiguous chunk
/// of key groups per core (each chunk's rows are a disjoint key range, so its files never overlap
/// another's). Building SST files is most of a restore's time, and one subtask has a whole machine
/// to itself while it restores. Returns each chunk's files and the states it found.
fn load_canonical_in_parallel<'o>(
    instance_dir: &Path,
    options: &'o Options,
    restored: &RestoredKeyedState,
    range: KeyGroupRange,
) -> Result<Vec<(Vec<StateMeta>, SstLoad<'o>)>, StateError> {
    verify_files(&restored.files, &restored.checked)?;
    parallel::for_each_chunk(range, parallel::threads(), |i, chunk| {
        load_canonical(instance_dir.join(format!("ingest-{i}")), options, restored, chunk)
    })
}

/// One chunk of [`load_canonical_in_parallel`].
fn load_canonical<'o>(
    dir: PathBuf,
    options: &'o Options,
    restored: &RestoredKeyedState,
    range: KeyGroupRange,
) -> Result<(Vec<StateMeta>, SstLoad<'o>), StateError> {
    let mut load = SstLoad::new(dir, options)?;
    let mut metas: Vec<StateMeta> = Vec::new();
    // Rows come state by state, key group by key group: look at the state only when it changes.
    let mut current: Option<(StateMeta, String)> = None;
    read_canonical_rows(restored, range, &mut |meta, key, value| {
        let cf = match &current {
            Some((m, cf)) if m == meta => cf,
            _ => {
                if !metas.contains(meta) {
                    metas.push(meta.clone());
                }
                &current.insert((meta.clone(), cf_name(&meta.name))).1
            }
        };
        load.put(cf, key, value)
    })?;
    Ok((metas, load))
}

fn open_clipped(
    db_dir: &Path,
    options: &Options,
    base: &ResolvedNativeHandle,
    checked: &CheckedFiles,
    range: KeyGroupRange,
    incremental: bool,
) -> Result<Opened, StateError> {
    link_files(base, checked, db_dir)?;
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
fn link_files(native: &ResolvedNativeHandle, checked: &CheckedFiles, dir: &Path) -> Result<(), StateError> {
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
        checked.verify(source, file.file.size, file.crc32c, &what)?;
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

/// Rows bound for a fresh database, written as SST files per column family (each family's rows
/// in ascending key order, which `SstFileWriter` checks) and ingested at the end. The files are
/// moved into the database; whatever is left (a failed restore) goes with the instance directory.
struct SstLoad<'o> {
    dir: PathBuf,
    options: &'o Options,
    /// Column families by name, with the one rows last went to first to look at.
    families: Vec<(String, FamilyFiles<'o>)>,
    last: usize,
    files_started: usize,
    /// Directories of loads whose files were taken over, removed after ingestion.
    extra_dirs: Vec<PathBuf>,
}

struct FamilyFiles<'o> {
    open: Option<SstFileWriter<'o>>,
    done: Vec<PathBuf>,
}

impl<'o> SstLoad<'o> {
    fn new(dir: PathBuf, options: &'o Options) -> Result<Self, StateError> {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(SstLoad { dir, options, families: Vec::new(), last: 0, files_started: 0, extra_dirs: Vec::new() })
    }

    fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        if self.families.get(self.last).is_none_or(|(name, _)| name != cf) {
            self.last = match self.families.iter().position(|(name, _)| name == cf) {
                Some(i) => i,
                None => {
                    self.families.push((cf.to_string(), FamilyFiles { open: None, done: Vec::new() }));
                    self.families.len() - 1
                }
            };
        }
        let family = &mut self.families[self.last].1;
        let writer = match &mut family.open {
            Some(w) => w,
            None => {
                let path = self.dir.join(format!("{:06}.sst", self.files_started));
                self.files_started += 1;
                let writer = SstFileWriter::create(self.options);
                writer.open(&path).map_err(db_err("starting an SST file of restored state"))?;
                family.done.push(path);
                family.open.insert(writer)
            }
        };
        writer.put(key, value).map_err(|e| {
            StateError::Backend(format!(
                "writing restored state of column family {cf} into {}: {e}",
                self.dir.display()
            ))
        })?;
        if writer.file_size() >= SST_FILE_BYTES {
            finish(family)?;
        }
        Ok(())
    }

    /// Adds the files of another load (of a disjoint key range) to be ingested with these.
    fn take_files_of(&mut self, mut other: SstLoad<'o>) -> Result<(), StateError> {
        for (cf, mut family) in other.families.drain(..) {
            finish(&mut family)?;
            match self.families.iter_mut().find(|(name, _)| *name == cf) {
                Some((_, mine)) => mine.done.append(&mut family.done),
                None => self.families.push((cf, family)),
            }
        }
        self.extra_dirs.push(other.dir.clone());
        self.extra_dirs.append(&mut other.extra_dirs);
        Ok(())
    }

    /// Finishes every file and ingests each column family's files into `db`.
    fn ingest(mut self, db: &DB) -> Result<(), StateError> {
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        for (cf, family) in &mut self.families {
            finish(family)?;
            let handle = db.cf_handle(cf).ok_or_else(|| StateError::Backend(format!("column family {cf} missing")))?;
            let files = std::mem::take(&mut family.done);
            db.ingest_external_file_cf_opts(handle, &ingest, files).map_err(db_err("ingesting restored state"))?;
        }
        for dir in std::iter::once(&self.dir).chain(&self.extra_dirs) {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }
}

fn finish(family: &mut FamilyFiles<'_>) -> Result<(), StateError> {
    match family.open.take() {
        Some(mut writer) => writer.finish().map_err(db_err("finishing an SST file of restored state")),
        None => Ok(()),
    }
}

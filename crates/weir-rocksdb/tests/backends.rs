//! The keyed state API against both backends, through the same public interface operators use:
//! every state kind, snapshots in every format, restores across backends and parallelisms.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_core::key_group::key_group_range_for_subtask;
use weir_core::location::SnapshotUri;
use weir_core::metadata::{SavepointFormat, SnapshotKind};
use weir_core::{JobId, KeyGroupRange, OperatorId};
use weir_rocksdb::{MemoryBudget, RocksDbSettings, RocksDbStateBackend, TableSettings};
use weir_state::*;

/// Files of one snapshot in a directory; shared files go to `<dir>/../shared`.
struct DirFiles {
    dir: PathBuf,
}

struct FileOut(io::BufWriter<std::fs::File>);
impl Write for FileOut {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl StateOutput for FileOut {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

impl SnapshotFiles for DirFiles {
    fn create_exclusive(&self, name: &str) -> io::Result<NewFile> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(name);
        let out = Box::new(FileOut(io::BufWriter::new(std::fs::File::create_new(&path)?)));
        Ok(NewFile { out, reference: name.into(), location: SnapshotUri::Local(path) })
    }
    fn create_shared(&self, name: &str) -> io::Result<NewFile> {
        self.create_exclusive(name)
    }
    fn reuse(&self, file: &SnapshotUri) -> io::Result<(String, SnapshotUri)> {
        Ok((file.to_string(), file.clone()))
    }
    fn delete(&self, file: &SnapshotUri) -> io::Result<()> {
        std::fs::remove_file(file.as_local().expect("local"))
    }
}

fn backends(tmp: &Path) -> Vec<StateBackend> {
    vec![StateBackend::HashMap, rocksdb(tmp, 1 << 20)]
}

/// RocksDB's share of the memory budget in these tests.
const ROCKSDB_BUDGET: u64 = 8 << 20;

/// The rocksdb backend with a write-back cache of `cache` bytes.
fn rocksdb(tmp: &Path, cache: usize) -> StateBackend {
    let settings = RocksDbSettings {
        local_dir: tmp.join("local"),
        memory: Some(MemoryBudget { bytes: ROCKSDB_BUDGET, write_buffer_ratio: 0.5 }),
        incremental: false,
        write_buffer_size: None,
        write_back_cache: cache,
        // Exercises the profile's reporting (logged when each instance closes).
        statistics: true,
        table: TableSettings::default(),
    };
    StateBackend::Store(Arc::new(RocksDbStateBackend::new(settings)))
}

fn ctx(max_p: u32, range: KeyGroupRange) -> StoreContext {
    StoreContext {
        native_metrics: Default::default(),
        job_id: JobId([1; 16]),
        operator_id: OperatorId::from_uid("count"),
        operator: "Count (1/1)".into(),
        subtask: range.start,
        max_parallelism: max_p,
        key_groups: range,
    }
}

/// Writes a snapshot of `backend` into `dir` and returns what a restore of it gets.
fn snapshot(backend: &mut KeyedStateBackend<String>, dir: &Path, kind: SnapshotKind, id: u64) -> RestoredKeyedState {
    let request = SnapshotRequest { id, kind, full: false };
    let snap = backend.snapshot(&request).unwrap();
    let written = snap.write(&DirFiles { dir: dir.to_path_buf() }, &format!("keyed-{id}")).unwrap();
    let mut restored = RestoredKeyedState::default();
    if let Some(h) = written.keyed {
        restored.files.push((dir.join(&h.file.path), h));
    }
    if let Some(h) = written.native {
        let paths: Vec<_> = h.files.iter().map(|f| dir.join(&f.file.path)).collect();
        let locations = paths.iter().cloned().map(SnapshotUri::Local).collect();
        restored.native.push(ResolvedNativeHandle { handle: h, locations, paths });
    }
    restored
}

struct Handles {
    count: ValueState<u64>,
    seen: ListState<String>,
    attrs: MapState<String, i32>,
    total: ReducingState<i64>,
}

fn declare(b: &mut KeyedStateBackend<String>) -> Handles {
    Handles {
        count: b.value_state(&ValueStateDescriptor::new("count")).unwrap(),
        seen: b.list_state(&ListStateDescriptor::new("seen")).unwrap(),
        attrs: b.map_state(&MapStateDescriptor::new("attrs")).unwrap(),
        total: b.reducing_state(&ReducingStateDescriptor::new("total", |a: &i64, b: &i64| a + b)).unwrap(),
    }
}

fn fill(b: &mut KeyedStateBackend<String>, h: &Handles, keys: u32) {
    for i in 0..keys * 3 {
        let key = format!("key-{}", i % keys);
        let mut s = b.scope(&key).unwrap();
        let n = h.count.value(&mut s).unwrap().unwrap_or(0);
        h.count.update(&mut s, n + 1).unwrap();
        h.seen.add(&mut s, format!("r{i}")).unwrap();
        h.attrs.put(&mut s, format!("a{}", i / keys % 2), i as i32).unwrap();
        h.total.add(&mut s, 10).unwrap();
    }
    // Removals and clears must survive snapshots too.
    let (k0, k1) = ("key-0".to_string(), "key-1".to_string());
    h.attrs.remove(&mut b.scope(&k0).unwrap(), &"a1".to_string()).unwrap();
    h.seen.clear(&mut b.scope(&k1).unwrap()).unwrap();
}

/// Checks the values `fill` leaves for every key this backend owns; returns how many it owns.
fn check(b: &mut KeyedStateBackend<String>, h: &Handles, keys: u32, max_p: u32, range: KeyGroupRange) -> u32 {
    let mut owned = 0;
    for k in 0..keys {
        let key = format!("key-{k}");
        let kg = weir_core::key_group::assign_to_key_group(&key, max_p);
        if range.offset_of(kg).is_none() {
            continue;
        }
        owned += 1;
        let mut s = b.scope(&key).unwrap();
        assert_eq!(h.count.value(&mut s).unwrap(), Some(3), "{key}");
        let seen = h.seen.get(&mut s).unwrap();
        if k == 1 {
            assert!(seen.is_empty());
        } else {
            let want: Vec<String> = (0..3).map(|j| format!("r{}", k + j * keys)).collect();
            assert_eq!(seen, want, "{key}");
        }
        let entries = h.attrs.entries(&mut s).unwrap();
        if k == 0 {
            assert_eq!(entries.len(), 1, "{key}: {entries:?}");
        } else {
            assert_eq!(entries.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["a0", "a1"], "{key}");
        }
        assert_eq!(h.total.get(&mut s).unwrap(), Some(30));
    }
    owned
}

const CANONICAL: SnapshotKind = SnapshotKind::Savepoint { format: SavepointFormat::Canonical };
const NATIVE: SnapshotKind = SnapshotKind::Savepoint { format: SavepointFormat::Native };

/// Prefetching (RocksDB's batched `MultiGet` into the write-back cache) is a hint: with a cache
/// far smaller than the state, reads that follow a prefetch of present, absent, repeated and
/// other subtasks' keys return what they return without it, and a store asks for batching only
/// while its reads miss (the heap, whose small state here fits the CPU's caches, always does).
#[test]
fn a_prefetch_changes_no_read_and_a_store_batches_only_while_reads_miss() {
    let tmp = tempfile::tempdir().unwrap();
    let half = KeyGroupRange::inclusive(0, 63);
    for (choice, before, misses) in [(StateBackend::HashMap, true, true), (rocksdb(tmp.path(), 64 << 10), false, true)]
    {
        let mut b = KeyedStateBackend::create(&choice, &ctx(128, half), &RestoredKeyedState::default()).unwrap();
        let h = declare(&mut b);
        assert_eq!(b.batching_pays(), before, "{}: no reads yet", choice.name());
        let owned: Vec<String> = (0..4000)
            .map(|k| format!("key-{k}"))
            .filter(|k| half.offset_of(weir_core::key_group::assign_to_key_group(k, 128)).is_some())
            .collect();
        for _ in 0..3 {
            for key in &owned {
                let mut s = b.scope(key).unwrap();
                let n = h.count.value(&mut s).unwrap().unwrap_or(0);
                h.count.update(&mut s, n + 1).unwrap();
            }
        }
        assert_eq!(b.batching_pays(), misses, "{}: a 64 KB cache misses every read", choice.name());
        let mut keys: Vec<String> = (0..4000).rev().map(|k| format!("key-{k}")).collect();
        keys.extend(["absent".to_string(), "key-7".to_string(), "key-7".to_string()]);
        for batch in keys.chunks(256) {
            b.prefetch(batch).unwrap();
            for key in
                batch.iter().filter(|k| half.offset_of(weir_core::key_group::assign_to_key_group(*k, 128)).is_some())
            {
                let want = owned.contains(key).then_some(3);
                assert_eq!(h.count.value(&mut b.scope(key).unwrap()).unwrap(), want, "{}: {key}", choice.name());
            }
        }
    }
}

#[test]
fn every_state_kind_round_trips_between_any_two_backends_through_a_canonical_savepoint() {
    let tmp = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::inclusive(0, 127);
    let backends = backends(tmp.path());
    for (i, from) in backends.iter().enumerate() {
        let mut b = KeyedStateBackend::create(from, &ctx(128, all), &RestoredKeyedState::default()).unwrap();
        let h = declare(&mut b);
        fill(&mut b, &h, 50);
        let restored = snapshot(&mut b, &tmp.path().join(format!("sp-{i}")), CANONICAL, 1);
        assert_eq!(restored.files.len(), 1, "{}: a canonical savepoint is a key-group file", from.name());
        for to in &backends {
            let mut r = KeyedStateBackend::create(to, &ctx(128, all), &restored).unwrap();
            let h = declare(&mut r);
            assert_eq!(check(&mut r, &h, 50, 128, all), 50, "{} -> {}", from.name(), to.name());
        }
    }
}

/// Value, list, map (user keys whose bytes sort as their values do) and reducing state, with a
/// removed map entry and a cleared list: a canonical savepoint is the same file whichever backend
/// wrote it (the rocksdb backend turns its rows into entries as it scans them).
#[test]
fn canonical_savepoints_are_the_same_bytes_on_both_backends() {
    let tmp = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::inclusive(0, 127);
    let mut files = Vec::new();
    for (i, backend) in backends(tmp.path()).iter().enumerate() {
        let mut b = KeyedStateBackend::create(backend, &ctx(128, all), &RestoredKeyedState::default()).unwrap();
        let h = declare(&mut b);
        fill(&mut b, &h, 500);
        let restored = snapshot(&mut b, &tmp.path().join(format!("sp-{i}")), CANONICAL, 1);
        files.push(std::fs::read(&restored.files[0].0).unwrap());
    }
    assert!(files[0] == files[1], "the backends wrote different canonical files");
}

#[test]
fn native_rocksdb_snapshots_restore_at_the_same_and_other_parallelisms() {
    let tmp = tempfile::tempdir().unwrap();
    let rocks = backends(tmp.path()).remove(1);
    let max_p = 13;
    let keys = 300;
    // Written at parallelism 2, natively.
    let mut snapshots = Vec::new();
    for i in 0..2 {
        let range = key_group_range_for_subtask(max_p, 2, i);
        let mut b = KeyedStateBackend::create(&rocks, &ctx(max_p, range), &RestoredKeyedState::default()).unwrap();
        let h = declare(&mut b);
        for k in 0..keys * 3 {
            let key = format!("key-{}", k % keys);
            let kg = weir_core::key_group::assign_to_key_group(&key, max_p);
            if range.offset_of(kg).is_some() {
                let mut s = b.scope(&key).unwrap();
                let n = h.count.value(&mut s).unwrap().unwrap_or(0);
                h.count.update(&mut s, n + 1).unwrap();
            }
        }
        let restored = snapshot(&mut b, &tmp.path().join(format!("n-{i}")), NATIVE, 1);
        assert_eq!(restored.native.len(), 1);
        snapshots.push(restored);
    }
    for new_p in [1, 2, 3] {
        let mut total = 0;
        for j in 0..new_p {
            let range = key_group_range_for_subtask(max_p, new_p, j);
            let mut mine = RestoredKeyedState::default();
            for s in &snapshots {
                for n in &s.native {
                    if !n.handle.key_groups.intersection(&range).is_empty() {
                        mine.native.push(n.clone());
                    }
                }
            }
            let mut b = KeyedStateBackend::create(&rocks, &ctx(max_p, range), &mine).unwrap();
            let count = b.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
            for k in 0..keys {
                let key = format!("key-{k}");
                let mut s = b.scope(&key);
                if let Ok(s) = s.as_mut() {
                    assert_eq!(count.value(s).unwrap(), Some(3), "p={new_p} subtask {j} {key}");
                    total += 1;
                }
            }
            // Clipped away key groups hold nothing: a canonical snapshot has only owned keys.
            let canonical = snapshot(&mut b, &tmp.path().join(format!("c-{new_p}-{j}")), CANONICAL, 2);
            let file = &canonical.files[0].1;
            assert_eq!(file.key_groups, range);
        }
        assert_eq!(total, keys, "every key restored exactly once at p={new_p}");
    }
}

#[test]
fn a_native_rocksdb_snapshot_is_refused_by_the_hashmap_backend_with_the_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::inclusive(0, 127);
    let backends = backends(tmp.path());
    let mut b = KeyedStateBackend::create(&backends[1], &ctx(128, all), &RestoredKeyedState::default()).unwrap();
    let h = declare(&mut b);
    fill(&mut b, &h, 5);
    let restored = snapshot(&mut b, &tmp.path().join("native"), NATIVE, 1);
    let err = KeyedStateBackend::<String>::create(&backends[0], &ctx(128, all), &restored).err().unwrap().to_string();
    assert!(err.contains("rocksdb backend's native format") && err.contains("canonical savepoint"), "{err}");
}

#[test]
fn kinds_and_types_are_checked_when_state_is_declared() {
    let tmp = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::inclusive(0, 127);
    for backend in backends(tmp.path()) {
        let mut b = KeyedStateBackend::create(&backend, &ctx(128, all), &RestoredKeyedState::default()).unwrap();
        let v = b.value_state(&ValueStateDescriptor::<String>::new("name")).unwrap();
        v.update(&mut b.scope(&"k".to_string()).unwrap(), "text".into()).unwrap();
        for kind in [CANONICAL, NATIVE] {
            let dir = tmp.path().join(format!("{}-{kind:?}", backend.name()));
            let restored = snapshot(&mut b, &dir, kind, 1);
            if kind == NATIVE && matches!(backend, StateBackend::HashMap) {
                continue; // the heap backend writes canonical files for native savepoints
            }
            let mut r = KeyedStateBackend::<String>::create(&backend, &ctx(128, all), &restored).unwrap();
            let err = r.value_state(&ValueStateDescriptor::<u64>::new("name")).err().unwrap().to_string();
            assert!(err.contains("'name'") && err.contains("value type"), "{}: {err}", backend.name());
            let mut r = KeyedStateBackend::<String>::create(&backend, &ctx(128, all), &restored).unwrap();
            let err = r.list_state(&ListStateDescriptor::<String>::new("name")).err().unwrap().to_string();
            assert!(err.contains("declared as list state but the restored state is value state"), "{err}");
        }
    }
}

#[test]
fn undeclared_restored_state_is_carried_into_later_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::inclusive(0, 127);
    for backend in backends(tmp.path()) {
        let mut b = KeyedStateBackend::create(&backend, &ctx(128, all), &RestoredKeyedState::default()).unwrap();
        let v = b.value_state(&ValueStateDescriptor::<u64>::new("kept")).unwrap();
        v.update(&mut b.scope(&"k".to_string()).unwrap(), 5).unwrap();
        let dir = tmp.path().join(backend.name());
        let first = snapshot(&mut b, &dir.join("1"), CANONICAL, 1);
        let mut mid = KeyedStateBackend::<String>::create(&backend, &ctx(128, all), &first).unwrap();
        let second = snapshot(&mut mid, &dir.join("2"), CANONICAL, 2);
        let mut last = KeyedStateBackend::<String>::create(&backend, &ctx(128, all), &second).unwrap();
        let v = last.value_state(&ValueStateDescriptor::<u64>::new("kept")).unwrap();
        assert_eq!(v.value(&mut last.scope(&"k".to_string()).unwrap()).unwrap(), Some(5), "{}", backend.name());
    }
}

#[test]
fn working_directories_are_removed_when_the_backend_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let rocks = backends(tmp.path()).remove(1);
    let all = KeyGroupRange::inclusive(0, 127);
    let mut b = KeyedStateBackend::<String>::create(&rocks, &ctx(128, all), &RestoredKeyedState::default()).unwrap();
    let h = declare(&mut b);
    fill(&mut b, &h, 10);
    let _ = snapshot(&mut b, &tmp.path().join("sp"), NATIVE, 1);
    // The instance's directory and the lock file beside it.
    assert_eq!(std::fs::read_dir(tmp.path().join("local")).unwrap().count(), 2);
    drop(b);
    assert_eq!(std::fs::read_dir(tmp.path().join("local")).unwrap().count(), 0);
}

#[test]
fn canonical_restores_into_rocksdb_load_rows_in_key_order_whatever_the_files_order() {
    // Two heap subtasks (p=2 of max 16) write a canonical savepoint each, with map entries whose
    // user keys are negative and positive numbers: their MessagePack bytes sort unlike their
    // values, which is how map state orders them in a canonical file. One rocksdb subtask
    // restores both files, listed last range first: RocksDB's bulk load takes rows only in key
    // order, so the restore must order files and rows itself.
    let tmp = tempfile::tempdir().unwrap();
    let max_p = 16;
    let user_keys = [-300i64, -5, -1, 0, 1, 127, 128, 70_000];
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let mut restored = RestoredKeyedState::default();
    for subtask in [1u32, 0] {
        let range = key_group_range_for_subtask(max_p, 2, subtask);
        let mut heap =
            KeyedStateBackend::create(&StateBackend::HashMap, &ctx(max_p, range), &RestoredKeyedState::default())
                .unwrap();
        let map = heap.map_state(&MapStateDescriptor::<i64, String>::new("m")).unwrap();
        let count = heap.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
        for (i, key) in keys.iter().enumerate() {
            if range.offset_of(weir_core::key_group::assign_to_key_group(key, max_p)).is_none() {
                continue;
            }
            let mut s = heap.scope(key).unwrap();
            for uk in user_keys {
                map.put(&mut s, uk, format!("{key}:{uk}")).unwrap();
            }
            count.update(&mut s, i as u64).unwrap();
        }
        let files = snapshot(&mut heap, &tmp.path().join(format!("sp-{subtask}")), CANONICAL, 1).files;
        restored.files.extend(files);
    }
    let rocks = backends(tmp.path()).remove(1);
    let mut r =
        KeyedStateBackend::create(&rocks, &ctx(max_p, KeyGroupRange::inclusive(0, max_p - 1)), &restored).unwrap();
    let map = r.map_state(&MapStateDescriptor::<i64, String>::new("m")).unwrap();
    let count = r.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
    for (i, key) in keys.iter().enumerate() {
        let mut s = r.scope(key).unwrap();
        let entries = map.entries(&mut s).unwrap();
        let want: Vec<(i64, String)> = user_keys.iter().map(|uk| (*uk, format!("{key}:{uk}"))).collect();
        assert_eq!(entries, want, "{key}");
        assert_eq!(count.value(&mut s).unwrap(), Some(i as u64), "{key}");
    }
}

/// RocksDB's share of the budget is applied: the block cache gets what the write buffers leave,
/// and what it holds stays within that while memtables fill beside it.
#[test]
fn the_block_cache_gets_the_budget_the_write_buffers_leave() {
    let tmp = tempfile::tempdir().unwrap();
    // No write-back cache: every update is a memtable entry.
    let backend = rocksdb(tmp.path(), 0);
    let context = ctx(128, KeyGroupRange::inclusive(0, 127));
    let metrics = context.native_metrics.clone();
    let mut b = KeyedStateBackend::<String>::create(&backend, &context, &RestoredKeyedState::default()).unwrap();
    let payload: ValueState<String> = b.value_state(&ValueStateDescriptor::new("payload")).unwrap();
    // About 0.8 MB of rows: less than one memtable (1.3 MB here: half of two thirds of the
    // write buffers' 4 MB share), so none is flushed yet.
    for i in 0..3000 {
        let key = format!("key-{i}");
        payload.update(&mut b.scope(&key).unwrap(), "x".repeat(200)).unwrap();
    }
    // A snapshot samples the native metrics before it flushes the memtables.
    b.snapshot(&SnapshotRequest { id: 1, kind: SnapshotKind::Checkpoint, full: true }).unwrap();
    let sampled: std::collections::HashMap<String, f64> = metrics.read().into_iter().collect();
    let metric = |name: &str| {
        let full = format!("payload.rocksdb.{name}");
        sampled.get(&full).copied().unwrap_or_else(|| panic!("no {full} in {sampled:?}"))
    };
    let capacity = metric("block-cache-capacity");
    assert_eq!(capacity, (ROCKSDB_BUDGET / 2) as f64, "half the share for write buffers, the rest for blocks");
    assert!(metric("cur-size-all-mem-tables") > 500_000.0, "the memtables hold the rows");
    assert!(metric("block-cache-usage") <= capacity);
}

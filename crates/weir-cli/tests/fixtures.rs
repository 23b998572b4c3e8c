//! Savepoints written by earlier Weir versions keep restoring. Each fixture under
//! `tests/fixtures/` is a savepoint of the bundled `keyed-count` job (10 keys) as that version
//! wrote it, with the output committed up to it; restoring it and counting on must continue every
//! key's count where it stopped.

mod support;

use std::path::Path;
use std::process::Command;
use support::*;

fn restores_and_continues(fixture: &str, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // A copy, so nothing a restore does can touch the fixture itself.
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
    let (savepoint, out) = (dir.path().join("savepoint"), dir.path().join("out"));
    for sub in ["savepoint", "out"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for e in std::fs::read_dir(source.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(sub).join(e.file_name())).unwrap();
        }
    }
    let records = 20_000u64;
    let run = Command::new(example("keyed-count"))
        .args(["-s", savepoint.to_str().unwrap()])
        .args(backend.flags(dir.path()))
        .args(["--output", out.to_str().unwrap(), "--count", &records.to_string(), "--keys", "10"])
        .env("WEIR_HOME", dir.path().join("home"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{fixture}: {}", String::from_utf8_lossy(&run.stderr));
    // The savepoint held the generator's position and each key's count: together with the output
    // committed before it, the restored job's output is every record's line exactly once.
    assert_eq!(committed(&out), keyed_count_truth(records, 10), "{fixture}: restored counts");
}

#[test]
fn a_v0_1_canonical_hashmap_savepoint_restores() {
    restores_and_continues("keyed-count-v0.1-hashmap-canonical", Backend::HashMap);
}

#[test]
fn a_v0_1_native_rocksdb_savepoint_restores() {
    restores_and_continues("keyed-count-v0.1-rocksdb-native", Backend::RocksDb);
}

#[test]
fn a_canonical_hashmap_savepoint_of_the_last_main_before_event_time_restores() {
    restores_and_continues("keyed-count-d61bc51-hashmap-canonical", Backend::HashMap);
}

#[test]
fn a_native_rocksdb_savepoint_of_the_last_main_before_event_time_restores() {
    restores_and_continues("keyed-count-d61bc51-rocksdb-native", Backend::RocksDb);
}

#[test]
fn a_canonical_hashmap_savepoint_in_metadata_version_3_restores() {
    restores_and_continues("keyed-count-29c9335-hashmap-canonical", Backend::HashMap);
}

#[test]
fn a_native_rocksdb_savepoint_of_rocksdb_7_9_2_restores() {
    restores_and_continues("keyed-count-29c9335-rocksdb-native", Backend::RocksDb);
}

//! Nothing Weir does deletes what it does not own: failed restores, claim modes, disposal and the
//! registry of running jobs, through the job binaries, the CLI and REST.

mod support;

use std::process::Command;
use support::*;

/// A CLAIM restore that fails before the new job's first checkpoint leaves the snapshot as it was,
/// whatever the retention policy.
fn failed_claim_restore_keeps_the_snapshot(backend: Backend) {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let savepoint = weir.keyed_count_savepoint(dir.path(), backend);
    let before = tree(&savepoint);
    // The output "directory" is a file: the sink cannot open, so the job cannot start.
    let unusable = dir.path().join("not-a-directory");
    std::fs::write(&unusable, "x").unwrap();
    for retention in ["NO_EXTERNALIZED_CHECKPOINTS", "DELETE_ON_CANCELLATION", "RETAIN_ON_CANCELLATION"] {
        let out = Command::new(example("keyed-count"))
            .args(["-s", savepoint.to_str().unwrap(), "--claim-mode", "claim"])
            .args(backend.flags(dir.path()))
            .args(["-D", &format!("execution.checkpointing.externalized-checkpoint-retention={retention}")])
            .args(["-D", "execution.checkpointing.interval=100 ms"])
            .args(["-D", &format!("execution.checkpointing.dir={}", dir.path().join("ck2").display())])
            .args(["--output", unusable.to_str().unwrap(), "--count", "10", "--keys", "2"])
            .env("WEIR_HOME", weir.home.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{retention}: the job should fail: {stderr}");
        assert!(stderr.contains("could not restore its state and was not started"), "{retention}: {stderr}");
        assert_eq!(tree(&savepoint), before, "{retention}: the claimed savepoint is untouched");
    }
}

#[test]
fn failed_claim_restore_keeps_the_snapshot_hashmap() {
    failed_claim_restore_keeps_the_snapshot(Backend::HashMap);
}

#[test]
fn failed_claim_restore_keeps_the_snapshot_rocksdb() {
    failed_claim_restore_keeps_the_snapshot(Backend::RocksDb);
}

//! Nothing Weir does deletes what it does not own, and a snapshot is bound to its files: failed
//! restores, claim modes, disposal, crafted and mixed-up snapshots, through the job binaries, the
//! CLI and REST.

mod support;

use serde_json::json;
use std::path::{Path, PathBuf};
use support::*;
use weir_core::metadata;

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
        let retention_flag = format!("execution.checkpointing.externalized-checkpoint-retention={retention}");
        let ck = format!("execution.checkpointing.dir={}", dir.path().join("ck2").display());
        let extra = ["-D", &retention_flag, "-D", "execution.checkpointing.interval=100 ms", "-D", &ck];
        let out = weir.keyed_count(dir.path(), backend, Some((&savepoint, "claim")), &extra, &unusable);
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

/// Disposal takes only a snapshot directory or its own `_metadata`, never a symbolic link, and
/// deletes only `_metadata` and the files it references; a CLAIM restore is held to the same.
#[test]
fn disposal_deletes_only_the_snapshot_it_is_given() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let (job, _) = weir.start_keyed_count(dir.path(), Backend::HashMap);
    let savepoint = weir.savepoint(&job, &dir.path().join("sp"), Backend::HashMap);
    let other = weir.savepoint(&job, &dir.path().join("sp"), Backend::HashMap);

    // A directory of the user's with a copy of _metadata and other files in it.
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    std::fs::copy(savepoint.join("_metadata"), backups.join("backup.meta")).unwrap();
    std::fs::write(backups.join("notes.txt"), "mine").unwrap();
    // A directory holding a link to the other savepoint's _metadata.
    let linked = dir.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    std::os::unix::fs::symlink(other.join("_metadata"), linked.join("_metadata")).unwrap();
    std::fs::write(linked.join("notes.txt"), "mine too").unwrap();
    let untouched = || (tree(&backups), tree(&linked), tree(&other), tree(&savepoint));
    let before = untouched();

    let err = weir.fails(&["savepoint", "-d", backups.join("backup.meta").to_str().unwrap()]);
    assert!(err.contains("is not a snapshot's _metadata file"), "{err}");
    let err = weir.fails(&["savepoint", "-d", linked.join("_metadata").to_str().unwrap()]);
    assert!(err.contains("symbolic link"), "{err}");
    let err = weir.fails(&["savepoint", "-d", linked.to_str().unwrap()]);
    assert!(err.contains("symbolic link"), "{err}");
    // The same over REST.
    let base = format!("http://{}", weir.address(&job));
    for path in [backups.join("backup.meta"), linked.join("_metadata")] {
        let (status, v) = http("POST", &format!("{base}/savepoint-disposal"), Some(json!({ "savepoint-path": path })));
        assert_eq!(status, 200);
        let trigger = v["request-id"].as_str().unwrap();
        let (_, v) = http("GET", &format!("{base}/savepoint-disposal/{trigger}"), None);
        assert!(v["operation"]["failure-cause"]["stack-trace"].is_string(), "{v}");
    }
    // A CLAIM restore from a file that is not a snapshot's _metadata is refused before start.
    let out = dir.path().join("claim-out");
    let claim =
        weir.keyed_count(dir.path(), Backend::HashMap, Some((&backups.join("backup.meta"), "claim")), &[], &out);
    let stderr = String::from_utf8_lossy(&claim.stderr);
    assert!(!claim.status.success() && stderr.contains("is not a snapshot's _metadata file"), "{stderr}");
    assert_eq!(untouched(), before, "refused disposals and restores delete nothing");

    // A savepoint directory with a file of the user's in it: the savepoint goes, the file stays.
    std::fs::write(savepoint.join("README"), "written by hand").unwrap();
    let stdout = weir.ok(&["savepoint", "-d", savepoint.to_str().unwrap()]);
    assert!(stdout.contains("disposed"), "{stdout}");
    let left: Vec<PathBuf> = tree(&savepoint).into_keys().collect();
    assert_eq!(left, vec![savepoint.join("README")]);
    weir.ok(&["cancel", &job]);
}

/// Metadata of a snapshot, edited and written back with a valid checksum (as an attacker could).
fn rewrite_metadata(snapshot: &Path, edit: impl FnOnce(&mut metadata::SnapshotMetadata)) {
    let file = snapshot.join("_metadata");
    let mut meta = metadata::decode(&std::fs::read(&file).unwrap(), "m").unwrap();
    edit(&mut meta);
    std::fs::write(&file, metadata::encode(&meta).unwrap()).unwrap();
}

/// A `_metadata` that references a file outside the snapshot (an absolute path, with the right
/// size and checksum) is refused at load, naming the entry; a CLAIM restore deletes nothing.
#[test]
fn a_crafted_reference_outside_the_snapshot_is_refused() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let savepoint = weir.keyed_count_savepoint(dir.path(), Backend::RocksDb);
    let crafted = dir.path().join("crafted");
    copy_dir(&savepoint, &crafted);
    let victim = dir.path().join("victim.sst");
    let mut entry = String::new();
    rewrite_metadata(&crafted, |m| {
        let native = m.operators.iter_mut().flat_map(|o| &mut o.subtasks).find_map(|s| s.native.as_mut()).unwrap();
        let file = native.files.iter_mut().find(|f| f.name.ends_with(".sst")).unwrap();
        std::fs::copy(crafted.join(&file.file.path), &victim).unwrap();
        file.file.path = victim.display().to_string();
        entry = file.file.path.clone();
    });
    let out = dir.path().join("out");
    let run = weir.keyed_count(dir.path(), Backend::RocksDb, Some((&crafted, "claim")), &[], &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("references the file '{entry}' (operator uid 'count'")), "{stderr}");
    assert!(stderr.contains("outside the snapshot's directory"), "{stderr}");
    assert!(victim.is_file(), "the file outside the snapshot is untouched");
    assert!(crafted.join("_metadata").is_file(), "the refused snapshot is untouched");
}

/// A heap state file copied in from another savepoint of the same job is refused before start,
/// naming it (its size or checksum differs from what `_metadata` recorded).
#[test]
fn a_state_file_from_another_snapshot_is_refused() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let (job, out) = weir.start_keyed_count(dir.path(), Backend::HashMap);
    let first = weir.savepoint(&job, &dir.path().join("sp"), Backend::HashMap);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = weir.savepoint(&job, &dir.path().join("sp"), Backend::HashMap);
    weir.ok(&["cancel", &job]);
    let mixed = dir.path().join("mixed");
    copy_dir(&second, &mixed);
    let state = std::fs::read_dir(&first)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("keyed-"))
        .unwrap();
    let swapped = mixed.join(state.file_name().unwrap());
    std::fs::copy(&state, &swapped).unwrap();
    // Restored with the job's own output directory, which the file sink's state refers to.
    let run = weir.keyed_count(dir.path(), Backend::HashMap, Some((&mixed, "no_claim")), &[], &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "a mixed-up snapshot must not restore: {stderr}");
    assert!(stderr.contains("could not restore its state and was not started"), "{stderr}");
    assert!(stderr.contains(&swapped.display().to_string()), "the error names the file: {stderr}");
    assert!(stderr.contains("belongs to another snapshot"), "{stderr}");
}

/// The registry of running jobs is not trusted as written: checkpoint directories are stored
/// absolute, every running job is checked before a disposal (from the CLI and from any job's
/// REST API), forged entries are never acted on, and the CLI talks only to a REST API that
/// answers as the job it asked for.
#[test]
fn running_jobs_keep_their_checkpoints_and_forged_registry_entries_are_ignored() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    // Job B, started from its own directory with a relative checkpoint directory.
    let b_dir = dir.path().join("b");
    std::fs::create_dir(&b_dir).unwrap();
    let args = keyed_count_args("1 h", Path::new("ck"), Path::new("out"));
    let job_b = weir.run_detached_in(&b_dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    // A checkpoint that stays the latest (and only) retained one while the job runs.
    let stdout = weir.ok(&["checkpoint", &job_b]);
    let id = stdout.lines().find_map(|l| l.strip_prefix("Checkpoint ")).and_then(|l| l.split(' ').next()).unwrap();
    let b_checkpoint = b_dir.join("ck").join(&job_b).join(format!("chk-{id}"));
    assert!(b_checkpoint.join("_metadata").is_file(), "{stdout}");
    // From another working directory, through the CLI.
    let err = String::from_utf8_lossy(
        &weir.cmd_in(dir.path(), &["savepoint", "--dispose", b_checkpoint.to_str().unwrap()]).stderr,
    )
    .to_string();
    assert!(err.contains(&format!("belongs to job {job_b}, which is still running")), "{err}");
    // Through another job's REST API.
    let (job_a, _) = weir.start_keyed_count(dir.path(), Backend::HashMap);
    let base_a = format!("http://{}", weir.address(&job_a));
    let (_, v) = http("POST", &format!("{base_a}/savepoint-disposal"), Some(json!({ "savepoint-path": b_checkpoint })));
    let (_, v) = http("GET", &format!("{base_a}/savepoint-disposal/{}", v["request-id"].as_str().unwrap()), None);
    let cause = v["operation"]["failure-cause"]["stack-trace"].as_str().unwrap_or_default().to_string();
    assert!(cause.contains(&format!("belongs to job {job_b}")), "{v}");
    assert!(b_checkpoint.join("_metadata").is_file(), "job B's checkpoint is untouched");

    // A forged entry whose id walks out of the registry, with a dead pid.
    let jobs = weir.home.path().join("jobs");
    std::fs::write(weir.home.path().join("victim.json"), "mine").unwrap();
    let forged =
        json!({ "id": "../victim", "name": "x", "pid": 999_999_999u32, "address": "127.0.0.1:1", "started_ms": 0 });
    std::fs::write(jobs.join("forged.json"), forged.to_string()).unwrap();
    let listed = weir.ok(&["list"]);
    assert!(listed.contains(&job_a) && listed.contains(&job_b), "{listed}");
    assert!(weir.home.path().join("victim.json").exists(), "weir list deletes nothing outside the registry");
    // A well-formed entry of a job that does not exist, pointing at job A's live process and REST.
    let phantom = "0123456789abcdef0123456789abcdef";
    let entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(jobs.join(format!("{job_a}.json"))).unwrap()).unwrap();
    let mut impostor = entry.clone();
    impostor["id"] = json!(phantom);
    std::fs::write(jobs.join(format!("{phantom}.json")), impostor.to_string()).unwrap();
    let err = weir.fails(&["savepoint", phantom, dir.path().join("sp").to_str().unwrap()]);
    assert!(err.contains(&format!("does not answer as job {phantom}")), "{err}");
    assert!(!dir.path().join("sp").exists(), "no savepoint was taken of another job");
    weir.ok(&["cancel", &job_a]);
    weir.ok(&["cancel", &job_b]);
}

/// A savepoint directory a killed process left half-written (marked in progress, no `_metadata`,
/// no live writer) is deleted when a job next writes a savepoint there; completed savepoints and
/// directories Weir did not mark stay.
#[test]
fn partial_savepoints_of_killed_processes_are_cleaned_up() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("sp");
    let (job, _) = weir.start_keyed_count(dir.path(), Backend::HashMap);
    let complete = weir.savepoint(&job, &target, Backend::HashMap);
    assert!(!complete.join("_inprogress").exists(), "a complete savepoint holds no in-progress mark");
    let partial = target.join("savepoint-000000-deadbeef0000");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("_inprogress"), "").unwrap();
    std::fs::write(partial.join("keyed-x-0"), "half written").unwrap();
    let foreign = target.join("savepoint-by-hand");
    std::fs::create_dir(&foreign).unwrap();
    let next = weir.savepoint(&job, &target, Backend::HashMap);
    assert!(!partial.exists(), "the partial savepoint is gone");
    assert!(complete.join("_metadata").is_file() && next.join("_metadata").is_file() && foreign.is_dir());
    weir.ok(&["cancel", &job]);
}

//! The S3 server of the tests (`scripts/s3.sh`: s3s-fs on loopback with SigV4 credentials), the
//! settings that reach it, fresh prefixes, and the test side's view of what is in the bucket.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use weir::{SnapshotStore, SnapshotUri, Stores};

/// The bucket the examples' tests use.
pub const BUCKET: &str = "weir-examples-test";

fn script(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3.sh");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(out.status.success(), "scripts/s3.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Flink's `s3.*` settings that reach the shared server (started, with the bucket, once per test
/// process).
pub fn s3_settings() -> &'static [(&'static str, String)] {
    static SETTINGS: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        script(&["start"]);
        script(&["create-bucket", BUCKET]);
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        vec![
            ("s3.endpoint", script(&["endpoint"])),
            ("s3.access-key", var("WEIR_S3_ACCESS_KEY", "weir-test-access")),
            ("s3.secret-key", var("WEIR_S3_SECRET_KEY", "weir-test-secret")),
            ("s3.path.style.access", "true".to_string()),
        ]
    })
}

/// A second bucket, for savepoints moved between buckets.
pub fn other_bucket() -> &'static str {
    static CREATED: OnceLock<()> = OnceLock::new();
    CREATED.get_or_init(|| {
        s3_settings();
        script(&["create-bucket", "weir-examples-moved"]);
    });
    "weir-examples-moved"
}

/// A prefix no other test (or run) uses.
pub fn fresh_prefix(name: &str) -> SnapshotUri {
    s3_settings();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    SnapshotUri::parse(&format!("s3://{BUCKET}/{name}-{}", &unique[..12])).unwrap()
}

/// The store the tests read the bucket through.
pub fn stores() -> Stores {
    let mut config = weir::Configuration::new();
    for (k, v) in s3_settings() {
        config.set(k, v).unwrap();
    }
    Stores::from_config(&config)
}

/// The newest valid checkpoint under any job directory of `base` (ids grow across restores).
pub fn latest_checkpoint(base: &SnapshotUri) -> Option<SnapshotUri> {
    let stores = stores();
    let jobs = stores.list(base).unwrap();
    jobs.iter()
        .filter_map(|job| weir::latest_checkpoint_in(&stores, &base.join(&job.name)))
        .max_by_key(|(id, _)| *id)
        .map(|(_, location)| location)
}

/// The local file in which the test server (s3s-fs, which keeps objects as files) stores the
/// object of `dir` whose name starts with `prefix`: for tests that damage stored bytes.
pub fn object_file(dir: &SnapshotUri, prefix: &str) -> PathBuf {
    let SnapshotUri::S3 { bucket, prefix: key } = dir else { panic!("{dir} is not on S3") };
    let port = std::env::var("WEIR_S3_PORT").unwrap_or_else(|_| "9000".into());
    let tmp = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let root = std::env::var("WEIR_S3_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(tmp).join(format!("weir-s3-{port}")));
    let dir = root.join("data").join(bucket).join(key);
    let found = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path());
    found
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}* in {}", dir.display()))
}

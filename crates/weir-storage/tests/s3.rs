//! The S3 store against a real S3 server on loopback (`scripts/s3.sh`: s3s-fs, SigV4): writes,
//! multipart uploads, conditional creates, listing, deletion, and the errors a user meets.
#![cfg(feature = "s3")]

use bytes::Bytes;
use std::path::PathBuf;
use std::process::Command;
use weir_storage::{BlobStore, S3Settings, SnapshotUri, StorageError, PART_SIZE};

fn s3(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3.sh");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(out.status.success(), "scripts/s3.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn settings(secret: &str) -> S3Settings {
    s3(&["start"]);
    S3Settings {
        endpoint: Some(s3(&["endpoint"])),
        access_key: Some(std::env::var("WEIR_S3_ACCESS_KEY").unwrap_or_else(|_| "weir-test-access".into())),
        secret_key: Some(secret.to_string()),
        region: None,
        path_style: true,
    }
}

fn secret() -> String {
    std::env::var("WEIR_S3_SECRET_KEY").unwrap_or_else(|_| "weir-test-secret".into())
}

#[test]
fn objects_round_trip_through_s3() {
    let settings = settings(&secret());
    s3(&["create-bucket", "weir-storage-test"]);
    let prefix = format!("run-{}", std::process::id());
    let uri = SnapshotUri::parse(&format!("s3://weir-storage-test/{prefix}/ck")).unwrap();
    let store = BlobStore::open(&uri, &settings).unwrap();
    store.put("chk-1/state", Bytes::from_static(b"state bytes")).unwrap();
    let big = Bytes::from((0..PART_SIZE * 2 + 123).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    store.put("chk-1/big", big.clone()).unwrap();
    assert_eq!(store.get("chk-1/big").unwrap(), big, "a multipart upload reads back byte for byte");
    store.create("chk-1/_metadata", Bytes::from_static(b"first")).unwrap();
    let second = store.create("chk-1/_metadata", Bytes::from_static(b"second"));
    assert!(matches!(second, Err(StorageError::AlreadyExists { .. })), "{second:?}");
    assert_eq!(store.get("chk-1/_metadata").unwrap(), Bytes::from_static(b"first"));
    let keys: Vec<String> = store.list("chk-1").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["chk-1/_metadata", "chk-1/big", "chk-1/state"], "keys are relative to the prefix");
    store.delete("chk-1/state").unwrap();
    assert_eq!(store.size("chk-1/state").unwrap(), None);
    assert_eq!(store.size("chk-1/_metadata").unwrap(), Some(5));
    // A streamed object: parts as it grows; an abandoned one leaves nothing.
    use std::io::Write;
    let mut writer = store.writer("chk-2/stream");
    for chunk in big.chunks(100_000) {
        writer.write_all(chunk).unwrap();
    }
    assert_eq!(store.size("chk-2/stream").unwrap(), None, "nothing is visible before finish");
    writer.finish().unwrap();
    assert_eq!(store.get("chk-2/stream").unwrap(), big);
    let mut abandoned = store.writer("chk-2/abandoned");
    abandoned.write_all(&big).unwrap();
    drop(abandoned);
    assert_eq!(store.size("chk-2/abandoned").unwrap(), None);
}

#[test]
fn wrong_credentials_and_a_missing_bucket_name_the_endpoint_and_bucket() {
    let good = settings(&secret());
    let endpoint = good.endpoint.clone().unwrap();
    s3(&["create-bucket", "weir-storage-auth"]);
    let uri = SnapshotUri::parse("s3://weir-storage-auth/x").unwrap();
    let e = BlobStore::open(&uri, &settings("not-the-secret")).unwrap().put("k", Bytes::from_static(b"v")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("s3://weir-storage-auth/x/k")
            && text.contains("bucket 'weir-storage-auth'")
            && text.contains(&endpoint),
        "{text}"
    );
    let text = BlobStore::open(&uri, &settings("not-the-secret")).unwrap().check().unwrap_err().to_string();
    assert!(text.contains("bucket 'weir-storage-auth'") && text.contains(&endpoint), "{text}");
    // (s3s-fs creates a missing bucket on a write: the check before anything is written names it.)
    let missing = SnapshotUri::parse("s3://no-such-bucket-here/x").unwrap();
    let text = BlobStore::open(&missing, &good).unwrap().check().unwrap_err().to_string();
    assert!(text.contains("bucket 'no-such-bucket-here'") && text.contains(&endpoint), "{text}");
    BlobStore::open(&uri, &good).unwrap().check().unwrap();
}

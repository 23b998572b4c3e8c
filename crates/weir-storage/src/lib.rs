//! Snapshot bytes behind one door, addressed by URI ([`SnapshotUri`]): a local directory, memory
//! (for tests), or a prefix in an S3 bucket (the `s3` feature). A synchronous facade over the
//! `object_store` crate, which does the protocol work (SigV4, multipart uploads, retries with
//! back-off, conditional creates): the engine calls it from its own threads, and it runs the
//! requests on a small runtime of its own.
//!
//! Keys are relative to the store's root and use `/` between segments.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use std::sync::{Arc, OnceLock};
pub use weir_core::location::SnapshotUri;

/// Objects larger than this are uploaded in parts (S3's minimum part size is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object exists already (a conditional create, such as `_metadata`'s, lost).
    #[error("{location} exists already")]
    AlreadyExists { location: String },
    #[error("{location} does not exist")]
    NotFound { location: String },
    /// Anything else, with the store's own explanation (credentials, bucket, network).
    #[error("{doing} {location}{hint}: {source}")]
    Failed {
        doing: &'static str,
        location: String,
        hint: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("cannot open {location}: {reason}")]
    Open { location: String, reason: String },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// What [`BlobStore::list_dir`] finds: objects (name, size), then deeper "directories" by name.
pub type Listing = (Vec<(String, u64)>, Vec<String>);

/// How to reach S3: Flink's keys (`s3.endpoint`, `s3.access-key`, `s3.secret-key`,
/// `s3.path.style.access`, `s3.region`) over the standard AWS environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which most servers other than AWS need.
    pub path_style: bool,
}

impl S3Settings {
    pub fn from_config(config: &weir_core::config::Configuration) -> S3Settings {
        use weir_core::config::keys;
        S3Settings {
            endpoint: config.get_str(keys::S3_ENDPOINT),
            access_key: config.get_str(keys::S3_ACCESS_KEY),
            secret_key: config.get_str(keys::S3_SECRET_KEY),
            region: config.get_str(keys::S3_REGION),
            path_style: config.get_bool(keys::S3_PATH_STYLE_ACCESS).unwrap_or(false),
        }
    }
}

/// The requests' runtime, shared by every store of the process.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-storage")
            .enable_all()
            .build()
            .expect("a runtime for storage requests")
    })
}

/// A place to keep snapshot bytes.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    uri: SnapshotUri,
    /// Where keys start inside the store (the S3 prefix; empty elsewhere).
    root: String,
    /// What an error message adds to help: the endpoint and bucket of an S3 store.
    hint: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({})", self.uri)
    }
}

impl BlobStore {
    /// The store `uri` names. A local directory is created if missing.
    pub fn open(uri: &SnapshotUri, s3: &S3Settings) -> Result<BlobStore> {
        match uri {
            SnapshotUri::Local(dir) => {
                let fail = |e: std::io::Error| StorageError::Open { location: uri.to_string(), reason: e.to_string() };
                std::fs::create_dir_all(dir).map_err(fail)?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| StorageError::Open { location: uri.to_string(), reason: e.to_string() })?;
                Ok(BlobStore { store: Arc::new(store), uri: uri.clone(), root: String::new(), hint: String::new() })
            }
            SnapshotUri::S3 { bucket, prefix } => Self::open_s3(uri, bucket, prefix, s3),
        }
    }

    /// A store in memory, for tests.
    pub fn in_memory() -> BlobStore {
        BlobStore {
            store: Arc::new(object_store::memory::InMemory::new()),
            uri: SnapshotUri::Local("memory".into()),
            root: String::new(),
            hint: String::new(),
        }
    }

    #[cfg(feature = "s3")]
    fn open_s3(uri: &SnapshotUri, bucket: &str, prefix: &str, s3: &S3Settings) -> Result<BlobStore> {
        use object_store::aws::AmazonS3Builder;
        // Transient failures (5xx, throttling, dropped connections) are retried with exponential
        // back-off for a few seconds; a server that stays away fails the operation, so a
        // savepoint reports the failure instead of hanging for object_store's default 3 minutes.
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: 5,
            retry_timeout: std::time::Duration::from_secs(30),
        };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
        if let Some(endpoint) = &s3.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(key) = &s3.access_key {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &s3.secret_key {
            builder = builder.with_secret_access_key(secret);
        }
        builder = builder.with_region(s3.region.clone().unwrap_or_else(|| "us-east-1".to_string()));
        if s3.path_style {
            builder = builder.with_virtual_hosted_style_request(false);
        }
        let store =
            builder.build().map_err(|e| StorageError::Open { location: uri.to_string(), reason: e.to_string() })?;
        let endpoint = s3.endpoint.as_deref().unwrap_or("AWS");
        Ok(BlobStore {
            store: Arc::new(store),
            uri: uri.clone(),
            root: prefix.to_string(),
            hint: format!(" (bucket '{bucket}' at {endpoint})"),
        })
    }

    #[cfg(not(feature = "s3"))]
    fn open_s3(uri: &SnapshotUri, _: &str, _: &str, _: &S3Settings) -> Result<BlobStore> {
        Err(StorageError::Open {
            location: uri.to_string(),
            reason: "this build has no S3 support (build weir-storage with the `s3` feature)".into(),
        })
    }

    pub fn uri(&self) -> &SnapshotUri {
        &self.uri
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.root.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.root))
        }
    }

    fn location(&self, key: &str) -> String {
        if key.is_empty() {
            self.uri.to_string()
        } else {
            self.uri.join(key).to_string()
        }
    }

    fn failed(&self, doing: &'static str, key: &str, source: object_store::Error) -> StorageError {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound { location: self.location(key) },
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                StorageError::AlreadyExists { location: self.location(key) }
            }
            source => StorageError::Failed {
                doing,
                location: self.location(key),
                hint: self.hint.clone(),
                source: Box::new(source),
            },
        }
    }

    /// Writes `key` whole (in parts above [`PART_SIZE`], several in flight); a reader sees the
    /// old object or the new one, never a part of it.
    pub fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key);
        let store = self.store.clone();
        let result = runtime().block_on(async move {
            if bytes.len() <= PART_SIZE {
                return store.put(&path, PutPayload::from(bytes)).await.map(|_| ());
            }
            let upload = store.put_multipart(&path).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            for chunk in bytes.chunks(PART_SIZE) {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(chunk);
            }
            writer.finish().await.map(|_| ())
        });
        result.map_err(|e| self.failed("cannot write", key, e))
    }

    /// A writer that streams `key` to the store: whole-object at [`BlobWriter::finish`] when it
    /// stays small, in parts (several in flight) as it grows, never buffering more than a few
    /// parts. Dropped without `finish`, it leaves nothing behind.
    pub fn writer(&self, key: &str) -> BlobWriter {
        BlobWriter { store: self.clone(), key: key.to_string(), buffer: Vec::new(), upload: None, written: 0 }
    }

    /// Writes `key` only if it does not exist ([`StorageError::AlreadyExists`] otherwise): for
    /// `_metadata`, which makes a snapshot valid and must never replace another's.
    pub fn create(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key);
        let store = self.store.clone();
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        runtime()
            .block_on(async move { store.put_opts(&path, PutPayload::from(bytes), options).await })
            .map(|_| ())
            .map_err(|e| self.failed("cannot create", key, e))
    }

    pub fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key);
        let store = self.store.clone();
        runtime()
            .block_on(async move { store.get(&path).await?.bytes().await })
            .map_err(|e| self.failed("cannot read", key, e))
    }

    /// The size of `key`, or `None` when it does not exist.
    pub fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key);
        let store = self.store.clone();
        match runtime().block_on(async move { store.head(&path).await }) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("cannot read", key, e)),
        }
    }

    /// Every key under `prefix` (a directory-like key, or empty for all), with its size, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let path = if prefix.is_empty() && self.root.is_empty() { None } else { Some(self.path(prefix)) };
        let store = self.store.clone();
        let objects: Vec<object_store::ObjectMeta> = runtime()
            .block_on(async move { store.list(path.as_ref()).try_collect().await })
            .map_err(|e| self.failed("cannot list", prefix, e))?;
        let skip = if self.root.is_empty() { 0 } else { self.root.len() + 1 };
        let mut keys: Vec<(String, u64)> =
            objects.into_iter().map(|m| (m.location.as_ref()[skip..].to_string(), m.size)).collect();
        keys.sort();
        Ok(keys)
    }

    /// What is directly under `prefix`, as a directory listing shows it: objects (name, size) and
    /// the names of deeper "directories" (common prefixes), each sorted.
    pub fn list_dir(&self, prefix: &str) -> Result<Listing> {
        let path = if prefix.is_empty() && self.root.is_empty() { None } else { Some(self.path(prefix)) };
        let store = self.store.clone();
        let listing = runtime()
            .block_on(async move { store.list_with_delimiter(path.as_ref()).await })
            .map_err(|e| self.failed("cannot list", prefix, e))?;
        let name = |p: &ObjectPath| p.filename().unwrap_or_default().to_string();
        let mut files: Vec<(String, u64)> = listing.objects.iter().map(|m| (name(&m.location), m.size)).collect();
        let mut dirs: Vec<String> = listing.common_prefixes.iter().map(name).collect();
        files.sort();
        dirs.sort();
        Ok((files, dirs))
    }

    /// Copies `from` to `to` inside the store (server-side where the store can).
    pub fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (source, target) = (self.path(from), self.path(to));
        let store = self.store.clone();
        runtime()
            .block_on(async move { store.copy(&source, &target).await })
            .map_err(|e| self.failed("cannot copy", from, e))
    }

    /// Streams `key` into the local file `to` (created or truncated); returns its size and CRC32C,
    /// computed on the way, so checking the copy needs no second read.
    pub fn download(&self, key: &str, to: &std::path::Path) -> Result<(u64, u32)> {
        use std::io::Write;
        let path = self.path(key);
        let store = self.store.clone();
        let local =
            |e: std::io::Error| StorageError::Open { location: to.display().to_string(), reason: e.to_string() };
        let mut file = std::fs::File::create(to).map_err(local)?;
        let (mut size, mut crc) = (0u64, 0u32);
        let result: std::result::Result<(), object_store::Error> = runtime().block_on(async {
            let mut stream = store.get(&path).await?.into_stream();
            while let Some(chunk) = stream.try_next().await? {
                size += chunk.len() as u64;
                crc = crc32c::crc32c_append(crc, &chunk);
                file.write_all(&chunk)
                    .map_err(|e| object_store::Error::Generic { store: "local file", source: Box::new(e) })?;
            }
            Ok(())
        });
        result.map_err(|e| self.failed("cannot download", key, e))?;
        file.sync_all().map_err(local)?;
        Ok((size, crc))
    }

    /// Checks that the store answers and that its bucket exists, with one cheap listing: for a job
    /// to call before it starts, so wrong credentials or a missing bucket fail it at once.
    pub fn check(&self) -> Result<()> {
        let path = if self.root.is_empty() { None } else { Some(self.path("")) };
        let store = self.store.clone();
        runtime()
            .block_on(async move { store.list(path.as_ref()).try_next().await.map(|_| ()) })
            .map_err(|e| self.failed("cannot list", "", e))
    }

    /// Deletes `key`; one that is not there counts as deleted.
    pub fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        let store = self.store.clone();
        match runtime().block_on(async move { store.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("cannot delete", key, e)),
        }
    }
}

/// Streams one object to a store (see [`BlobStore::writer`]).
pub struct BlobWriter {
    store: BlobStore,
    key: String,
    /// Bytes not yet handed to the upload (less than a part).
    buffer: Vec<u8>,
    /// The multipart upload, once the object outgrew one part.
    upload: Option<WriteMultipart>,
    written: u64,
}

impl BlobWriter {
    /// Hands full parts to the multipart upload (starting it), waiting while too many are in
    /// flight.
    fn send_parts(&mut self) -> std::io::Result<()> {
        let failed = |store: &BlobStore, key: &str, e| std::io::Error::other(store.failed("cannot write", key, e));
        if self.upload.is_none() {
            let path = self.store.path(&self.key);
            let store = self.store.store.clone();
            let upload = runtime().block_on(async move { store.put_multipart(&path).await });
            let upload = upload.map_err(|e| failed(&self.store, &self.key, e))?;
            self.upload = Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE));
        }
        let Some(upload) = self.upload.as_mut() else { unreachable!("started above") };
        runtime().block_on(upload.wait_for_capacity(PARTS_IN_FLIGHT)).map_err(|e| failed(&self.store, &self.key, e))?;
        // Parts are uploaded by tasks of the storage runtime.
        let _runtime = runtime().enter();
        upload.write(&self.buffer);
        self.buffer.clear();
        Ok(())
    }

    /// Completes the object; returns its size. Until this returns, readers see no object (or
    /// the one it replaces).
    pub fn finish(mut self) -> Result<u64> {
        let written = self.written;
        let key = std::mem::take(&mut self.key);
        let buffer = std::mem::take(&mut self.buffer);
        match self.upload.take() {
            None => self.store.put(&key, Bytes::from(buffer)).map(|()| written),
            Some(mut upload) => {
                let _runtime = runtime().enter();
                upload.write(&buffer);
                runtime()
                    .block_on(upload.finish())
                    .map(|_| written)
                    .map_err(|e| self.store.failed("cannot write", &key, e))
            }
        }
    }
}

impl std::io::Write for BlobWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buffer.len() >= PART_SIZE {
            self.send_parts()?;
        }
        Ok(data.len())
    }

    /// Parts go out as they fill; the object exists only after [`BlobWriter::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BlobWriter {
    /// An unfinished upload is aborted: its parts are deleted and no object appears.
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            if let Err(e) = runtime().block_on(upload.abort()) {
                tracing::warn!("aborting the upload of {}: {e}", self.store.location(&self.key));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &BlobStore) {
        store.put("chk-1/state-0", Bytes::from_static(b"hello")).unwrap();
        store.put("chk-1/big", Bytes::from(vec![7u8; PART_SIZE * 2 + 1])).unwrap();
        assert_eq!(store.get("chk-1/state-0").unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(store.get("chk-1/big").unwrap().len(), PART_SIZE * 2 + 1, "a multipart object reads back whole");
        store.create("chk-1/_metadata", Bytes::from_static(b"m1")).unwrap();
        assert!(
            matches!(
                store.create("chk-1/_metadata", Bytes::from_static(b"m2")),
                Err(StorageError::AlreadyExists { .. })
            ),
            "a second _metadata never replaces the first"
        );
        assert_eq!(store.get("chk-1/_metadata").unwrap(), Bytes::from_static(b"m1"));
        assert_eq!(
            store.list("chk-1").unwrap(),
            vec![
                ("chk-1/_metadata".to_string(), 2),
                ("chk-1/big".to_string(), (PART_SIZE * 2 + 1) as u64),
                ("chk-1/state-0".to_string(), 5)
            ]
        );
        assert_eq!(store.size("chk-1/state-0").unwrap(), Some(5));
        assert_eq!(store.size("chk-2/nothing").unwrap(), None);
        assert!(matches!(store.get("chk-2/nothing"), Err(StorageError::NotFound { .. })));
        store.put("chk-1/sub/deeper", Bytes::from_static(b"x")).unwrap();
        let (files, dirs) = store.list_dir("chk-1").unwrap();
        assert_eq!(files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(), ["_metadata", "big", "state-0"]);
        assert_eq!(dirs, ["sub"]);
        store.copy("chk-1/state-0", "chk-1/sub/copy").unwrap();
        let local = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(store.download("chk-1/sub/copy", local.path()).unwrap(), (5, crc32c::crc32c(b"hello")));
        assert_eq!(std::fs::read(local.path()).unwrap(), b"hello");
        store.delete("chk-1/state-0").unwrap();
        store.delete("chk-1/state-0").unwrap();
        assert_eq!(store.size("chk-1/state-0").unwrap(), None);
    }

    /// Streams 2.5 parts in small writes, and drops a second writer half-way.
    pub(crate) fn stream(store: &BlobStore) {
        use std::io::Write;
        let data: Vec<u8> = (0..PART_SIZE * 5 / 2).map(|i| (i % 253) as u8).collect();
        let mut writer = store.writer("chk-2/stream");
        for chunk in data.chunks(64 * 1024 + 7) {
            writer.write_all(chunk).unwrap();
        }
        assert_eq!(store.size("chk-2/stream").unwrap(), None, "nothing is visible before finish");
        assert_eq!(writer.finish().unwrap(), data.len() as u64);
        assert_eq!(store.get("chk-2/stream").unwrap(), Bytes::from(data.clone()));
        let mut abandoned = store.writer("chk-2/abandoned");
        abandoned.write_all(&data).unwrap();
        drop(abandoned);
        assert_eq!(store.size("chk-2/abandoned").unwrap(), None, "an abandoned upload leaves no object");
        let mut small = store.writer("chk-2/small");
        small.write_all(b"tiny").unwrap();
        small.finish().unwrap();
        assert_eq!(store.get("chk-2/small").unwrap(), Bytes::from_static(b"tiny"));
    }

    #[test]
    fn memory_store() {
        exercise(&BlobStore::in_memory());
        stream(&BlobStore::in_memory());
    }

    #[test]
    fn local_directory_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&SnapshotUri::Local(dir.path().join("ck")), &S3Settings::default()).unwrap();
        exercise(&store);
        stream(&store);
        assert!(dir.path().join("ck/chk-1/_metadata").is_file(), "keys are paths under the directory");
    }

    #[cfg(not(feature = "s3"))]
    #[test]
    fn s3_needs_the_feature() {
        let uri = SnapshotUri::parse("s3://bucket/ck").unwrap();
        let e = BlobStore::open(&uri, &S3Settings::default()).unwrap_err().to_string();
        assert!(e.contains("s3://bucket/ck") && e.contains("`s3` feature"), "{e}");
    }
}

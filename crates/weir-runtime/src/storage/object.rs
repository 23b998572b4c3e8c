//! Snapshot files on S3-compatible object storage, through `weir-storage` (the `object_store`
//! crate: SigV4, multipart uploads with several parts in flight, retries with back-off). Object
//! storage has no directories: a "directory" is a key prefix, creating one is a no-op, and it is
//! gone once nothing is under it. `_metadata` is written with a create-if-absent put, so it never
//! replaces another snapshot's.

use super::{Entry, EntryKind, SnapshotStore, SnapshotUri, StateOutput};
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use weir_storage::{BlobStore, BlobWriter, S3Settings, StorageError};

/// One [`BlobStore`] per bucket, opened on first use with the job's S3 settings.
#[derive(Debug, Clone)]
pub struct ObjectStores {
    s3: S3Settings,
    open: Arc<Mutex<HashMap<String, BlobStore>>>,
    /// Buckets live in this process's memory instead of on an S3 endpoint (tests).
    in_memory: bool,
}

fn to_io(e: StorageError) -> io::Error {
    let kind = match e {
        StorageError::NotFound { .. } => io::ErrorKind::NotFound,
        StorageError::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

struct ObjectOutput {
    writer: BlobWriter,
}

impl io::Write for ObjectOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl StateOutput for ObjectOutput {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.writer.finish().map(|_| ()).map_err(to_io)
    }
}

impl ObjectStores {
    pub fn new(s3: S3Settings) -> Self {
        ObjectStores { s3, open: Default::default(), in_memory: false }
    }

    /// Every bucket in this process's memory: object storage's semantics (no directories, no
    /// rename, create-if-absent) without a server, for tests of what is built on them.
    pub fn in_memory() -> Self {
        ObjectStores { s3: S3Settings::default(), open: Default::default(), in_memory: true }
    }

    /// The bucket's store and the object key of `at`.
    fn locate<'a>(&self, at: &'a SnapshotUri) -> io::Result<(BlobStore, &'a str)> {
        let SnapshotUri::S3 { bucket, prefix } = at else {
            return Err(io::Error::other(format!("{at} is not on object storage")));
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = open.get(bucket) {
            return Ok((store.clone(), prefix));
        }
        let store = if self.in_memory {
            BlobStore::in_memory()
        } else {
            let root = SnapshotUri::S3 { bucket: bucket.clone(), prefix: String::new() };
            BlobStore::open(&root, &self.s3).map_err(to_io)?
        };
        open.insert(bucket.clone(), store.clone());
        Ok((store, prefix))
    }

    /// Checks that the bucket exists and the credentials work, with one small listing (its first
    /// object only, however many savepoints the prefix holds).
    pub fn check(&self, at: &SnapshotUri) -> io::Result<()> {
        let (store, _) = self.locate(at)?;
        store.check().map_err(to_io)
    }
}

impl SnapshotStore for ObjectStores {
    fn create(&self, file: &SnapshotUri) -> io::Result<Box<dyn StateOutput>> {
        let (store, key) = self.locate(file)?;
        Ok(Box::new(ObjectOutput { writer: store.writer(key) }))
    }

    fn write_new(&self, file: &SnapshotUri, bytes: &[u8]) -> io::Result<()> {
        let (store, key) = self.locate(file)?;
        store.create(key, bytes.to_vec().into()).map_err(to_io)
    }

    fn read(&self, file: &SnapshotUri) -> io::Result<Vec<u8>> {
        let (store, key) = self.locate(file)?;
        store.get(key).map(|b| b.to_vec()).map_err(to_io)
    }

    fn kind(&self, at: &SnapshotUri) -> io::Result<Option<EntryKind>> {
        let (store, key) = self.locate(at)?;
        // Listing first: a prefix with objects under it is a directory. (Servers that keep
        // objects as files, such as s3s-fs, answer a HEAD of such a prefix with an error.)
        let (files, dirs) = store.list_dir(key).map_err(to_io)?;
        if !files.is_empty() || !dirs.is_empty() {
            return Ok(Some(EntryKind::Dir));
        }
        Ok((!key.is_empty() && store.size(key).map_err(to_io)?.is_some()).then_some(EntryKind::File))
    }

    fn list(&self, dir: &SnapshotUri) -> io::Result<Vec<Entry>> {
        let (store, key) = self.locate(dir)?;
        let (files, dirs) = store.list_dir(key).map_err(to_io)?;
        let mut entries: Vec<Entry> =
            files.into_iter().map(|(name, size)| Entry { name, kind: EntryKind::File, size }).collect();
        entries.extend(dirs.into_iter().map(|name| Entry { name, kind: EntryKind::Dir, size: 0 }));
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn make_dirs(&self, _dir: &SnapshotUri) -> io::Result<()> {
        Ok(())
    }

    fn delete(&self, file: &SnapshotUri) -> io::Result<()> {
        let (store, key) = self.locate(file)?;
        store.delete(key).map_err(to_io)
    }

    fn remove_empty_dir(&self, dir: &SnapshotUri) -> io::Result<bool> {
        let (store, key) = self.locate(dir)?;
        let (files, dirs) = store.list_dir(key).map_err(to_io)?;
        Ok(files.is_empty() && dirs.is_empty())
    }

    fn remove_all(&self, dir: &SnapshotUri) -> io::Result<()> {
        let (store, key) = self.locate(dir)?;
        for (object, _) in store.list(key).map_err(to_io)? {
            store.delete(&object).map_err(to_io)?;
        }
        Ok(())
    }

    fn link_or_copy(&self, from: &SnapshotUri, to: &SnapshotUri) -> io::Result<()> {
        let (store, source) = self.locate(from)?;
        let (target_store, target) = self.locate(to)?;
        if target_store.uri() != store.uri() {
            // Another bucket: through the process (server-side copies stay inside a bucket here).
            let bytes = store.get(source).map_err(to_io)?;
            return target_store.put(target, bytes).map_err(to_io);
        }
        store.copy(source, target).map_err(to_io)
    }

    fn download(&self, file: &SnapshotUri, to: &Path) -> io::Result<(u64, u32)> {
        let (store, key) = self.locate(file)?;
        store.download(key, to).map_err(to_io)
    }

    fn canonical(&self, at: &SnapshotUri) -> SnapshotUri {
        at.clone()
    }
}

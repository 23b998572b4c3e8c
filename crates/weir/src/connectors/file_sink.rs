//! An exactly-once file sink: two-phase commit over files.
//!
//! Records go to a hidden in-progress file `.part-<subtask>-<token>-<seq>.inprogress`. At a barrier
//! the file is flushed, fsynced and renamed to `.…pending` (pre-commit), and listed in operator
//! state with the barrier's id. When that checkpoint completes, pending files are renamed to their
//! final, visible name `part-<subtask>-<token>-<seq>` (commit). On restore, the pending files the
//! snapshot lists are committed (the checkpoint completed, so they belong to the output) and any
//! other hidden part file of this subtask is deleted (data after the snapshot, to be replayed).
//! The pending list is union state: after a rescale every subtask sees all of it and commits the
//! files whose writer index maps to it.

use crate::functions::{put_list, BoxError, SinkContext, SinkFunction, Unrecoverable};
use serde::{Deserialize, Serialize};
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use weir_core::metadata::Redistribution;
use weir_core::CheckpointId;
use weir_state::OperatorStateSnapshot;

const STATE: &str = "pending-files";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct PendingFile {
    checkpoint_id: CheckpointId,
    /// File name without the hidden prefix and state suffix: `part-<writer>-<token>-<seq>`.
    base: String,
    /// Index of the subtask that wrote it.
    writer: u32,
}

pub struct FileSink {
    dir: PathBuf,
    subtask: u32,
    token: String,
    seq: u64,
    current: Option<(BufWriter<File>, String)>,
    pending: Vec<PendingFile>,
}

impl Clone for FileSink {
    fn clone(&self) -> Self {
        FileSink::new(self.dir.clone())
    }
}

fn hidden(base: &str, suffix: &str) -> String {
    format!(".{base}.{suffix}")
}

/// The writer index of a hidden part file name, if it is one.
fn writer_of_hidden(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(".part-")?;
    if !(rest.ends_with(".inprogress") || rest.ends_with(".pending")) {
        return None;
    }
    rest.split('-').next()?.parse().ok()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileSink {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileSink { dir: dir.into(), subtask: 0, token: String::new(), seq: 0, current: None, pending: Vec::new() }
    }

    /// The lines of every committed file in `dir`, sorted: the sink's output as a reader sees it
    /// (hidden in-progress and pending files are not output). A missing directory has no lines.
    pub fn read_committed(dir: &Path) -> std::io::Result<Vec<String>> {
        let mut lines = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(lines),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("part-") {
                lines.extend(fs::read_to_string(entry.path())?.lines().map(str::to_string));
            }
        }
        lines.sort();
        Ok(lines)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Closes the in-progress file and makes it pending for `checkpoint_id`.
    fn precommit(&mut self, checkpoint_id: CheckpointId) -> Result<(), BoxError> {
        let Some((writer, base)) = self.current.take() else {
            return Ok(());
        };
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(self.path(&hidden(&base, "inprogress")), self.path(&hidden(&base, "pending")))?;
        self.pending.push(PendingFile { checkpoint_id, base, writer: self.subtask });
        Ok(())
    }

    /// Makes a pending file visible. Idempotent: an already committed file is left alone.
    fn commit(&self, file: &PendingFile) -> Result<(), BoxError> {
        let pending = self.path(&hidden(&file.base, "pending"));
        let target = self.path(&file.base);
        match fs::rename(&pending, &target) {
            Ok(()) => Ok(()),
            Err(_) if target.exists() => Ok(()),
            Err(e) => Err(Unrecoverable::boxed(format!(
                "cannot commit '{}' (checkpoint {}): {e}; neither it nor the committed file '{}' exists, so output of a completed snapshot is missing. \
                 If the sink's output directory changed since the snapshot, restore with the original one; \
                 a consumer that moves committed files away must leave them until the next checkpoint completes",
                pending.display(),
                file.checkpoint_id,
                target.display()
            ))),
        }
    }

    fn commit_up_to(&mut self, checkpoint_id: CheckpointId) -> Result<(), BoxError> {
        let (ready, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|p| p.checkpoint_id <= checkpoint_id);
        self.pending = later;
        for p in &ready {
            self.commit(p)?;
        }
        if !ready.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl<T: Display + Send + 'static> SinkFunction<T> for FileSink {
    fn open(&mut self, ctx: &SinkContext<'_>) -> Result<(), BoxError> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create output directory '{}': {e}", self.dir.display()))?;
        self.subtask = ctx.subtask;
        self.token = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        // On a fresh start the directory's hidden files are none of this job's business; after a
        // restore or a restart, this subtask's writers left them.
        if !ctx.state.is_restored() && ctx.attempt == 0 {
            return Ok(());
        }
        let p = ctx.parallelism;
        let restored: Vec<PendingFile> = ctx.state.list(STATE)?;
        for file in restored.iter().filter(|f| f.writer % p == ctx.subtask) {
            self.commit(file)?;
        }
        // Whatever else this subtask's writers left hidden was written after the snapshot.
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if writer_of_hidden(&name).is_some_and(|w| w % p == ctx.subtask) {
                fs::remove_file(self.path(&name))?;
            }
        }
        sync_dir(&self.dir)?;
        Ok(())
    }

    fn invoke(&mut self, value: T) -> Result<(), BoxError> {
        if self.current.is_none() {
            let base = format!("part-{}-{}-{}", self.subtask, self.token, self.seq);
            self.seq += 1;
            let file = File::create(self.path(&hidden(&base, "inprogress")))?;
            self.current = Some((BufWriter::with_capacity(1 << 16, file), base));
        }
        if let Some((w, _)) = self.current.as_mut() {
            writeln!(w, "{value}")?;
        }
        Ok(())
    }

    fn snapshot_state(
        &mut self,
        checkpoint_id: CheckpointId,
        state: &mut OperatorStateSnapshot,
    ) -> Result<(), BoxError> {
        self.precommit(checkpoint_id)?;
        put_list(state, STATE, Redistribution::Union, &self.pending)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: CheckpointId) -> Result<(), BoxError> {
        self.commit_up_to(checkpoint_id)
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        self.precommit(CheckpointId::MAX)?;
        self.commit_up_to(CheckpointId::MAX)
    }

    fn is_stateful(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_names() {
        assert_eq!(writer_of_hidden(".part-3-abcd1234-7.pending"), Some(3));
        assert_eq!(writer_of_hidden(".part-12-abcd1234-0.inprogress"), Some(12));
        assert_eq!(writer_of_hidden("part-3-abcd1234-7"), None);
        assert_eq!(writer_of_hidden(".part-x-y.pending"), None);
    }
}

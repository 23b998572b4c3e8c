//! The local registry of jobs: one JSON file per job in `$WEIR_HOME/jobs/` (default
//! `~/.weir/jobs/`), written when a job's REST server is up, updated with its latest checkpoint,
//! and marked with its final status when it ends. A job whose process is gone without marking
//! its entry (killed) counts as ended too. The most recent ended entries are kept for
//! `weir list -a`; older ones are pruned.
//!
//! The registry is a directory anyone with access can write to, so nothing in it is trusted: an
//! entry counts only when its file is `<id>.json` for a well-formed job id, its paths are absolute
//! and its address is a socket address; pruning deletes only the entry file that was read; and
//! the CLI checks that the REST API at a registered address answers as the registered job before
//! it uses it.

use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use weir_core::location::SnapshotUri;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub id: String,
    pub name: String,
    pub pid: u32,
    /// `host:port` of the job's REST API.
    pub address: String,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// `<execution.checkpointing.dir>/<job-id>`, absolute: the job owns the checkpoints in it
    /// while running.
    #[serde(default)]
    pub checkpoint_dir: Option<String>,
    /// Where to resume the job with `-s`, as a `file:` URI: its latest checkpoint that exists, else
    /// its latest savepoint that does (a job stopped with a savepoint deleted its checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<String>,
    /// Set when the job has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
}

/// How and when a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// FINISHED, CANCELED or FAILED.
    pub status: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Ended entries kept for `weir list -a`.
const ENDED_KEPT: usize = 100;

/// A recorded checkpoint directory: absolute (`/abs`, `file:/abs`) or on S3.
fn checkpoint_dir(recorded: &str) -> Option<SnapshotUri> {
    let dir = SnapshotUri::parse(recorded).ok()?;
    dir.as_local().is_none_or(Path::is_absolute).then_some(dir)
}

impl RegistryEntry {
    /// Why the entry cannot be trusted, if it cannot.
    fn defect(&self) -> Option<String> {
        if weir_core::JobId::parse(&self.id).is_none() || self.id != self.id.to_ascii_lowercase() {
            return Some(format!("job id '{}' is not 32 lowercase hex characters", self.id));
        }
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            return Some(format!("address '{}' is not host:port", self.address));
        }
        if let Some(dir) = self.checkpoint_dir.as_deref().filter(|d| self::checkpoint_dir(d).is_none()) {
            return Some(format!("checkpoint directory '{dir}' is not an absolute path or an s3:// URI"));
        }
        None
    }
}

#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The registry at `$WEIR_HOME/jobs`, or `~/.weir/jobs`.
    pub fn default_location() -> Registry {
        let home = std::env::var_os("WEIR_HOME").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".weir")
        });
        Registry { dir: home.join("jobs") }
    }

    pub fn at(dir: impl Into<PathBuf>) -> Registry {
        Registry { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Adds an entry (written atomically, so readers never see half a file).
    pub fn register(&self, entry: &RegistryEntry) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{}.json.tmp", entry.id));
        std::fs::write(&tmp, serde_json::to_vec_pretty(entry).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, self.path(&entry.id))
    }

    pub fn unregister(&self, id: &str) {
        if weir_core::JobId::parse(id).is_some() {
            let _ = std::fs::remove_file(self.path(id));
        }
    }

    /// Running jobs (not ended, process alive), oldest first.
    pub fn list(&self) -> Vec<RegistryEntry> {
        self.scan().into_iter().filter(|(_, e)| e.ended.is_none() && process_alive(e.pid)).map(|(_, e)| e).collect()
    }

    /// Jobs that ended, oldest first: marked ended, or whose process is gone (killed), which
    /// get the status `GONE`. Beyond the most recent [`ENDED_KEPT`], entries are deleted.
    pub fn ended(&self) -> Vec<RegistryEntry> {
        let mut ended: Vec<(PathBuf, RegistryEntry)> = self
            .scan()
            .into_iter()
            .filter_map(|(file, mut e)| match &e.ended {
                Some(_) => Some((file, e)),
                None if process_alive(e.pid) => None,
                None => {
                    // Killed: what its checkpoint directory holds beats what it last recorded.
                    let store = weir_runtime::storage::Stores::default();
                    let newest = e
                        .checkpoint_dir
                        .as_deref()
                        .and_then(checkpoint_dir)
                        .and_then(|d| weir_runtime::storage::latest_checkpoint_in(&store, &d));
                    if let Some((_, location)) = newest {
                        e.last_checkpoint = Some(location.to_string());
                    }
                    e.ended = Some(Ended { status: "GONE".into(), at_ms: e.started_ms });
                    Some((file, e))
                }
            })
            .collect();
        ended.sort_by_key(|(_, e)| e.ended.as_ref().map(|x| x.at_ms));
        let excess = ended.len().saturating_sub(ENDED_KEPT);
        for (file, _) in ended.drain(..excess) {
            let _ = std::fs::remove_file(file);
        }
        ended.into_iter().map(|(_, e)| e).collect()
    }

    /// Well-formed entries and their files, oldest first. Entries that are not well-formed are
    /// skipped (and logged), never acted on.
    fn scan(&self) -> Vec<(PathBuf, RegistryEntry)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut entries = Vec::new();
        for file in rd.filter_map(|e| e.ok()).map(|e| e.path()) {
            let Some(stem) = file.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if stem.starts_with('.') {
                continue; // being written
            }
            let Some(entry) = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<RegistryEntry>(&b).ok())
            else {
                tracing::warn!("ignoring {}: not a registry entry", file.display());
                continue;
            };
            if let Some(defect) =
                entry.defect().or_else(|| (entry.id != stem).then(|| "file name differs from job id".into()))
            {
                tracing::warn!("ignoring the registry entry {}: {defect}", file.display());
                continue;
            }
            entries.push((file, entry));
        }
        entries.sort_by_key(|(_, e)| e.started_ms);
        entries
    }

    /// The directories running jobs own, by job id: each one's checkpoint directory. Disposal
    /// refuses anything inside them.
    pub fn owned_dirs(&self) -> Vec<(String, SnapshotUri)> {
        self.list().into_iter().filter_map(|e| Some((e.id, checkpoint_dir(&e.checkpoint_dir?)?))).collect()
    }

    pub fn find(&self, id: &str) -> Option<RegistryEntry> {
        self.list().into_iter().find(|e| e.id == id)
    }
}

/// Whether a process with this id exists (`kill(pid, 0)`: it exists unless the answer is "no
/// such process"), and is not a zombie where the system can tell (a job started by `weir run -d`
/// whose parent never reaps it). An entry whose process is alive is still verified through its
/// REST API before use.
fn process_alive(pid: u32) -> bool {
    let Some(raw) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
        return false;
    };
    if matches!(rustix::process::test_kill_process(raw), Err(rustix::io::Errno::SRCH)) {
        return false;
    }
    // Only Linux's /proc says whether a process is a zombie; elsewhere existing is enough.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_and_ended_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::at(dir.path());
        let me = RegistryEntry {
            id: "a".repeat(32),
            name: "job".into(),
            pid: std::process::id(),
            address: "127.0.0.1:1".into(),
            started_ms: 2,
            checkpoint_dir: None,
            last_checkpoint: Some("file:/ck/chk-3".into()),
            ended: None,
        };
        r.register(&me).unwrap();
        let killed = RegistryEntry { id: "b".repeat(32), pid: u32::MAX - 1, started_ms: 1, ..me.clone() };
        r.register(&killed).unwrap();
        let finished = RegistryEntry {
            id: "c".repeat(32),
            ended: Some(Ended { status: "FINISHED".into(), at_ms: 9 }),
            ..me.clone()
        };
        r.register(&finished).unwrap();
        assert_eq!(r.list(), vec![me.clone()]);
        assert_eq!(r.find(&me.id), Some(me.clone()));
        let ended = r.ended();
        assert_eq!(ended.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), [killed.id.clone(), finished.id.clone()]);
        assert_eq!(ended[0].ended.as_ref().unwrap().status, "GONE", "a killed job's entry stays, as gone");
        assert_eq!(ended[0].last_checkpoint.as_deref(), Some("file:/ck/chk-3"));
        r.unregister(&me.id);
        assert!(r.list().is_empty());
    }

    #[test]
    fn malformed_entries_are_ignored_and_never_acted_on() {
        let home = tempfile::tempdir().unwrap();
        let r = Registry::at(home.path().join("jobs"));
        std::fs::create_dir_all(r.dir()).unwrap();
        std::fs::write(home.path().join("victim.json"), "mine").unwrap();
        let dead = |id: &str| RegistryEntry {
            id: id.into(),
            name: "forged".into(),
            pid: u32::MAX - 1,
            address: "127.0.0.1:1".into(),
            started_ms: 0,
            checkpoint_dir: None,
            last_checkpoint: None,
            ended: None,
        };
        // An id that walks out of the registry, under a file name of its own.
        std::fs::write(r.dir().join("forged.json"), serde_json::to_vec(&dead("../victim")).unwrap()).unwrap();
        let relative = RegistryEntry { checkpoint_dir: Some("ck/abc".into()), ..dead(&"c".repeat(32)) };
        std::fs::write(r.dir().join(format!("{}.json", relative.id)), serde_json::to_vec(&relative).unwrap()).unwrap();
        assert!(r.list().is_empty());
        r.unregister("../victim");
        assert!(home.path().join("victim.json").exists(), "nothing outside the registry is deleted");
        assert!(r.dir().join("forged.json").exists(), "a malformed entry is left for a human to look at");
    }
}

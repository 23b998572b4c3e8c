//! The local registry of running jobs: one JSON file per job in `$WEIR_HOME/jobs/` (default
//! `~/.weir/jobs/`), written when a job's REST server is up and removed when it ends. Entries of
//! processes that no longer exist (a killed job) are ignored and pruned.

use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub id: String,
    pub name: String,
    pub pid: u32,
    /// `host:port` of the job's REST API.
    pub address: String,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// `<execution.checkpointing.dir>/<job-id>`: the job owns the checkpoints in it while running.
    #[serde(default)]
    pub checkpoint_dir: Option<String>,
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
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Entries of live processes, oldest first; entries of dead processes are removed.
    pub fn list(&self) -> Vec<RegistryEntry> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut entries: Vec<RegistryEntry> = rd
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name().to_string_lossy().ends_with(".json") && !e.file_name().to_string_lossy().starts_with('.')
            })
            .filter_map(|e| serde_json::from_slice::<RegistryEntry>(&std::fs::read(e.path()).ok()?).ok())
            .filter(|entry| {
                let alive = process_alive(entry.pid);
                if !alive {
                    self.unregister(&entry.id);
                }
                alive
            })
            .collect();
        entries.sort_by_key(|e| e.started_ms);
        entries
    }

    /// The directories running jobs own, by job id: each one's checkpoint directory. Disposal
    /// refuses anything inside them.
    pub fn owned_dirs(&self) -> Vec<(String, PathBuf)> {
        self.list().into_iter().filter_map(|e| Some((e.id, PathBuf::from(e.checkpoint_dir?)))).collect()
    }

    pub fn find(&self, id: &str) -> Option<RegistryEntry> {
        self.list().into_iter().find(|e| e.id == id)
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) is not alive either.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_list_and_prune_dead_entries() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::at(dir.path());
        let me = RegistryEntry {
            id: "a".repeat(32),
            name: "job".into(),
            pid: std::process::id(),
            address: "127.0.0.1:1".into(),
            started_ms: 2,
            checkpoint_dir: None,
        };
        r.register(&me).unwrap();
        let dead = RegistryEntry { id: "b".repeat(32), pid: u32::MAX - 1, started_ms: 1, ..me.clone() };
        r.register(&dead).unwrap();
        assert_eq!(r.list(), vec![me.clone()]);
        assert!(!dir.path().join(format!("{}.json", dead.id)).exists(), "dead entry pruned");
        assert_eq!(r.find(&me.id), Some(me.clone()));
        r.unregister(&me.id);
        assert!(r.list().is_empty());
    }
}

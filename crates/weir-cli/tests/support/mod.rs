//! Helpers shared by the CLI integration tests: the `weir` command with a registry of its own,
//! the bundled example jobs, waiting, committed output and REST calls.
#![allow(dead_code)]

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Weir {
    pub home: tempfile::TempDir,
    /// Environment every command (and every job it starts) gets.
    pub env: Vec<(String, String)>,
}

impl Weir {
    pub fn new() -> Weir {
        let weir = Weir { home: tempfile::tempdir().unwrap(), env: Vec::new() };
        let examples = Path::new(env!("CARGO_BIN_EXE_weir")).with_file_name("word-count");
        assert!(
            examples.exists(),
            "the bundled examples are built by `cargo test --workspace` (or `cargo build -p weir-examples`)"
        );
        weir
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        self.cmd_in(Path::new("."), args)
    }

    /// Runs `weir` with `cwd` as its working directory.
    pub fn cmd_in(&self, cwd: &Path, args: &[&str]) -> Output {
        self.cmd_with(cwd, args, &[])
    }

    /// Runs `weir` in `cwd` with extra environment variables.
    pub fn cmd_with(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args).current_dir(cwd).envs(env.iter().copied()).output().unwrap()
    }

    /// Starts `weir` in the background with its output captured (`wait_with_output` collects it).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
        command
            .args(args)
            .env("WEIR_HOME", self.home.path())
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "weir {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail; returns stdout and stderr together.
    pub fn fails(&self, args: &[&str]) -> String {
        self.fails_with_env(args, &[])
    }

    /// Runs a command that must fail, with extra environment variables; returns its output.
    pub fn fails_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.cmd_with(Path::new("."), args, env);
        assert!(!out.status.success(), "weir {args:?} should have failed");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    pub fn run_detached(&self, args: &[&str]) -> String {
        self.run_detached_in(Path::new("."), args)
    }

    /// `weir run -d ARGS` in `cwd`; returns the job id.
    pub fn run_detached_in(&self, cwd: &Path, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let out = self.cmd_in(cwd, &all);
        assert!(out.status.success(), "weir {all:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let out = String::from_utf8(out.stdout).unwrap();
        let id = out.lines().find_map(|l| l.strip_prefix("Job has been submitted with JobID ")).expect("job id line");
        assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        id.to_string()
    }

    /// `weir run -d ARGS` with the job logging at `level`; returns the job id and its log file.
    pub fn run_detached_logging(&self, args: &[&str], level: &str) -> (String, PathBuf) {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(&all)
            .env("WEIR_HOME", self.home.path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", level)
            .output()
            .unwrap();
        assert!(out.status.success(), "weir {all:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let out = String::from_utf8(out.stdout).unwrap();
        let id = out.lines().find_map(|l| l.strip_prefix("Job has been submitted with JobID ")).expect("job id line");
        let log = out.lines().find_map(|l| l.strip_prefix("Job output: ")).expect("log line");
        (id.to_string(), PathBuf::from(log))
    }

    pub fn address(&self, job: &str) -> String {
        let entry = self.home.path().join("jobs").join(format!("{job}.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(entry).unwrap()).unwrap();
        v["address"].as_str().unwrap().to_string()
    }

    pub fn wait_gone(&self, job: &str) {
        let entry = self.home.path().join("jobs").join(format!("{job}.json"));
        // The job marks its registry entry ended as it exits.
        wait_for("the job to end", || {
            std::fs::read(&entry)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_none_or(|v| !v["ended"].is_null())
        });
    }
}

impl Drop for Weir {
    /// Jobs a test left running (it failed half-way) are killed, so they do not outlive it.
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.home.path().join("jobs")) else { return };
        for e in entries.flatten() {
            let entry: Option<Value> = std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(pid) = entry.filter(|v| v["ended"].is_null()).and_then(|v| v["pid"].as_u64()) {
                let _ =
                    Command::new("kill").args(["-9", &pid.to_string()]).stderr(std::process::Stdio::null()).status();
            }
        }
    }
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn append(path: &Path, words: &[&str]) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for w in words {
        writeln!(f, r#"{{"word":"{w}","frequency":1}}"#).unwrap();
    }
}

pub fn committed(dir: &Path) -> Vec<String> {
    weir::connectors::FileSink::read_committed(dir).unwrap()
}

pub fn totals(pairs: &[(&str, u64)]) -> Vec<String> {
    let mut v: Vec<String> = pairs.iter().map(|(w, n)| format!("WordCount{{word='{w}', frequency={n}}}")).collect();
    v.sort();
    v
}

pub fn savepoint_path(stdout: &str) -> PathBuf {
    let path =
        stdout.lines().find_map(|l| l.strip_prefix("Savepoint completed. Path: file:")).expect("savepoint path line");
    PathBuf::from(path)
}

pub fn http(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        (_, Some(b)) => agent.post(url).send_json(b),
        (_, None) => agent.post(url).send_empty(),
    }
    .unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_json().unwrap_or(Value::Null))
}

#[derive(Clone, Copy, PartialEq)]
pub enum Backend {
    HashMap,
    RocksDb,
}

impl Backend {
    /// `weir run` flags selecting the backend (working files under `dir`).
    pub fn flags(self, dir: &Path) -> Vec<String> {
        match self {
            Backend::HashMap => vec!["-D".into(), "state.backend.type=hashmap".into()],
            Backend::RocksDb => vec![
                "-D".into(),
                "state.backend.type=rocksdb".into(),
                "-D".into(),
                format!("state.backend.rocksdb.localdir={}", dir.join("rocksdb").display()),
            ],
        }
    }

    pub fn savepoint_type(self) -> &'static str {
        match self {
            Backend::HashMap => "canonical",
            Backend::RocksDb => "native",
        }
    }
}

/// A bundled example job binary (built beside `weir`).
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_weir")).with_file_name(name)
}

/// Every file under `dir` with its bytes, to check that something was left exactly as it was.
pub fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, &mut out);
    out
}

/// keyed-count's arguments as the tests run it: checkpoints every `interval` under `ck`, 10 keys
/// at 2000 records/s into `out`, endless.
pub fn keyed_count_args(interval: &str, ck: &Path, out: &Path) -> Vec<String> {
    [
        "-D",
        &format!("execution.checkpointing.interval={interval}"),
        "-D",
        &format!("execution.checkpointing.dir={}", ck.display()),
        "keyed-count",
        "--output",
        out.to_str().unwrap(),
        "--count",
        "100000000",
        "--keys",
        "10",
        "--rate",
        "2000",
    ]
    .map(String::from)
    .to_vec()
}

/// Copies the files of directory `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

impl Weir {
    /// Starts keyed-count (see [`keyed_count_args`], checkpoints under `dir/ck`) detached with the
    /// backend's flags, and waits until it has committed output; returns its job id and output
    /// directory.
    pub fn start_keyed_count(&self, dir: &Path, backend: Backend) -> (String, PathBuf) {
        self.start_keyed_count_with(dir, backend, &[])
    }

    /// [`Weir::start_keyed_count`] with `extra` Weir flags.
    pub fn start_keyed_count_with(&self, dir: &Path, backend: Backend, extra: &[&str]) -> (String, PathBuf) {
        let out = dir.join("keyed-out");
        let mut args: Vec<String> = backend.flags(dir);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(keyed_count_args("100 ms", &dir.join("ck"), &out));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let job = self.run_detached(&args);
        wait_for("keyed-count to commit output", || committed(&out).len() >= 50);
        (job, out)
    }

    /// Takes a savepoint of a running job into `dir`; returns its path.
    pub fn savepoint(&self, job: &str, dir: &Path, backend: Backend) -> PathBuf {
        savepoint_path(&self.ok(&["savepoint", job, dir.to_str().unwrap(), "--type", backend.savepoint_type()]))
    }

    /// Runs keyed-count as [`Weir::start_keyed_count`] does, and stops it with a savepoint under
    /// `dir/sp`; returns the savepoint.
    pub fn keyed_count_savepoint(&self, dir: &Path, backend: Backend) -> PathBuf {
        let (job, _) = self.start_keyed_count(dir, backend);
        let sp = dir.join("sp");
        let stopped =
            self.ok(&["stop", &job, "--savepoint-path", sp.to_str().unwrap(), "--type", backend.savepoint_type()]);
        self.wait_gone(&job);
        savepoint_path(&stopped)
    }

    /// Runs the keyed-count binary directly (not through `weir run`) to completion: `-s` and
    /// `--claim-mode` when given, the backend's flags, `extra` flags, then the job's own arguments.
    pub fn keyed_count(
        &self,
        dir: &Path,
        backend: Backend,
        restore: Option<(&Path, &str)>,
        extra: &[&str],
        out: &Path,
    ) -> Output {
        let mut cmd = Command::new(example("keyed-count"));
        if let Some((snapshot, claim_mode)) = restore {
            cmd.args(["-s", snapshot.to_str().unwrap(), "--claim-mode", claim_mode]);
        }
        cmd.args(backend.flags(dir))
            .args(extra)
            .args(["--output", out.to_str().unwrap(), "--count", "10", "--keys", "2"])
            .env("WEIR_HOME", self.home.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }
}

#[allow(unused_imports)]
pub use weir_examples::keyed_count::expected_output as keyed_count_truth;

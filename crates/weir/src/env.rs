//! `StreamEnv`: where a job is built, configured and started.

use crate::error::Error;
use crate::functions::SourceFunction;
use crate::operators::SourceSpec;
use crate::split_source::Source;
use crate::stream::DataStream;
use crate::watermarks::WatermarkStrategy;
use clap::Parser;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use weir_core::config::{keys, Configuration};
use weir_runtime::channel::{Record, TypeOps};
use weir_runtime::graph::{EdgeBuilder, EdgeKind, JobGraph, NodeBuilder};
use weir_runtime::job::{self, JobOutcome};
use weir_runtime::{CheckpointStorage, JobHandle, JobStatus};

pub(crate) struct PendingEdge {
    pub from: usize,
    pub kind: EdgeKind,
    pub key_hash: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// The producer's side output the edge carries (tag id); `None` for its main output.
    pub side_output: Option<String>,
}

#[derive(Default)]
pub(crate) struct EnvInner {
    pub nodes: Vec<NodeBuilder>,
    pub edges: Vec<EdgeBuilder>,
}

impl EnvInner {
    /// Adds a node fed by `inputs` (none for a source, several for a union).
    pub fn add_node(&mut self, node: NodeBuilder, inputs: impl IntoIterator<Item = PendingEdge>) -> usize {
        let index = self.nodes.len();
        self.nodes.push(node);
        for e in inputs {
            self.edges.push(EdgeBuilder {
                from: e.from,
                to: index,
                kind: e.kind,
                key_hash: e.key_hash,
                side_output: e.side_output,
            });
        }
        index
    }
}

/// The flags every job binary understands, like `flink run`'s. `weir run` takes the same flags and
/// forwards them to the job binary ([`JobFlags::to_args`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct JobFlags {
    /// Restore from this savepoint or retained checkpoint (directory or its _metadata file).
    #[arg(short = 's', long = "fromSavepoint", visible_alias = "from-savepoint")]
    pub savepoint: Option<String>,
    /// Skip snapshot state that maps to no operator of the job.
    #[arg(short = 'n', long = "allowNonRestoredState", visible_alias = "allow-non-restored-state")]
    pub allow_non_restored_state: bool,
    /// Ownership of the restored snapshot's files: claim or no_claim (default).
    #[arg(long = "claim-mode", visible_aliases = ["claimMode", "restoreMode"])]
    pub claim_mode: Option<String>,
    /// Default parallelism.
    #[arg(short = 'p', long = "parallelism")]
    pub parallelism: Option<u32>,
    /// A configuration value, key=value (repeatable).
    #[arg(short = 'D', value_name = "key=value")]
    pub dynamic: Vec<String>,
    /// A YAML configuration file (default: `$WEIR_CONF_DIR/config.yaml` when that exists).
    #[arg(long = "config")]
    pub config_file: Option<std::path::PathBuf>,
}

impl JobFlags {
    /// The flags as command-line arguments, to start a job binary with them.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(s) = &self.savepoint {
            args.extend(["-s".to_string(), s.clone()]);
        }
        if self.allow_non_restored_state {
            args.push("-n".to_string());
        }
        if let Some(m) = &self.claim_mode {
            args.extend(["--claim-mode".to_string(), m.clone()]);
        }
        if let Some(p) = self.parallelism {
            args.extend(["-p".to_string(), p.to_string()]);
        }
        for d in &self.dynamic {
            args.extend(["-D".to_string(), d.clone()]);
        }
        if let Some(c) = &self.config_file {
            let c = std::path::absolute(c).unwrap_or_else(|_| c.clone());
            args.extend(["--config".to_string(), c.display().to_string()]);
        }
        args
    }
}

// `--help` is left to the job's own argument parser, after Weir's flags are printed.
#[derive(Parser, Debug)]
#[command(
    disable_help_subcommand = true,
    disable_help_flag = true,
    override_usage = "JOB [WEIR FLAGS] [JOB'S OWN ARGUMENTS]"
)]
struct JobArgs {
    #[command(flatten)]
    flags: JobFlags,
    /// The job's own arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    job_args: Vec<String>,
}

/// Where a job is built. Configuration precedence, lowest first: defaults, the YAML file
/// (`--config`), the job's code (`enable_checkpointing`, `set_parallelism`, `set`), command-line
/// flags (`-D`, `-s`, `-p`).
pub struct StreamEnv {
    inner: Rc<RefCell<EnvInner>>,
    config: Configuration,
    /// Keys given on the command line: the job's code does not override them.
    pinned: BTreeSet<&'static str>,
    storage: Option<Arc<dyn CheckpointStorage>>,
}

impl Default for StreamEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamEnv {
    pub fn new() -> Self {
        Self::with_config(Configuration::new())
    }

    pub fn with_config(config: Configuration) -> Self {
        init_logging();
        #[cfg(feature = "mimalloc")]
        crate::allocator::purge_freed_pages_promptly();
        let pinned = config.iter().map(|(k, _)| k).collect();
        StreamEnv { inner: Rc::default(), config, pinned, storage: None }
    }

    /// Builds an environment from the process arguments; returns the job's own arguments.
    pub fn from_args() -> Result<(StreamEnv, Vec<String>), Error> {
        Self::from_arg_list(std::env::args())
    }

    /// Like [`from_args`](Self::from_args), from a given list (the first item is the program).
    pub fn from_arg_list<I: IntoIterator<Item = String>>(args: I) -> Result<(StreamEnv, Vec<String>), Error> {
        let JobArgs { flags: args, job_args } =
            JobArgs::try_parse_from(args).map_err(|e| Error::Args(e.to_string()))?;
        if job_args.iter().any(|a| a == "--help" || a == "-h") {
            use clap::CommandFactory;
            println!("Weir's job flags (before the job's own arguments):\n{}", JobArgs::command().render_help());
        }
        let file = args.config_file.clone().or_else(weir_core::config::default_file);
        let file_config = match &file {
            Some(path) => {
                let (c, warnings) = weir_core::config::read_yaml_file(path).map_err(Error::Args)?;
                warnings.iter().for_each(|w| tracing::warn!("{w}"));
                c
            }
            None => Configuration::new(),
        };
        let mut config = Configuration::new();
        for pair in &args.dynamic {
            if let Some(w) = config.set_pair(pair)? {
                tracing::warn!("{w}");
            }
        }
        if let Some(p) = args.parallelism {
            config.set(keys::PARALLELISM_DEFAULT, &p.to_string())?;
        }
        if let Some(path) = &args.savepoint {
            config.set(keys::RECOVERY_PATH, path)?;
        }
        if args.allow_non_restored_state {
            config.set(keys::RECOVERY_IGNORE_UNCLAIMED, "true")?;
        }
        if let Some(mode) = &args.claim_mode {
            if mode.eq_ignore_ascii_case("legacy") {
                return Err(Error::Args(
                    "claim mode LEGACY is not supported: use no_claim (the default: Weir never deletes or depends on the snapshot's files, and the first checkpoint is full) or claim (Weir owns the snapshot and deletes it once subsumed)".into(),
                ));
            }
            config.set(keys::RECOVERY_CLAIM_MODE, mode)?;
        }
        let pinned = config.iter().map(|(k, _)| k).collect();
        let mut merged = file_config;
        merged.merge(&config);
        let mut env = Self::with_config(merged);
        env.pinned = pinned;
        Ok((env, job_args))
    }

    pub fn config(&self) -> &Configuration {
        &self.config
    }

    /// Sets a configuration key from the job's code (command-line values win).
    pub fn set(&mut self, key: &str, value: &str) -> Result<&mut Self, Error> {
        let mut probe = Configuration::new();
        probe.set(key, value)?;
        for (k, v) in probe.iter() {
            if !self.pinned.contains(k) {
                self.config.set(k, v)?;
            }
        }
        Ok(self)
    }

    fn set_default(&mut self, key: &'static str, value: String) {
        if !self.pinned.contains(key) {
            // Values produced by Weir itself always parse.
            let _ = self.config.set(key, &value);
        }
    }

    pub fn enable_checkpointing(&mut self, interval: Duration) -> &mut Self {
        self.set_default(keys::CHECKPOINT_INTERVAL, format!("{} ms", interval.as_millis()));
        self
    }

    pub fn set_parallelism(&mut self, parallelism: u32) -> &mut Self {
        self.set_default(keys::PARALLELISM_DEFAULT, parallelism.to_string());
        self
    }

    pub fn set_max_parallelism(&mut self, max_parallelism: u32) -> &mut Self {
        self.set_default(keys::MAX_PARALLELISM, max_parallelism.to_string());
        self
    }

    /// Replaces the checkpoint storage (the filesystem at `execution.checkpointing.dir` by default).
    pub fn set_checkpoint_storage(&mut self, storage: Arc<dyn CheckpointStorage>) -> &mut Self {
        self.storage = Some(storage);
        self
    }

    /// Adds a source: a [`SourceFunction`] or a [`crate::SplitSource`]. Its records have no event
    /// timestamps unless the source sets them; see [`StreamEnv::from_source`].
    pub fn source<T: Record, K, S: Source<T, K>>(&self, source: S) -> DataStream<T> {
        self.add_source(source.into_function(), None)
    }

    /// Adds a source whose records get event timestamps and watermarks from `watermarks` (Flink's
    /// `fromSource(source, watermarkStrategy, name)`): the strategy runs inside the source's task,
    /// per split for a split source, and the source's settings (`uid`, parallelism) stay the
    /// source's.
    pub fn from_source<T: Record, K, S: Source<T, K>>(
        &self,
        source: S,
        watermarks: WatermarkStrategy<T>,
    ) -> DataStream<T> {
        self.add_source(source.into_function(), Some(watermarks))
    }

    fn add_source<T: Record, S: SourceFunction<T> + Clone + Sync>(
        &self,
        source: S,
        watermarks: Option<WatermarkStrategy<T>>,
    ) -> DataStream<T> {
        let stateful = source.is_stateful();
        let spec = Arc::new(SourceSpec::<T, S> { source, watermarks, _types: PhantomData });
        let node = NodeBuilder {
            stateful,
            is_source: true,
            emits_side_outputs: true,
            ..NodeBuilder::new("Source", spec, Some(Arc::new(TypeOps::<T>::new())))
        };
        let index = self.inner.borrow_mut().add_node(node, None);
        DataStream::new(self.inner.clone(), index)
    }

    /// Starts the job and returns at once. Unless `weir.rest.enabled` is false, the job serves its
    /// REST API (`rest.bind-address`, `rest.port`) and registers in the local registry of running
    /// jobs, through which the `weir` CLI finds it.
    pub fn execute_async(self, name: &str) -> Result<JobHandle, Error> {
        let inner = std::mem::take(&mut *self.inner.borrow_mut());
        let graph = JobGraph::build(inner.nodes, inner.edges, &self.config)?;
        let backend = crate::backends::from_config(&self.config)?;
        let rest = self.config.get_bool(keys::REST_ENABLED).unwrap_or(true);
        // Everything about REST access is checked before the job starts.
        let token = if rest { crate::rest_access::token(&self.config)? } else { None };
        let mut handle = job::submit(name, graph, &self.config, self.storage, backend)?;
        if rest {
            let bind = self.config.get_str(keys::REST_BIND_ADDRESS).unwrap_or_else(|| "127.0.0.1".into());
            let port = self.config.get_int(keys::REST_PORT).unwrap_or(0);
            let port =
                u16::try_from(port).map_err(|_| Error::Args(format!("rest.port {port} is not a port number")))?;
            match weir_rest::serve(handle.control(), &bind, port, token) {
                Ok(server) => handle.attach(Box::new(Registered::new(name, &handle, server))),
                Err(e) => {
                    handle.cancel();
                    return Err(Error::Args(format!(
                        "cannot serve the REST API on {bind}:{port}: {e}; set rest.port to a free port, or 0"
                    )));
                }
            }
        }
        Ok(handle)
    }

    /// Runs the job to its end. A job that ends FAILED is an error carrying the cause.
    pub fn execute(self, name: &str) -> Result<JobOutcome, Error> {
        let outcome = self.execute_async(name)?.wait();
        match outcome.status {
            JobStatus::Failed => Err(Error::JobFailed {
                job_id: outcome.job_id.to_hex(),
                status: outcome.status,
                cause: outcome.failure.clone().unwrap_or_default(),
            }),
            _ => Ok(outcome),
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Safe to call more than once.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

/// A job's REST server and its registry entry. The entry records the latest checkpoint as
/// checkpoints complete (so `weir list -a` can point at it after a crash), and the job's final
/// status when it ends; the REST server stops after that.
struct Registered {
    registry: weir_rest::Registry,
    entry: weir_rest::RegistryEntry,
    control: weir_runtime::JobControl,
    /// Dropped to stop the thread that records checkpoints.
    stop: Option<std::sync::mpsc::Sender<()>>,
    recorder: Option<std::thread::JoinHandle<()>>,
    _server: weir_rest::RestServer,
}

/// Where to resume the job, as a `file:` URI: its latest checkpoint that still exists, else its
/// latest savepoint that does (a job stopped with a savepoint has deleted its checkpoints).
fn resume_point(control: &weir_runtime::JobControl) -> Option<String> {
    let completed = control.completed_checkpoints();
    let exists = |c: &&weir_runtime::job::CheckpointStats| control.snapshot_exists(&c.location);
    let latest = completed.iter().rev().filter(|c| !c.kind.is_savepoint()).find(exists);
    let latest = latest.or_else(|| completed.iter().rev().find(exists))?;
    Some(latest.location.to_string())
}

impl Registered {
    fn new(name: &str, handle: &JobHandle, server: weir_rest::RestServer) -> Registered {
        let registry = weir_rest::Registry::default_location();
        let id = handle.job_id().to_hex();
        let entry = weir_rest::RegistryEntry {
            id: id.clone(),
            name: name.to_string(),
            pid: std::process::id(),
            address: server.address().to_string(),
            started_ms: weir_runtime::job::stats::wall_clock_ms(),
            checkpoint_dir: handle.checkpoint_job_dir().map(|d| match d {
                weir_core::location::SnapshotUri::Local(path) => {
                    weir_core::location::SnapshotUri::Local(std::path::absolute(&path).unwrap_or(path)).to_string()
                }
                remote => remote.to_string(),
            }),
            last_checkpoint: None,
            ended: None,
        };
        if let Err(e) = registry.register(&entry) {
            tracing::warn!(
                "cannot register job {id} in {}: {e}; the weir CLI will not find it by id",
                registry.dir().display()
            );
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (control, recorded_registry, mut recorded) = (handle.control(), registry.clone(), entry.clone());
        let recorder = std::thread::Builder::new()
            .name(format!("registry-{id}"))
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_millis(200))
                {
                    let latest = resume_point(&control);
                    if latest.is_some() && latest != recorded.last_checkpoint {
                        recorded.last_checkpoint = latest;
                        let _ = recorded_registry.register(&recorded);
                    }
                }
            })
            .ok();
        Registered { registry, entry, control: handle.control(), stop: Some(stop), recorder, _server: server }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.recorder.take() {
            let _ = t.join();
        }
        let status = self.control.status();
        let entry = weir_rest::RegistryEntry {
            last_checkpoint: resume_point(&self.control),
            ended: Some(weir_rest::Ended {
                status: status.to_string(),
                at_ms: weir_runtime::job::stats::wall_clock_ms(),
            }),
            ..self.entry.clone()
        };
        if let Err(e) = self.registry.register(&entry) {
            tracing::warn!("cannot record the end of job {} in {}: {e}", entry.id, self.registry.dir().display());
        }
    }
}

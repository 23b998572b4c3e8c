//! Configuration with Flink's key names.
//!
//! Every key Weir understands is declared once in [`KEYS`] with its type and default; setting an
//! unknown key, or a value that does not parse, is an error naming the key. Pre-1.20 Flink names
//! are accepted as deprecated aliases (with a warning), and the new name wins when both are set.
//! Precedence between sources (file < `-D` < job code) is applied by the caller: later `set`s win.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Int,
    Bool,
    Duration,
    Text,
    /// A local directory or file: a path or a `file:` URI (see [`crate::location`]).
    LocalPath,
    /// A snapshot location: a local path, `file:` URI or `s3://bucket/prefix`.
    Location,
    /// Bytes, with Flink's units: `64 mb`, `1gb`, `512 kb`, `4096`.
    MemorySize,
    /// A number between 0 and 1.
    Fraction,
    /// A number of at least 1 (a growth factor).
    Multiplier,
    Enum(&'static [&'static str]),
}

/// A configuration key: its name, deprecated aliases, type, default (as text) and meaning.
#[derive(Debug)]
pub struct KeyDef {
    pub name: &'static str,
    pub deprecated: &'static [&'static str],
    pub ty: ValueType,
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

pub mod keys {
    pub const PARALLELISM_DEFAULT: &str = "parallelism.default";
    pub const MAX_PARALLELISM: &str = "pipeline.max-parallelism";
    pub const AUTO_GENERATE_UIDS: &str = "pipeline.auto-generate-uids";
    pub const AUTO_WATERMARK_INTERVAL: &str = "pipeline.auto-watermark-interval";
    pub const STATE_BACKEND: &str = "state.backend.type";
    pub const CHECKPOINT_INTERVAL: &str = "execution.checkpointing.interval";
    pub const CHECKPOINT_MIN_PAUSE: &str = "execution.checkpointing.min-pause";
    pub const CHECKPOINT_TIMEOUT: &str = "execution.checkpointing.timeout";
    pub const CHECKPOINT_MAX_CONCURRENT: &str = "execution.checkpointing.max-concurrent-checkpoints";
    pub const CHECKPOINT_TOLERABLE_FAILURES: &str = "execution.checkpointing.tolerable-failed-checkpoints";
    pub const CHECKPOINT_NUM_RETAINED: &str = "execution.checkpointing.num-retained";
    pub const CHECKPOINT_DIR: &str = "execution.checkpointing.dir";
    pub const SAVEPOINT_DIR: &str = "execution.checkpointing.savepoint-dir";
    pub const CHECKPOINT_RETENTION: &str = "execution.checkpointing.externalized-checkpoint-retention";
    pub const CHECKPOINT_MODE: &str = "execution.checkpointing.mode";
    pub const CHECKPOINT_INCREMENTAL: &str = "execution.checkpointing.incremental";
    pub const ROCKSDB_LOCAL_DIR: &str = "state.backend.rocksdb.localdir";
    pub const ROCKSDB_MEMORY_MANAGED: &str = "state.backend.rocksdb.memory.managed";
    pub const ROCKSDB_MEMORY_FIXED: &str = "state.backend.rocksdb.memory.fixed-per-slot";
    pub const ROCKSDB_WRITE_BUFFER_RATIO: &str = "state.backend.rocksdb.memory.write-buffer-ratio";
    pub const ROCKSDB_WRITE_BACK_CACHE_RATIO: &str = "state.backend.rocksdb.memory.write-back-cache-ratio";
    pub const ROCKSDB_WRITE_BUFFER_SIZE: &str = "state.backend.rocksdb.writebuffer.size";
    pub const ROCKSDB_STATISTICS: &str = "state.backend.rocksdb.statistics";
    pub const ROCKSDB_USE_BLOOM_FILTER: &str = "state.backend.rocksdb.use-bloom-filter";
    pub const ROCKSDB_BLOOM_BITS_PER_KEY: &str = "state.backend.rocksdb.bloom-filter.bits-per-key";
    pub const ROCKSDB_PARTITIONED_INDEX_FILTERS: &str = "state.backend.rocksdb.memory.partitioned-index-filters";
    pub const ROCKSDB_BLOCK_SIZE: &str = "state.backend.rocksdb.block.blocksize";
    pub const ROCKSDB_TARGET_FILE_SIZE_BASE: &str = "state.backend.rocksdb.compaction.level.target-file-size-base";
    pub const RECOVERY_PATH: &str = "execution.state-recovery.path";
    pub const RECOVERY_CLAIM_MODE: &str = "execution.state-recovery.claim-mode";
    pub const RECOVERY_IGNORE_UNCLAIMED: &str = "execution.state-recovery.ignore-unclaimed-state";
    pub const RESTART_STRATEGY: &str = "restart-strategy.type";
    pub const RESTART_ATTEMPTS: &str = "restart-strategy.fixed-delay.attempts";
    pub const RESTART_DELAY: &str = "restart-strategy.fixed-delay.delay";
    pub const RESTART_INITIAL_BACKOFF: &str = "restart-strategy.exponential-delay.initial-backoff";
    pub const RESTART_MAX_BACKOFF: &str = "restart-strategy.exponential-delay.max-backoff";
    pub const RESTART_BACKOFF_MULTIPLIER: &str = "restart-strategy.exponential-delay.backoff-multiplier";
    pub const RESTART_RESET_THRESHOLD: &str = "restart-strategy.exponential-delay.reset-backoff-threshold";
    pub const RESTART_JITTER: &str = "restart-strategy.exponential-delay.jitter-factor";
    pub const RESTART_ATTEMPTS_BEFORE_RESET: &str = "restart-strategy.exponential-delay.attempts-before-reset-backoff";
    pub const REST_PORT: &str = "rest.port";
    pub const REST_BIND_ADDRESS: &str = "rest.bind-address";
    pub const REST_AUTH_TOKEN: &str = "rest.auth.token";
    pub const REST_AUTH_TOKEN_FILE: &str = "rest.auth.token-file";
    pub const REST_AUTH_ALLOW_UNAUTHENTICATED: &str = "rest.auth.allow-unauthenticated";
    pub const REST_ENABLED: &str = "weir.rest.enabled";
    pub const PRIVATE_FILES: &str = "weir.checkpointing.private-files";
    pub const S3_ENDPOINT: &str = "s3.endpoint";
    pub const S3_ACCESS_KEY: &str = "s3.access-key";
    pub const S3_SECRET_KEY: &str = "s3.secret-key";
    pub const S3_REGION: &str = "s3.region";
    pub const S3_PATH_STYLE_ACCESS: &str = "s3.path.style.access";
    pub const BATCH_SIZE: &str = "weir.network.batch-size";
    pub const CHANNEL_CAPACITY: &str = "weir.network.channel-capacity";
    pub const RESTORE_WATERMARKS: &str = "weir.watermarks.restore";
}

use keys::*;

pub const KEYS: &[KeyDef] = &[
    KeyDef { name: PARALLELISM_DEFAULT, deprecated: &[], ty: ValueType::Int, default: Some("1"), doc: "Parallelism of operators that do not set one." },
    KeyDef { name: MAX_PARALLELISM, deprecated: &[], ty: ValueType::Int, default: None, doc: "Max parallelism (number of key groups) of operators that do not set one; unset derives it from the parallelism like Flink." },
    KeyDef { name: AUTO_GENERATE_UIDS, deprecated: &[], ty: ValueType::Bool, default: Some("true"), doc: "When false, a stateful operator without uid is refused when the job graph is built." },
    KeyDef { name: AUTO_WATERMARK_INTERVAL, deprecated: &[], ty: ValueType::Duration, default: Some("200 ms"), doc: "How often watermark generators emit their watermark (periodic emission); 0 disables periodic watermarks." },
    KeyDef { name: STATE_BACKEND, deprecated: &["state.backend"], ty: ValueType::Enum(&["hashmap", "rocksdb"]), default: Some("hashmap"), doc: "Keyed state backend: hashmap (state on the heap) or rocksdb (embedded RocksDB on local disk, larger than memory)." },
    KeyDef { name: CHECKPOINT_INTERVAL, deprecated: &[], ty: ValueType::Duration, default: None, doc: "Interval of periodic checkpoints; unset disables them." },
    KeyDef { name: CHECKPOINT_MIN_PAUSE, deprecated: &[], ty: ValueType::Duration, default: Some("0 ms"), doc: "Minimal pause between the end of one checkpoint and the start of the next." },
    KeyDef { name: CHECKPOINT_TIMEOUT, deprecated: &[], ty: ValueType::Duration, default: Some("10 min"), doc: "A checkpoint not complete after this long expires." },
    KeyDef { name: CHECKPOINT_MAX_CONCURRENT, deprecated: &[], ty: ValueType::Int, default: Some("1"), doc: "Checkpoints in flight at once; Weir supports 1." },
    KeyDef { name: CHECKPOINT_TOLERABLE_FAILURES, deprecated: &[], ty: ValueType::Int, default: Some("0"), doc: "Consecutive counted checkpoint failures tolerated before the job fails." },
    KeyDef { name: CHECKPOINT_NUM_RETAINED, deprecated: &["state.checkpoints.num-retained"], ty: ValueType::Int, default: Some("1"), doc: "Completed checkpoints kept; older ones are subsumed and deleted." },
    KeyDef { name: CHECKPOINT_DIR, deprecated: &["state.checkpoints.dir", "state.backend.fs.checkpointdir"], ty: ValueType::Location, default: None, doc: "Directory for checkpoints: <dir>/<job-id>/{chk-<n>,shared,taskowned}." },
    KeyDef { name: SAVEPOINT_DIR, deprecated: &["state.savepoints.dir"], ty: ValueType::Location, default: None, doc: "Default target directory of savepoints." },
    KeyDef { name: CHECKPOINT_RETENTION, deprecated: &[], ty: ValueType::Enum(&["NO_EXTERNALIZED_CHECKPOINTS", "DELETE_ON_CANCELLATION", "RETAIN_ON_CANCELLATION"]), default: Some("NO_EXTERNALIZED_CHECKPOINTS"), doc: "What happens to retained checkpoints when the job ends." },
    KeyDef { name: CHECKPOINT_MODE, deprecated: &[], ty: ValueType::Enum(&["EXACTLY_ONCE"]), default: Some("EXACTLY_ONCE"), doc: "Checkpointing mode; Weir aligns barriers, so only EXACTLY_ONCE." },
    KeyDef { name: CHECKPOINT_INCREMENTAL, deprecated: &["state.backend.incremental"], ty: ValueType::Bool, default: Some("false"), doc: "Incremental checkpoints (rocksdb backend): a checkpoint uploads only the data files the previous one lacks and references the rest." },
    KeyDef { name: ROCKSDB_LOCAL_DIR, deprecated: &[], ty: ValueType::Text, default: None, doc: "Directory of the rocksdb backend's working files; unset uses the system temp directory." },
    KeyDef { name: ROCKSDB_MEMORY_MANAGED, deprecated: &[], ty: ValueType::Bool, default: Some("true"), doc: "Bound the memory of each RocksDB instance by the fixed-per-slot budget; false leaves RocksDB's own defaults (unbounded)." },
    KeyDef { name: ROCKSDB_MEMORY_FIXED, deprecated: &[], ty: ValueType::MemorySize, default: Some("128 mb"), doc: "Memory budget of the RocksDB instance of each keyed operator subtask: write-back cache, write buffers and block cache (Weir applies it per subtask)." },
    KeyDef { name: ROCKSDB_WRITE_BUFFER_RATIO, deprecated: &[], ty: ValueType::Fraction, default: Some("0.5"), doc: "Share of RocksDB's part of the memory budget given to write buffers (memtables); the rest is block cache." },
    KeyDef { name: ROCKSDB_WRITE_BACK_CACHE_RATIO, deprecated: &[], ty: ValueType::Fraction, default: Some("0.5"), doc: "Share of the fixed-per-slot budget given to the write-back cache of value and reducing state in front of RocksDB (Weir-specific); 0 disables it." },
    KeyDef { name: ROCKSDB_WRITE_BUFFER_SIZE, deprecated: &[], ty: ValueType::MemorySize, default: None, doc: "Size of one memtable; unset derives it from the write-buffer budget, at most 4 mb. Larger memtables flush less often (fewer, larger SST files: fewer compactions between incremental checkpoints)." },
    KeyDef { name: ROCKSDB_USE_BLOOM_FILTER, deprecated: &[], ty: ValueType::Bool, default: Some("true"), doc: "Bloom filters in SST files and memtables, so a lookup skips the files without its key." },
    KeyDef { name: ROCKSDB_BLOOM_BITS_PER_KEY, deprecated: &[], ty: ValueType::Multiplier, default: Some("10"), doc: "Bits per key of the bloom filters (10: about 1 % false positives)." },
    KeyDef { name: ROCKSDB_PARTITIONED_INDEX_FILTERS, deprecated: &[], ty: ValueType::Bool, default: Some("true"), doc: "Partition index and filter blocks and pin only their top level in the block cache, so large files' filters do not crowd the cache." },
    KeyDef { name: ROCKSDB_BLOCK_SIZE, deprecated: &[], ty: ValueType::MemorySize, default: Some("4 kb"), doc: "Size of an SST data block." },
    KeyDef { name: ROCKSDB_TARGET_FILE_SIZE_BASE, deprecated: &[], ty: ValueType::MemorySize, default: Some("16 mb"), doc: "Size of the SST files flushes and compactions write; a file's index and filter are held in memory until it is finished, so smaller files bound the memory a flush or compaction takes beside the budget." },
    KeyDef { name: ROCKSDB_STATISTICS, deprecated: &[], ty: ValueType::Bool, default: Some("false"), doc: "Collect RocksDB's statistics and the task thread's RocksDB perf counters, and log them with the write-back cache's counts when an instance closes (Weir-specific; for profiling, costs some throughput)." },
    KeyDef { name: RECOVERY_PATH, deprecated: &["execution.savepoint.path"], ty: ValueType::Location, default: None, doc: "Snapshot to restore from (`-s`)." },
    KeyDef { name: RECOVERY_CLAIM_MODE, deprecated: &["execution.savepoint-restore-mode"], ty: ValueType::Enum(&["NO_CLAIM", "CLAIM"]), default: Some("NO_CLAIM"), doc: "Ownership of the restored snapshot's files." },
    KeyDef { name: RECOVERY_IGNORE_UNCLAIMED, deprecated: &["execution.savepoint.ignore-unclaimed-state"], ty: ValueType::Bool, default: Some("false"), doc: "Skip snapshot state that maps to no operator (`-n`)." },
    KeyDef { name: RESTART_STRATEGY, deprecated: &["restart-strategy"], ty: ValueType::Enum(&["none", "disable", "off", "fixed-delay", "fixeddelay", "exponential-delay", "exponentialdelay"]), default: None, doc: "Restart strategy; unset means exponential-delay when checkpointing is enabled and none otherwise (as Flink 2.x). Failures a restart cannot fix fail the job at once whatever the strategy." },
    KeyDef { name: RESTART_ATTEMPTS, deprecated: &[], ty: ValueType::Int, default: Some("1"), doc: "Restart attempts of fixed-delay." },
    KeyDef { name: RESTART_DELAY, deprecated: &[], ty: ValueType::Duration, default: Some("1 s"), doc: "Delay between restart attempts of fixed-delay." },
    KeyDef { name: RESTART_INITIAL_BACKOFF, deprecated: &[], ty: ValueType::Duration, default: Some("1 s"), doc: "exponential-delay: delay before the first restart (and after a reset)." },
    KeyDef { name: RESTART_MAX_BACKOFF, deprecated: &[], ty: ValueType::Duration, default: Some("1 min"), doc: "exponential-delay: the longest delay between restarts." },
    KeyDef { name: RESTART_BACKOFF_MULTIPLIER, deprecated: &[], ty: ValueType::Multiplier, default: Some("1.5"), doc: "exponential-delay: factor by which the delay grows after each failure." },
    KeyDef { name: RESTART_RESET_THRESHOLD, deprecated: &[], ty: ValueType::Duration, default: Some("1 h"), doc: "exponential-delay: a failure this long after the previous one starts again from the initial backoff." },
    KeyDef { name: RESTART_JITTER, deprecated: &[], ty: ValueType::Fraction, default: Some("0.1"), doc: "exponential-delay: each delay varies randomly by up to this fraction of itself." },
    KeyDef { name: RESTART_ATTEMPTS_BEFORE_RESET, deprecated: &[], ty: ValueType::Int, default: None, doc: "exponential-delay: restarts allowed between two resets; unset means unlimited." },
    KeyDef { name: REST_AUTH_TOKEN, deprecated: &[], ty: ValueType::Text, default: None, doc: "Bearer token every REST request must carry (Authorization: Bearer <token>); the weir CLI reads it from WEIR_REST_TOKEN or --token-file (Weir-specific)." },
    KeyDef { name: REST_AUTH_TOKEN_FILE, deprecated: &[], ty: ValueType::LocalPath, default: None, doc: "File holding the REST bearer token (first line), instead of rest.auth.token (Weir-specific)." },
    KeyDef { name: REST_AUTH_ALLOW_UNAUTHENTICATED, deprecated: &[], ty: ValueType::Bool, default: Some("false"), doc: "Serve the REST API on a non-loopback rest.bind-address without a token; anyone who can reach it can then stop, savepoint or dispose (Weir-specific)." },
    KeyDef { name: REST_PORT, deprecated: &[], ty: ValueType::Int, default: Some("0"), doc: "Port of the job's REST API; 0 picks a free port (the weir CLI finds it through the registry of running jobs)." },
    KeyDef { name: REST_BIND_ADDRESS, deprecated: &[], ty: ValueType::Text, default: Some("127.0.0.1"), doc: "Address the REST API binds to; loopback by default." },
    KeyDef { name: REST_ENABLED, deprecated: &[], ty: ValueType::Bool, default: Some("true"), doc: "Whether the job serves its REST API and registers in the local registry of running jobs (Weir-specific)." },
    KeyDef { name: PRIVATE_FILES, deprecated: &[], ty: ValueType::Bool, default: Some("true"), doc: "Checkpoint and savepoint files are readable by their owner only (0600, directories 0700); false leaves permissions to the umask (Weir-specific)." },
    KeyDef { name: S3_ENDPOINT, deprecated: &[], ty: ValueType::Text, default: None, doc: "S3 endpoint for s3:// locations (http://host:port for a server other than AWS); default: AWS_ENDPOINT_URL, else AWS." },
    KeyDef { name: S3_ACCESS_KEY, deprecated: &[], ty: ValueType::Text, default: None, doc: "S3 access key id; default: AWS_ACCESS_KEY_ID and the AWS environment." },
    KeyDef { name: S3_SECRET_KEY, deprecated: &[], ty: ValueType::Text, default: None, doc: "S3 secret access key; default: AWS_SECRET_ACCESS_KEY and the AWS environment." },
    KeyDef { name: S3_REGION, deprecated: &[], ty: ValueType::Text, default: None, doc: "S3 region; default: AWS_REGION, else us-east-1." },
    KeyDef { name: S3_PATH_STYLE_ACCESS, deprecated: &[], ty: ValueType::Bool, default: Some("false"), doc: "Path-style S3 requests (endpoint/bucket/key), which most servers other than AWS need." },
    KeyDef { name: BATCH_SIZE, deprecated: &[], ty: ValueType::Int, default: Some("1024"), doc: "Records per batch on a channel between tasks (Weir-specific)." },
    KeyDef { name: RESTORE_WATERMARKS, deprecated: &[], ty: ValueType::Bool, default: Some("true"), doc: "A restored job's operators start from the watermarks recorded in the snapshot (after a rescale, the minimum of the subtasks each takes over), so a record that was late before a failure stays late after it (Weir-specific; Flink starts event time over)." },
    KeyDef { name: CHANNEL_CAPACITY, deprecated: &[], ty: ValueType::Int, default: Some("16"), doc: "Batches a channel holds before its producer blocks (Weir-specific; bounds memory)." },
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown configuration key '{key}'{hint}")]
    UnknownKey { key: String, hint: String },
    #[error("invalid value '{value}' for configuration key '{key}': {reason}")]
    InvalidValue { key: String, value: String, reason: String },
}

/// A warning to log, produced when a deprecated key is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeprecationWarning {
    pub used: String,
    pub proper: &'static str,
}

impl std::fmt::Display for DeprecationWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Config uses deprecated configuration key '{}' instead of proper key '{}'", self.used, self.proper)
    }
}

/// Validated configuration: canonical key → raw value. New names beat deprecated ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configuration {
    values: BTreeMap<&'static str, String>,
    /// Keys set through a deprecated alias; a later set through the proper name overrides them.
    via_deprecated: BTreeMap<&'static str, bool>,
}

fn find_key(key: &str) -> Option<(&'static KeyDef, bool)> {
    KEYS.iter().find_map(|def| {
        if def.name == key {
            Some((def, false))
        } else if def.deprecated.contains(&key) {
            Some((def, true))
        } else {
            None
        }
    })
}

impl Configuration {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a key. Returns a warning when the key is a deprecated alias.
    pub fn set(&mut self, key: &str, value: &str) -> Result<Option<DeprecationWarning>, ConfigError> {
        let key = key.trim();
        let value = value.trim();
        let (def, deprecated) =
            find_key(key).ok_or_else(|| ConfigError::UnknownKey { key: key.to_string(), hint: suggest(key) })?;
        validate(def, value).map_err(|reason| ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        })?;
        if deprecated && self.via_deprecated.get(def.name) == Some(&false) {
            // The proper key was already set: it wins over the deprecated one.
        } else {
            self.values.insert(def.name, value.to_string());
            self.via_deprecated.insert(def.name, deprecated);
        }
        Ok(deprecated.then(|| DeprecationWarning { used: key.to_string(), proper: def.name }))
    }

    /// Parses a `key=value` pair, as given to `-D`.
    pub fn set_pair(&mut self, pair: &str) -> Result<Option<DeprecationWarning>, ConfigError> {
        match pair.split_once('=') {
            Some((k, v)) => self.set(k, v),
            None => Err(ConfigError::InvalidValue {
                key: pair.to_string(),
                value: String::new(),
                reason: "expected key=value".to_string(),
            }),
        }
    }

    /// Overlays `other` on `self`: keys set in `other` win.
    pub fn merge(&mut self, other: &Configuration) {
        for (k, v) in &other.values {
            self.values.insert(k, v.clone());
            self.via_deprecated.insert(k, other.via_deprecated.get(k).copied().unwrap_or(false));
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Raw value or the key's default.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str).or_else(|| find_key(key).and_then(|(d, _)| d.default))
    }

    /// A location key's value (local, `file:` or `s3://`); values were checked when set.
    pub fn get_location(&self, key: &str) -> Option<crate::location::SnapshotUri> {
        self.get_str(key).and_then(|v| crate::location::SnapshotUri::parse(&v).ok())
    }

    /// A local path key's path (`file:` URIs resolved); values were checked when set.
    pub fn get_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.get_str(key).and_then(|v| crate::location::parse(&v).ok())
    }

    pub fn get_str(&self, key: &str) -> Option<String> {
        self.raw(key).map(str::to_string)
    }

    pub fn get_int(&self, key: &str) -> Option<i64> {
        self.raw(key).and_then(|v| v.parse().ok())
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.raw(key).and_then(parse_bool)
    }

    pub fn get_memory_size(&self, key: &str) -> Option<u64> {
        self.raw(key).and_then(|v| parse_memory_size(v).ok())
    }

    pub fn get_fraction(&self, key: &str) -> Option<f64> {
        self.raw(key).and_then(|v| parse_fraction(v).ok())
    }

    pub fn get_multiplier(&self, key: &str) -> Option<f64> {
        self.raw(key).and_then(|v| parse_multiplier(v).ok())
    }

    pub fn get_duration(&self, key: &str) -> Option<Duration> {
        self.raw(key).and_then(|v| parse_duration(v).ok())
    }

    /// Enum values compare case-insensitively (Flink's `convertToEnum`); returned upper-cased for
    /// enums declared in upper case, as declared otherwise.
    pub fn get_enum(&self, key: &str) -> Option<&'static str> {
        let (def, _) = find_key(key)?;
        let raw = self.raw(key)?;
        match def.ty {
            ValueType::Enum(options) => options.iter().copied().find(|o| o.eq_ignore_ascii_case(raw)),
            _ => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

fn validate(def: &KeyDef, value: &str) -> Result<(), String> {
    match def.ty {
        ValueType::Int => value.parse::<i64>().map(|_| ()).map_err(|_| "expected an integer".to_string()),
        ValueType::Bool => parse_bool(value).map(|_| ()).ok_or_else(|| "expected true or false".to_string()),
        ValueType::Duration => parse_duration(value).map(|_| ()),
        ValueType::MemorySize => parse_memory_size(value).map(|_| ()),
        ValueType::Fraction => parse_fraction(value).map(|_| ()),
        ValueType::Multiplier => parse_multiplier(value).map(|_| ()),
        ValueType::LocalPath => crate::location::parse(value).map(|_| ()).map_err(|e| e.to_string()),
        ValueType::Location => crate::location::SnapshotUri::parse(value).map(|_| ()).map_err(|e| e.to_string()),
        ValueType::Text => {
            if value.is_empty() {
                Err("expected a non-empty value".to_string())
            } else {
                Ok(())
            }
        }
        ValueType::Enum(options) => {
            if options.iter().any(|o| o.eq_ignore_ascii_case(value)) {
                Ok(())
            } else {
                Err(format!("expected one of {}", options.join(", ")))
            }
        }
    }
}

fn suggest(key: &str) -> String {
    let near = KEYS.iter().map(|d| d.name).find(|name| {
        let last = |s: &str| s.rsplit('.').next().unwrap_or("").to_string();
        last(name) == last(key) && !last(key).is_empty()
    });
    match near {
        Some(name) => format!("; did you mean '{name}'?"),
        None => "; see docs/configuration.md for the keys Weir understands".to_string(),
    }
}

/// The configuration file used when none is named: `$WEIR_CONF_DIR/config.yaml`, when it exists
/// (Flink's `$FLINK_CONF_DIR/config.yaml`).
pub fn default_file() -> Option<std::path::PathBuf> {
    let file = std::path::PathBuf::from(std::env::var_os("WEIR_CONF_DIR")?).join("config.yaml");
    file.is_file().then_some(file)
}

/// Reads a YAML configuration file (see [`parse_yaml`]); errors name the file.
pub fn read_yaml_file(path: &std::path::Path) -> Result<(Configuration, Vec<DeprecationWarning>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read configuration file '{}': {e}", path.display()))?;
    parse_yaml(&text, &path.display().to_string()).map_err(|e| e.to_string())
}

/// Reads a YAML configuration file's text (Flink's `config.yaml` style): nested maps are flattened
/// into dotted keys, so `execution: {checkpointing: {interval: 10 s}}` and
/// `execution.checkpointing.interval: 10 s` mean the same. `source` names the file in errors.
pub fn parse_yaml(text: &str, source: &str) -> Result<(Configuration, Vec<DeprecationWarning>), ConfigError> {
    use yaml_rust2::{Yaml, YamlLoader};
    let invalid = |key: &str, reason: String| ConfigError::InvalidValue {
        key: key.to_string(),
        value: String::new(),
        reason: format!("{reason} (in {source})"),
    };
    let docs = YamlLoader::load_from_str(text).map_err(|e| invalid("<file>", format!("not valid YAML: {e}")))?;
    let mut flat: Vec<(String, String)> = Vec::new();
    fn walk(prefix: &str, node: &Yaml, out: &mut Vec<(String, String)>) -> Result<(), String> {
        let key = |k: &Yaml| -> Result<String, String> {
            let name = match k {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                other => return Err(format!("unsupported key {other:?}")),
            };
            Ok(if prefix.is_empty() { name } else { format!("{prefix}.{name}") })
        };
        match node {
            Yaml::Hash(map) => {
                for (k, v) in map {
                    walk(&key(k)?, v, out)?;
                }
                Ok(())
            }
            Yaml::String(s) | Yaml::Real(s) => {
                out.push((prefix.to_string(), s.clone()));
                Ok(())
            }
            Yaml::Integer(i) => {
                out.push((prefix.to_string(), i.to_string()));
                Ok(())
            }
            Yaml::Boolean(b) => {
                out.push((prefix.to_string(), b.to_string()));
                Ok(())
            }
            Yaml::Null | Yaml::BadValue => Ok(()),
            other => Err(format!("key '{prefix}': a value must be a scalar, found {other:?}")),
        }
    }
    for doc in &docs {
        walk("", doc, &mut flat).map_err(|e| invalid("<file>", e))?;
    }
    let mut config = Configuration::new();
    let mut warnings = Vec::new();
    for (k, v) in flat {
        match config.set(&k, &v) {
            Ok(w) => warnings.extend(w),
            Err(ConfigError::UnknownKey { key, hint }) => {
                return Err(ConfigError::UnknownKey { key, hint: format!("{hint} (in {source})") })
            }
            Err(ConfigError::InvalidValue { key, value, reason }) => {
                return Err(ConfigError::InvalidValue { key, value, reason: format!("{reason} (in {source})") })
            }
        }
    }
    Ok((config, warnings))
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Parses a duration the way Flink's `TimeUtils.parseDuration` does: a number and an optional unit
/// (`ms` when absent): `10 s`, `10s`, `1 min`, `500ms`, `2 h`, `1 d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| format!("expected a duration like '10 s', '500 ms' or '1 min', found '{text}'"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let d = match unit.as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => Duration::from_millis(n),
        "us" | "µs" | "micro" | "micros" | "microsecond" | "microseconds" => Duration::from_micros(n),
        "ns" | "nano" | "nanos" | "nanosecond" | "nanoseconds" => Duration::from_nanos(n),
        "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(n),
        "m" | "min" | "minute" | "minutes" => Duration::from_secs(n * 60),
        "h" | "hour" | "hours" => Duration::from_secs(n * 3600),
        "d" | "day" | "days" => Duration::from_secs(n * 86400),
        other => return Err(format!("unknown time unit '{other}' in '{text}'")),
    };
    Ok(d)
}

/// Parses a memory size with Flink's units (`b`, `kb`, `mb`, `gb`, `tb`, and their long forms;
/// powers of 1024). A bare number is bytes.
pub fn parse_memory_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| format!("expected a memory size like '64 mb' or '1 gb', found '{text}'"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 0,
        "k" | "kb" | "kibibytes" => 10,
        "m" | "mb" | "mebibytes" => 20,
        "g" | "gb" | "gibibytes" => 30,
        "t" | "tb" | "tebibytes" => 40,
        other => return Err(format!("unknown memory unit '{other}' in '{text}'")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("memory size '{text}' is too large"))
}

fn parse_multiplier(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 1.0 => Ok(f),
        _ => Err(format!("expected a number of at least 1, found '{text}'")),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("expected a number between 0 and 1, found '{text}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_and_fractions() {
        assert_eq!(parse_memory_size("64 mb"), Ok(64 << 20));
        assert_eq!(parse_memory_size("1gb"), Ok(1 << 30));
        assert_eq!(parse_memory_size("4096"), Ok(4096));
        assert!(parse_memory_size("12 parsecs").unwrap_err().contains("parsecs"));
        let mut c = Configuration::new();
        assert!(c.set(keys::ROCKSDB_WRITE_BUFFER_RATIO, "1.5").is_err());
        c.set(keys::ROCKSDB_MEMORY_FIXED, "8 mb").unwrap();
        assert_eq!(c.get_memory_size(keys::ROCKSDB_MEMORY_FIXED), Some(8 << 20));
        assert_eq!(c.get_fraction(keys::ROCKSDB_WRITE_BUFFER_RATIO), Some(0.5));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10 s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1 min"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("10 fortnights").is_err());
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let mut c = Configuration::new();
        let err = c.set("execution.checkpointing.intervall", "1 s").unwrap_err();
        assert!(err.to_string().contains("'execution.checkpointing.intervall'"), "{err}");
        let err = c.set("state.checkpoints.interval", "1 s").unwrap_err();
        assert!(err.to_string().contains("did you mean 'execution.checkpointing.interval'"), "{err}");
    }

    #[test]
    fn invalid_values_name_key_and_value() {
        let mut c = Configuration::new();
        let err = c.set(keys::CHECKPOINT_NUM_RETAINED, "two").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value 'two' for configuration key 'execution.checkpointing.num-retained': expected an integer"
        );
        assert!(c.set(keys::CHECKPOINT_RETENTION, "sometimes").is_err());
    }

    #[test]
    fn defaults_and_enums() {
        let mut c = Configuration::new();
        assert_eq!(c.get_int(keys::CHECKPOINT_NUM_RETAINED), Some(1));
        assert_eq!(c.get_duration(keys::CHECKPOINT_TIMEOUT), Some(Duration::from_secs(600)));
        assert_eq!(c.get_duration(keys::CHECKPOINT_INTERVAL), None);
        c.set(keys::CHECKPOINT_RETENTION, "retain_on_cancellation").unwrap();
        assert_eq!(c.get_enum(keys::CHECKPOINT_RETENTION), Some("RETAIN_ON_CANCELLATION"));
    }

    #[test]
    fn deprecated_key_warns_and_new_key_wins() {
        let mut c = Configuration::new();
        let w = c.set("state.checkpoints.num-retained", "3").unwrap().unwrap();
        assert_eq!(
            w.to_string(),
            "Config uses deprecated configuration key 'state.checkpoints.num-retained' instead of proper key 'execution.checkpointing.num-retained'"
        );
        assert_eq!(c.get_int(keys::CHECKPOINT_NUM_RETAINED), Some(3));
        c.set(keys::CHECKPOINT_NUM_RETAINED, "5").unwrap();
        c.set("state.checkpoints.num-retained", "7").unwrap();
        assert_eq!(c.get_int(keys::CHECKPOINT_NUM_RETAINED), Some(5));
    }

    #[test]
    fn yaml_nested_and_flat_keys() {
        let text = "execution:\n  checkpointing:\n    interval: 10 s\n    num-retained: 3\nparallelism.default: 2\nstate.checkpoints.dir: /tmp/ck\n";
        let (c, warnings) = parse_yaml(text, "conf.yaml").unwrap();
        assert_eq!(c.get_duration(keys::CHECKPOINT_INTERVAL), Some(Duration::from_secs(10)));
        assert_eq!(c.get_int(keys::CHECKPOINT_NUM_RETAINED), Some(3));
        assert_eq!(c.get_int(keys::PARALLELISM_DEFAULT), Some(2));
        assert_eq!(c.get_str(keys::CHECKPOINT_DIR).as_deref(), Some("/tmp/ck"));
        assert_eq!(warnings.len(), 1);
        let err =
            parse_yaml("execution:\n  checkpointing:\n    intervall: 1 s\n", "/etc/weir.yaml").unwrap_err().to_string();
        assert!(err.contains("'execution.checkpointing.intervall'") && err.contains("/etc/weir.yaml"), "{err}");
        let err = parse_yaml("parallelism.default: [1, 2]\n", "f").unwrap_err().to_string();
        assert!(err.contains("parallelism.default") && err.contains("scalar"), "{err}");
        assert!(parse_yaml("a: [", "f").is_err());
    }

    #[test]
    fn pairs_and_merge() {
        let mut a = Configuration::new();
        a.set_pair("parallelism.default=2").unwrap();
        assert!(a.set_pair("parallelism.default").is_err());
        let mut b = Configuration::new();
        b.set_pair("parallelism.default = 4").unwrap();
        a.merge(&b);
        assert_eq!(a.get_int(keys::PARALLELISM_DEFAULT), Some(4));
    }
}

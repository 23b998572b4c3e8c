//! `weir`: the operator's command line, shaped like Flink's (`flink run`, `list`, `cancel`,
//! `checkpoint`, `savepoint`, `stop`). It finds a running job by id through the local registry of
//! running jobs (`$WEIR_HOME/jobs`), or talks to `--address host:port` directly.

mod client;
mod flink_args;
mod run;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use client::Client;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weir_core::location::SnapshotUri;
use weir_rest::Registry;
use weir_runtime::storage::Stores;

#[derive(Parser)]
#[command(name = "weir", version, about = "Run and operate Weir jobs: checkpoints, savepoints, stop and restore.")]
struct Cli {
    /// REST address of the job (host:port, or http://host:port as `weir list` prints it), instead
    /// of finding it in the registry of running jobs.
    #[arg(short = 'm', long, visible_alias = "jobmanager", global = true)]
    address: Option<String>,
    /// File whose first line is the bearer token of jobs that require one (rest.auth.token);
    /// the WEIR_REST_TOKEN environment variable gives it too.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a job binary or a bundled example (word-count, window-count, keyed-count).
    Run(run::RunArgs),
    /// Lists running jobs.
    List {
        /// Also list jobs whose process has ended but which are still registered.
        #[arg(short = 'a', long = "all")]
        all: bool,
    },
    /// Cancels a job (no savepoint).
    Cancel { job_id: String },
    /// Triggers a checkpoint of a running job.
    Checkpoint {
        job_id: String,
        /// A full checkpoint (every checkpoint of the heap backend is full).
        #[arg(long)]
        full: bool,
    },
    /// Triggers a savepoint of a running job, or disposes of one with --dispose.
    Savepoint {
        job_id: Option<String>,
        /// Target directory, a path or file: URI (default: execution.checkpointing.savepoint-dir
        /// of the job).
        #[arg(value_parser = parse_location)]
        target_directory: Option<SnapshotUri>,
        /// Deletes the savepoint at this path, file: URI or s3:// URI.
        #[arg(short = 'd', long, conflicts_with_all = ["job_id", "target_directory"], value_parser = location_as_given)]
        dispose: Option<String>,
        /// canonical (backend-independent) or native.
        #[arg(short = 't', long = "type", default_value = "canonical")]
        format: String,
        /// Returns once the savepoint is triggered, printing the trigger id.
        #[arg(long)]
        detached: bool,
    },
    /// Stops a job with a savepoint: sources stop, the savepoint commits the sinks, the job finishes.
    Stop {
        job_id: String,
        /// Target directory, a path or file: URI (default: execution.checkpointing.savepoint-dir
        /// of the job).
        #[arg(short = 'p', long = "savepoint-path", visible_alias = "savepointPath", value_parser = parse_location)]
        savepoint_path: Option<SnapshotUri>,
        /// End the inputs first (end-of-input hooks run), then take the savepoint; for a job that
        /// will not be resumed.
        #[arg(short = 'd', long)]
        drain: bool,
        #[arg(short = 't', long = "type", default_value = "canonical")]
        format: String,
        #[arg(long)]
        detached: bool,
    },
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so a closed reader (`weir list | head -1`) would make println! panic;
    // end quietly instead, as Unix tools do.
    // SAFETY: restoring a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse_from(flink_args::normalize(std::env::args()));
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("\n------------------------------------------------------------");
            eprintln!(" The program finished with the following exception:\n");
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A path, a `file:` URI or an `s3://` URI, as Weir prints locations.
fn parse_location(value: &str) -> Result<SnapshotUri, String> {
    SnapshotUri::parse(value).map_err(|e| e.to_string())
}

/// A location, checked and kept as the user wrote it (to echo it back).
fn location_as_given(value: &str) -> Result<String, String> {
    parse_location(value).map(|_| value.to_string())
}

/// The stores the CLI reads and deletes snapshots through: S3 as `$WEIR_CONF_DIR/config.yaml`'s
/// `s3.*` keys and the AWS environment say (Flink's CLI reads its `config.yaml` likewise).
fn stores() -> Result<Stores> {
    let config = match weir_core::config::default_file() {
        Some(file) => weir_core::config::read_yaml_file(&file).map_err(anyhow::Error::msg)?.0,
        None => weir_core::config::Configuration::new(),
    };
    Ok(Stores::from_config(&config))
}

fn parse_format(format: &str) -> Result<&'static str> {
    match format.to_ascii_uppercase().as_str() {
        "CANONICAL" => Ok("CANONICAL"),
        "NATIVE" => Ok("NATIVE"),
        other => bail!("Could not parse value '{other}' for --type. Expected one of: [canonical, native]"),
    }
}

/// The REST bearer token: `--token-file`, else `WEIR_REST_TOKEN`.
fn rest_token(file: &Option<PathBuf>) -> Result<Option<String>> {
    if let Some(file) = file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("cannot read --token-file {}", file.display()))?;
        return Ok(text.lines().next().map(|l| l.trim().to_string()).filter(|t| !t.is_empty()));
    }
    Ok(std::env::var("WEIR_REST_TOKEN").ok().filter(|t| !t.is_empty()))
}

/// How to reach a job: `--address` or the registry, and the token.
struct Target {
    address: Option<String>,
    token_file: Option<PathBuf>,
}

fn client_for(target: &Target, job_id: &str) -> Result<Client> {
    let address = &target.address;
    weir_core::JobId::parse(job_id).with_context(|| format!("'{job_id}' is not a job id (32 hex characters)"))?;
    let address = match address {
        Some(a) => a.clone(),
        None => Registry::default_location()
            .find(job_id)
            .map(|e| e.address)
            .with_context(|| format!("No running job {job_id} in the registry of running jobs ({}); is it running on this machine? Use --address host:port to reach its REST API directly.", Registry::default_location().dir().display()))?,
    };
    let client = Client::new(&address, job_id, rest_token(&target.token_file)?);
    client.verify()?;
    Ok(client)
}

fn execute(cli: Cli) -> Result<ExitCode> {
    let target = Target { address: cli.address, token_file: cli.token_file };
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::List { all } => {
            list(all, rest_token(&target.token_file)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { job_id } => {
            let client = client_for(&target, &job_id)?;
            println!("Cancelling job {job_id}.");
            client.cancel().with_context(|| format!("Could not cancel job {job_id}."))?;
            client.wait_gone(Duration::from_secs(60));
            println!("Cancelled job {job_id}.");
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkpoint { job_id, full } => {
            let client = client_for(&target, &job_id)?;
            println!("Triggering checkpoint for job {job_id}.");
            println!("Waiting for response...");
            let id = client
                .checkpoint(if full { "FULL" } else { "CONFIGURED" })
                .with_context(|| format!("Failed to trigger a checkpoint for the job {job_id}."))?;
            let label = if full { "Checkpoint(FULL)" } else { "Checkpoint" };
            println!("{label} {id} for job {job_id} completed.");
            println!("You can resume your program from this checkpoint with the run command.");
            Ok(ExitCode::SUCCESS)
        }
        Command::Savepoint { dispose: Some(path), .. } => {
            // Echoed as given, as Flink's CLI does.
            println!("Disposing savepoint '{path}'.");
            let owned = Registry::default_location().owned_dirs();
            let location = parse_location(&path).map_err(anyhow::Error::msg)?;
            let disposed = weir_runtime::storage::dispose_snapshot(&stores()?, &location, &owned)
                .with_context(|| format!("Failed to dispose the savepoint '{path}'."))?;
            println!("Savepoint '{path}' disposed.");
            if !disposed.dir_removed {
                println!("Kept the directory '{}': it holds files that are not part of the savepoint.", disposed.dir);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Savepoint { job_id, target_directory, format, detached, .. } => {
            let job_id = job_id.context("Missing JobID. Specify a Job ID to trigger a savepoint.")?;
            let format = parse_format(&format)?;
            let client = client_for(&target, &job_id)?;
            let failed = || format!("Failed to trigger a savepoint for the job {job_id}.");
            if detached {
                println!("Triggering savepoint in detached mode for job {job_id}.");
                let trigger = client.trigger_savepoint(target_directory.as_ref(), format).with_context(failed)?;
                println!("Successfully trigger manual savepoint, triggerId: {trigger}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("Triggering savepoint for job {job_id}.");
            println!("Waiting for response...");
            let trigger = client.trigger_savepoint(target_directory.as_ref(), format).with_context(failed)?;
            let location = client.wait_savepoint(&trigger).with_context(failed)?;
            println!("Savepoint completed. Path: {location}");
            println!("You can resume your program from this savepoint with the run command.");
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { job_id, savepoint_path, drain, format, detached } => {
            let format = parse_format(&format)?;
            let client = client_for(&target, &job_id)?;
            let failed = || format!("Could not stop with a savepoint job \"{job_id}\".");
            if detached {
                println!("Triggering stop-with-savepoint in detached mode for job {job_id}.");
                let trigger = client.stop(savepoint_path.as_ref(), drain, format).with_context(failed)?;
                println!("Successfully trigger stop-with-savepoint in detached mode, triggerId: {trigger}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("{} job \"{job_id}\" with a {format} savepoint.", if drain { "Draining" } else { "Suspending" });
            println!("Triggering stop-with-savepoint for job {job_id}.");
            println!("Waiting for response...");
            let trigger = client.stop(savepoint_path.as_ref(), drain, format).with_context(failed)?;
            let location = client.wait_savepoint(&trigger).with_context(failed)?;
            println!("Savepoint completed. Path: {location}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(all: bool, token: Option<String>) {
    let registry = Registry::default_location();
    let mut running = Vec::new();
    let mut scheduled = Vec::new();
    let mut ended = Vec::new();
    for entry in registry.list() {
        let client = Client::new(&entry.address, &entry.id, token.clone());
        let status = client.verify().unwrap_or_else(|_| "UNREACHABLE".into());
        // Flink's line, then the REST address (where --address, Flink's `-m` and HTTP clients
        // reach the job) and the job's web UI.
        let line = format!(
            "{} : {} : {} ({status}) at http://{} (web UI http://{}/)",
            client::format_time(entry.started_ms),
            entry.id,
            entry.name,
            entry.address,
            entry.address
        );
        match status.as_str() {
            "CREATED" | "INITIALIZING" => scheduled.push(line),
            "FINISHED" | "FAILED" | "CANCELED" => ended.push(line),
            _ => running.push(line),
        }
    }
    if all {
        for entry in registry.ended() {
            let status = match entry.ended.as_ref().map(|e| e.status.as_str()) {
                Some("GONE") | None => "GONE: the process ended without a final status",
                Some(status) => status,
            };
            let mut line =
                format!("{} : {} : {} ({status})", client::format_time(entry.started_ms), entry.id, entry.name);
            if let Some(last) = &entry.last_checkpoint {
                line.push_str(&format!(" last checkpoint {last}"));
            }
            ended.push(line);
        }
    }
    let section = |title: &str, lines: &[String], empty: &str| {
        if lines.is_empty() {
            println!("{empty}");
        } else {
            println!("{title}");
            lines.iter().for_each(|l| println!("{l}"));
            println!("--------------------------------------------------------------");
        }
    };
    println!("Waiting for response...");
    section("------------------ Running/Restarting Jobs -------------------", &running, "No running jobs.");
    section("----------------------- Scheduled Jobs -----------------------", &scheduled, "No scheduled jobs.");
    if all {
        section("---------------------- Terminated Jobs -----------------------", &ended, "No terminated jobs.");
    }
}

//! `weir run`: starts a job binary (or a bundled example) with restore and configuration flags,
//! and reports its job id once the job has registered.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use weir_rest::Registry;

#[derive(Args)]
pub struct RunArgs {
    /// Returns once the job is running, leaving it in the background (output goes to a log file).
    #[arg(short = 'd', long)]
    detached: bool,
    /// Accepted as Flink's `-sae`: an attached job already ends with the CLI (Ctrl-C reaches it).
    #[arg(long = "shutdownOnAttachedExit", visible_alias = "sae")]
    _shutdown_on_attached_exit: bool,
    #[command(flatten)]
    flags: weir::JobFlags,
    /// The job binary, or the name of a bundled example (word-count, window-count, keyed-count).
    job: String,
    /// Arguments of the job.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// The error a job printed when it ended: from its `Error:` line (what `main` returning an error
/// prints) up to any backtrace (`RUST_BACKTRACE=1`), else the log's last lines.
fn job_error(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    match lines.iter().rposition(|l| l.starts_with("Error:")) {
        Some(start) => lines[start..]
            .iter()
            .take_while(|l| !l.to_ascii_lowercase().starts_with("stack backtrace:"))
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
            .trim_end()
            .to_string(),
        None => lines[lines.len().saturating_sub(20)..].join("\n"),
    }
}

/// A path to a job binary, or a bundled example that sits beside the `weir` binary.
fn resolve_job(job: &str) -> Result<PathBuf> {
    let as_path = Path::new(job);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    if !job.contains('/') {
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
            let bundled = dir.join(job);
            if bundled.is_file() {
                return Ok(bundled);
            }
        }
    }
    bail!("'{job}' is neither a job binary nor a bundled example (word-count, window-count, keyed-count); build the examples with `cargo build --release -p weir-examples`, or give the path of a job binary")
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let binary = resolve_job(&args.job)?;
    let mut cmd = Command::new(&binary);
    cmd.args(args.flags.to_args());
    cmd.args(&args.args);
    let registry = Registry::default_location();
    let log = if args.detached {
        let dir = registry.dir().parent().map(|h| h.join("log")).unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let path = dir.join(format!("{}-{stamp}.log", args.job.rsplit('/').next().unwrap_or("job")));
        let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        cmd.stdout(Stdio::from(file.try_clone()?)).stderr(Stdio::from(file)).stdin(Stdio::null());
        // A job of its own process group: a Ctrl-C in this terminal does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Some(path)
    } else {
        None
    };
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let entry = loop {
        if let Some(e) = registry.list().into_iter().find(|e| e.pid == pid) {
            break e;
        }
        if let Some(status) = child.try_wait()? {
            let Some(log) = &log else {
                // Attached: the job wrote its error to this terminal (stderr is shared).
                bail!("the job exited ({status}) before it was running; its error is printed above");
            };
            let output = std::fs::read_to_string(log).unwrap_or_default();
            bail!("the job exited ({status}) before it was running (log: {}):\n{}", log.display(), job_error(&output));
        }
        if Instant::now() > deadline {
            bail!("the job (pid {pid}) did not register within 60 s in {}", registry.dir().display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("Job has been submitted with JobID {}", entry.id);
    if let Some(path) = log {
        println!("Job output: {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait()?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

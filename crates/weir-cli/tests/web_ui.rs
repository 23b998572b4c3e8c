//! The web UI a job serves at `/`, in headless Chromium (`scripts/browser.sh`): it renders the job
//! graph and the checkpoint history of a running job, and a click triggers a savepoint that
//! completes. The screenshot stays in `target/test-artifacts/web-ui.png`.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use support::*;

#[test]
fn the_job_page_shows_graph_and_history_and_triggers_a_savepoint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser = Command::new(root.join("scripts/browser.sh")).arg("path").output().unwrap();
    assert!(browser.status.success(), "{}", String::from_utf8_lossy(&browser.stderr));
    let modules = Path::new(String::from_utf8_lossy(&browser.stdout).trim()).join("node_modules");

    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let savepoints = dir.path().join("savepoints");
    let default_dir = format!("execution.checkpointing.savepoint-dir={}", savepoints.display());
    let (job, _) = weir.start_keyed_count_with(dir.path(), Backend::HashMap, &["-p", "2", "-D", &default_dir]);
    // The page's address as `weir list` prints it.
    let listed = weir.ok(&["list"]);
    let url = listed
        .lines()
        .find(|l| l.contains(&job))
        .and_then(|l| l.split_once("(web UI ")?.1.strip_suffix(')'))
        .unwrap_or_else(|| panic!("a web UI link for {job}: {listed}"))
        .to_string();
    assert_eq!(url, format!("http://{}/", weir.address(&job)));

    let artifacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("web-ui.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/check-job-page.cjs"))
        .args([url.as_str(), screenshot.to_str().unwrap()])
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();

    assert_eq!(seen["errors"], serde_json::json!([]), "no script errors on the page");
    assert_eq!(seen["state"], "RUNNING");
    let graph = seen["graph"].as_str().unwrap();
    for uid in ["generator", "count", "sink"] {
        assert!(graph.contains(&format!("uid \"{uid}\"")), "the graph names uid {uid}: {graph}");
    }
    assert!(graph.contains("parallelism 2") && graph.contains("HASH"), "{graph}");
    assert!(seen["bars"].as_u64() >= Some(2), "the duration chart has a bar per checkpoint");

    // The savepoint the click triggered is on disk, where the page says, and the restore
    // command it offers names it.
    let operation = seen["operation"].as_str().unwrap();
    let location = operation.strip_prefix("Savepoint completed. Path: ").unwrap_or_else(|| panic!("{operation}"));
    let path = Path::new(location.strip_prefix("file:").unwrap());
    assert!(path.starts_with(&savepoints) && path.join("_metadata").is_file(), "{location}");
    let command = seen["command"].as_str().unwrap();
    assert!(command.contains(&format!("-s {location}")) && command.contains("keyed-count"), "{command}");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000, "a screenshot of the page");
    weir.ok(&["cancel", &job]);
}

//! A blocking client of one job's REST API.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use ureq::Agent;
use weir_core::location::SnapshotUri;

pub struct Client {
    agent: Agent,
    base: String,
    job_id: String,
    /// Bearer token for jobs that require one (`rest.auth.token`).
    token: Option<String>,
}

/// How long to wait for a savepoint or checkpoint to complete.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(600);

impl Client {
    /// `address` is `host:port`, or `http://host:port` as `weir list` prints it.
    pub fn new(address: &str, job_id: &str, token: Option<String>) -> Client {
        let address = address.strip_prefix("http://").unwrap_or(address).trim_end_matches('/');
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client { agent, base: format!("http://{address}"), job_id: job_id.to_string(), token }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the server's message.
    fn json(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = self.url(path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let auth = auth.as_deref();
        let response = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(&url), auth).call(),
            ("PATCH", _) => with_auth(self.agent.patch(&url), auth).send_empty(),
            (_, Some(b)) => with_auth(self.agent.post(&url), auth).send_json(b),
            (_, None) => with_auth(self.agent.post(&url), auth).send_empty(),
        };
        let mut response = response.with_context(|| format!("cannot reach the job's REST API at {}", self.base))?;
        let status = response.status();
        let value: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        if !status.is_success() {
            let message =
                value["errors"].as_array().and_then(|e| e.first()).and_then(Value::as_str).unwrap_or("no message");
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(value)
    }

    /// Checks that the REST API at this address is the job's own (it answers for the job id) and
    /// returns the job's status. A stale or forged registry entry can point at another job or
    /// another program entirely.
    pub fn verify(&self) -> Result<String> {
        let answer = self.json("GET", &format!("/jobs/{}", self.job_id), None);
        let jid = answer.as_ref().ok().and_then(|v| v["jid"].as_str());
        match (jid, answer.as_ref().ok().and_then(|v| v["state"].as_str())) {
            (Some(jid), Some(state)) if jid == self.job_id => Ok(state.to_string()),
            _ => bail!(
                "the REST API at {} does not answer as job {} ({}); the job has ended, or the registry entry or --address is wrong",
                self.base.trim_start_matches("http://"),
                self.job_id,
                match answer {
                    Ok(v) => format!("it answered {v}"),
                    Err(e) => e.to_string(),
                }
            ),
        }
    }

    pub fn status(&self) -> Result<String> {
        let v = self.json("GET", &format!("/jobs/{}", self.job_id), None)?;
        v["state"].as_str().map(str::to_string).ok_or_else(|| anyhow!("no state in the answer"))
    }

    pub fn cancel(&self) -> Result<()> {
        self.json("PATCH", &format!("/jobs/{}?mode=cancel", self.job_id), None).map(|_| ())
    }

    /// Waits until the job's REST API stops answering (the job ended), at most `timeout`.
    pub fn wait_gone(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.status() {
                Ok(s) if s == "CANCELED" || s == "FINISHED" || s == "FAILED" => return,
                Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => return,
            }
        }
    }

    pub fn trigger_savepoint(&self, target: Option<&SnapshotUri>, format: &str) -> Result<String> {
        let mut body = json!({ "formatType": format });
        if let Some(t) = target {
            body["target-directory"] = json!(absolute(t));
        }
        let v = self.json("POST", &format!("/jobs/{}/savepoints", self.job_id), Some(body))?;
        request_id(&v)
    }

    pub fn stop(&self, target: Option<&SnapshotUri>, drain: bool, format: &str) -> Result<String> {
        let mut body = json!({ "drain": drain, "formatType": format });
        if let Some(t) = target {
            body["targetDirectory"] = json!(absolute(t));
        }
        let v = self.json("POST", &format!("/jobs/{}/stop", self.job_id), Some(body))?;
        request_id(&v)
    }

    /// Polls a savepoint until it completes; returns its location (`file:<dir>`).
    pub fn wait_savepoint(&self, trigger: &str) -> Result<String> {
        let v = self.wait_operation(&format!("/jobs/{}/savepoints/{trigger}", self.job_id))?;
        if let Some(cause) = v["operation"]["failure-cause"]["stack-trace"].as_str() {
            bail!("{cause}");
        }
        v["operation"]["location"].as_str().map(str::to_string).ok_or_else(|| anyhow!("no location in {v}"))
    }

    /// Triggers a checkpoint and waits for it; returns its id.
    pub fn checkpoint(&self, kind: &str) -> Result<u64> {
        let v =
            self.json("POST", &format!("/jobs/{}/checkpoints", self.job_id), Some(json!({ "checkpointType": kind })))?;
        let trigger = request_id(&v)?;
        let v = self.wait_operation(&format!("/jobs/{}/checkpoints/{trigger}", self.job_id))?;
        if let Some(cause) = v["operation"]["failureCause"]["stack-trace"].as_str() {
            bail!("{cause}");
        }
        v["operation"]["checkpointId"].as_u64().ok_or_else(|| anyhow!("no checkpoint id in {v}"))
    }

    /// Polls an operation until it completes; past two seconds, shows how far it has got every two
    /// seconds (on stderr, so stdout keeps Flink's lines).
    fn wait_operation(&self, path: &str) -> Result<Value> {
        let started = Instant::now();
        let deadline = started + OPERATION_TIMEOUT;
        let mut next_report = started + PROGRESS_EVERY;
        loop {
            let v = self.json("GET", path, None)?;
            if v["status"]["id"] == "COMPLETED" {
                return Ok(v);
            }
            if Instant::now() >= next_report {
                next_report += PROGRESS_EVERY;
                eprintln!("{}", progress_line(&v["progress"], started.elapsed()));
            }
            if Instant::now() > deadline {
                bail!("timed out after {} s waiting for the operation", OPERATION_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How far a snapshot operation has got, from the `progress` of its REST status (none before
/// the snapshot's directory is made).
fn progress_line(progress: &Value, elapsed: Duration) -> String {
    let field = |name: &str| progress[name].as_u64();
    let seconds = elapsed.as_secs();
    let (Some(files), Some(bytes)) = (field("files"), field("bytes")) else {
        return format!("In progress for {seconds} s");
    };
    let subtasks = match (field("num_acknowledged_subtasks"), field("num_subtasks")) {
        (Some(acknowledged), Some(total)) if total > 0 => format!("{acknowledged} of {total} subtasks acknowledged, "),
        _ => String::new(),
    };
    format!("In progress for {seconds} s: {subtasks}{files} files, {:.1} MB written", bytes as f64 / 1e6)
}

/// How often a long operation reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

fn request_id(v: &Value) -> Result<String> {
    v["request-id"].as_str().map(str::to_string).ok_or_else(|| anyhow!("no request-id in {v}"))
}

fn with_auth<B>(request: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(value) => request.header("Authorization", value),
        None => request,
    }
}

/// The job may run in another directory: local locations go absolute, as `file:` URIs.
fn absolute(location: &SnapshotUri) -> String {
    match location.as_local() {
        Some(p) => SnapshotUri::Local(std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())).to_string(),
        None => location.to_string(),
    }
}

/// `dd.MM.yyyy HH:mm:ss` (UTC) from milliseconds since the epoch, as `flink list` prints times.
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{day:02}.{month:02}.{year} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times_like_flink_list() {
        assert_eq!(super::format_time(0), "01.01.1970 00:00:00");
        assert_eq!(super::format_time(1_606_752_149_000), "30.11.2020 16:02:29");
    }

    #[test]
    fn progress_lines_say_what_is_known() {
        use serde_json::json;
        use std::time::Duration;
        let line = |v| super::progress_line(&v, Duration::from_millis(4_200));
        assert_eq!(
            line(json!({"files": 3, "bytes": 2_500_000, "num_acknowledged_subtasks": 1, "num_subtasks": 4})),
            "In progress for 4 s: 1 of 4 subtasks acknowledged, 3 files, 2.5 MB written"
        );
        assert_eq!(line(json!({"files": 0, "bytes": 0})), "In progress for 4 s: 0 files, 0.0 MB written");
        assert_eq!(line(json!(null)), "In progress for 4 s", "before the snapshot's directory is made");
    }
}

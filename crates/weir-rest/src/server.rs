//! The job's REST server: axum on a single-threaded tokio runtime of its own thread, so the engine
//! itself stays free of async. Handlers only call the job's `JobControl`; long operations are
//! triggered and then polled, as in Flink.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_core::location::SnapshotUri;
use weir_core::metadata::{SavepointFormat, SnapshotKind};
use weir_runtime::job::CheckpointStats;
use weir_runtime::storage::dispose_snapshot;
use weir_runtime::{ControlError, JobControl, Operation};

#[derive(Clone, Copy, PartialEq, Eq)]
enum TriggerKind {
    Savepoint,
    Checkpoint,
}

struct Trigger {
    token: u64,
    kind: TriggerKind,
    /// The final status has been returned to a client at least once.
    reported: bool,
}

struct AppState {
    control: JobControl,
    triggers: Mutex<HashMap<String, Trigger>>,
    disposals: Mutex<HashMap<String, Result<(), String>>>,
}

impl AppState {
    fn triggers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Trigger>> {
        self.triggers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running REST server. Dropping it stops the server, after giving clients up to a few seconds
/// to fetch the outcome of operations they triggered (a stop-with-savepoint ends the job right
/// after its savepoint completes).
pub struct RestServer {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RestServer {
    pub fn address(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && self.state.triggers().values().any(|t| !t.reported) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving `control`'s job on `bind:port` (port 0 picks a free port). With a `token`,
/// every request must carry `Authorization: Bearer <token>`.
pub fn serve(control: JobControl, bind: &str, port: u16, token: Option<String>) -> std::io::Result<RestServer> {
    let listener = std::net::TcpListener::bind((bind, port))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState { control, triggers: Mutex::default(), disposals: Mutex::default() });
    let app = Router::new()
        .route("/jobs", get(jobs))
        .route("/jobs/{job}", get(job).patch(cancel))
        .route("/jobs/{job}/savepoints", post(trigger_savepoint))
        .route("/jobs/{job}/savepoints/{trigger}", get(savepoint_status))
        .route("/jobs/{job}/stop", post(stop))
        .route("/jobs/{job}/checkpoints", get(checkpoint_statistics).post(trigger_checkpoint))
        .route("/jobs/{job}/checkpoints/{trigger}", get(checkpoint_status))
        .route("/savepoint-disposal", post(dispose))
        .route("/savepoint-disposal/{trigger}", get(disposal_status))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(move |request, next| authenticate(token.clone(), request, next)))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let thread = std::thread::Builder::new().name(format!("rest-{addr}")).spawn(move || {
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!("REST server cannot listen: {e}"),
            };
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = server.await {
                tracing::error!("REST server failed: {e}");
            }
        })
    })?;
    tracing::info!("REST endpoint of job {} listening at http://{addr}", state.control.job_id());
    Ok(RestServer { addr, state, shutdown: Some(tx), thread: Some(thread) })
}

/// An error answer in Flink's shape: `{"errors": [message]}`.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "errors": [self.message] }))).into_response()
    }
}

/// Lets a request through when no token is configured or it carries the token.
async fn authenticate(
    token: Option<String>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "This job's REST API requires a bearer token: send Authorization: Bearer <token> (the weir CLI reads it from WEIR_REST_TOKEN or --token-file).",
    );
    response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    response
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, format!("Not found: {}", uri.path()))
}

/// Every error answers `{"errors": [...]}`, also those axum writes itself (a malformed or
/// oversized body, a wrong content type or method), so clients parse one shape.
async fn json_errors(response: Response) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let status = response.status();
    let is_json = response.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    let body = json!({ "errors": [message] }).to_string();
    parts.headers.insert(CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError { status, message: message.into() }.into_response()
}

fn check_job(state: &AppState, job: &str) -> Result<(), ApiError> {
    if job == state.control.job_id().to_hex() {
        Ok(())
    } else {
        Err(ApiError { status: StatusCode::NOT_FOUND, message: format!("Job {job} not found") })
    }
}

fn control_error(e: ControlError, property: &str) -> Response {
    match e {
        ControlError::NoSavepointDir => error(
            StatusCode::BAD_REQUEST,
            format!("Config key [execution.checkpointing.savepoint-dir] is not set. Property [{property}] must be provided."),
        ),
        ControlError::NotRunning { .. } => error(StatusCode::CONFLICT, e.to_string()),
        ControlError::NoCheckpointDir(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        ControlError::Gone(_) => error(StatusCode::GONE, e.to_string()),
    }
}

fn parse_format(format: Option<&str>) -> Result<SavepointFormat, ApiError> {
    match format.map(str::to_ascii_uppercase).as_deref() {
        None | Some("CANONICAL") => Ok(SavepointFormat::Canonical),
        Some("NATIVE") => Ok(SavepointFormat::Native),
        Some(other) => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "Could not parse value '{other}' for enum SavepointFormatType. Expected one of: [CANONICAL, NATIVE]"
            ),
        }),
    }
}

/// A location as clients give it: a plain path, or a `file:` or `s3://` URI as Weir reports them.
fn location(path: &str) -> Result<SnapshotUri, weir_core::location::SnapshotUriError> {
    SnapshotUri::parse(path)
}

fn new_trigger_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Registers a trigger, or returns the id of an identical earlier request (idempotent retries).
fn trigger(
    state: &AppState,
    requested: Option<String>,
    kind: TriggerKind,
    start: impl FnOnce() -> Result<u64, ControlError>,
    property: &str,
) -> Response {
    if let Some(id) = &requested {
        if state.triggers().contains_key(id) {
            return (StatusCode::ACCEPTED, Json(json!({ "request-id": id }))).into_response();
        }
    }
    match start() {
        Ok(token) => {
            let id = requested.unwrap_or_else(new_trigger_id);
            state.triggers().insert(id.clone(), Trigger { token, kind, reported: false });
            (StatusCode::ACCEPTED, Json(json!({ "request-id": id }))).into_response()
        }
        Err(e) => control_error(e, property),
    }
}

async fn jobs(State(state): State<Arc<AppState>>) -> Json<Value> {
    let c = &state.control;
    Json(json!({ "jobs": [ { "id": c.job_id().to_hex(), "status": c.status().to_string() } ] }))
}

async fn job(State(state): State<Arc<AppState>>, Path(job): Path<String>) -> Response {
    if let Err(e) = check_job(&state, &job) {
        return e.into_response();
    }
    let c = &state.control;
    let mut body = json!({ "jid": c.job_id().to_hex(), "name": c.name(), "state": c.status().to_string() });
    // Weir adds how far the download of a snapshot on object storage has got while the job
    // restores from it.
    if let Some(p) = c.restore_progress() {
        body["restore-progress"] = json!({
            "snapshot": p.snapshot.to_string(),
            "files": p.files,
            "files-total": p.files_total,
            "bytes": p.bytes,
            "bytes-total": p.bytes_total,
        });
    }
    Json(body).into_response()
}

#[derive(Deserialize)]
struct CancelQuery {
    mode: Option<String>,
}

async fn cancel(State(state): State<Arc<AppState>>, Path(job): Path<String>, Query(q): Query<CancelQuery>) -> Response {
    if let Err(e) = check_job(&state, &job) {
        return e.into_response();
    }
    match q.mode.as_deref() {
        None | Some("cancel") => {
            state.control.cancel();
            (StatusCode::ACCEPTED, Json(json!({}))).into_response()
        }
        Some(other) => error(StatusCode::BAD_REQUEST, format!("unknown mode '{other}'; use mode=cancel")),
    }
}

#[derive(Deserialize, Default)]
struct SavepointRequest {
    #[serde(rename = "target-directory")]
    target_directory: Option<String>,
    #[serde(rename = "cancel-job", default)]
    cancel_job: bool,
    #[serde(rename = "formatType")]
    format_type: Option<String>,
    #[serde(rename = "triggerId")]
    trigger_id: Option<String>,
}

async fn trigger_savepoint(
    State(state): State<Arc<AppState>>,
    Path(job): Path<String>,
    body: Option<Json<SavepointRequest>>,
) -> Response {
    if let Err(e) = check_job(&state, &job) {
        return e.into_response();
    }
    let req = body.map(|Json(b)| b).unwrap_or_default();
    if req.cancel_job {
        return error(StatusCode::BAD_REQUEST, "cancel-job (cancel with savepoint) is deprecated in Flink and not offered by Weir; use POST /jobs/:jobid/stop");
    }
    let format = match parse_format(req.format_type.as_deref()) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let target = match req.target_directory.as_deref().map(location).transpose() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let control = state.control.clone();
    trigger(
        &state,
        req.trigger_id,
        TriggerKind::Savepoint,
        || control.trigger_savepoint(target.as_ref(), format),
        "target-directory",
    )
}

#[derive(Deserialize, Default)]
struct StopRequest {
    #[serde(rename = "targetDirectory")]
    target_directory: Option<String>,
    #[serde(default)]
    drain: bool,
    #[serde(rename = "formatType")]
    format_type: Option<String>,
    #[serde(rename = "triggerId")]
    trigger_id: Option<String>,
}

async fn stop(
    State(state): State<Arc<AppState>>,
    Path(job): Path<String>,
    body: Option<Json<StopRequest>>,
) -> Response {
    if let Err(e) = check_job(&state, &job) {
        return e.into_response();
    }
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let format = match parse_format(req.format_type.as_deref()) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let target = match req.target_directory.as_deref().map(location).transpose() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let control = state.control.clone();
    let drain = req.drain;
    trigger(
        &state,
        req.trigger_id,
        TriggerKind::Savepoint,
        || control.stop_with_savepoint(target.as_ref(), format, drain),
        "targetDirectory",
    )
}

fn operation_status(state: &AppState, job: &str, trigger: &str, kind: TriggerKind) -> Response {
    let what = if kind == TriggerKind::Savepoint { "savepoint" } else { "checkpoint" };
    let token = {
        let mut triggers = state.triggers();
        match triggers.get_mut(trigger).filter(|t| t.kind == kind) {
            Some(t) => {
                let op = state.control.operation(t.token);
                if op.as_ref().is_some_and(|o| *o != Operation::InProgress) {
                    t.reported = true;
                }
                op.map(|op| (op, t.token))
            }
            None => None,
        }
    };
    let Some((op, token)) = token else {
        return error(
            StatusCode::NOT_FOUND,
            format!("There is no {what} operation with triggerId={trigger} for job {job}."),
        );
    };
    let body = match op {
        // Weir adds how far the snapshot has got: files and bytes written so far, and the
        // subtasks that have acknowledged of all (Flink's checkpoint statistics' names).
        Operation::InProgress => match state.control.operation_progress(token) {
            Some(p) => json!({
                "status": { "id": "IN_PROGRESS" },
                "progress": {
                    "files": p.files,
                    "bytes": p.bytes,
                    "num_acknowledged_subtasks": p.acknowledged_subtasks,
                    "num_subtasks": p.subtasks,
                }
            }),
            None => json!({ "status": { "id": "IN_PROGRESS" } }),
        },
        Operation::Completed { checkpoint_id, location } => match kind {
            TriggerKind::Savepoint => {
                json!({ "status": { "id": "COMPLETED" }, "operation": { "location": location.to_string() } })
            }
            TriggerKind::Checkpoint => {
                json!({ "status": { "id": "COMPLETED" }, "operation": { "checkpointId": checkpoint_id } })
            }
        },
        Operation::Failed { message } => {
            let cause = json!({ "class": "weir.CheckpointException", "stack-trace": message });
            match kind {
                TriggerKind::Savepoint => {
                    json!({ "status": { "id": "COMPLETED" }, "operation": { "failure-cause": cause } })
                }
                TriggerKind::Checkpoint => {
                    json!({ "status": { "id": "COMPLETED" }, "operation": { "failureCause": cause } })
                }
            }
        }
    };
    Json(body).into_response()
}

async fn savepoint_status(
    State(state): State<Arc<AppState>>,
    Path((job, trigger)): Path<(String, String)>,
) -> Response {
    if let Err(e) = check_job(&state, &job) {
        return e.into_response();
    }
    operation_status(&state, &job, &trigger, TriggerKind::Savepoint)
}

#[derive(Deserialize, Default)]
struct CheckpointRequest {
    #[serde(rename = "checkpointType")]
    checkpoint_type: Option<String>,
    #[serde(rename = "triggerId")]
    trigger_id: Option<String>,
}

async fn trigger_checkpoint(
    State(state): State<Arc<AppState>>,
    Path(job): Path<String>,
    body: Option<Json<CheckpointRequest>>,
) -> Response {
    if let Err(e) = check_job(&state, &job) {
        return e.into_response();
    }
    let req = body.map(|Json(b)| b).unwrap_or_default();
    match req.checkpoint_type.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("CONFIGURED") | Some("FULL") => {}
        Some("INCREMENTAL") => {
            return error(
                StatusCode::BAD_REQUEST,
                "Triggering an incremental checkpoint explicitly is not supported; use CONFIGURED or FULL",
            )
        }
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("Could not parse value '{other}' for checkpointType. Expected one of: [CONFIGURED, FULL]"),
            )
        }
    }
    let control = state.control.clone();
    trigger(&state, req.trigger_id, TriggerKind::Checkpoint, || control.trigger_checkpoint(), "checkpointType")
}

async fn checkpoint_status(
    State(state): State<Arc<AppState>>,
    Path((job, trigger)): Path<(String, String)>,
) -> Response {
    if let Err(e) = check_job(&state, &job) {
        return e.into_response();
    }
    operation_status(&state, &job, &trigger, TriggerKind::Checkpoint)
}

fn stats_json(s: &CheckpointStats) -> Value {
    let is_savepoint = s.kind.is_savepoint();
    json!({
        "className": "completed",
        "id": s.id,
        "status": "COMPLETED",
        "is_savepoint": is_savepoint,
        "savepointFormat": match s.kind { SnapshotKind::Savepoint { format: SavepointFormat::Native } => Some("NATIVE"), SnapshotKind::Savepoint { .. } => Some("CANONICAL"), SnapshotKind::Checkpoint => None },
        "checkpoint_type": if is_savepoint { "SAVEPOINT" } else { "CHECKPOINT" },
        "state_size": s.state_size,
        "checkpointed_size": s.checkpointed_size,
        "end_to_end_duration": s.duration.as_millis() as u64,
        "external_path": s.location.to_string(),
    })
}

async fn checkpoint_statistics(State(state): State<Arc<AppState>>, Path(job): Path<String>) -> Response {
    if let Err(e) = check_job(&state, &job) {
        return e.into_response();
    }
    let c = &state.control;
    let completed = c.completed_checkpoints();
    let failed = c.failed_checkpoints();
    let latest_checkpoint = completed.iter().rev().find(|s| !s.kind.is_savepoint()).map(stats_json);
    let latest_savepoint = completed.iter().rev().find(|s| s.kind.is_savepoint()).map(stats_json);
    let restored = c
        .restored_from()
        .map(|r| json!({ "id": r.checkpoint_id, "is_savepoint": r.is_savepoint, "external_path": r.path.to_string() }));
    let history: Vec<Value> = completed.iter().rev().take(10).map(stats_json).collect();
    Json(json!({
        "counts": {
            "restored": u64::from(restored.is_some()),
            "total": completed.len() as u64 + failed + c.checkpoints_in_progress(),
            "in_progress": c.checkpoints_in_progress(),
            "completed": completed.len(),
            "failed": failed,
        },
        "latest": { "completed": latest_checkpoint, "savepoint": latest_savepoint, "failed": null, "restored": restored },
        "history": history,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct DisposalRequest {
    #[serde(rename = "savepoint-path")]
    savepoint_path: Option<String>,
}

async fn dispose(State(state): State<Arc<AppState>>, body: Option<Json<DisposalRequest>>) -> Response {
    let Some(path) = body.and_then(|Json(b)| b.savepoint_path) else {
        return error(StatusCode::BAD_REQUEST, "Field savepoint-path must not be omitted or be null.");
    };
    let path = match location(&path) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // This job's checkpoints, and those of every other running job this machine knows of.
    let mut owned: Vec<(String, SnapshotUri)> = state
        .control
        .checkpoint_job_dir()
        .filter(|_| !state.control.status().is_terminal())
        .map(|d| (state.control.job_id().to_hex(), d))
        .into_iter()
        .collect();
    owned.extend(crate::Registry::default_location().owned_dirs());
    let storage = state.control.storage();
    let outcome = dispose_snapshot(storage.store(), &path, &owned).map(|_| ()).map_err(|e| e.to_string());
    let id = new_trigger_id();
    state.disposals.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), outcome);
    Json(json!({ "request-id": id })).into_response()
}

async fn disposal_status(State(state): State<Arc<AppState>>, Path(trigger): Path<String>) -> Response {
    let outcome = state.disposals.lock().unwrap_or_else(|p| p.into_inner()).get(&trigger).cloned();
    match outcome {
        None => {
            error(StatusCode::NOT_FOUND, format!("There is no savepoint disposal operation with triggerId={trigger}."))
        }
        Some(Ok(())) => Json(json!({ "status": { "id": "COMPLETED" }, "operation": {} })).into_response(),
        Some(Err(message)) => Json(json!({
            "status": { "id": "COMPLETED" },
            "operation": { "failure-cause": { "class": "weir.DisposeException", "stack-trace": message } }
        }))
        .into_response(),
    }
}

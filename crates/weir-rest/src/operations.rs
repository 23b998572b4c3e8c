//! The operations a client triggers and then polls, as in Flink: savepoints, stop with a
//! savepoint, manual checkpoints, cancellation and savepoint disposal (digest §5.2).

use crate::server::{check_job, error, ApiError, AppState, Trigger, TriggerKind};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use weir_core::location::SnapshotUri;
use weir_core::metadata::SavepointFormat;
use weir_runtime::storage::dispose_snapshot;
use weir_runtime::{ControlError, Operation};

/// The routes of triggered operations (the job details GET of `/jobs/{job}` is the views').
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/jobs/{job}", patch(cancel))
        .route("/jobs/{job}/savepoints", post(trigger_savepoint))
        .route("/jobs/{job}/savepoints/{trigger}", get(savepoint_status))
        .route("/jobs/{job}/stop", post(stop))
        .route("/jobs/{job}/checkpoints", post(trigger_checkpoint))
        .route("/jobs/{job}/checkpoints/{trigger}", get(checkpoint_status))
        .route("/savepoint-disposal", post(dispose))
        .route("/savepoint-disposal/{trigger}", get(disposal_status))
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

/// A savepoint request's format and target directory, or the 400 answer saying which is wrong.
fn format_and_target(
    format: Option<&str>,
    target: Option<&str>,
) -> Result<(SavepointFormat, Option<SnapshotUri>), ApiError> {
    let format = parse_format(format)?;
    let target = target
        .map(location)
        .transpose()
        .map_err(|e| ApiError { status: StatusCode::BAD_REQUEST, message: e.to_string() })?;
    Ok((format, target))
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
    let (format, target) = match format_and_target(req.format_type.as_deref(), req.target_directory.as_deref()) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
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
    let (format, target) = match format_and_target(req.format_type.as_deref(), req.target_directory.as_deref()) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
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

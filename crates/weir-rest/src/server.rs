//! The job's REST server: axum on a single-threaded tokio runtime of its own thread, so the engine
//! itself stays free of async. Handlers only call the job's `JobControl`; long operations are
//! triggered and then polled, as in Flink.

use crate::{checkpoint_stats, metrics, operations, views};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use views::JobView;
use weir_runtime::JobControl;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TriggerKind {
    Savepoint,
    Checkpoint,
}

pub(crate) struct Trigger {
    pub token: u64,
    pub kind: TriggerKind,
    /// The final status has been returned to a client at least once.
    pub reported: bool,
}

pub(crate) struct AppState {
    pub control: JobControl,
    pub rates: metrics::Rates,
    pub triggers: Mutex<HashMap<String, Trigger>>,
    pub disposals: Mutex<HashMap<String, Result<(), String>>>,
}

impl AppState {
    pub(crate) fn triggers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Trigger>> {
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
    let state = Arc::new(AppState {
        control,
        rates: metrics::Rates::default(),
        triggers: Mutex::default(),
        disposals: Mutex::default(),
    });
    // Flink's clients address version 1 explicitly (`/v1/jobs/overview`); without a prefix the
    // same API answers, as in Flink.
    let api = Router::new()
        .route("/overview", get(overview))
        .route("/config", get(dashboard_config))
        .route("/jobs", get(jobs))
        .route("/jobs/overview", get(jobs_overview))
        .route("/jobs/{job}", get(job))
        .route("/jobs/{job}/status", get(job_status))
        .route("/jobs/{job}/plan", get(job_plan))
        .route("/jobs/{job}/config", get(job_config))
        .route("/jobs/{job}/exceptions", get(job_exceptions))
        .route("/jobs/{job}/checkpoints", get(checkpoint_statistics))
        .route("/jobs/{job}/checkpoints/config", get(checkpoint_config))
        .route("/jobs/{job}/checkpoints/details/{checkpoint}", get(checkpoint_details))
        .route("/jobs/{job}/metrics", get(job_metrics))
        .route("/jobs/{job}/vertices/{vertex}/metrics", get(vertex_metrics))
        .merge(operations::routes());
    let app = Router::new()
        .nest("/v1", api.clone())
        .merge(api)
        .route("/metrics", get(prometheus))
        .merge(crate::ui::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(move |request, next| authenticate(token.clone(), request, next)))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let sampled = state.clone();
    let thread = std::thread::Builder::new().name(format!("rest-{addr}")).spawn(move || {
        runtime.block_on(async move {
            // Counts every second, for rates per second.
            tokio::spawn(async move {
                let mut every_second = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every_second.tick().await;
                    sampled.rates.sample(&sampled.control);
                }
            });
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
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
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

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError { status, message: message.into() }.into_response()
}

pub(crate) fn check_job(state: &AppState, job: &str) -> Result<(), ApiError> {
    if job == state.control.job_id().to_hex() {
        Ok(())
    } else {
        Err(ApiError { status: StatusCode::NOT_FOUND, message: format!("Job {job} not found") })
    }
}

/// A GET handler answering from the job's current view, after checking the job id.
fn answer(state: &AppState, job: &str, build: impl FnOnce(&JobView) -> Value) -> Response {
    match check_job(state, job) {
        Ok(()) => Json(build(&JobView::of(&state.control))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn overview(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(views::overview(&JobView::of(&state.control)))
}

async fn dashboard_config() -> Json<Value> {
    Json(views::dashboard_config())
}

async fn jobs(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(views::jobs(&JobView::of(&state.control)))
}

async fn jobs_overview(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(views::jobs_overview(&JobView::of(&state.control)))
}

async fn job(State(state): State<Arc<AppState>>, Path(job): Path<String>) -> Response {
    let records = metrics::vertex_records(&state.control);
    answer(&state, &job, |v| views::job_details(v, &records))
}

#[derive(serde::Deserialize)]
struct MetricsQuery {
    get: Option<String>,
}

async fn job_metrics(
    State(state): State<Arc<AppState>>,
    Path(job): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Response {
    answer(&state, &job, |v| metrics::rest(v.control, &metrics::job_samples(v.control), q.get.as_deref()))
}

async fn vertex_metrics(
    State(state): State<Arc<AppState>>,
    Path((job, vertex)): Path<(String, String)>,
    Query(q): Query<MetricsQuery>,
) -> Response {
    if let Err(e) = check_job(&state, &job) {
        return e.into_response();
    }
    let c = &state.control;
    let Some(index) = c.info().vertices.iter().position(|v| v.id == vertex) else {
        return error(StatusCode::NOT_FOUND, format!("Vertex {vertex} of job {job} not found"));
    };
    let in_vertex = |s: &metrics::Sample| match s.scope {
        metrics::Scope::Task { vertex, .. } | metrics::Scope::Operator { vertex, .. } => vertex == index,
        metrics::Scope::Job => false,
    };
    let samples: Vec<_> = metrics::samples(c, &state.rates).into_iter().filter(in_vertex).collect();
    Json(metrics::rest(c, &samples, q.get.as_deref())).into_response()
}

/// Prometheus scrapes this (text format 0.0.4), as it scrapes Flink's `PrometheusReporter`.
async fn prometheus(State(state): State<Arc<AppState>>) -> Response {
    let samples = metrics::samples(&state.control, &state.rates);
    let text = metrics::prometheus(&state.control, &samples);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn job_status(State(state): State<Arc<AppState>>, Path(job): Path<String>) -> Response {
    answer(&state, &job, views::status)
}

async fn job_plan(State(state): State<Arc<AppState>>, Path(job): Path<String>) -> Response {
    answer(&state, &job, |v| json!({ "plan": views::plan(v) }))
}

async fn job_config(State(state): State<Arc<AppState>>, Path(job): Path<String>) -> Response {
    answer(&state, &job, views::job_config)
}

async fn job_exceptions(State(state): State<Arc<AppState>>, Path(job): Path<String>) -> Response {
    answer(&state, &job, |v| views::exceptions(&v.control.exceptions()))
}

async fn checkpoint_statistics(State(state): State<Arc<AppState>>, Path(job): Path<String>) -> Response {
    answer(&state, &job, |v| {
        let c = v.control;
        let restored = c.restored_from();
        // The snapshot given with -s was restored when the job first ran.
        let restore_time = restored.as_ref().and(v.timestamps.first(weir_runtime::JobStatus::Running));
        checkpoint_stats::statistics(c.info(), &c.checkpoint_history(), restored.as_ref(), restore_time, v.now_ms)
    })
}

async fn checkpoint_config(State(state): State<Arc<AppState>>, Path(job): Path<String>) -> Response {
    answer(&state, &job, |v| checkpoint_stats::config(&v.control.info().checkpoint_config))
}

async fn checkpoint_details(
    State(state): State<Arc<AppState>>,
    Path((job, checkpoint)): Path<(String, String)>,
) -> Response {
    if let Err(e) = check_job(&state, &job) {
        return e.into_response();
    }
    let c = &state.control;
    let found = checkpoint.parse::<u64>().ok().and_then(|id| {
        checkpoint_stats::details(c.info(), &c.checkpoint_history(), id, weir_runtime::job::stats::wall_clock_ms())
    });
    match found {
        Some(body) => Json(body).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("Could not find checkpointing statistics for checkpoint {checkpoint}."),
        ),
    }
}

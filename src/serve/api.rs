//! The HTTP API: routes, handlers, auth, and the one JSON error shape.
//!
//! Only this module knows HTTP and JSON wire shapes. Every failure — a bad body, an oversized
//! one, a wrong token, a refused resume — leaves as `{"error": {"code", "message", "details"}}`
//! with the matching status.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::core::rollout::Command;
use crate::serve::controller::{IngestError, Input, Shared};
use crate::serve::http::{
    Admitted, ApiError, Attributes, Body, Caller, MAX_REASON_BYTES, access, blocking,
};
use crate::serve::metrics::Metrics;

type AppState = State<Arc<Shared>>;

/// The API as the listener serves it: the request limits, every endpoint, and every error in
/// the JSON shape. The limits and the error mapping run here, once per request, rather than as
/// router layers, each of which clones and boxes the service stack for every request.
#[derive(Clone)]
pub struct Api {
    router: Router,
}

impl Api {
    pub fn new(shared: Arc<Shared>) -> Api {
        Api {
            router: router(shared),
        }
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response {
        if let Some(refused) = request_limits(&req) {
            return refused;
        }
        let response = match tower::ServiceExt::oneshot(self.router.clone(), req).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        json_errors(response).await
    }
}

/// The router with every endpoint.
fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.plan.load().server.max_body_bytes;
    // Each handler's first argument, `Admitted<access::…>`, says who may call it.
    Router::new()
        .route("/v1/assign", post(assign))
        .route(
            "/ofrep/v1/evaluate/flags",
            post(crate::serve::ofrep::evaluate_bulk),
        )
        .route(
            "/ofrep/v1/evaluate/flags/{key}",
            post(crate::serve::ofrep::evaluate_flag),
        )
        .route("/v1/events", post(events))
        .route("/v1/rollouts", get(list_rollouts))
        .route("/v1/rollouts/{name}", get(get_rollout))
        .route("/v1/workflows", get(list_workflows))
        .route("/v1/receipts", get(list_receipts))
        .route("/v1/receipts/{id}", get(get_receipt))
        .route("/v1/rollouts/{name}/pause", post(pause))
        .route("/v1/rollouts/{name}/resume", post(resume))
        .route("/v1/rollouts/{name}/rollback", post(rollback))
        .route(
            "/v1/rollouts/{name}/affected",
            get(crate::serve::affected::list),
        )
        .route(
            "/v1/rollouts/{name}/affected/{event_id}",
            post(crate::serve::affected::tag),
        )
        .route("/v1/workflows/{name}/resume", post(resume_workflow))
        .route("/v1/rollouts/{name}/promote", post(promote))
        .route("/v1/config/reload", post(reload))
        .merge(crate::serve::ui::router())
        .route("/metrics", get(metrics))
        .route("/metrics/gates", get(gate_metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// Longest request target (path and query), in bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most request headers, and their total size in bytes. Below hyper's own header count (100),
/// so 65 to 100 headers are refused here in the JSON shape; more, by hyper with a bare 431.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses oversized request targets (414) and headers (431) before routing.
/// The refusal of a request whose target or headers are too large, if it is one.
fn request_limits<B>(req: &axum::http::Request<B>) -> Option<Response> {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return Some(
            ApiError::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!("the request target is {uri} bytes; at most {MAX_URI_BYTES} are accepted"),
            )
            .into_response(),
        );
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "{} headers, {bytes} bytes; at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes are accepted",
                headers.len()
            ),
        )
        .into_response());
    }
    None
}

/// Every error leaves in the one JSON shape, including the plain-text rejections axum's
/// extractors and router produce (a bad path segment, a bad query string).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignRequest<'a> {
    #[serde(borrow)]
    workflow: Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    attributes: Attributes<'a>,
}

#[derive(Serialize)]
struct AssignResponse<'a> {
    workflow: &'a str,
    version: &'a str,
    mode: &'static str,
    segment: Option<&'a str>,
    rollout: Option<&'a str>,
    stage: Option<&'a str>,
    reason: &'static str,
}

async fn assign(
    _admitted: Admitted<access::Assign>,
    State(shared): AppState,
    body: Body,
) -> Result<Response, ApiError> {
    let req: AssignRequest<'_> = body.json()?;
    crate::core::event::check_identity(req.subject.as_deref(), req.attributes.pairs())
        .map_err(ApiError::bad_request)?;
    let snapshot = shared.snapshot.load();
    let a = snapshot
        .routing
        .assign(&req.workflow, req.subject.as_deref(), |k| {
            req.attributes.get(k)
        })
        .ok_or_else(|| ApiError::not_found(format!("unknown workflow `{}`", req.workflow)))?;
    snapshot
        .assignments
        .count(a.workflow_index, a.version_index, a.mode);
    let out = AssignResponse {
        workflow: a.workflow,
        version: a.version,
        mode: a.mode.name(),
        segment: a.segment,
        rollout: a.rollout,
        stage: a.stage,
        reason: a.reason.text(),
    };
    let bytes = serde_json::to_vec(&out).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response())
}

async fn events(
    _admitted: Admitted<access::Ingest>,
    State(shared): AppState,
    body: Body,
) -> Result<Response, ApiError> {
    let outcome = shared.ingest(&body.0).await.map_err(|e| match e {
        IngestError::Body(m) => ApiError::bad_request(m),
        IngestError::Store(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", m)
        }
    })?;
    Ok(Json(outcome).into_response())
}

async fn list_rollouts(
    _admitted: Admitted<access::Read>,
    State(shared): AppState,
) -> Result<Response, ApiError> {
    let now = shared.clock.now();
    let engine = shared.engine();
    let all: Vec<_> = (0..engine.rollouts.len())
        .map(|i| engine.status(i, now))
        .collect();
    Ok(Json(json!({"rollouts": all})).into_response())
}

async fn get_rollout(
    _admitted: Admitted<access::Read>,
    State(shared): AppState,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let now = shared.clock.now();
    let engine = shared.engine();
    let i = engine
        .rollout_index(&name)
        .ok_or_else(|| ApiError::not_found(format!("no rollout named `{name}`")))?;
    Ok(Json(engine.status(i, now)).into_response())
}

fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::bad_request(format!(
            "`reason` is {} bytes; at most {MAX_REASON_BYTES} are accepted (link to the incident instead)",
            reason.len()
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    ack: bool,
    #[serde(default)]
    full: bool,
}

/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// The caller's `Idempotency-Key`, if any: printable ASCII, at most 256 bytes.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_BYTES
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k.to_string()))
        }
        _ => Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII characters"
        ))),
    }
}

async fn command(
    shared: Arc<Shared>,
    caller: Caller,
    name: String,
    headers: HeaderMap,
    body: Body,
    make: fn(ReasonBody) -> Command,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let req: ReasonBody = body.json()?;
    check_reason(&req.reason)?;
    let command = make(req);
    let receipt = shared
        .ask(|reply| Input::Command {
            rollout: name,
            actor: caller.name.to_string(),
            command,
            idempotency_key,
            reply,
        })
        .await?;
    Ok(Json(receipt).into_response())
}

async fn pause(
    Admitted { caller: c, .. }: Admitted<access::Operator>,
    State(s): AppState,
    Path(n): Path<String>,
    h: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    command(s, c, n, h, b, |r| Command::Pause { reason: r.reason }).await
}

async fn resume(
    Admitted { caller: c, .. }: Admitted<access::Operator>,
    State(s): AppState,
    Path(n): Path<String>,
    h: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    command(s, c, n, h, b, |r| Command::Resume {
        reason: r.reason,
        ack: r.ack,
    })
    .await
}

async fn promote(
    Admitted { caller: c, .. }: Admitted<access::Admin>,
    State(s): AppState,
    Path(n): Path<String>,
    h: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    command(s, c, n, h, b, |r| Command::Promote {
        reason: r.reason,
        full: r.full,
    })
    .await
}

async fn rollback(
    Admitted { caller: c, .. }: Admitted<access::Operator>,
    State(s): AppState,
    Path(n): Path<String>,
    h: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    command(s, c, n, h, b, |r| Command::Rollback { reason: r.reason }).await
}

async fn list_workflows(
    _admitted: Admitted<access::Read>,
    State(shared): AppState,
) -> Result<Response, ApiError> {
    let now = shared.clock.now();
    let engine = shared.engine();
    let guarded: Vec<_> = (0..engine.guards.len())
        .map(|i| engine.guard_status(i, now))
        .collect();
    Ok(Json(json!({"guarded_workflows": guarded})).into_response())
}

async fn resume_workflow(
    Admitted { caller, .. }: Admitted<access::Operator>,
    State(shared): AppState,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: ReasonBody = body.json()?;
    check_reason(&req.reason)?;
    let receipt = shared
        .ask(|reply| Input::ResumeWorkflow {
            workflow: name,
            actor: caller.name.to_string(),
            reason: req.reason,
            ack: req.ack,
            reply,
        })
        .await?;
    Ok(Json(receipt).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptQuery {
    rollout: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

async fn list_receipts(
    _admitted: Admitted<access::Read>,
    State(shared): AppState,
    query: Result<Query<ReceiptQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let since = match q.since.as_deref() {
        None => None,
        Some(s) => Some(crate::core::clock::parse_rfc3339(s).ok_or_else(|| {
            ApiError::bad_request(format!("`since` {s:?} is not an RFC 3339 time"))
        })?),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let s = Arc::clone(&shared);
    let rollout = q.rollout.clone();
    let (receipts, history) = blocking(move || {
        let receipts = s.store.receipts(rollout.as_deref(), since, limit)?;
        // A name that is neither configured nor has a history is a typo, not an empty history.
        let history = match rollout.as_deref().filter(|_| receipts.is_empty()) {
            Some(name) => !s.store.receipts(Some(name), None, 1)?.is_empty(),
            None => true,
        };
        Ok((receipts, history))
    })
    .await?;
    if let Some(name) = q.rollout.as_deref().filter(|_| !history) {
        let plan = shared.plan.load();
        if plan.rollout(name).is_none() && plan.workflow(name).is_none() {
            return Err(ApiError::not_found(format!(
                "no rollout or guarded workflow named `{name}`"
            )));
        }
    }
    Ok(Json(json!({"receipts": receipts})).into_response())
}

async fn get_receipt(
    _admitted: Admitted<access::Read>,
    State(shared): AppState,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (s, key) = (Arc::clone(&shared), id.clone());
    match blocking(move || Ok(s.store.receipt(&key)?)).await? {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError::not_found(format!("no receipt `{id}`"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadQuery {
    #[serde(default)]
    force: bool,
}

async fn reload(
    Admitted { caller, .. }: Admitted<access::Admin>,
    State(shared): AppState,
    query: Result<Query<ReloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let reloaded = shared
        .ask(|reply| Input::Reload {
            actor: caller.name.to_string(),
            force: q.force,
            reply: Some(reply),
        })
        .await?;
    let hash = shared.plan.load().hash.clone();
    Ok(Json(json!({
        "reloaded": true,
        "config_hash": hash,
        "receipts": reloaded.receipts,
        "needs_restart": reloaded.needs_restart,
    }))
    .into_response())
}

async fn metrics(State(shared): AppState) -> Response {
    shared
        .metrics
        .store(shared.store.size_bytes(), shared.store.is_healthy());
    shared.snapshot.load().assignments.flush();
    exposition(shared, Metrics::render).await
}

/// The per gate × segment × arm series (verdicts, signal values and samples, limits): a
/// second scrape job, kept off `/metrics` so a large fleet's main scrape stays small.
async fn gate_metrics(State(shared): AppState) -> Response {
    exposition(shared, Metrics::render_gates).await
}

/// A text exposition rendered on the evaluation thread: rendering every series is CPU work in
/// proportion to the fleet, not a request worker's.
async fn exposition(shared: Arc<Shared>, render: fn(&Metrics) -> String) -> Response {
    let s = Arc::clone(&shared);
    let text = shared
        .evaluator
        .run(move || render(&s.metrics))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn readyz(State(shared): AppState) -> Response {
    if let Some(failure) = shared.store.failure() {
        let message = match &shared.replica {
            None => format!(
                "the store cannot commit ({failure}); it is retried every second — free space (or fix the file system) under {}",
                shared.plan.load().server.data_dir.display()
            ),
            Some(_) => format!(
                "the database {} cannot be reached ({failure}); assignments are still served from the last snapshot, events are refused and no decision is made until it answers (retried every second)",
                shared.store.location()
            ),
        };
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        )
        .into_response();
    }
    if shared.is_ready() {
        let mut body = json!({"status": "ready", "config_hash": shared.plan.load().hash});
        if let Some(replica) = &shared.replica {
            body["replica"] = json!(replica.name);
            body["role"] = json!(if replica.is_leader() {
                "leader"
            } else {
                "follower"
            });
        }
        Json(body).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting or shutting down",
        )
        .into_response()
    }
}

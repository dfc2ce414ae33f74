//! The HTTP API: routes, handlers, auth, and the one JSON error shape.
//!
//! Only this module knows HTTP and JSON wire shapes. Every failure — a bad body, an oversized
//! one, a wrong token, a refused resume — leaves as `{"error": {"code", "message", "details"}}`
//! with the matching status.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Role;
use crate::rollout::{Command, Refusal};
use crate::server::{IngestError, Input, InputError, Shared};

/// An API failure.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    fn with_details(mut self, details: Vec<String>) -> ApiError {
        self.details = details;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "details": self.details}});
        (self.status, Json(body)).into_response()
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> ApiError {
        match e {
            InputError::UnknownRollout(_) | InputError::UnknownWorkflow(_) => {
                ApiError::not_found(e.to_string())
            }
            InputError::Refused(Refusal::BadRequest(m)) => ApiError::bad_request(m),
            InputError::Refused(Refusal::Conflict(m)) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", m)
            }
            InputError::Refused(Refusal::ReenableProof { missing }) => {
                let message = Refusal::ReenableProof {
                    missing: missing.clone(),
                }
                .to_string();
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "reenable_proof_missing",
                    message,
                )
                .with_details(missing)
            }
            InputError::Config(c) => {
                let details = c.problems();
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_config",
                    "the config file is invalid; the running config is unchanged",
                )
                .with_details(details)
            }
            InputError::Store(s) => ApiError::internal(s.to_string()),
            InputError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
        }
    }
}

/// The raw request body, with size-limit and read failures mapped to [`ApiError`].
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rejection) => {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "bad_body"
                };
                Err(ApiError::new(status, code, rejection.body_text()))
            }
        }
    }
}

impl Body {
    /// Parses the body as JSON into `T`; an empty body parses as `{}`.
    pub fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        let bytes: &[u8] = if self.0.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.0
        };
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Who is calling.
pub struct Caller {
    pub name: String,
}

/// Checks the `Authorization: Bearer` (or `X-API-Key`) token for `needed`.
pub fn authorize(shared: &Shared, headers: &HeaderMap, needed: Role) -> Result<Caller, ApiError> {
    let tokens = shared.tokens.load();
    let Some(list) = &tokens.tokens else {
        return Ok(Caller {
            name: "anonymous".into(),
        });
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let Some(presented) = presented else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token",
        ));
    };
    let Some(token) = list
        .iter()
        .find(|t| constant_time_eq(t.secret.as_bytes(), presented.trim().as_bytes()))
    else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown token",
        ));
    };
    if !token.role.allows(needed) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token `{}` has role {:?}; this needs {:?}",
                token.name, token.role, needed
            )
            .to_lowercase(),
        ));
    }
    Ok(Caller {
        name: token.name.clone(),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type AppState = State<Arc<Shared>>;

/// The router with every endpoint.
pub fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.plan.load().server.max_body_bytes;
    Router::new()
        .route("/v1/assign", post(assign))
        .route("/v1/events", post(events))
        .route(
            "/ofrep/v1/evaluate/flags",
            post(crate::ofrep::evaluate_bulk),
        )
        .route(
            "/ofrep/v1/evaluate/flags/{key}",
            post(crate::ofrep::evaluate_flag),
        )
        .route("/v1/rollouts", get(list_rollouts))
        .route("/v1/rollouts/{name}", get(get_rollout))
        .route("/v1/rollouts/{name}/pause", post(pause))
        .route("/v1/rollouts/{name}/resume", post(resume))
        .route("/v1/rollouts/{name}/promote", post(promote))
        .route("/v1/rollouts/{name}/rollback", post(rollback))
        .route("/v1/workflows", get(list_workflows))
        .route("/v1/workflows/{name}/resume", post(resume_workflow))
        .route("/v1/receipts", get(list_receipts))
        .route("/v1/receipts/{id}", get(get_receipt))
        .route("/v1/config/reload", post(reload))
        .route("/metrics", get(metrics))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignRequest<'a> {
    #[serde(borrow)]
    workflow: Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    attributes: HashMap<Cow<'a, str>, Cow<'a, str>>,
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
    State(shared): AppState,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !shared.tokens.load().open_assign {
        authorize(&shared, &headers, Role::Ingest)?;
    }
    let req: AssignRequest<'_> = body.json()?;
    let snapshot = shared.snapshot.load();
    let a = snapshot
        .routing
        .assign(&req.workflow, req.subject.as_deref(), |k| {
            req.attributes.get(k).map(|v| v.as_ref())
        })
        .ok_or_else(|| ApiError::not_found(format!("unknown workflow `{}`", req.workflow)))?;
    snapshot.counters[a.workflow_index][a.version_index][a.mode as usize].inc();
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
    State(shared): AppState,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Role::Ingest)?;
    let outcome = shared.ingest(&body.0).await.map_err(|e| match e {
        IngestError::Body(m) => ApiError::bad_request(m),
        IngestError::Store(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", m)
        }
    })?;
    Ok(Json(outcome).into_response())
}

async fn list_rollouts(State(shared): AppState, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Role::Read)?;
    let now = shared.clock.now();
    let engine = shared.engine();
    let all: Vec<_> = (0..engine.rollouts.len())
        .map(|i| engine.status(i, now))
        .collect();
    Ok(Json(json!({"rollouts": all})).into_response())
}

async fn get_rollout(
    State(shared): AppState,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Role::Read)?;
    let now = shared.clock.now();
    let engine = shared.engine();
    let i = engine
        .rollout_index(&name)
        .ok_or_else(|| ApiError::not_found(format!("no rollout named `{name}`")))?;
    Ok(Json(engine.status(i, now)).into_response())
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

async fn command(
    shared: Arc<Shared>,
    headers: HeaderMap,
    name: String,
    body: Body,
    needed: Role,
    make: fn(ReasonBody) -> Command,
) -> Result<Response, ApiError> {
    let caller = authorize(&shared, &headers, needed)?;
    let req: ReasonBody = body.json()?;
    let command = make(req);
    let receipt = shared
        .ask(|reply| Input::Command {
            rollout: name,
            actor: caller.name,
            command,
            reply,
        })
        .await?;
    Ok(Json(receipt).into_response())
}

async fn pause(
    State(s): AppState,
    h: HeaderMap,
    Path(n): Path<String>,
    b: Body,
) -> Result<Response, ApiError> {
    command(s, h, n, b, Role::Operator, |r| Command::Pause {
        reason: r.reason,
    })
    .await
}

async fn resume(
    State(s): AppState,
    h: HeaderMap,
    Path(n): Path<String>,
    b: Body,
) -> Result<Response, ApiError> {
    command(s, h, n, b, Role::Operator, |r| Command::Resume {
        reason: r.reason,
        ack: r.ack,
    })
    .await
}

async fn promote(
    State(s): AppState,
    h: HeaderMap,
    Path(n): Path<String>,
    b: Body,
) -> Result<Response, ApiError> {
    command(s, h, n, b, Role::Admin, |r| Command::Promote {
        reason: r.reason,
        full: r.full,
    })
    .await
}

async fn rollback(
    State(s): AppState,
    h: HeaderMap,
    Path(n): Path<String>,
    b: Body,
) -> Result<Response, ApiError> {
    command(s, h, n, b, Role::Operator, |r| Command::Rollback {
        reason: r.reason,
    })
    .await
}

async fn list_workflows(State(shared): AppState, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Role::Read)?;
    let now = shared.clock.now();
    let engine = shared.engine();
    let guarded: Vec<_> = (0..engine.guards.len())
        .map(|i| engine.guard_status(i, now))
        .collect();
    Ok(Json(json!({"guarded_workflows": guarded})).into_response())
}

async fn resume_workflow(
    State(shared): AppState,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authorize(&shared, &headers, Role::Operator)?;
    let req: ReasonBody = body.json()?;
    let receipt = shared
        .ask(|reply| Input::ResumeWorkflow {
            workflow: name,
            actor: caller.name,
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
    State(shared): AppState,
    headers: HeaderMap,
    query: Result<Query<ReceiptQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Role::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let since = match q.since.as_deref() {
        None => None,
        Some(s) => Some(crate::clock::parse_rfc3339(s).ok_or_else(|| {
            ApiError::bad_request(format!("`since` {s:?} is not an RFC 3339 time"))
        })?),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let receipts = shared
        .store
        .receipts(q.rollout.as_deref(), since, limit)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({"receipts": receipts})).into_response())
}

async fn get_receipt(
    State(shared): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Role::Read)?;
    match shared
        .store
        .receipt(&id)
        .map_err(|e| ApiError::internal(e.to_string()))?
    {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError::not_found(format!("no receipt `{id}`"))),
    }
}

async fn reload(State(shared): AppState, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = authorize(&shared, &headers, Role::Admin)?;
    let receipts = shared
        .ask(|reply| Input::Reload {
            actor: caller.name,
            reply: Some(reply),
        })
        .await?;
    let hash = shared.plan.load().hash.clone();
    Ok(Json(json!({"reloaded": true, "config_hash": hash, "receipts": receipts})).into_response())
}

async fn metrics(State(shared): AppState) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(shared): AppState) -> Response {
    if shared.is_ready() {
        Json(json!({"status": "ready", "config_hash": shared.plan.load().hash})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting or shutting down",
        )
        .into_response()
    }
}

//! The bare baseline: axum 0.8 + serde doing the JSON work stagegate's hot paths do — parse
//! the request, check a bearer token, look up the workflow among N, hash the subject into a
//! bucket, write the same response shape — and nothing else. Prints `listening on ADDR`.
//!
//! `baseline [ADDR] [ROLLOUTS]` (default `127.0.0.1:0`, 1000).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};

struct Fleet {
    token: String,
    /// workflow name → candidate share in basis points.
    workflows: HashMap<String, u32>,
}

#[derive(Deserialize)]
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

#[derive(Deserialize)]
struct OfrepRequest<'a> {
    #[serde(borrow)]
    context: OfrepContext<'a>,
}

#[derive(Deserialize)]
struct OfrepContext<'a> {
    #[serde(borrow, rename = "targetingKey")]
    targeting_key: Cow<'a, str>,
    #[serde(borrow, flatten)]
    attributes: HashMap<Cow<'a, str>, serde_json::Value>,
}

#[derive(Serialize)]
struct OfrepResponse<'a> {
    key: &'a str,
    value: &'a str,
    reason: &'static str,
    variant: &'a str,
    metadata: OfrepMetadata<'a>,
}

#[derive(Serialize)]
struct OfrepMetadata<'a> {
    mode: &'static str,
    segment: &'a str,
    rollout: &'a str,
}

#[derive(Deserialize)]
#[allow(
    dead_code,
    reason = "parsed like stagegate parses it, then only counted"
)]
struct Event<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    workflow: Cow<'a, str>,
    #[serde(borrow)]
    version: Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    attributes: HashMap<Cow<'a, str>, Cow<'a, str>>,
    quality: Option<f64>,
    latency_ms: Option<f64>,
    cost_usd: Option<f64>,
    fallback: Option<bool>,
}

fn authorized(fleet: &Fleet, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == fleet.token)
}

fn bucket(workflow: &str, subject: &str) -> u32 {
    let key = format!("{workflow}:{subject}");
    murmur3::murmur3_32(&mut key.as_bytes(), 0).unwrap_or(0) % 10_000
}

fn json(status: StatusCode, bytes: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

async fn assign(State(fleet): State<Arc<Fleet>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&fleet, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(req) = serde_json::from_slice::<AssignRequest<'_>>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(share) = fleet.workflows.get(req.workflow.as_ref()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let segment = if req.attributes.contains_key("team") {
        "internal"
    } else {
        "everyone"
    };
    let split = bucket(&req.workflow, req.subject.as_deref().unwrap_or("")) < *share;
    let out = AssignResponse {
        workflow: &req.workflow,
        version: if split { "b" } else { "a" },
        mode: "full",
        segment: Some(segment),
        rollout: Some("r"),
        stage: Some("s1"),
        reason: "in the candidate's share of the segment",
    };
    json(StatusCode::OK, serde_json::to_vec(&out).unwrap_or_default())
}

async fn ofrep(
    State(fleet): State<Arc<Fleet>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&fleet, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(req) = serde_json::from_slice::<OfrepRequest<'_>>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(share) = fleet.workflows.get(&key) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let split = bucket(&key, &req.context.targeting_key) < *share;
    let version = if split { "b" } else { "a" };
    let out = OfrepResponse {
        key: &key,
        value: version,
        reason: "SPLIT",
        variant: version,
        metadata: OfrepMetadata {
            mode: "full",
            segment: if req.context.attributes.contains_key("team") {
                "internal"
            } else {
                "everyone"
            },
            rollout: "r",
        },
    };
    json(StatusCode::OK, serde_json::to_vec(&out).unwrap_or_default())
}

async fn events(State(fleet): State<Arc<Fleet>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&fleet, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(batch) = serde_json::from_slice::<Vec<Event<'_>>>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let known = batch
        .iter()
        .filter(|e| fleet.workflows.contains_key(e.workflow.as_ref()))
        .count();
    let body = format!(r#"{{"accepted":{known},"duplicates":0,"rejected":[]}}"#);
    json(StatusCode::OK, body.into_bytes())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let rollouts: usize = args.next().map_or(Ok(1000), |n| n.parse())?;
    let fleet = Arc::new(Fleet {
        token: std::env::var("BENCH_INGEST_TOKEN").unwrap_or_else(|_| "ingest".into()),
        workflows: (0..rollouts).map(|i| (format!("w{i}"), 500)).collect(),
    });
    let app = Router::new()
        .route("/v1/assign", post(assign))
        .route("/v1/events", post(events))
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep))
        .with_state(fleet);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

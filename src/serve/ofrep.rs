//! OpenFeature Remote Evaluation Protocol (OFREP 0.3) endpoints over the same assignment.
//!
//! A workflow is a flag: `variant` and `value` are the version, `reason` is `SPLIT` when a
//! bucket decided, `TARGETING_MATCH` when a rule did (no segment matched, rolled back, no
//! subject), `STATIC` without a rollout; `metadata` carries mode, segment, rollout and stage.
//! `context.targetingKey` is the subject; the other scalar context fields are attributes.
//! The bulk endpoint answers with a strong `ETag` over its body and honours `If-None-Match`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::core::assign::{Assignment, Reason};
use crate::serve::controller::Shared;
use crate::serve::http::{ApiError, Body};

/// The evaluation context: the subject and the attributes.
struct Context {
    targeting_key: String,
    attributes: HashMap<String, String>,
}

/// Why a request carries no usable context.
enum ContextError {
    Parse(String),
    TargetingKeyMissing,
    Invalid(String),
}

impl ContextError {
    fn code(&self) -> &'static str {
        match self {
            ContextError::Parse(_) => "PARSE_ERROR",
            ContextError::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ContextError::Invalid(_) => "INVALID_CONTEXT",
        }
    }

    fn details(&self) -> String {
        match self {
            ContextError::Parse(m) | ContextError::Invalid(m) => m.clone(),
            ContextError::TargetingKeyMissing => "context.targetingKey is required".into(),
        }
    }
}

fn context(body: &Body) -> Result<Context, ContextError> {
    let value: Value =
        serde_json::from_slice(&body.0).map_err(|e| ContextError::Parse(e.to_string()))?;
    let Some(ctx) = value.get("context") else {
        return Err(ContextError::Invalid(
            "the body needs a `context` object".into(),
        ));
    };
    let Some(ctx) = ctx.as_object() else {
        return Err(ContextError::Invalid("`context` must be an object".into()));
    };
    let targeting_key = match ctx.get("targetingKey") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(ContextError::TargetingKeyMissing),
    };
    let attributes: HashMap<String, String> = ctx
        .iter()
        .filter(|(k, _)| k.as_str() != "targetingKey")
        .filter_map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.clone(), v))
        })
        .collect();
    crate::core::event::check_identity(
        Some(&targeting_key),
        attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map_err(ContextError::Invalid)?;
    Ok(Context {
        targeting_key,
        attributes,
    })
}

/// The 400 answer for an unusable context; single-flag failures also name the flag.
fn context_failure(key: Option<&str>, e: &ContextError) -> Response {
    let mut failure = json!({"errorCode": e.code(), "errorDetails": e.details()});
    if let Some(key) = key {
        failure["key"] = json!(key);
    }
    (StatusCode::BAD_REQUEST, Json(failure)).into_response()
}

fn evaluation(a: &Assignment<'_>) -> Value {
    let reason = match a.reason {
        Reason::Split | Reason::Baseline => "SPLIT",
        Reason::Stable => "STATIC",
        Reason::Fallback => "FALLBACK",
        Reason::NoSegment | Reason::RolledBack | Reason::NoSubject => "TARGETING_MATCH",
    };
    let mut metadata = Map::new();
    metadata.insert("mode".into(), json!(a.mode.name()));
    for (key, value) in [
        ("segment", a.segment),
        ("rollout", a.rollout),
        ("stage", a.stage),
    ] {
        if let Some(v) = value {
            metadata.insert(key.into(), json!(v));
        }
    }
    json!({"key": a.workflow, "value": a.version, "variant": a.version, "reason": reason, "metadata": metadata})
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub async fn evaluate_flag(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let ctx = match context(&body) {
        Ok(ctx) => ctx,
        Err(e) => return Ok(context_failure(Some(&key), &e)),
    };
    let snapshot = shared.snapshot.load();
    let Some(a) = snapshot
        .routing
        .assign(&key, Some(&ctx.targeting_key), |k| {
            ctx.attributes.get(k).map(String::as_str)
        })
    else {
        let missing = json!({"key": key, "errorCode": "FLAG_NOT_FOUND", "errorDetails": format!("no workflow `{key}`")});
        return Ok((StatusCode::NOT_FOUND, Json(missing)).into_response());
    };
    snapshot.counters[a.workflow_index][a.version_index].inc(a.mode);
    Ok(Json(evaluation(&a)).into_response())
}

/// `POST /ofrep/v1/evaluate/flags`: every workflow for one context.
pub async fn evaluate_bulk(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ctx = match context(&body) {
        Ok(ctx) => ctx,
        Err(e) => return Ok(context_failure(None, &e)),
    };
    let snapshot = shared.snapshot.load();
    let flags: Vec<Value> = snapshot
        .routing
        .workflows
        .iter()
        .filter_map(|w| {
            snapshot
                .routing
                .assign(&w.name, Some(&ctx.targeting_key), |k| {
                    ctx.attributes.get(k).map(String::as_str)
                })
        })
        .map(|a| evaluation(&a))
        .collect();
    let body = serde_json::to_vec(&json!({"flags": flags}))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let digest = Sha256::digest(&body);
    let etag = format!(
        "\"{}\"",
        digest
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, "application/json".to_string()),
        ],
        body,
    )
        .into_response())
}

//! OpenFeature Remote Evaluation Protocol (OFREP 0.3) endpoints over the same assignment.
//!
//! A workflow is a flag: `variant` and `value` are the version, `reason` is `SPLIT` when a
//! bucket decided, `TARGETING_MATCH` when a rule did (no segment matched, rolled back, no
//! subject), `STATIC` without a rollout; `metadata` carries mode, segment, rollout and stage.
//! `context.targetingKey` is the subject; the other scalar context fields are attributes.
//! The bulk endpoint answers with a strong `ETag` over its body and honours `If-None-Match`.

use std::borrow::Cow;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::core::assign::{Assignment, Reason};
use crate::core::event::Scalar;
use crate::serve::controller::Shared;
use crate::serve::http::{Admitted, ApiError, Attributes, Body, Text, access};

/// The evaluation context: the subject and the attributes, borrowed from the request body.
struct Context<'a> {
    targeting_key: Cow<'a, str>,
    attributes: Attributes<'a>,
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

/// The request body, parsed straight into borrowed fields (no `Value` tree).
#[derive(Deserialize)]
struct EvaluationRequest<'a> {
    #[serde(borrow, default)]
    context: Option<ContextField<'a>>,
}

/// `context`: an object of scalars, or something else (refused as not an object).
enum ContextField<'a> {
    /// The fields in the order sent.
    Object(Vec<(Cow<'a, str>, Scalar<'a>)>),
    NotObject,
}

impl<'de: 'a, 'a> Deserialize<'de> for ContextField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ContextField<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
                while let Some((Text(k), v)) = map.next_entry::<Text<'de>, Scalar<'de>>()? {
                    out.push((k, v));
                }
                Ok(ContextField::Object(out))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ContextField::NotObject)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ContextField::NotObject)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

fn context(body: &Body) -> Result<Context<'_>, ContextError> {
    let request: EvaluationRequest<'_> =
        serde_json::from_slice(&body.0).map_err(|e| ContextError::Parse(e.to_string()))?;
    let fields = match request.context {
        None => {
            return Err(ContextError::Invalid(
                "the body needs a `context` object".into(),
            ));
        }
        Some(ContextField::NotObject) => {
            return Err(ContextError::Invalid("`context` must be an object".into()));
        }
        Some(ContextField::Object(fields)) => fields,
    };
    let mut targeting_key = None;
    let mut attributes = Attributes(Vec::with_capacity(fields.len()));
    for (k, v) in fields {
        match (k.as_ref(), v) {
            ("targetingKey", Scalar::Text(t)) => targeting_key = Some(t).filter(|t| !t.is_empty()),
            ("targetingKey", _) => targeting_key = None,
            (_, Scalar::Text(t)) => attributes.0.push((k, t)),
            (_, Scalar::Written(t)) => attributes.0.push((k, Cow::Owned(t))),
            (_, Scalar::Other) => {}
        }
    }
    let targeting_key = targeting_key.ok_or(ContextError::TargetingKeyMissing)?;
    crate::core::event::check_identity(Some(&targeting_key), attributes.pairs())
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

/// One flag's evaluation as OFREP answers it.
#[derive(Serialize)]
struct Evaluation<'a> {
    key: &'a str,
    value: &'a str,
    variant: &'a str,
    reason: &'static str,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
}

fn evaluation<'a>(a: &Assignment<'a>) -> Evaluation<'a> {
    let reason = match a.reason {
        Reason::Split | Reason::Baseline => "SPLIT",
        Reason::Stable => "STATIC",
        Reason::Fallback => "FALLBACK",
        Reason::NoSegment | Reason::RolledBack | Reason::NoSubject => "TARGETING_MATCH",
    };
    Evaluation {
        key: a.workflow,
        value: a.version,
        variant: a.version,
        reason,
        metadata: Metadata {
            mode: a.mode.name(),
            segment: a.segment,
            rollout: a.rollout,
            stage: a.stage,
        },
    }
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub async fn evaluate_flag(
    _admitted: Admitted<access::Assign>,
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
        .assign(&key, Some(&ctx.targeting_key), |k| ctx.attributes.get(k))
    else {
        let missing = json!({"key": key, "errorCode": "FLAG_NOT_FOUND", "errorDetails": format!("no workflow `{key}`")});
        return Ok((StatusCode::NOT_FOUND, Json(missing)).into_response());
    };
    snapshot
        .assignments
        .count(a.workflow_index, a.version_index, a.mode);
    let bytes =
        serde_json::to_vec(&evaluation(&a)).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response())
}

/// `POST /ofrep/v1/evaluate/flags`: every workflow for one context.
pub async fn evaluate_bulk(
    _admitted: Admitted<access::Assign>,
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ctx = match context(&body) {
        Ok(ctx) => ctx,
        Err(e) => return Ok(context_failure(None, &e)),
    };
    let snapshot = shared.snapshot.load();
    let flags: Vec<Evaluation<'_>> = snapshot
        .routing
        .workflows()
        .filter_map(|w| {
            snapshot
                .routing
                .assign(w.name(), Some(&ctx.targeting_key), |k| {
                    ctx.attributes.get(k)
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

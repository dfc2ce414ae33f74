//! The affected-list endpoints: `GET /v1/rollouts/{name}/affected` lists the tasks a
//! containment's exposure window served (NDJSON, or CSV by `Accept: text/csv`), and
//! `POST /v1/rollouts/{name}/affected/{event_id}` tags one `safe`, `wrong` or `unclear`.

use std::fmt::Write;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::core::affected::{AffectedItem, Tag, TagRecord};
use crate::core::clock::rfc3339;
use crate::serve::controller::{Shared, affected_list};
use crate::serve::failure::InputError;
use crate::serve::http::{Admitted, ApiError, Body, access, blocking};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffectedQuery {
    receipt: Option<String>,
}

pub async fn list(
    _admitted: Admitted<access::Operator>,
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<AffectedQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = Arc::clone(&shared);
    let (receipt, items) = blocking(move || affected_list(&s, &name, q.receipt.as_deref())).await?;
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    let (body, kind) = if csv {
        (render_csv(&items), "text/csv; charset=utf-8")
    } else {
        let mut out = String::new();
        for item in &items {
            let _ = writeln!(out, "{}", serde_json::to_string(item).unwrap_or_default());
        }
        (out, "application/x-ndjson")
    };
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if let Ok(v) = HeaderValue::from_str(&receipt.id) {
        response.headers_mut().insert("x-stagegate-receipt", v);
    }
    Ok(response)
}

/// One CSV row per item, RFC 4180 quoting.
fn render_csv(items: &[AffectedItem]) -> String {
    let field = |v: Option<String>| {
        let v = v.unwrap_or_default();
        if v.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v
        }
    };
    let mut out = String::from(
        "event_id,subject,segment,ts,quality,latency_ms,cost_usd,fallback,review,tag,note\n",
    );
    for i in items {
        let row = [
            Some(i.event_id.clone()),
            i.subject.clone(),
            i.segment.clone(),
            i.ts.clone(),
            i.quality.map(|x| x.to_string()),
            i.latency_ms.map(|x| x.to_string()),
            i.cost_usd.map(|x| x.to_string()),
            i.fallback.map(|x| x.to_string()),
            i.review.clone(),
            i.tag.map(|t| t.name().to_string()),
            i.note.clone(),
        ]
        .map(field);
        let _ = writeln!(out, "{}", row.join(","));
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagBody {
    tag: String,
    #[serde(default)]
    note: String,
    receipt: Option<String>,
}

/// The longest note on a tag, in bytes.
pub const MAX_NOTE_BYTES: usize = 2_000;

pub async fn tag(
    Admitted { caller, .. }: Admitted<access::Operator>,
    State(shared): State<Arc<Shared>>,
    Path((name, event_id)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: TagBody = body.json()?;
    let tag = Tag::parse(&req.tag).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown tag `{}`; expected safe, wrong or unclear",
            req.tag
        ))
    })?;
    if req.note.len() > MAX_NOTE_BYTES {
        return Err(ApiError::bad_request(format!(
            "`note` is {} bytes; at most {MAX_NOTE_BYTES} are accepted",
            req.note.len()
        )));
    }
    let s = Arc::clone(&shared);
    let now = shared.clock.now();
    let item = blocking(move || {
        let (receipt, items) = affected_list(&s, &name, req.receipt.as_deref())?;
        let Some(mut item) = items.into_iter().find(|i| i.event_id == event_id) else {
            return Err(InputError::NoContainment(format!(
                "event `{event_id}` is not an affected item of {}",
                receipt.id
            )));
        };
        let record = TagRecord {
            tag,
            note: req.note,
            by: caller.name.to_string(),
            at: rfc3339(now),
        };
        s.store
            .put_affected_tag(&name, &receipt.id, &event_id, &record)?;
        // Refresh the counts the metric shows.
        let _ = affected_list(&s, &name, Some(&receipt.id));
        item.tag = Some(record.tag);
        item.note = Some(record.note).filter(|n| !n.is_empty());
        Ok(item)
    })
    .await?;
    Ok(Json(item).into_response())
}

//! What every HTTP handler shares: the one JSON error shape (`ApiError`), the body extractor
//! whose rejections use it (`Body`), and authorization from the headers alone (`authorize`).

use std::borrow::Cow;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::plan::Role;
use crate::serve::controller::Shared;
use crate::serve::failure::InputError;
use crate::serve::replica::ForwardedError;

/// Longest accepted operator `reason`, in bytes: receipts carry it, and pages of receipts must
/// stay small.
pub const MAX_REASON_BYTES: usize = 2_000;

/// An API failure.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    pub details: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: Cow::Borrowed(code),
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
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
        ApiError::from(e.reply())
    }
}

impl From<ForwardedError> for ApiError {
    fn from(reply: ForwardedError) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: Cow::Owned(reply.code),
            message: reply.message,
            details: reply.details,
        }
    }
}

/// Runs a blocking store call off the async threads (a store's client may not block on them).
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, InputError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::from(InputError::ShuttingDown))?
        .map_err(ApiError::from)
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

/// Who is calling (put in the request's extensions by the admission middleware).
#[derive(Clone)]
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
        .and_then(bearer_token)
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

/// The token of an `Authorization: Bearer …` header; the scheme is case-insensitive (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

//! What every HTTP handler shares: the one JSON error shape (`ApiError`), the body extractor
//! whose rejections use it (`Body`), and admission (`Admitted`): authorization from the headers
//! alone and the in-flight body budget, before the body is read.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::plan::Role;
use crate::serve::controller::{BodyReservation, Shared, Tokens};
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

/// Who is calling: the admitting token's name (or `anonymous`), shared, not copied.
#[derive(Clone)]
pub struct Caller {
    pub name: Arc<str>,
}

/// An endpoint's access class, named by its handler's [`Admitted`] argument.
pub trait Access: Send + Sync + 'static {
    /// The role a token needs; `None` when any caller may call.
    fn needs(tokens: &Tokens) -> Option<Role>;
}

/// The access classes of the API's endpoints.
pub mod access {
    use super::{Access, Role, Tokens};

    /// Assignment and OFREP: an ingest token, unless `auth.open_assign`.
    pub struct Assign;

    impl Access for Assign {
        fn needs(tokens: &Tokens) -> Option<Role> {
            (!tokens.open_assign).then_some(Role::Ingest)
        }
    }

    macro_rules! role_access {
        ($($(#[$doc:meta])* $name:ident;)*) => {$(
            $(#[$doc])*
            pub struct $name;

            impl Access for $name {
                fn needs(_: &Tokens) -> Option<Role> {
                    Some(Role::$name)
                }
            }
        )*};
    }

    role_access! {
        /// Sending events.
        Ingest;
        /// Reading rollouts, workflows and receipts.
        Read;
        /// Pausing, resuming, rolling back, tagging affected work.
        Operator;
        /// Promoting and reloading the config.
        Admin;
    }
}

/// A request admitted to an endpoint of access class `A`: authorized from the headers alone,
/// and, for a `POST`, its declared body size reserved from the in-flight body budget
/// (`server.max_inflight_body_bytes`) until the handler returns.
///
/// Handlers take it as their first extractor, so a request without a valid token, or one the
/// budget cannot hold, is refused before any body byte is read. Being an extractor rather than
/// a router layer, it costs a request no boxed service or future of its own.
pub struct Admitted<A> {
    pub caller: Caller,
    _reserved: Option<BodyReservation>,
    _access: PhantomData<fn() -> A>,
}

impl<A: Access> FromRequestParts<Arc<Shared>> for Admitted<A> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        let caller = {
            let tokens = shared.tokens.load();
            match A::needs(&tokens) {
                None => Caller {
                    name: Arc::clone(&tokens.anonymous),
                },
                Some(role) => {
                    authorize(&tokens, &parts.headers, role).map_err(IntoResponse::into_response)?
                }
            }
        };
        let reserved = if parts.method == Method::POST {
            Some(reserve_body(shared, &parts.headers).map_err(IntoResponse::into_response)?)
        } else {
            None
        };
        Ok(Admitted {
            caller,
            _reserved: reserved,
            _access: PhantomData,
        })
    }
}

/// Why a request's body does not fit.
enum BodyRefusal {
    /// Declared larger than `server.max_body_bytes` (the limit): 413.
    TooLarge(usize),
    /// The in-flight budget is spent: 503 with `Retry-After`.
    Busy,
}

impl IntoResponse for BodyRefusal {
    fn into_response(self) -> Response {
        match self {
            BodyRefusal::TooLarge(limit) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than server.max_body_bytes ({limit})"),
            )
            .into_response(),
            BodyRefusal::Busy => {
                let mut response = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many request bytes in flight (server.max_inflight_body_bytes); retry shortly",
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
        }
    }
}

/// Reserves a request's declared body size (or the most a body may be) from the in-flight
/// budget.
fn reserve_body(shared: &Shared, headers: &HeaderMap) -> Result<BodyReservation, BodyRefusal> {
    let limit = shared.plan.load().server.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyRefusal::TooLarge(limit));
    }
    shared
        .body_budget
        .reserve(declared.unwrap_or(limit))
        .ok_or(BodyRefusal::Busy)
}

/// Checks the `Authorization: Bearer` (or `X-API-Key`) token for `needed`.
fn authorize(tokens: &Tokens, headers: &HeaderMap, needed: Role) -> Result<Caller, ApiError> {
    let Some(list) = &tokens.tokens else {
        return Ok(Caller {
            name: Arc::clone(&tokens.anonymous),
        });
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let Some(presented) = presented.map(str::trim) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token",
        ));
    };
    let Some(token) = list
        .iter()
        .find(|t| constant_time_eq(t.secret.as_bytes(), presented.as_bytes()))
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
        name: Arc::clone(&token.name),
    })
}

/// The token of an `Authorization: Bearer …` header, untrimmed; the scheme is case-insensitive
/// (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request's attributes as sent: borrowed key–value pairs, looked up by scanning. A request
/// carries a handful (at most `core::event::MAX_ATTRIBUTES` pass `check_identity`), so a scan
/// beats hashing every key on the way in; a key sent twice means its last value, as in a map.
#[derive(Debug, Default)]
pub struct Attributes<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Attributes<'a> {
    /// The last value sent for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Every pair, in the order sent.
    pub fn pairs(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
}

/// A JSON string, borrowed from the body unless it has escapes (serde's own `Cow` always copies).
#[derive(Deserialize)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Attributes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Pairs<'a> {
            type Value = Attributes<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of string attributes")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
                while let Some((Text(k), Text(v))) = map.next_entry()? {
                    pairs.push((k, v));
                }
                Ok(Attributes(pairs))
            }
        }
        d.deserialize_map(Pairs(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_keep_the_last_value_of_a_repeated_key_and_borrow_plain_text() {
        let body = r#"{"tier":"free","team":"ops","tier":"enterprise","note":"a\"b"}"#;
        let a: Attributes<'_> = serde_json::from_str(body).expect("an object of strings");
        assert_eq!(a.get("tier"), Some("enterprise"));
        assert_eq!(a.get("team"), Some("ops"));
        assert_eq!(a.get("note"), Some("a\"b"));
        assert_eq!(a.get("missing"), None);
        assert!(
            matches!(a.0[1].1, Cow::Borrowed(_)),
            "unescaped text is borrowed"
        );
        assert_eq!(a.pairs().len(), 4);
        let refused = serde_json::from_str::<Attributes<'_>>(r#"{"tier":3}"#);
        assert!(refused.is_err(), "attribute values are strings");
        let refused = serde_json::from_str::<Attributes<'_>>(r#"["tier"]"#);
        assert!(refused.is_err(), "attributes are an object");
    }
}

//! `GET /ui`: the operator's window, served by the same binary — rollouts, one rollout's
//! evidence, the queue of what waits for a person, and receipts — with sign-in by token into a
//! session cookie and CSRF-checked forms whose actions go through the same controller path
//! (and write the same receipts) as the API.
//!
//! Every page is rendered on the server (`pages`), so reading works without JavaScript; a small
//! inline script refreshes the page's `<main>`. Responses carry `Cache-Control: no-store` and a
//! strict Content-Security-Policy; tokens are only ever read from a POST body.

pub mod history;
pub mod pages;
pub mod session;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;

use crate::core::rollout::Command;
use crate::plan::Role;
use crate::serve::controller::{Input, Shared, affected_list};
use crate::serve::failure::InputError;
use crate::serve::ui::session::{COOKIE, LOGIN_COOKIE, Session};

type AppState = State<Arc<Shared>>;

/// The UI's routes (no bearer token: the session cookie is the credential).
pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ui", get(rollouts_page))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/queue", get(queue_page))
        .route("/ui/rollouts/{name}", get(rollout_page))
        .route("/ui/rollouts/{name}/{action}", post(act))
        .route("/ui/receipts", get(receipts_page))
        .route("/ui/receipts/{id}", get(receipt_page))
}

/// An HTML response with the UI's security headers.
fn page(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, markup.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    r
}

fn secure(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}

fn cookie_header(headers: &HeaderMap) -> &str {
    headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The caller's session: the cookie's, or on an open server an anonymous admin.
fn session(shared: &Shared, headers: &HeaderMap) -> Option<Session> {
    if shared.tokens.load().tokens.is_none() {
        return Some(Session::anonymous(&shared.ui.open_csrf));
    }
    let id = session::cookie(cookie_header(headers), COOKIE)?;
    shared.ui.sessions.get(id, shared.clock.now())
}

/// Where a request without a session goes.
fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

async fn login_page(State(shared): AppState) -> Response {
    if shared.tokens.load().tokens.is_none() {
        return Redirect::to("/ui").into_response();
    }
    login_form(None)
}

/// The sign-in form with a fresh CSRF cookie of its own.
fn login_form(error: Option<&str>) -> Response {
    let csrf = session::random_token();
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut r = page(status, pages::login(&csrf, error));
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(LOGIN_COOKIE, &csrf, 600)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

async fn login(State(shared): AppState, headers: HeaderMap, form: Form<LoginForm>) -> Response {
    let expected = session::cookie(cookie_header(&headers), LOGIN_COOKIE).unwrap_or("");
    if !session::same_secret(expected, &form.csrf) {
        return page(
            StatusCode::FORBIDDEN,
            pages::message(
                None,
                "Refused",
                "The sign-in form expired or did not come from this site; reload it.",
            ),
        );
    }
    let tokens = shared.tokens.load();
    let found = tokens
        .tokens
        .iter()
        .flatten()
        .find(|t| session::same_secret(&t.secret, form.token.trim()));
    let Some(token) = found else {
        tracing::warn!("ui sign-in refused: unknown token");
        return login_form(Some("That token is not valid here."));
    };
    if token.role == Role::Ingest {
        return login_form(Some(
            "An ingest token reports events; sign in with a viewer, operator or admin token.",
        ));
    }
    let Some((id, s)) = shared
        .ui
        .sessions
        .open(&token.name, token.role, shared.clock.now())
    else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::message(None, "Error", "no random bytes for a session"),
        );
    };
    tracing::info!(actor = %s.name, role = pages::role_name(s.role), "ui sign-in");
    let mut r = Redirect::to("/ui").into_response();
    let h = r.headers_mut();
    for cookie in [
        session::set_cookie(COOKIE, &id, session::SESSION_TTL_MS / 1000),
        session::set_cookie(LOGIN_COOKIE, "", 0),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.append(header::SET_COOKIE, v);
        }
    }
    secure(h);
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(shared): AppState, headers: HeaderMap, form: Form<CsrfForm>) -> Response {
    if let Some(s) = session(&shared, &headers) {
        if !session::same_secret(&s.csrf, &form.csrf) {
            return csrf_refused(&s);
        }
        if let Some(id) = session::cookie(cookie_header(&headers), COOKIE) {
            shared.ui.sessions.close(id);
        }
    }
    let mut r = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(COOKIE, "", 0)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn csrf_refused(s: &Session) -> Response {
    page(
        StatusCode::FORBIDDEN,
        pages::message(
            Some(s),
            "Refused",
            "This form has no valid CSRF token: reload the page and try again.",
        ),
    )
}

async fn rollouts_page(State(shared): AppState, headers: HeaderMap) -> Response {
    let Some(s) = session(&shared, &headers) else {
        return to_login();
    };
    let now = shared.clock.now();
    let all: Vec<_> = {
        let engine = shared.engine();
        (0..engine.rollouts.len())
            .map(|i| engine.status(i, now))
            .collect()
    };
    page(StatusCode::OK, pages::rollouts(&s, &all))
}

#[derive(Deserialize, Default)]
struct Done {
    done: Option<String>,
}

async fn rollout_page(
    State(shared): AppState,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    let Some(s) = session(&shared, &headers) else {
        return to_login();
    };
    let now = shared.clock.now();
    let (status, limits) = {
        let engine = shared.engine();
        let Some(i) = engine.rollout_index(&name) else {
            return page(
                StatusCode::NOT_FOUND,
                pages::message(Some(&s), "Not found", &format!("no rollout named `{name}`")),
            );
        };
        let plan = engine.rollout_plan(i);
        let limits: Vec<(String, Vec<f64>)> = plan
            .gates
            .iter()
            .map(|g| {
                let absolute = g
                    .checks
                    .iter()
                    .filter(|c| !c.is_relative())
                    .map(|c| c.threshold())
                    .collect();
                (g.name.clone(), absolute)
            })
            .collect();
        (engine.status(i, now), limits)
    };
    let lines = status
        .gates
        .iter()
        .map(|v| {
            (
                v.gate.clone(),
                v.segment.clone(),
                shared.ui.history.line(&name, &v.gate, &v.segment),
            )
        })
        .collect();
    let store = Arc::clone(&shared.store);
    let rollout = name.clone();
    let receipts = tokio::task::spawn_blocking(move || store.receipts(Some(&rollout), None, 30))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let flash = done
        .done
        .map(|id| format!("Done: recorded as receipt {id}."));
    let view = pages::RolloutPage {
        status: &status,
        limits,
        lines,
        receipts: &receipts,
        flash,
    };
    page(StatusCode::OK, pages::rollout(&s, &view))
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    ack: Option<String>,
}

/// An action from a form: the session's role and CSRF token checked, then the same
/// controller input (and receipt) as the API's.
async fn act(
    State(shared): AppState,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    form: Form<ActionForm>,
) -> Response {
    let Some(s) = session(&shared, &headers) else {
        return page(
            StatusCode::FORBIDDEN,
            pages::message(None, "Refused", "Sign in first."),
        );
    };
    if !session::same_secret(&s.csrf, &form.csrf) {
        tracing::warn!(actor = %s.name, "ui action refused: no valid CSRF token");
        return csrf_refused(&s);
    }
    let needs = if action == "promote" {
        Role::Admin
    } else {
        Role::Operator
    };
    if s.role < needs {
        return page(
            StatusCode::FORBIDDEN,
            pages::message(
                Some(&s),
                "Refused",
                &format!(
                    "`{action}` needs the {} role; you are signed in as {}.",
                    pages::role_name(needs),
                    pages::role_name(s.role)
                ),
            ),
        );
    }
    let reason = form.reason.trim().to_string();
    if reason.len() > crate::serve::http::MAX_REASON_BYTES {
        return page(
            StatusCode::BAD_REQUEST,
            pages::message(Some(&s), "Refused", "The reason is too long."),
        );
    }
    let command = match action.as_str() {
        "pause" => Command::Pause { reason },
        "resume" => Command::Resume {
            reason,
            ack: form.ack.is_some(),
        },
        "rollback" => Command::Rollback { reason },
        "promote" => Command::Promote {
            reason,
            full: false,
        },
        _ => {
            return page(
                StatusCode::NOT_FOUND,
                pages::message(Some(&s), "Not found", "no such action"),
            );
        }
    };
    let result = shared
        .ask(|reply| Input::Command {
            rollout: name.clone(),
            actor: s.name.clone(),
            command,
            idempotency_key: None,
            reply,
        })
        .await;
    match result {
        Ok(receipt) => {
            Redirect::to(&format!("/ui/rollouts/{name}?done={}", receipt.id)).into_response()
        }
        Err(e) => refused(&s, e),
    }
}

fn refused(s: &Session, e: InputError) -> Response {
    let reply = e.reply();
    let mut text = reply.message.clone();
    if !reply.details.is_empty() {
        text.push_str(": ");
        text.push_str(&reply.details.join("; "));
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    page(status, pages::message(Some(s), "Refused", &text))
}

async fn queue_page(State(shared): AppState, headers: HeaderMap) -> Response {
    let Some(s) = session(&shared, &headers) else {
        return to_login();
    };
    let now = shared.clock.now();
    let plan = shared.plan.load_full();
    let all: Vec<_> = {
        let engine = shared.engine();
        (0..engine.rollouts.len())
            .map(|i| engine.status(i, now))
            .collect()
    };
    let mut unclear: HashMap<String, usize> = HashMap::new();
    for st in &all {
        let reviewed = plan
            .rollout(&st.name)
            .is_some_and(|r| r.lane.reenable.affected_reviewed);
        if reviewed && st.reenable.is_some() {
            let sh = Arc::clone(&shared);
            let name = st.name.clone();
            let count = tokio::task::spawn_blocking(move || {
                affected_list(&sh, &name, None).map(|(_, items)| {
                    items
                        .iter()
                        .filter(|i| {
                            !matches!(
                                i.tag,
                                Some(
                                    crate::core::affected::Tag::Safe
                                        | crate::core::affected::Tag::Wrong
                                )
                            )
                        })
                        .count()
                })
            })
            .await
            .ok()
            .and_then(Result::ok);
            if let Some(n) = count {
                unclear.insert(st.name.clone(), n);
            }
        }
    }
    let mut items = Vec::new();
    for st in &all {
        let state = st.view.state.name();
        let waiting = st.waiting.clone().unwrap_or_default();
        let (why, checklist) = if let Some(re) = &st.reenable {
            let mut list = vec![
                (
                    if re.ack_required {
                        "an acknowledgement (tick it when resuming)".to_string()
                    } else {
                        "no acknowledgement needed".to_string()
                    },
                    !re.ack_required,
                ),
                (
                    format!("cooldown ends {}", re.cooldown_ends),
                    !re.missing.iter().any(|m| m.contains("cooldown")),
                ),
                (
                    format!(
                        "healthy read-only tasks {}/{}",
                        re.healthy_read_only, re.healthy_read_only_required
                    ),
                    re.healthy_read_only >= re.healthy_read_only_required,
                ),
            ];
            if let Some(n) = unclear.get(&st.name) {
                list.push((
                    format!("affected items still untagged or unclear: {n}"),
                    *n == 0,
                ));
            }
            (
                format!(
                    "{state} after {} since {}: resuming needs the lane's proof",
                    re.cause.name(),
                    re.since
                ),
                list,
            )
        } else if waiting.starts_with("awaiting an operator's promote") {
            (format!("Approval: {waiting}"), Vec::new())
        } else if state == "paused" {
            ("Paused by an operator".to_string(), Vec::new())
        } else {
            continue;
        };
        items.push(pages::QueueItem {
            status: st,
            why,
            checklist,
        });
    }
    page(StatusCode::OK, pages::queue(&s, &items))
}

#[derive(Deserialize, Default)]
struct ReceiptFilters {
    #[serde(default)]
    rollout: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    since: String,
}

async fn receipts_page(
    State(shared): AppState,
    headers: HeaderMap,
    Query(f): Query<ReceiptFilters>,
) -> Response {
    let Some(s) = session(&shared, &headers) else {
        return to_login();
    };
    let since = match f.since.trim() {
        "" => None,
        text => match crate::core::clock::parse_rfc3339(text) {
            Some(t) => Some(t),
            None => {
                return page(
                    StatusCode::BAD_REQUEST,
                    pages::message(Some(&s), "Bad search", "`since` is not an RFC 3339 time"),
                );
            }
        },
    };
    let store = Arc::clone(&shared.store);
    let rollout = (!f.rollout.trim().is_empty()).then(|| f.rollout.trim().to_string());
    let found =
        tokio::task::spawn_blocking(move || store.receipts(rollout.as_deref(), since, 1000))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
    let (action, actor) = (f.action.trim(), f.actor.trim());
    let mut shown: Vec<_> = found
        .into_iter()
        .filter(|r| action.is_empty() || r.action.name() == action)
        .filter(|r| {
            actor.is_empty()
                || match &r.actor {
                    crate::core::rollout::Actor::Controller => actor == "controller",
                    crate::core::rollout::Actor::Operator(n) => n == actor,
                }
        })
        .collect();
    shown.truncate(200);
    let filters = pages::Filters {
        rollout: &f.rollout,
        action: &f.action,
        actor: &f.actor,
        since: &f.since,
    };
    page(StatusCode::OK, pages::receipts(&s, &filters, &shown))
}

async fn receipt_page(
    State(shared): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(s) = session(&shared, &headers) else {
        return to_login();
    };
    let store = Arc::clone(&shared.store);
    let found = tokio::task::spawn_blocking(move || store.receipt(&id))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    match found {
        Some(r) => page(StatusCode::OK, pages::receipt(&s, &r)),
        None => page(
            StatusCode::NOT_FOUND,
            pages::message(Some(&s), "Not found", "no such receipt"),
        ),
    }
}

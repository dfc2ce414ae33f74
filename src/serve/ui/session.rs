//! Signed-in browsers: a token exchanged once (POST, never in a URL) for a random session id
//! in an `HttpOnly`, `SameSite=Strict` cookie, with a per-session CSRF token every form must
//! carry. Sessions live in memory (a restart signs everyone out) and expire after
//! [`SESSION_TTL_MS`] of inactivity.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::core::clock::Millis;
use crate::plan::Role;

/// The session cookie's name.
pub const COOKIE: &str = "stagegate_session";
/// The sign-in form's own CSRF cookie (double submit: before there is a session).
pub const LOGIN_COOKIE: &str = "stagegate_login";
/// Idle time after which a session is gone.
pub const SESSION_TTL_MS: Millis = 12 * 3_600_000;
/// Sessions at most (the oldest is dropped): sign-ins cannot grow memory without bound.
const MAX_SESSIONS: usize = 10_000;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub name: String,
    pub role: Role,
    /// The token every form of this session must send back.
    pub csrf: String,
    last_seen: Millis,
}

/// The live sessions, by id.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS generator; failing to read it is not recoverable for a security token.
    if getrandom::fill(&mut bytes).is_err() {
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Session {
    /// The caller of an `auth: { open: true }` server: everyone may do everything.
    pub fn anonymous(csrf: &str) -> Session {
        Session {
            name: "anonymous".into(),
            role: Role::Admin,
            csrf: csrf.to_string(),
            last_seen: 0,
        }
    }
}

impl Sessions {
    /// Opens a session; returns its id (empty if no random bytes could be had).
    pub fn open(&self, name: &str, role: Role, now: Millis) -> Option<(String, Session)> {
        let id = random_token();
        let csrf = random_token();
        if id.is_empty() || csrf.is_empty() {
            return None;
        }
        let session = Session {
            name: name.to_string(),
            role,
            csrf,
            last_seen: now,
        };
        let mut map = self.by_id.lock().ok()?;
        map.retain(|_, s| now.saturating_sub(s.last_seen) < SESSION_TTL_MS);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), session.clone());
        Some((id, session))
    }

    /// The session with this id, if it is live (its idle clock restarts).
    pub fn get(&self, id: &str, now: Millis) -> Option<Session> {
        let mut map = self.by_id.lock().ok()?;
        let s = map.get_mut(id)?;
        if now.saturating_sub(s.last_seen) >= SESSION_TTL_MS {
            map.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn close(&self, id: &str) {
        if let Ok(mut map) = self.by_id.lock() {
            map.remove(id);
        }
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, scoped to `/ui`.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> String {
    format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_close() {
        let s = Sessions::default();
        let (id, session) = s.open("oncall", Role::Operator, 1_000).expect("open");
        assert_eq!(id.len(), 64);
        assert_ne!(session.csrf, id);
        assert_eq!(s.get(&id, 2_000).map(|x| x.role), Some(Role::Operator));
        assert!(
            s.get(&id, 2_000 + SESSION_TTL_MS).is_none(),
            "idle too long"
        );
        let (id, _) = s.open("oncall", Role::Operator, 5_000).expect("open");
        s.close(&id);
        assert!(s.get(&id, 5_001).is_none());
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("", ""));
        assert_eq!(
            cookie("a=1; stagegate_session=xyz; b=2", COOKIE),
            Some("xyz")
        );
    }
}

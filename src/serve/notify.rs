//! Notifications: the lane's notifiers (webhook, Slack, Teams, PagerDuty) hear about
//! rollbacks, read-only fallbacks, narrows, promotions and pauses; PagerDuty about automatic
//! containments and the resume out of them.
//!
//! A notification is put in the store's outbox in the same transaction as its receipt (the
//! items and their bodies are `core::notice`'s), so a crash between deciding and sending loses
//! nothing; [`run_notifier`] delivers due items with
//! `Idempotency-Key: <receipt id>`, retrying with exponential backoff, and counts each outcome in
//! `stagegate_notifications_total`. Webhooks get a documented JSON body; Slack gets
//! incoming-webhook text; Teams an Adaptive Card; PagerDuty an Events v2 event whose routing
//! key is read from the environment at delivery.

use std::sync::Arc;
use std::time::Duration;

use crate::core::clock::Millis;
use crate::core::notice::Outbox;
use crate::plan::Plan;
use crate::serve::controller::Shared;

/// Delivery attempts before a notification is given up (and counted `failed`).
pub const MAX_ATTEMPTS: u32 = 10;

/// Problems with the notifiers that will not stop stagegate but will stop notifications:
/// an unset `url_env` (its notifications are skipped), or no listener at a URL's host and port
/// right now (deliveries will be retried and may fail). `check` and `serve` print them.
pub fn preflight(plan: &Plan) -> Vec<String> {
    let mut warnings = Vec::new();
    for n in &plan.notifiers {
        if let Some(var) = &n.routing_key_env {
            if std::env::var(var).map_or(true, |k| k.is_empty()) {
                warnings.push(format!(
                    "notifier `{}`: environment variable {var} (the PagerDuty routing key) is unset; its notifications will be skipped (counted as outcome=\"skipped\")",
                    n.name
                ));
                continue;
            }
        }
        let url = match (&n.url, &n.url_env) {
            (Some(u), _) => u.clone(),
            (None, Some(var)) => match std::env::var(var) {
                Ok(u) if !u.is_empty() => u,
                _ => {
                    warnings.push(format!(
                        "notifier `{}`: environment variable {var} is unset; its notifications will be skipped (counted as outcome=\"skipped\")",
                        n.name
                    ));
                    continue;
                }
            },
            (None, None) => continue,
        };
        let Ok(parsed) = reqwest::Url::parse(&url) else {
            warnings.push(format!("notifier `{}`: {url:?} is not a URL", n.name));
            continue;
        };
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            continue;
        };
        let reachable = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .ok()
            .and_then(|mut addrs| addrs.next())
            .is_some_and(|addr| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            });
        if !reachable {
            warnings.push(format!(
                "notifier `{}`: nothing answers at {host}:{port} right now; deliveries will be retried and then count as failed",
                n.name
            ));
        }
    }
    warnings
}

/// Backoff before attempt `n + 1`: 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn backoff(attempts: u32) -> Millis {
    (1_000u64 << attempts.min(20)).min(300_000)
}

/// Why a delivery failed: worth retrying; or not, because the notifier is not configured in
/// this environment (its `url_env` is unset — warned about at start and by `check`).
enum Failure {
    Retry(String),
    Unconfigured(String),
}

async fn deliver(http: &reqwest::Client, item: &Outbox) -> Result<(), Failure> {
    let url = match (&item.url, &item.url_env) {
        (Some(url), _) => url.clone(),
        (None, Some(var)) => std::env::var(var)
            .ok()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| Failure::Unconfigured(format!("environment variable {var} is unset")))?,
        (None, None) => return Err(Failure::Unconfigured("no url".into())),
    };
    let body = match &item.routing_key_env {
        None => item.body.clone(),
        // PagerDuty's integration key is a secret: read at delivery, never stored.
        Some(var) => {
            let key = std::env::var(var)
                .ok()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    Failure::Unconfigured(format!("environment variable {var} is unset"))
                })?;
            let mut event: serde_json::Value = serde_json::from_str(&item.body).map_err(|e| {
                Failure::Unconfigured(format!("the stored event does not decode: {e}"))
            })?;
            event["routing_key"] = serde_json::Value::String(key);
            event.to_string()
        }
    };
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", &item.receipt_id)
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(Failure::Retry(format!("HTTP {}", resp.status())))
    }
}

/// Delivers due outbox items until the process ends. Woken early by `Shared::notify_wake`.
pub async fn run_notifier(shared: Arc<Shared>) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "notifications disabled: cannot build an HTTP client");
            return;
        }
    };
    loop {
        let now = shared.clock.now();
        let store = Arc::clone(&shared.store);
        // Only the decider delivers (on a shared store its claims are fenced, too).
        let leading = shared.is_leader();
        let due = tokio::task::spawn_blocking(move || {
            if leading {
                store.due_notifications(now, 32)
            } else {
                Ok(Vec::new())
            }
        })
        .await;
        let due = match due {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the notification outbox");
                Vec::new()
            }
            Err(_) => return,
        };
        for (key, mut item) in due {
            let notifier = item.notifier.clone();
            let result = deliver(&http, &item).await;
            let store = Arc::clone(&shared.store);
            let outcome = match result {
                Ok(()) => {
                    tracing::info!(notifier = %item.notifier, receipt = %item.receipt_id, "notification sent");
                    let _ = tokio::task::spawn_blocking(move || store.notification_done(key)).await;
                    "sent"
                }
                Err(Failure::Unconfigured(e)) => {
                    tracing::warn!(notifier = %item.notifier, receipt = %item.receipt_id, reason = %e, "notification skipped: the notifier is not configured here");
                    let _ = tokio::task::spawn_blocking(move || store.notification_done(key)).await;
                    "skipped"
                }
                Err(Failure::Retry(e)) if item.attempts + 1 >= MAX_ATTEMPTS => {
                    tracing::error!(notifier = %item.notifier, receipt = %item.receipt_id, error = %e, "notification failed for good");
                    let _ = tokio::task::spawn_blocking(move || store.notification_done(key)).await;
                    "failed"
                }
                Err(Failure::Retry(e)) => {
                    item.attempts += 1;
                    item.next_at = shared.clock.now() + backoff(item.attempts - 1);
                    tracing::warn!(notifier = %item.notifier, receipt = %item.receipt_id, attempt = item.attempts, error = %e, "notification will be retried");
                    let _ =
                        tokio::task::spawn_blocking(move || store.notification_retry(key, &item))
                            .await;
                    "retried"
                }
            };
            shared.metrics.notification(&notifier, outcome);
        }
        tokio::select! {
            _ = shared.notify_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

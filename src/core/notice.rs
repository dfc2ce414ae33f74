//! What the lane hears about a decision: which receipts notify (`wants_notice`), the outbox
//! items written with the receipt (`Outbox`, `outbox_for`), and their bodies — the documented
//! webhook JSON, Slack incoming-webhook text, a Teams Adaptive Card, and PagerDuty Events v2
//! (trigger on automatic containment, resolve on the resume out of it). Pure: delivery is
//! `serve::notify`'s.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::core::clock::Millis;
use crate::core::gate::Verdict;
use crate::core::receipt::Receipt;
use crate::core::rollout::Phase;
use crate::plan::{Action, NotifierKind, Plan};

/// A notification waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    pub notifier: String,
    pub kind: NotifierKind,
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub receipt_id: String,
    pub body: String,
    pub attempts: u32,
    pub next_at: Millis,
    /// PagerDuty: the variable holding the integration key, set into the body at delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key_env: Option<String>,
}

/// Whether a decision is one the lane hears about.
pub fn wants_notice(r: &Receipt) -> bool {
    matches!(
        r.action,
        Action::Rollback
            | Action::Fallback
            | Action::ReadOnly
            | Action::Narrow
            | Action::Promote
            | Action::Pause
    ) || (r.action == Action::Expand && r.after.state == Phase::Promoted)
}

/// The outbox items for a receipt: one per notifier in its lane that hears about it.
pub fn outbox_for(plan: &Plan, r: &Receipt, now: Millis) -> Vec<Outbox> {
    let notice = wants_notice(r);
    r.lane
        .notify
        .iter()
        .filter_map(|name| plan.notifier(name))
        .filter_map(|n| {
            let body = match n.kind {
                NotifierKind::Webhook => notice.then(|| webhook_body(r)),
                NotifierKind::Slack => notice.then(|| slack_body(r)),
                NotifierKind::Teams => notice.then(|| teams_body(r)),
                NotifierKind::PagerDuty => pagerduty_body(r),
            }?;
            Some(Outbox {
                notifier: n.name.clone(),
                kind: n.kind,
                url: n.url.clone(),
                url_env: n.url_env.clone(),
                receipt_id: r.id.clone(),
                body: body.to_string(),
                attempts: 0,
                next_at: now,
                routing_key_env: n.routing_key_env.clone(),
            })
        })
        .collect()
}

/// PagerDuty Events v2: `trigger` on an automatic containment (rollback, read-only, fallback),
/// `resolve` on the operator's resume out of containment; one incident per rollout
/// (`dedup_key` `stagegate/ROLLOUT`). Nothing for other decisions. The `routing_key` is added
/// at delivery.
pub fn pagerduty_body(r: &Receipt) -> Option<Value> {
    let dedup_key = format!("stagegate/{}", r.rollout);
    let automatic = matches!(r.actor, crate::core::rollout::Actor::Controller);
    let contained = matches!(
        r.action,
        Action::Rollback | Action::ReadOnly | Action::Fallback
    );
    if automatic && contained {
        return Some(json!({
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {
                "summary": format!("stagegate: {} {} ({})", r.rollout, r.action.name(), r.reason),
                "source": format!("stagegate/{}", r.workflow),
                "severity": if r.action == Action::Rollback { "critical" } else { "error" },
                "component": r.workflow,
                "group": r.rollout,
                "class": r.action.name(),
                "custom_details": webhook_body(r),
            },
        }));
    }
    let released = matches!(r.after.state, Phase::Progressing | Phase::Promoted);
    (r.action == Action::Resume && released).then(|| {
        json!({
            "event_action": "resolve",
            "dedup_key": dedup_key,
            "payload": {
                "summary": format!("stagegate: {} resumed ({})", r.rollout, r.reason),
                "source": format!("stagegate/{}", r.workflow),
                "severity": "info",
            },
        })
    })
}

/// Microsoft Teams: an Adaptive Card message (what Teams' Workflows webhooks accept).
pub fn teams_body(r: &Receipt) -> Value {
    let mut facts = vec![
        json!({"title": "Change", "value": format!("{} → {}", r.before.state.name(), r.after.state.name())}),
        json!({"title": "By", "value": r.actor.label()}),
        json!({"title": "Receipt", "value": r.id}),
    ];
    if !r.lane.owner.is_empty() {
        facts.push(json!({"title": "Owner", "value": r.lane.owner}));
        facts.push(json!({"title": "Repair", "value": r.lane.repair}));
    }
    let evidence: Vec<Value> = evidence_summary(r)
        .into_iter()
        .take(5)
        .map(|line| json!({"type": "TextBlock", "text": format!("- {line}"), "wrap": true}))
        .collect();
    let mut body = vec![
        json!({"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
               "text": format!("stagegate: {} {}", r.rollout, r.action.name())}),
        json!({"type": "TextBlock", "text": r.reason, "wrap": true}),
        json!({"type": "FactSet", "facts": facts}),
    ];
    body.extend(evidence);
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        }],
    })
}

/// One line per failing (or, with none failing, per) verdict: `gate@segment verdict: candidate
/// value (n) vs baseline value (n)`.
fn evidence_summary(r: &Receipt) -> Vec<String> {
    let failing: Vec<_> = r
        .evidence
        .iter()
        .filter(|v| v.verdict == Verdict::Fail)
        .collect();
    let shown = if failing.is_empty() {
        r.evidence.iter().collect()
    } else {
        failing
    };
    shown
        .iter()
        .map(|v| {
            let val = |x: Option<f64>| x.map_or_else(|| "n/a".into(), |x| format!("{x:.4}"));
            let mut line = format!(
                "{}@{} {}: candidate {} (n={}) vs baseline {} (n={})",
                v.gate,
                v.segment,
                v.verdict.name(),
                val(v.candidate.value),
                v.candidate.samples,
                val(v.baseline.value),
                v.baseline.samples
            );
            if let Some(limit) = v
                .checks
                .iter()
                .find(|c| c.verdict == Verdict::Fail)
                .and_then(|c| c.limit)
            {
                let _ = write!(line, ", limit {limit:.4}");
            }
            line
        })
        .collect()
}

/// The webhook body (documented in the README).
pub fn webhook_body(r: &Receipt) -> Value {
    json!({
        "receipt_id": r.id,
        "at": r.at,
        "rollout": r.rollout,
        "workflow": r.workflow,
        "action": r.action,
        "actor": r.actor,
        "reason": r.reason,
        "trigger": r.trigger,
        "state_before": r.before.state,
        "state_after": r.after.state,
        "stage_after": r.after.stage,
        "weights_after": r.after.weights,
        "evidence_summary": evidence_summary(r),
        "owner": r.lane.owner,
        "affected_systems": r.lane.affected_systems,
        "repair": r.lane.repair,
        "config_hash": r.config_hash,
    })
}

/// Slack incoming-webhook text.
pub fn slack_body(r: &Receipt) -> Value {
    let mut text = format!(
        "*stagegate: {} {}* ({} -> {}) by {}\n{}",
        r.rollout,
        r.action.name(),
        r.before.state.name(),
        r.after.state.name(),
        r.actor.label(),
        r.reason
    );
    for line in evidence_summary(r).iter().take(5) {
        let _ = write!(text, "\n• {line}");
    }
    if !r.lane.owner.is_empty() {
        let _ = write!(
            text,
            "\nOwner: {} — repair: {}\nReceipt: {}",
            r.lane.owner, r.lane.repair, r.id
        );
    }
    json!({ "text": text })
}

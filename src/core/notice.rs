//! What the lane hears about a decision: which receipts notify (`wants_notice`), the outbox
//! items written with the receipt (`Outbox`, `outbox_for`), and their bodies — the documented
//! webhook JSON and Slack incoming-webhook text. Pure: delivery is `serve::notify`'s.

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

/// The outbox items for a receipt: one per notifier in its lane.
pub fn outbox_for(plan: &Plan, r: &Receipt, now: Millis) -> Vec<Outbox> {
    if !wants_notice(r) {
        return Vec::new();
    }
    r.lane
        .notify
        .iter()
        .filter_map(|name| plan.notifier(name))
        .map(|n| Outbox {
            notifier: n.name.clone(),
            kind: n.kind,
            url: n.url.clone(),
            url_env: n.url_env.clone(),
            receipt_id: r.id.clone(),
            body: match n.kind {
                NotifierKind::Webhook => webhook_body(r),
                NotifierKind::Slack => slack_body(r),
            }
            .to_string(),
            attempts: 0,
            next_at: now,
        })
        .collect()
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

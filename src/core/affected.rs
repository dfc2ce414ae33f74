//! The affected list of a containment: every task the candidate served in full mode during the
//! epoch the containment ended (the exposure window, from the stage's start or the last epoch
//! change up to the containment), and the owner's tag on each (`safe`, `wrong`, `unclear`).
//! Pure: the shell reads the stored events and tags and asks this module what they mean.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::core::event::{Mode, Review, TaskEvent};
use crate::core::receipt::Receipt;
use crate::plan::{Action, RolloutPlan, Signal};

/// An owner's verdict on one affected task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    Safe,
    Wrong,
    Unclear,
}

impl Tag {
    pub fn parse(text: &str) -> Option<Tag> {
        match text {
            "safe" => Some(Tag::Safe),
            "wrong" => Some(Tag::Wrong),
            "unclear" => Some(Tag::Unclear),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tag::Safe => "safe",
            Tag::Wrong => "wrong",
            Tag::Unclear => "unclear",
        }
    }
}

/// A tag as stored: the last one wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagRecord {
    pub tag: Tag,
    #[serde(default)]
    pub note: String,
    pub by: String,
    pub at: String,
}

/// One affected task, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AffectedItem {
    pub event_id: String,
    pub subject: Option<String>,
    pub segment: Option<String>,
    /// The time the application reported, if it did.
    pub ts: Option<String>,
    pub quality: Option<f64>,
    pub latency_ms: Option<f64>,
    pub cost_usd: Option<f64>,
    pub fallback: Option<bool>,
    pub review: Option<String>,
    pub tag: Option<Tag>,
    pub note: Option<String>,
}

/// Receipts that open a containment with an affected list.
pub fn opens_containment(receipt: &Receipt) -> bool {
    matches!(
        receipt.action,
        Action::Rollback | Action::ReadOnly | Action::Fallback
    ) || (receipt.action == Action::Narrow && receipt.after.stage.is_none())
}

/// The epoch whose tasks a containment's affected list covers: the one in force before it.
pub fn exposure_epoch(receipt: &Receipt) -> u64 {
    receipt.before.epoch
}

/// Whether a stored event of the exposure epoch is affected: the candidate served it in full
/// mode.
pub fn is_affected(plan: &RolloutPlan, event: &TaskEvent) -> bool {
    event.version == plan.candidate && event.mode == Mode::Full
}

/// The listed item for an affected event, with its tag if it has one.
pub fn item(plan: &RolloutPlan, event: &TaskEvent, tag: Option<&TagRecord>) -> AffectedItem {
    AffectedItem {
        event_id: event.event_id.to_string(),
        subject: event.subject.as_deref().map(str::to_owned),
        segment: plan
            .segments
            .iter()
            .find(|s| s.matches(|k| event.attribute(k)))
            .map(|s| s.name.clone()),
        ts: event.ts.map(crate::core::clock::rfc3339),
        quality: event.observation(&Signal::Quality),
        latency_ms: event.observation(&Signal::LatencyMs),
        cost_usd: event.observation(&Signal::CostUsd),
        fallback: event.fallback,
        review: event.review.map(|r| {
            match r {
                Review::Approved => "approved",
                Review::Rejected => "rejected",
            }
            .to_string()
        }),
        tag: tag.map(|t| t.tag),
        note: tag.map(|t| t.note.clone()).filter(|n| !n.is_empty()),
    }
}

/// Counts by tag (`safe`, `wrong`, `unclear`, `untagged`).
pub fn counts(items: &[AffectedItem]) -> HashMap<&'static str, u64> {
    let mut out: HashMap<&'static str, u64> = ["safe", "wrong", "unclear", "untagged"]
        .map(|k| (k, 0))
        .into();
    for i in items {
        *out.entry(i.tag.map_or("untagged", Tag::name)).or_default() += 1;
    }
    out
}

/// Items that still block `affected_reviewed`: untagged or `unclear`.
pub fn unreviewed(items: &[AffectedItem]) -> u64 {
    items
        .iter()
        .filter(|i| !matches!(i.tag, Some(Tag::Safe | Tag::Wrong)))
        .count() as u64
}

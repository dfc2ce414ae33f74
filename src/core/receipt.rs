//! Receipts: the durable, immutable record of one decision.
//!
//! A receipt says what triggered a decision, the evidence (every gate's verdict with its sample
//! counts, thresholds and confidence bounds), the state before and after, who acted, the config
//! hash, and the lane's owner and repair path. The store assigns its id when it is written in
//! the same transaction as the state change.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::core::clock::{Millis, rfc3339};
use crate::core::gate::GateVerdict;
use crate::core::rollout::{Actor, Decision, Phase, RolloutState, Trigger};
use crate::plan::Action;
use crate::plan::RolloutPlan;
use crate::plan::format_pct;

/// A rollout's state as receipts and status show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateView {
    pub state: Phase,
    pub stage: Option<String>,
    pub stage_index: Option<usize>,
    /// Candidate share per segment, in percent, in the rollout's segment (match) order.
    pub weights: IndexMap<String, f64>,
    pub read_only: bool,
    pub narrows: u32,
    pub epoch: u64,
    /// In fallback: the version serving the candidate's share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Segments a segment-scoped narrow holds at an earlier stage: segment → that stage.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub segment_stages: IndexMap<String, String>,
    /// Segments where the candidate runs read-only (a segment-scoped read-only fallback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only_segments: Vec<String>,
}

impl StateView {
    /// A view of a state with no stage or weights (guards, removed rollouts).
    pub fn bare(
        state: Phase,
        stage_index: Option<usize>,
        read_only: bool,
        narrows: u32,
        epoch: u64,
    ) -> StateView {
        StateView {
            state,
            stage: None,
            stage_index,
            weights: IndexMap::new(),
            read_only,
            narrows,
            epoch,
            fallback: None,
            segment_stages: IndexMap::new(),
            read_only_segments: Vec::new(),
        }
    }

    pub fn of(plan: &RolloutPlan, state: &RolloutState) -> StateView {
        let weights = plan
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let pct: f64 = format_pct(state.weight_bps(plan, i)).parse().unwrap_or(0.0);
                (s.name.clone(), pct)
            })
            .collect();
        StateView {
            state: state.phase,
            stage: state.stage_name(plan).map(str::to_string),
            stage_index: state.stage,
            weights,
            read_only: state.read_only,
            narrows: state.narrows,
            epoch: state.epoch,
            fallback: state.fallback.clone(),
            segment_stages: plan
                .segments
                .iter()
                .filter_map(|s| {
                    let held = state.segment_stages.get(&s.name)?;
                    Some((s.name.clone(), plan.stages.get(*held)?.name.clone()))
                })
                .collect(),
            read_only_segments: plan
                .segments
                .iter()
                .filter(|s| state.read_only_segments.contains(&s.name))
                .map(|s| s.name.clone())
                .collect(),
        }
    }
}

/// Who owns a rollback and how it is repaired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneView {
    pub owner: String,
    pub affected_systems: Vec<String>,
    pub notify: Vec<String>,
    pub repair: String,
}

/// One decision, as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Assigned by the store: `r-` and a zero-padded sequence number.
    pub id: String,
    pub at: String,
    pub at_ms: Millis,
    pub rollout: String,
    pub workflow: String,
    pub action: Action,
    pub actor: Actor,
    pub reason: String,
    pub trigger: Option<Trigger>,
    pub before: StateView,
    pub after: StateView,
    /// Every gate's verdict per exposed segment when the decision was taken.
    pub evidence: Vec<GateVerdict>,
    pub confidence: f64,
    pub config_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_config_hash: Option<String>,
    /// What a config change changed (`reconfigure` receipts), one readable line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    pub lane: LaneView,
    /// The operator's `Idempotency-Key`: a repeat of the same action with it returns this
    /// receipt and changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The replica and leader term that wrote it (stores shared by several replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decider: Option<Decider>,
}

/// Which replica decided, under which leader term.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decider {
    pub replica: String,
    pub term: u64,
}

impl Receipt {
    pub fn new(plan: &RolloutPlan, decision: &Decision, config_hash: &str, now: Millis) -> Receipt {
        Receipt {
            id: String::new(),
            at: rfc3339(now),
            at_ms: now,
            rollout: plan.name.clone(),
            workflow: plan.workflow.clone(),
            action: decision.action,
            actor: decision.actor.clone(),
            reason: decision.reason.clone(),
            trigger: decision.trigger.clone(),
            before: StateView::of(plan, &decision.before),
            after: StateView::of(plan, &decision.after),
            evidence: decision.verdicts.clone(),
            confidence: plan.confidence,
            config_hash: config_hash.to_string(),
            previous_config_hash: None,
            changes: decision.changes.clone(),
            lane: LaneView {
                owner: plan.lane.owner.clone(),
                affected_systems: plan.lane.affected_systems.clone(),
                notify: plan.lane.notify.clone(),
                repair: plan.lane.repair.clone(),
            },
            idempotency_key: None,
            decider: None,
        }
    }

    /// Whether the controller took this decision by itself.
    pub fn is_automatic(&self) -> bool {
        self.actor == Actor::Controller
    }

    /// Formats a sequence number as a receipt id.
    pub fn id_for(seq: u64) -> String {
        format!("r-{seq:010}")
    }
}

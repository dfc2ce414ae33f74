//! The rollout state machine: states, actions, and the pure functions that decide.
//!
//! [`assess`] looks at a rollout's state and evidence at a given time and returns the verdicts
//! and, when something must change, a [`Decision`]. [`operate`] does the same for an operator's
//! command or refuses it with the rule it breaks. Neither does I/O or reads a clock; the caller
//! persists the decision with its receipt and only then applies it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::core::clock::{Millis, human_duration};
use crate::core::evidence::{Arm, Evidence};
use crate::core::gate::{GateInput, GateVerdict, Verdict, evaluate};
use crate::plan::RolloutPlan;
use crate::plan::{Action, FallbackPlan, Scope};

/// A rollout's state, as `stagegate_rollout_state` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Progressing,
    Paused,
    Narrowed,
    ReadOnly,
    RolledBack,
    Promoted,
    /// Re-enabling after an automatic containment: the candidate serves the first stage's
    /// traffic in read-only mode while the lane's healthy read-only proof accumulates.
    Probation,
    /// The candidate's share is served by a gate's fallback version.
    Fallback,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Progressing,
        Phase::Paused,
        Phase::Narrowed,
        Phase::ReadOnly,
        Phase::RolledBack,
        Phase::Promoted,
        Phase::Probation,
        Phase::Fallback,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Narrowed => "narrowed",
            Phase::ReadOnly => "read_only",
            Phase::RolledBack => "rolled_back",
            Phase::Promoted => "promoted",
            Phase::Probation => "probation",
            Phase::Fallback => "fallback",
        }
    }
}

/// Set by an automatic containment; a resume must meet the lane's re-enable rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReenableDue {
    pub since: Millis,
    pub cause: Action,
    /// The epoch whose candidate tasks the containment's affected list covers: its raw events
    /// are kept until the containment is resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure_epoch: Option<u64>,
    /// The gate whose failure contained the rollout (`stagegate_rollout_contained`'s label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
}

/// A rollout's durable state. Evidence is not part of it: it is rebuilt from stored events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub phase: Phase,
    /// `None`: the candidate has no traffic (rolled back, or narrowed below the first stage).
    pub stage: Option<usize>,
    pub stage_started: Millis,
    /// Bumped whenever the evidence window restarts (a stage or mode change).
    pub epoch: u64,
    pub narrows: u32,
    /// The candidate may only act in read-only mode.
    pub read_only: bool,
    pub reenable: Option<ReenableDue>,
    /// While paused: the phase a plain resume returns to.
    pub paused_from: Option<Phase>,
    /// The policy (`RolloutPlan::policy_terms`) this state was last decided under: a reload
    /// or restart with a different config is a receipted `reconfigure`, never a silent one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policy: BTreeMap<String, String>,
    /// The gate and segment whose breach caused the last narrow: re-expansion needs that gate
    /// to pass in that segment on evidence gathered after the narrow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrowed_by: Option<Trigger>,
    /// Removed from the config: the state, receipts and re-enable debt wait under the name and
    /// come back if it is added again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dormant: bool,
    /// Observe-only gates already receipted as "would have acted" in epoch `observed_epoch`,
    /// by gate and segment: each is recorded once per epoch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<Trigger>,
    #[serde(default)]
    pub observed_epoch: u64,
    /// In `fallback`: the version serving the candidate's share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Segments a `scope: segment` narrow holds below the rollout's stage, by name: their
    /// traffic is that earlier stage's. Cleared by every rollout-wide stage change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub segment_stages: BTreeMap<String, usize>,
    /// Segments a `scope: segment` read-only fallback switched to read-only mode (the others
    /// keep full mode).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub read_only_segments: BTreeSet<String>,
    /// When the current epoch began: what a metrics source's queries count from. `0` in
    /// states stored before it was recorded (then `stage_started` stands in).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch_started: Millis,
}

fn is_zero(v: &Millis) -> bool {
    *v == 0
}

impl RolloutState {
    pub fn initial(now: Millis) -> RolloutState {
        RolloutState {
            phase: Phase::Progressing,
            stage: Some(0),
            stage_started: now,
            epoch: 1,
            epoch_started: now,
            narrows: 0,
            read_only: false,
            reenable: None,
            paused_from: None,
            policy: BTreeMap::new(),
            narrowed_by: None,
            dormant: false,
            observed: Vec::new(),
            observed_epoch: 0,
            fallback: None,
            segment_stages: BTreeMap::new(),
            read_only_segments: BTreeSet::new(),
        }
    }

    /// Whether an automatic or operator containment is in force: removing such a rollout
    /// from the config needs `force`.
    pub fn is_contained(&self) -> bool {
        matches!(
            self.phase,
            Phase::Paused
                | Phase::Narrowed
                | Phase::ReadOnly
                | Phase::RolledBack
                | Phase::Probation
                | Phase::Fallback
        ) || self.reenable.is_some()
    }

    /// The stage whose traffic `segment` gets: the rollout's, or the one a segment narrow
    /// holds it at.
    pub fn segment_stage(&self, plan: &RolloutPlan, segment: usize) -> Option<usize> {
        let held = plan
            .segments
            .get(segment)
            .and_then(|s| self.segment_stages.get(&s.name))
            .copied();
        held.or(self.stage)
    }

    /// Candidate share of `segment` in basis points.
    pub fn weight_bps(&self, plan: &RolloutPlan, segment: usize) -> u16 {
        match self.segment_stage(plan, segment) {
            Some(s) if self.phase != Phase::RolledBack => plan
                .stages
                .get(s)
                .and_then(|st| st.weights_bps.get(segment))
                .copied()
                .unwrap_or(0),
            _ => 0,
        }
    }

    pub fn stage_name<'a>(&self, plan: &'a RolloutPlan) -> Option<&'a str> {
        self.stage
            .and_then(|s| plan.stages.get(s))
            .map(|s| s.name.as_str())
    }

    fn enter_stage(&mut self, stage: Option<usize>, now: Millis) {
        self.segment_stages.clear();
        self.read_only_segments.clear();
        self.stage = stage;
        self.stage_started = now;
        self.new_epoch(now);
    }

    /// Restarts the evidence window at `now`.
    pub fn new_epoch(&mut self, now: Millis) {
        self.epoch += 1;
        self.epoch_started = now;
    }

    /// When the current evidence window began.
    pub fn epoch_start(&self) -> Millis {
        if self.epoch_started == 0 {
            self.stage_started
        } else {
            self.epoch_started
        }
    }
}

/// Who took a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Actor {
    Controller,
    Operator(String),
}

impl Actor {
    /// The `actor` label of `stagegate_decisions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Actor::Controller => "controller",
            Actor::Operator(_) => "operator",
        }
    }
}

/// The gate and segment that caused an automatic decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub gate: String,
    pub segment: String,
}

/// A state change, before it is persisted and applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub actor: Actor,
    pub reason: String,
    pub trigger: Option<Trigger>,
    pub before: RolloutState,
    pub after: RolloutState,
    pub verdicts: Vec<GateVerdict>,
    /// What a config change changed, one readable line each (reconfigure decisions only).
    pub changes: Vec<String>,
}

/// A rollout's verdicts now, what it waits for, and the decision if one is due.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub verdicts: Vec<GateVerdict>,
    /// Why it is holding, when it is.
    pub waiting: Option<String>,
    pub decision: Option<Decision>,
}

/// Every gate's verdict in every segment that currently sends the candidate traffic.
pub fn verdicts(plan: &RolloutPlan, state: &RolloutState, evidence: &Evidence) -> Vec<GateVerdict> {
    let alpha = plan.alpha_per_check();
    // The tuning the epoch's evidence was gathered under, not the plan's current one.
    let design = evidence.design_samples;
    let mut out = Vec::new();
    for (s, segment) in plan.segments.iter().enumerate() {
        let weight = state.weight_bps(plan, s);
        if weight == 0 {
            continue;
        }
        let (Some(cand), Some(base)) = (
            evidence.arm(s, Arm::Candidate),
            evidence.arm(s, Arm::Baseline),
        ) else {
            continue;
        };
        for gate in &plan.gates {
            let Some(idx) = evidence.signal_index(&gate.signal) else {
                continue;
            };
            let input = GateInput {
                candidate: &cand.signals[idx],
                baseline: (weight < 10_000).then(|| &base.signals[idx]),
                alpha,
                design_samples: design,
            };
            let mut verdict = evaluate(gate, &segment.name, &input);
            if let Some(reason) = evidence.faults.get(&(s, gate.signal.name().to_string())) {
                verdict.source_failed(reason);
            }
            out.push(verdict);
        }
    }
    out
}

/// Decides what, if anything, the controller does to a rollout at `now`.
pub fn assess(
    plan: &RolloutPlan,
    state: &RolloutState,
    evidence: &Evidence,
    now: Millis,
) -> Assessment {
    decide(plan, state, evidence, verdicts(plan, state, evidence), now)
}

/// The state machine's step on given verdicts: [`assess`] with the sequential verdicts, and
/// `simulate --policy threshold` with a fixed-threshold comparator's.
pub fn decide(
    plan: &RolloutPlan,
    state: &RolloutState,
    evidence: &Evidence,
    verdicts: Vec<GateVerdict>,
    now: Millis,
) -> Assessment {
    let hold = |why: String, verdicts: Vec<GateVerdict>| Assessment {
        verdicts,
        waiting: Some(why),
        decision: None,
    };
    match state.phase {
        Phase::Progressing
        | Phase::Narrowed
        | Phase::ReadOnly
        | Phase::Probation
        | Phase::Fallback => {}
        Phase::Paused => return hold("paused: an operator decides".into(), verdicts),
        Phase::RolledBack => return hold("rolled back: resume to start again".into(), verdicts),
        Phase::Promoted if now >= state.stage_started.saturating_add(plan.bake) => {
            return Assessment {
                verdicts,
                waiting: None,
                decision: None,
            };
        }
        Phase::Promoted => {}
    }
    let Some(stage) = state.stage else {
        return hold("narrowed to zero: resume to start again".into(), verdicts);
    };
    if state.phase == Phase::Probation {
        return match probation_breach(plan, state, &verdicts, now) {
            Some(decision) => Assessment {
                verdicts,
                waiting: None,
                decision: Some(decision),
            },
            None => hold(
                "probation: the candidate drafts in read-only mode; resume once the lane's healthy read-only tasks are in"
                    .into(),
                verdicts,
            ),
        };
    }

    match containment(plan, state, stage, &verdicts, now) {
        Some(Ok(decision)) => {
            return Assessment {
                verdicts,
                waiting: None,
                decision: Some(decision),
            };
        }
        Some(Err(why)) => return hold(why, verdicts),
        None => {}
    }
    if let Some(decision) = observation(plan, state, &verdicts) {
        return Assessment {
            verdicts,
            waiting: None,
            decision: Some(decision),
        };
    }
    if state.phase == Phase::ReadOnly {
        return hold(
            "read-only fallback: resume with the lane's re-enable proof".into(),
            verdicts,
        );
    }
    if state.phase == Phase::Fallback {
        return hold(
            format!(
                "fallback: version {} serves the candidate's share; resume with the lane's re-enable proof",
                state.fallback.as_deref().unwrap_or("?")
            ),
            verdicts,
        );
    }
    if state.phase == Phase::Promoted {
        let until = state.stage_started.saturating_add(plan.bake);
        return hold(
            format!(
                "promoted; baking until {}: the gates keep watching the new stable version",
                crate::core::clock::rfc3339(until)
            ),
            verdicts,
        );
    }

    match expansion(plan, state, stage, evidence, &verdicts, now) {
        Ok(decision) => Assessment {
            verdicts,
            waiting: None,
            decision: Some(decision),
        },
        Err(why) => hold(why, verdicts),
    }
}

/// An observe-only gate failing where it has not been recorded this epoch: a receipt that it
/// would have acted, and nothing else.
fn observation(
    plan: &RolloutPlan,
    state: &RolloutState,
    verdicts: &[GateVerdict],
) -> Option<Decision> {
    let seen = |v: &GateVerdict| {
        state.observed_epoch == state.epoch
            && state
                .observed
                .iter()
                .any(|t| t.gate == v.gate && t.segment == v.segment)
    };
    let failing = verdicts
        .iter()
        .find(|v| v.verdict == Verdict::Fail && plan.observes(&v.gate) && !seen(v))?;
    let gate = plan.gates.iter().find(|g| g.name == failing.gate)?;
    let trigger = Trigger {
        gate: failing.gate.clone(),
        segment: failing.segment.clone(),
    };
    let mut after = state.clone();
    if after.observed_epoch != state.epoch {
        after.observed.clear();
        after.observed_epoch = state.epoch;
    }
    after.observed.push(trigger.clone());
    Some(Decision {
        action: Action::Observe,
        actor: Actor::Controller,
        reason: format!(
            "would have acted ({}): observe-only gate {} failed in segment {} (candidate {}); nothing changed",
            gate.on_breach.name(),
            failing.gate,
            failing.segment,
            fmt_opt(failing.candidate.value)
        ),
        trigger: Some(trigger),
        before: state.clone(),
        after,
        verdicts: verdicts.to_vec(),
        changes: Vec::new(),
    })
}

/// In probation any failing gate sends the rollout straight back to `rolled_back`: the proof
/// that it may act again failed.
fn probation_breach(
    plan: &RolloutPlan,
    state: &RolloutState,
    verdicts: &[GateVerdict],
    now: Millis,
) -> Option<Decision> {
    let failing = verdicts
        .iter()
        .find(|v| v.verdict == Verdict::Fail && !plan.observes(&v.gate))?;
    let trigger = Trigger {
        gate: failing.gate.clone(),
        segment: failing.segment.clone(),
    };
    Some(Decision {
        action: Action::Rollback,
        actor: Actor::Controller,
        reason: format!(
            "gate {} failed in segment {} during probation (candidate {}): back to rolled_back",
            failing.gate,
            failing.segment,
            fmt_opt(failing.candidate.value)
        ),
        trigger: Some(trigger),
        before: state.clone(),
        after: contain(state, Action::Rollback, None, 0, &failing.gate, now),
        verdicts: verdicts.to_vec(),
        changes: Vec::new(),
    })
}

/// A breach: the most severe failing gate's `on_breach` (a narrow past `max_narrows` becomes a
/// rollback). `Some(Ok)`: the containment to take; `Some(Err)`: why it holds (`on_breach:
/// hold`); `None`: nothing to contain (in read-only fallback, only a rollback is).
fn containment(
    plan: &RolloutPlan,
    state: &RolloutState,
    stage: usize,
    verdicts: &[GateVerdict],
    now: Millis,
) -> Option<Result<Decision, String>> {
    let breach = plan
        .gates
        .iter()
        .filter(|g| !g.observe)
        .filter_map(|g| {
            let failing = verdicts
                .iter()
                .find(|v| v.gate == g.name && v.verdict == Verdict::Fail)?;
            Some((g.on_breach, g.fallback.as_ref(), g.scope, failing))
        })
        .max_by_key(|(action, _, _, _)| action.severity());
    if let Some((action, fallback, scope, failing)) = breach {
        let trigger = Trigger {
            gate: failing.gate.clone(),
            segment: failing.segment.clone(),
        };
        let escalate = action == Action::Narrow && state.narrows >= plan.max_narrows;
        let action = if escalate { Action::Rollback } else { action };
        // In a containment only a more severe one is news.
        let relevant = match state.phase {
            Phase::ReadOnly => action.severity() > Action::ReadOnly.severity(),
            Phase::Fallback => action == Action::Rollback,
            _ => action != Action::Hold,
        };
        if relevant {
            let mut reason = format!(
                "gate {} failed in segment {} (candidate {} vs limit {})",
                failing.gate,
                failing.segment,
                fmt_opt(failing.candidate.value),
                fmt_opt(
                    failing
                        .checks
                        .iter()
                        .find(|c| c.verdict == Verdict::Fail)
                        .and_then(|c| c.limit)
                ),
            );
            if let Some(note) = failing
                .checks
                .iter()
                .filter(|c| c.verdict == Verdict::Fail)
                .find_map(|c| {
                    c.note
                        .as_ref()
                        .and_then(crate::core::gate::Note::text)
                        .filter(|n| n.starts_with("change detected"))
                })
            {
                reason.push_str("; ");
                reason.push_str(note);
            }
            if escalate {
                reason.push_str(&format!(
                    "; narrow escalated to rollback after {} narrow(s)",
                    state.narrows
                ));
            }
            let segment = plan.segments.iter().position(|s| s.name == failing.segment);
            let held = segment.and_then(|s| state.segment_stage(plan, s));
            let mut after = match (action, scope, held) {
                // Back one stage in the breaching segment only; the others keep theirs.
                (Action::Narrow, Scope::Segment, Some(h)) if h > 0 => {
                    let mut after = state.clone();
                    after.segment_stages.insert(failing.segment.clone(), h - 1);
                    after.narrows += 1;
                    after.phase = Phase::Narrowed;
                    after.new_epoch(now);
                    reason.push_str(&format!(
                        "; segment {} back to stage {}, the others keep theirs",
                        failing.segment,
                        plan.stages[h - 1].name
                    ));
                    after
                }
                // Read-only in the breaching segment only; the others keep full mode.
                (Action::ReadOnly, Scope::Segment, _) => {
                    let mut after = contain(state, action, fallback, stage, &failing.gate, now);
                    after.read_only = false;
                    after.read_only_segments.insert(failing.segment.clone());
                    reason.push_str(&format!(
                        "; segment {} runs read-only, the others keep full mode",
                        failing.segment
                    ));
                    after
                }
                _ => contain(state, action, fallback, stage, &failing.gate, now),
            };
            if action == Action::Narrow {
                after.narrowed_by = Some(trigger.clone());
            }
            let decision = Decision {
                action,
                actor: Actor::Controller,
                reason,
                trigger: Some(trigger),
                before: state.clone(),
                after,
                verdicts: verdicts.to_vec(),
                changes: Vec::new(),
            };
            return Some(Ok(decision));
        }
        if !matches!(state.phase, Phase::ReadOnly | Phase::Fallback) {
            return Some(Err(format!(
                "holding: gate {} failed in segment {} (on_breach: hold)",
                trigger.gate, trigger.segment
            )));
        }
    }
    None
}

/// Expansion: every gate passes in every exposed segment (and, after a narrow, the gate that
/// breached passes where it breached), the stage's `min_duration` has passed and its
/// `min_samples` were seen, and the next stage needs no operator. `Err`: why it waits.
fn expansion(
    plan: &RolloutPlan,
    state: &RolloutState,
    stage: usize,
    evidence: &Evidence,
    verdicts: &[GateVerdict],
    now: Millis,
) -> Result<Decision, String> {
    let plan_stage = &plan.stages[stage];
    let Some(next) = plan.stages.get(stage + 1) else {
        return Err("at the last stage".into());
    };
    // Written into one string: every held rollout writes this at every tick.
    let mut waiting = String::new();
    for v in verdicts
        .iter()
        .filter(|v| v.verdict != Verdict::Pass && !plan.observes(&v.gate))
    {
        waiting.push_str(if waiting.is_empty() {
            "waiting for gates to pass: "
        } else {
            ", "
        });
        let _ = write!(waiting, "{}@{} {}", v.gate, v.segment, v.verdict.name());
    }
    if !waiting.is_empty() {
        return Err(waiting);
    }
    // Narrowed with memory: the gate that breached must pass where it breached, on evidence
    // gathered since the narrow (this epoch), before the candidate goes back there.
    if let Some(by) = &state.narrowed_by {
        let cleared = verdicts
            .iter()
            .any(|v| v.gate == by.gate && v.segment == by.segment && v.verdict == Verdict::Pass);
        if cleared && state.segment_stages.contains_key(&by.segment) {
            // The held segment rejoins the rollout's stage; expansion can follow.
            let mut after = state.clone();
            after.segment_stages.remove(&by.segment);
            after.narrowed_by = None;
            after.new_epoch(now);
            if after.segment_stages.is_empty() {
                after.phase = Phase::Progressing;
            }
            return Ok(Decision {
                action: Action::Expand,
                actor: Actor::Controller,
                reason: format!(
                    "segment {} rejoins stage {}: {} passed there on evidence gathered since the narrow",
                    by.segment, plan_stage.name, by.gate
                ),
                trigger: Some(by.clone()),
                before: state.clone(),
                after,
                verdicts: verdicts.to_vec(),
                changes: Vec::new(),
            });
        }
        if !cleared {
            return Err(format!(
                "narrowed by {}@{}: re-expansion needs {} to pass in {} on evidence gathered since the narrow{}",
                by.gate,
                by.segment,
                by.gate,
                by.segment,
                if verdicts.iter().any(|v| v.segment == by.segment) {
                    ""
                } else {
                    "; that segment gets no candidate traffic at this stage, so an operator's promote decides"
                }
            ));
        }
    }
    let elapsed = now.saturating_sub(state.stage_started);
    if elapsed < plan_stage.min_duration {
        return Err(format!(
            "stage needs {} more",
            human_duration(plan_stage.min_duration - elapsed)
        ));
    }
    let samples = evidence.candidate_tasks();
    if samples < plan_stage.min_samples {
        return Err(format!(
            "stage needs {} candidate samples, has {samples}",
            plan_stage.min_samples
        ));
    }
    if next.manual_approval {
        return Err(format!(
            "awaiting an operator's promote to enter stage {}",
            next.name
        ));
    }
    let mut after = state.clone();
    after.enter_stage(Some(stage + 1), now);
    after.narrowed_by = None;
    after.phase = if stage + 2 == plan.stages.len() {
        Phase::Promoted
    } else {
        Phase::Progressing
    };
    let reason = format!(
        "every gate passed in every exposed segment after {} with {samples} candidate samples",
        human_duration(elapsed)
    );
    let decision = Decision {
        action: Action::Expand,
        actor: Actor::Controller,
        reason,
        trigger: None,
        before: state.clone(),
        after,
        verdicts: verdicts.to_vec(),
        changes: Vec::new(),
    };
    Ok(decision)
}

/// The state after an automatic breach action.
fn contain(
    state: &RolloutState,
    action: Action,
    fallback: Option<&FallbackPlan>,
    stage: usize,
    gate: &str,
    now: Millis,
) -> RolloutState {
    let mut after = state.clone();
    let due = Some(ReenableDue {
        since: now,
        cause: action,
        exposure_epoch: Some(state.epoch),
        gate: Some(gate.to_string()),
    });
    match action {
        Action::Narrow => {
            after.narrows += 1;
            after.phase = Phase::Narrowed;
            let back = stage.checked_sub(1);
            if back.is_none() {
                after.reenable = due;
            }
            after.enter_stage(back, now);
        }
        Action::ReadOnly => {
            after.phase = Phase::ReadOnly;
            after.read_only = true;
            after.reenable = due;
            after.new_epoch(now);
        }
        Action::Fallback => {
            after.phase = Phase::Fallback;
            after.fallback = fallback.map(|f| f.version.clone());
            after.read_only = fallback.is_some_and(|f| f.read_only);
            after.reenable = due;
            after.new_epoch(now);
        }
        Action::Rollback => {
            after.phase = Phase::RolledBack;
            after.read_only = false;
            after.fallback = None;
            after.reenable = due;
            after.enter_stage(None, now);
        }
        Action::Pause => {
            after.paused_from = Some(state.phase);
            after.phase = Phase::Paused;
        }
        _ => {}
    }
    after
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.4}"))
}

/// An operator's command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Pause { reason: String },
    Resume { reason: String, ack: bool },
    Promote { reason: String, full: bool },
    Rollback { reason: String },
}

impl Command {
    pub fn action(&self) -> Action {
        match self {
            Command::Pause { .. } => Action::Pause,
            Command::Resume { .. } => Action::Resume,
            Command::Promote { .. } => Action::Promote,
            Command::Rollback { .. } => Action::Rollback,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Command::Pause { reason }
            | Command::Resume { reason, .. }
            | Command::Promote { reason, .. }
            | Command::Rollback { reason } => reason,
        }
    }
}

/// Why an operator's command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The request lacks something it must carry (a reason).
    #[error("{0}")]
    BadRequest(String),
    /// The rollout's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// A rule refuses it: the lane's re-enable proof is incomplete.
    #[error("re-enable refused: missing {}", .missing.join("; "))]
    ReenableProof { missing: Vec<String> },
    /// A config change would drop rollouts that are still contained.
    #[error(
        "the config removes rollouts still in containment: {}; keep them in the config until they are resolved, or reload with force (admin) to remove them anyway (their state, receipts and re-enable debt are kept)",
        .0.join(", ")
    )]
    RemovesContained(Vec<String>),
}

/// What has been shown towards re-enabling, from the evidence and the affected list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Proof {
    /// Healthy candidate tasks in read-only mode this epoch.
    pub healthy_read_only: u64,
    /// Affected items of the open containment not yet tagged `safe` or `wrong`.
    pub unreviewed_affected: u64,
}

/// What the next resume must prove, checked against the lane's re-enable rule. Out of a
/// containment (rolled back, read-only, narrowed to zero): the acknowledgement and the cooldown,
/// after which the rollout enters probation (or, when the lane asks for no healthy read-only
/// tasks, progresses at once). Out of probation: the healthy read-only tasks seen since it began.
pub fn missing_proof(
    plan: &RolloutPlan,
    phase: Phase,
    due: &ReenableDue,
    ack: bool,
    proof: &Proof,
    now: Millis,
) -> Vec<String> {
    let rule = &plan.lane.reenable;
    let mut missing = Vec::new();
    if phase == Phase::Probation {
        if proof.healthy_read_only < rule.healthy_read_only_samples {
            missing.push(format!(
                "healthy_read_only_samples: {} of {} healthy read-only candidate tasks observed in probation",
                proof.healthy_read_only, rule.healthy_read_only_samples
            ));
        }
        if rule.affected_reviewed && proof.unreviewed_affected > 0 {
            missing.push(format!(
                "affected_reviewed: {} affected item(s) still untagged or unclear; tag each safe or wrong (stagegate affected)",
                proof.unreviewed_affected
            ));
        }
        return missing;
    }
    if rule.ack && !ack {
        missing.push("ack: set \"ack\": true to acknowledge the lane's repair action".into());
    }
    let elapsed = now.saturating_sub(due.since);
    if elapsed < rule.cooldown {
        missing.push(format!(
            "cooldown: {} of {} remain (ends {})",
            human_duration(rule.cooldown - elapsed),
            human_duration(rule.cooldown),
            crate::core::clock::rfc3339(due.since.saturating_add(rule.cooldown))
        ));
    }
    missing
}

/// Decides an operator's command, or refuses it.
pub fn operate(
    plan: &RolloutPlan,
    state: &RolloutState,
    proof: &Proof,
    actor: &str,
    command: &Command,
    verdicts: Vec<GateVerdict>,
    now: Millis,
) -> Result<Decision, Refusal> {
    if command.reason().trim().is_empty() {
        return Err(Refusal::BadRequest(
            "a non-empty `reason` is required".into(),
        ));
    }
    let mut after = state.clone();
    match command {
        Command::Pause { .. } => {
            if state.phase == Phase::Paused {
                return Err(Refusal::Conflict("already paused".into()));
            }
            after.paused_from = Some(state.phase);
            after.phase = Phase::Paused;
        }
        Command::Resume { ack, .. } => {
            let from = match state.phase {
                // Back to what was paused; a containment stays contained.
                Phase::Paused => {
                    after.phase = state.paused_from.unwrap_or(Phase::Progressing);
                    after.paused_from = None;
                    return Ok(operator_decision(state, after, actor, command, verdicts));
                }
                Phase::ReadOnly | Phase::RolledBack | Phase::Probation | Phase::Fallback => {
                    state.phase
                }
                Phase::Narrowed if state.stage.is_none() => state.phase,
                _ => {
                    return Err(Refusal::Conflict(format!(
                        "nothing to resume: the rollout is {}",
                        state.phase.name()
                    )));
                }
            };
            if let Some(due) = &state.reenable {
                let missing = missing_proof(plan, from, due, *ack, proof, now);
                if !missing.is_empty() {
                    return Err(Refusal::ReenableProof { missing });
                }
            }
            after.paused_from = None;
            after.narrows = 0;
            after.narrowed_by = None;
            after.fallback = None;
            after.read_only_segments.clear();
            let probation = from != Phase::Probation
                && state.reenable.is_some()
                && plan.lane.reenable.healthy_read_only_samples > 0;
            if probation {
                // The proof is gathered in read-only mode at the first stage; the debt stays.
                after.phase = Phase::Probation;
                after.read_only = true;
            } else {
                after.reenable = None;
                after.read_only = false;
                after.phase = Phase::Progressing;
            }
            after.enter_stage(Some(0), now);
        }
        Command::Promote { full, .. } => {
            if state.reenable.is_some()
                || matches!(
                    state.phase,
                    Phase::RolledBack | Phase::ReadOnly | Phase::Paused | Phase::Fallback
                )
            {
                return Err(Refusal::Conflict(format!(
                    "cannot promote a rollout that is {}; resume it first",
                    state.phase.name()
                )));
            }
            if state.phase == Phase::Promoted {
                return Err(Refusal::Conflict("already at the last stage".into()));
            }
            let last = plan.stages.len() - 1;
            let next = if *full {
                last
            } else {
                state.stage.map_or(0, |s| (s + 1).min(last))
            };
            after.enter_stage(Some(next), now);
            // The operator decides: a narrow's memory is cleared.
            after.narrowed_by = None;
            after.phase = if next == last {
                Phase::Promoted
            } else {
                Phase::Progressing
            };
        }
        Command::Rollback { .. } => {
            if state.phase == Phase::RolledBack {
                return Err(Refusal::Conflict("already rolled back".into()));
            }
            after.phase = Phase::RolledBack;
            after.read_only = false;
            after.paused_from = None;
            after.enter_stage(None, now);
        }
    }
    Ok(operator_decision(state, after, actor, command, verdicts))
}

fn operator_decision(
    state: &RolloutState,
    after: RolloutState,
    actor: &str,
    command: &Command,
    verdicts: Vec<GateVerdict>,
) -> Decision {
    Decision {
        action: command.action(),
        actor: Actor::Operator(actor.to_string()),
        reason: command.reason().to_string(),
        trigger: None,
        before: state.clone(),
        after,
        verdicts,
        changes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    //! The state machine, driven through timelines: each step feeds evidence, advances the
    //! clock, and the decisions are rendered as text to compare with the expected timeline.

    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::core::engine::Engine;
    use crate::core::event::{Mode, TaskEvent};
    use crate::plan::Plan;

    const PLAN: &str = r#"
segments: { internal: { match: { team: [ops] } }, everyone: {} }
workflows: { w: { stable: v1, versions: [v1, v2] } }
rollouts:
  - name: r
    workflow: w
    baseline: v1
    candidate: v2
    segments: [internal, everyone]
    stages:
      - { name: s1, traffic: { internal: 100 }, min_duration: 10m, min_samples: 100 }
      - { name: s2, traffic: { internal: 100, everyone: 20 }, min_samples: 100 }
      - { name: s3, traffic: { internal: 100, everyone: 100 }, approval: manual }
    max_narrows: 1
    gates:
      - { signal: quality, stat: mean, min: 0.8, on_breach: rollback }
      - { signal: cost_usd, stat: mean, max: 0.05, on_breach: read_only }
      - { signal: latency_ms, stat: mean, max: 2000, on_breach: narrow, scope: rollout }
    lane: { owner: o, repair: fix, reenable: { ack: true, cooldown: 30m, healthy_read_only_samples: 5 } }
auth: { open: true }
"#;

    struct Sim {
        engine: Engine,
        now: Millis,
        seq: u64,
        log: Vec<String>,
    }

    impl Sim {
        fn new() -> Sim {
            Sim::with(PLAN)
        }

        fn with(text: &str) -> Sim {
            let plan = Plan::parse(Path::new("t.yaml"), text).expect("valid plan");
            Sim {
                engine: Engine::new(Arc::new(plan), Default::default(), Default::default(), 0),
                now: 0,
                seq: 0,
                log: Vec::new(),
            }
        }

        /// `n` events of `version` from team `team` (or anyone), with [quality, cost, latency].
        fn feed(
            &mut self,
            n: u64,
            version: &str,
            team: Option<&str>,
            [q, cost, lat]: [f64; 3],
            mode: Mode,
        ) {
            for i in 0..n {
                self.seq += 1;
                let mut e = crate::core::event::parse_event(&serde_json::json!({"event_id": format!("e{}", self.seq), "workflow": "w", "version": version}).to_string())
                    .expect("valid");
                if let Some(t) = team {
                    e.attributes.insert("team".into(), t.into());
                }
                let wobble = if i % 2 == 0 { 0.01 } else { -0.01 };
                e.quality = Some(q + wobble);
                e.cost_usd = Some(cost);
                e.latency_ms = Some(lat * (1.0 + wobble));
                e.mode = mode;
                record(&mut self.engine, &e);
            }
        }

        fn tick(&mut self, minutes: u64) {
            self.now += minutes * 60_000;
            if let Some(d) = self.engine.assess(0, self.now).decision {
                self.apply(d);
            }
        }

        fn op(&mut self, command: Command) -> Result<(), Refusal> {
            let d = self.engine.operate(0, "alice", &command, 0, self.now)?;
            self.apply(d);
            Ok(())
        }

        fn apply(&mut self, d: Decision) {
            let plan = self.engine.rollout_plan(0).clone();
            let trigger = d
                .trigger
                .as_ref()
                .map(|t| format!(" by {}@{}", t.gate, t.segment))
                .unwrap_or_default();
            self.log.push(format!(
                "{}m {} {} {}->{} {}{trigger}",
                self.now / 60_000,
                d.actor.label(),
                d.action.name(),
                d.before.stage_name(&plan).unwrap_or("-"),
                d.after.stage_name(&plan).unwrap_or("-"),
                d.after.phase.name(),
            ));
            self.engine.apply(0, &d);
        }

        fn timeline(&self) -> String {
            self.log.join("\n")
        }
    }

    fn record(engine: &mut Engine, e: &TaskEvent) {
        let route = engine.route(e).expect("routable");
        engine.record(&route, e);
    }

    #[test]
    fn a_rollout_without_evidence_waits_for_every_gate_by_name_and_segment() {
        let s = Sim::new();
        let waiting = s.engine.assess(0, s.now).waiting.unwrap_or_default();
        let gates: Vec<String> = s.engine.plan.rollouts[0]
            .gates
            .iter()
            .map(|g| format!("{}@internal inconclusive", g.name))
            .collect();
        assert_eq!(
            waiting,
            format!("waiting for gates to pass: {}", gates.join(", "))
        );
    }

    #[test]
    fn expands_only_after_duration_and_samples_and_waits_for_manual_approval() {
        let mut s = Sim::new();
        s.feed(150, "v2", Some("ops"), [0.9, 0.01, 1000.0], Mode::Full);
        s.tick(5); // gates pass, but min_duration is 10m
        s.tick(5);
        s.feed(150, "v2", Some("ops"), [0.9, 0.01, 1000.0], Mode::Full);
        s.feed(150, "v2", None, [0.9, 0.01, 1000.0], Mode::Full);
        s.tick(1);
        s.tick(1); // s3 is manual
        assert!(
            s.engine
                .assess(0, s.now)
                .waiting
                .unwrap_or_default()
                .contains("awaiting an operator's promote")
        );
        s.op(Command::Promote {
            reason: "ok".into(),
            full: false,
        })
        .expect("promote");
        assert_eq!(
            s.timeline(),
            "10m controller expand s1->s2 progressing\n12m operator promote s2->s3 promoted"
        );
    }

    #[test]
    fn a_breach_while_baking_after_promotion_rolls_back_and_not_after() {
        let mut s = Sim::new();
        s.op(Command::Promote {
            reason: "ship".into(),
            full: true,
        })
        .expect("promote");
        s.tick(60);
        s.feed(150, "v2", None, [0.5, 0.01, 1000.0], Mode::Full);
        s.tick(1);
        assert_eq!(
            s.timeline(),
            "0m operator promote s1->s3 promoted\n61m controller rollback s3->- rolled_back by quality_mean@everyone"
        );

        // After the bake period (24 h by default) the controller leaves a promoted rollout be.
        let mut s = Sim::new();
        s.op(Command::Promote {
            reason: "ship".into(),
            full: true,
        })
        .expect("promote");
        s.tick(24 * 60);
        s.feed(150, "v2", None, [0.5, 0.01, 1000.0], Mode::Full);
        s.tick(1);
        assert_eq!(s.timeline(), "0m operator promote s1->s3 promoted");
    }

    #[test]
    fn after_a_narrow_the_breaching_gate_must_pass_where_it_breached() {
        let mut s = Sim::new();
        s.op(Command::Promote {
            reason: "to s2".into(),
            full: false,
        })
        .expect("promote");
        // Slow only for `everyone`: the latency gate narrows the rollout back to s1.
        s.feed(150, "v2", Some("ops"), [0.9, 0.01, 1000.0], Mode::Full);
        s.feed(150, "v1", None, [0.9, 0.01, 1000.0], Mode::Full);
        s.feed(150, "v2", None, [0.9, 0.01, 3000.0], Mode::Full);
        s.tick(1);
        // At s1 only `internal` is exposed, and it is healthy: no automatic re-expansion.
        s.feed(300, "v2", Some("ops"), [0.9, 0.01, 1000.0], Mode::Full);
        s.tick(15);
        s.tick(15);
        assert_eq!(
            s.timeline(),
            "0m operator promote s1->s2 progressing\n1m controller narrow s2->s1 narrowed by latency_ms_mean@everyone"
        );
        let waiting = s.engine.assess(0, s.now).waiting.unwrap_or_default();
        assert!(
            waiting.contains("narrowed by latency_ms_mean@everyone")
                && waiting.contains("operator's promote decides"),
            "{waiting}"
        );
        s.op(Command::Promote {
            reason: "fixed the slow path".into(),
            full: false,
        })
        .expect("the operator decides");
        assert_eq!(s.engine.rollouts[0].state.narrowed_by, None);
    }

    #[test]
    fn a_segment_scoped_narrow_moves_back_the_breaching_segment_only_and_it_rejoins() {
        let plan = PLAN
            .replace(
                "{ name: s2, traffic: { internal: 100, everyone: 20 }, min_samples: 100 }",
                "{ name: s2, traffic: { internal: 100, everyone: 20 }, min_samples: 100 }\n      \
                 - { name: s2b, traffic: { internal: 100, everyone: 50 }, min_samples: 100 }",
            )
            .replace(
                "max: 2000, on_breach: narrow, scope: rollout }",
                "max: 2000, on_breach: narrow }",
            );
        let mut s = Sim::with(&plan);
        s.op(Command::Promote {
            reason: "to s2b".into(),
            full: false,
        })
        .expect("promote");
        s.op(Command::Promote {
            reason: "to s2b".into(),
            full: false,
        })
        .expect("promote");
        // Slow only for `everyone`: that segment goes back to s2 (20 %), internal keeps s2b.
        s.feed(150, "v2", Some("ops"), [0.9, 0.01, 1000.0], Mode::Full);
        s.feed(150, "v2", None, [0.9, 0.01, 3000.0], Mode::Full);
        s.tick(1);
        let state = s.engine.rollouts[0].state.clone();
        let r = s.engine.rollout_plan(0).clone();
        assert_eq!(
            (
                state.phase,
                state.stage_name(&r),
                state.segment_stages.get("everyone")
            ),
            (Phase::Narrowed, Some("s2b"), Some(&1))
        );
        assert_eq!(
            (state.weight_bps(&r, 0), state.weight_bps(&r, 1)),
            (10_000, 2_000)
        );
        // Healthy again where it breached, on evidence since the narrow: it rejoins s2b.
        s.feed(150, "v2", Some("ops"), [0.9, 0.01, 1000.0], Mode::Full);
        s.feed(150, "v2", None, [0.9, 0.01, 1000.0], Mode::Full);
        s.tick(1);
        let state = &s.engine.rollouts[0].state;
        assert_eq!(
            (state.phase, state.segment_stages.len()),
            (Phase::Progressing, 0)
        );
        assert!(
            s.timeline()
                .ends_with("controller expand s2b->s2b progressing by latency_ms_mean@everyone"),
            "{}",
            s.timeline()
        );
    }

    #[test]
    fn a_second_narrow_beyond_max_narrows_becomes_a_rollback() {
        let mut s = Sim::new();
        s.op(Command::Promote {
            reason: "to s2".into(),
            full: false,
        })
        .expect("promote");
        s.feed(150, "v2", None, [0.9, 0.01, 5000.0], Mode::Full);
        s.tick(1);
        s.feed(150, "v2", Some("ops"), [0.9, 0.01, 5000.0], Mode::Full);
        s.tick(1);
        assert_eq!(
            s.timeline(),
            "0m operator promote s1->s2 progressing\n\
             1m controller narrow s2->s1 narrowed by latency_ms_mean@everyone\n\
             2m controller rollback s1->- rolled_back by latency_ms_mean@internal"
        );
        assert_eq!(
            s.engine.rollouts[0]
                .state
                .reenable
                .as_ref()
                .map(|r| r.cause),
            Some(Action::Rollback)
        );
    }

    #[test]
    fn the_most_severe_breach_wins_and_read_only_only_escalates_to_rollback() {
        let mut s = Sim::new();
        s.feed(150, "v2", Some("ops"), [0.9, 0.5, 5000.0], Mode::Full); // cost and latency fail
        s.tick(1);
        s.feed(150, "v2", Some("ops"), [0.9, 0.5, 5000.0], Mode::Full); // still failing: no narrow while read-only
        s.tick(1);
        s.feed(150, "v2", Some("ops"), [0.3, 0.5, 5000.0], Mode::Full); // quality fails: rollback
        s.tick(1);
        assert_eq!(
            s.timeline(),
            "1m controller read_only s1->s1 read_only by cost_usd_mean@internal\n\
             3m controller rollback s1->- rolled_back by quality_mean@internal"
        );
    }

    #[test]
    fn resume_demands_every_part_of_the_reenable_rule() {
        let mut s = Sim::new();
        s.feed(150, "v2", Some("ops"), [0.9, 0.5, 1000.0], Mode::Full);
        s.tick(1);
        let missing = |s: &mut Sim, ack| match s.op(Command::Resume {
            reason: "fixed".into(),
            ack,
        }) {
            Err(Refusal::ReenableProof { missing }) => missing
                .iter()
                .map(|m| m.split(':').next().unwrap_or("").to_string())
                .collect::<Vec<_>>(),
            other => panic!("expected a refusal, got {other:?}"),
        };
        // Out of the containment: the acknowledgement and the cooldown.
        assert_eq!(missing(&mut s, false), ["ack", "cooldown"]);
        assert_eq!(missing(&mut s, true), ["cooldown"]);
        s.now += 30 * 60_000;
        assert_eq!(
            s.op(Command::Resume {
                reason: "".into(),
                ack: true
            }),
            Err(Refusal::BadRequest(
                "a non-empty `reason` is required".into()
            ))
        );
        s.op(Command::Resume {
            reason: "fixed".into(),
            ack: true,
        })
        .expect("resume into probation");
        let state = &s.engine.rollouts[0].state;
        assert_eq!(
            (state.phase, state.read_only, state.stage),
            (Phase::Probation, true, Some(0))
        );
        // Out of probation: healthy read-only tasks seen since it began (5 in this lane).
        assert_eq!(missing(&mut s, true), ["healthy_read_only_samples"]);
        s.feed(4, "v2", Some("ops"), [0.9, 0.01, 1000.0], Mode::ReadOnly);
        assert_eq!(missing(&mut s, true), ["healthy_read_only_samples"]);
        s.feed(1, "v2", Some("ops"), [0.9, 0.01, 1000.0], Mode::ReadOnly);
        s.op(Command::Resume {
            reason: "proof in".into(),
            ack: true,
        })
        .expect("resume out of probation");
        let state = &s.engine.rollouts[0].state;
        assert_eq!(
            (
                state.phase,
                state.read_only,
                state.stage,
                state.reenable.is_none()
            ),
            (Phase::Progressing, false, Some(0), true)
        );
    }

    #[test]
    fn a_breach_in_probation_goes_straight_back_to_rolled_back() {
        let mut s = Sim::new();
        s.feed(150, "v2", Some("ops"), [0.3, 0.01, 1000.0], Mode::Full);
        s.tick(1);
        s.now += 30 * 60_000;
        s.op(Command::Resume {
            reason: "fixed".into(),
            ack: true,
        })
        .expect("probation");
        assert_eq!(s.engine.rollouts[0].state.phase, Phase::Probation);
        // The same miss in read-only drafts: the proof failed.
        s.feed(150, "v2", Some("ops"), [0.3, 0.01, 1000.0], Mode::ReadOnly);
        s.tick(1);
        let state = &s.engine.rollouts[0].state;
        assert_eq!((state.phase, state.stage), (Phase::RolledBack, None));
        assert!(state.reenable.is_some(), "a new re-enable debt");
        assert!(s.timeline().contains("rollback"), "{}", s.timeline());
    }

    #[test]
    fn unhealthy_read_only_tasks_are_no_proof() {
        let mut s = Sim::new();
        s.feed(150, "v2", Some("ops"), [0.9, 0.5, 1000.0], Mode::Full);
        s.tick(1);
        s.feed(10, "v2", Some("ops"), [0.5, 0.01, 1000.0], Mode::ReadOnly); // below quality min
        s.feed(10, "v2", Some("ops"), [0.9, 0.01, 1000.0], Mode::Full); // not read-only
        assert_eq!(s.engine.rollouts[0].healthy_read_only, 0);
    }

    #[test]
    fn operators_can_always_pause_but_not_promote_a_contained_rollout() {
        let mut s = Sim::new();
        s.feed(150, "v2", Some("ops"), [0.3, 0.01, 1000.0], Mode::Full);
        s.tick(1);
        assert!(matches!(
            s.op(Command::Promote {
                reason: "x".into(),
                full: true
            }),
            Err(Refusal::Conflict(_))
        ));
        s.op(Command::Pause {
            reason: "look".into(),
        })
        .expect("pause is always allowed");
        // Unpausing returns to the containment, which still owes its proof.
        s.op(Command::Resume {
            reason: "x".into(),
            ack: true,
        })
        .expect("unpause");
        assert_eq!(s.engine.rollouts[0].state.phase, Phase::RolledBack);
        assert!(matches!(
            s.op(Command::Resume {
                reason: "x".into(),
                ack: true
            }),
            Err(Refusal::ReenableProof { .. })
        ));
    }
}

//! The decision core as one value: the plan, every rollout's state and evidence.
//!
//! [`Engine`] routes events to evidence, assesses rollouts, applies decisions, and renders the
//! routing snapshot and status views. It does no I/O and never reads a clock: `serve` wraps it
//! in the async shell (`server`), `simulate` drives it on a virtual clock. Guards on workflows
//! without a rollout are handled here too, as a single-arm scope.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::assign::{RolloutRoute, Routing, WorkflowRoute};
use crate::clock::{Millis, human_duration, rfc3339};
use crate::config::{Plan, RolloutPlan, WorkflowPlan};
use crate::event::{Mode, Review, TaskEvent};
use crate::evidence::{Arm, Evidence, Tracked};
use crate::gate::{Check, GateInput, GateVerdict, Signal, Stat, Verdict, evaluate};
use crate::receipt::{Receipt, StateView};
use crate::rollout::{
    Action, Actor, Assessment, Command, Decision, Phase, Refusal, RolloutState, assess,
    missing_proof, operate, verdicts,
};

/// One rollout's live state: durable state plus the current epoch's evidence.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub state: RolloutState,
    pub evidence: Evidence,
    /// Healthy candidate tasks run in read-only mode this epoch (for the re-enable rule).
    pub healthy_read_only: u64,
}

/// A guarded workflow's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    pub read_only: bool,
    pub since: Millis,
    pub epoch: u64,
}

/// A guarded workflow's live state.
#[derive(Debug, Clone)]
pub struct GuardRuntime {
    pub workflow: String,
    pub state: GuardState,
    pub evidence: Evidence,
}

/// Where an event's evidence goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Rollout {
        rollout: usize,
        segment: usize,
        arm: Arm,
        epoch: u64,
    },
    Guard {
        guard: usize,
        epoch: u64,
    },
    /// Valid, but no rollout or guard watches it (an old version, an unmatched segment).
    Untracked,
}

impl Route {
    /// The scope and epoch stored with the event so a restart can replay it.
    pub fn scope(&self, engine: &Engine) -> Option<(String, u64)> {
        match *self {
            Route::Rollout { rollout, epoch, .. } => {
                Some((engine.plan.rollouts[rollout].name.clone(), epoch))
            }
            Route::Guard { guard, epoch } => {
                Some((format!("workflow:{}", engine.guards[guard].workflow), epoch))
            }
            Route::Untracked => None,
        }
    }
}

/// The decision core.
#[derive(Debug, Clone)]
pub struct Engine {
    pub plan: Arc<Plan>,
    pub rollouts: Vec<Runtime>,
    pub guards: Vec<GuardRuntime>,
}

/// The signals a rollout (or guard) keeps statistics for: every built-in one, plus custom
/// signals its gates name; histograms only where a gate asks for a quantile.
fn tracked(gates: &[crate::gate::GateSpec]) -> Vec<Tracked> {
    let mut signals = vec![
        Signal::Quality,
        Signal::LatencyMs,
        Signal::CostUsd,
        Signal::Fallback,
        Signal::Review,
    ];
    for g in gates {
        if !signals.contains(&g.signal) {
            signals.push(g.signal.clone());
        }
    }
    signals
        .into_iter()
        .map(|signal| {
            let histogram = gates
                .iter()
                .any(|g| g.signal == signal && matches!(g.stat, Stat::Quantile(_)));
            Tracked { signal, histogram }
        })
        .collect()
}

impl Engine {
    /// Builds the engine from a plan and whatever state the store had.
    pub fn new(
        plan: Arc<Plan>,
        mut states: HashMap<String, RolloutState>,
        mut guard_states: HashMap<String, GuardState>,
        now: Millis,
    ) -> Engine {
        let rollouts = plan
            .rollouts
            .iter()
            .map(|r| Runtime {
                state: clamp_stage(
                    states
                        .remove(&r.name)
                        .unwrap_or_else(|| RolloutState::initial(now)),
                    r.stages.len(),
                ),
                evidence: Evidence::new(tracked(&r.gates), r.segments.len()),
                healthy_read_only: 0,
            })
            .collect();
        let guards = plan
            .workflows
            .iter()
            .filter(|w| !w.guards.is_empty() && !plan.rollouts.iter().any(|r| r.workflow == w.name))
            .map(|w| GuardRuntime {
                workflow: w.name.clone(),
                state: guard_states.remove(&w.name).unwrap_or(GuardState {
                    read_only: false,
                    since: now,
                    epoch: 1,
                }),
                evidence: Evidence::new(tracked(&w.guards), 1),
            })
            .collect();
        Engine {
            plan,
            rollouts,
            guards,
        }
    }

    pub fn rollout_index(&self, name: &str) -> Option<usize> {
        self.plan.rollouts.iter().position(|r| r.name == name)
    }

    pub fn guard_index(&self, workflow: &str) -> Option<usize> {
        self.guards.iter().position(|g| g.workflow == workflow)
    }

    fn guard_plan(&self, guard: usize) -> Option<&WorkflowPlan> {
        self.plan.workflow(&self.guards[guard].workflow)
    }

    /// Checks an event against the plan and finds where its evidence goes.
    pub fn route(&self, event: &TaskEvent) -> Result<Route, String> {
        let Some(workflow) = self.plan.workflow(&event.workflow) else {
            return Err(format!("unknown workflow `{}`", event.workflow));
        };
        if !workflow.versions.contains(&event.version) {
            return Err(format!(
                "unknown version `{}` of workflow `{}`",
                event.version, event.workflow
            ));
        }
        if let Some(rollout) = self
            .plan
            .rollouts
            .iter()
            .position(|r| r.workflow == event.workflow)
        {
            let plan = &self.plan.rollouts[rollout];
            let arm = if event.version == plan.candidate {
                Arm::Candidate
            } else if event.version == plan.baseline {
                Arm::Baseline
            } else {
                return Ok(Route::Untracked);
            };
            let Some(segment) = plan
                .segments
                .iter()
                .position(|s| s.matches(|k| event.attribute(k)))
            else {
                return Ok(Route::Untracked);
            };
            return Ok(Route::Rollout {
                rollout,
                segment,
                arm,
                epoch: self.rollouts[rollout].state.epoch,
            });
        }
        match self.guard_index(&event.workflow) {
            Some(guard) if event.version == workflow.stable => Ok(Route::Guard {
                guard,
                epoch: self.guards[guard].state.epoch,
            }),
            _ => Ok(Route::Untracked),
        }
    }

    /// Adds an event to evidence if its epoch is still the current one.
    pub fn record(&mut self, route: &Route, event: &TaskEvent) {
        match *route {
            Route::Rollout {
                rollout,
                segment,
                arm,
                epoch,
            } => {
                let Some(rt) = self.rollouts.get_mut(rollout) else {
                    return;
                };
                if rt.state.epoch != epoch {
                    return;
                }
                rt.evidence.record(segment, arm, event);
                if arm == Arm::Candidate
                    && event.mode == Mode::ReadOnly
                    && is_healthy(&self.plan.rollouts[rollout].gates, event)
                {
                    rt.healthy_read_only += 1;
                }
            }
            Route::Guard { guard, epoch } => {
                if let Some(g) = self
                    .guards
                    .get_mut(guard)
                    .filter(|g| g.state.epoch == epoch)
                {
                    g.evidence.record(0, Arm::Candidate, event);
                }
            }
            Route::Untracked => {}
        }
    }

    /// Assesses one rollout at `now`.
    pub fn assess(&self, rollout: usize, now: Millis) -> Assessment {
        let rt = &self.rollouts[rollout];
        assess(&self.plan.rollouts[rollout], &rt.state, &rt.evidence, now)
    }

    /// Decides an operator's command on a rollout.
    pub fn operate(
        &self,
        rollout: usize,
        actor: &str,
        command: &Command,
        now: Millis,
    ) -> Result<Decision, Refusal> {
        let rt = &self.rollouts[rollout];
        let plan = &self.plan.rollouts[rollout];
        let evidence = verdicts(plan, &rt.state, &rt.evidence);
        operate(
            plan,
            &rt.state,
            rt.healthy_read_only,
            actor,
            command,
            evidence,
            now,
        )
    }

    /// Applies a persisted decision; a new epoch starts fresh evidence.
    pub fn apply(&mut self, rollout: usize, decision: &Decision) {
        let rt = &mut self.rollouts[rollout];
        if decision.after.epoch != rt.state.epoch {
            rt.evidence = rt.evidence.fresh();
            rt.healthy_read_only = 0;
        }
        rt.state = decision.after.clone();
    }

    /// The receipt for a decision on a rollout (its id is set by the store).
    pub fn receipt(&self, rollout: usize, decision: &Decision, now: Millis) -> Receipt {
        Receipt::new(&self.plan.rollouts[rollout], decision, &self.plan.hash, now)
    }

    /// Assesses a guarded workflow: a failing guard switches it to read-only.
    pub fn assess_guard(
        &self,
        guard: usize,
        now: Millis,
    ) -> (Vec<GateVerdict>, Option<GuardDecision>) {
        let g = &self.guards[guard];
        let Some(plan) = self.guard_plan(guard) else {
            return (Vec::new(), None);
        };
        let checks: usize = plan.guards.iter().map(|g| g.checks.len()).sum();
        let alpha = 0.05 / checks.max(1) as f64;
        let Some(cell) = g.evidence.arm(0, Arm::Candidate) else {
            return (Vec::new(), None);
        };
        let verdicts: Vec<GateVerdict> = plan
            .guards
            .iter()
            .filter_map(|spec| {
                let idx = g.evidence.signal_index(&spec.signal)?;
                let input = GateInput {
                    candidate: &cell.signals[idx],
                    baseline: None,
                    alpha,
                    design_samples: 500.0,
                };
                Some(evaluate(spec, "all", &input))
            })
            .collect();
        if g.state.read_only {
            return (verdicts, None);
        }
        let failing = verdicts
            .iter()
            .find(|v| v.verdict == Verdict::Fail)
            .cloned();
        let decision = failing.map(|f| GuardDecision {
            action: Action::ReadOnly,
            actor: Actor::Controller,
            reason: format!("guard {} failed on stable version {}", f.gate, plan.stable),
            after: GuardState {
                read_only: true,
                since: now,
                epoch: g.state.epoch + 1,
            },
            verdicts: verdicts.clone(),
        });
        (verdicts, decision)
    }

    /// An operator re-enables a guarded workflow: needs a reason and an acknowledgement.
    pub fn resume_guard(
        &self,
        guard: usize,
        actor: &str,
        reason: &str,
        ack: bool,
        now: Millis,
    ) -> Result<GuardDecision, Refusal> {
        let g = &self.guards[guard];
        if reason.trim().is_empty() {
            return Err(Refusal::BadRequest(
                "a non-empty `reason` is required".into(),
            ));
        }
        if !g.state.read_only {
            return Err(Refusal::Conflict(
                "the workflow is not in read-only mode".into(),
            ));
        }
        if !ack {
            return Err(Refusal::ReenableProof {
                missing: vec!["ack: set \"ack\": true to acknowledge the guard breach".into()],
            });
        }
        Ok(GuardDecision {
            action: Action::Resume,
            actor: Actor::Operator(actor.to_string()),
            reason: reason.to_string(),
            after: GuardState {
                read_only: false,
                since: now,
                epoch: g.state.epoch + 1,
            },
            verdicts: Vec::new(),
        })
    }

    pub fn apply_guard(&mut self, guard: usize, decision: &GuardDecision) {
        let g = &mut self.guards[guard];
        if decision.after.epoch != g.state.epoch {
            g.evidence = g.evidence.fresh();
        }
        g.state = decision.after.clone();
    }

    /// The receipt for a guard decision.
    pub fn guard_receipt(&self, guard: usize, decision: &GuardDecision, now: Millis) -> Receipt {
        let g = &self.guards[guard];
        let view = |s: &GuardState| StateView {
            state: if s.read_only {
                Phase::ReadOnly
            } else {
                Phase::Progressing
            },
            stage: None,
            stage_index: None,
            weights: indexmap::IndexMap::new(),
            read_only: s.read_only,
            narrows: 0,
            epoch: s.epoch,
        };
        Receipt {
            id: String::new(),
            at: rfc3339(now),
            at_ms: now,
            rollout: String::new(),
            workflow: g.workflow.clone(),
            action: decision.action,
            actor: decision.actor.clone(),
            reason: decision.reason.clone(),
            trigger: None,
            before: view(&g.state),
            after: view(&decision.after),
            evidence: decision.verdicts.clone(),
            confidence: 0.95,
            config_hash: self.plan.hash.clone(),
            previous_config_hash: None,
            lane: crate::receipt::LaneView {
                owner: String::new(),
                affected_systems: Vec::new(),
                notify: Vec::new(),
                repair: "re-enable with POST /v1/workflows/{name}/resume once the stable version is healthy".into(),
            },
        }
    }

    /// The routing snapshot for assignment.
    pub fn routing(&self) -> Routing {
        let workflows = self
            .plan
            .workflows
            .iter()
            .map(|w| {
                let index = |v: &str| w.versions.iter().position(|x| x == v).unwrap_or(0);
                let rollout = self
                    .plan
                    .rollouts
                    .iter()
                    .position(|r| r.workflow == w.name)
                    .map(|i| {
                        let (plan, state) = (&self.plan.rollouts[i], &self.rollouts[i].state);
                        RolloutRoute {
                            name: plan.name.clone(),
                            salt: plan.name.clone(),
                            baseline: index(&plan.baseline),
                            candidate: index(&plan.candidate),
                            segments: plan.segments.clone(),
                            weights_bps: (0..plan.segments.len())
                                .map(|s| state.weight_bps(plan, s))
                                .collect(),
                            stage: state.stage_name(plan).map(str::to_string),
                            phase: state.phase,
                            candidate_mode: if state.read_only {
                                Mode::ReadOnly
                            } else {
                                Mode::Full
                            },
                        }
                    });
                let guarded = self
                    .guard_index(&w.name)
                    .is_some_and(|g| self.guards[g].state.read_only);
                WorkflowRoute {
                    name: w.name.clone(),
                    versions: w.versions.clone(),
                    stable: index(&w.stable),
                    stable_mode: if guarded { Mode::ReadOnly } else { Mode::Full },
                    rollout,
                }
            })
            .collect();
        Routing::new(workflows)
    }

    /// A rollout's status: state, weights, verdicts with their numbers, and what it waits for.
    pub fn status(&self, rollout: usize, now: Millis) -> RolloutStatus {
        let (plan, rt) = (&self.plan.rollouts[rollout], &self.rollouts[rollout]);
        let assessment = self.assess(rollout, now);
        let stage = rt.state.stage.and_then(|s| plan.stages.get(s));
        let reenable = rt.state.reenable.as_ref().map(|due| ReenableStatus {
            since: rfc3339(due.since),
            cause: due.cause,
            healthy_read_only: rt.healthy_read_only,
            missing: missing_proof(plan, due, true, rt.healthy_read_only, now),
        });
        RolloutStatus {
            name: plan.name.clone(),
            workflow: plan.workflow.clone(),
            baseline: plan.baseline.clone(),
            candidate: plan.candidate.clone(),
            view: StateView::of(plan, &rt.state),
            stage_started: rfc3339(rt.state.stage_started),
            stages: plan.stages.iter().map(|s| s.name.clone()).collect(),
            max_narrows: plan.max_narrows,
            confidence: plan.confidence,
            candidate_samples: rt.evidence.candidate_tasks(),
            min_samples: stage.map_or(0, |s| s.min_samples),
            min_duration: human_duration(stage.map_or(0, |s| s.min_duration)),
            waiting: assessment.waiting,
            next_decision: assessment.decision.map(|d| d.action),
            reenable,
            segments: plan
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| SegmentSamples {
                    segment: s.name.clone(),
                    baseline_tasks: rt.evidence.arm(i, Arm::Baseline).map_or(0, |a| a.tasks),
                    candidate_tasks: rt.evidence.arm(i, Arm::Candidate).map_or(0, |a| a.tasks),
                })
                .collect(),
            gates: assessment.verdicts,
            config_hash: self.plan.hash.clone(),
        }
    }

    /// A guarded workflow's status.
    pub fn guard_status(&self, guard: usize, now: Millis) -> GuardStatus {
        let g = &self.guards[guard];
        let (verdicts, _) = self.assess_guard(guard, now);
        GuardStatus {
            workflow: g.workflow.clone(),
            mode: if g.state.read_only {
                Mode::ReadOnly
            } else {
                Mode::Full
            },
            since: rfc3339(g.state.since),
            samples: g.evidence.arm(0, Arm::Candidate).map_or(0, |a| a.tasks),
            guards: verdicts,
        }
    }

    /// Swaps in a new plan. Rollouts whose policy is unchanged keep their state and evidence;
    /// changed ones keep their state but start a new epoch, and get a `reconfigure` decision.
    pub fn reload(&self, plan: Arc<Plan>, now: Millis) -> (Engine, Vec<(usize, Decision)>) {
        let mut states = HashMap::new();
        for (i, r) in self.plan.rollouts.iter().enumerate() {
            states.insert(r.name.clone(), self.rollouts[i].state.clone());
        }
        let guard_states = self
            .guards
            .iter()
            .map(|g| (g.workflow.clone(), g.state.clone()))
            .collect();
        let mut next = Engine::new(plan.clone(), states, guard_states, now);
        let mut decisions = Vec::new();
        for (i, r) in plan.rollouts.iter().enumerate() {
            let Some(old) = self.rollout_index(&r.name) else {
                continue;
            };
            let old_plan = &self.plan.rollouts[old];
            if old_plan.policy_fingerprint() == r.policy_fingerprint()
                && old_plan.workflow == r.workflow
            {
                next.rollouts[i].evidence = self.rollouts[old].evidence.clone();
                next.rollouts[i].healthy_read_only = self.rollouts[old].healthy_read_only;
                continue;
            }
            let before = self.rollouts[old].state.clone();
            let mut after = before.clone();
            after.epoch += 1;
            if after.stage.is_some_and(|s| s >= r.stages.len()) {
                after.stage = Some(r.stages.len() - 1);
            }
            decisions.push((
                i,
                Decision {
                    action: Action::Reconfigure,
                    actor: Actor::Operator("config-reload".into()),
                    reason: "config reload changed this rollout's stages, gates or segments".into(),
                    trigger: None,
                    before,
                    after,
                    verdicts: Vec::new(),
                },
            ));
        }
        for (i, g) in next.guards.iter_mut().enumerate() {
            if let Some(old) = self.guard_index(&g.workflow) {
                let unchanged = self.guard_plan(old).map(|w| &w.guards)
                    == plan.workflow(&g.workflow).map(|w| &w.guards);
                if unchanged {
                    g.evidence = self.guards[old].evidence.clone();
                }
            }
            let _ = i;
        }
        (next, decisions)
    }

    pub fn rollout_plan(&self, rollout: usize) -> &RolloutPlan {
        &self.plan.rollouts[rollout]
    }
}

/// A stored stage index past the end of a config that now has fewer stages means its last stage.
fn clamp_stage(mut state: RolloutState, stages: usize) -> RolloutState {
    if state.stage.is_some_and(|s| s >= stages) {
        state.stage = stages.checked_sub(1);
    }
    state
}

/// Whether a read-only candidate task was healthy: no fallback, no rejected review, and every
/// reported signal within each absolute `min`/`max` the rollout's gates put on it.
fn is_healthy(gates: &[crate::gate::GateSpec], event: &TaskEvent) -> bool {
    if event.fallback == Some(true) || event.review == Some(Review::Rejected) {
        return false;
    }
    gates.iter().all(|g| {
        let Some(x) = event.observation(&g.signal) else {
            return true;
        };
        if g.signal.is_rate() {
            return true;
        }
        g.checks.iter().all(|c| match *c {
            Check::Max(m) => x <= m,
            Check::Min(m) => x >= m,
            _ => true,
        })
    })
}

/// A guard's state change.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardDecision {
    pub action: Action,
    pub actor: Actor,
    pub reason: String,
    pub after: GuardState,
    pub verdicts: Vec<GateVerdict>,
}

/// `GET /v1/rollouts/{name}`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    pub name: String,
    pub workflow: String,
    pub baseline: String,
    pub candidate: String,
    #[serde(flatten)]
    pub view: StateView,
    pub stage_started: String,
    pub stages: Vec<String>,
    pub max_narrows: u32,
    pub confidence: f64,
    pub candidate_samples: u64,
    pub min_samples: u64,
    pub min_duration: String,
    pub waiting: Option<String>,
    pub next_decision: Option<Action>,
    pub reenable: Option<ReenableStatus>,
    pub segments: Vec<SegmentSamples>,
    pub gates: Vec<GateVerdict>,
    pub config_hash: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReenableStatus {
    pub since: String,
    pub cause: Action,
    pub healthy_read_only: u64,
    /// What a resume would still lack (assuming `ack` is given).
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentSamples {
    pub segment: String,
    pub baseline_tasks: u64,
    pub candidate_tasks: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GuardStatus {
    pub workflow: String,
    pub mode: Mode,
    pub since: String,
    pub samples: u64,
    pub guards: Vec<GateVerdict>,
}

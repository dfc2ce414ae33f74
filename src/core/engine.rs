//! The decision core as one value: the plan, every rollout's state and evidence.
//!
//! [`Engine`] routes events to evidence, assesses rollouts, applies decisions, and renders the
//! routing snapshot and status views. It does no I/O and never reads a clock: `serve` wraps it
//! in the async shell (`server`), `simulate` drives it on a virtual clock. Guards on workflows
//! without a rollout are handled here too, as a single-arm scope.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::core::assign::{RolloutParts, Routing, WorkflowRoute};
use crate::core::clock::{Millis, human_duration, rfc3339};
use crate::core::event::{Mode, Review, TaskEvent};
use crate::core::evidence::{Arm, ArmEvidence, Checkpoint, Evidence, SourcedAs, Tracked};
use crate::core::gate::{GateInput, GateVerdict, Verdict, evaluate};
use crate::core::receipt::{Receipt, StateView};
use crate::core::rollout::{
    Actor, Assessment, Command, Decision, Phase, Proof, Refusal, RolloutState, assess,
    missing_proof, operate, verdicts,
};
use crate::core::route_table::{RouteTable, Target};
use crate::core::source::{self, SourceAnswer, SourceFault, SourceJob};
use crate::plan::Action;
use crate::plan::{Check, Signal, Stat};
use crate::plan::{
    Plan, RolloutPlan, SignalSource, WorkflowPlan, policy_diff, term_resets_evidence,
};

/// The sample count guards' sequential tests are tuned for.
const GUARD_DESIGN_SAMPLES: f64 = 500.0;

/// One rollout's live state: durable state plus the current epoch's evidence.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub state: RolloutState,
    pub evidence: Evidence,
    /// Healthy candidate tasks run in read-only mode this epoch (for the re-enable rule).
    pub healthy_read_only: u64,
    /// Evidence changed since the last checkpoint.
    pub dirty: bool,
    /// Decisions applied to this rollout by this engine: verdicts computed at one revision are
    /// stale at another.
    pub revision: u64,
    /// Listed in the engine's rollouts with deferred tasks (see [`Engine::defer_routed`]).
    deferring: bool,
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
    /// Evidence changed since the last checkpoint.
    pub dirty: bool,
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
    /// The scope and epoch stored with the event so a restart can replay it. The name is
    /// shared with the engine's index, so naming an event's scope allocates nothing.
    pub fn scope(&self, engine: &Engine) -> Option<(Arc<str>, u64)> {
        match *self {
            Route::Rollout { rollout, epoch, .. } => engine
                .index
                .rollout_scopes
                .get(rollout)
                .map(|s| (Arc::clone(s), epoch)),
            Route::Guard { guard, epoch } => engine
                .index
                .guard_scopes
                .get(guard)
                .map(|s| (Arc::clone(s), epoch)),
            Route::Untracked => None,
        }
    }
}

/// Whether an event's evidence is added now or may be held back (see [`Engine::defer_routed`]).
#[derive(Debug, Clone, Copy)]
enum Timing {
    Now,
    Deferred,
}

/// The decision core.
#[derive(Debug, Clone)]
pub struct Engine {
    pub plan: Arc<Plan>,
    pub rollouts: Vec<Runtime>,
    pub guards: Vec<GuardRuntime>,
    /// Bumped by every config change: a [`Route`] (which holds indices) computed under an
    /// older generation must be computed again before it is recorded.
    pub generation: u64,
    /// Every stored event with a sequence number up to this one has been recorded (or was
    /// outside its scope's current epoch): the watermark checkpoints carry.
    pub recorded_seq: u64,
    /// Rollouts whose evidence may hold deferred tasks (see [`Engine::defer_routed`]).
    deferred: Vec<usize>,
    /// Lookups by name, built with the engine (its plan never changes after).
    index: Arc<Index>,
}

/// The scope a workflow guard's events, state and checkpoints are stored under.
pub fn guard_scope(workflow: &str) -> String {
    format!("workflow:{workflow}")
}

/// Routing an event or naming a rollout is a hash lookup, not a scan of every workflow and
/// rollout: at a thousand rollouts the scans were most of the ingest path.
#[derive(Debug, Default)]
struct Index {
    /// Workflow name → its position in the plan, its rollout's, its guard's. Keyed by the
    /// config's names only, so a fast unkeyed hash is safe (an event's name can only miss).
    workflows: FxHashMap<String, (usize, Option<usize>, Option<usize>)>,
    rollouts: FxHashMap<String, usize>,
    /// Each known workflow and version's target: what routing an event looks up.
    routes: RouteTable,
    /// The scope name each rollout's and each guard's events are stored under, by position.
    rollout_scopes: Vec<Arc<str>>,
    guard_scopes: Vec<Arc<str>>,
}

impl Index {
    fn build(plan: &Plan, guards: &[GuardRuntime]) -> Index {
        let mut workflows: FxHashMap<String, (usize, Option<usize>, Option<usize>)> = plan
            .workflows
            .iter()
            .enumerate()
            .map(|(i, w)| (w.name.clone(), (i, None, None)))
            .collect();
        for (i, r) in plan.rollouts.iter().enumerate() {
            if let Some(entry) = workflows.get_mut(&r.workflow) {
                entry.1.get_or_insert(i);
            }
        }
        for (i, g) in guards.iter().enumerate() {
            if let Some(entry) = workflows.get_mut(&g.workflow) {
                entry.2.get_or_insert(i);
            }
        }
        let mut rollouts = FxHashMap::default();
        for (i, r) in plan.rollouts.iter().enumerate() {
            rollouts.entry(r.name.clone()).or_insert(i);
        }
        let routes = RouteTable::build(plan, workflows.values().copied());
        Index {
            workflows,
            rollouts,
            routes,
            rollout_scopes: plan
                .rollouts
                .iter()
                .map(|r| r.name.as_str().into())
                .collect(),
            guard_scopes: guards
                .iter()
                .map(|g| guard_scope(&g.workflow).into())
                .collect(),
        }
    }
}

/// The signals a rollout (or guard) keeps statistics for: every built-in one, plus custom
/// signals its gates name; histograms only where a gate asks for a quantile. A signal a metrics
/// source has is kept in the shape its queries give (`sourced`).
fn tracked(gates: &[crate::plan::GateSpec], sourced: &[SignalSource]) -> Vec<Tracked> {
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
            let mut limits: Vec<f64> = gates
                .iter()
                .filter(|g| g.signal == signal && crate::core::gate::bets_on(&g.signal, g.stat))
                .flat_map(|g| g.checks.iter())
                .filter(|c| !c.is_relative())
                .map(Check::threshold)
                .collect();
            limits.sort_by(f64::total_cmp);
            limits.dedup();
            let mut relative: Vec<Check> = Vec::new();
            for c in gates
                .iter()
                .filter(|g| g.signal == signal && crate::core::gate::bets_on(&g.signal, g.stat))
                .flat_map(|g| g.checks.iter())
                .filter(|c| c.is_relative())
            {
                if !relative.contains(c) {
                    relative.push(*c);
                }
            }
            let mut quantile_limits: Vec<(f64, f64, bool)> = Vec::new();
            for g in gates.iter().filter(|g| g.signal == signal) {
                if let Stat::Quantile(q) = g.stat {
                    for c in &g.checks {
                        let entry = match *c {
                            Check::Max(l) => (q, l, false),
                            Check::Min(l) => (q, l, true),
                            _ => continue,
                        };
                        if !quantile_limits.contains(&entry) {
                            quantile_limits.push(entry);
                        }
                    }
                }
            }
            let shape = sourced
                .iter()
                .find(|s| s.signal == signal)
                .map(|s| SourcedAs::of(&s.query));
            match shape {
                // Per-task pushes (a shuffled expansion of each count): every test applies.
                None | Some(SourcedAs::Counts) => Tracked {
                    signal,
                    histogram,
                    limits,
                    relative,
                    quantile_limits,
                    sourced: shape,
                },
                // Aggregates only: the confidence sequences on them, no per-task tests.
                Some(shape) => Tracked {
                    signal,
                    histogram: false,
                    limits: Vec::new(),
                    relative: Vec::new(),
                    quantile_limits: Vec::new(),
                    sourced: Some(shape),
                },
            }
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
                evidence: Evidence::new(
                    tracked(&r.gates, &r.sourced),
                    r.segments.len(),
                    r.design_samples(),
                ),
                healthy_read_only: 0,
                dirty: true,
                revision: 0,
                deferring: false,
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
                evidence: Evidence::new(tracked(&w.guards, &[]), 1, GUARD_DESIGN_SAMPLES),
                dirty: true,
            })
            .collect::<Vec<_>>();
        let index = Arc::new(Index::build(&plan, &guards));
        Engine {
            plan,
            rollouts,
            guards,
            generation: 0,
            recorded_seq: 0,
            deferred: Vec::new(),
            index,
        }
    }

    pub fn rollout_index(&self, name: &str) -> Option<usize> {
        self.index.rollouts.get(name).copied()
    }

    pub fn guard_index(&self, workflow: &str) -> Option<usize> {
        self.index.workflows.get(workflow).and_then(|e| e.2)
    }

    fn guard_plan(&self, guard: usize) -> Option<&WorkflowPlan> {
        self.plan.workflow(&self.guards[guard].workflow)
    }

    /// Checks an event against the plan and finds where its evidence goes.
    pub fn route(&self, event: &TaskEvent) -> Result<Route, String> {
        self.locate(event).1
    }

    /// [`Engine::route`], with the position in the plan of the event's workflow (`None` for one
    /// the plan does not know), from the same lookup.
    pub fn locate(&self, event: &TaskEvent) -> (Option<usize>, Result<Route, String>) {
        let Some((workflow, target)) = self.index.routes.get(&event.workflow, &event.version)
        else {
            // Not a workflow and version of the plan: the lookups by name say which is unknown.
            return self.locate_by_name(event);
        };
        let route = self.check_ranges(event).map(|()| match *target {
            Target::Rollout {
                rollout,
                arm,
                ref segments,
            } => match self.index.routes.segment(segments, |k| event.attribute(k)) {
                Some(segment) => Route::Rollout {
                    rollout,
                    segment,
                    arm,
                    epoch: self.rollouts[rollout].state.epoch,
                },
                None => Route::Untracked,
            },
            Target::Guard { guard } => Route::Guard {
                guard,
                epoch: self.guards[guard].state.epoch,
            },
            Target::Untracked => Route::Untracked,
        });
        (Some(workflow), route)
    }

    /// [`Engine::locate`] by looking up the workflow, then its version, rollout and segments,
    /// in the plan: for an event the route table does not know (the error names what is
    /// unknown), and the reference the table is tested against.
    fn locate_by_name(&self, event: &TaskEvent) -> (Option<usize>, Result<Route, String>) {
        match self.index.workflows.get(event.workflow.as_str()).copied() {
            None => (None, Err(format!("unknown workflow `{}`", event.workflow))),
            Some((workflow, rollout, guard)) => (
                Some(workflow),
                self.route_known(event, workflow, rollout, guard),
            ),
        }
    }

    /// Routes an event of workflow `workflow` (its position), whose rollout and guard are
    /// `rollout` and `guard`.
    fn route_known(
        &self,
        event: &TaskEvent,
        workflow: usize,
        rollout: Option<usize>,
        guard: Option<usize>,
    ) -> Result<Route, String> {
        let workflow = &self.plan.workflows[workflow];
        if !workflow.versions.iter().any(|v| *v == event.version) {
            return Err(format!(
                "unknown version `{}` of workflow `{}`",
                event.version, event.workflow
            ));
        }
        self.check_ranges(event)?;
        if let Some(rollout) = rollout {
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
        match guard {
            Some(guard) if event.version == workflow.stable => Ok(Route::Guard {
                guard,
                epoch: self.guards[guard].state.epoch,
            }),
            _ => Ok(Route::Untracked),
        }
    }

    /// Every reported numeric signal must lie in its plausible range (`signals.NAME.range`).
    fn check_ranges(&self, event: &TaskEvent) -> Result<(), String> {
        let ranges = &self.plan.ranges;
        ranges.check_numeric([event.quality, event.latency_ms, event.cost_usd])?;
        for (name, &x) in &event.signals {
            ranges.check_custom(name, x)?;
        }
        Ok(())
    }

    /// Records an event routed as `route` under `generation` into `scope`, as the recorder
    /// does: a route from before a config change is computed again, and recorded only if it
    /// still names the same scope and epoch; and a rollout's evidence holds the task back (see
    /// [`Evidence::defer`]) until [`Engine::apply_deferred`], or until enough of its tasks
    /// wait. Whoever reads evidence applies them first.
    pub fn defer_routed(
        &mut self,
        route: &Route,
        generation: u64,
        scope: (&str, u64),
        event: &TaskEvent,
    ) {
        if generation == self.generation {
            self.add(route, event, Timing::Deferred);
        } else if let Ok(fresh) = self.route(event) {
            if fresh
                .scope(self)
                .is_some_and(|(name, epoch)| *name == *scope.0 && epoch == scope.1)
            {
                self.add(&fresh, event, Timing::Deferred);
            }
        }
    }

    /// Applies every rollout's deferred tasks (see [`Engine::defer_routed`]).
    pub fn apply_deferred(&mut self) {
        for index in std::mem::take(&mut self.deferred) {
            if let Some(rt) = self.rollouts.get_mut(index) {
                rt.evidence.apply_deferred();
                rt.deferring = false;
            }
        }
    }

    /// Whether some rollout's evidence may hold deferred tasks.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// The scope name and epoch of every rollout and guard, for start-up's replay.
    pub fn scopes(&self) -> Vec<(String, u64)> {
        let rollouts = self
            .plan
            .rollouts
            .iter()
            .zip(&self.rollouts)
            .map(|(r, rt)| (r.name.clone(), rt.state.epoch));
        let guards = self
            .guards
            .iter()
            .map(|g| (guard_scope(&g.workflow), g.state.epoch));
        rollouts.chain(guards).collect()
    }

    /// Restores a scope's evidence from its checkpoint, if the checkpoint is of the scope's
    /// current epoch and shape; returns whether it was used.
    pub fn restore(&mut self, scope: &str, checkpoint: Checkpoint) -> bool {
        if let Some(name) = scope.strip_prefix("workflow:") {
            if let Some(g) = self.guard_index(name).map(|i| &mut self.guards[i]) {
                if g.state.epoch == checkpoint.epoch
                    && g.evidence.tracked == checkpoint.evidence.tracked
                    && g.evidence.cells.len() == checkpoint.evidence.cells.len()
                {
                    g.evidence = checkpoint.evidence;
                    return true;
                }
            }
            return false;
        }
        let Some(i) = self.rollout_index(scope) else {
            return false;
        };
        let rt = &mut self.rollouts[i];
        if rt.state.epoch == checkpoint.epoch
            && rt.evidence.tracked == checkpoint.evidence.tracked
            && rt.evidence.cells.len() == checkpoint.evidence.cells.len()
        {
            rt.evidence = checkpoint.evidence;
            rt.healthy_read_only = checkpoint.healthy_read_only;
            rt.dirty = false;
            return true;
        }
        false
    }

    /// Marks a scope's evidence as not yet checkpointed.
    pub fn mark_dirty(&mut self, scope: &str) {
        if let Some(name) = scope.strip_prefix("workflow:") {
            if let Some(i) = self.guard_index(name) {
                self.guards[i].dirty = true;
            }
        } else if let Some(i) = self.rollout_index(scope) {
            self.rollouts[i].dirty = true;
        }
    }

    /// Checkpoints of every scope whose evidence changed since the last call.
    pub fn take_checkpoints(&mut self) -> Vec<(String, Checkpoint)> {
        let mut out: Vec<_> = (0..self.rollouts.len())
            .filter_map(|i| self.take_checkpoint(i))
            .collect();
        out.extend(self.take_guard_checkpoints());
        out
    }

    /// Rollout `index`'s checkpoint if its evidence changed since the last one, at the
    /// current watermark.
    pub fn take_checkpoint(&mut self, index: usize) -> Option<(String, Checkpoint)> {
        let seq = self.recorded_seq;
        let (r, rt) = (
            self.plan.rollouts.get(index)?,
            self.rollouts.get_mut(index)?,
        );
        rt.evidence.apply_deferred();
        std::mem::take(&mut rt.dirty).then(|| {
            (
                r.name.clone(),
                Checkpoint {
                    epoch: rt.state.epoch,
                    seq,
                    healthy_read_only: rt.healthy_read_only,
                    evidence: rt.evidence.clone(),
                },
            )
        })
    }

    /// Moves `scope`'s evidence out, as the checkpoint of its current epoch, leaving it none:
    /// for an engine about to be replaced by one that [`Engine::restore`]s it.
    pub fn take_evidence(&mut self, scope: &str) -> Option<Checkpoint> {
        let seq = self.recorded_seq;
        if let Some(workflow) = scope.strip_prefix("workflow:") {
            let index = self.guard_index(workflow)?;
            let g = &mut self.guards[index];
            return Some(Checkpoint {
                epoch: g.state.epoch,
                seq,
                healthy_read_only: 0,
                evidence: std::mem::take(&mut g.evidence),
            });
        }
        let index = self.rollout_index(scope)?;
        let rt = &mut self.rollouts[index];
        rt.evidence.apply_deferred();
        Some(Checkpoint {
            epoch: rt.state.epoch,
            seq,
            healthy_read_only: rt.healthy_read_only,
            evidence: std::mem::take(&mut rt.evidence),
        })
    }

    /// The guarded workflows' checkpoints whose evidence changed since the last ones.
    pub fn take_guard_checkpoints(&mut self) -> Vec<(String, Checkpoint)> {
        let seq = self.recorded_seq;
        let mut out = Vec::new();
        for g in &mut self.guards {
            if std::mem::take(&mut g.dirty) {
                out.push((
                    guard_scope(&g.workflow),
                    Checkpoint {
                        epoch: g.state.epoch,
                        seq,
                        healthy_read_only: 0,
                        evidence: g.evidence.clone(),
                    },
                ));
            }
        }
        out
    }

    /// Adds an event to evidence if its epoch is still the current one.
    pub fn record(&mut self, route: &Route, event: &TaskEvent) {
        self.add(route, event, Timing::Now);
    }

    fn add(&mut self, route: &Route, event: &TaskEvent, timing: Timing) {
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
                match timing {
                    Timing::Now => rt.evidence.record(segment, arm, event),
                    Timing::Deferred => {
                        if rt.evidence.defer(segment, arm, event) && !rt.deferring {
                            rt.deferring = true;
                            self.deferred.push(rollout);
                        }
                    }
                }
                rt.dirty = true;
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
                    g.dirty = true;
                }
            }
            Route::Untracked => {}
        }
    }

    /// The metrics-source queries every rollout's current epoch needs at `now`.
    pub fn source_jobs(&self, now: Millis) -> Vec<SourceJob> {
        self.plan
            .rollouts
            .iter()
            .zip(&self.rollouts)
            .flat_map(|(plan, rt)| source::jobs(plan, &rt.state, now))
            .collect()
    }

    /// One round of source answers: each answered rollout's faults are replaced by this
    /// round's, readings are added to the current epochs (answers for an older epoch are
    /// dropped). Returns every fault, with its source, for the error counters.
    pub fn absorb_answers(&mut self, answers: &[SourceAnswer]) -> Vec<(String, SourceFault)> {
        let mut faults = Vec::new();
        let mut cleared = Vec::new();
        for answer in answers {
            let job = &answer.job;
            let Some(r) = self.rollout_index(&job.rollout) else {
                continue;
            };
            let plan = &self.plan.rollouts[r];
            let Some(src) = plan.source_of(&job.signal) else {
                continue;
            };
            let range = self.plan.ranges.range(&job.signal);
            let rt = &mut self.rollouts[r];
            if rt.state.epoch != job.epoch {
                continue;
            }
            if !cleared.contains(&r) {
                rt.evidence.faults.clear();
                cleared.push(r);
            }
            let outcome = source::reading(answer, src.unit)
                .and_then(|reading| source::absorb(&mut rt.evidence, job, src, &reading, range));
            match outcome {
                Ok(()) => rt.dirty = true,
                Err(fault) => {
                    let arm = match job.arm {
                        Arm::Baseline => "baseline",
                        Arm::Candidate => "candidate",
                    };
                    rt.evidence.faults.insert(
                        (job.segment, job.signal.name().to_string()),
                        format!(
                            "source `{}` ({arm} {}): {}",
                            job.source, job.version, fault.message
                        ),
                    );
                    faults.push((job.source.clone(), fault));
                }
            }
        }
        faults
    }

    /// Assesses one rollout at `now`.
    pub fn assess(&self, rollout: usize, now: Millis) -> Assessment {
        let rt = &self.rollouts[rollout];
        assess(&self.plan.rollouts[rollout], &rt.state, &rt.evidence, now)
    }

    /// Decides an operator's command on a rollout; `unreviewed_affected` counts the open
    /// containment's affected items not yet tagged safe or wrong (the store knows them).
    pub fn operate(
        &self,
        rollout: usize,
        actor: &str,
        command: &Command,
        unreviewed_affected: u64,
        now: Millis,
    ) -> Result<Decision, Refusal> {
        let rt = &self.rollouts[rollout];
        let plan = &self.plan.rollouts[rollout];
        let evidence = verdicts(plan, &rt.state, &rt.evidence);
        let proof = Proof {
            healthy_read_only: rt.healthy_read_only,
            unreviewed_affected,
        };
        operate(plan, &rt.state, &proof, actor, command, evidence, now)
    }

    /// Applies a persisted decision; a new epoch starts fresh evidence.
    pub fn apply(&mut self, rollout: usize, decision: &Decision) {
        let rt = &mut self.rollouts[rollout];
        if decision.after.epoch != rt.state.epoch {
            rt.evidence = rt
                .evidence
                .fresh(self.plan.rollouts[rollout].design_samples());
            rt.healthy_read_only = 0;
            rt.dirty = true;
        }
        rt.state = decision.after.clone();
        rt.revision += 1;
    }

    /// Whether a decision computed earlier (by a tick that ran while commands were served)
    /// still applies: its subject is still in the state it was decided from. A command in
    /// between makes it stale, and the next tick assesses again. Indexes are only meaningful
    /// within one [`Engine::generation`]; the caller checks that.
    pub fn still_due(&self, pending: &Pending) -> bool {
        match pending {
            Pending::Rollout { index, decision } => self
                .rollouts
                .get(*index)
                .is_some_and(|rt| rt.state == decision.before),
            Pending::Guard { index, decision } => self
                .guards
                .get(*index)
                .is_some_and(|g| g.state.epoch + 1 == decision.after.epoch),
        }
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
                    design_samples: GUARD_DESIGN_SAMPLES,
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
            g.evidence = g.evidence.fresh(GUARD_DESIGN_SAMPLES);
            g.dirty = true;
        }
        g.state = decision.after.clone();
    }

    /// The receipt for a guard decision.
    pub fn guard_receipt(&self, guard: usize, decision: &GuardDecision, now: Millis) -> Receipt {
        let g = &self.guards[guard];
        let view = |s: &GuardState| {
            let phase = if s.read_only {
                Phase::ReadOnly
            } else {
                Phase::Progressing
            };
            StateView::bare(phase, None, s.read_only, 0, s.epoch)
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
            changes: Vec::new(),
            lane: crate::core::receipt::LaneView {
                owner: String::new(),
                affected_systems: Vec::new(),
                notify: Vec::new(),
                repair: "re-enable with POST /v1/workflows/{name}/resume once the stable version is healthy".into(),
            },
            idempotency_key: None,
            decider: None,
        }
    }

    /// The routing snapshot for assignment.
    pub fn routing(&self) -> Routing {
        Routing::new(
            (0..self.plan.workflows.len())
                .map(|w| Arc::new(self.workflow_route(w)))
                .collect(),
            Arc::clone(self.index.routes.segments()),
        )
    }

    /// The position in the plan of the workflow rollout `rollout` (or guard `guard`) runs on.
    pub fn workflow_position(&self, workflow: &str) -> Option<usize> {
        self.index.workflows.get(workflow).map(|e| e.0)
    }

    /// What assignment needs of workflow `w` (its position in the plan): its versions, the
    /// guard's mode, and its rollout's shares per segment.
    pub fn workflow_route(&self, w: usize) -> WorkflowRoute {
        let w = &self.plan.workflows[w];
        let index = |v: &str| w.versions.iter().position(|x| x == v).unwrap_or(0);
        let entry = self.index.workflows.get(&w.name).copied();
        let rollout = entry.and_then(|e| e.1).map(|i| {
            let (plan, state) = (&self.plan.rollouts[i], &self.rollouts[i].state);
            RolloutParts {
                name: &plan.name,
                stage: state.stage_name(plan),
                baseline: index(&plan.baseline),
                candidate: index(&plan.candidate),
                segments: self.index.routes.rollout_segments(i).into(),
                weights_bps: (0..plan.segments.len())
                    .map(|s| state.weight_bps(plan, s))
                    .collect(),
                phase: state.phase,
                candidate_mode: if state.read_only {
                    Mode::ReadOnly
                } else {
                    Mode::Full
                },
                read_only_segments: plan
                    .segments
                    .iter()
                    .map(|s| state.read_only_segments.contains(&s.name))
                    .collect(),
                fallback: state
                    .fallback
                    .as_deref()
                    .filter(|_| state.phase == Phase::Fallback)
                    .map(index),
            }
        });
        let guarded = entry
            .and_then(|e| e.2)
            .is_some_and(|g| self.guards[g].state.read_only);
        WorkflowRoute::new(
            &w.name,
            &w.versions,
            index(&w.stable),
            if guarded { Mode::ReadOnly } else { Mode::Full },
            rollout,
        )
    }

    /// A rollout's status: state, weights, verdicts with their numbers, and what it waits for.
    pub fn status(&self, rollout: usize, now: Millis) -> RolloutStatus {
        let (plan, rt) = (&self.plan.rollouts[rollout], &self.rollouts[rollout]);
        let assessment = self.assess(rollout, now);
        let stage = rt.state.stage.and_then(|s| plan.stages.get(s));
        let reenable = rt.state.reenable.as_ref().map(|due| ReenableStatus {
            since: rfc3339(due.since),
            cause: due.cause,
            ack_required: plan.lane.reenable.ack,
            cooldown_ends: rfc3339(due.since.saturating_add(plan.lane.reenable.cooldown)),
            healthy_read_only: rt.healthy_read_only,
            healthy_read_only_required: plan.lane.reenable.healthy_read_only_samples,
            missing: missing_proof(
                plan,
                rt.state.phase,
                due,
                true,
                &Proof {
                    healthy_read_only: rt.healthy_read_only,
                    unreviewed_affected: 0,
                },
                now,
            ),
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
                    baseline_tasks: rt
                        .evidence
                        .arm(i, Arm::Baseline)
                        .map_or(0, ArmEvidence::task_count),
                    candidate_tasks: rt
                        .evidence
                        .arm(i, Arm::Candidate)
                        .map_or(0, ArmEvidence::task_count),
                })
                .collect(),
            holding: holding(plan, rt, &assessment.verdicts, now),
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

    /// Builds the engine for a new `plan` — after a reload (`previous` is the running engine)
    /// or at start-up (`previous` is `None`) — and every decision that takes it there, by one
    /// set of rules:
    /// - a rollout whose stored policy equals the new one keeps its state and evidence, with
    ///   no receipt;
    /// - one whose policy changed gets a `reconfigure` decision listing every change; it keeps
    ///   its evidence unless a change alters what evidence means ([`term_resets_evidence`]);
    /// - a rollout new to the config starts at its first stage (receipted);
    /// - a rollout removed from the config keeps its state under its name as `dormant`
    ///   (receipted), and a re-added one resumes from it — containment and re-enable debt
    ///   included. Removing a contained rollout needs `force`.
    ///
    /// `stored` holds the store's states: at start-up every one, on reload at least those of
    /// rollouts the running engine does not have.
    pub fn reconcile(
        previous: Option<&Engine>,
        plan: Arc<Plan>,
        stored: &HashMap<String, RolloutState>,
        stored_guards: &HashMap<String, GuardState>,
        force: bool,
        now: Millis,
    ) -> Result<Reconciliation, Refusal> {
        let current = |name: &str| -> Option<&RolloutState> {
            if let Some(prev) = previous {
                if let Some(i) = prev.rollout_index(name) {
                    return Some(&prev.rollouts[i].state);
                }
            }
            stored.get(name)
        };
        // Rollouts leaving the config.
        let mut leaving: Vec<(String, RolloutState)> = match previous {
            Some(prev) => prev
                .plan
                .rollouts
                .iter()
                .zip(&prev.rollouts)
                .map(|(r, rt)| (r.name.clone(), rt.state.clone()))
                .collect(),
            None => stored
                .iter()
                .filter(|(_, s)| !s.dormant)
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect(),
        };
        leaving.retain(|(name, _)| plan.rollout(name).is_none());
        leaving.sort_by(|a, b| a.0.cmp(&b.0));
        let contained: Vec<String> = leaving
            .iter()
            .filter(|(_, s)| s.is_contained())
            .map(|(n, s)| format!("{n} ({})", s.phase.name()))
            .collect();
        if !contained.is_empty() && !force {
            return Err(Refusal::RemovesContained(contained));
        }
        let mut states = HashMap::new();
        let mut decisions = Vec::new();
        for (i, r) in plan.rollouts.iter().enumerate() {
            let terms = r.policy_terms();
            let stage_of = |s: &RolloutState| clamp_stage(s.clone(), r.stages.len());
            let before = match current(&r.name) {
                Some(state) => state.clone(),
                None => {
                    let mut after = RolloutState::initial(now);
                    after.policy = terms;
                    let first = r.stages.first().map_or("", |s| s.name.as_str());
                    decisions.push((
                        i,
                        reconfigure(
                            RolloutState::initial(now),
                            after.clone(),
                            format!("added to the config; starts at stage {first}"),
                            Vec::new(),
                        ),
                    ));
                    states.insert(r.name.clone(), after);
                    continue;
                }
            };
            let diff = policy_diff(&before.policy, &terms);
            let mut after = stage_of(&before);
            after.policy = terms;
            if before.dormant {
                after.dormant = false;
                after.new_epoch(now);
                let stage = after.stage_name(r).unwrap_or("none");
                let mut changes = vec![format!(
                    "re-added to the config; resumes its stored state: {}, stage {stage}",
                    after.phase.name()
                )];
                changes.extend(diff.into_iter().map(|(_, line)| line));
                decisions.push((
                    i,
                    reconfigure(
                        before,
                        after.clone(),
                        "re-added to the config; resumes from its stored state".into(),
                        changes,
                    ),
                ));
            } else if before.policy.is_empty() {
                // A state stored before policies were recorded: its policy is unknown.
                after.new_epoch(now);
                decisions.push((
                    i,
                    reconfigure(
                        before,
                        after.clone(),
                        "the stored state had no policy record; recorded the config's".into(),
                        Vec::new(),
                    ),
                ));
            } else if !diff.is_empty() {
                let resets = diff.iter().any(|(key, _)| term_resets_evidence(key));
                if resets {
                    after.new_epoch(now);
                }
                let reason = if resets {
                    "the config changed this rollout's policy; evidence restarts (a new epoch)"
                } else {
                    "the config changed this rollout's policy; evidence is kept"
                };
                decisions.push((
                    i,
                    reconfigure(
                        before,
                        after.clone(),
                        reason.into(),
                        diff.into_iter().map(|(_, line)| line).collect(),
                    ),
                ));
            }
            states.insert(r.name.clone(), after);
        }
        let mut guard_states: HashMap<String, GuardState> = stored_guards.clone();
        if let Some(prev) = previous {
            for g in &prev.guards {
                guard_states.insert(g.workflow.clone(), g.state.clone());
            }
        }
        // The engine starts from the states *before* the decisions: applying each persisted
        // decision moves it on (and starts fresh evidence where the epoch changed).
        let mut starting = states.clone();
        for (i, d) in &decisions {
            starting.insert(plan.rollouts[*i].name.clone(), d.before.clone());
        }
        let engine = Engine::new(plan.clone(), starting, guard_states, now);
        let removed = leaving
            .into_iter()
            .map(|(name, before)| {
                let mut after = before.clone();
                after.dormant = true;
                let changes = vec![format!(
                    "removed from the config while {}; its state, receipts and re-enable debt are kept and return if it is added again",
                    before.phase.name()
                )];
                let reason = if before.is_contained() {
                    "removed from the config with force while contained".to_string()
                } else {
                    "removed from the config".to_string()
                };
                (name, reconfigure(before, after, reason, changes))
            })
            .collect();
        Ok(Reconciliation {
            engine,
            decisions,
            removed,
        })
    }

    /// Takes over `previous`'s live evidence for every rollout (and guard) whose epoch did not
    /// change: called when swapping in a reconciled engine, after its decisions are applied,
    /// so events recorded while the decisions were persisted are not lost.
    pub fn carry_evidence(&mut self, previous: &Engine) {
        self.generation = previous.generation + 1;
        self.recorded_seq = previous.recorded_seq;
        for (i, r) in self.plan.rollouts.iter().enumerate() {
            if let Some(old) = previous.rollout_index(&r.name) {
                let prev = &previous.rollouts[old];
                if prev.state.epoch == self.rollouts[i].state.epoch
                    && prev.evidence.cells.len() == r.segments.len()
                {
                    self.rollouts[i].evidence = prev.evidence.clone();
                    // Whatever `previous` still deferred: this engine does not list it.
                    self.rollouts[i].evidence.apply_deferred();
                    self.rollouts[i].healthy_read_only = prev.healthy_read_only;
                    self.rollouts[i].dirty = prev.dirty;
                }
            }
        }
        for g in self.guards.iter_mut() {
            if let Some(old) = previous.guard_index(&g.workflow) {
                let unchanged = previous.guard_plan(old).map(|w| &w.guards)
                    == self.plan.workflow(&g.workflow).map(|w| &w.guards);
                if unchanged && previous.guards[old].state.epoch == g.state.epoch {
                    g.evidence = previous.guards[old].evidence.clone();
                }
            }
        }
    }

    /// The receipt for a rollout that left the config, from its stored policy terms.
    pub fn removal_receipt(&self, name: &str, decision: &Decision, now: Millis) -> Receipt {
        let terms = &decision.before.policy;
        let term = |k: &str| terms.get(k).cloned().unwrap_or_default();
        let view = |s: &RolloutState| StateView {
            fallback: s.fallback.clone(),
            ..StateView::bare(s.phase, s.stage, s.read_only, s.narrows, s.epoch)
        };
        Receipt {
            id: String::new(),
            at: rfc3339(now),
            at_ms: now,
            rollout: name.to_string(),
            workflow: term("workflow"),
            action: decision.action,
            actor: decision.actor.clone(),
            reason: decision.reason.clone(),
            trigger: None,
            before: view(&decision.before),
            after: view(&decision.after),
            evidence: Vec::new(),
            confidence: term("confidence").parse().unwrap_or(0.0),
            config_hash: self.plan.hash.clone(),
            previous_config_hash: None,
            changes: decision.changes.clone(),
            lane: crate::core::receipt::LaneView {
                owner: term("lane.owner"),
                affected_systems: Vec::new(),
                notify: Vec::new(),
                repair: term("lane.repair"),
            },
            idempotency_key: None,
            decider: None,
        }
    }

    pub fn rollout_plan(&self, rollout: usize) -> &RolloutPlan {
        &self.plan.rollouts[rollout]
    }
}

/// What a config change does: the new engine (in the states *before* `decisions`, which
/// the shell persists and then applies), and the final decisions of rollouts that left.
pub struct Reconciliation {
    pub engine: Engine,
    pub decisions: Vec<(usize, Decision)>,
    pub removed: Vec<(String, Decision)>,
}

fn reconfigure(
    before: RolloutState,
    after: RolloutState,
    reason: String,
    changes: Vec<String>,
) -> Decision {
    Decision {
        action: Action::Reconfigure,
        actor: Actor::Operator("config".into()),
        reason,
        trigger: None,
        before,
        after,
        verdicts: Vec::new(),
        changes,
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
fn is_healthy(gates: &[crate::plan::GateSpec], event: &TaskEvent) -> bool {
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

/// A decision on one of the engine's subjects — a rollout or a guarded workflow — before it is
/// persisted and applied: what [`Engine::step`] and the operator paths return, and what the
/// controller commits, one path for both.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a handful per tick, each moved once into the commit"
)]
pub enum Pending {
    Rollout {
        index: usize,
        decision: Decision,
    },
    Guard {
        index: usize,
        decision: GuardDecision,
    },
}

/// The durable half of a pending decision: the subject's name and its state after.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per decision, moved once into the store's writer"
)]
pub enum StateChange {
    Rollout(String, RolloutState),
    Guard(String, GuardState),
}

impl Engine {
    /// Every automatic decision due at `now`: rollouts first, then guarded workflows.
    pub fn step(&self, now: Millis) -> Vec<Pending> {
        self.step_with_verdicts(now).0
    }

    /// [`Engine::step`], also returning every rollout's verdicts (by rollout index) so the
    /// tick computes each once and reuses it for metrics.
    pub fn step_with_verdicts(&self, now: Millis) -> (Vec<Pending>, Vec<Vec<GateVerdict>>) {
        let mut verdicts = Vec::with_capacity(self.rollouts.len());
        let mut pending = Vec::new();
        for index in 0..self.rollouts.len() {
            let (due, v) = self.step_rollout(index, now);
            pending.extend(due);
            verdicts.push(v);
        }
        pending.extend(self.step_guards(now));
        (pending, verdicts)
    }

    /// [`Engine::step`] for one rollout: its decision, if one is due, and its verdicts. The
    /// server steps rollouts one at a time, taking the engine lock for each alone.
    pub fn step_rollout(&self, index: usize, now: Millis) -> (Option<Pending>, Vec<GateVerdict>) {
        let a = self.assess(index, now);
        (
            a.decision
                .map(|decision| Pending::Rollout { index, decision }),
            a.verdicts,
        )
    }

    /// [`Engine::step`] for the guarded workflows.
    pub fn step_guards(&self, now: Millis) -> Vec<Pending> {
        (0..self.guards.len())
            .filter_map(|index| {
                self.assess_guard(index, now)
                    .1
                    .map(|decision| Pending::Guard { index, decision })
            })
            .collect()
    }

    /// The receipt a pending decision is persisted with (its id is set by the store).
    pub fn pending_receipt(&self, pending: &Pending, now: Millis) -> Receipt {
        match pending {
            Pending::Rollout { index, decision } => self.receipt(*index, decision, now),
            Pending::Guard { index, decision } => self.guard_receipt(*index, decision, now),
        }
    }

    /// What the store records for a pending decision.
    pub fn state_change(&self, pending: &Pending) -> StateChange {
        match pending {
            Pending::Rollout { index, decision } => StateChange::Rollout(
                self.plan.rollouts[*index].name.clone(),
                decision.after.clone(),
            ),
            Pending::Guard { index, decision } => {
                StateChange::Guard(self.guards[*index].workflow.clone(), decision.after.clone())
            }
        }
    }

    /// Applies a persisted pending decision.
    pub fn apply_pending(&mut self, pending: &Pending) {
        match pending {
            Pending::Rollout { index, decision } => self.apply(*index, decision),
            Pending::Guard { index, decision } => self.apply_guard(*index, decision),
        }
    }
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
    /// Every gate × segment not passing at this stage: what holds the rollout, how many more
    /// candidate tasks it needs at the effect seen so far, and when that is at today's traffic.
    pub holding: Vec<Holding>,
    pub gates: Vec<GateVerdict>,
    pub config_hash: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Holding {
    pub gate: String,
    pub segment: String,
    pub verdict: crate::core::gate::Verdict,
    pub candidate_samples: u64,
    /// `None`: at the effect seen so far it may never pass.
    pub samples_to_decide: Option<u64>,
    /// At the segment's candidate traffic since the stage began.
    pub eta: Option<String>,
    /// The same in words.
    pub why: String,
}

/// What holds a rollout at its stage: each gate × segment whose verdict is not `pass`.
fn holding(
    plan: &RolloutPlan,
    rt: &Runtime,
    verdicts: &[GateVerdict],
    now: Millis,
) -> Vec<Holding> {
    let elapsed = now.saturating_sub(rt.state.stage_started).max(1) as f64;
    verdicts
        .iter()
        .filter(|v| v.verdict != Verdict::Pass)
        .map(|v| {
            let segment_tasks = plan
                .segments
                .iter()
                .position(|s| s.name == v.segment)
                .and_then(|i| rt.evidence.arm(i, Arm::Candidate))
                .map_or(0, ArmEvidence::task_count);
            let per_ms = segment_tasks as f64 / elapsed;
            let eta = v
                .samples_to_decide
                .filter(|_| per_ms > 0.0 && v.verdict == Verdict::Inconclusive)
                .map(|n| human_duration((n as f64 / per_ms).ceil() as Millis));
            let unbounded = v.checks.iter().any(|c| {
                c.verdict == Verdict::Inconclusive
                    && c.samples_to_decide.is_none()
                    && c.margin_upper.is_none()
                    && c.margin_lower.is_some()
            });
            let why = match (v.verdict, v.samples_to_decide, &eta) {
                (Verdict::Fail, _, _) => "failing: its on_breach applies".to_string(),
                (_, Some(n), Some(eta)) => {
                    format!("needs ~{n} more candidate tasks: ~{eta} at this stage's traffic")
                }
                (_, Some(n), None) => format!("needs ~{n} more candidate tasks"),
                (_, None, _) if unbounded => {
                    "needs more candidate tasks before its confidence bound exists".to_string()
                }
                (_, None, _) => {
                    "at the effect seen so far it may never pass: the estimate is on the wrong side of the limit".to_string()
                }
            };
            Holding {
                gate: v.gate.clone(),
                segment: v.segment.clone(),
                verdict: v.verdict,
                candidate_samples: v.candidate.samples,
                samples_to_decide: v.samples_to_decide,
                eta,
                why,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct ReenableStatus {
    pub since: String,
    pub cause: Action,
    /// The lane's proof checklist: an acknowledgement, the cooldown's end, and the healthy
    /// read-only tasks probation must see (counted since probation began).
    pub ack_required: bool,
    pub cooldown_ends: String,
    pub healthy_read_only: u64,
    pub healthy_read_only_required: u64,
    /// What the next resume would still lack (assuming `ack` is given).
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::core::rollout::Command;

    const PLAN: &str = r#"
segments: { internal: { match: { team: [ops] } }, everyone: {} }
workflows:
  w0: { stable: v1, versions: [v1, v2] }
  w1: { stable: v1, versions: [v1, v2] }
  w2: { stable: v1, versions: [v1, v2] }
rollouts:
  - { name: r0, workflow: w0, baseline: v1, candidate: v2, segments: [internal, everyone],
      stages: [{ name: s1, traffic: { internal: 100, everyone: 30 } }, { name: s2, traffic: { internal: 100, everyone: 100 } }],
      gates: [{ signal: quality, stat: mean, min: 0.8, on_breach: rollback }], lane: { owner: o, repair: r } }
  - { name: r1, workflow: w1, baseline: v1, candidate: v2, segments: [internal, everyone],
      stages: [{ name: s1, traffic: { internal: 100, everyone: 30 } }, { name: s2, traffic: { internal: 100, everyone: 100 } }],
      gates: [{ signal: quality, stat: mean, min: 0.8, on_breach: rollback }], lane: { owner: o, repair: r } }
auth: { open: true }
"#;

    /// Every workflow's answer for a spread of subjects in both segments.
    fn answers(routing: &Routing) -> Vec<String> {
        let mut out = Vec::new();
        for w in ["w0", "w1", "w2"] {
            for k in 0..400 {
                for team in [Some("ops"), None] {
                    let subject = format!("s{k}");
                    let a = routing
                        .assign(w, Some(&subject), |key| {
                            (key == "team").then_some(team).flatten()
                        })
                        .expect("known workflow");
                    out.push(format!(
                        "{w} {subject} {team:?}: {} {} {:?} {:?}",
                        a.version,
                        a.mode.name(),
                        a.stage,
                        a.reason
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn the_route_table_routes_every_event_as_the_lookups_by_name_do() {
        let plan = Plan::parse(
            Path::new("t.yaml"),
            r#"
segments:
  internal: { match: { team: [ops] } }
  enterprise: { match: { tier: [enterprise, gold] } }
  everyone: {}
signals: { tokens: { range: [0, 10] } }
workflows:
  w0: { stable: v1, versions: [v1, v2, v3] }
  w1: { stable: v1, versions: [v1, v2] }
  w2: { stable: v1, versions: [v1, v2], guards: [{ signal: quality, stat: mean, min: 0.5 }] }
  w3: { stable: v1, versions: [v1] }
rollouts:
  - { name: r0, workflow: w0, baseline: v1, candidate: v2, segments: [internal, everyone],
      stages: [{ name: s1, traffic: { internal: 100, everyone: 30 } }],
      gates: [{ signal: quality, stat: mean, min: 0.8, on_breach: rollback }], lane: { owner: o, repair: r } }
  - { name: r1, workflow: w1, baseline: v1, candidate: v2, segments: [enterprise, internal],
      stages: [{ name: s1, traffic: { enterprise: 10, internal: 100 } }],
      gates: [{ signal: quality, stat: mean, min: 0.8, on_breach: rollback }], lane: { owner: o, repair: r } }
auth: { open: true }
"#,
        )
        .expect("valid plan");
        let engine = Engine::new(Arc::new(plan), Default::default(), Default::default(), 0);
        // Three segments, shared by both rollouts.
        assert_eq!(engine.index.routes.shared_segments(), 3);
        let mut routed = std::collections::BTreeSet::new();
        let mut checked = 0;
        for workflow in [
            "w0",
            "w1",
            "w2",
            "w3",
            "w9",
            "",
            "w0\u{0}v1",
            &"w".repeat(70),
        ] {
            for version in ["v1", "v2", "v3", "v9", "", "v1\u{0}", &"v".repeat(70)] {
                for attributes in [
                    "{}",
                    r#"{"team":"ops"}"#,
                    r#"{"tier":"gold"}"#,
                    r#"{"tier":"silver","team":"ops"}"#,
                    r#"{"tier":"enterprise","team":"dev"}"#,
                ] {
                    for signals in [
                        "",
                        r#","latency_ms":5000000"#,
                        r#","signals":{"tokens":11}"#,
                    ] {
                        let text = format!(
                            r#"{{"event_id":"e","workflow":{},"version":{},"attributes":{attributes}{signals}}}"#,
                            serde_json::json!(workflow),
                            serde_json::json!(version)
                        );
                        let Ok(event) = crate::core::event::parse_event(&text) else {
                            continue;
                        };
                        let located = engine.locate(&event);
                        assert_eq!(located, engine.locate_by_name(&event), "{text}");
                        routed.insert(format!("{:?}", located.1));
                        checked += 1;
                    }
                }
            }
        }
        // Every kind of answer was among them: each arm of each segment position, the
        // guard, untracked, and the errors.
        for expected in [
            "Ok(Rollout { rollout: 0, segment: 0, arm: Candidate",
            "Ok(Rollout { rollout: 0, segment: 1, arm: Baseline",
            "Ok(Rollout { rollout: 1, segment: 0, arm: Candidate",
            "Ok(Rollout { rollout: 1, segment: 1, arm: Baseline",
            "Ok(Guard { guard: 0",
            "Ok(Untracked)",
            "Err(\"unknown workflow",
            "Err(\"unknown version",
            "Err(\"`latency_ms` 5000000 is outside",
            "Err(\"`tokens` 11 is outside",
        ] {
            assert!(
                routed.iter().any(|r| r.starts_with(expected)),
                "{expected} in {routed:#?}"
            );
        }
        assert!(checked > 500, "{checked}");
    }

    #[test]
    fn a_decision_assessed_before_a_command_is_no_longer_due_after_it() {
        let plan = Plan::parse(Path::new("t.yaml"), PLAN).expect("valid plan");
        let mut engine = Engine::new(Arc::new(plan), Default::default(), Default::default(), 0);
        let pause = Command::Pause {
            reason: "look".into(),
        };
        let resume = Command::Resume {
            reason: "fine".into(),
            ack: true,
        };
        // A decision on r0 (as a tick would hold it while commands are served).
        let assessed = Pending::Rollout {
            index: 0,
            decision: engine.operate(0, "t", &pause, 0, 1000).expect("allowed"),
        };
        assert!(engine.still_due(&assessed));
        // A command on another rollout leaves it due; one on r0 makes it stale.
        let other = engine.operate(1, "t", &pause, 0, 1500).expect("allowed");
        engine.apply(1, &other);
        assert!(engine.still_due(&assessed));
        let revision = engine.rollouts[0].revision;
        let paused = engine.operate(0, "t", &pause, 0, 2000).expect("allowed");
        engine.apply(0, &paused);
        assert_eq!(engine.rollouts[0].revision, revision + 1);
        assert!(!engine.still_due(&assessed));
        // It is judged by the state, not the history: back in the state it was decided from,
        // it applies again.
        let resumed = engine.operate(0, "t", &resume, 0, 3000).expect("allowed");
        engine.apply(0, &resumed);
        let Pending::Rollout { decision, .. } = &assessed else {
            unreachable!("a rollout decision")
        };
        assert_eq!(
            engine.still_due(&assessed),
            engine.rollouts[0].state == decision.before
        );
    }

    #[test]
    fn a_routing_patched_after_each_decision_answers_like_one_built_whole() {
        let plan = Plan::parse(Path::new("t.yaml"), PLAN).expect("valid plan");
        let mut engine = Engine::new(Arc::new(plan), Default::default(), Default::default(), 0);
        let mut patched = engine.routing();
        let commands = [
            (
                1,
                Command::Promote {
                    reason: "go".into(),
                    full: false,
                },
            ),
            (
                0,
                Command::Rollback {
                    reason: "bad".into(),
                },
            ),
            (
                1,
                Command::Pause {
                    reason: "wait".into(),
                },
            ),
        ];
        for (now, (i, command)) in commands.into_iter().enumerate() {
            let before = answers(&patched);
            let decision = engine
                .operate(i, "t", &command, 0, now as u64 * 1000)
                .expect("allowed");
            engine.apply(i, &decision);
            let w = engine
                .workflow_position(&engine.plan.rollouts[i].workflow)
                .expect("its workflow");
            patched = patched.with_workflow(w, engine.workflow_route(w));
            let after = answers(&patched);
            assert_eq!(after, answers(&engine.routing()), "after {command:?}");
            // The decision changed its own workflow's answers and no other's.
            let changed: std::collections::BTreeSet<&str> = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| b != a)
                .map(|(b, _)| &b[..2])
                .collect();
            assert!(
                changed
                    .iter()
                    .all(|c| *c == engine.plan.rollouts[i].workflow),
                "{changed:?}"
            );
        }
    }

    const GATED: &str = r#"
segments: { internal: { match: { team: [ops] } }, everyone: {} }
workflows:
  w0: { stable: v1, versions: [v1, v2] }
  w1: { stable: v1, versions: [v1, v2] }
rollouts:
  - { name: r0, workflow: w0, baseline: v1, candidate: v2, segments: [internal, everyone],
      stages: [{ name: s1, traffic: { internal: 100, everyone: 30 } }],
      gates: [{ signal: quality, stat: mean, min: 0.8, max_drop: 0.03, on_breach: rollback },
              { signal: latency_ms, stat: p95, max: 4000, max_ratio: 1.25, on_breach: narrow },
              { signal: cost_usd, stat: mean, max: 0.05, max_ratio: 1.5, on_breach: read_only },
              { signal: fallback, stat: rate, max: 0.05, max_increase: 0.02, on_breach: narrow }],
      lane: { owner: o, repair: r } }
  - { name: r1, workflow: w1, baseline: v1, candidate: v2, segments: [internal, everyone],
      stages: [{ name: s1, traffic: { internal: 100, everyone: 30 } }],
      gates: [{ signal: quality, stat: mean, min: 0.8, on_breach: rollback }], lane: { owner: o, repair: r } }
auth: { open: true }
"#;

    /// One task of `GATED`'s fleet.
    fn gated_event(task: &(bool, bool, bool, f64, f64, bool), k: usize) -> TaskEvent {
        let &(second, internal, candidate, quality, latency, fallback) = task;
        let attributes = if internal { r#"{"team":"ops"}"# } else { "{}" };
        let text = format!(
            r#"{{"event_id":"e{k}","workflow":"w{}","version":"{}","attributes":{attributes},"quality":{quality},"latency_ms":{latency},"cost_usd":0.01,"fallback":{fallback}}}"#,
            u8::from(second),
            if candidate { "v2" } else { "v1" },
        );
        crate::core::event::parse_event(&text).expect("a valid event")
    }

    proptest::proptest! {
        /// Tasks the recorder defers end in exactly the evidence that recording them one by
        /// one gives, whenever they are applied (every few tasks, never, or when a checkpoint
        /// is taken): deferring changes when the work is done, not what it computes.
        #[test]
        fn deferred_tasks_end_in_the_evidence_recorded_tasks_give(
            tasks in proptest::collection::vec(
                (
                    proptest::bool::ANY,
                    proptest::bool::ANY,
                    proptest::bool::ANY,
                    0.0..1.0f64,
                    10.0..9000.0f64,
                    proptest::bool::weighted(0.05),
                ),
                0..300,
            ),
            applied_every in proptest::option::of(1..40usize),
        ) {
            let plan = Arc::new(Plan::parse(Path::new("t.yaml"), GATED).expect("valid plan"));
            let mut recorded = Engine::new(Arc::clone(&plan), HashMap::new(), HashMap::new(), 0);
            let mut deferred = recorded.clone();
            for (k, task) in tasks.iter().enumerate() {
                let event = gated_event(task, k);
                let route = recorded.route(&event).expect("routed");
                recorded.record(&route, &event);
                let scope = route.scope(&deferred).expect("a rollout's event");
                deferred.defer_routed(&route, deferred.generation, (&scope.0, scope.1), &event);
                if applied_every.is_some_and(|every| k % every == 0) {
                    deferred.apply_deferred();
                }
            }
            let json = |engine: &mut Engine| {
                serde_json::to_string(&engine.take_checkpoints()).expect("checkpoints encode")
            };
            proptest::prop_assert_eq!(json(&mut recorded), json(&mut deferred));
        }
    }
}

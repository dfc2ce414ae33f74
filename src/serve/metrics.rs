//! Prometheus metrics: one [`Metrics`] value owning two registries, one method per domain event.
//!
//! `/metrics` (the fleet registry) carries a handful of series per rollout — its state as one
//! series, stage, weights, a count of inconclusive gates, an automatic containment while one is
//! open, and its workflow's traffic counters — so a thousand rollouts stay under a megabyte.
//! `/metrics/gates` (the gates registry) carries the per gate × segment × arm detail (verdicts,
//! signal values and samples, samples to decide, limits) that the signals dashboard draws; a
//! second scrape job reads it. Series of rare events (a read-only assignment, a duplicate or
//! rejected event, a decision) appear when the first one happens.
//!
//! Label values come only from config names (rollouts, segments, gates, versions, notifiers)
//! and fixed vocabularies (states, actions, outcomes) — never from subjects, event ids or free
//! text — so the number of series stays bounded.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::core::engine::Engine;
use crate::core::event::Mode;
use crate::core::evidence::Arm;
use crate::core::gate::GateVerdict;
use crate::core::receipt::Receipt;
use crate::core::rollout::Phase;

pub struct Metrics {
    registry: Registry,
    /// The per gate × segment detail, served at `/metrics/gates`.
    gates_registry: Registry,
    rollout_inconclusive: IntGaugeVec,
    rollout_contained: IntGaugeVec,
    rollout_info: IntGaugeVec,
    rollout_state: IntGaugeVec,
    stage_index: IntGaugeVec,
    stage: IntGaugeVec,
    stage_age: IntGaugeVec,
    stage_expected: IntGaugeVec,
    weight: GaugeVec,
    gate_verdict: IntGaugeVec,
    signal_value: GaugeVec,
    signal_samples: IntGaugeVec,
    workflow_read_only: IntGaugeVec,
    decisions: IntCounterVec,
    automatic_rollbacks: IntCounterVec,
    assignments: IntCounterVec,
    events: IntCounterVec,
    notifications: IntCounterVec,
    store_bytes: IntGaugeVec,
    affected_items: IntGaugeVec,
    samples_to_decide: IntGaugeVec,
    store_healthy: IntGaugeVec,
    leader: IntGaugeVec,
    checkpoint_reads: IntCounterVec,
    gate_limit: GaugeVec,
    source_queries: IntCounterVec,
    source_errors: IntCounterVec,
    /// Each rollout's resolved gauge handles, by name ([`Metrics::observe_with`]).
    series: std::sync::Mutex<std::collections::HashMap<String, RolloutSeries>>,
}

fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// One version's `stagegate_assignments_total` series: `full` from the start, `read_only`
/// created by the first read-only assignment (a containment's mode: most never see one).
struct AssignmentSeries {
    full: IntCounter,
    read_only: OnceLock<IntCounter>,
    /// `[workflow, version]`.
    labels: [String; 2],
}

/// The assignments of one plan, counted per workflow, version and mode in one flat array of
/// atomics and moved into `stagegate_assignments_total` when `/metrics` is rendered and when
/// the plan is replaced. Counting is then one relaxed add on an array a few pages long, where
/// the Prometheus series of a thousand workflows are each an allocation of their own, and at
/// that scale each was a cache miss per assignment.
pub struct AssignmentTally {
    family: IntCounterVec,
    /// Workflow (its position in the plan) → the slot of its first version.
    first_slot: Box<[u32]>,
    /// Per slot (a workflow's version) and mode: counted since the last [`flush`](Self::flush).
    counts: Box<[AtomicU64]>,
    /// Per slot: the series the counts move into.
    series: Box<[AssignmentSeries]>,
}

impl AssignmentTally {
    /// A tally of the workflows `workflows` lists (name and versions, by position in the plan).
    pub fn new<'a, V: IntoIterator<Item = &'a str>>(
        metrics: &Metrics,
        workflows: impl IntoIterator<Item = (&'a str, V)>,
    ) -> AssignmentTally {
        let mut first_slot = Vec::new();
        let mut series = Vec::new();
        for (workflow, versions) in workflows {
            first_slot.push(u32::try_from(series.len()).unwrap_or(u32::MAX));
            for version in versions {
                series.push(AssignmentSeries {
                    full: metrics.assignments.with_label_values(&[
                        workflow,
                        version,
                        Mode::Full.name(),
                    ]),
                    read_only: OnceLock::new(),
                    labels: [workflow.to_string(), version.to_string()],
                });
            }
        }
        AssignmentTally {
            family: metrics.assignments.clone(),
            first_slot: first_slot.into(),
            counts: (0..series.len() * 2).map(|_| AtomicU64::new(0)).collect(),
            series: series.into(),
        }
    }

    /// Counts one assignment of workflow `workflow`'s version `version` (positions in the
    /// plan) in `mode`.
    pub fn count(&self, workflow: usize, version: usize, mode: Mode) {
        let Some(&first) = self.first_slot.get(workflow) else {
            return;
        };
        if let Some(count) = self.counts.get(count_at(first as usize + version, mode)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Moves what was counted into the Prometheus series. An assignment counted meanwhile
    /// lands in this flush or the next, never in neither.
    pub fn flush(&self) {
        for (slot, series) in self.series.iter().enumerate() {
            for mode in [Mode::Full, Mode::ReadOnly] {
                let n = self.counts[count_at(slot, mode)].swap(0, Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                match mode {
                    Mode::Full => series.full.inc_by(n),
                    Mode::ReadOnly => series
                        .read_only
                        .get_or_init(|| {
                            self.family.with_label_values(&[
                                series.labels[0].as_str(),
                                series.labels[1].as_str(),
                                Mode::ReadOnly.name(),
                            ])
                        })
                        .inc_by(n),
                }
            }
        }
    }
}

/// Where slot `slot`'s count in `mode` is in [`AssignmentTally`]'s counts.
fn count_at(slot: usize, mode: Mode) -> usize {
    slot * 2 + usize::from(mode == Mode::ReadOnly)
}

impl Drop for AssignmentTally {
    /// The last snapshot of a replaced plan is gone: what it counted since the last scrape
    /// still reaches the series.
    fn drop(&mut self) {
        self.flush();
    }
}

/// What became of an ingested event: the `outcome` of `stagegate_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Accepted,
    Duplicate,
    Rejected,
}

impl EventOutcome {
    pub fn name(self) -> &'static str {
        match self {
            EventOutcome::Accepted => "accepted",
            EventOutcome::Duplicate => "duplicate",
            EventOutcome::Rejected => "rejected",
        }
    }
}

/// One workflow's `stagegate_events_total` series, resolved once per plan rather than by label
/// lookup per batch; a series still appears with its first count.
pub struct EventCounters {
    family: IntCounterVec,
    workflow: String,
    /// Accepted, duplicate, rejected.
    series: [OnceLock<IntCounter>; 3],
}

impl EventCounters {
    /// Counts `n` events of this workflow with `outcome`.
    pub fn add(&self, outcome: EventOutcome, n: u64) {
        if n == 0 {
            return;
        }
        self.series[outcome as usize]
            .get_or_init(|| {
                self.family
                    .with_label_values(&[self.workflow.as_str(), outcome.name()])
            })
            .inc_by(n);
    }
}

/// The `outcome` values of `stagegate_notifications_total`.
pub const NOTIFICATION_OUTCOMES: [&str; 4] = ["sent", "retried", "failed", "skipped"];

/// The `workflow` label for events naming a workflow the config does not know.
pub const UNKNOWN_WORKFLOW: &str = "_unknown";

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn fgauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let g = Registry::new();
        Metrics {
            store_bytes: gauge(
                &r,
                "stagegate_store_bytes",
                "Size of the store on disk: the embedded file, or stagegate's tables in PostgreSQL.",
                &[],
            ),
            affected_items: gauge(
                &r,
                "stagegate_affected_items",
                "Affected items of a rollout's latest containment by the owner's tag (safe, wrong, unclear, untagged), as last listed or tagged.",
                &["rollout", "tag"],
            ),
            rollout_inconclusive: gauge(
                &r,
                "stagegate_rollout_inconclusive_gates",
                "Gate × segment verdicts of the rollout that are inconclusive this tick (the detail: stagegate_gate_verdict at /metrics/gates).",
                &["rollout"],
            ),
            rollout_contained: gauge(
                &r,
                "stagegate_rollout_contained",
                "1 while the controller's own containment (rollback, read_only, fallback) of the rollout is open, labelled with the action and the gate that failed; absent otherwise.",
                &["rollout", "action", "gate"],
            ),
            samples_to_decide: gauge(
                &g,
                "stagegate_gate_samples_to_decide",
                "Candidate samples an inconclusive gate still needs at the effect seen so far (-1: may never pass at this effect).",
                &["rollout", "segment", "gate"],
            ),
            gate_limit: fgauge(
                &g,
                "stagegate_gate_limit",
                "Each gate check's configured limit, by check kind (max, min: in the signal's unit; max_ratio: a factor on the baseline; max_increase, max_drop: added to or taken from the baseline), for dashboards to draw next to stagegate_signal_value.",
                &["rollout", "gate", "check"],
            ),
            series: std::sync::Mutex::new(std::collections::HashMap::new()),
            source_queries: counter(
                &r,
                "stagegate_source_queries_total",
                "Queries sent to a metrics source (one per query of each signal, arm and segment, every tick).",
                &["source"],
            ),
            source_errors: counter(
                &r,
                "stagegate_source_errors_total",
                "Source answers that could not be evidence, by reason (unreachable, query, no_series, invalid); their gates are inconclusive until an answer is usable.",
                &["source", "reason"],
            ),
            leader: gauge(
                &r,
                "stagegate_leader",
                "1 on the replica that decides (always 1 on an embedded store), 0 on the others.",
                &["replica"],
            ),
            checkpoint_reads: counter(
                &r,
                "stagegate_follower_checkpoint_reads_total",
                "Evidence checkpoints a follower read from the database to show the leader's statistics (only those that changed since it last read them).",
                &["replica"],
            ),
            store_healthy: gauge(
                &r,
                "stagegate_store_healthy",
                "1 while the store commits; 0 after a failed write until it recovers.",
                &[],
            ),
            rollout_info: gauge(
                &r,
                "stagegate_rollout_info",
                "A configured rollout (always 1).",
                &["rollout", "workflow", "baseline", "candidate"],
            ),
            rollout_state: gauge(
                &r,
                "stagegate_rollout_state",
                "1, labelled with the rollout's current state: one series per rollout.",
                &["rollout", "state"],
            ),
            stage_index: gauge(
                &r,
                "stagegate_rollout_stage_index",
                "Current stage index (-1: candidate has no traffic).",
                &["rollout"],
            ),
            stage: gauge(
                &r,
                "stagegate_rollout_stage",
                "1, labelled with the current stage's name (`none` while the candidate has no traffic): one series per rollout, for dashboards that show stage names.",
                &["rollout", "stage"],
            ),
            stage_age: gauge(
                &r,
                "stagegate_rollout_stage_age_seconds",
                "Seconds since the current stage began.",
                &["rollout"],
            ),
            stage_expected: gauge(
                &r,
                "stagegate_rollout_stage_expected_seconds",
                "The current stage's min_duration in seconds.",
                &["rollout"],
            ),
            weight: fgauge(
                &r,
                "stagegate_rollout_weight_percent",
                "Candidate traffic share per segment.",
                &["rollout", "segment"],
            ),
            gate_verdict: gauge(
                &g,
                "stagegate_gate_verdict",
                "1 pass, 0 inconclusive, -1 fail.",
                &["rollout", "segment", "gate"],
            ),
            signal_value: fgauge(
                &g,
                "stagegate_signal_value",
                "A gate's statistic this stage.",
                &["rollout", "segment", "version", "signal"],
            ),
            signal_samples: gauge(
                &g,
                "stagegate_signal_samples",
                "Samples behind stagegate_signal_value.",
                &["rollout", "segment", "version", "signal"],
            ),
            workflow_read_only: gauge(
                &r,
                "stagegate_workflow_read_only",
                "1 when a guard switched the workflow to read-only.",
                &["workflow"],
            ),
            decisions: counter(
                &r,
                "stagegate_decisions_total",
                "Decisions taken.",
                &["rollout", "action", "actor"],
            ),
            automatic_rollbacks: counter(
                &r,
                "stagegate_automatic_rollbacks_total",
                "Rollbacks the controller took by itself.",
                &["rollout", "gate"],
            ),
            assignments: counter(
                &r,
                "stagegate_assignments_total",
                "Assignments served.",
                &["workflow", "version", "mode"],
            ),
            events: counter(
                &r,
                "stagegate_events_total",
                "Task events received.",
                &["workflow", "outcome"],
            ),
            notifications: counter(
                &r,
                "stagegate_notifications_total",
                "Notifications sent.",
                &["notifier", "outcome"],
            ),
            registry: r,
            gates_registry: g,
        }
    }

    /// The text exposition.
    /// The store's size on disk and whether it commits.
    pub fn store(&self, bytes: u64, healthy: bool) {
        self.store_bytes
            .with_label_values::<&str>(&[])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.store_healthy
            .with_label_values::<&str>(&[])
            .set(i64::from(healthy));
    }

    /// Whether this replica decides.
    pub fn leader(&self, replica: &str, leading: bool) {
        self.leader
            .with_label_values(&[replica])
            .set(i64::from(leading));
    }

    /// `n` checkpoints read by a follower's refresh.
    pub fn checkpoint_reads(&self, replica: &str, n: u64) {
        self.checkpoint_reads
            .with_label_values(&[replica])
            .inc_by(n);
    }

    /// The affected list's counts by tag, when it is listed or tagged.
    pub fn affected(&self, rollout: &str, counts: &std::collections::HashMap<&'static str, u64>) {
        for (tag, n) in counts {
            self.affected_items
                .with_label_values(&[rollout, tag])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition of the fleet registry (`/metrics`).
    pub fn render(&self) -> String {
        encode(&self.registry)
    }

    /// The text exposition of the per-gate detail (`/metrics/gates`).
    pub fn render_gates(&self) -> String {
        encode(&self.gates_registry)
    }

    pub fn events(&self, workflow: &str, outcome: EventOutcome, n: u64) {
        if n > 0 {
            self.events
                .with_label_values(&[workflow, outcome.name()])
                .inc_by(n);
        }
    }

    /// Workflow `workflow`'s event counters, to keep where ingestion finds them by position.
    pub fn event_counters(&self, workflow: &str) -> EventCounters {
        EventCounters {
            family: self.events.clone(),
            workflow: workflow.to_string(),
            series: Default::default(),
        }
    }

    /// Counts one round's queries and faults of each metrics source.
    pub fn source_round(&self, queries: &[(&str, u64)], faults: &[(String, &str)]) {
        for (source, n) in queries {
            self.source_queries.with_label_values(&[source]).inc_by(*n);
        }
        for (source, reason) in faults {
            self.source_errors
                .with_label_values(&[source.as_str(), reason])
                .inc();
        }
    }

    pub fn notification(&self, notifier: &str, outcome: &str) {
        self.notifications
            .with_label_values(&[notifier, outcome])
            .inc();
    }

    /// Counts a persisted decision.
    pub fn decision(&self, receipt: &Receipt) {
        let scope = if receipt.rollout.is_empty() {
            receipt.workflow.as_str()
        } else {
            receipt.rollout.as_str()
        };
        self.decisions
            .with_label_values(&[
                scope,
                receipt.action.name(),
                if receipt.is_automatic() {
                    "controller"
                } else {
                    "operator"
                },
            ])
            .inc();
        if receipt.is_automatic() && receipt.action == crate::plan::Action::Rollback {
            let gate = receipt.trigger.as_ref().map_or("", |t| t.gate.as_str());
            self.automatic_rollbacks
                .with_label_values(&[scope, gate])
                .inc();
        }
    }

    /// Creates the counter series alert rules compare with 0 (accepted events, notifications,
    /// source queries and errors) and every gate's limit.
    pub fn init_series(&self, plan: &crate::plan::Plan) {
        self.gate_limit.reset();
        for source in &plan.sources {
            self.source_queries
                .with_label_values(&[source.name.as_str()]);
            for reason in crate::core::source::FaultKind::ALL {
                self.source_errors
                    .with_label_values(&[source.name.as_str(), reason.name()]);
            }
        }
        for r in &plan.rollouts {
            for gate in &r.gates {
                for check in &gate.checks {
                    self.gate_limit
                        .with_label_values(&[r.name.as_str(), gate.name.as_str(), check.kind()])
                        .set(check.threshold());
                }
            }
        }
        // `accepted` from the start: the ingestion-stalled alert compares its increase with 0.
        for w in &plan.workflows {
            self.events
                .with_label_values(&[w.name.as_str(), "accepted"]);
        }
        for n in &plan.notifiers {
            for outcome in NOTIFICATION_OUTCOMES {
                self.notifications
                    .with_label_values(&[n.name.as_str(), outcome]);
            }
        }
    }

    /// Sets every gauge from the engine's current state, computing each rollout's verdicts.
    pub fn observe(&self, engine: &Engine, now: u64) {
        let verdicts: Vec<Vec<GateVerdict>> = engine
            .plan
            .rollouts
            .iter()
            .zip(&engine.rollouts)
            .map(|(plan, rt)| crate::core::rollout::verdicts(plan, &rt.state, &rt.evidence))
            .collect();
        self.observe_with(engine, now, &verdicts);
    }

    /// Sets every gauge from the engine's state and the verdicts the tick already computed
    /// (`verdicts[i]` for rollout `i`). Incremental: a rollout's series are resolved once per
    /// shape (config, stage, traffic) and only their values are set on later ticks;
    /// a rollout whose shape changed, or that left the config, has its old series removed.
    pub fn observe_with(&self, engine: &Engine, now: u64, verdicts: &[Vec<GateVerdict>]) {
        self.forget_removed(engine);
        for i in 0..engine.rollouts.len() {
            self.observe_rollout(
                engine,
                i,
                now,
                verdicts.get(i).map_or(&[][..], Vec::as_slice),
            );
        }
        self.observe_workflows(engine);
    }

    /// Removes the series of rollouts the config no longer has.
    pub fn forget_removed(&self, engine: &Engine) {
        let Ok(mut cache) = self.series.lock() else {
            return;
        };
        cache.retain(|name, series| {
            let keep = engine.rollout_index(name).is_some();
            if !keep {
                series.remove(self);
            }
            keep
        });
    }

    /// Sets rollout `i`'s gauges from its state and `verdicts` (computed from its evidence):
    /// the work of one rollout, whatever the fleet's size.
    pub fn observe_rollout(&self, engine: &Engine, i: usize, now: u64, verdicts: &[GateVerdict]) {
        let (Some(plan), Some(rt)) = (engine.plan.rollouts.get(i), engine.rollouts.get(i)) else {
            return;
        };
        let Ok(mut cache) = self.series.lock() else {
            return;
        };
        let weights: Vec<u16> = (0..plan.segments.len())
            .map(|s| rt.state.weight_bps(plan, s))
            .collect();
        let series = match cache.get_mut(&plan.name) {
            Some(series) if series.shape.is(&engine.plan.hash, rt.state.stage, &weights) => series,
            _ => {
                if let Some(old) = cache.remove(&plan.name) {
                    old.remove(self);
                }
                let shape = Shape {
                    config: engine.plan.hash.clone(),
                    stage: rt.state.stage,
                    weights,
                };
                let fresh = RolloutSeries::resolve(self, plan, rt, shape);
                cache.entry(plan.name.clone()).or_insert(fresh)
            }
        };
        series.set(self, plan, rt, now, verdicts);
    }

    /// Sets every guarded workflow's read-only gauge (only a guard makes one read-only).
    pub fn observe_workflows(&self, engine: &Engine) {
        self.workflow_read_only.reset();
        for g in &engine.guards {
            self.observe_workflow(engine, &g.workflow);
        }
    }

    /// Sets one workflow's read-only gauge.
    pub fn observe_workflow(&self, engine: &Engine, workflow: &str) {
        let read_only = engine
            .guard_index(workflow)
            .is_some_and(|g| engine.guards[g].state.read_only);
        self.workflow_read_only
            .with_label_values(&[workflow])
            .set(i64::from(read_only));
    }
}

/// What a rollout's set of series depends on: when it changes, they are resolved again.
/// The config by its hash, not the engine's generation: a follower builds a new engine (a new
/// generation) at every refresh, and resolving a thousand rollouts' series again each time
/// was two fifths of its CPU.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    config: String,
    stage: Option<usize>,
    weights: Vec<u16>,
}

impl Shape {
    fn is(&self, config: &str, stage: Option<usize>, weights: &[u16]) -> bool {
        self.config == config && self.stage == stage && self.weights == weights
    }
}

/// One signal series pair of an arm: samples always, the value while there is one.
struct SignalSeries {
    labels: [String; 4],
    samples: IntGauge,
    value: Option<Gauge>,
}

/// A gate × segment verdict series, and its samples-to-decide while inconclusive.
struct VerdictSeries {
    labels: [String; 3],
    verdict: IntGauge,
    to_decide: Option<IntGauge>,
}

/// A rollout's resolved gauge handles (setting one is a store, not a label lookup).
struct RolloutSeries {
    shape: Shape,
    name: String,
    info_labels: [String; 4],
    info: IntGauge,
    /// The current state's series (the only one this rollout has).
    state: (Phase, IntGauge),
    /// The open automatic containment's series: `[rollout, action, gate]`.
    contained: Option<([String; 3], IntGauge)>,
    inconclusive: IntGauge,
    stage_label: String,
    stage_index: IntGauge,
    stage: IntGauge,
    stage_age: IntGauge,
    stage_expected: IntGauge,
    weights: Vec<(String, Gauge)>,
    /// Per segment × arm × gate, in that order.
    signals: Vec<SignalSeries>,
    verdicts: Vec<VerdictSeries>,
}

impl RolloutSeries {
    fn resolve(
        m: &Metrics,
        plan: &crate::plan::RolloutPlan,
        rt: &crate::core::engine::Runtime,
        shape: Shape,
    ) -> RolloutSeries {
        let r = plan.name.as_str();
        let info_labels = [
            plan.name.clone(),
            plan.workflow.clone(),
            plan.baseline.clone(),
            plan.candidate.clone(),
        ];
        let stage_label = rt.state.stage_name(plan).unwrap_or("none").to_string();
        let mut signals = Vec::new();
        for seg in &plan.segments {
            for version in [&plan.baseline, &plan.candidate] {
                for gate in &plan.gates {
                    let labels = [
                        plan.name.clone(),
                        seg.name.clone(),
                        version.clone(),
                        gate.name.clone(),
                    ];
                    signals.push(SignalSeries {
                        samples: m.signal_samples.with_label_values(&labels),
                        labels,
                        value: None,
                    });
                }
            }
        }
        RolloutSeries {
            info: m.rollout_info.with_label_values(&info_labels),
            info_labels,
            state: (
                rt.state.phase,
                m.rollout_state
                    .with_label_values(&[r, rt.state.phase.name()]),
            ),
            contained: None,
            inconclusive: m.rollout_inconclusive.with_label_values(&[r]),
            stage: m.stage.with_label_values(&[r, &stage_label]),
            stage_label,
            stage_index: m.stage_index.with_label_values(&[r]),
            stage_age: m.stage_age.with_label_values(&[r]),
            stage_expected: m.stage_expected.with_label_values(&[r]),
            weights: plan
                .segments
                .iter()
                .map(|s| (s.name.clone(), m.weight.with_label_values(&[r, &s.name])))
                .collect(),
            signals,
            verdicts: Vec::new(),
            name: plan.name.clone(),
            shape,
        }
    }

    fn set(
        &mut self,
        m: &Metrics,
        plan: &crate::plan::RolloutPlan,
        rt: &crate::core::engine::Runtime,
        now: u64,
        verdicts: &[GateVerdict],
    ) {
        self.info.set(1);
        if self.state.0 != rt.state.phase {
            let _ = m
                .rollout_state
                .remove_label_values(&[&self.name, self.state.0.name()]);
            self.state = (
                rt.state.phase,
                m.rollout_state
                    .with_label_values(&[&self.name, rt.state.phase.name()]),
            );
        }
        self.state.1.set(1);
        let contained = rt
            .state
            .reenable
            .as_ref()
            .filter(|_| {
                matches!(
                    rt.state.phase,
                    Phase::RolledBack | Phase::ReadOnly | Phase::Fallback
                )
            })
            .map(|due| {
                [
                    self.name.clone(),
                    due.cause.name().to_string(),
                    due.gate.clone().unwrap_or_default(),
                ]
            });
        if self.contained.as_ref().map(|(l, _)| l) != contained.as_ref() {
            if let Some((labels, _)) = self.contained.take() {
                let _ = m.rollout_contained.remove_label_values(&labels);
            }
            self.contained = contained.map(|labels| {
                let g = m.rollout_contained.with_label_values(&labels);
                g.set(1);
                (labels, g)
            });
        }
        self.inconclusive.set(
            verdicts
                .iter()
                .filter(|v| v.verdict == crate::core::gate::Verdict::Inconclusive)
                .count() as i64,
        );
        self.stage_index
            .set(rt.state.stage.map_or(-1, |s| s as i64));
        self.stage.set(1);
        self.stage_age
            .set((now.saturating_sub(rt.state.stage_started) / 1000) as i64);
        let expected = rt
            .state
            .stage
            .and_then(|s| plan.stages.get(s))
            .map_or(0, |s| s.min_duration / 1000);
        self.stage_expected.set(expected as i64);
        for (s, (_, g)) in self.weights.iter().enumerate() {
            g.set(f64::from(rt.state.weight_bps(plan, s)) / 100.0);
        }
        let mut k = 0;
        for s in 0..plan.segments.len() {
            for arm in [Arm::Baseline, Arm::Candidate] {
                for gate in &plan.gates {
                    let Some(series) = self.signals.get_mut(k) else {
                        return;
                    };
                    k += 1;
                    let acc = rt
                        .evidence
                        .signal_index(&gate.signal)
                        .and_then(|idx| Some(&rt.evidence.arm(s, arm)?.signals[idx]));
                    series.samples.set(acc.map_or(0, |a| a.samples() as i64));
                    match (acc.and_then(|a| a.value(gate.stat)), &series.value) {
                        (Some(v), Some(g)) => g.set(v),
                        (Some(v), None) => {
                            let g = m.signal_value.with_label_values(&series.labels);
                            g.set(v);
                            series.value = Some(g);
                        }
                        (None, Some(_)) => {
                            let _ = m.signal_value.remove_label_values(&series.labels);
                            series.value = None;
                        }
                        (None, None) => {}
                    }
                }
            }
        }
        // Verdicts: the exposed segments' (fixed by the shape), resolved on first sight.
        for v in verdicts {
            let pos = self
                .verdicts
                .iter()
                .position(|x| x.labels[1] == v.segment && x.labels[2] == v.gate);
            let i = match pos {
                Some(i) => i,
                None => {
                    let labels = [self.name.clone(), v.segment.clone(), v.gate.clone()];
                    self.verdicts.push(VerdictSeries {
                        verdict: m.gate_verdict.with_label_values(&labels),
                        labels,
                        to_decide: None,
                    });
                    self.verdicts.len() - 1
                }
            };
            let series = &mut self.verdicts[i];
            series.verdict.set(v.verdict.gauge());
            if v.verdict == crate::core::gate::Verdict::Inconclusive {
                let n = v
                    .samples_to_decide
                    .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
                series
                    .to_decide
                    .get_or_insert_with(|| m.samples_to_decide.with_label_values(&series.labels))
                    .set(n);
            } else if series.to_decide.take().is_some() {
                let _ = m.samples_to_decide.remove_label_values(&series.labels);
            }
        }
    }

    /// Removes every series this rollout has.
    fn remove(&self, m: &Metrics) {
        let r = self.name.as_str();
        let _ = m.rollout_info.remove_label_values(&self.info_labels);
        let _ = m
            .rollout_state
            .remove_label_values(&[r, self.state.0.name()]);
        if let Some((labels, _)) = &self.contained {
            let _ = m.rollout_contained.remove_label_values(labels);
        }
        let _ = m.rollout_inconclusive.remove_label_values(&[r]);
        let _ = m.stage.remove_label_values(&[r, &self.stage_label]);
        let _ = m.stage_index.remove_label_values(&[r]);
        let _ = m.stage_age.remove_label_values(&[r]);
        let _ = m.stage_expected.remove_label_values(&[r]);
        for (seg, _) in &self.weights {
            let _ = m.weight.remove_label_values(&[r, seg]);
        }
        for s in &self.signals {
            let _ = m.signal_samples.remove_label_values(&s.labels);
            if s.value.is_some() {
                let _ = m.signal_value.remove_label_values(&s.labels);
            }
        }
        for v in &self.verdicts {
            let _ = m.gate_verdict.remove_label_values(&v.labels);
            if v.to_decide.is_some() {
                let _ = m.samples_to_decide.remove_label_values(&v.labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::plan::Plan;

    const CONFIG: &str = r#"
segments:
  internal: { match: { team: [ops] } }
workflows:
  w0: { stable: v1, versions: [v1, v2] }
rollouts:
  - { name: r0, workflow: w0, baseline: v1, candidate: v2, segments: [internal],
      stages: [{ name: s1, traffic: { internal: 100 } }],
      gates: [{ signal: quality, stat: mean, min: 0.8, on_breach: rollback }],
      lane: { owner: o, repair: r } }
auth: { open: true }
"#;

    fn engine(text: &str) -> Engine {
        let plan = Plan::parse(Path::new("t.yaml"), text).expect("valid plan");
        Engine::new(Arc::new(plan), Default::default(), Default::default(), 0)
    }

    /// A follower builds a new engine (a new generation) from the same config at every
    /// refresh: its rollouts' series stay the ones resolved, and only a changed config
    /// resolves them again.
    #[test]
    fn a_new_engine_on_the_same_config_keeps_each_rollouts_series() {
        let metrics = Metrics::new();
        let mut current = engine(CONFIG);
        metrics.observe(&current, 0);
        let held = metrics.stage_index.with_label_values(&["r0"]);
        let shows = |value: i64| {
            let series = format!("stagegate_rollout_stage_index{{rollout=\"r0\"}} {value}\n");
            metrics.render().contains(&series)
        };

        current.generation += 1;
        metrics.observe(&current, 0);
        held.set(77);
        assert!(shows(77), "{}", metrics.render());

        metrics.observe(&engine(&format!("{CONFIG}# edited\n")), 0);
        held.set(78);
        assert!(!shows(78), "a new config's series are new ones");
        assert!(shows(0), "{}", metrics.render());
    }
}

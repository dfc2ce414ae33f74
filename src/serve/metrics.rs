//! Prometheus metrics: one [`Metrics`] value owning its registry, one method per domain event.
//!
//! Label values come only from config names (rollouts, segments, gates, versions, notifiers)
//! and fixed vocabularies (states, actions, outcomes) — never from subjects, event ids or free
//! text — so the number of series stays bounded.

use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::core::engine::Engine;
use crate::core::evidence::Arm;
use crate::core::receipt::Receipt;
use crate::core::rollout::Phase;

pub struct Metrics {
    registry: Registry,
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
    gate_limit: GaugeVec,
    source_queries: IntCounterVec,
    source_errors: IntCounterVec,
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
            samples_to_decide: gauge(
                &r,
                "stagegate_gate_samples_to_decide",
                "Candidate samples an inconclusive gate still needs at the effect seen so far (-1: may never pass at this effect).",
                &["rollout", "segment", "gate"],
            ),
            gate_limit: fgauge(
                &r,
                "stagegate_gate_limit",
                "Each gate check's configured limit, by check kind (max, min: in the signal's unit; max_ratio: a factor on the baseline; max_increase, max_drop: added to or taken from the baseline), for dashboards to draw next to stagegate_signal_value.",
                &["rollout", "gate", "check"],
            ),
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
                "1 for the rollout's current state.",
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
                &r,
                "stagegate_gate_verdict",
                "1 pass, 0 inconclusive, -1 fail.",
                &["rollout", "segment", "gate"],
            ),
            signal_value: fgauge(
                &r,
                "stagegate_signal_value",
                "A gate's statistic this stage.",
                &["rollout", "segment", "version", "signal"],
            ),
            signal_samples: gauge(
                &r,
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

    /// The affected list's counts by tag, when it is listed or tagged.
    pub fn affected(&self, rollout: &str, counts: &std::collections::HashMap<&'static str, u64>) {
        for (tag, n) in counts {
            self.affected_items
                .with_label_values(&[rollout, tag])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Pre-resolved assignment counters, `[full, read_only]`, so the assign path only bumps an
    /// atomic.
    pub fn assignment_counters(&self, workflow: &str, version: &str) -> [IntCounter; 2] {
        [
            self.assignments
                .with_label_values(&[workflow, version, "full"]),
            self.assignments
                .with_label_values(&[workflow, version, "read_only"]),
        ]
    }

    pub fn events(&self, workflow: &str, outcome: &str, n: u64) {
        if n > 0 {
            self.events
                .with_label_values(&[workflow, outcome])
                .inc_by(n);
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

    /// Creates every counter series the config implies at 0, so that `/metrics` shows them before
    /// the first event and `increase()` in alert rules sees the first one.
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
                self.automatic_rollbacks
                    .with_label_values(&[r.name.as_str(), gate.name.as_str()]);
                for check in &gate.checks {
                    self.gate_limit
                        .with_label_values(&[r.name.as_str(), gate.name.as_str(), check.kind()])
                        .set(check.threshold());
                }
            }
            for action in ["expand", "narrow", "read_only", "rollback", "pause"] {
                self.decisions
                    .with_label_values(&[r.name.as_str(), action, "controller"]);
            }
            for action in ["pause", "resume", "promote", "rollback"] {
                self.decisions
                    .with_label_values(&[r.name.as_str(), action, "operator"]);
            }
        }
        for w in &plan.workflows {
            for outcome in ["accepted", "duplicate", "rejected"] {
                self.events.with_label_values(&[w.name.as_str(), outcome]);
            }
        }
        for n in &plan.notifiers {
            for outcome in NOTIFICATION_OUTCOMES {
                self.notifications
                    .with_label_values(&[n.name.as_str(), outcome]);
            }
        }
    }

    /// Sets every gauge from the engine's current state.
    pub fn observe(&self, engine: &Engine, now: u64) {
        for g in [
            &self.rollout_info,
            &self.rollout_state,
            &self.stage_index,
            &self.stage_age,
            &self.stage_expected,
            &self.gate_verdict,
            &self.samples_to_decide,
            &self.signal_samples,
            &self.workflow_read_only,
        ] {
            g.reset();
        }
        self.weight.reset();
        self.signal_value.reset();
        self.stage.reset();
        for (i, plan) in engine.plan.rollouts.iter().enumerate() {
            let rt = &engine.rollouts[i];
            let r = plan.name.as_str();
            self.rollout_info
                .with_label_values(&[r, &plan.workflow, &plan.baseline, &plan.candidate])
                .set(1);
            for phase in Phase::ALL {
                self.rollout_state
                    .with_label_values(&[r, phase.name()])
                    .set(i64::from(phase == rt.state.phase));
            }
            self.stage_index
                .with_label_values(&[r])
                .set(rt.state.stage.map_or(-1, |s| s as i64));
            self.stage
                .with_label_values(&[r, rt.state.stage_name(plan).unwrap_or("none")])
                .set(1);
            self.stage_age
                .with_label_values(&[r])
                .set((now.saturating_sub(rt.state.stage_started) / 1000) as i64);
            let expected = rt
                .state
                .stage
                .and_then(|s| plan.stages.get(s))
                .map_or(0, |s| s.min_duration / 1000);
            self.stage_expected
                .with_label_values(&[r])
                .set(expected as i64);
            for (s, seg) in plan.segments.iter().enumerate() {
                self.weight
                    .with_label_values(&[r, &seg.name])
                    .set(f64::from(rt.state.weight_bps(plan, s)) / 100.0);
                for (arm, version) in [
                    (Arm::Baseline, &plan.baseline),
                    (Arm::Candidate, &plan.candidate),
                ] {
                    let Some(cell) = rt.evidence.arm(s, arm) else {
                        continue;
                    };
                    for gate in &plan.gates {
                        let Some(idx) = rt.evidence.signal_index(&gate.signal) else {
                            continue;
                        };
                        let acc = &cell.signals[idx];
                        let labels = [r, seg.name.as_str(), version.as_str(), gate.name.as_str()];
                        self.signal_samples
                            .with_label_values(&labels)
                            .set(acc.samples() as i64);
                        if let Some(v) = acc.value(gate.stat) {
                            self.signal_value.with_label_values(&labels).set(v);
                        }
                    }
                }
            }
            for v in crate::core::rollout::verdicts(plan, &rt.state, &rt.evidence) {
                self.gate_verdict
                    .with_label_values(&[r, &v.segment, &v.gate])
                    .set(v.verdict.gauge());
                if v.verdict == crate::core::gate::Verdict::Inconclusive {
                    self.samples_to_decide
                        .with_label_values(&[r, &v.segment, &v.gate])
                        .set(
                            v.samples_to_decide
                                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
                        );
                }
            }
        }
        for w in &engine.plan.workflows {
            let read_only = engine
                .guard_index(&w.name)
                .is_some_and(|g| engine.guards[g].state.read_only);
            self.workflow_read_only
                .with_label_values(&[&w.name])
                .set(i64::from(read_only));
        }
    }
}

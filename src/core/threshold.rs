//! A Flagger-style threshold policy, for comparison only (`simulate --policy threshold`).
//!
//! Every tick it compares each gate's *point estimate* over a recent interval with the gate's
//! limits, and counts a failed check whenever one is breached. The interval is the last tick's
//! tasks, stretched back over earlier ticks until it holds [`MIN_WINDOW`] candidate tasks (the
//! request-count guard Flagger users put in their metric templates); quantiles use the stage so
//! far. Once `failed_checks` failed checks have accumulated, the most severe breached gate
//! acts. Expansion follows the same stage plan as the sequential policy: every gate within its
//! limits, the stage's `min_duration` and `min_samples`. No confidence, no error budget: the
//! comparator the sequential policy is measured against. Like Flagger's analysis, it stops at
//! promotion.

use std::collections::HashMap;

use crate::core::clock::Millis;
use crate::core::evidence::Evidence;
use crate::core::gate::{ArmSummary, GateVerdict, Verdict};
use crate::core::rollout::{Assessment, Phase, RolloutState, decide, verdicts};
use crate::plan::RolloutPlan;
use crate::plan::{GateSpec, Stat};

/// The comparator's memory between ticks.
#[derive(Debug, Clone)]
pub struct ThresholdPolicy {
    /// Failed checks that make the policy act (Flagger's `threshold`).
    pub failed_checks: u32,
    failed: u32,
    epoch: u64,
    /// Per (gate, segment): the candidate's and baseline's cumulative summaries at each
    /// earlier tick of the epoch that a window may still start from.
    history: HashMap<(String, String), Vec<[ArmSummary; 2]>>,
}

/// The fewest candidate tasks a window holds before its point estimate is compared.
pub const MIN_WINDOW: u64 = 100;

impl ThresholdPolicy {
    pub fn new(failed_checks: u32) -> ThresholdPolicy {
        ThresholdPolicy {
            failed_checks: failed_checks.max(1),
            failed: 0,
            epoch: 0,
            history: HashMap::new(),
        }
    }

    /// What the threshold policy does to a rollout at `now`.
    pub fn assess(
        &mut self,
        plan: &RolloutPlan,
        state: &RolloutState,
        evidence: &Evidence,
        now: Millis,
    ) -> Assessment {
        if state.epoch != self.epoch {
            self.epoch = state.epoch;
            self.history.clear();
        }
        if state.phase == Phase::RolledBack {
            self.failed = 0;
        }
        // Flagger's analysis ends at promotion: nothing watches the new stable version.
        if state.phase == Phase::Promoted {
            return Assessment {
                verdicts: verdicts(plan, state, evidence),
                waiting: None,
                decision: None,
            };
        }
        let mut judged = verdicts(plan, state, evidence);
        let mut breached = false;
        for v in &mut judged {
            let Some(gate) = plan.gates.iter().find(|g| g.name == v.gate) else {
                continue;
            };
            let history = self
                .history
                .entry((v.gate.clone(), v.segment.clone()))
                .or_default();
            let (cand, base) = if v.candidate.samples < MIN_WINDOW {
                (None, None)
            } else if matches!(gate.stat, Stat::Quantile(_)) {
                (v.candidate.value, v.baseline.value)
            } else {
                // The latest earlier tick that leaves at least MIN_WINDOW tasks after it; the
                // epoch's start when none does.
                let from = history.iter().rposition(|[c, _]| {
                    v.candidate.samples - c.samples.min(v.candidate.samples) >= MIN_WINDOW
                });
                if let Some(i) = from {
                    history.drain(..i);
                }
                match history.first().filter(|_| from.is_some()) {
                    Some([c, b]) => (interval(c, &v.candidate), interval(b, &v.baseline)),
                    None => (v.candidate.value, v.baseline.value),
                }
            };
            history.push([v.candidate.clone(), v.baseline.clone()]);
            let verdict = point_verdict(gate, v, cand, base);
            v.verdict = verdict;
            v.candidate.value = cand;
            v.baseline.value = base;
            breached |= v.verdict == Verdict::Fail;
        }
        if breached {
            self.failed += 1;
        }
        if self.failed < self.failed_checks {
            for v in &mut judged {
                if v.verdict == Verdict::Fail {
                    v.verdict = Verdict::Inconclusive;
                }
            }
        }
        decide(plan, state, evidence, judged, now)
    }
}

/// The mean of what arrived between two cumulative summaries (`None` when nothing did).
fn interval(before: &ArmSummary, now: &ArmSummary) -> Option<f64> {
    let added = now.samples.checked_sub(before.samples).filter(|&n| n > 0)?;
    let sum = |a: &ArmSummary| a.value.unwrap_or(0.0) * a.samples as f64;
    Some((sum(now) - sum(before)) / added as f64)
}

/// Each check's limit against the point estimates: any breach fails the gate; it passes when
/// every applicable check could be compared and none breached.
/// Each check's report is rewritten with its limit and point verdict.
fn point_verdict(
    gate: &GateSpec,
    verdict: &mut GateVerdict,
    candidate: Option<f64>,
    baseline: Option<f64>,
) -> Verdict {
    let mut compared = 0;
    let mut failed = false;
    for (check, report) in gate.checks.iter().zip(verdict.checks.iter_mut()) {
        report.limit = check.limit(baseline);
        report.margin_lower = None;
        report.margin_upper = None;
        report.note = Some("threshold policy: point estimate over the last tick".into());
        let (Some(c), Some(limit)) = (candidate, report.limit) else {
            report.verdict = Verdict::Inconclusive;
            continue;
        };
        compared += 1;
        let breached = if check.breach_is_below() {
            c < limit
        } else {
            c > limit
        };
        report.verdict = if breached {
            Verdict::Fail
        } else {
            Verdict::Pass
        };
        failed |= breached;
    }
    if failed {
        Verdict::Fail
    } else if compared > 0 && compared == gate.checks.len() {
        Verdict::Pass
    } else if compared > 0 && verdict.baseline.samples == 0 {
        // Relative checks without baseline traffic do not apply (as in the sequential policy).
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(value: f64, samples: u64) -> ArmSummary {
        ArmSummary {
            value: Some(value),
            samples,
        }
    }

    #[test]
    fn the_interval_mean_is_what_arrived_since_the_last_look() {
        // 100 tasks at 0.05, then 50 more at 0.20: cumulative 0.10.
        let before = summary(0.05, 100);
        let now = summary(0.10, 150);
        let got = interval(&before, &now).unwrap_or(f64::NAN);
        assert!((got - 0.20).abs() < 1e-12, "{got}");
        assert_eq!(interval(&now, &now), None);
    }
}

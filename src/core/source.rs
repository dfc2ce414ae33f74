//! Evidence from a metrics source: which queries a rollout's current epoch needs (per segment
//! and arm), and how their answers — totals since the epoch began — become the accumulators
//! the gates read. Pure: the shell runs the queries and hands the answers back.
//!
//! A query is the config's selector with its templates filled in, wrapped as
//! `sum(increase(SELECTOR[Rs]))` (histograms: `sum by (le) (…)`), `R` the seconds since the
//! epoch began: PromQL's `increase` handles counter resets, and the epoch's window keeps
//! stages apart as pushed evidence does. Counts become per-task pushes in a seeded random order
//! (under the hypothesis the tasks are exchangeable, so a uniformly random arrangement of the
//! hits has exactly the distribution of the real sequence and every sequential test stays
//! valid); histograms and sums replace their accumulators' totals.

use crate::core::buckets::Buckets;
use crate::core::clock::Millis;
use crate::core::evidence::{Accum, Arm, Evidence};
use crate::core::rollout::RolloutState;
use crate::core::stats::Rng;
#[cfg(test)]
use crate::plan::check_template;
use crate::plan::{RolloutPlan, Signal, SignalSource, SourceQuery};

/// More new tasks than this in one answer is refused: it would be pushed one by one, and no
/// gateway serves that many between two ticks (a wrong counter, more likely).
pub const MAX_TASKS_PER_ANSWER: u64 = 2_000_000;

/// Fills a template's `{{name}}`s; values are escaped for a PromQL double-quoted string.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        match vars.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => out.push_str(&v.replace('\\', "\\\\").replace('"', "\\\"")),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// One PromQL query of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// `events`, `total`, `histogram`, `sum`, `count` or `sum_squares`.
    pub key: &'static str,
    pub promql: String,
}

/// The queries for one signal of one arm in one segment of a rollout's epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceJob {
    pub rollout: String,
    pub epoch: u64,
    pub segment: usize,
    pub segment_name: String,
    pub arm: Arm,
    pub version: String,
    pub signal: Signal,
    pub source: String,
    pub queries: Vec<Query>,
    /// Evaluation time: the queries count from `at − range_secs` to `at`.
    pub at: Millis,
    pub range_secs: u64,
}

/// One series of a query's answer (`le` set for histogram buckets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub le: Option<f64>,
    pub value: f64,
}

/// Why a source gave no usable answer: the gate stays `inconclusive`.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFault {
    pub kind: FaultKind,
    pub message: String,
}

/// The `reason` label of `stagegate_source_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Connection refused, timed out, or an HTTP error.
    Unreachable,
    /// Prometheus answered with an error (a bad selector, say).
    Query,
    /// The query matched no series.
    NoSeries,
    /// The answer cannot be evidence (negative, non-finite, no `+Inf` bucket, implausible).
    Invalid,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Unreachable,
        FaultKind::Query,
        FaultKind::NoSeries,
        FaultKind::Invalid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Unreachable => "unreachable",
            FaultKind::Query => "query",
            FaultKind::NoSeries => "no_series",
            FaultKind::Invalid => "invalid",
        }
    }
}

/// A job's answers, one per query in the job's order.
#[derive(Debug, Clone)]
pub struct SourceAnswer {
    pub job: SourceJob,
    pub results: Vec<Result<Vec<Sample>, SourceFault>>,
}

/// The totals an answer gives, in the signal's unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Counts {
        hits: f64,
        total: f64,
    },
    Buckets(Vec<(f64, f64)>),
    Sums {
        count: f64,
        sum: f64,
        sum_squares: Option<f64>,
    },
}

fn vars<'a>(
    plan: &'a RolloutPlan,
    src: &'a SignalSource,
    segment: &'a str,
    version: &'a str,
) -> [(&'static str, &'a str); 4] {
    let segment = src
        .segment_labels
        .get(segment)
        .map_or(segment, String::as_str);
    let version = src
        .version_labels
        .get(version)
        .map_or(version, String::as_str);
    [
        ("version", version),
        ("segment", segment),
        ("rollout", plan.name.as_str()),
        ("workflow", plan.workflow.as_str()),
    ]
}

/// The queries of one signal for one arm, counting the last `range_secs`.
pub fn queries(
    plan: &RolloutPlan,
    src: &SignalSource,
    segment: &str,
    version: &str,
    range_secs: u64,
) -> Vec<Query> {
    let vars = vars(plan, src, segment, version);
    src.query
        .selectors()
        .into_iter()
        .map(|(key, selector)| {
            let selector = render(selector, &vars);
            let promql = match src.query {
                SourceQuery::Histogram { .. } => {
                    format!("sum by (le) (increase({selector}[{range_secs}s]))")
                }
                _ => format!("sum(increase({selector}[{range_secs}s]))"),
            };
            Query { key, promql }
        })
        .collect()
}

/// Every job a rollout's current epoch needs at `now`: each sourced signal, for the candidate
/// in every segment that sends it traffic and for the baseline where it keeps some. None in
/// the epoch's first second (no window yet) or while the rollout is dormant.
pub fn jobs(plan: &RolloutPlan, state: &RolloutState, now: Millis) -> Vec<SourceJob> {
    let since = state.epoch_start();
    let range_secs = now.saturating_sub(since).div_ceil(1000);
    if plan.sourced.is_empty() || state.dormant || now.saturating_sub(since) < 1000 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for s in 0..plan.segments.len() {
        let weight = state.weight_bps(plan, s);
        if weight == 0 {
            continue;
        }
        let mut arms = vec![(Arm::Candidate, plan.candidate.as_str())];
        if weight < 10_000 {
            arms.push((Arm::Baseline, plan.baseline.as_str()));
        }
        for (arm, version) in arms {
            out.extend(segment_jobs(
                plan,
                state.epoch,
                s,
                arm,
                version,
                range_secs,
                now,
            ));
        }
    }
    out
}

/// Every query of a plan's rollouts over the last `range_secs`, for every segment and both
/// arms whatever their state: what `check --probe` runs.
pub fn probe_jobs(plan: &RolloutPlan, range_secs: u64, now: Millis) -> Vec<SourceJob> {
    let mut out = Vec::new();
    for s in 0..plan.segments.len() {
        for (arm, version) in [
            (Arm::Baseline, plan.baseline.as_str()),
            (Arm::Candidate, plan.candidate.as_str()),
        ] {
            out.extend(segment_jobs(plan, 0, s, arm, version, range_secs, now));
        }
    }
    out
}

/// One arm's jobs in segment `s`: a job per sourced signal.
fn segment_jobs(
    plan: &RolloutPlan,
    epoch: u64,
    s: usize,
    arm: Arm,
    version: &str,
    range_secs: u64,
    now: Millis,
) -> Vec<SourceJob> {
    let segment = &plan.segments[s].name;
    plan.sourced
        .iter()
        .map(|src| SourceJob {
            rollout: plan.name.clone(),
            epoch,
            segment: s,
            segment_name: segment.clone(),
            arm,
            version: version.to_string(),
            signal: src.signal.clone(),
            source: src.source.clone(),
            queries: queries(plan, src, segment, version, range_secs),
            at: now,
            range_secs,
        })
        .collect()
}

fn fault(kind: FaultKind, message: impl Into<String>) -> SourceFault {
    SourceFault {
        kind,
        message: message.into(),
    }
}

/// The single value of a `sum(…)` answer; `signed` allows a negative one (a sum of values).
fn scalar(
    job: &SourceJob,
    key: &str,
    samples: &[Sample],
    signed: bool,
) -> Result<f64, SourceFault> {
    let Some(first) = samples.first() else {
        return Err(fault(
            FaultKind::NoSeries,
            format!(
                "`{key}` matched no series for {} in segment {} (check the selector and its labels with `stagegate check --probe`)",
                job.version, job.segment_name
            ),
        ));
    };
    if !(first.value.is_finite() && (signed || first.value >= 0.0)) {
        return Err(fault(
            FaultKind::Invalid,
            format!("`{key}` is {}: not a count", first.value),
        ));
    }
    Ok(first.value)
}

/// Turns a job's answers into totals in the signal's unit, or the first reason they cannot be.
pub fn reading(answer: &SourceAnswer, unit: f64) -> Result<Reading, SourceFault> {
    let job = &answer.job;
    if answer.results.len() != job.queries.len() {
        return Err(fault(FaultKind::Query, "an answer is missing"));
    }
    let mut values: Vec<(&str, &[Sample])> = Vec::new();
    for (query, result) in job.queries.iter().zip(&answer.results) {
        match result {
            Ok(samples) => values.push((query.key, samples)),
            Err(e) => return Err(e.clone()),
        }
    }
    let get = |key: &str, signed: bool| -> Result<f64, SourceFault> {
        let samples = values
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(&[][..], |(_, s)| *s);
        scalar(job, key, samples, signed)
    };
    match values.first() {
        Some(("events", _)) => Ok(Reading::Counts {
            hits: get("events", false)?,
            total: get("total", false)?,
        }),
        Some(("histogram", samples)) => {
            if samples.is_empty() {
                return Err(scalar(job, "histogram", samples, false)
                    .err()
                    .unwrap_or_else(|| fault(FaultKind::NoSeries, "no series")));
            }
            let mut pairs = Vec::with_capacity(samples.len());
            for s in samples.iter() {
                let Some(le) = s.le else {
                    return Err(fault(
                        FaultKind::Invalid,
                        "a `histogram` series has no `le` label: name the `_bucket` series",
                    ));
                };
                pairs.push((le * unit, s.value));
            }
            Ok(Reading::Buckets(pairs))
        }
        Some(("sum", _)) => Ok(Reading::Sums {
            count: get("count", false)?,
            sum: get("sum", true)? * unit,
            sum_squares: match values.iter().any(|(k, _)| *k == "sum_squares") {
                true => Some(get("sum_squares", false)? * unit * unit),
                false => None,
            },
        }),
        _ => Err(fault(FaultKind::Query, "a job without queries")),
    }
}

/// Adds a reading of one arm's signal to the epoch's evidence. `range` is the signal's
/// plausible range: a histogram's floor, the mean's sanity check, and the variance bound
/// `((hi − lo)/2)²` when the config declares neither `sum_squares` nor `variance`.
pub fn absorb(
    evidence: &mut Evidence,
    job: &SourceJob,
    src: &SignalSource,
    reading: &Reading,
    range: (f64, f64),
) -> Result<(), SourceFault> {
    let Some(i) = evidence.signal_index(&job.signal) else {
        return Ok(());
    };
    let invalid = |m: String| fault(FaultKind::Invalid, m);
    let counted = match reading {
        Reading::Counts { hits, total } => {
            let Some(arm) = evidence.arm_mut(job.segment, job.arm) else {
                return Ok(());
            };
            let Accum::Rate(b) = &arm.signals[i] else {
                return Err(invalid("a count for a signal kept as values".into()));
            };
            let (n, seen) = (b.n, b.hits);
            let total = total.round() as u64;
            let new_n = n.max(total);
            let add = new_n - n;
            if add > MAX_TASKS_PER_ANSWER {
                return Err(invalid(format!(
                    "`total` grew by {add} tasks in one tick (at most {MAX_TASKS_PER_ANSWER}); is it the request counter?"
                )));
            }
            // Extrapolation may put `events` a little past `total` or below what was counted.
            let target = (hits.round() as u64).clamp(seen, seen + add);
            let mut left = target - seen;
            let seed = ((job.segment as u64) << 48)
                ^ ((job.arm as u64) << 40)
                ^ ((i as u64) << 32)
                ^ n.wrapping_mul(0x9E37_79B9);
            let mut rng = Rng::new(seed);
            // Selection sampling: every arrangement of `left` hits among `add` slots is
            // equally likely.
            for j in 0..add {
                let p = left as f64 / (add - j) as f64;
                let hit = rng.uniform() < p;
                left -= u64::from(hit);
                evidence.observe(job.segment, job.arm, i, f64::from(u8::from(hit)));
            }
            new_n
        }
        Reading::Buckets(pairs) => {
            let buckets =
                Buckets::from_pairs(pairs.clone(), range.0).map_err(|e| invalid(e.to_string()))?;
            let Some(arm) = evidence.arm_mut(job.segment, job.arm) else {
                return Ok(());
            };
            let Accum::Buckets(b) = &mut arm.signals[i] else {
                return Err(invalid(
                    "a histogram for a signal not kept as buckets".into(),
                ));
            };
            let n = buckets.n();
            if n >= b.n() {
                *b = buckets;
            }
            n
        }
        Reading::Sums {
            count,
            sum,
            sum_squares,
        } => {
            let count = count.round() as u64;
            let Some(arm) = evidence.arm_mut(job.segment, job.arm) else {
                return Ok(());
            };
            let Accum::Numeric(m) = &mut arm.signals[i] else {
                return Err(invalid("a sum for a signal not kept as values".into()));
            };
            if count == 0 || count < m.n {
                count
            } else {
                let mean = sum / count as f64;
                let (lo, hi) = range;
                if !(mean.is_finite() && (lo..=hi).contains(&mean)) {
                    return Err(invalid(format!(
                        "the mean `sum`/`count` = {mean} is outside `{}`'s plausible range {lo}..{hi}",
                        job.signal.name()
                    )));
                }
                let declared = match &src.query {
                    SourceQuery::Sums { variance, .. } => *variance,
                    _ => None,
                };
                let variance = match (sum_squares, declared) {
                    (Some(sq), _) if count > 1 => {
                        ((sq - count as f64 * mean * mean) / (count - 1) as f64).max(0.0)
                    }
                    (_, Some(v)) => v,
                    _ => ((hi - lo) / 2.0).powi(2),
                };
                if !variance.is_finite() {
                    return Err(invalid(
                        "the variance from `sum_squares` is not finite".into(),
                    ));
                }
                m.set_summary(count, mean, variance);
                count
            }
        }
    };
    if let Some(arm) = evidence.arm_mut(job.segment, job.arm) {
        arm.sourced_tasks = arm.sourced_tasks.max(counted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::evidence::{SourcedAs, Tracked};
    use crate::core::gate::{GateInput, Verdict, evaluate};
    use crate::plan::{Action, Check, GateSpec, Scope, Stat};

    fn source(query: SourceQuery) -> SignalSource {
        SignalSource {
            signal: Signal::Fallback,
            source: "prom".into(),
            query,
            unit: 1.0,
            segment_labels: Default::default(),
            version_labels: Default::default(),
        }
    }

    fn counts() -> SignalSource {
        source(SourceQuery::Counts {
            events: "f{m=\"{{version}}\"}".into(),
            total: "t{m=\"{{version}}\"}".into(),
        })
    }

    fn job(arm: Arm, signal: Signal) -> SourceJob {
        SourceJob {
            rollout: "r".into(),
            epoch: 1,
            segment: 0,
            segment_name: "everyone".into(),
            arm,
            version: "v".into(),
            signal,
            source: "prom".into(),
            queries: Vec::new(),
            at: 0,
            range_secs: 60,
        }
    }

    fn rate_evidence(limits: Vec<f64>, relative: Vec<Check>) -> Evidence {
        Evidence::new(
            vec![Tracked {
                signal: Signal::Fallback,
                histogram: false,
                limits,
                relative,
                quantile_limits: Vec::new(),
                sourced: Some(SourcedAs::Counts),
            }],
            1,
            500.0,
        )
    }

    fn rate(ev: &Evidence, arm: Arm) -> (u64, u64) {
        match &ev.arm(0, arm).expect("arm").signals[0] {
            Accum::Rate(b) => (b.n, b.hits),
            other => panic!("{other:?}"),
        }
    }

    /// A dip in a cumulative total (a counter reset that `increase` extrapolated past, or its
    /// edge effects) never takes evidence back or counts a task twice; the next rise adds only
    /// what is new.
    #[test]
    fn totals_that_dip_change_nothing_and_the_next_rise_adds_only_the_new_tasks() {
        let mut ev = rate_evidence(vec![0.05], Vec::new());
        let src = counts();
        let j = job(Arm::Candidate, Signal::Fallback);
        let read = |hits: f64, total: f64| Reading::Counts { hits, total };
        absorb(&mut ev, &j, &src, &read(10.4, 200.2), (0.0, 1.0)).expect("ok");
        assert_eq!(rate(&ev, Arm::Candidate), (200, 10));
        absorb(&mut ev, &j, &src, &read(3.0, 120.0), (0.0, 1.0)).expect("ok");
        assert_eq!(
            rate(&ev, Arm::Candidate),
            (200, 10),
            "a dip takes nothing back"
        );
        absorb(&mut ev, &j, &src, &read(14.0, 300.0), (0.0, 1.0)).expect("ok");
        assert_eq!(rate(&ev, Arm::Candidate), (300, 14));
        // Extrapolated hits past the new tasks are capped at them.
        absorb(&mut ev, &j, &src, &read(40.0, 310.0), (0.0, 1.0)).expect("ok");
        assert_eq!(rate(&ev, Arm::Candidate), (310, 24));
        assert_eq!(ev.arm(0, Arm::Candidate).expect("arm").task_count(), 310);
        let e = absorb(&mut ev, &j, &src, &read(0.0, 1e12), (0.0, 1.0)).expect_err("absurd");
        assert_eq!(e.kind, FaultKind::Invalid);
        assert_eq!(
            rate(&ev, Arm::Candidate),
            (310, 24),
            "a refused answer changes nothing"
        );
    }

    #[test]
    fn histograms_and_sums_replace_their_totals() {
        let mut ev = Evidence::new(
            vec![
                Tracked {
                    signal: Signal::LatencyMs,
                    histogram: false,
                    limits: Vec::new(),
                    relative: Vec::new(),
                    quantile_limits: Vec::new(),
                    sourced: Some(SourcedAs::Buckets),
                },
                Tracked {
                    signal: Signal::CostUsd,
                    histogram: false,
                    limits: Vec::new(),
                    relative: Vec::new(),
                    quantile_limits: Vec::new(),
                    sourced: Some(SourcedAs::Sums),
                },
            ],
            1,
            500.0,
        );
        let hist = SignalSource {
            signal: Signal::LatencyMs,
            ..source(SourceQuery::Histogram {
                buckets: "b{m=\"{{version}}\"}".into(),
            })
        };
        let j = job(Arm::Candidate, Signal::LatencyMs);
        let pairs = vec![(100.0, 50.0), (500.0, 90.0), (f64::INFINITY, 100.0)];
        absorb(&mut ev, &j, &hist, &Reading::Buckets(pairs), (0.0, 3.6e6)).expect("ok");
        let missing_inf = vec![(100.0, 60.0)];
        let e = absorb(
            &mut ev,
            &j,
            &hist,
            &Reading::Buckets(missing_inf),
            (0.0, 3.6e6),
        )
        .expect_err("no +Inf");
        assert_eq!(e.kind, FaultKind::Invalid);
        match &ev.arm(0, Arm::Candidate).expect("arm").signals[0] {
            Accum::Buckets(b) => assert_eq!(b.n(), 100),
            other => panic!("{other:?}"),
        }
        let sums = SignalSource {
            signal: Signal::CostUsd,
            ..source(SourceQuery::Sums {
                sum: "s{m=\"{{version}}\"}".into(),
                count: "c{m=\"{{version}}\"}".into(),
                sum_squares: Some("q{m=\"{{version}}\"}".into()),
                variance: None,
            })
        };
        let j = job(Arm::Candidate, Signal::CostUsd);
        // 400 tasks, mean 0.02, E[x²] = 0.0005 → variance ≈ 0.0001.
        let reading = Reading::Sums {
            count: 400.0,
            sum: 8.0,
            sum_squares: Some(0.2),
        };
        absorb(&mut ev, &j, &sums, &reading, (0.0, 1000.0)).expect("ok");
        match &ev.arm(0, Arm::Candidate).expect("arm").signals[1] {
            Accum::Numeric(m) => {
                assert_eq!(m.n, 400);
                assert!((m.mean - 0.02).abs() < 1e-12);
                assert!((m.variance() - 0.0001).abs() < 2e-6, "{}", m.variance());
            }
            other => panic!("{other:?}"),
        }
        let absurd = Reading::Sums {
            count: 500.0,
            sum: 1e9,
            sum_squares: None,
        };
        let e = absorb(&mut ev, &j, &sums, &absurd, (0.0, 1000.0)).expect_err("mean out of range");
        assert!(e.message.contains("plausible range"), "{}", e.message);
    }

    /// Under continuous monitoring, counts absorbed a tick at a time hold the declared
    /// false-alarm rate: a candidate exactly at an absolute limit, and one exactly at a
    /// relative limit over its baseline, over many seeds.
    #[test]
    fn absorbed_counts_hold_alpha_at_the_limit_for_every_rate_check_kind() {
        let alpha = 0.05;
        let runs = 300u64;
        for (check, base_p, cand_p) in [
            (Check::Max(0.05), 0.05, 0.05),
            (Check::MaxIncrease(0.02), 0.04, 0.06),
            (Check::MaxRatio(1.5), 0.04, 0.06),
        ] {
            let gate = GateSpec {
                name: "fallback_rate".into(),
                signal: Signal::Fallback,
                stat: Stat::Rate,
                checks: vec![check],
                on_breach: Action::Rollback,
                fallback: None,
                scope: Scope::Segment,
                observe: false,
            };
            let (limits, relative) = if check.is_relative() {
                (Vec::new(), vec![check])
            } else {
                (vec![check.threshold()], Vec::new())
            };
            let mut alarms = 0;
            for seed in 0..runs {
                let mut rng = Rng::new(seed * 7919 + 1);
                let mut ev = rate_evidence(limits.clone(), relative.clone());
                let src = counts();
                let mut totals = [(0.0, 0.0); 2];
                let mut failed = false;
                for _tick in 0..60 {
                    for (arm, p) in [(Arm::Baseline, base_p), (Arm::Candidate, cand_p)] {
                        let t = &mut totals[arm as usize];
                        for _ in 0..100 {
                            t.1 += 1.0;
                            t.0 += f64::from(u8::from(rng.uniform() < p));
                        }
                        let reading = Reading::Counts {
                            hits: t.0,
                            total: t.1,
                        };
                        absorb(
                            &mut ev,
                            &job(arm, Signal::Fallback),
                            &src,
                            &reading,
                            (0.0, 1.0),
                        )
                        .expect("ok");
                    }
                    let (c, b) = (
                        &ev.arm(0, Arm::Candidate).expect("arm").signals[0],
                        &ev.arm(0, Arm::Baseline).expect("arm").signals[0],
                    );
                    let input = GateInput {
                        candidate: c,
                        baseline: Some(b),
                        alpha,
                        design_samples: 500.0,
                    };
                    if evaluate(&gate, "everyone", &input).verdict == Verdict::Fail {
                        failed = true;
                        break;
                    }
                }
                alarms += u64::from(failed);
            }
            println!("{check}: {alarms} false alarms in {runs} runs of 60 looks (α = {alpha})");
            assert!(
                alarms as f64 <= alpha * runs as f64,
                "{check}: {alarms} of {runs}"
            );
        }
    }

    #[test]
    fn templates_are_checked_and_filled_with_escaped_values() {
        assert!(check_template("x{model=\"{{version}}\"}").is_ok());
        assert!(check_template("x{model=\"{{ version }}\",t=\"{{segment}}\"}").is_ok());
        let e = check_template("x{model=\"{{verison}}\"}").expect_err("typo");
        assert!(e.contains("unknown template `{{verison}}`"), "{e}");
        let e = check_template("x{tier=\"{{segment}}\"}").expect_err("no version");
        assert!(e.contains("{{version}}"), "{e}");
        assert!(check_template("x{model=\"{{version\"}").is_err());
        let q = render(
            "x{m=\"{{version}}\",t=\"{{ segment }}\"}",
            &[("version", "a\"b\\c"), ("segment", "gold")],
        );
        assert_eq!(q, "x{m=\"a\\\"b\\\\c\",t=\"gold\"}");
    }

    #[test]
    fn selection_sampling_places_exactly_the_hits_in_random_slots() {
        // The same arithmetic as `absorb`: exactly `hits` of `n`, each slot equally likely.
        let (n, hits, runs) = (50u64, 10u64, 20_000);
        let mut per_slot = vec![0u32; n as usize];
        for seed in 0..runs {
            let mut rng = Rng::new(seed);
            let mut left = hits;
            for (j, slot) in per_slot.iter_mut().enumerate() {
                let hit = rng.uniform() < left as f64 / (n - j as u64) as f64;
                left -= u64::from(hit);
                *slot += u32::from(hit);
            }
            assert_eq!(left, 0);
        }
        let expected = f64::from(runs as u32) * hits as f64 / n as f64;
        for c in per_slot {
            assert!(
                (f64::from(c) - expected).abs() < 0.06 * expected,
                "{c} vs {expected}"
            );
        }
    }
}

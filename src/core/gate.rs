//! Gates: a threshold on one statistic of one signal, and its verdict on the evidence.
//!
//! Every check is turned into an interval for a *breach margin* `D` (positive = worse than the
//! threshold) from an always-valid confidence sequence ([`crate::core::stats`]). The check fails when
//! the whole interval is above zero, passes when the whole interval is below zero, and is
//! inconclusive otherwise — so `pass` means "within the threshold with the declared confidence",
//! not "no alarm yet". Below [`MIN_SAMPLES_PER_ARM`] a check is always inconclusive.

use serde::{Deserialize, Serialize};

use crate::core::evidence::{Accum, Bernoulli, Moments};
use crate::core::stats::{Interval, mean_halfwidth};
use crate::plan::{Check, GateSpec, Signal, Stat};

/// No verdict other than `inconclusive` below this many samples in an arm: plug-in variances
/// with few events inflate false alarms (notes §5.8: 35 % with no minimum).
pub const MIN_SAMPLES_PER_ARM: u64 = 100;

/// Average run length to a false alarm of each change detector, in observations of one arm
/// in one segment: under a steady healthy candidate, about one false alarm per this many tasks
/// per check.
pub const CHANGE_ARL: f64 = 1e6;

/// The CUSUM threshold: each of a bet's three detectors has an average run length of at least
/// `e^h`, so `h = ln(3·ARL)` keeps the three together at `CHANGE_ARL`.
pub fn change_threshold() -> f64 {
    (3.0 * CHANGE_ARL).ln()
}

/// Whether absolute checks of `stat` on `signal` are decided by betting: the signal is bounded
/// in 0..1 (rates, and quality's mean), so a test by betting is valid from the first
/// observation and close to the information limit.
pub fn bets_on(signal: &Signal, stat: Stat) -> bool {
    signal.is_rate() || (*signal == Signal::Quality && stat == Stat::Mean)
}

/// The outcome of a gate or a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// The value of `stagegate_gate_verdict`.
    pub fn gauge(self) -> i64 {
        match self {
            Verdict::Pass => 1,
            Verdict::Inconclusive => 0,
            Verdict::Fail => -1,
        }
    }
}

/// One arm's numbers behind a verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArmSummary {
    pub value: Option<f64>,
    pub samples: u64,
}

/// Why a check reads as it does. The frequent notes keep their numbers and are written out only
/// when shown (a status request, the UI, a receipt): a tick computes a note for every check of
/// every rollout and shows none. Serialised as the text; read back as [`Note::Text`].
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    Text(String),
    /// A relative check where the segment sends the baseline no traffic at this stage: it
    /// does not count towards the gate's verdict.
    NoBaseline,
    /// A test by betting's evidence (as ln e) both ways, and the e-value it decides at.
    Betting {
        breach: f64,
        comply: f64,
        decides_at: f64,
    },
    /// Fewer than [`MIN_SAMPLES_PER_ARM`] samples in an arm.
    NeedsSamples {
        has: u64,
    },
    /// A quantile check decided as the share of tasks past its threshold.
    Share {
        below: bool,
        threshold: f64,
        of: Box<Note>,
    },
}

impl Note {
    /// The note's text if it is fixed text (not one written from numbers).
    pub fn text(&self) -> Option<&str> {
        match self {
            Note::Text(t) => Some(t),
            _ => None,
        }
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::Text(t) => f.write_str(t),
            Note::NoBaseline => f.write_str(NO_BASELINE),
            Note::Betting {
                breach,
                comply,
                decides_at,
            } => write!(
                f,
                "test by betting: evidence of a breach e={:.3}, of compliance e={:.3}; decides at e ≥ {decides_at:.0}",
                breach.exp(),
                comply.exp(),
            ),
            Note::NeedsSamples { has } => {
                write!(f, "needs {MIN_SAMPLES_PER_ARM} samples per arm, has {has}")
            }
            Note::Share {
                below,
                threshold,
                of,
            } => write!(
                f,
                "as the share of tasks {} {threshold}: {of}",
                if *below { "below" } else { "above" }
            ),
        }
    }
}

impl From<&str> for Note {
    fn from(text: &str) -> Note {
        Note::Text(text.to_string())
    }
}

impl From<String> for Note {
    fn from(text: String) -> Note {
        Note::Text(text)
    }
}

impl Serialize for Note {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Note {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Note, D::Error> {
        String::deserialize(deserializer).map(Note::Text)
    }
}

/// The numbers behind one check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckReport {
    pub check: String,
    /// The absolute limit on the candidate (for relative checks: derived from the baseline).
    pub limit: Option<f64>,
    /// Confidence bounds on how far past the limit the candidate is (positive = breach).
    pub margin_lower: Option<f64>,
    pub margin_upper: Option<f64>,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
    /// While inconclusive: candidate samples still needed to decide at the effect seen so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_to_decide: Option<u64>,
}

/// A gate's verdict in one segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateVerdict {
    pub gate: String,
    pub segment: String,
    pub verdict: Verdict,
    pub candidate: ArmSummary,
    pub baseline: ArmSummary,
    /// The error budget each check of this gate was held to.
    pub alpha: f64,
    pub checks: Vec<CheckReport>,
    /// While inconclusive: the candidate samples still needed before every check could
    /// decide at the effect seen so far (`None`: at this effect it may never pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_to_decide: Option<u64>,
    /// An observe-only gate (`mode: observe`): shown and exported, never acts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub observe: bool,
    /// Why the signal's metrics source gave no usable answer this round: the verdict cannot
    /// be `pass` until it does (a `fail` already shown by earlier evidence stands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
}

impl GateVerdict {
    /// Marks the verdict as resting on a source that failed: never a `pass`.
    pub fn source_failed(&mut self, reason: &str) {
        if self.verdict == Verdict::Pass {
            self.verdict = Verdict::Inconclusive;
            self.samples_to_decide = None;
        }
        self.source_error = Some(reason.to_string());
    }
}

/// What a gate looks at in one segment.
pub struct GateInput<'a> {
    pub candidate: &'a Accum,
    /// `None` when the segment sends the baseline no traffic at this stage.
    pub baseline: Option<&'a Accum>,
    pub alpha: f64,
    pub design_samples: f64,
}

/// Evaluates `gate` on one segment's evidence.
pub fn evaluate(gate: &GateSpec, segment: &str, input: &GateInput<'_>) -> GateVerdict {
    let checks: Vec<CheckReport> = gate
        .checks
        .iter()
        .map(|c| evaluate_check(gate, c, input))
        .collect();
    let applicable: Vec<&CheckReport> = checks
        .iter()
        .filter(|c| c.note != Some(Note::NoBaseline))
        .collect();
    let verdict = if applicable.iter().any(|c| c.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if !applicable.is_empty() && applicable.iter().all(|c| c.verdict == Verdict::Pass) {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    let summary = |a: Option<&Accum>| ArmSummary {
        value: a.and_then(|a| a.value(gate.stat)),
        samples: a.map_or(0, Accum::samples),
    };
    GateVerdict {
        source_error: None,
        observe: gate.observe,
        gate: gate.name.clone(),
        segment: segment.to_string(),
        verdict,
        candidate: summary(Some(input.candidate)),
        baseline: summary(input.baseline),
        alpha: input.alpha,
        samples_to_decide: (verdict == Verdict::Inconclusive)
            .then(|| {
                applicable
                    .iter()
                    .filter(|c| c.verdict == Verdict::Inconclusive)
                    .map(|c| c.samples_to_decide)
                    .try_fold(0u64, |most, n| n.map(|n| most.max(n)))
            })
            .flatten(),
        checks,
    }
}

/// A statistic that cannot be computed is never a pass, nor a silent hold: it fails safe.
const NOT_COMPUTABLE: &str = "the statistic cannot be computed (a non-finite value); failing safe";

const NO_BASELINE: &str = "not applicable: the segment sends the baseline no traffic at this stage";

fn evaluate_check(gate: &GateSpec, check: &Check, input: &GateInput<'_>) -> CheckReport {
    let report = |limit: Option<f64>,
                  margin: Option<Interval>,
                  verdict: Verdict,
                  note: Option<Note>| CheckReport {
        check: check.to_string(),
        limit,
        margin_lower: margin.map(|m| m.lower).filter(|v| v.is_finite()),
        margin_upper: margin.map(|m| m.upper).filter(|v| v.is_finite()),
        verdict,
        note,
        samples_to_decide: None,
    };
    let baseline = if check.is_relative() {
        match input.baseline {
            None => return report(None, None, Verdict::Inconclusive, Some(Note::NoBaseline)),
            Some(b) => Some(b),
        }
    } else {
        None
    };
    if let Some(w) = input
        .candidate
        .watch(check)
        .filter(|_| check.is_relative() && bets_on(&gate.signal, gate.stat))
    {
        if let Some(c) = w.alarm(change_threshold()) {
            let (mean, k) = c.post_change(w.n);
            return report(
                Some(w.limit),
                None,
                Verdict::Fail,
                Some(Note::Text(format!(
                    "change detected: candidate mean {mean:.4} over its last {k} tasks (since task {} it was watched) against the limit {:.4} from the baseline's conservative bound; the cumulative comparison is diluted by the earlier tasks (CUSUM: on average at most one false alarm per {CHANGE_ARL:e} tasks)",
                    c.since + 1,
                    w.limit
                ))),
            );
        }
    }
    let limit = check.limit(baseline.and_then(|b| b.value(gate.stat)));
    if let (false, Some(bet)) = (
        check.is_relative(),
        input
            .candidate
            .bet(check.threshold())
            .filter(|_| bets_on(&gate.signal, gate.stat)),
    ) {
        return bet_report(check, bet, !check.breach_is_below(), input, limit);
    }
    if let (Stat::Quantile(q), false) = (gate.stat, check.is_relative()) {
        if let Some(e) = input
            .candidate
            .exceedance(q, check.threshold(), check.breach_is_below())
        {
            let mut r = bet_report(check, &e.bet, true, input, limit);
            let shown = (input.candidate.samples() > 0)
                .then(|| quantile_margin(check, q, input.candidate, None, input))
                .flatten();
            r.margin_lower = shown.map(|m| m.lower).filter(|v| v.is_finite());
            r.margin_upper = shown.map(|m| m.upper).filter(|v| v.is_finite());
            r.note = r.note.map(|n| Note::Share {
                below: e.below,
                threshold: e.threshold,
                of: Box::new(n),
            });
            return r;
        }
    }
    let short = [Some(input.candidate), baseline]
        .into_iter()
        .flatten()
        .map(Accum::samples)
        .min()
        .unwrap_or(0);
    if short < MIN_SAMPLES_PER_ARM {
        let note = Note::NeedsSamples { has: short };
        let mut r = report(limit, None, Verdict::Inconclusive, Some(note));
        r.samples_to_decide = Some(MIN_SAMPLES_PER_ARM - short);
        return r;
    }
    if [Some(input.candidate), baseline]
        .into_iter()
        .flatten()
        .any(|a| !a.is_finite())
    {
        return report(limit, None, Verdict::Fail, Some(NOT_COMPUTABLE.into()));
    }
    let margin = match (gate.stat, input.candidate, baseline) {
        (Stat::Quantile(p), c, b) => match quantile_margin(check, p, c, b, input) {
            Some(m) => m,
            None => return report(limit, None, Verdict::Fail, Some(NOT_COMPUTABLE.into())),
        },
        (_, Accum::Buckets(_), _) => {
            let note = "a histogram source gives quantiles only; this statistic cannot be computed";
            return report(limit, None, Verdict::Fail, Some(note.into()));
        }
        (_, Accum::Numeric(c), b) => {
            let b = match b {
                Some(Accum::Numeric(b)) => Some(b),
                _ => None,
            };
            mean_margin(check, c, b, input)
        }
        (_, Accum::Rate(c), b) => {
            let b = match b {
                Some(Accum::Rate(b)) => Some(b),
                _ => None,
            };
            rate_margin(check, c, b, input)
        }
    };
    let verdict = if margin.lower.is_nan() || margin.upper.is_nan() {
        return report(limit, None, Verdict::Fail, Some(NOT_COMPUTABLE.into()));
    } else if margin.lower > 0.0 {
        Verdict::Fail
    } else if margin.upper < 0.0 {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    let mut r = report(limit, Some(margin), verdict, None);
    if verdict == Verdict::Inconclusive {
        r.samples_to_decide = samples_to_pass(margin, input.candidate.samples());
    }
    r
}

/// The extra candidate samples until an interval of this width would clear zero at the current
/// estimate, if the estimate is on the passing side: widths shrink like `1/√n` (the mixture's
/// slowly growing log factor is ignored, so this is an estimate, not a promise).
fn samples_to_pass(margin: Interval, n: u64) -> Option<u64> {
    let center = (margin.lower + margin.upper) / 2.0;
    let half = (margin.upper - margin.lower) / 2.0;
    if !(center < 0.0 && half.is_finite()) || n == 0 {
        return None;
    }
    let total = n as f64 * (half / -center).powi(2);
    Some((total - n as f64).ceil().max(1.0) as u64)
}

/// The verdict of an absolute check decided by betting: `fail` once the gambler betting on a
/// breach has multiplied its stake by `1/α`, `pass` once the one betting on compliance has.
/// The reported margin bounds are the normal-mixture ones, for reading only.
fn bet_report(
    check: &Check,
    bet: &crate::core::evidence::Bet,
    breach_above: bool,
    input: &GateInput<'_>,
    limit: Option<f64>,
) -> CheckReport {
    let threshold = (1.0 / input.alpha).ln();
    // A breach is bet on by the mixed gamblers (fast near the oracle for small breaches);
    // compliance by the adaptive one alone, whose growth matches any healthy level.
    let (breach, comply) = if breach_above {
        (bet.evidence_above(), bet.log_below)
    } else {
        (bet.evidence_below(), bet.log_above)
    };
    let change = bet.change(breach_above, change_threshold());
    if let Some(c) = change.filter(|_| breach < threshold) {
        let (mean, k) = c.post_change(bet.n);
        return CheckReport {
            check: check.to_string(),
            limit,
            margin_lower: None,
            margin_upper: None,
            verdict: Verdict::Fail,
            samples_to_decide: None,
            note: Some(Note::Text(format!(
                "change detected: mean {mean:.4} over the last {k} tasks (since task {} of this stage) against the limit {:.4}; the cumulative mean is diluted by the earlier tasks (CUSUM: on average at most one false alarm per {CHANGE_ARL:e} tasks)",
                c.since + 1,
                bet.limit
            ))),
        };
    }
    let verdict = if breach >= threshold {
        Verdict::Fail
    } else if comply >= threshold {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    let margin = match input.candidate {
        Accum::Rate(c) if c.n > 0 => Some(rate_margin(check, c, None, input)),
        Accum::Numeric(c) if c.n > 1 => Some(mean_margin(check, c, None, input)),
        _ => None,
    };
    // At the evidence's current growth rate per task, how many more tasks to reach `1/α`.
    let samples_to_decide =
        (verdict == Verdict::Inconclusive && comply > 0.0 && bet.n > 0).then(|| {
            ((threshold - comply) / (comply / bet.n as f64))
                .ceil()
                .max(1.0) as u64
        });
    CheckReport {
        check: check.to_string(),
        limit,
        margin_lower: margin.map(|m| m.lower).filter(|v| v.is_finite()),
        margin_upper: margin.map(|m| m.upper).filter(|v| v.is_finite()),
        verdict,
        samples_to_decide,
        note: Some(Note::Betting {
            breach,
            comply,
            decides_at: 1.0 / input.alpha,
        }),
    }
}

/// `D` and its variance coefficients for a linear check on two arms' estimates:
/// `D = sign · (x_c − r·x_b − offset)`; returns `(D, r, sign)`.
fn linear(check: &Check, c: f64, b: Option<f64>) -> (f64, f64, f64) {
    let b = b.unwrap_or(0.0);
    match *check {
        Check::Max(m) => (c - m, 0.0, 1.0),
        Check::Min(m) => (m - c, 0.0, -1.0),
        Check::MaxRatio(r) => (c - r * b, r, 1.0),
        Check::MaxIncrease(i) => (c - b - i, 1.0, 1.0),
        Check::MaxDrop(d) => (b - d - c, 1.0, -1.0),
    }
}

/// Harmonic sample count of two arms (the effective `t` of a difference).
fn effective_t(n_c: f64, n_b: Option<f64>) -> f64 {
    match n_b {
        Some(n_b) => n_c * n_b / (n_c + n_b),
        None => n_c,
    }
}

fn mean_margin(check: &Check, c: &Moments, b: Option<&Moments>, input: &GateInput<'_>) -> Interval {
    let (d, r, _) = linear(check, c.mean, b.map(|b| b.mean));
    let var_d = c.variance() / c.n as f64 + b.map_or(0.0, |b| r * r * b.variance() / b.n as f64);
    let t = effective_t(c.n as f64, b.map(|b| b.n as f64));
    Interval::around(
        d,
        mean_halfwidth(var_d * t, t, input.design_samples, input.alpha),
    )
}

fn rate_margin(
    check: &Check,
    c: &Bernoulli,
    b: Option<&Bernoulli>,
    input: &GateInput<'_>,
) -> Interval {
    let (d, r, _) = linear(check, c.rate(), b.map(Bernoulli::rate));
    // Variance under the null, never the plug-in alone (notes §5.3). For a comparison, each
    // arm's Bernoulli variance at the null's boundary: the baseline at its (Laplace) estimate,
    // the candidate exactly at the limit that estimate implies (`r·b + i`, `b − d`). A pooled
    // rate is right only for a zero margin; with a margin it understates the candidate's
    // variance (measured: 10.6 % false alarms at a declared 5 %). For an absolute limit, the
    // limit's own variance. Laplace estimates keep both above zero before any event.
    let var_d = match b {
        Some(b) => {
            let bl = (b.hits + 1) as f64 / (b.n + 2) as f64;
            let at_limit = match *check {
                Check::MaxIncrease(i) => bl + i,
                Check::MaxRatio(ratio) => bl * ratio,
                Check::MaxDrop(drop) => bl - drop,
                Check::Max(m) | Check::Min(m) => m,
            }
            .clamp(1e-6, 1.0 - 1e-6);
            let pooled = (c.hits + b.hits + 1) as f64 / (c.n + b.n + 2) as f64;
            let boundary =
                at_limit * (1.0 - at_limit) / c.n as f64 + r * r * bl * (1.0 - bl) / b.n as f64;
            let pooled = pooled * (1.0 - pooled) * (1.0 / c.n as f64 + r * r / b.n as f64);
            boundary.max(pooled)
        }
        None => {
            let p0 = check.threshold().clamp(0.0, 1.0);
            let laplace = (c.hits + 1) as f64 / (c.n + 2) as f64;
            (p0 * (1.0 - p0)).max(laplace * (1.0 - laplace)) / c.n as f64
        }
    };
    let t = effective_t(c.n as f64, b.map(|b| b.n as f64));
    Interval::around(
        d,
        mean_halfwidth(var_d * t, t, input.design_samples, input.alpha),
    )
}

/// The breach margin of a check on the `p`-quantile from each arm's order-statistic bounds;
/// `None` when an arm keeps no quantiles.
fn quantile_margin(
    check: &Check,
    p: f64,
    c: &Accum,
    b: Option<&Accum>,
    input: &GateInput<'_>,
) -> Option<Interval> {
    // Each arm's bound at α/2 when two arms are involved, so the pair holds at α.
    let alpha = if b.is_some() {
        input.alpha / 2.0
    } else {
        input.alpha
    };
    let qc = c.quantile_bounds(p, input.design_samples, alpha)?;
    let qb = match b {
        Some(b) => b.quantile_bounds(p, input.design_samples, alpha)?,
        None => Interval {
            lower: 0.0,
            upper: 0.0,
        },
    };
    let (_, r, sign) = linear(check, 0.0, None);
    let offset = match *check {
        Check::Max(m) | Check::Min(m) => m,
        Check::MaxIncrease(i) => i,
        Check::MaxDrop(d) => -d,
        Check::MaxRatio(_) => 0.0,
    };
    // D = sign · (q_c − r·q_b − offset); bound each end with the arms' worst cases.
    let low = qc.lower - r * qb.upper - offset;
    let high = qc.upper - r * qb.lower - offset;
    let (lower, upper) = if sign > 0.0 {
        (low, high)
    } else {
        (-high, -low)
    };
    debug_assert!(check.breach_is_below() == (sign < 0.0));
    Some(Interval {
        lower: if lower.is_nan() {
            f64::NEG_INFINITY
        } else {
            lower
        },
        upper: if upper.is_nan() { f64::INFINITY } else { upper },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_written_from_numbers_read_as_before_and_round_trip_as_text() {
        let betting = Note::Betting {
            breach: 0.103_f64.ln(),
            comply: 6_238_220.038_f64.ln(),
            decides_at: 20.0,
        };
        let shown = "test by betting: evidence of a breach e=0.103, of compliance e=6238220.038; decides at e ≥ 20";
        assert_eq!(betting.to_string(), shown);
        let share = Note::Share {
            below: true,
            threshold: 4000.0,
            of: Box::new(betting),
        };
        assert_eq!(
            share.to_string(),
            format!("as the share of tasks below 4000: {shown}")
        );
        let json = serde_json::to_string(&share).expect("json");
        let back: Note = serde_json::from_str(&json).expect("note");
        assert_eq!(back.text(), Some(share.to_string().as_str()));
    }
    use crate::core::event::TaskEvent;
    use crate::core::evidence::Arm;
    use crate::core::evidence::{Evidence, Tracked};
    use crate::plan::Action;

    fn gate(signal: Signal, stat: Stat, checks: Vec<Check>) -> GateSpec {
        GateSpec {
            name: "g".into(),
            signal,
            stat,
            checks,
            on_breach: Action::Rollback,
            observe: false,
            fallback: None,
            scope: crate::plan::Scope::Segment,
        }
    }

    fn event(quality: f64, latency: f64) -> TaskEvent {
        let mut e = crate::core::event::parse_event(
            &serde_json::json!({"event_id": "x", "workflow": "w", "version": "v"}).to_string(),
        )
        .expect("valid");
        e.quality = Some(quality);
        e.latency_ms = Some(latency);
        e
    }

    fn evidence(pairs: &[(Arm, f64, f64)]) -> Evidence {
        let tracked = vec![
            Tracked {
                signal: Signal::Quality,
                histogram: false,
                limits: Vec::new(),
                relative: Vec::new(),
                quantile_limits: Vec::new(),
                sourced: None,
            },
            Tracked {
                signal: Signal::LatencyMs,
                histogram: true,
                limits: Vec::new(),
                relative: Vec::new(),
                quantile_limits: Vec::new(),
                sourced: None,
            },
        ];
        let mut ev = Evidence::new(tracked, 1, 100.0);
        for &(arm, q, l) in pairs {
            ev.record(0, arm, &event(q, l));
        }
        ev
    }

    fn run(g: &GateSpec, ev: &Evidence, with_baseline: bool) -> GateVerdict {
        let idx = ev.signal_index(&g.signal).expect("tracked");
        let input = GateInput {
            candidate: &ev.arm(0, Arm::Candidate).expect("cell").signals[idx],
            baseline: with_baseline.then(|| &ev.arm(0, Arm::Baseline).expect("cell").signals[idx]),
            alpha: 0.01,
            design_samples: 500.0,
        };
        evaluate(g, "s", &input)
    }

    fn noisy(arm: Arm, n: usize, q: f64, l: f64, seed: u64) -> Vec<(Arm, f64, f64)> {
        let mut rng = crate::core::stats::tests_rng(seed);
        (0..n)
            .map(|_| {
                (
                    arm,
                    (q + 0.05 * rng.normal()).clamp(0.0, 1.0),
                    (l * (1.0 + 0.2 * rng.normal())).max(1.0),
                )
            })
            .collect()
    }

    #[test]
    fn few_terrible_samples_are_inconclusive() {
        let ev = evidence(&vec![(Arm::Candidate, 0.0, 99_999.0); 25]);
        let g = gate(Signal::Quality, Stat::Mean, vec![Check::Min(0.8)]);
        let v = run(&g, &ev, false);
        assert_eq!(v.verdict, Verdict::Inconclusive);
        let note = v.checks[0].note.as_ref().map(ToString::to_string);
        assert_eq!(note.as_deref(), Some("needs 100 samples per arm, has 25"));
    }

    #[test]
    fn clear_quality_drop_fails_and_healthy_passes() {
        let mut pairs = noisy(Arm::Baseline, 400, 0.9, 1000.0, 1);
        pairs.extend(noisy(Arm::Candidate, 400, 0.7, 1000.0, 2));
        let g = gate(
            Signal::Quality,
            Stat::Mean,
            vec![Check::Min(0.8), Check::MaxDrop(0.03)],
        );
        assert_eq!(run(&g, &evidence(&pairs), true).verdict, Verdict::Fail);

        let mut pairs = noisy(Arm::Baseline, 400, 0.9, 1000.0, 3);
        pairs.extend(noisy(Arm::Candidate, 400, 0.9, 1000.0, 4));
        assert_eq!(run(&g, &evidence(&pairs), true).verdict, Verdict::Pass);
    }

    #[test]
    fn latency_quantile_ratio_detects_regression() {
        let mut pairs = noisy(Arm::Baseline, 1000, 0.9, 1000.0, 5);
        pairs.extend(noisy(Arm::Candidate, 1000, 0.9, 2000.0, 6));
        let g = gate(
            Signal::LatencyMs,
            Stat::Quantile(0.95),
            vec![Check::Max(4000.0), Check::MaxRatio(1.25)],
        );
        let v = run(&g, &evidence(&pairs), true);
        assert_eq!(v.verdict, Verdict::Fail, "{v:?}");
        assert_eq!(
            v.checks[0].verdict,
            Verdict::Pass,
            "p95 ≈ 2 660 is confidently under the absolute 4 000"
        );

        let mut pairs = noisy(Arm::Baseline, 1000, 0.9, 1000.0, 7);
        pairs.extend(noisy(Arm::Candidate, 1000, 0.9, 1000.0, 8));
        let v = run(&g, &evidence(&pairs), true);
        assert_eq!(v.verdict, Verdict::Pass, "{v:?}");
    }

    #[test]
    fn relative_checks_without_baseline_traffic_are_not_applicable() {
        let pairs = noisy(Arm::Candidate, 400, 0.9, 1000.0, 9);
        let g = gate(
            Signal::Quality,
            Stat::Mean,
            vec![Check::Min(0.8), Check::MaxDrop(0.03)],
        );
        let v = run(&g, &evidence(&pairs), false);
        assert_eq!(v.verdict, Verdict::Pass);
        assert_eq!(v.checks[1].note, Some(Note::NoBaseline));
        assert_eq!(
            serde_json::to_value(&v.checks[1]).expect("json")["note"],
            NO_BASELINE,
            "shown as before"
        );
    }

    #[test]
    fn quantile_ratio_false_alarms_stay_within_budget() {
        // 100 seeds of identical lognormal latencies, a look every 50 events per arm up to 2 000:
        // the p95 ratio check must fail in at most α = 5 % of runs.
        let g = gate(
            Signal::LatencyMs,
            Stat::Quantile(0.95),
            vec![Check::MaxRatio(1.0)],
        );
        let mut alarms = 0;
        for seed in 0..100u64 {
            let mut rng = crate::core::stats::tests_rng(seed + 7);
            let tracked = vec![Tracked {
                signal: Signal::LatencyMs,
                histogram: true,
                limits: Vec::new(),
                relative: Vec::new(),
                quantile_limits: Vec::new(),
                sourced: None,
            }];
            let mut ev = Evidence::new(tracked, 1, 100.0);
            let mut alarm = false;
            for i in 1..=2000 {
                for arm in [Arm::Baseline, Arm::Candidate] {
                    ev.record(0, arm, &event(0.9, 1000.0 * (0.4 * rng.normal()).exp()));
                }
                if i % 50 == 0 {
                    let input = GateInput {
                        candidate: &ev.arm(0, Arm::Candidate).expect("cell").signals[0],
                        baseline: Some(&ev.arm(0, Arm::Baseline).expect("cell").signals[0]),
                        alpha: 0.05,
                        design_samples: 500.0,
                    };
                    alarm |= evaluate(&g, "s", &input).verdict == Verdict::Fail;
                }
            }
            alarms += usize::from(alarm);
        }
        eprintln!("p95 ratio gate: {alarms}/100 runs false-alarmed");
        assert!(
            alarms <= 5,
            "p95 ratio gate false-alarmed in {alarms}/100 runs"
        );
    }

    #[test]
    fn false_alarm_rate_on_healthy_data_stays_within_budget() {
        // 200 seeds of an identical baseline and candidate, evaluated after every 25 events per
        // arm up to 2 000: a run "false-alarms" if any look fails. At α = 0.05 at most 5 %.
        let g = gate(Signal::Quality, Stat::Mean, vec![Check::MaxDrop(0.0)]);
        let rate_g = gate(Signal::Fallback, Stat::Rate, vec![Check::MaxIncrease(0.0)]);
        let mut alarms = 0;
        let mut rate_alarms = 0;
        for seed in 0..200u64 {
            let mut rng = crate::core::stats::tests_rng(seed + 100);
            let tracked = vec![
                Tracked {
                    signal: Signal::Quality,
                    histogram: false,
                    limits: Vec::new(),
                    relative: Vec::new(),
                    quantile_limits: Vec::new(),
                    sourced: None,
                },
                Tracked {
                    signal: Signal::Fallback,
                    histogram: false,
                    limits: Vec::new(),
                    relative: Vec::new(),
                    quantile_limits: Vec::new(),
                    sourced: None,
                },
            ];
            let mut ev = Evidence::new(tracked, 1, 100.0);
            let (mut alarm, mut rate_alarm) = (false, false);
            for i in 1..=2000 {
                for arm in [Arm::Baseline, Arm::Candidate] {
                    let mut e = event((0.85 + 0.1 * rng.normal()).clamp(0.0, 1.0), 1.0);
                    e.fallback = Some(rng.uniform() < 0.05);
                    ev.record(0, arm, &e);
                }
                if i % 25 == 0 {
                    for (g, flag) in [(&g, &mut alarm), (&rate_g, &mut rate_alarm)] {
                        let idx = ev.signal_index(&g.signal).expect("tracked");
                        let input = GateInput {
                            candidate: &ev.arm(0, Arm::Candidate).expect("cell").signals[idx],
                            baseline: Some(&ev.arm(0, Arm::Baseline).expect("cell").signals[idx]),
                            alpha: 0.05,
                            design_samples: 500.0,
                        };
                        *flag |= evaluate(g, "s", &input).verdict == Verdict::Fail;
                    }
                }
            }
            alarms += usize::from(alarm);
            rate_alarms += usize::from(rate_alarm);
        }
        eprintln!("mean gate: {alarms}/200 runs false-alarmed; rate gate: {rate_alarms}/200");
        assert!(alarms <= 10, "mean gate false-alarmed in {alarms}/200 runs");
        assert!(
            rate_alarms <= 10,
            "rate gate false-alarmed in {rate_alarms}/200 runs"
        );
    }

    /// A Binomial(n, p) draw by inverse transform (n is small: one minute of one arm's tasks).
    fn binomial(rng: &mut crate::core::stats::Rng, n: u64, p: f64) -> u64 {
        let u = rng.uniform();
        let (mut k, mut pmf) = (0u64, (1.0 - p).powf(n as f64));
        let mut cdf = pmf;
        while u > cdf && k < n {
            pmf *= (n - k) as f64 / (k + 1) as f64 * p / (1.0 - p);
            k += 1;
            cdf += pmf;
        }
        k
    }

    /// A baseline bad-outcome rate of 0.05 and a candidate exactly at the check's limit (the
    /// least favourable healthy case), 5 tasks/s split at `share`, one look a minute for 24
    /// hours: in how many of `runs` does `check` ever fail?
    fn rate_false_alarms(check: Check, share: f64, runs: u64, alpha: f64) -> u64 {
        let base = 0.05;
        let cand = match check {
            Check::Max(m) => m,
            Check::MaxIncrease(i) => base + i,
            Check::MaxRatio(r) => base * r,
            Check::Min(m) => m,
            Check::MaxDrop(d) => base - d,
        };
        let g = gate(Signal::Fallback, Stat::Rate, vec![check]);
        let per_minute = 300.0;
        let (n_c, n_b) = (
            (per_minute * share).round() as u64,
            (per_minute * (1.0 - share)).round() as u64,
        );
        let mut alarms = 0;
        for seed in 0..runs {
            let mut rng = crate::core::stats::tests_rng(seed * 7919 + (share * 1000.0) as u64);
            let (mut c, mut b) = (Bernoulli::default(), Bernoulli::default());
            for _minute in 0..1440 {
                c.n += n_c;
                c.hits += binomial(&mut rng, n_c, cand);
                b.n += n_b;
                b.hits += binomial(&mut rng, n_b, base);
                let (ca, ba) = (Accum::Rate(c.clone()), Accum::Rate(b.clone()));
                let input = GateInput {
                    candidate: &ca,
                    baseline: check.is_relative().then_some(&ba),
                    alpha,
                    design_samples: 500.0,
                };
                if evaluate(&g, "s", &input).verdict == Verdict::Fail {
                    alarms += 1;
                    break;
                }
            }
        }
        alarms
    }

    #[test]
    fn every_rate_check_kind_holds_its_alpha_under_continuous_monitoring() {
        // α = 0.05 per check; 1 000 24-hour runs per (check, share) with the candidate exactly
        // at the limit; allow sampling
        // noise of three standard errors over the budget (5 % of 1 000 = 50, +3·6.9 ≈ 71).
        let runs = 1000;
        for share in [0.1, 0.5] {
            for check in [
                Check::Max(0.10),
                Check::MaxIncrease(0.0),
                Check::MaxIncrease(0.05),
                Check::MaxRatio(1.0),
                Check::MaxRatio(2.0),
            ] {
                let alarms = rate_false_alarms(check, share, runs, 0.05);
                eprintln!(
                    "rate {check} at {:.0}% candidate share: {alarms}/{runs} runs at the limit false-alarmed (declared α 5%)",
                    share * 100.0
                );
                assert!(alarms <= 71, "{check} at share {share}: {alarms}/{runs}");
            }
        }
    }

    /// Candidate tasks (observations) until an absolute `max limit` rate check decided by
    /// betting fails, for a true rate `p`; `None` if it never does within `cap` observations.
    /// The verdict is read through `evaluate` after every `look` observations.
    fn bet_fail_after(
        p: f64,
        limit: f64,
        alpha: f64,
        seed: u64,
        look: u64,
        cap: u64,
    ) -> Option<u64> {
        let g = gate(Signal::Fallback, Stat::Rate, vec![Check::Max(limit)]);
        let mut rng = crate::core::stats::tests_rng(seed);
        let mut c = Bernoulli {
            bets: vec![crate::core::evidence::Bet::new(limit)],
            ..Bernoulli::default()
        };
        for n in 1..=cap {
            c.push(rng.uniform() < p);
            if n % look == 0 {
                let acc = Accum::Rate(c.clone());
                let input = GateInput {
                    candidate: &acc,
                    baseline: None,
                    alpha,
                    design_samples: 500.0,
                };
                if evaluate(&g, "s", &input).verdict == Verdict::Fail {
                    return Some(n);
                }
            }
        }
        None
    }

    fn median(mut xs: Vec<u64>) -> u64 {
        xs.sort_unstable();
        xs[xs.len() / 2]
    }

    #[test]
    fn betting_holds_alpha_at_the_limit_and_fails_near_the_information_limit() {
        // The least favourable healthy candidate: its rate exactly at the limit 0.10; 30 tasks a
        // minute (10 % of 5/s), a look a minute for 24 hours, 1 000 runs, α = 0.05.
        let runs = 1000;
        let alarms = (0..runs)
            .filter(|&seed| bet_fail_after(0.10, 0.10, 0.05, seed, 30, 30 * 1440).is_some())
            .count();
        eprintln!(
            "rate max 0.1 by betting, candidate at the limit: {alarms}/{runs} runs false-alarmed over 24 h (declared α 5%)"
        );
        assert!(alarms <= 71, "{alarms}/{runs}");
        // A bad candidate: observations to the first fail, checked after every observation.
        // Wald's SPRT with the alternative known needs ≈ 20 (p = 0.30) and ≈ 250 (p = 0.15).
        for (p, target) in [(0.30, 40), (0.15, 295)] {
            let n: Vec<u64> = (0..runs)
                .map(|seed| {
                    bet_fail_after(p, 0.10, 0.05, 10_000 + seed, 1, 100_000).unwrap_or(u64::MAX)
                })
                .collect();
            let med = median(n.clone());
            let p90 = {
                let mut s = n.clone();
                s.sort_unstable();
                s[s.len() * 9 / 10]
            };
            eprintln!(
                "rate {p} vs max 0.1 by betting: median {med} candidate tasks to fail, p90 {p90} (target median ≤ {target})"
            );
            assert!(med <= target, "p = {p}: median {med}");
        }
    }

    #[test]
    fn quality_by_betting_holds_alpha_at_the_limit_and_catches_a_drop() {
        // Quality scores in 0..1 around a mean exactly at the `min 0.8` limit, then 0.1 below it.
        let g = gate(Signal::Quality, Stat::Mean, vec![Check::Min(0.8)]);
        let run = |mean: f64, seed: u64, cap: u64| -> Option<u64> {
            let mut rng = crate::core::stats::tests_rng(seed);
            let mut m = Moments::default();
            m.bets.push(crate::core::evidence::Bet::new(0.8));
            for n in 1..=cap {
                // A symmetric two-point-plus-noise score keeps the mean exactly `mean`.
                let x = (mean + 0.15 * (2.0 * rng.uniform() - 1.0)).clamp(0.0, 1.0);
                m.push(x);
                if n % 10 == 0 {
                    let acc = Accum::Numeric(m.clone());
                    let input = GateInput {
                        candidate: &acc,
                        baseline: None,
                        alpha: 0.05,
                        design_samples: 500.0,
                    };
                    if evaluate(&g, "s", &input).verdict == Verdict::Fail {
                        return Some(n);
                    }
                }
            }
            None
        };
        let runs = 1000;
        let alarms = (0..runs).filter(|&s| run(0.8, s, 5_000).is_some()).count();
        eprintln!(
            "quality min 0.8 by betting, candidate mean at the limit: {alarms}/{runs} runs false-alarmed over 5 000 tasks (declared α 5%)"
        );
        assert!(alarms <= 71, "{alarms}/{runs}");
        let n: Vec<u64> = (0..runs)
            .map(|s| run(0.7, 50_000 + s, 5_000).unwrap_or(u64::MAX))
            .collect();
        let med = median(n);
        eprintln!("quality mean 0.7 vs min 0.8 by betting: median {med} tasks to fail");
        assert!(med <= 100, "median {med}");
    }

    /// A candidate at `before` for `switch` tasks, then at `after`; `per_minute` candidate tasks,
    /// a look a minute, `max 0.10` at α = 0.05. Returns the task count at the first fail.
    fn first_fail(
        before: f64,
        after: f64,
        switch: u64,
        per_minute: u64,
        minutes: u64,
        seed: u64,
    ) -> Option<u64> {
        let g = gate(Signal::Fallback, Stat::Rate, vec![Check::Max(0.10)]);
        let mut rng = crate::core::stats::tests_rng(seed);
        let mut c = Bernoulli {
            bets: vec![crate::core::evidence::Bet::new(0.10)],
            ..Bernoulli::default()
        };
        for minute in 1..=minutes {
            for _ in 0..per_minute {
                let p = if c.n < switch { before } else { after };
                c.push(rng.uniform() < p);
            }
            let _ = minute;
            let acc = Accum::Rate(c.clone());
            let input = GateInput {
                candidate: &acc,
                baseline: None,
                alpha: 0.05,
                design_samples: 500.0,
            };
            if evaluate(&g, "s", &input).verdict == Verdict::Fail {
                return Some(c.n);
            }
        }
        None
    }

    #[test]
    fn a_late_regression_is_caught_by_change_detection_within_minutes() {
        // 50 % of 5 tasks/s = 150 candidate tasks a minute; 0.05 for three hours, then 0.15.
        let runs = 300;
        let switch = 150 * 180;
        let mut delays: Vec<u64> = Vec::new();
        let mut early = 0;
        for seed in 0..runs {
            match first_fail(0.05, 0.15, switch, 150, 180 + 120, 70_000 + seed) {
                Some(n) if n <= switch => early += 1,
                Some(n) => delays.push(n - switch),
                None => delays.push(u64::MAX),
            }
        }
        let med = median(delays.clone());
        let mut sorted = delays.clone();
        sorted.sort_unstable();
        let p90 = sorted[sorted.len() * 9 / 10];
        eprintln!(
            "late 0.05 → 0.15 at 150 candidate tasks/min vs max 0.1: median {med} tasks ({:.1} min) after the change to fail, p90 {p90}; {early}/{runs} failed before it",
            med as f64 / 150.0
        );
        assert!(med <= 1500 && med / 150 <= 15, "median {med}");
        assert!(
            early <= 15,
            "{early}/{runs} false alarms during the healthy hours"
        );
    }

    #[test]
    fn change_detection_false_alarms_at_the_limit_stay_rare() {
        // The least favourable healthy candidate: exactly at the limit, 30 tasks a minute for
        // 24 hours (43 200 tasks), 300 runs. Cumulative test (α = 0.05) and detectors together.
        let runs = 300;
        let alarms = (0..runs)
            .filter(|&seed| first_fail(0.10, 0.10, 0, 30, 1440, 90_000 + seed).is_some())
            .count();
        eprintln!(
            "max 0.1 with change detection, candidate at the limit for 24 h: {alarms}/{runs} runs false-alarmed (α 5% + 43 200/ARL {:e})",
            CHANGE_ARL
        );
        assert!(alarms <= 27, "{alarms}/{runs}");
    }

    #[test]
    fn the_samples_to_decide_estimate_is_the_right_order_of_magnitude() {
        // A healthy rate (0.02 vs max 0.10, by betting) and a healthy mean (cost 0.01 ± noise vs
        // max 0.0106, normal mixture): after 100 tasks, estimate the tasks still needed to pass,
        // then count them. Median actual/estimate over 200 runs must be within 0.5..2.
        let rate = gate(Signal::Fallback, Stat::Rate, vec![Check::Max(0.10)]);
        let cost = gate(Signal::CostUsd, Stat::Mean, vec![Check::Max(0.0106)]);
        let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for seed in 0..200u64 {
            let mut rng = crate::core::stats::tests_rng(seed + 123);
            let mut r = Bernoulli {
                bets: vec![crate::core::evidence::Bet::new(0.10)],
                ..Bernoulli::default()
            };
            let mut m = Moments::default();
            let mut estimate: [Option<u64>; 2] = [None, None];
            let mut passed: [Option<u64>; 2] = [None, None];
            for n in 1..=20_000u64 {
                r.push(rng.uniform() < 0.02);
                m.push(0.01 * (1.0 + 0.5 * (2.0 * rng.uniform() - 1.0)));
                for (k, (g, acc)) in [
                    (&rate, Accum::Rate(r.clone())),
                    (&cost, Accum::Numeric(m.clone())),
                ]
                .into_iter()
                .enumerate()
                {
                    if passed[k].is_some() || (n != 100 && n % 25 != 0) {
                        continue;
                    }
                    let input = GateInput {
                        candidate: &acc,
                        baseline: None,
                        alpha: 0.01,
                        design_samples: 500.0,
                    };
                    let v = evaluate(g, "s", &input);
                    if n == 100 {
                        estimate[k] = v.samples_to_decide;
                    }
                    if v.verdict == Verdict::Pass {
                        passed[k] = Some(n);
                    }
                }
                if passed.iter().all(Option::is_some) {
                    break;
                }
            }
            for k in 0..2 {
                if let (Some(e), Some(p)) = (estimate[k], passed[k]) {
                    ratios[k].push((p - 100) as f64 / e as f64);
                }
            }
        }
        for (k, name) in ["rate by betting", "cost mean"].iter().enumerate() {
            let mut r = ratios[k].clone();
            assert!(r.len() >= 150, "{name}: an estimate in {} runs", r.len());
            r.sort_by(f64::total_cmp);
            let med = r[r.len() / 2];
            eprintln!(
                "{name}: actual / estimated tasks to pass, median {med:.2} over {} runs",
                r.len()
            );
            assert!((0.5..=2.0).contains(&med), "{name}: {med}");
        }
    }

    /// A rate's relative check (`max_increase 0.05`, baseline 0.05) through real `Evidence`:
    /// the baseline's per-minute counts in bulk, the candidate's tasks one by one (the change
    /// detectors watch each). Returns the minute of the first fail, if any.
    fn relative_first_fail(
        cand_before: f64,
        cand_after: f64,
        switch_minute: u64,
        per_minute: (u64, u64),
        minutes: u64,
        seed: u64,
    ) -> Option<u64> {
        let check = Check::MaxIncrease(0.05);
        let g = gate(Signal::Fallback, Stat::Rate, vec![check]);
        let tracked = vec![Tracked {
            signal: Signal::Fallback,
            histogram: false,
            limits: Vec::new(),
            relative: vec![check],
            quantile_limits: Vec::new(),
            sourced: None,
        }];
        let mut ev = Evidence::new(tracked, 1, 500.0);
        let mut rng = crate::core::stats::tests_rng(seed);
        let mut e = event(0.9, 1000.0);
        for minute in 1..=minutes {
            if let Accum::Rate(b) = &mut ev.cells[0][0].signals[0] {
                b.n += per_minute.1;
                b.hits += binomial(&mut rng, per_minute.1, 0.05);
            }
            let p = if minute > switch_minute {
                cand_after
            } else {
                cand_before
            };
            for _ in 0..per_minute.0 {
                e.fallback = Some(rng.uniform() < p);
                ev.record(0, Arm::Candidate, &e);
            }
            let input = GateInput {
                candidate: &ev.cells[0][1].signals[0],
                baseline: Some(&ev.cells[0][0].signals[0]),
                alpha: 0.05,
                design_samples: 500.0,
            };
            if evaluate(&g, "s", &input).verdict == Verdict::Fail {
                return Some(minute);
            }
        }
        None
    }

    #[test]
    fn relative_change_detection_catches_a_late_rise_and_holds_at_the_limit() {
        // At the limit (candidate 0.10 = baseline 0.05 + 0.05), 10 % share, 24 h: false alarms
        // of the cumulative test and the detectors together.
        let runs = 200;
        let alarms = (0..runs)
            .filter(|&s| relative_first_fail(0.10, 0.10, 0, (30, 270), 1440, 40_000 + s).is_some())
            .count();
        eprintln!(
            "rate max_increase 0.05 with change detection, candidate at the limit for 24 h at 10% share: {alarms}/{runs} runs false-alarmed"
        );
        assert!(alarms <= 20, "{alarms}/{runs}");
        // Late: 0.05 for three hours at 50 % share, then 0.15.
        let delays: Vec<u64> = (0..runs)
            .map(
                |s| match relative_first_fail(0.05, 0.15, 180, (150, 150), 300, 45_000 + s) {
                    Some(m) if m > 180 => m - 180,
                    Some(_) => 0,
                    None => u64::MAX,
                },
            )
            .collect();
        let early = delays.iter().filter(|&&d| d == 0).count();
        let med = median(delays);
        eprintln!(
            "rate max_increase 0.05, late 0.05 → 0.15 at 150 candidate tasks/min: median {med} min to fail; {early}/{runs} before the change"
        );
        assert!(med <= 15, "median {med} min");
        assert!(early <= 10, "{early}");
    }

    /// Lognormal latencies whose p95 is `p95`, `per_minute` a minute, `max 4000` on p95 at
    /// α = 0.05 after every minute. Returns the task count at the first fail.
    fn p95_first_fail(
        p95_before: f64,
        p95_after: f64,
        switch: u64,
        per_minute: u64,
        minutes: u64,
        seed: u64,
    ) -> Option<u64> {
        let g = gate(
            Signal::LatencyMs,
            Stat::Quantile(0.95),
            vec![Check::Max(4000.0)],
        );
        // No histogram: the exceedance test decides without one (and the run stays fast).
        let tracked = vec![Tracked {
            signal: Signal::LatencyMs,
            histogram: false,
            limits: Vec::new(),
            relative: Vec::new(),
            quantile_limits: vec![(0.95, 4000.0, false)],
            sourced: None,
        }];
        let mut ev = Evidence::new(tracked, 1, 500.0);
        let mut rng = crate::core::stats::tests_rng(seed);
        let sigma: f64 = 0.4;
        let z95 = 1.644_853_6;
        let mut n = 0u64;
        for _ in 0..minutes {
            for _ in 0..per_minute {
                let p95 = if n < switch { p95_before } else { p95_after };
                let median = p95 / (sigma * z95).exp();
                ev.record(
                    0,
                    Arm::Candidate,
                    &event(0.9, median * (sigma * rng.normal()).exp()),
                );
                n += 1;
            }
            let input = GateInput {
                candidate: &ev.cells[0][1].signals[0],
                baseline: None,
                alpha: 0.05,
                design_samples: 500.0,
            };
            if evaluate(&g, "s", &input).verdict == Verdict::Fail {
                return Some(n);
            }
        }
        None
    }

    #[test]
    fn a_p95_limit_is_tested_as_a_share_of_slow_tasks() {
        let runs = 300;
        // Exactly at the limit (p95 = 4 000 ms), 30 tasks a minute for 24 h.
        let alarms = (0..runs)
            .filter(|&s| p95_first_fail(4000.0, 4000.0, 0, 30, 1440, 60_000 + s).is_some())
            .count();
        eprintln!(
            "latency p95 max 4000 as exceedance, candidate at the limit for 24 h: {alarms}/{runs} runs false-alarmed"
        );
        assert!(alarms <= 27, "{alarms}/{runs}");
        // Twice as slow from the start: tasks until the fail (order statistics needed ≥ 100).
        let n: Vec<u64> = (0..runs)
            .map(|s| p95_first_fail(8000.0, 8000.0, 0, 10, 100, 61_000 + s).unwrap_or(u64::MAX))
            .collect();
        let med = median(n);
        eprintln!("latency p95 8000 vs max 4000: median {med} tasks to fail");
        assert!(med < 100, "median {med}");
        // Late: 1 h healthy (p95 2 000) at 150 a minute, then p95 6 000.
        let delays: Vec<u64> = (0..runs)
            .map(
                |s| match p95_first_fail(2000.0, 6000.0, 9000, 150, 120, 62_000 + s) {
                    Some(n) if n > 9000 => n - 9000,
                    Some(_) => 0,
                    None => u64::MAX,
                },
            )
            .collect();
        let med = median(delays);
        eprintln!(
            "latency p95 2000 → 6000 one hour in: median {med} tasks after the change to fail"
        );
        assert!(med <= 1500, "median {med}");
    }
}

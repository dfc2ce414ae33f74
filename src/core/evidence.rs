//! Per-stage evidence: running statistics per (segment, arm, signal) for one rollout.
//!
//! Counts, means and variances (Welford) for numeric signals, HDR histograms where a gate asks
//! for a quantile, Bernoulli counts for rates. Evidence covers one *epoch*: it restarts whenever
//! the rollout's stage or mode changes, so stages are never pooled (pooling across a ramp is the
//! Simpson's-paradox trap in the statistics notes).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::core::buckets::Buckets;
use crate::core::event::TaskEvent;
use crate::core::stats::Interval;
use crate::plan::{Check, Signal, SourceQuery, Stat};

/// Histogram values are stored as `value × SCALE` (micro-units), two significant digits.
const SCALE: f64 = 1_000_000.0;

/// Running mean and variance, optionally with a histogram for quantiles.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    m2: f64,
    #[serde(with = "histogram_codec", default)]
    hist: Option<Histogram<u64>>,
    /// The histogram's non-empty buckets, ascending, as (highest equivalent value, count):
    /// built by the first rank asked, then kept current by [`Moments::push`] (a binary search;
    /// an insert for a value in a new bucket). A rank is then a pass over the buckets in use,
    /// not a walk over every bucket between the smallest and the largest value.
    #[serde(skip)]
    ranks: std::sync::OnceLock<Vec<(u64, u64)>>,
    /// Betting e-processes against absolute limits (bounded signals only: quality in 0..1).
    #[serde(default)]
    pub bets: Vec<Bet>,
    /// Change detectors for relative checks (bounded signals, candidate arm).
    #[serde(default)]
    pub watches: Vec<Watch>,
    /// Absolute limits on a quantile, tested as rates of exceedance by betting.
    #[serde(default)]
    pub exceedances: Vec<Exceedance>,
    /// How many tasks crossed each exceedance's threshold so far.
    #[serde(default)]
    pub exceedance_hits: Vec<u64>,
}

/// An absolute limit `L` on the `q`-quantile as a bounded rate: `q-quantile ≤ L` exactly when
/// at most a share `1 − q` of tasks exceed `L` (`≥ L`: at most `q` fall below it). A test by
/// betting on the 0/1 indicator then decides the check, valid from the first task, and its
/// change detectors watch for a late shift — where order statistics need 100 samples and
/// dilute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exceedance {
    pub quantile: f64,
    pub threshold: f64,
    /// `true` for a `min` (breach: the quantile falls below the threshold).
    pub below: bool,
    /// On the indicator `1{x > threshold}` (or `1{x < threshold}`), limit `1 − q` (or `q`).
    pub bet: Bet,
}

impl Exceedance {
    pub fn new(quantile: f64, threshold: f64, below: bool) -> Exceedance {
        let share = if below { quantile } else { 1.0 - quantile };
        Exceedance {
            quantile,
            threshold,
            below,
            bet: Bet::new(share),
        }
    }

    fn push(&mut self, x: f64, n: u64, hits: &mut u64) {
        let hit = if self.below {
            x < self.threshold
        } else {
            x > self.threshold
        };
        let mean = if n == 0 { 0.0 } else { *hits as f64 / n as f64 };
        self.bet
            .update(f64::from(u8::from(hit)), n, mean, mean * (1.0 - mean), true);
        *hits += u64::from(hit);
    }
}

/// Histograms in checkpoints: HdrHistogram's V2 encoding, base64-free as a byte list.
mod histogram_codec {
    use hdrhistogram::Histogram;
    use hdrhistogram::serialization::{Deserializer as HdrDe, Serializer as _, V2Serializer};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(h: &Option<Histogram<u64>>, s: S) -> Result<S::Ok, S::Error> {
        let bytes = match h {
            None => None,
            Some(h) => {
                let mut out = Vec::new();
                V2Serializer::new()
                    .serialize(h, &mut out)
                    .map_err(serde::ser::Error::custom)?;
                Some(out)
            }
        };
        bytes.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Histogram<u64>>, D::Error> {
        let bytes: Option<Vec<u8>> = Option::deserialize(d)?;
        match bytes {
            None => Ok(None),
            Some(b) => {
                let mut h: Histogram<u64> = HdrDe::new()
                    .deserialize(&mut b.as_slice())
                    .map_err(serde::de::Error::custom)?;
                h.auto(true);
                Ok(Some(h))
            }
        }
    }
}

impl Moments {
    pub fn with_histogram() -> Moments {
        let hist = Histogram::new(2).ok().map(|mut h: Histogram<u64>| {
            h.auto(true);
            h
        });
        Moments {
            hist,
            ..Moments::default()
        }
    }

    /// Welford's update. Values are range-checked at ingestion, so the running sums stay
    /// finite; should one not (a value near f64::MAX), the mean and variance become NaN/∞ and
    /// [`Moments::is_finite`] turns the gate's verdict into a fail-safe `fail`, never a hold.
    pub fn push(&mut self, x: f64) {
        let variance = if self.n >= 2 { self.variance() } else { 0.25 };
        for bet in &mut self.bets {
            bet.update(x, self.n, self.mean, variance, false);
        }
        for (e, hits) in self
            .exceedances
            .iter_mut()
            .zip(self.exceedance_hits.iter_mut())
        {
            e.push(x, self.n, hits);
        }
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
        if let Some(h) = &mut self.hist {
            let value = (x.max(0.0) * SCALE).round() as u64;
            // Auto-resizing histograms accept any u64; a failure only loses quantile precision.
            if h.record(value).is_ok() {
                if let Some(buckets) = self.ranks.get_mut() {
                    let top = h.highest_equivalent(value);
                    match buckets.binary_search_by_key(&top, |&(v, _)| v) {
                        Ok(i) => buckets[i].1 += 1,
                        Err(i) => buckets.insert(i, (top, 1)),
                    }
                }
            }
        }
    }

    /// Replaces the running statistics with a source's totals: `n` tasks with this `mean` and
    /// per-task `variance` (no per-task tests run on a summary).
    pub fn set_summary(&mut self, n: u64, mean: f64, variance: f64) {
        self.n = n;
        self.mean = mean;
        self.m2 = variance * n.saturating_sub(1) as f64;
    }

    /// Whether the statistics can still be computed.
    pub fn is_finite(&self) -> bool {
        self.mean.is_finite() && self.m2.is_finite()
    }

    /// Sample variance (n − 1).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            self.m2 / (self.n - 1) as f64
        }
    }

    /// The value at rank `rank` (1-based) of the sorted sample, from the histogram.
    pub fn at_rank(&self, rank: u64) -> Option<f64> {
        let h = self.hist.as_ref()?;
        if rank == 0 || rank > h.len() {
            return None;
        }
        self.quantile(rank as f64 / h.len() as f64)
    }

    /// The `q`-quantile as `Histogram::value_at_quantile` gives it, read from the cached
    /// cumulative buckets.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let h = self.hist.as_ref()?;
        if h.is_empty() {
            return None;
        }
        if q <= 0.0 {
            return Some(h.value_at_quantile(q) as f64 / SCALE);
        }
        let buckets = self.ranks.get_or_init(|| {
            // Bucket by bucket from the smallest recorded value to the largest, where the
            // histogram's own iterators (and value_at_quantile) walk every bucket from zero.
            let (mut value, max) = (h.min(), h.max());
            let mut out = Vec::new();
            while value <= max {
                let count = h.count_at(value);
                if count > 0 {
                    out.push((h.highest_equivalent(value), count));
                }
                let next = h.next_non_equivalent(value);
                if next <= value {
                    break;
                }
                value = next;
            }
            out
        });
        // value_at_quantile's own rule: the first bucket whose cumulative count reaches
        // ceil(q·n), at least 1.
        let count = ((q.min(1.0) * h.len() as f64).ceil() as u64).max(1);
        let mut cumulative = 0;
        let found = buckets.iter().find(|&&(_, n)| {
            cumulative += n;
            cumulative >= count
        });
        Some(found.map_or(0, |&(value, _)| value) as f64 / SCALE)
    }
}

/// Successes out of trials (fallbacks out of tasks, rejects out of reviewed tasks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bernoulli {
    pub n: u64,
    pub hits: u64,
    /// Betting e-processes against each absolute limit a gate puts on this rate.
    #[serde(default)]
    pub bets: Vec<Bet>,
    /// Change detectors for relative checks (candidate arm).
    #[serde(default)]
    pub watches: Vec<Watch>,
}

impl Bernoulli {
    pub fn push(&mut self, hit: bool) {
        let mean = if self.n == 0 {
            0.0
        } else {
            self.hits as f64 / self.n as f64
        };
        for bet in &mut self.bets {
            bet.update(
                f64::from(u8::from(hit)),
                self.n,
                mean,
                mean * (1.0 - mean),
                true,
            );
        }
        self.n += 1;
        self.hits += u64::from(hit);
    }
}

/// A test by betting (Waudby-Smith & Ramdas 2023) of a bounded signal's mean against one
/// absolute `limit`: two gamblers, one betting the mean is above the limit, one that it is
/// below, each staking a *predictable* fraction (chosen before seeing the observation). Under
/// the hypothesis a gambler bets against, its capital is a nonnegative supermartingale, so by
/// Ville's inequality it ever reaches `1/α` with probability at most `α` — at every look, from
/// the first observation, with no minimum sample count.
///
/// Each side also keeps gamblers with fixed stakes, one per detector shift; the evidence of a
/// side is their capital and the adaptive gambler's, averaged with fixed weights
/// ([`Bet::evidence_above`]). An average of test supermartingales is one, so the guarantee
/// holds, and a breach near a fixed gambler's shift is caught close to Wald's SPRT for it
/// instead of paying the adaptive gambler's learning cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bet {
    pub limit: f64,
    /// ln of the capital betting that the mean is above `limit`.
    pub log_above: f64,
    /// ln of the capital betting that the mean is below `limit`.
    pub log_below: f64,
    /// Change detectors: a shift above the limit that starts late, after hours at a healthy
    /// level, is diluted in the cumulative test; these watch for its start.
    #[serde(default)]
    pub above: Detectors,
    #[serde(default)]
    pub below: Detectors,
    /// Observations so far (the detectors' clock).
    #[serde(default)]
    pub n: u64,
    /// ln of the capital of gamblers with fixed stakes, each tuned to one alternative (the
    /// detectors' shifts, `SHIFTS_ABOVE` / `SHIFTS_BELOW`): near Wald's SPRT when the breach is
    /// about that size. Empty in checkpoints written before they existed.
    #[serde(default)]
    pub fixed_above: Gamblers,
    #[serde(default)]
    pub fixed_below: Gamblers,
    /// What an observation adds to each fixed gambler and detector (see [`Increments`]).
    #[serde(skip)]
    increments: Increments,
}

/// What an observation `x` adds to a bet's fixed-stake gamblers and change detectors: each adds
/// `ln(1 + c·(x − m))` for a coefficient `c` that depends only on the limit `m` (a stake, negated
/// on the side betting below). So a bet derives them once: the coefficients, kept distinct (at a
/// limit of 0.8 the twelve steps use five: the fixed gamblers above all hit one cap, the detectors
/// above another, and below each fixed gambler has its detector's stake), and for 0/1 outcomes the
/// steps themselves. An observation in between then takes one logarithm per distinct coefficient, a
/// 0/1 one none. Steps are in the order `fixed_above`, `fixed_below`, `above`, `below`. Derived,
/// never stored, not copied with a clone (a checkpoint's copy is only written out), and equal
/// whatever it holds. Kept inside the bet, as its gamblers are (a separate allocation would be one
/// more cache miss per observation), and one outcome's steps side by side: a 0/1 observation reads
/// two cache lines, not three.
#[derive(Debug, Default)]
struct Increments(std::sync::OnceLock<Tuning>);

impl Clone for Increments {
    fn clone(&self) -> Increments {
        Increments::default()
    }
}

impl PartialEq for Increments {
    fn eq(&self, _: &Increments) -> bool {
        true
    }
}

/// One bet's [`Increments`].
#[derive(Debug)]
struct Tuning {
    /// The steps for `x = 0` and `x = 1`.
    binary: [Steps; 2],
    /// The distinct coefficients `c`.
    distinct: Steps,
    /// For each step, the position of its coefficient in `distinct`.
    of_step: [u8; MAX_STEPS],
    /// How many steps the bet has (twelve, fewer in checkpoints from before fixed gamblers).
    step_count: usize,
}

impl Tuning {
    /// What `x` adds at each step, `d = x − m` away from the limit.
    fn steps(&self, d: f64) -> Steps {
        let mut logs = [0.0; MAX_STEPS];
        for (log, c) in logs.iter_mut().zip(self.distinct.iter()) {
            *log = step(*c, d);
        }
        let mut out = Steps::default();
        for &i in &self.of_step[..self.step_count] {
            out.push(logs[usize::from(i)]);
        }
        out
    }
}

/// `ln(1 + c·d)`, the log-likelihood ratio of one observation `d` from the limit for a bet
/// with signed stake `c` (floored above zero: a detector's stake may reach `1/m`).
fn step(c: f64, d: f64) -> f64 {
    (1.0 + c * d).max(f64::MIN_POSITIVE).ln()
}

/// Page's CUSUM on the log-wealth of one bet: `S = max(0, S + ln(1 ± λ(x − m)))`, for a shift
/// of the mean from the limit `m` to `factor · m`. Under the hypothesis (the mean stays on the
/// limit's safe side) each increment has a nonpositive expected exponential, so the run length
/// to `S ≥ h` averages at least `e^h` observations (Lorden 1971; an e-detector in Shin, Ramdas &
/// Rinaldo 2022). For 0/1 outcomes, `λ = (p1 − m)/(m(1 − m))` makes it exactly the Bernoulli
/// likelihood-ratio CUSUM for `p1`. The limit may move (a relative check's limit follows the
/// baseline) as long as it is fixed before each observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cusum {
    /// The post-change mean this detector is tuned for, as a multiple of the limit.
    pub factor: f64,
    pub stat: f64,
    /// The observation count when `stat` was last 0: the estimated change point.
    pub since: u64,
    /// Sum of the observations after `since`: the post-change estimate's numerator.
    pub sum_since: f64,
}

impl Cusum {
    fn new(factor: f64) -> Cusum {
        Cusum {
            factor,
            stat: 0.0,
            since: 0,
            sum_since: 0.0,
        }
    }

    /// One observation `x` against the limit `m`; `sign` is +1 watching for a rise, −1 a fall.
    fn update(&mut self, x: f64, m: f64, sign: f64, n: u64) {
        self.add(self.step(x, m, sign), x, n);
    }

    /// The log-likelihood ratio `x` adds against the limit `m`.
    fn step(&self, x: f64, m: f64, sign: f64) -> f64 {
        let m = m.clamp(1e-6, 1.0 - 1e-6);
        step(self.coefficient(m, sign), x - m)
    }

    /// The signed stake of [`Cusum::step`] against the limit `m` (already clamped).
    fn coefficient(&self, m: f64, sign: f64) -> f64 {
        let p1 = (m * self.factor).clamp(1e-6, 1.0 - 1e-6);
        let cap = if sign > 0.0 { 0.9 / m } else { 0.9 / (1.0 - m) };
        sign * ((p1 - m).abs() / (m * (1.0 - m))).min(cap)
    }

    /// Adds observation `x` (the `n`th), whose log-likelihood ratio is `step`.
    fn add(&mut self, step: f64, x: f64, n: u64) {
        self.stat += step;
        self.sum_since += x;
        if self.stat <= 0.0 {
            self.stat = 0.0;
            self.since = n;
            self.sum_since = 0.0;
        }
    }

    /// The mean since the estimated change point, and how many observations it covers.
    pub fn post_change(&self, n: u64) -> (f64, u64) {
        let k = n.saturating_sub(self.since);
        (
            if k == 0 {
                0.0
            } else {
                self.sum_since / k as f64
            },
            k,
        )
    }
}

/// Change detectors for one relative check (`max_increase`, `max_ratio`, `max_drop`) on a
/// bounded signal: the candidate's observations against the limit the baseline implies, taken
/// at the baseline's conservative confidence bound (so a baseline estimate still settling
/// cannot raise a false alarm) and refreshed before every candidate observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    pub check: Check,
    pub cusums: Detectors,
    pub n: u64,
    /// The limit used for the latest observation.
    pub limit: f64,
}

impl Watch {
    pub fn new(check: Check) -> Watch {
        let factors: &[f64] = if breach_is_below(&check) {
            &SHIFTS_BELOW
        } else {
            &SHIFTS_ABOVE
        };
        Watch {
            check,
            cusums: factors.iter().map(|&f| Cusum::new(f)).collect(),
            n: 0,
            limit: 0.0,
        }
    }

    fn update(&mut self, x: f64, limit: f64) {
        self.n += 1;
        self.limit = limit;
        let sign = if breach_is_below(&self.check) {
            -1.0
        } else {
            1.0
        };
        for c in &mut self.cusums {
            c.update(x.clamp(0.0, 1.0), limit, sign, self.n);
        }
    }

    /// The detector past `threshold` with the most evidence, if any.
    pub fn alarm(&self, threshold: f64) -> Option<&Cusum> {
        self.cusums
            .iter()
            .filter(|c| c.stat >= threshold)
            .max_by(|a, b| a.stat.total_cmp(&b.stat))
    }
}

fn breach_is_below(check: &Check) -> bool {
    matches!(check, Check::Min(_) | Check::MaxDrop(_))
}

/// Baseline samples before a relative check's change detectors start (their reference must be
/// a settled estimate).
const REFERENCE_SAMPLES: u64 = 100;
/// The baseline's reference is its estimate moved by the half-width of an always-valid
/// confidence sequence at this level, towards the candidate-friendly side.
const REFERENCE_ALPHA: f64 = 0.001;

/// Detector shifts, as multiples of the limit: above it (rates: 0.10 → 0.15, 0.20, 0.30) and
/// below it (scores: 0.80 → 0.75, 0.70, 0.60).
const SHIFTS_ABOVE: [f64; 3] = [1.5, 2.0, 3.0];
const SHIFTS_BELOW: [f64; 3] = [0.9375, 0.875, 0.75];
/// A side's change detectors, one per shift, kept inside their bet or watch: an observation
/// updates every signal's detectors, and at a thousand rollouts each separate allocation is
/// a cache miss on that path.
pub type Detectors = SmallVec<[Cusum; SHIFTS_ABOVE.len()]>;
/// A side's fixed-stake gamblers' log capital, one per shift, inline for the same reason.
pub type Gamblers = SmallVec<[f64; SHIFTS_ABOVE.len()]>;

/// How the capital is split between the adaptive gambler and the fixed-stake ones (in
/// `SHIFTS_*` order). Any split is valid — the average of test supermartingales is one — and
/// this one favours small breaches, whose oracle sample sizes are the largest: it costs
/// ln(1/weight) nats against the best single gambler in hindsight.
const MIX_ADAPTIVE: f64 = 0.1;
const MIX_FIXED: [f64; 3] = [0.45, 0.2, 0.25];

/// Pseudo-observations at the limit that the running estimates start from: the stakes grow as
/// evidence accumulates instead of following the first few observations.
const BET_PRIOR: f64 = 5.0;
/// Largest share of the capital at risk on one observation.
const BET_CAP: f64 = 0.5;

impl Bet {
    pub fn new(limit: f64) -> Bet {
        let m = limit.clamp(1e-6, 1.0 - 1e-6);
        let above = SHIFTS_ABOVE.iter().map(|&f| Cusum::new(f)).collect();
        let below = SHIFTS_BELOW.iter().map(|&f| Cusum::new(f)).collect();
        Bet {
            limit: m,
            log_above: 0.0,
            log_below: 0.0,
            above,
            below,
            n: 0,
            fixed_above: SmallVec::from_elem(0.0, SHIFTS_ABOVE.len()),
            fixed_below: SmallVec::from_elem(0.0, SHIFTS_BELOW.len()),
            increments: Increments::default(),
        }
    }

    /// ln of the mixed capital betting that the mean is above the limit: the evidence of a
    /// `max` breach (of compliance with a `min`).
    pub fn evidence_above(&self) -> f64 {
        mix(self.log_above, &self.fixed_above)
    }

    /// ln of the mixed capital betting that the mean is below the limit.
    pub fn evidence_below(&self) -> f64 {
        mix(self.log_below, &self.fixed_below)
    }

    /// The first detector past `threshold` in the breach direction (`above` for a `max`).
    pub fn change(&self, above: bool, threshold: f64) -> Option<&Cusum> {
        let detectors = if above { &self.above } else { &self.below };
        detectors
            .iter()
            .filter(|c| c.stat >= threshold)
            .max_by(|a, b| a.stat.total_cmp(&b.stat))
    }

    /// Bets on `x` (in 0..=1) with stakes from the `n` observations before it (their `mean`
    /// and `variance`): Kelly's fraction for 0/1 outcomes, aGRAPA's otherwise.
    fn update(&mut self, x: f64, n: u64, mean: f64, variance: f64, binary: bool) {
        let m = self.limit;
        let (up, down) = self.adaptive_stakes(n, mean, variance, binary);
        let x = x.clamp(0.0, 1.0);
        // The adaptive gambler stakes on one side at most: the other's factor is ln(1) = 0.
        if up != 0.0 {
            self.log_above += (1.0 + up * (x - m)).ln();
        }
        if down != 0.0 {
            self.log_below += (1.0 - down * (x - m)).ln();
        }
        self.n += 1;
        let tuning = self.increments.0.get_or_init(|| self.tune());
        let computed;
        let steps = if x == 0.0 || x == 1.0 {
            &tuning.binary[usize::from(x == 1.0)]
        } else {
            computed = tuning.steps(x - m);
            &computed
        };
        let mut steps = steps.iter().copied();
        for log in self.fixed_above.iter_mut().chain(&mut self.fixed_below) {
            *log += steps.next().unwrap_or(0.0);
        }
        for c in self.above.iter_mut().chain(&mut self.below) {
            c.add(steps.next().unwrap_or(0.0), x, self.n);
        }
    }

    /// The adaptive gambler's stakes on and against a breach, from the `n` observations so far.
    fn adaptive_stakes(&self, n: u64, mean: f64, variance: f64, binary: bool) -> (f64, f64) {
        let m = self.limit;
        let nf = n as f64;
        let shrunk = (nf * mean + BET_PRIOR * m) / (nf + BET_PRIOR);
        let edge = shrunk - m;
        let (up, down) = if binary {
            let kelly = edge / (m * (1.0 - m));
            (kelly.max(0.0), (-kelly).max(0.0))
        } else {
            let spread = (nf * variance + BET_PRIOR * 0.25) / (nf + BET_PRIOR) + edge * edge;
            let grapa = edge / spread.max(1e-9);
            (grapa.max(0.0), (-grapa).max(0.0))
        };
        (up.min(BET_CAP / m), down.min(BET_CAP / (1.0 - m)))
    }

    /// The bet's [`Increments`]: each step's coefficient, in order, made distinct.
    fn tune(&self) -> Tuning {
        let m = self.limit;
        let fixed_above = SHIFTS_ABOVE.iter().take(self.fixed_above.len()).map(|f| {
            let p1 = (m * f).min(1.0 - 1e-6);
            ((p1 - m) / (m * (1.0 - m))).min(BET_CAP / m)
        });
        let fixed_below = SHIFTS_BELOW.iter().take(self.fixed_below.len()).map(|f| {
            let p1 = (m * f).max(1e-6);
            -((m - p1) / (m * (1.0 - m))).min(BET_CAP / (1.0 - m))
        });
        let above = self.above.iter().map(|c| c.coefficient(m, 1.0));
        let below = self.below.iter().map(|c| c.coefficient(m, -1.0));
        let mut tuning = Tuning {
            binary: Default::default(),
            distinct: Steps::default(),
            of_step: [0; MAX_STEPS],
            step_count: 0,
        };
        for (slot, c) in tuning
            .of_step
            .iter_mut()
            .zip(fixed_above.chain(fixed_below).chain(above).chain(below))
        {
            let known = tuning
                .distinct
                .iter()
                .position(|&d| d.to_bits() == c.to_bits());
            let at = known.unwrap_or_else(|| {
                tuning.distinct.push(c);
                tuning.distinct.len - 1
            });
            *slot = u8::try_from(at).unwrap_or(u8::MAX);
            tuning.step_count += 1;
        }
        tuning.binary = [tuning.steps(-m), tuning.steps(1.0 - m)];
        tuning
    }
}

/// The most increments an observation adds to one bet: a fixed gambler and a detector per
/// shift, on each side.
const MAX_STEPS: usize = 2 * (SHIFTS_ABOVE.len() + SHIFTS_BELOW.len());

/// A bet's per-observation increments, without allocating: at most one per shift per side for
/// the fixed gamblers and the detectors each.
#[derive(Debug, Default)]
struct Steps {
    values: [f64; MAX_STEPS],
    len: usize,
}

impl Steps {
    /// Keeps `step` if there is room (a bet never has more gamblers than shifts).
    fn push(&mut self, step: f64) {
        if let Some(slot) = self.values.get_mut(self.len) {
            *slot = step;
            self.len += 1;
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, f64> {
        self.values[..self.len].iter()
    }
}

/// ln(w₀·e^adaptive + Σ wᵢ·e^fixedᵢ), computed without overflow; the adaptive gambler alone
/// when there are no fixed ones (an older checkpoint).
fn mix(adaptive: f64, fixed: &[f64]) -> f64 {
    if fixed.len() != MIX_FIXED.len() {
        return adaptive;
    }
    let terms = std::iter::once(MIX_ADAPTIVE.ln() + adaptive)
        .chain(fixed.iter().zip(MIX_FIXED).map(|(l, w)| w.ln() + l));
    let top = terms.clone().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return top;
    }
    top + terms.map(|t| (t - top).exp()).sum::<f64>().ln()
}

impl Bernoulli {
    pub fn rate(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.hits as f64 / self.n as f64
        }
    }
}

/// The accumulator for one signal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Accum {
    Numeric(Moments),
    Rate(Bernoulli),
    /// A metrics source's histogram: quantiles only, bounded by bucket edges.
    Buckets(Buckets),
}

impl Accum {
    pub fn samples(&self) -> u64 {
        match self {
            Accum::Numeric(m) => m.n,
            Accum::Rate(b) => b.n,
            Accum::Buckets(b) => b.n(),
        }
    }

    /// Whether this accumulator's statistics can be computed (rates always can).
    pub fn is_finite(&self) -> bool {
        match self {
            Accum::Numeric(m) => m.is_finite(),
            Accum::Rate(_) | Accum::Buckets(_) => true,
        }
    }

    /// The exceedance test for an absolute limit on the `quantile`, if this signal keeps one.
    pub fn exceedance(&self, quantile: f64, threshold: f64, below: bool) -> Option<&Exceedance> {
        match self {
            Accum::Numeric(m) => m.exceedances.iter().find(|e| {
                (e.quantile - quantile).abs() < 1e-12
                    && (e.threshold - threshold).abs() < 1e-12
                    && e.below == below
            }),
            Accum::Rate(_) | Accum::Buckets(_) => None,
        }
    }

    /// The change detectors for relative `check`, if this signal keeps them.
    pub fn watch(&self, check: &Check) -> Option<&Watch> {
        let watches = match self {
            Accum::Numeric(m) => &m.watches,
            Accum::Rate(b) => &b.watches,
            Accum::Buckets(_) => return None,
        };
        watches.iter().find(|w| &w.check == check)
    }

    fn watches_mut(&mut self) -> Option<&mut Vec<Watch>> {
        match self {
            Accum::Numeric(m) => Some(&mut m.watches),
            Accum::Rate(b) => Some(&mut b.watches),
            Accum::Buckets(_) => None,
        }
    }

    /// The mean (or rate), its per-observation variance and count, for a reference.
    fn reference(&self) -> (f64, f64, u64) {
        match self {
            Accum::Numeric(m) => (m.mean, m.variance(), m.n),
            Accum::Rate(b) => {
                let p = b.rate();
                (p, p * (1.0 - p), b.n)
            }
            Accum::Buckets(_) => (0.0, 0.0, 0),
        }
    }

    /// The betting e-process against `limit`, if this signal keeps one.
    pub fn bet(&self, limit: f64) -> Option<&Bet> {
        let bets = match self {
            Accum::Numeric(m) => &m.bets,
            Accum::Rate(b) => &b.bets,
            Accum::Buckets(_) => return None,
        };
        bets.iter()
            .find(|b| (b.limit - limit.clamp(1e-6, 1.0 - 1e-6)).abs() < 1e-12)
    }

    /// The point value of `stat` (mean, quantile or rate).
    pub fn value(&self, stat: Stat) -> Option<f64> {
        match (self, stat) {
            (_, _) if self.samples() == 0 => None,
            (Accum::Numeric(m), Stat::Mean) => Some(m.mean),
            (Accum::Numeric(m), Stat::Quantile(p)) => m.quantile(p),
            (Accum::Rate(b), _) => Some(b.rate()),
            (Accum::Buckets(b), Stat::Quantile(p)) => b.quantile(p),
            (Accum::Numeric(_) | Accum::Buckets(_), _) => None,
        }
    }

    /// Always-valid bounds on the `p`-quantile (`None`: this accumulator keeps no quantiles).
    pub fn quantile_bounds(&self, p: f64, design: f64, alpha: f64) -> Option<Interval> {
        match self {
            Accum::Numeric(m) => {
                m.hist.as_ref()?;
                let (lo, hi) = crate::core::stats::quantile_ranks(m.n, p, design, alpha);
                Some(Interval {
                    lower: lo.and_then(|r| m.at_rank(r)).unwrap_or(f64::NEG_INFINITY),
                    upper: hi.and_then(|r| m.at_rank(r)).unwrap_or(f64::INFINITY),
                })
            }
            Accum::Buckets(b) => Some(b.quantile_bounds(p, design, alpha)),
            Accum::Rate(_) => None,
        }
    }

    fn push(&mut self, x: f64) {
        match self {
            Accum::Numeric(m) => m.push(x),
            Accum::Rate(b) => b.push(x >= 0.5),
            // Fed by a source's totals only.
            Accum::Buckets(_) => {}
        }
    }
}

/// How a signal that a metrics source has is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourcedAs {
    /// Hits out of tasks, expanded into per-task pushes.
    Counts,
    /// Cumulative bucket counts.
    Buckets,
    /// Count, mean and variance totals.
    Sums,
}

impl SourcedAs {
    pub fn of(query: &SourceQuery) -> SourcedAs {
        match query {
            SourceQuery::Counts { .. } => SourcedAs::Counts,
            SourceQuery::Histogram { .. } => SourcedAs::Buckets,
            SourceQuery::Sums { .. } => SourcedAs::Sums,
        }
    }
}

/// Which signals a rollout tracks, and whether each needs a histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    pub signal: Signal,
    pub histogram: bool,
    /// Absolute limits the gates put on this signal's mean or rate, tested by betting (bounded
    /// signals only).
    #[serde(default)]
    pub limits: Vec<f64>,
    /// Relative checks on this (bounded) signal, watched for late shifts against the baseline.
    #[serde(default)]
    pub relative: Vec<Check>,
    /// Absolute limits on quantiles of this signal: `(quantile, threshold, below)`.
    #[serde(default)]
    pub quantile_limits: Vec<(f64, f64, bool)>,
    /// Fed by a metrics source rather than pushed events (pushed values are ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sourced: Option<SourcedAs>,
}

/// Evidence for one arm (baseline or candidate) in one segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmEvidence {
    /// Pushed events recorded.
    pub tasks: u64,
    /// The most tasks any metrics source counted for this arm (its requests).
    #[serde(default)]
    pub sourced_tasks: u64,
    pub signals: Vec<Accum>,
}

impl ArmEvidence {
    /// Tasks seen, pushed or counted by a source.
    pub fn task_count(&self) -> u64 {
        self.tasks.max(self.sourced_tasks)
    }
}

impl ArmEvidence {
    fn new(tracked: &[Tracked]) -> ArmEvidence {
        let signals = tracked
            .iter()
            .map(|t| {
                let bets = t.limits.iter().map(|&l| Bet::new(l)).collect();
                let watches = t.relative.iter().map(|&c| Watch::new(c)).collect();
                let exceedances: Vec<Exceedance> = t
                    .quantile_limits
                    .iter()
                    .map(|&(q, l, below)| Exceedance::new(q, l, below))
                    .collect();
                let exceedance_hits = vec![0; exceedances.len()];
                if t.sourced == Some(SourcedAs::Buckets) {
                    return Accum::Buckets(Buckets::default());
                }
                if t.sourced == Some(SourcedAs::Sums) {
                    return Accum::Numeric(Moments::default());
                }
                match (t.signal.is_rate(), t.histogram) {
                    (true, _) => Accum::Rate(Bernoulli {
                        bets,
                        watches,
                        ..Bernoulli::default()
                    }),
                    (false, true) => Accum::Numeric(Moments {
                        bets,
                        watches,
                        exceedances,
                        exceedance_hits,
                        ..Moments::with_histogram()
                    }),
                    (false, false) => Accum::Numeric(Moments {
                        bets,
                        watches,
                        exceedances,
                        exceedance_hits,
                        ..Moments::default()
                    }),
                }
            })
            .collect();
        ArmEvidence {
            tasks: 0,
            sourced_tasks: 0,
            signals,
        }
    }
}

/// Which side of the split a task ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Baseline,
    Candidate,
}

/// All evidence of one rollout's current epoch. The default holds nothing: no signal, no
/// segment (what a scope is left with once its evidence was moved out).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Evidence {
    pub tracked: Vec<Tracked>,
    /// Per rollout segment: `[baseline, candidate]`.
    pub cells: Vec<[ArmEvidence; 2]>,
    /// The sample count the sequential tests are tuned for, fixed when the epoch starts:
    /// retuning after seeing data would void the always-valid guarantee.
    pub design_samples: f64,
    /// Why a metrics source gave no usable answer in its latest round, by `(segment, signal)`:
    /// those gates cannot pass. Not stored: the next round sets them again.
    #[serde(skip)]
    pub faults: BTreeMap<(usize, String), String>,
    /// Tasks recorded but not yet applied (see [`Evidence::defer`]). Not stored: a checkpoint
    /// is taken after applying them.
    #[serde(skip)]
    deferred: Deferred,
}

/// A task's observation of a tracked signal, unless a metrics source keeps that signal.
fn observation(tracked: &Tracked, event: &TaskEvent) -> Option<f64> {
    match tracked.sourced {
        Some(_) => None,
        None => event.observation(&tracked.signal),
    }
}

/// How many tasks a scope's evidence holds back before applying them together.
pub const DEFERRED_TASKS: usize = 8;

/// Tasks an [`Evidence`] holds back, in the order recorded.
#[derive(Debug, Clone, Default)]
struct Deferred {
    /// Each task's segment and arm.
    at: Vec<(usize, Arm)>,
    /// Each task's observation of every tracked signal (`None`: not reported, or kept by a
    /// metrics source), one row of `tracked.len()` per task.
    values: Vec<Option<f64>>,
}

impl Evidence {
    pub fn new(tracked: Vec<Tracked>, segments: usize, design_samples: f64) -> Evidence {
        let cells = (0..segments)
            .map(|_| [ArmEvidence::new(&tracked), ArmEvidence::new(&tracked)])
            .collect();
        Evidence {
            tracked,
            cells,
            design_samples,
            faults: BTreeMap::new(),
            deferred: Deferred::default(),
        }
    }

    /// An empty copy with the same shape, tuned for `design_samples`: a new epoch.
    pub fn fresh(&self, design_samples: f64) -> Evidence {
        Evidence::new(self.tracked.clone(), self.cells.len(), design_samples)
    }

    pub fn arm(&self, segment: usize, arm: Arm) -> Option<&ArmEvidence> {
        self.cells.get(segment).map(|c| &c[arm as usize])
    }

    pub fn signal_index(&self, signal: &Signal) -> Option<usize> {
        self.tracked.iter().position(|t| &t.signal == signal)
    }

    /// Adds a task now (after any deferred ones, in order).
    pub fn record(&mut self, segment: usize, arm: Arm, event: &TaskEvent) {
        self.apply_deferred();
        if segment >= self.cells.len() {
            return;
        }
        let observations = self.tracked.iter().map(|t| observation(t, event));
        let observations: SmallVec<[Option<f64>; 8]> = observations.collect();
        self.apply(segment, arm, &observations);
    }

    /// Adds a task later: its observations are kept, and applied in order with the next
    /// tasks once [`DEFERRED_TASKS`] wait, at [`Evidence::apply_deferred`], or before the
    /// next [`Evidence::record`]. Until then the evidence reads as if they had not happened,
    /// so a reader applies them first. At a thousand rollouts an event's updates are cache
    /// misses over its arm's state; applied together, a scope's tasks share them. Returns
    /// whether tasks now wait.
    pub fn defer(&mut self, segment: usize, arm: Arm, event: &TaskEvent) -> bool {
        if segment < self.cells.len() {
            self.deferred.at.push((segment, arm));
            let observations = self.tracked.iter().map(|t| observation(t, event));
            self.deferred.values.extend(observations);
            if self.deferred.at.len() >= DEFERRED_TASKS {
                self.apply_deferred();
            }
        }
        self.has_deferred()
    }

    /// Whether deferred tasks wait to be applied.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.at.is_empty()
    }

    /// Applies the deferred tasks, in the order recorded.
    pub fn apply_deferred(&mut self) {
        if !self.has_deferred() {
            return;
        }
        let mut deferred = std::mem::take(&mut self.deferred);
        let width = self.tracked.len();
        for (k, &(segment, arm)) in deferred.at.iter().enumerate() {
            let row = deferred
                .values
                .get(k * width..(k + 1) * width)
                .unwrap_or(&[]);
            self.apply(segment, arm, row);
        }
        // Kept for the next tasks: deferring then allocates nothing.
        deferred.at.clear();
        deferred.values.clear();
        self.deferred = deferred;
    }

    /// One task in `segment` (which exists) and `arm`: its observation of each tracked signal.
    fn apply(&mut self, segment: usize, arm: Arm, observations: &[Option<f64>]) {
        if let Some(cell) = self.cells.get_mut(segment) {
            cell[arm as usize].tasks += 1;
        }
        for (i, x) in observations.iter().enumerate() {
            if let Some(x) = *x {
                self.observe(segment, arm, i, x);
            }
        }
    }

    /// One task's value `x` of tracked signal `i`: the candidate's change detectors first
    /// (against the limit the baseline implies now), then the accumulator.
    pub fn observe(&mut self, segment: usize, arm: Arm, i: usize, x: f64) {
        let Some(cell) = self.cells.get_mut(segment) else {
            return;
        };
        let [baseline, candidate] = cell;
        if arm == Arm::Candidate && !self.tracked[i].relative.is_empty() {
            let (mean, var, n) = baseline.signals[i].reference();
            if n >= REFERENCE_SAMPLES {
                let slack = crate::core::stats::mean_halfwidth(
                    var,
                    n as f64,
                    self.design_samples.max(1.0),
                    REFERENCE_ALPHA,
                );
                for w in candidate.signals[i].watches_mut().into_iter().flatten() {
                    let limit = match w.check {
                        Check::MaxIncrease(inc) => mean + slack + inc,
                        Check::MaxRatio(r) => r * (mean + slack),
                        Check::MaxDrop(d) => mean - slack - d,
                        Check::Max(m) | Check::Min(m) => m,
                    };
                    w.update(x, limit);
                }
            }
        }
        let evidence = if arm == Arm::Candidate {
            candidate
        } else {
            baseline
        };
        evidence.signals[i].push(x);
    }

    /// The accumulators of one arm in one segment, to replace with a source's totals.
    pub fn arm_mut(&mut self, segment: usize, arm: Arm) -> Option<&mut ArmEvidence> {
        self.cells.get_mut(segment).map(|c| &mut c[arm as usize])
    }

    /// Candidate tasks across every segment.
    pub fn candidate_tasks(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c[Arm::Candidate as usize].task_count())
            .sum()
    }
}

/// One scope's evidence as stored: the aggregates of its epoch covering every event with a
/// sequence number up to `seq`, so start-up replays only the events after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub epoch: u64,
    pub seq: u64,
    pub healthy_read_only: u64,
    pub evidence: Evidence,
}

#[cfg(test)]
mod rank_tests {
    use super::*;

    #[test]
    fn cached_ranks_answer_like_the_histogram_at_every_quantile() {
        let mut m = Moments::with_histogram();
        let mut rng = crate::core::stats::Rng::new(7);
        for step in 0..4_000 {
            m.push(rng.uniform() * 3_000.0 + if step % 7 == 0 { 20_000.0 } else { 0.0 });
            if step % 397 == 0 || step < 5 {
                let h = m.hist.as_ref().expect("histogram");
                for k in 0..=200 {
                    let q = f64::from(k) / 200.0;
                    let want = h.value_at_quantile(q) as f64 / SCALE;
                    assert_eq!(m.quantile(q), Some(want), "q {q} at n {}", m.n);
                }
                for rank in 1..=m.n.min(50) {
                    let want = h.value_at_quantile(rank as f64 / h.len() as f64) as f64 / SCALE;
                    assert_eq!(m.at_rank(rank), Some(want));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Bet::update` as written before bets derived their increments once: twelve logarithms
    /// per observation, whatever it is.
    fn update_uncached(b: &mut Bet, x: f64, n: u64, mean: f64, variance: f64, binary: bool) {
        let m = b.limit;
        let (up, down) = b.adaptive_stakes(n, mean, variance, binary);
        let x = x.clamp(0.0, 1.0);
        b.log_above += (1.0 + up * (x - m)).ln();
        b.log_below += (1.0 - down * (x - m)).ln();
        for (log, f) in b.fixed_above.iter_mut().zip(SHIFTS_ABOVE) {
            let p1 = (m * f).min(1.0 - 1e-6);
            let stake = ((p1 - m) / (m * (1.0 - m))).min(BET_CAP / m);
            *log += (1.0 + stake * (x - m)).ln();
        }
        for (log, f) in b.fixed_below.iter_mut().zip(SHIFTS_BELOW) {
            let p1 = (m * f).max(1e-6);
            let stake = ((m - p1) / (m * (1.0 - m))).min(BET_CAP / (1.0 - m));
            *log += (1.0 - stake * (x - m)).ln();
        }
        b.n += 1;
        for c in &mut b.above {
            c.update(x, m, 1.0, b.n);
        }
        for c in &mut b.below {
            c.update(x, m, -1.0, b.n);
        }
    }

    #[test]
    fn a_bet_reusing_its_increments_is_bit_for_bit_the_uncached_one() {
        let mut rng = crate::core::stats::Rng::new(11);
        for limit in [1e-9, 0.001, 0.02, 0.1, 0.5, 0.8, 0.97, 1.0] {
            let (mut cached, mut plain) = (Bet::new(limit), Bet::new(limit));
            let (mut n, mut sum) = (0u64, 0.0);
            for i in 0..3_000 {
                // Mostly 0/1 (rates, exceedances), some in between (bounded scores).
                let u = rng.uniform();
                let x = match i % 5 {
                    4 => u,
                    _ => f64::from(u8::from(u < limit.max(0.05) * 1.5)),
                };
                let mean = if n == 0 { 0.0 } else { sum / n as f64 };
                let binary = i % 5 != 4;
                cached.update(x, n, mean, mean * (1.0 - mean), binary);
                update_uncached(&mut plain, x, n, mean, mean * (1.0 - mean), binary);
                n += 1;
                sum += x;
            }
            let bits = |b: &Bet| -> Vec<u64> {
                let mut v = vec![b.log_above.to_bits(), b.log_below.to_bits(), b.n];
                v.extend(
                    b.fixed_above
                        .iter()
                        .chain(&b.fixed_below)
                        .map(|f| f.to_bits()),
                );
                for c in b.above.iter().chain(&b.below) {
                    v.extend([c.stat.to_bits(), c.since, c.sum_since.to_bits()]);
                }
                v
            };
            assert_eq!(bits(&cached), bits(&plain), "limit {limit}");
            assert!(cached.increments.0.get().is_some(), "the cache was used");
        }
    }

    #[test]
    fn a_bet_takes_one_logarithm_per_distinct_stake() {
        // At a limit of 0.8 the fixed gamblers above all hit the same cap (0.5/m), so do the
        // detectors above (0.9/m), and below each fixed gambler has its detector's stake.
        let distinct = |limit: f64| {
            let mut b = Bet::new(limit);
            b.update(0.5, 0, 0.0, 0.25, false);
            b.increments.0.get().map(|t| (t.distinct.len, t.step_count))
        };
        assert_eq!(distinct(0.8), Some((5, 12)));
        // Small limits (rates): no cap binds, each fixed gambler matches its detector.
        assert_eq!(distinct(0.05), Some((6, 12)));
    }

    #[test]
    fn a_bets_gamblers_and_detectors_live_inside_it_and_read_as_before() {
        // At a thousand rollouts every observation reaches a bet in memory, not in cache; its
        // gamblers, detectors and 0/1 increments inside it are one allocation to fetch, not five.
        let mut bet = Bet::new(0.2);
        for x in [0.0, 1.0, 0.3] {
            bet.update(x, bet.n, 0.2, 0.16, false);
        }
        for side in [&bet.above, &bet.below] {
            assert!(!side.spilled(), "detectors on the heap");
        }
        for side in [&bet.fixed_above, &bet.fixed_below] {
            assert!(!side.spilled(), "gamblers on the heap");
        }
        let watch = Watch::new(Check::MaxRatio(1.2));
        assert!(!watch.cusums.spilled());
        // Checkpoints keep them as JSON arrays, as when they were vectors: one written before
        // the fixed gamblers existed (no such field) reads with none, and any length reads back.
        let json = serde_json::to_value(&bet).expect("serialize");
        assert_eq!(json["fixed_above"].as_array().map(Vec::len), Some(3));
        assert_eq!(json["above"].as_array().map(Vec::len), Some(3));
        let back: Bet = serde_json::from_value(json.clone()).expect("deserialize");
        assert_eq!(back, bet);
        let mut old = json;
        let fields = old.as_object_mut().expect("object");
        fields.remove("fixed_above");
        fields.remove("fixed_below");
        let mut four = fields["above"].as_array().cloned().expect("array");
        four.push(four[0].clone());
        fields.insert("above".into(), serde_json::Value::Array(four));
        let old: Bet = serde_json::from_value(old).expect("an older checkpoint");
        assert!(old.fixed_above.is_empty() && old.fixed_below.is_empty());
        assert_eq!(old.above.len(), 4);
        assert_eq!(
            old.evidence_above(),
            old.log_above,
            "no fixed gamblers: the adaptive one"
        );
    }

    #[test]
    fn the_gamblers_share_one_unit_of_capital() {
        // Validity of the mixture rests on its weights summing to one.
        let total = MIX_ADAPTIVE + MIX_FIXED.iter().sum::<f64>();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        assert_eq!(MIX_FIXED.len(), SHIFTS_ABOVE.len());
        assert_eq!(MIX_FIXED.len(), SHIFTS_BELOW.len());
        // Before any observation the mixed capital is exactly the stake.
        let bet = Bet::new(0.1);
        assert!(bet.evidence_above().abs() < 1e-12);
        assert!(bet.evidence_below().abs() < 1e-12);
    }

    #[test]
    fn a_checkpoint_from_before_the_fixed_gamblers_decides_by_the_adaptive_one() {
        let mut old = Bet::new(0.1);
        old.fixed_above.clear();
        old.fixed_below.clear();
        let mut b = Bernoulli {
            bets: vec![old],
            ..Bernoulli::default()
        };
        for i in 0..50 {
            b.push(i % 3 == 0);
        }
        let bet = &b.bets[0];
        assert!(bet.fixed_above.is_empty());
        assert_eq!(bet.evidence_above(), bet.log_above);
        assert_eq!(bet.evidence_below(), bet.log_below);
    }
}

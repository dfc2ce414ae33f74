//! Bucketed evidence: a metrics source's histogram (Prometheus `_bucket` counters, `le`
//! upper bounds) as cumulative counts, and what they can honestly say about a quantile.
//!
//! Bucketed data knows each task's value only up to its bucket. The `p`-quantile's always-valid
//! confidence sequence is `[X_(lo), X_(hi)]` in order statistics ([`quantile_ranks`]); the task
//! at rank `lo` is known to lie in some bucket `(a, b]`, so `a` is a sure lower bound of it, and
//! the task at rank `hi` in `(c, d]`, so `d` a sure upper bound. The interval `[a, d]` therefore
//! covers the quantile at least as often as the exact one does: the bound is conservative, never
//! tighter than the data. A rank in the `+Inf` bucket has no upper bound (a `max` cannot pass).

use serde::{Deserialize, Serialize};

use crate::core::stats::{Interval, quantile_ranks};

/// Cumulative counts per upper bound, as a histogram's `le` buckets are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    /// Upper bounds, ascending, in the signal's unit; the last is `+∞`.
    pub bounds: Vec<f64>,
    /// Tasks with a value at most the bound of the same index (non-decreasing).
    pub cumulative: Vec<u64>,
    /// The lower edge of the first bucket: the signal's plausible minimum.
    pub floor: f64,
}

/// Why a histogram reading cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BucketsError {
    #[error("the histogram has no `le=\"+Inf\"` bucket: it does not count every task")]
    NoInfinity,
    #[error("a bucket bound or count is not a finite non-negative number")]
    NotFinite,
}

impl Buckets {
    /// Builds from `(le, cumulative count)` pairs in any order. Counts that dip below an earlier
    /// bucket's (PromQL `increase` extrapolates each series on its own) are raised to it, and
    /// fractional counts are rounded to tasks.
    pub fn from_pairs(mut pairs: Vec<(f64, f64)>, floor: f64) -> Result<Buckets, BucketsError> {
        if pairs
            .iter()
            .any(|(le, c)| le.is_nan() || !c.is_finite() || *c < 0.0)
        {
            return Err(BucketsError::NotFinite);
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        pairs.dedup_by(|a, b| a.0 == b.0);
        if pairs.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
            return Err(BucketsError::NoInfinity);
        }
        let mut running = 0u64;
        let mut bounds = Vec::with_capacity(pairs.len());
        let mut cumulative = Vec::with_capacity(pairs.len());
        for (le, c) in pairs {
            running = running.max(c.round() as u64);
            bounds.push(le);
            cumulative.push(running);
        }
        Ok(Buckets {
            bounds,
            cumulative,
            floor,
        })
    }

    /// Every task counted (the `+Inf` bucket).
    pub fn n(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The bucket holding the task at 1-based `rank`, as `(lower edge, upper edge)`.
    fn bucket_of(&self, rank: u64) -> Option<(f64, f64)> {
        let i = self.cumulative.iter().position(|&c| c >= rank)?;
        let lower = if i == 0 {
            self.floor.min(self.bounds[0])
        } else {
            self.bounds[i - 1]
        };
        Some((lower, self.bounds[i]))
    }

    /// Always-valid bounds on the `p`-quantile at level `alpha`: the lower edge of the bucket
    /// holding the lower rank, the upper edge of the one holding the upper rank.
    pub fn quantile_bounds(&self, p: f64, design: f64, alpha: f64) -> Interval {
        let (lo, hi) = quantile_ranks(self.n(), p, design, alpha);
        Interval {
            lower: lo
                .and_then(|r| self.bucket_of(r))
                .map_or(f64::NEG_INFINITY, |(a, _)| a),
            upper: hi
                .and_then(|r| self.bucket_of(r))
                .map_or(f64::INFINITY, |(_, b)| b),
        }
    }

    /// A point estimate of the `p`-quantile, interpolated within its bucket as PromQL's
    /// `histogram_quantile` does (for display; verdicts use [`Buckets::quantile_bounds`]).
    pub fn quantile(&self, p: f64) -> Option<f64> {
        let n = self.n();
        if n == 0 {
            return None;
        }
        let rank = (p * n as f64).max(1.0);
        let i = self.cumulative.iter().position(|&c| c as f64 >= rank)?;
        let (lower, upper) = self.bucket_of(self.cumulative[i])?;
        if upper.is_infinite() {
            return Some(lower);
        }
        let below = if i == 0 { 0 } else { self.cumulative[i - 1] };
        let inside = (self.cumulative[i] - below).max(1) as f64;
        Some(lower + (upper - lower) * (rank - below as f64) / inside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stats::Rng;

    const BOUNDS: [f64; 8] = [
        50.0,
        100.0,
        250.0,
        500.0,
        1000.0,
        2500.0,
        5000.0,
        f64::INFINITY,
    ];

    fn bucketed(values: &[f64]) -> Buckets {
        let pairs = BOUNDS
            .iter()
            .map(|&le| (le, values.iter().filter(|&&v| v <= le).count() as f64))
            .collect();
        Buckets::from_pairs(pairs, 0.0).expect("valid")
    }

    /// The bucketed bounds contain the exact order-statistic bounds at every n, over many
    /// seeds: they are never tighter than the data (the conservative direction).
    #[test]
    fn the_bucket_bounds_contain_the_exact_order_statistic_bounds() {
        let mut rng = Rng::new(7);
        let mut checked = 0;
        for _ in 0..200 {
            let n = 1 + (rng.uniform() * 2000.0) as usize;
            let mut values: Vec<f64> = (0..n)
                .map(|_| (6.0 + 1.2 * rng.normal()).exp().min(9000.0))
                .collect();
            let b = bucketed(&values);
            values.sort_by(f64::total_cmp);
            for p in [0.5, 0.9, 0.95, 0.99] {
                let (lo, hi) = quantile_ranks(n as u64, p, 500.0, 0.01);
                let bounds = b.quantile_bounds(p, 500.0, 0.01);
                if let Some(lo) = lo {
                    assert!(
                        bounds.lower <= values[lo as usize - 1],
                        "lower bound above X_(lo)"
                    );
                    checked += 1;
                } else {
                    assert_eq!(bounds.lower, f64::NEG_INFINITY);
                }
                if let Some(hi) = hi {
                    assert!(
                        bounds.upper >= values[hi as usize - 1],
                        "upper bound below X_(hi)"
                    );
                    checked += 1;
                } else {
                    assert_eq!(bounds.upper, f64::INFINITY);
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    /// Coverage under continuous monitoring: the true p95 of the distribution stays inside the
    /// bucketed interval at every look in at least 1 − α of the runs.
    #[test]
    fn the_bucketed_p95_interval_holds_its_level_at_every_look() {
        // Log-normal(6, 1.2): p95 = exp(6 + 1.645·1.2).
        let truth = (6.0f64 + 1.644_854 * 1.2).exp();
        let (runs, alpha) = (400, 0.05);
        let mut missed = 0;
        for seed in 0..runs {
            let mut rng = Rng::new(1000 + seed);
            let mut values = Vec::new();
            let mut miss = false;
            for _look in 0..40 {
                values.extend((0..50).map(|_| (6.0 + 1.2 * rng.normal()).exp()));
                let i = bucketed(&values).quantile_bounds(0.95, 1000.0, alpha);
                if !(i.lower <= truth && truth <= i.upper) {
                    miss = true;
                }
            }
            missed += u32::from(miss);
        }
        println!("bucketed p95 interval missed the truth in {missed} of {runs} runs (α = {alpha})");
        assert!(f64::from(missed) <= alpha * runs as f64, "{missed}");
    }

    #[test]
    fn a_rank_in_the_infinite_bucket_has_no_upper_bound() {
        let b = bucketed(&[6000.0; 300]);
        let i = b.quantile_bounds(0.95, 300.0, 0.05);
        assert_eq!(i.upper, f64::INFINITY);
        assert_eq!(i.lower, 5000.0);
        assert_eq!(b.quantile(0.95), Some(5000.0));
    }

    #[test]
    fn extrapolated_counts_are_made_monotone_and_missing_inf_is_refused() {
        let b = Buckets::from_pairs(vec![(f64::INFINITY, 10.2), (100.0, 7.6), (250.0, 7.4)], 0.0)
            .expect("valid");
        assert_eq!(b.cumulative, vec![8, 8, 10]);
        assert_eq!(b.n(), 10);
        assert_eq!(
            Buckets::from_pairs(vec![(100.0, 3.0)], 0.0),
            Err(BucketsError::NoInfinity)
        );
        assert_eq!(
            Buckets::from_pairs(vec![(f64::INFINITY, f64::NAN)], 0.0),
            Err(BucketsError::NotFinite)
        );
    }
}

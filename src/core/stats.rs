//! Always-valid sequential statistics: the normal-mixture confidence sequence.
//!
//! One primitive serves every gate. A confidence sequence (CS) covers the true value at *every*
//! look simultaneously with probability 1 − α, so the controller may evaluate on every tick
//! without inflating false alarms (Howard et al. 2021; Johari et al. "Always valid inference").
//! For a sum of `t` unit-variance increments, the two-sided normal-mixture boundary is
//!
//! ```text
//! u(t) = sqrt( (t + ρ) · ( ln(1 + t/ρ) + 2 ln(1/α) ) ),   ρ = t_opt / k(α),
//! k(α) = 2 ln(1/α) + ln(1 + 2 ln(1/α))
//! ```
//!
//! which is tightest near `t_opt`, the sample count where decisions are expected. Means use
//! `estimate ± σ·u(t)/t`; quantiles use the same boundary on the count of observations
//! below the quantile (an order-statistic CS). See `../shared/notes/flags-gateways-statistics.md` §5.

/// `k(α)`: the mixture scale that makes the boundary tightest at the design sample count.
fn mixture_k(alpha: f64) -> f64 {
    let l = 2.0 * (1.0 / alpha).ln();
    l + (1.0 + l).ln()
}

/// The normal-mixture boundary for a centred sum after `info` units of intrinsic time
/// (sample count × per-sample variance), tuned for `info_opt`.
pub fn mixture_boundary(info: f64, info_opt: f64, alpha: f64) -> f64 {
    if info <= 0.0 {
        return f64::INFINITY;
    }
    let rho = (info_opt / mixture_k(alpha)).max(f64::MIN_POSITIVE);
    ((info + rho) * ((1.0 + info / rho).ln() + 2.0 * (1.0 / alpha).ln())).sqrt()
}

/// Half-width of the CS for a mean of `t` samples whose per-sample variance is `var`.
pub fn mean_halfwidth(var: f64, t: f64, t_opt: f64, alpha: f64) -> f64 {
    if t <= 0.0 || !var.is_finite() {
        return f64::INFINITY;
    }
    var.max(0.0).sqrt() * mixture_boundary(t, t_opt, alpha) / t
}

/// A closed interval. `lower > upper` never happens; infinite ends mean "not enough data".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
}

impl Interval {
    pub const UNBOUNDED: Interval = Interval {
        lower: f64::NEG_INFINITY,
        upper: f64::INFINITY,
    };

    pub fn around(center: f64, halfwidth: f64) -> Interval {
        Interval {
            lower: center - halfwidth,
            upper: center + halfwidth,
        }
    }
}

/// Ranks (1-based, as fractions of `n`) bracketing the `p`-quantile with confidence 1 − α at
/// every look: the CS is `[X_(lo), X_(hi)]`. `None` for an end the data cannot yet bound.
pub fn quantile_ranks(n: u64, p: f64, t_opt: f64, alpha: f64) -> (Option<u64>, Option<u64>) {
    if n == 0 {
        return (None, None);
    }
    let nf = n as f64;
    let var = p * (1.0 - p);
    let u = mixture_boundary(nf * var, t_opt * var, alpha);
    let lo = (nf * p - u).ceil();
    let hi = (nf * p + u).floor() + 1.0;
    let lo = (lo >= 1.0).then_some(lo as u64);
    let hi = (hi <= nf).then_some(hi as u64);
    (lo, hi)
}

/// A seeded random source for statistical tests.
/// A seeded xorshift64* source: deterministic runs, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform on (0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.uniform(), self.uniform());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    }
}

#[cfg(test)]
pub(crate) fn tests_rng(seed: u64) -> Rng {
    Rng::new(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_matches_the_notes_at_the_design_point() {
        // At t = t_opt and α = 0.05 the CS half-width is ≈ 3.04 standard errors (notes §5.2).
        let t = 1000.0;
        let hw = mean_halfwidth(1.0, t, t, 0.05);
        let se = (1.0f64 / t).sqrt();
        assert!((hw / se - 3.04).abs() < 0.05, "{}", hw / se);
    }

    #[test]
    fn mean_cs_covers_the_truth_at_every_look() {
        // 300 runs of N(0,1), a look every 10 samples up to 3 000: the running CS must miss
        // zero in at most α of runs, though we peek 300 times per run.
        let alpha = 0.05;
        let mut misses = 0;
        for seed in 0..300 {
            let mut rng = Rng::new(seed + 1);
            let (mut n, mut sum) = (0.0, 0.0);
            let mut missed = false;
            for i in 1..=3000 {
                sum += rng.normal();
                n += 1.0;
                if i % 10 == 0 {
                    let hw = mean_halfwidth(1.0, n, 500.0, alpha);
                    if (sum / n).abs() > hw {
                        missed = true;
                    }
                }
            }
            misses += usize::from(missed);
        }
        eprintln!("mean CS: {misses}/300 runs left the sequence");
        assert!(
            misses <= 15,
            "{misses} of 300 runs left the CS (allowed 15 = α)"
        );
    }

    #[test]
    fn quantile_ranks_bracket_the_quantile() {
        let (lo, hi) = quantile_ranks(5000, 0.95, 1000.0, 0.05);
        let (lo, hi) = (lo.expect("bounded"), hi.expect("bounded"));
        assert!(
            lo < 4750 && hi > 4750 && lo > 4600 && hi < 4900,
            "{lo} {hi}"
        );
        // A handful of samples cannot bound a p95 from above.
        assert_eq!(quantile_ranks(20, 0.95, 1000.0, 0.05).1, None);
    }
}

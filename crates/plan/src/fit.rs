//! Fitting L(N, D) = E + A/N^α + B/D^β to measured losses, as Hoffmann et al.'s Approach 3 does:
//! minimise the Huber loss (δ = 10⁻³) between the predicted and measured log-loss over
//! θ = (log A, log B, log E, α, β) with L-BFGS, started from every point of their grid, keeping
//! the best; then refit on bootstrap resamples of the points for confidence intervals.
//!
//! In log space the prediction is log L̂ = LSE(log A − α log N, log B − β log D, log E), smooth in
//! θ, and the Huber loss weighs every run alike whatever its loss while shrugging off outliers.

use crate::law::Law;
use crate::lbfgs::minimize;
use crate::PlanError;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tsukuru_core::Rng;

/// Chinchilla's Huber threshold on log-loss residuals.
pub const HUBER_DELTA: f64 = 1e-3;

/// One finished training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Parameters.
    pub params: f64,
    /// Training tokens.
    pub tokens: f64,
    /// Training FLOPs spent.
    pub flops: f64,
    /// Final validation loss, nats per token.
    pub loss: f64,
}

/// A confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower end.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
}

/// Bootstrap intervals of the fitted constants and of the compute-optimal exponents.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Intervals {
    /// Their coverage, e.g. 0.9.
    pub level: f64,
    /// Resamples made.
    pub resamples: usize,
    /// E.
    pub e: Interval,
    /// A.
    pub a: Interval,
    /// B.
    pub b: Interval,
    /// α.
    pub alpha: Interval,
    /// β.
    pub beta: Interval,
    /// β/(α+β): N_opt ∝ C^this.
    pub n_exponent: Interval,
}

/// A fitted law with what it was fitted to: the file `tsukuru sweep` writes and
/// `tsukuru plan --law` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    /// The best fit.
    pub law: Law,
    /// Mean Huber loss of its log-loss residuals.
    pub objective: f64,
    /// Root mean square of its relative loss residuals.
    pub rms_relative_error: f64,
    /// Bootstrap intervals (None when not asked for).
    pub intervals: Option<Intervals>,
    /// The runs it was fitted to.
    pub points: Vec<Point>,
    /// Resamples' laws (kept to give intervals of any prediction).
    #[serde(default)]
    pub resampled: Vec<Law>,
}

/// Mean Huber loss of the log residuals and its gradient in θ = (log A, log B, log E, α, β).
fn objective(theta: &[f64], points: &[(f64, f64, f64)], grad: &mut [f64]) -> f64 {
    grad.iter_mut().for_each(|g| *g = 0.0);
    let mut total = 0.0;
    for &(ln_n, ln_d, ln_l) in points {
        let t = [theta[0] - theta[3] * ln_n, theta[1] - theta[4] * ln_d, theta[2]];
        let m = t.iter().fold(f64::MIN, |a, &b| a.max(b));
        let w: Vec<f64> = t.iter().map(|x| (x - m).exp()).collect();
        let sum: f64 = w.iter().sum();
        let r = m + sum.ln() - ln_l;
        let (h, dh) = if r.abs() <= HUBER_DELTA {
            (0.5 * r * r, r)
        } else {
            (HUBER_DELTA * (r.abs() - 0.5 * HUBER_DELTA), HUBER_DELTA * r.signum())
        };
        total += h;
        let (w0, w1, w2) = (w[0] / sum, w[1] / sum, w[2] / sum);
        grad[0] += dh * w0;
        grad[1] += dh * w1;
        grad[2] += dh * w2;
        grad[3] -= dh * w0 * ln_n;
        grad[4] -= dh * w1 * ln_d;
    }
    // Scaled so that residuals around δ give values and gradients of order one.
    let scale = 1.0 / (HUBER_DELTA * HUBER_DELTA * points.len() as f64);
    grad.iter_mut().for_each(|g| *g *= scale);
    total * scale
}

fn law_of(theta: &[f64]) -> Law {
    Law { a: theta[0].exp(), b: theta[1].exp(), e: theta[2].exp(), alpha: theta[3], beta: theta[4] }
}

/// Chinchilla's grid of starting points: α, β ∈ {0, 0.5, …, 2}, log E ∈ {−1, −0.5, …, 1.5},
/// log A, log B ∈ {0, 5, …, 25}.
fn grid() -> Vec<[f64; 5]> {
    let mut out = Vec::new();
    for a in (0..6).map(|i| 5.0 * i as f64) {
        for b in (0..6).map(|i| 5.0 * i as f64) {
            for e in (0..6).map(|i| -1.0 + 0.5 * i as f64) {
                for alpha in (0..5).map(|i| 0.5 * i as f64) {
                    for beta in (0..5).map(|i| 0.5 * i as f64) {
                        out.push([a, b, e, alpha, beta]);
                    }
                }
            }
        }
    }
    out
}

/// The best θ from `starts` (each refined by L-BFGS), with its objective.
fn best_of(points: &[(f64, f64, f64)], starts: &[[f64; 5]]) -> ([f64; 5], f64) {
    let mut best = ([0.0; 5], f64::INFINITY);
    for s in starts {
        let (x, f) = minimize(|t, g| objective(t, points, g), s, 500, 1e-9);
        if f < best.1 {
            best = ([x[0], x[1], x[2], x[3], x[4]], f);
        }
    }
    best
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn interval(values: impl Iterator<Item = f64>, level: f64) -> Interval {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Interval { lo: f64::NAN, hi: f64::NAN };
    }
    v.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    Interval { lo: percentile(&v, tail), hi: percentile(&v, 1.0 - tail) }
}

/// Fits the law to `points` from Chinchilla's whole grid of starts, then refits `resamples`
/// bootstrap resamples (drawn with `seed`; each started from the best fit and the eight best
/// grid points for that resample) for intervals at `level`.
pub fn fit(points: &[Point], resamples: usize, level: f64, seed: u64) -> Result<Fit, PlanError> {
    if points.len() < 5 {
        return Err(PlanError::Fit(format!("{} runs for five constants; a sweep needs at least 5", points.len())));
    }
    if let Some(p) = points.iter().find(|p| !(p.params > 0.0 && p.tokens > 0.0 && p.loss > 0.0 && p.loss.is_finite())) {
        return Err(PlanError::Fit(format!("a run has an impossible point: {p:?}")));
    }
    let distinct = |f: fn(&Point) -> f64| {
        let mut v: Vec<u64> = points.iter().map(|p| f(p).to_bits()).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    if distinct(|p| p.params) < 2 || distinct(|p| p.tokens) < 2 {
        return Err(PlanError::Fit("the runs need at least two model sizes and two token counts".into()));
    }
    let logs: Vec<(f64, f64, f64)> = points.iter().map(|p| (p.params.ln(), p.tokens.ln(), p.loss.ln())).collect();
    let starts = grid();
    let (theta, objective_value) = best_of(&logs, &starts);
    let law = law_of(&theta);
    let rms = (points.iter().map(|p| (law.loss(p.params, p.tokens) / p.loss - 1.0).powi(2)).sum::<f64>()
        / points.len() as f64)
        .sqrt();
    let mut resampled = Vec::with_capacity(resamples);
    let mut rng = Rng::stream(seed, "bootstrap");
    let mut g = [0.0; 5];
    for _ in 0..resamples {
        let sample: Vec<(f64, f64, f64)> =
            (0..logs.len()).map(|_| logs[rng.below(logs.len() as u64) as usize]).collect();
        let mut ranked: Vec<(f64, [f64; 5])> = starts.iter().map(|s| (objective(s, &sample, &mut g), *s)).collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut from: Vec<[f64; 5]> = ranked.iter().take(8).map(|r| r.1).collect();
        from.push(theta);
        resampled.push(law_of(&best_of(&sample, &from).0));
    }
    let intervals = (resamples > 0).then(|| Intervals {
        level,
        resamples,
        e: interval(resampled.iter().map(|l| l.e), level),
        a: interval(resampled.iter().map(|l| l.a), level),
        b: interval(resampled.iter().map(|l| l.b), level),
        alpha: interval(resampled.iter().map(|l| l.alpha), level),
        beta: interval(resampled.iter().map(|l| l.beta), level),
        n_exponent: interval(resampled.iter().map(|l| l.beta / (l.alpha + l.beta)), level),
    });
    Ok(Fit { law, objective: objective_value, rms_relative_error: rms, intervals, points: points.to_vec(), resampled })
}

impl Fit {
    /// The predicted loss of `params` on `tokens`, with the bootstrap interval at the fit's level.
    pub fn predict(&self, params: f64, tokens: f64) -> (f64, Option<Interval>) {
        let level = self.intervals.map_or(0.9, |i| i.level);
        let spread = (!self.resampled.is_empty())
            .then(|| interval(self.resampled.iter().map(|l| l.loss(params, tokens)), level));
        (self.law.loss(params, tokens), spread)
    }

    /// Writes the fit as JSON (atomically).
    pub fn write(&self, path: &Path) -> Result<(), PlanError> {
        let text = serde_json::to_string_pretty(self).expect("a fit serialises");
        Ok(tsukuru_core::atomic::write_atomic(path, text.as_bytes())?)
    }
}

/// Reads a law from `path`: a fit written by `tsukuru sweep`, or a bare
/// `{"e": …, "a": …, "b": …, "alpha": …, "beta": …}`.
pub fn read_law(path: &Path) -> Result<Law, PlanError> {
    let file = |reason: String| PlanError::File { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file(format!("cannot read it: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| file(format!("not JSON: {e}")))?;
    let law_value = value.get("law").cloned().unwrap_or(value);
    let law: Law = serde_json::from_value(law_value)
        .map_err(|e| file(format!("not a law ({e}); expected keys e, a, b, alpha, beta, or a sweep's fit.json")))?;
    law.validate().map_err(|e| file(e.to_string()))?;
    Ok(law)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::law::HOFFMANN;

    /// An isoFLOP grid like a real sweep's: five budgets, seven sizes each around the optimum.
    fn synthetic(law: &Law, noise: f64, seed: u64) -> Vec<Point> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::new();
        for c in [1e17, 3e17, 1e18, 3e18, 1e19] {
            let (n_opt, _) = law.compute_optimal(c);
            for k in -3..=3 {
                let n = n_opt * 2f64.powf(k as f64 * 0.75);
                let d = c / (6.0 * n);
                // Gaussian noise by Box–Muller, relative to the loss.
                let z = (-2.0 * (1.0 - rng.f64()).ln()).sqrt() * (std::f64::consts::TAU * rng.f64()).cos();
                out.push(Point { params: n, tokens: d, flops: c, loss: law.loss(n, d) * (1.0 + noise * z) });
            }
        }
        out
    }

    #[test]
    fn recovers_a_known_law_from_noisy_runs() {
        let truth = HOFFMANN;
        let fit = fit(&synthetic(&truth, 0.002, 3), 30, 0.9, 7).unwrap();
        let l = fit.law;
        assert!((l.alpha - truth.alpha).abs() < 0.06, "alpha {l:?}");
        assert!((l.beta - truth.beta).abs() < 0.06, "beta {l:?}");
        assert!((l.e - truth.e).abs() < 0.1, "E {l:?}");
        // The quantity planning uses: the compute-optimal exponent, and the optimum itself.
        let a_true = truth.beta / (truth.alpha + truth.beta);
        assert!((l.beta / (l.alpha + l.beta) - a_true).abs() < 0.03, "{l:?}");
        let (n_fit, _) = l.compute_optimal(1e21);
        let (n_true, _) = truth.compute_optimal(1e21);
        assert!((n_fit / n_true).ln().abs() < 0.3, "N_opt {n_fit:e} vs {n_true:e}");
        assert!(fit.rms_relative_error < 0.004, "{}", fit.rms_relative_error);
        let iv = fit.intervals.unwrap();
        assert!(iv.alpha.lo <= truth.alpha + 0.02 && truth.alpha - 0.02 <= iv.alpha.hi, "{iv:?}");
        assert!(iv.n_exponent.lo < iv.n_exponent.hi);
        // A prediction well beyond the sweep: within 1% of the truth, inside its own interval.
        let (pred, spread) = fit.predict(2e9, 4e10);
        let real = truth.loss(2e9, 4e10);
        assert!((pred / real - 1.0).abs() < 0.01, "{pred} vs {real}");
        let s = spread.unwrap();
        assert!(s.lo <= pred && pred <= s.hi);
    }

    #[test]
    fn exact_data_is_fitted_exactly() {
        let fit = fit(&synthetic(&crate::law::EPOCH, 0.0, 1), 0, 0.9, 0).unwrap();
        assert!(fit.rms_relative_error < 1e-5, "{:?}", fit);
        assert!(fit.intervals.is_none());
    }

    #[test]
    fn too_few_or_degenerate_runs_are_refused() {
        let p = |n: f64, d: f64| Point { params: n, tokens: d, flops: 6.0 * n * d, loss: 3.0 };
        let e = fit(&[p(1e6, 1e7), p(2e6, 1e7)], 0, 0.9, 0).unwrap_err().to_string();
        assert!(e.contains("2 runs") && e.contains("at least 5"), "{e}");
        let same: Vec<Point> = (0..6).map(|_| p(1e6, 1e7)).collect();
        assert!(fit(&same, 0, 0.9, 0).unwrap_err().to_string().contains("two model sizes"));
        let mut bad: Vec<Point> = (0..6).map(|i| p(1e6 * (i + 1) as f64, 1e7 / (i + 1) as f64)).collect();
        bad[2].loss = f64::NAN;
        assert!(fit(&bad, 0, 0.9, 0).unwrap_err().to_string().contains("impossible point"));
    }

    #[test]
    fn a_law_is_read_from_a_fit_file_or_bare() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fit.json");
        let fit = fit(&synthetic(&HOFFMANN, 0.0, 2), 0, 0.9, 0).unwrap();
        fit.write(&path).unwrap();
        let read = read_law(&path).unwrap();
        // JSON keeps 17 significant digits; the parser may be off by an ulp.
        assert!((read.e / fit.law.e - 1.0).abs() < 1e-14 && (read.beta / fit.law.beta - 1.0).abs() < 1e-14);
        std::fs::write(&path, r#"{"e": 1.7, "a": 400, "b": 410, "alpha": 0.34, "beta": 0.28}"#).unwrap();
        assert_eq!(read_law(&path).unwrap().a, 400.0);
        std::fs::write(&path, r#"{"e": 1.7, "a": 400}"#).unwrap();
        let e = read_law(&path).unwrap_err().to_string();
        assert!(e.contains("fit.json") && e.contains("alpha"), "{e}");
        std::fs::write(&path, r#"{"e": 1.7, "a": -4, "b": 410, "alpha": 0.34, "beta": 0.28}"#).unwrap();
        assert!(read_law(&path).unwrap_err().to_string().contains("a = -4"));
    }
}

//! Bradley–Terry ratings from pairwise outcomes, with bootstrap confidence intervals.
//!
//! Model i beats model j with probability p_i / (p_i + p_j). The strengths are fitted by maximum
//! likelihood with Hunter's (2004) minorise–maximise iteration, a tie counting as half a win for
//! each side; a weak prior (one tie of every model against a virtual average player) keeps a model
//! that never wins or never loses finite. Ratings are shown on the Elo scale Chatbot Arena uses:
//! 400·log10(p) shifted so that the mean rating is 1000 (a 400-point gap is 10:1 odds).
//! Intervals: the battles are resampled by prompt (the unit that was sampled), the ratings refitted,
//! and the 2.5th and 97.5th percentiles reported.

use serde::{Deserialize, Serialize};
use tsukuru_core::Rng;

/// One comparison's outcome between models `a` and `b` (indices), in [0, 1]: 1 when `a` won,
/// 0 when `b` won, 0.5 for a tie.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// First model.
    pub a: usize,
    /// Second model.
    pub b: usize,
    /// Score of `a`.
    pub score_a: f64,
}

/// A model's rating.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    /// Elo-scale rating (mean 1000).
    pub rating: f64,
    /// Lower end of the 95% bootstrap interval.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

const ITERATIONS: usize = 500;
const TOLERANCE: f64 = 1e-10;

/// Elo-scale ratings of `n` models from `outcomes`.
pub fn fit(n: usize, outcomes: &[Outcome]) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    // wins[i]: points of i (prior: half a point); games[i][j]: comparisons between i and j.
    let mut wins = vec![0.5; n];
    let mut games = vec![vec![0.0; n]; n];
    for o in outcomes {
        wins[o.a] += o.score_a;
        wins[o.b] += 1.0 - o.score_a;
        games[o.a][o.b] += 1.0;
        games[o.b][o.a] += 1.0;
    }
    let mut p = vec![1.0; n];
    for _ in 0..ITERATIONS {
        let mut next = vec![0.0; n];
        for i in 0..n {
            // The prior's game against a player of strength 1.
            let mut denom = 1.0 / (p[i] + 1.0);
            for j in 0..n {
                if games[i][j] > 0.0 {
                    denom += games[i][j] / (p[i] + p[j]);
                }
            }
            next[i] = wins[i] / denom;
        }
        // Strengths are defined up to a factor: fix their geometric mean at 1.
        let log_mean = next.iter().map(|x: &f64| x.ln()).sum::<f64>() / n as f64;
        next.iter_mut().for_each(|x| *x /= log_mean.exp());
        let change = next.iter().zip(&p).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        p = next;
        if change < TOLERANCE {
            break;
        }
    }
    let elo: Vec<f64> = p.iter().map(|x| 400.0 * x.log10()).collect();
    let mean = elo.iter().sum::<f64>() / n as f64;
    elo.iter().map(|r| r - mean + 1000.0).collect()
}

/// Ratings with 95% intervals from `rounds` bootstrap resamples of the groups of outcomes (all
/// outcomes of one prompt form a group and are resampled together).
pub fn ratings(n: usize, groups: &[Vec<Outcome>], rounds: usize, seed: u64) -> Vec<Rating> {
    let all: Vec<Outcome> = groups.iter().flatten().copied().collect();
    let point = fit(n, &all);
    let mut rng = Rng::stream(seed, "bradley-terry/bootstrap");
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); n];
    for _ in 0..rounds {
        let mut drawn = Vec::with_capacity(all.len());
        for _ in 0..groups.len() {
            drawn.extend_from_slice(&groups[rng.below(groups.len() as u64) as usize]);
        }
        for (i, r) in fit(n, &drawn).into_iter().enumerate() {
            samples[i].push(r);
        }
    }
    point
        .iter()
        .zip(samples.iter_mut())
        .map(|(&rating, s)| {
            s.sort_by(f64::total_cmp);
            let at = |q: f64| if s.is_empty() { rating } else { s[((s.len() - 1) as f64 * q).round() as usize] };
            Rating { rating, low: at(0.025), high: at(0.975) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Battles between models of known Elo ratings, drawn with the Bradley–Terry probabilities.
    fn simulate(truth: &[f64], prompts: usize, seed: u64) -> Vec<Vec<Outcome>> {
        let mut rng = Rng::new(seed);
        (0..prompts)
            .map(|_| {
                let mut group = Vec::new();
                for a in 0..truth.len() {
                    for b in a + 1..truth.len() {
                        let p_a = 1.0 / (1.0 + 10f64.powf((truth[b] - truth[a]) / 400.0));
                        group.push(Outcome { a, b, score_a: if rng.f64() < p_a { 1.0 } else { 0.0 } });
                    }
                }
                group
            })
            .collect()
    }

    #[test]
    fn known_ratings_are_recovered_within_their_intervals() {
        let truth = [1200.0, 1000.0, 900.0, 900.0];
        let groups = simulate(&truth, 2000, 7);
        let r = ratings(4, &groups, 200, 0);
        let mean = truth.iter().sum::<f64>() / 4.0;
        for (i, (t, got)) in truth.iter().zip(&r).enumerate() {
            let want = t - mean + 1000.0;
            assert!((got.rating - want).abs() < 25.0, "model {i}: {} vs {want}", got.rating);
            assert!(got.low <= want && want <= got.high, "model {i}: {want} outside [{}, {}]", got.low, got.high);
        }
        // Fewer prompts, wider intervals.
        let few = ratings(4, &simulate(&truth, 100, 7), 200, 0);
        let width = |r: &Rating| r.high - r.low;
        assert!(width(&few[0]) > 2.0 * width(&r[0]), "{} vs {}", width(&few[0]), width(&r[0]));
    }

    #[test]
    fn ties_split_evenly_and_a_model_that_never_loses_stays_finite() {
        let ties: Vec<Outcome> = (0..50).map(|_| Outcome { a: 0, b: 1, score_a: 0.5 }).collect();
        let r = fit(2, &ties);
        assert!((r[0] - r[1]).abs() < 1e-6 && (r[0] - 1000.0).abs() < 1e-6, "{r:?}");
        let sweep: Vec<Outcome> = (0..50).map(|_| Outcome { a: 0, b: 1, score_a: 1.0 }).collect();
        let r = fit(2, &sweep);
        assert!(r[0].is_finite() && r[0] > r[1] + 400.0, "{r:?}");
    }
}

//! Next-token sampling: temperature, then top-k, then top-p (nucleus), then a seeded draw.
//!
//! Temperature 0 is greedy decoding (ties go to the lowest id). Filters apply in the order
//! Hugging Face's `generate` applies them, so the same settings mean the same thing here.

use crate::{InferError, Result};
use serde::{Deserialize, Serialize};
use tsukuru_core::Rng;

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    pub top_p: f32,
    /// Seed of the draws: the same seed, model and prompt give the same text.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Checks the ranges, naming the bad field.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(InferError::Request(format!("temperature must be ≥ 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(InferError::Request(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
}

/// Picks tokens from logits according to [`SamplingParams`], with its own random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Scratch: (logit, id) of the candidates, reused across calls.
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler; fails on out-of-range parameters.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self { params, rng: Rng::stream(params.seed, "sampler"), candidates: Vec::new() })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token for one position's logits over the vocabulary.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert!(!logits.is_empty(), "logits over an empty vocabulary");
        let p = self.params;
        if p.temperature == 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (l / p.temperature, i as u32)));
        // NaN logits sort last and are never kept ahead of a real one.
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, order);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(order);
        let max = c[0].0;
        let mut probs: Vec<f64> = c.iter().map(|(l, _)| f64::from(l - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        let mass: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.f64() * mass;
        for (i, q) in probs[..keep].iter().enumerate() {
            u -= q;
            if u < 0.0 {
                return c[i].1;
            }
        }
        c[keep - 1].1
    }
}

/// Index of the largest logit, the lowest on ties.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

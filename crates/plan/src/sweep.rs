//! An isoFLOP sweep's grid: for each compute budget, models of several sizes, each trained on
//! the tokens that budget buys it (Chinchilla's Approach 3 data). Below the depth preset's
//! smallest model (width 64) a budget of a few 10¹¹ FLOPs is still too small, so sizes are
//! shapes `LAYERSxWIDTH` (the preset's heads of 64 and SwiGLU rule) or preset depths.

use crate::fit::Point;
use crate::PlanError;
use serde::{Deserialize, Serialize};
use tsukuru_model::ModelConfig;
use tsukuru_train::pretrain::{ModelSection, PretrainConfig};
use tsukuru_train::Schedule;

/// Fewest optimiser steps a run may have (its batch is halved, down to 4 rows, to reach it);
/// a size that still has fewer is left out of that budget.
pub const MIN_STEPS: u64 = 100;

/// Tokens per parameter a run of the automatic grid may have: about a decade either side of
/// Chinchilla's 20, so that each isoFLOP curve brackets its minimum.
pub const RATIO_RANGE: (f64, f64) = (2.0, 500.0);

/// A model shape: layers × width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Transformer blocks.
    pub layers: usize,
    /// Residual width (heads of 64 dimensions, one head below 64).
    pub width: usize,
}

/// The automatic sizes, smallest first: widths growing by about 1.4× with depth growing slowly.
pub const LADDER: &[Shape] = &[
    Shape { layers: 1, width: 16 },
    Shape { layers: 1, width: 24 },
    Shape { layers: 1, width: 32 },
    Shape { layers: 1, width: 48 },
    Shape { layers: 2, width: 48 },
    Shape { layers: 2, width: 64 },
    Shape { layers: 2, width: 96 },
    Shape { layers: 3, width: 128 },
    Shape { layers: 4, width: 192 },
    Shape { layers: 5, width: 256 },
    Shape { layers: 6, width: 384 },
    Shape { layers: 8, width: 512 },
    Shape { layers: 10, width: 640 },
    Shape { layers: 12, width: 768 },
];

impl Shape {
    /// Parses `LAYERSxWIDTH` (`2x64`) or a preset depth (`3` = 3 layers of width 192).
    pub fn parse(s: &str) -> Result<Self, PlanError> {
        let bad = |reason: &str| PlanError::Input { field: "--sizes", value: s.to_string(), reason: reason.into() };
        let num = |t: &str| t.trim().parse::<usize>().ok().filter(|&v| v > 0);
        let shape = match s.split_once(['x', 'X']) {
            Some((l, w)) => Shape {
                layers: num(l).ok_or_else(|| bad("layers must be a positive integer"))?,
                width: num(w).ok_or_else(|| bad("width must be a positive integer"))?,
            },
            None => {
                let depth = num(s).ok_or_else(|| bad("write a preset depth (3) or LAYERSxWIDTH (2x64)"))?;
                Shape { layers: depth, width: 64 * depth }
            }
        };
        if shape.width > 64 && !shape.width.is_multiple_of(64) {
            return Err(bad("widths above 64 must be multiples of 64 (heads of 64 dimensions)"));
        }
        Ok(shape)
    }

    /// The `[pretrain.model]` section for this shape.
    pub fn model_section(&self) -> ModelSection {
        let preset = self.width == 64 * self.layers;
        ModelSection {
            depth: self.layers,
            n_kv_heads: None,
            d_model: (!preset).then_some(self.width),
            n_heads: (!preset).then_some((self.width / 64).max(1)),
            activation: None,
            qk_norm: None,
            tie_embeddings: None,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.layers, self.width)
    }
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Directory name: `c{budget}-{shape}`.
    pub name: String,
    /// The budget it belongs to (FLOPs).
    pub budget: f64,
    /// The model shape.
    pub shape: Shape,
    /// Parameters.
    pub params: f64,
    /// Training FLOPs per token.
    pub flops_per_token: f64,
    /// Training tokens (steps × batch × context).
    pub tokens: f64,
    /// The pretraining config that trains it.
    pub config: PretrainConfig,
}

impl RunSpec {
    /// The run planned for `budget` with `shape`, or None when even 4-row batches leave it
    /// fewer than half of [`MIN_STEPS`] steps.
    pub fn new(base: &PretrainConfig, vocab: usize, budget: f64, shape: Shape) -> Result<Option<Self>, PlanError> {
        let mut config = base.clone();
        config.model = shape.model_section();
        let model = config.model_config(vocab).map_err(|e| PlanError::Input {
            field: "--sizes",
            value: shape.to_string(),
            reason: e.to_string(),
        })?;
        let flops_per_token = model.flops_per_token(config.seq_len);
        let tokens = budget / flops_per_token;
        let row_tokens = (config.seq_len * config.grad_accum) as f64;
        let mut batch = config.batch_size;
        while batch > 4 && tokens / (batch as f64 * row_tokens) < MIN_STEPS as f64 {
            batch /= 2;
        }
        let steps = (tokens / (batch as f64 * row_tokens)).floor() as u64;
        if steps < MIN_STEPS / 2 {
            return Ok(None);
        }
        // The same validation tokens for every run, whatever its batch.
        config.eval_batches = (base.eval_batches * base.batch_size).div_ceil(batch);
        config.batch_size = batch;
        config.steps = steps;
        // One evaluation, at the end: the point of the run is its final loss.
        config.eval_every = steps;
        config.checkpoint_every = (steps / 4).max(1);
        config.keep_checkpoints = 1;
        config.schedule = match config.schedule {
            Schedule::Cosine { warmup, min_ratio } => Schedule::Cosine { warmup: warmup.min(steps / 10), min_ratio },
            Schedule::Wsd { warmup, decay_fraction, min_ratio } => {
                Schedule::Wsd { warmup: warmup.min(steps / 10), decay_fraction, min_ratio }
            }
        };
        Ok(Some(Self {
            name: format!("c{budget:.0e}-{shape}").replace("e+", "e"),
            budget,
            shape,
            params: model.param_count() as f64,
            flops_per_token,
            tokens: steps as f64 * batch as f64 * row_tokens,
            config,
        }))
    }

    /// The model config of this run.
    pub fn model(&self, vocab: usize) -> ModelConfig {
        self.config.model_config(vocab).expect("checked when the spec was made")
    }

    /// The fit's point once trained to `loss`.
    pub fn point(&self, loss: f64) -> Point {
        Point { params: self.params, tokens: self.tokens, flops: self.tokens * self.flops_per_token, loss }
    }
}

/// The isoFLOP grid: every budget × the given shapes, or, with none given, the [`LADDER`]'s
/// shapes whose tokens per parameter fall within [`RATIO_RANGE`] and whose tokens do not exceed
/// `unique_tokens` (the law assumes fresh data; at most `per_budget`, spread evenly over the range).
pub fn grid(
    base: &PretrainConfig,
    vocab: usize,
    budgets: &[f64],
    shapes: Option<&[Shape]>,
    per_budget: usize,
    unique_tokens: Option<f64>,
) -> Result<Vec<RunSpec>, PlanError> {
    if budgets.is_empty() {
        return Err(PlanError::Input {
            field: "--flops",
            value: String::new(),
            reason: "give at least one budget".into(),
        });
    }
    let mut out = Vec::new();
    for &budget in budgets {
        if !(budget.is_finite() && budget > 0.0) {
            return Err(PlanError::Input {
                field: "--flops",
                value: budget.to_string(),
                reason: "must be positive".into(),
            });
        }
        let mut runs = Vec::new();
        for &shape in shapes.unwrap_or(LADDER) {
            if let Some(r) = RunSpec::new(base, vocab, budget, shape)? {
                let ratio = r.tokens / r.params;
                let fresh = unique_tokens.is_none_or(|u| r.tokens <= u);
                if shapes.is_some() || ((RATIO_RANGE.0..=RATIO_RANGE.1).contains(&ratio) && fresh) {
                    runs.push(r);
                }
            }
        }
        if shapes.is_none() && runs.len() > per_budget.max(2) {
            let k = per_budget.max(2);
            let last = runs.len() - 1;
            runs = (0..k).map(|i| runs[(i * last + (k - 1) / 2) / (k - 1)].clone()).collect();
        }
        if runs.is_empty() {
            return Err(PlanError::Input {
                field: "--flops",
                value: format!("{budget:e}"),
                reason: "no model size fits this budget (each needs 50 steps of 4 sequences, 2–500 tokens per \
                         parameter and at most one epoch of the data); change it or give --sizes"
                    .into(),
            });
        }
        out.extend(runs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> PretrainConfig {
        let text = include_str!("../../../configs/tiny.toml");
        let table: toml::Table = text.parse().unwrap();
        table["pretrain"].clone().try_into().unwrap()
    }

    #[test]
    fn shapes_parse_and_become_model_sections() {
        assert_eq!(Shape::parse("2x64").unwrap(), Shape { layers: 2, width: 64 });
        assert_eq!(Shape::parse("3").unwrap(), Shape { layers: 3, width: 192 });
        let s = Shape::parse("1x32").unwrap().model_section();
        assert_eq!((s.depth, s.d_model, s.n_heads), (1, Some(32), Some(1)));
        assert_eq!(Shape::parse("3").unwrap().model_section().d_model, None);
        assert!(Shape::parse("2x100").unwrap_err().to_string().contains("multiples of 64"));
        assert!(Shape::parse("big").unwrap_err().to_string().contains("--sizes = big"));
    }

    #[test]
    fn every_run_of_a_budget_spends_that_budget() {
        let base = base();
        let runs = grid(&base, 512, &[1e12, 1e13], None, 5, None).unwrap();
        for budget in [1e12, 1e13] {
            let mine: Vec<&RunSpec> = runs.iter().filter(|r| r.budget == budget).collect();
            assert!((3..=5).contains(&mine.len()), "{} runs", mine.len());
            for r in &mine {
                let spent = r.tokens * r.flops_per_token;
                // Whole steps only: at most one step short, never over.
                let step = (r.config.batch_size * r.config.seq_len) as f64 * r.flops_per_token;
                assert!(spent <= budget && spent > budget - step, "{} spends {spent:e}", r.name);
                assert!(r.config.steps >= MIN_STEPS / 2 && r.config.eval_every == r.config.steps);
                let ratio = r.tokens / r.params;
                assert!((RATIO_RANGE.0..=RATIO_RANGE.1).contains(&ratio), "{}: {ratio}", r.name);
                assert_eq!(r.model(512).param_count() as f64, r.params);
            }
            // Sizes grow within a budget and the names are distinct.
            assert!(mine.windows(2).all(|w| w[0].params < w[1].params));
        }
        let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), runs.len());
        assert!(runs[0].name.starts_with("c1e12-1x"), "{}", runs[0].name);
        let e = grid(&base, 512, &[1e3], None, 5, None).unwrap_err().to_string();
        assert!(e.contains("--flops = 1e3") && e.contains("no model size"), "{e}");
        // With little data the small models, which would repeat it, are left out.
        let scarce = grid(&base, 512, &[1e13], None, 5, Some(3e6)).unwrap();
        assert!(scarce.iter().all(|r| r.tokens <= 3e6) && !scarce.is_empty());
        assert!(scarce[0].params > runs.iter().find(|r| r.budget == 1e13).unwrap().params);
    }
}

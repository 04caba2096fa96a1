//! From training compute to a concrete run: the model (a depth of the preset), the tokens, the
//! batch, the learning rate, the steps, the wall time and the memory per device.
//!
//! Candidates are the depth preset's models (`ModelConfig::from_depth`: width 64 × depth). Each
//! gets the tokens the budget buys at its own cost per token (6·N plus the attention term) and is
//! scored by the rule: nearest to a ratio of tokens per parameter (Chinchilla's 20), or lowest
//! loss under a law. Limits narrow the choice: a cap on model size (what one can afford to serve)
//! and a finite supply of unique tokens, repeated for at most `max_epochs`, with repeats worth
//! less than fresh tokens ([`crate::law::effective_tokens`]). A budget the limits cannot absorb is
//! spent only in part, and the plan says how much. Each limit's predicted cost in loss is shown by
//! planning again without it.

use crate::budget::Budget;
use crate::hardware::Cluster;
use crate::law::{effective_tokens, Law};
use crate::PlanError;
use tsukuru_model::ModelConfig;

/// Deepest preset considered (width 16,384: far beyond any budget here).
const MAX_DEPTH: usize = 256;

/// How the model size is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// The preset model whose tokens per parameter are nearest this ratio (Chinchilla: 20).
    TokensPerParam(f64),
    /// The preset model with the lowest loss under this law.
    Law(Law),
}

/// Everything a plan is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// The budget as given.
    pub budget: Budget,
    /// The devices.
    pub cluster: Cluster,
    /// Model FLOPs utilisation expected on them.
    pub mfu: f64,
    /// How the size is chosen.
    pub rule: Rule,
    /// The law whose predictions are shown (the rule's own when it is a law).
    pub predict: Law,
    /// Vocabulary of the tokenizer.
    pub vocab_size: usize,
    /// Training context length.
    pub seq_len: usize,
    /// Distinct training tokens available (None: unlimited).
    pub unique_tokens: Option<f64>,
    /// Most passes over the unique tokens.
    pub max_epochs: f64,
    /// Largest model allowed (parameters; None: no cap).
    pub max_params: Option<f64>,
    /// Tokens per optimiser step (None: DeepSeek LLM's fit to compute, see [`batch_tokens`]).
    pub batch_tokens: Option<f64>,
    /// Peak learning rate (None: DeepSeek LLM's fit to compute, see [`learning_rate`]).
    pub lr: Option<f64>,
}

/// One candidate model at a budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// Depth of the preset.
    pub depth: usize,
    /// Parameters.
    pub params: f64,
    /// Training FLOPs per token (6·N of the matrix products plus attention).
    pub flops_per_token: f64,
    /// Training tokens.
    pub tokens: f64,
    /// What they are worth as fresh tokens (less than `tokens` when repeated).
    pub effective_tokens: f64,
    /// Predicted loss (nats per token).
    pub loss: f64,
}

/// The predicted loss of the plan with each limit lifted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitCosts {
    /// No limit at all.
    pub unlimited: Choice,
    /// Only the data limit.
    pub data_only: Option<Choice>,
    /// Only the size limit.
    pub size_only: Option<Choice>,
}

/// Memory per device during training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// Weights, gradients and AdamW state, bytes (18 per parameter, see [`memory`]).
    pub states: f64,
    /// Activations of one micro-batch, bytes.
    pub activations: f64,
    /// Their sum against the device's memory.
    pub fits: bool,
}

/// A finished plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Training FLOPs the budget buys.
    pub budget_flops: f64,
    /// The chosen model.
    pub choice: Choice,
    /// Its config.
    pub model: ModelConfig,
    /// FLOPs the plan spends (less than the budget when limits bind).
    pub spent_flops: f64,
    /// Passes over the unique tokens (None: unlimited data).
    pub epochs: Option<f64>,
    /// The law's continuous optimum (N, D) under C = 6ND, for reference (law rules only).
    pub continuous_optimum: Option<(f64, f64)>,
    /// The loss each limit costs.
    pub limits: LimitCosts,
    /// Sequences per optimiser step, all devices.
    pub batch_rows: usize,
    /// Sequences per micro-batch on one device.
    pub micro_batch: usize,
    /// Micro-batches per step on one device.
    pub grad_accum: usize,
    /// Optimiser steps.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Wall-clock hours at the planned MFU.
    pub hours: f64,
    /// Memory per device.
    pub memory: Memory,
}

/// DeepSeek LLM (2024)'s fit of the best batch to compute: B = 0.292 · C^0.3271 tokens.
pub fn batch_tokens(flops: f64) -> f64 {
    0.2920 * flops.powf(0.3271)
}

/// DeepSeek LLM (2024)'s fit of the best peak learning rate to compute: η = 0.3118 · C^−0.125.
pub fn learning_rate(flops: f64) -> f64 {
    0.3118 * flops.powf(-0.1250)
}

/// Memory of training one micro-batch of `rows` sequences on one device, in bytes, with bf16
/// compute and f32 master weights: 18 bytes per parameter for the bf16 copy (2), the f32 weights
/// (4), gradients (4) and AdamW's two moments (8), replicated on each device (data parallel, no
/// sharding); activations kept for the backward pass, 34 bytes per layer, token and width
/// (Korthikanti et al., 2022, with attention computed in tiles so the T×T scores are not kept)
/// plus 10 bytes per token and vocabulary entry for the logits (bf16) and their f32 log-softmax
/// and gradient.
pub fn memory(cfg: &ModelConfig, rows: usize, device_bytes: f64) -> Memory {
    let states = 18.0 * cfg.param_count() as f64;
    let tokens = (rows * cfg.max_seq_len) as f64;
    let activations = tokens * (34.0 * (cfg.n_layers * cfg.d_model) as f64 + 10.0 * cfg.vocab_size as f64);
    Memory { states, activations, fits: states + activations <= 0.9 * device_bytes }
}

impl PlanRequest {
    /// Checks the request, naming the flag at fault.
    pub fn validate(&self) -> Result<(), PlanError> {
        self.budget.validate()?;
        crate::budget::check_mfu(self.mfu)?;
        self.predict.validate()?;
        if let Rule::Law(l) = self.rule {
            l.validate()?;
        }
        let positive = |field: &'static str, v: Option<f64>| match v {
            Some(v) if !(v.is_finite() && v > 0.0) => {
                Err(PlanError::Input { field, value: v.to_string(), reason: "must be a positive number".into() })
            }
            _ => Ok(()),
        };
        if let Rule::TokensPerParam(r) = self.rule {
            positive("--tokens-per-param", Some(r))?;
        }
        positive("--unique-tokens", self.unique_tokens)?;
        positive("--max-params", self.max_params)?;
        positive("--batch-tokens", self.batch_tokens)?;
        positive("--lr", self.lr)?;
        if !(self.max_epochs.is_finite() && self.max_epochs >= 1.0) {
            return Err(PlanError::Input {
                field: "--max-epochs",
                value: self.max_epochs.to_string(),
                reason: "must be at least 1 (one pass over the unique tokens)".into(),
            });
        }
        for (field, v) in [("--vocab-size", self.vocab_size), ("--seq-len", self.seq_len)] {
            if v == 0 {
                return Err(PlanError::Input { field, value: "0".into(), reason: "must be at least 1".into() });
            }
        }
        Ok(())
    }

    /// The best preset model for `flops` under the rule, with the data limit and the size limit
    /// each on or off; None when no preset model is small enough.
    fn choose(&self, flops: f64, data_limit: bool, size_limit: bool) -> Option<Choice> {
        let unique = self.unique_tokens.filter(|_| data_limit);
        let max_tokens = unique.map_or(f64::INFINITY, |u| u * self.max_epochs);
        let candidates = (1..=MAX_DEPTH).map_while(|depth| {
            let cfg = ModelConfig::from_depth(depth, self.vocab_size, self.seq_len);
            let params = cfg.param_count() as f64;
            if size_limit && self.max_params.is_some_and(|m| params > m) {
                return None;
            }
            let flops_per_token = cfg.flops_per_token(self.seq_len);
            let tokens = (flops / flops_per_token).min(max_tokens);
            let effective_tokens = effective_tokens(tokens, unique);
            let loss = self.predict.loss(params, effective_tokens);
            Some(Choice { depth, params, flops_per_token, tokens, effective_tokens, loss })
        });
        let score = |c: &Choice| match self.rule {
            Rule::TokensPerParam(r) => (c.tokens / c.params / r).ln().abs(),
            Rule::Law(l) => l.loss(c.params, c.effective_tokens),
        };
        // At least one token per step of the smallest batch, or the candidate is meaningless.
        candidates.filter(|c| c.tokens >= self.seq_len as f64).min_by(|a, b| score(a).total_cmp(&score(b)))
    }

    /// Makes the plan.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        self.validate()?;
        let flops = self.budget.flops(&self.cluster, self.mfu);
        let too_small = || PlanError::Input {
            field: "budget",
            value: format!("{flops:.3e} FLOPs"),
            reason: "buys less than one sequence for the smallest model under the limits; raise the budget \
                     or the --max-params limit"
                .into(),
        };
        let choice = self.choose(flops, true, true).ok_or_else(too_small)?;
        let limits = LimitCosts {
            unlimited: self.choose(flops, false, false).ok_or_else(too_small)?,
            data_only: self.unique_tokens.and_then(|_| self.choose(flops, true, false)),
            size_only: self.max_params.and_then(|_| self.choose(flops, false, true)),
        };
        let model = ModelConfig::from_depth(choice.depth, self.vocab_size, self.seq_len);
        let count = self.cluster.count as usize;
        let batch = self.batch_tokens.unwrap_or_else(|| batch_tokens(flops));
        // A power of two of sequences, at least one per device, and a whole number per device.
        let rows = (batch / self.seq_len as f64).max(1.0);
        let rows = (2f64.powf(rows.log2().round()) as usize).max(1).div_ceil(count) * count;
        let per_device = rows / count;
        let mut micro = per_device.next_power_of_two();
        while micro > 1 && (!memory(&model, micro, self.cluster.memory_bytes).fits || !per_device.is_multiple_of(micro))
        {
            micro /= 2;
        }
        let steps = (choice.tokens / (rows * self.seq_len) as f64).floor().max(1.0) as u64;
        let tokens = (steps as usize * rows * self.seq_len) as f64;
        let effective = effective_tokens(tokens, self.unique_tokens);
        let loss = self.predict.loss(choice.params, effective);
        let choice = Choice { tokens, effective_tokens: effective, loss, ..choice };
        let spent_flops = tokens * choice.flops_per_token;
        Ok(Plan {
            budget_flops: flops,
            choice,
            model: model.clone(),
            spent_flops,
            epochs: self.unique_tokens.map(|u| tokens / u),
            continuous_optimum: match self.rule {
                Rule::Law(l) => Some(l.compute_optimal(flops)),
                Rule::TokensPerParam(_) => None,
            },
            limits,
            batch_rows: rows,
            micro_batch: micro,
            grad_accum: per_device / micro,
            steps,
            lr: self.lr.unwrap_or_else(|| learning_rate(flops)),
            warmup: ((steps as f64 * 0.02).round() as u64).clamp(1, 2000),
            hours: spent_flops / (self.cluster.total_peak_flops() * self.mfu) / 3600.0,
            memory: memory(&model, micro, self.cluster.memory_bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::law::{EPOCH, HOFFMANN};

    fn request(budget: Budget, rule: Rule) -> PlanRequest {
        PlanRequest {
            budget,
            cluster: Cluster::parse("8xH100", None, None).unwrap(),
            mfu: 0.4,
            rule,
            predict: EPOCH,
            vocab_size: 32768,
            seq_len: 2048,
            unique_tokens: None,
            max_epochs: 4.0,
            max_params: None,
            batch_tokens: None,
            lr: None,
        }
    }

    #[test]
    fn a_law_plan_is_the_lowest_predicted_loss_and_spends_the_budget() {
        let req = request(Budget::Hours(4.0), Rule::Law(EPOCH));
        let plan = req.plan().unwrap();
        let c = plan.choice;
        for depth in [c.depth - 1, c.depth + 1] {
            let cfg = ModelConfig::from_depth(depth, 32768, 2048);
            let d = plan.budget_flops / cfg.flops_per_token(2048);
            assert!(EPOCH.loss(cfg.param_count() as f64, d) > c.loss, "depth {depth} beats {}", c.depth);
        }
        assert!(plan.spent_flops <= plan.budget_flops && plan.spent_flops > 0.99 * plan.budget_flops);
        assert!((plan.hours - 4.0).abs() < 0.04, "{}", plan.hours);
        // 8×H100 × 4 h at 40%: 4.6e19 FLOPs, a model of a few hundred million parameters.
        assert!((4.5e19..4.6e19).contains(&plan.budget_flops), "{:e}", plan.budget_flops);
        assert!((2e8..1.5e9).contains(&c.params), "{:e}", c.params);
        assert_eq!(plan.batch_rows, plan.micro_batch * plan.grad_accum * 8);
        assert!(plan.memory.fits && plan.lr > 1e-4 && plan.lr < 1e-2);
    }

    #[test]
    fn the_chinchilla_rule_takes_the_nearest_ratio_to_20() {
        let plan = request(Budget::Flops(5.76e23), Rule::TokensPerParam(20.0)).plan().unwrap();
        let ratio = |depth: usize| {
            let cfg = ModelConfig::from_depth(depth, 32768, 2048);
            5.76e23 / cfg.flops_per_token(2048) / cfg.param_count() as f64
        };
        let d = plan.choice.depth;
        let off = |r: f64| (r / 20.0).ln().abs();
        assert!(off(ratio(d)) <= off(ratio(d - 1)) && off(ratio(d)) <= off(ratio(d + 1)));
        // Chinchilla's budget: about 70B parameters on 1.4T tokens.
        assert!((40e9..100e9).contains(&plan.choice.params), "{:e}", plan.choice.params);
    }

    #[test]
    fn limits_move_the_choice_and_their_cost_is_shown() {
        let mut req = request(Budget::Flops(1e22), Rule::Law(HOFFMANN));
        req.predict = HOFFMANN;
        let free = req.plan().unwrap();
        // Half the tokens the free plan wants, at most 4 epochs: a bigger model, fewer passes.
        req.unique_tokens = Some(free.choice.tokens / 8.0);
        let scarce = req.plan().unwrap();
        assert!(scarce.choice.params > free.choice.params);
        assert!(scarce.epochs.unwrap() <= 4.0 + 1e-9);
        assert!(scarce.choice.effective_tokens < scarce.choice.tokens);
        assert!(scarce.choice.loss > free.choice.loss);
        assert_eq!(scarce.limits.unlimited.depth, free.choice.depth);
        // A size cap on top: the model shrinks to it; with the data cap too, the budget is not all spent.
        req.max_params = Some(free.choice.params / 4.0);
        let capped = req.plan().unwrap();
        assert!(capped.choice.params <= free.choice.params / 4.0);
        assert!(capped.spent_flops < 0.9 * capped.budget_flops);
        let size_only = capped.limits.size_only.unwrap();
        assert!(size_only.loss > free.choice.loss && capped.choice.loss >= size_only.loss);
        let text = capped.render(&req);
        for part in
            ["| none |", "| unique data only |", "| model size only |", "| all (this plan) |", "% of the budget"]
        {
            assert!(text.contains(part), "{part} missing:\n{text}");
        }
    }

    #[test]
    fn the_config_file_is_one_pretrain_accepts() {
        let req = request(Budget::Usd { usd: 100.0, per_device_hour: 2.5 }, Rule::Law(EPOCH));
        let plan = req.plan().unwrap();
        let text = plan.pretrain_toml(&req, include_str!("../../../configs/tiny.toml"), "tiny.toml").unwrap();
        assert!(text.starts_with("# Written by `tsukuru plan`."));
        let table: toml::Table = text.parse().unwrap();
        let cfg: tsukuru_train::pretrain::PretrainConfig = table["pretrain"].clone().try_into().unwrap();
        assert_eq!(cfg.model_config(32768).unwrap(), plan.model);
        assert_eq!((cfg.steps, cfg.batch_size, cfg.grad_accum), (plan.steps, plan.micro_batch, plan.grad_accum));
        assert_eq!(table["tokenizer"]["vocab_size"].as_integer(), Some(32768));
        let e = plan.pretrain_toml(&req, "[world]\nseed = 1\n", "mine.toml").unwrap_err().to_string();
        assert!(e.contains("mine.toml") && e.contains("[pretrain]"), "{e}");
    }

    #[test]
    fn a_runs_own_split_is_set_against_the_plan() {
        let mut req = request(Budget::Flops(1e19), Rule::Law(EPOCH));
        req.unique_tokens = Some(1e9);
        let plan = req.plan().unwrap();
        let actual = crate::output::Actual { depth: 4, params: 3e7, tokens: 5e10, flops: 1e19 };
        let text = plan.compute_section(&req, &actual);
        assert!(text.starts_with("## Compute plan"));
        assert!(
            text.contains("depth 4, 30.0 M parameters") && text.contains("50.0 passes over 1.00 B unique"),
            "{text}"
        );
        assert!(text.contains(&format!("depth {}", plan.choice.depth)) && text.contains("at most 4 passes"), "{text}");
    }

    #[test]
    fn impossible_requests_name_their_flag() {
        let mut req = request(Budget::Flops(1e20), Rule::TokensPerParam(20.0));
        req.mfu = 1.5;
        assert!(req.plan().unwrap_err().to_string().contains("--mfu"));
        let req2 = PlanRequest { max_epochs: 0.5, ..request(Budget::Flops(1e20), Rule::TokensPerParam(20.0)) };
        assert!(req2.plan().unwrap_err().to_string().contains("--max-epochs"));
        let e = request(Budget::Flops(-3.0), Rule::Law(EPOCH)).plan().unwrap_err().to_string();
        assert!(e.contains("--flops = -3"), "{e}");
        let e = request(Budget::Flops(1e3), Rule::Law(EPOCH)).plan().unwrap_err().to_string();
        assert!(e.contains("less than one sequence"), "{e}");
    }
}

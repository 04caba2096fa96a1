//! The pretraining job: token shards in, a base model out, resumable at any checkpoint.
//!
//! It owns the run directory of the base model (`base/`): checkpoints `step-NNNNNNN/`, the best and
//! last K kept; `metrics.jsonl` with one line per step (loss, lr, grad norm, tokens/s, MFU when a
//! peak is given) and one per evaluation (validation loss and bits per byte); and a manifest written
//! when training completes. An interrupted run resumes from its latest checkpoint and rewrites
//! `metrics.jsonl` up to that step, so the log never holds steps twice.

use crate::checkpoint::{self, Meta};
pub use crate::job::JobOptions;
use crate::job::{claim, step_seconds, truncate_metrics, Claim};
use crate::optim::AdamWConfig;
use crate::schedule::Schedule;
use crate::trainer::{LoopConfig, NextToken, Objective, Precision, Trainer};
use crate::TrainError;
use candle_core::{DType, Device, Var};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tsukuru_core::error::IoContext;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, Progress};
use tsukuru_model::init::init_params;
use tsukuru_model::{Activation, ModelConfig, Transformer};
use tsukuru_tokens::{Loader, LoaderConfig, TokenDataset};

/// Artifact name of a trained base model.
pub const ARTIFACT: &str = "base-model";
/// Format version of the base-model directory.
pub const FORMAT_VERSION: u32 = 1;

/// The model part of a pretraining config: the depth dial plus optional overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Depth: width 64 × depth, heads of 64 dimensions (see `ModelConfig::from_depth`).
    pub depth: usize,
    /// Override: key/value heads (grouped-query attention).
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    /// Override: width of the residual stream (then n_heads should be set too); the feed-forward
    /// width follows it by the preset's rule.
    #[serde(default)]
    pub d_model: Option<usize>,
    /// Override: query heads.
    #[serde(default)]
    pub n_heads: Option<usize>,
    /// Override: feed-forward activation.
    #[serde(default)]
    pub activation: Option<Activation>,
    /// Override: QK-norm.
    #[serde(default)]
    pub qk_norm: Option<bool>,
    /// Override: tie input and output embeddings.
    #[serde(default)]
    pub tie_embeddings: Option<bool>,
}

/// Everything `pretrain` needs besides paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Model shape.
    pub model: ModelSection,
    /// Optimiser steps.
    pub steps: u64,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Micro-batches per step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// AdamW settings.
    #[serde(default)]
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (0 disables).
    pub clip: f64,
    /// Non-finite steps in a row before stopping.
    pub max_bad_steps: u32,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: u64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Newest checkpoints kept (the best by validation loss is kept too).
    pub keep_checkpoints: usize,
    /// Peak FLOP/s of the hardware for the MFU estimate (0: not reported).
    #[serde(default)]
    pub peak_flops: f64,
    /// What the steps compute in: `float32`, or `bfloat16` (mixed precision, f32 master weights).
    #[serde(default, skip_serializing_if = "Precision::is_float32")]
    pub precision: Precision,
}

impl PretrainConfig {
    /// The model config for a vocabulary, with the depth preset and overrides applied and validated.
    pub fn model_config(&self, vocab_size: usize) -> Result<ModelConfig, TrainError> {
        let m = &self.model;
        let mut cfg = ModelConfig::from_depth(m.depth, vocab_size, self.seq_len);
        if let Some(d) = m.d_model {
            cfg.d_model = d;
            cfg.ffn_dim = ModelConfig::ffn_dim_for(d);
        }
        if let Some(h) = m.n_heads {
            cfg.n_heads = h;
            cfg.n_kv_heads = h;
        }
        if let Some(kv) = m.n_kv_heads {
            cfg.n_kv_heads = kv;
        }
        if let Some(a) = m.activation {
            cfg.activation = a;
        }
        cfg.qk_norm = m.qk_norm.unwrap_or(cfg.qk_norm);
        cfg.tie_embeddings = m.tie_embeddings.unwrap_or(cfg.tie_embeddings);
        cfg.validate().map_err(|e| TrainError::Config(e.to_string()))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.batch_size == 0 || self.seq_len == 0 {
            return bad(format!("batch_size ({}) and seq_len ({}) must be positive", self.batch_size, self.seq_len));
        }
        if self.eval_every == 0 || self.checkpoint_every == 0 || self.keep_checkpoints == 0 {
            return bad("eval_every, checkpoint_every and keep_checkpoints must be at least 1".into());
        }
        if self.peak_flops < 0.0 {
            return bad(format!("peak_flops must not be negative, got {}", self.peak_flops));
        }
        Ok(())
    }

    fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            steps: self.steps,
            lr: self.lr,
            schedule: self.schedule,
            grad_accum: self.grad_accum,
            clip: self.clip,
            max_bad_steps: self.max_bad_steps,
            precision: self.precision,
        }
    }
}

/// Validation loss (nats per token) and bits per byte of text.
fn evaluate(
    model: &Transformer,
    val: &TokenDataset,
    cfg: &PretrainConfig,
    device: &Device,
) -> Result<(f64, Option<f64>), TrainError> {
    let mut loader = Loader::new(val, LoaderConfig::eval(cfg.batch_size, cfg.seq_len))?;
    let mut total = 0.0;
    for _ in 0..cfg.eval_batches.max(1) {
        let batch = loader.next_batch();
        total += NextToken.loss(model, &batch, device)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    let loss = total / cfg.eval_batches.max(1) as f64;
    // Tokens per byte of the split's text (BOS markers counted as tokens, a slight overestimate).
    let bpb =
        val.text_bytes().filter(|b| *b > 0).map(|b| loss / std::f64::consts::LN_2 * val.n_tokens() as f64 / b as f64);
    Ok((loss, bpb))
}

/// Trains a base model on the token shards in `tokens` into `out`; skips if the same run is
/// complete there (see [`JobOptions`] for resuming, replacing and stopping).
pub fn pretrain(
    tokens: &Path,
    out: &Path,
    cfg: &PretrainConfig,
    device: &Device,
    job: &JobOptions,
    progress: &dyn Progress,
) -> Result<Outcome, TrainError> {
    cfg.validate()?;
    let tok_manifest =
        Manifest::expect(tokens, tsukuru_tokens::tokenize::ARTIFACT, "make it with `tsukuru data tokenize`")?;
    let tokenizer = tokens.join(tsukuru_tokens::tokenize::TOKENIZER_FILE);
    if !tokenizer.is_file() {
        return Err(TrainError::Config(format!(
            "{} is missing (token shards made by an older tsukuru); redo them with `tsukuru data tokenize --force`",
            tokenizer.display()
        )));
    }
    let train = TokenDataset::open(tokens, "train")?;
    let val = TokenDataset::open(tokens, "val").or_else(|_| TokenDataset::open(tokens, "train"))?;
    let model_cfg = cfg.model_config(train.vocab_size() as usize)?;
    let params = serde_json::json!({ "config": cfg, "tokens": tok_manifest.fingerprint, "model": model_cfg });
    let mut manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let (dir, resuming) = match claim(out, ARTIFACT, &manifest, job)? {
        Claim::Done(outcome) => return Ok(outcome),
        Claim::Run { dir, resuming } => (dir, resuming),
    };
    let varmap = init_params(&model_cfg, cfg.seed, DType::F32, device)?;
    let model = Transformer::new(&model_cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let named: Vec<(String, Var)> =
        varmap.data().lock().expect("not poisoned").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut trainer = Trainer::over(named, cfg.adamw, cfg.loop_config())?;
    let loader_cfg = LoaderConfig::train(cfg.batch_size, cfg.seq_len, cfg.seed);
    let ckpt_root = dir.path().to_path_buf();
    let metrics_path = dir.path().join("metrics.jsonl");
    let mut best: Option<(f64, PathBuf)> = None;
    let mut loader = match checkpoint::list(&ckpt_root)?.pop().filter(|_| resuming) {
        Some((_, latest)) => {
            let loaded = checkpoint::load(&latest, &varmap, &model_cfg, device)?;
            trainer.restore(loaded.meta.step, loaded.meta.opt_step, &loaded.opt_state)?;
            truncate_metrics(&metrics_path, loaded.meta.step)?;
            if let Some(v) = loaded.meta.val_loss {
                best = Some((v, latest.clone()));
            }
            let state = serde_json::from_value(loaded.meta.loader)
                .map_err(|e| TrainError::Checkpoint(format!("{}: loader state: {e}", latest.display())))?;
            Loader::resume(&train, loader_cfg, state)?
        }
        None => {
            // Killed before the first checkpoint: nothing to continue, and no step may be logged twice.
            truncate_metrics(&metrics_path, 0)?;
            Loader::new(&train, loader_cfg)?
        }
    };
    let mut metrics =
        std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path).at("opening", &metrics_path)?;
    let tokens_per_step = (cfg.batch_size * cfg.seq_len * cfg.grad_accum) as u64;
    let start_step = trainer.step_count();
    progress.phase("pretrain", Some((cfg.steps - start_step.min(cfg.steps)) * tokens_per_step), Unit::Tokens);
    let flops_per_token = model_cfg.flops_per_token(cfg.seq_len);
    let mut last_val = None;
    while trainer.step_count() < cfg.steps {
        let started = Instant::now();
        let r = trainer.step(&model, &NextToken, device, &mut || loader.next_batch())?;
        let secs = started.elapsed().as_secs_f64();
        let tps = tokens_per_step as f64 / secs.max(1e-9);
        let mfu = (cfg.peak_flops > 0.0).then(|| tps * flops_per_token / cfg.peak_flops);
        let line = serde_json::json!({
            "step": r.step, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm, "skipped": r.skipped,
            "tokens_per_s": tps, "mfu": mfu,
        });
        writeln!(metrics, "{line}").at("writing", &metrics_path)?;
        progress.advance(tokens_per_step);
        let val_note = last_val.map(|v| format!(", val {v:.3}")).unwrap_or_default();
        progress.status(&format!("step {} loss {:.3}{val_note}", r.step, r.loss));
        let last = r.step == cfg.steps;
        if r.step % cfg.eval_every == 0 || last {
            let (val_loss, bpb) = evaluate(&model, &val, cfg, device)?;
            last_val = Some(val_loss);
            writeln!(metrics, "{}", serde_json::json!({"step": r.step, "val_loss": val_loss, "val_bpb": bpb}))
                .at("writing", &metrics_path)?;
        }
        let stop = job.interrupt.is_set() && !last;
        if r.step % cfg.checkpoint_every == 0 || last || stop {
            metrics.flush().at("writing", &metrics_path)?;
            let (opt_step, state) = trainer.optimizer().state();
            let loader = serde_json::to_value(loader.state()).expect("loader state serialises");
            let meta = Meta { step: r.step, opt_step, loader, model: model_cfg.clone(), val_loss: last_val };
            let path = checkpoint::save(&ckpt_root, &varmap, &state, &meta, Some(&tokenizer))?;
            if let Some(v) = last_val.filter(|v| best.as_ref().is_none_or(|(b, _)| v < b)) {
                best = Some((v, path.clone()));
            }
            checkpoint::prune(&ckpt_root, cfg.keep_checkpoints, best.as_ref().map(|(_, p)| p.as_path()))?;
            if stop {
                return Err(TrainError::Interrupted { step: r.step, checkpoint: path });
            }
        }
    }
    drop(metrics);
    let (final_step, final_dir) =
        checkpoint::list(&ckpt_root)?.pop().ok_or_else(|| TrainError::Checkpoint("none written".into()))?;
    let (val_loss, bpb) = evaluate(&model, &val, cfg, device)?;
    progress.finish(&format!("{final_step} steps, validation loss {val_loss:.4}"));
    manifest.stats = serde_json::json!({
        "final_step": final_step,
        "tokens_trained": final_step * tokens_per_step,
        "train_seconds": step_seconds(&metrics_path, tokens_per_step)?,
        "final_checkpoint": final_dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        "best_checkpoint": best.as_ref().and_then(|(_, p)| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
        "val_loss": val_loss,
        "val_bpb": bpb,
        "params": model_cfg.param_count(),
        "skipped_steps": trainer.skipped(),
    });
    dir.finish(&manifest)?;
    Ok(Outcome { manifest, skipped: false })
}

//! Alignment: preference optimisation (DPO or IPO, [`crate::preference`]) of a chat model on
//! preference pairs, through the one loop.
//!
//! Pairs come from a JSONL file: the built-in world's `pairs.jsonl` (its `train` split is trained
//! on, its `validation` split measured in-domain and out-of-domain apart) or a user's
//! `{prompt, chosen, rejected}` lines (a seeded hash keeps `val_fraction` for measurement). Pairs
//! longer than the context are dropped and counted. The reference model is the starting model,
//! frozen: its log-probabilities of every pair are computed once, before the first step, and
//! stored in `reference.json` so a resumed run does not recompute them. Every `eval_every` steps
//! the held-out pairs' preference accuracy and mean reward margin go to `metrics.jsonl`.

use crate::checkpoint::{self, Meta};
use crate::job::{claim, step_seconds, truncate_metrics, Claim, JobOptions};
use crate::optim::AdamWConfig;
use crate::preference::{sequence_logprobs, PairStats, Preference, PreferenceLoss};
use crate::schedule::Schedule;
use crate::trainer::{LoopConfig, Precision, Trainer};
use crate::tunable::Tunable;
use crate::TrainError;
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;
use tsukuru_core::error::IoContext;
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, Progress, Rng};
use tsukuru_model::{pretrained, LoraSpec, Transformer};
use tsukuru_tokenizer::chat::{Message, Role};
use tsukuru_tokenizer::Tok;
use tsukuru_tokens::preferences::{pair_batch, render_pair, Pair, RenderedPair};
use tsukuru_world::pairs::PreferencePair;
use tsukuru_world::tasks::Split;

/// Artifact name of an aligned model.
pub const ARTIFACT: &str = "aligned-model";
/// Format version of its directory.
pub const FORMAT_VERSION: u32 = 1;

/// An alignment run's settings (all have defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlignConfig {
    /// Strength of the pull toward the reference model.
    pub beta: f64,
    /// `dpo` or `ipo`.
    pub loss: PreferenceLoss,
    /// Optimiser steps.
    pub steps: u64,
    /// Pairs per batch.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (0 disables).
    pub clip: f64,
    /// Non-finite steps in a row before stopping.
    pub max_bad_steps: u32,
    /// Seed of the pair order and of the held-out split of user files.
    pub seed: u64,
    /// Measure the held-out pairs every this many steps (and at the end).
    pub eval_every: u64,
    /// Held-out pairs per group per measurement, at most.
    pub eval_pairs: usize,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Newest checkpoints kept.
    pub keep_checkpoints: usize,
    /// Share of a user's pairs held out.
    pub val_fraction: f64,
    /// Train on at most this many pairs, the first in file order (0: all of them).
    pub max_train_pairs: usize,
    /// Train LoRA adapters on the projections instead of every weight (merged into the saved model).
    pub lora: Option<LoraSpec>,
    /// What the steps compute in: `float32`, or `bfloat16` (mixed precision, f32 master weights).
    #[serde(skip_serializing_if = "Precision::is_float32")]
    pub precision: Precision,
}

impl Default for AlignConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss: PreferenceLoss::Dpo,
            steps: 200,
            batch_size: 8,
            lr: 1e-4,
            schedule: Schedule::Cosine { warmup: 10, min_ratio: 0.0 },
            adamw: AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() },
            clip: 1.0,
            max_bad_steps: 5,
            seed: 0,
            eval_every: 50,
            eval_pairs: 256,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            val_fraction: 0.05,
            max_train_pairs: 0,
            lora: None,
            precision: Precision::Float32,
        }
    }
}

impl AlignConfig {
    fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return bad(format!("beta must be positive, got {}", self.beta));
        }
        if self.batch_size == 0 || self.eval_every == 0 || self.checkpoint_every == 0 || self.keep_checkpoints == 0 {
            return bad("batch_size, eval_every, checkpoint_every and keep_checkpoints must be ≥ 1".into());
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!("val_fraction must be in [0, 1), got {}", self.val_fraction));
        }
        Ok(())
    }
}

/// Pairs to train on, and held-out pairs by group (`in_domain` / `out_of_domain` for the world's
/// pairs, `held_out` for a user's).
struct PairSet {
    train: Vec<RenderedPair>,
    held_out: BTreeMap<String, Vec<RenderedPair>>,
    dropped: usize,
}

/// Reads `path` as the world's pairs if its first line is one, as a user's pairs otherwise.
fn read_pairs(path: &Path, cfg: &AlignConfig, tok: &Tok, context: usize) -> Result<PairSet, TrainError> {
    // The format is told by the first non-blank line; the reader of that format reads the file.
    let file = std::fs::File::open(path).at("opening", path)?;
    let first = std::io::BufRead::lines(std::io::BufReader::new(file))
        .map_while(std::result::Result::ok)
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let mut groups: Vec<(Option<String>, Pair)> = Vec::new();
    if serde_json::from_str::<PreferencePair>(&first).is_ok() {
        let pairs: Vec<PreferencePair> =
            tsukuru_world::read_jsonl(path).map_err(|e| TrainError::Config(e.to_string()))?;
        for p in pairs {
            let group = match p.split {
                Split::Train => None,
                Split::Validation if p.held_out.is_empty() => Some("in_domain".to_string()),
                Split::Validation => Some("out_of_domain".to_string()),
                Split::Test => continue,
            };
            let pair =
                Pair { prompt: vec![Message::new(Role::User, p.prompt)], chosen: p.chosen, rejected: p.rejected };
            groups.push((group, pair));
        }
    } else {
        for p in tsukuru_tokens::preferences::read_jsonl(path)? {
            let key = format!("align-val/{:?}/{}/{}", p.prompt, p.chosen, p.rejected);
            let held = Rng::stream(cfg.seed, &key).f64() < cfg.val_fraction;
            groups.push((held.then(|| "held_out".to_string()), p));
        }
    }
    let mut set = PairSet { train: Vec::new(), held_out: BTreeMap::new(), dropped: 0 };
    for (group, pair) in groups {
        let r = render_pair(tok, &pair)?;
        if r.len() > context {
            set.dropped += 1;
            continue;
        }
        match group {
            None if cfg.max_train_pairs > 0 && set.train.len() >= cfg.max_train_pairs => {}
            None => set.train.push(r),
            Some(g) => set.held_out.entry(g).or_default().push(r),
        }
    }
    if set.train.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no training pair fits the context of {context} tokens",
            path.display()
        )));
    }
    Ok(set)
}

/// The model's sequence log-probabilities `(chosen, rejected)` of every pair.
fn logprobs(
    model: &Transformer,
    pairs: &[RenderedPair],
    batch: usize,
    device: &Device,
) -> Result<Vec<(f32, f32)>, TrainError> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let refs: Vec<&RenderedPair> = chunk.iter().collect();
        let lp = sequence_logprobs(model, &pair_batch(&refs, None), device)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let k = chunk.len();
        out.extend((0..k).map(|i| (lp[i], lp[k + i])));
    }
    Ok(out)
}

/// Reference log-probabilities `(chosen, rejected)` per pair, by group (`train` and the held-out ones).
type References = BTreeMap<String, Vec<(f32, f32)>>;

/// The reference log-probabilities: read from `reference.json` when a resumed run wrote it,
/// otherwise computed with the starting model and written there.
fn references(
    path: &Path,
    model: &Transformer,
    set: &PairSet,
    cfg: &AlignConfig,
    device: &Device,
    progress: &dyn Progress,
) -> Result<References, TrainError> {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(refs) = serde_json::from_str::<References>(&text) {
            return Ok(refs);
        }
    }
    let total = set.train.len() + set.held_out.values().map(Vec::len).sum::<usize>();
    progress.phase("reference", Some(total as u64), Unit::Items);
    let mut refs = BTreeMap::new();
    for (name, pairs) in std::iter::once(("train", &set.train)).chain(set.held_out.iter().map(|(k, v)| (k.as_str(), v)))
    {
        refs.insert(name.to_string(), logprobs(model, pairs, cfg.batch_size * 2, device)?);
        progress.advance(pairs.len() as u64);
    }
    progress.finish(&format!("reference log-probabilities of {total} pairs"));
    let text = serde_json::to_string(&refs).expect("numbers serialise");
    tsukuru_core::atomic::write_atomic(path, text.as_bytes())?;
    Ok(refs)
}

/// Held-out statistics per group.
fn evaluate(
    model: &Transformer,
    set: &PairSet,
    refs: &References,
    cfg: &AlignConfig,
    device: &Device,
) -> Result<BTreeMap<String, PairStats>, TrainError> {
    let mut out = BTreeMap::new();
    for (group, pairs) in &set.held_out {
        let n = pairs.len().min(cfg.eval_pairs);
        let now = logprobs(model, &pairs[..n], cfg.batch_size * 2, device)?;
        let ratios: Vec<(f64, f64)> =
            now.iter().zip(&refs[group]).map(|(p, r)| (f64::from(p.0 - r.0), f64::from(p.1 - r.1))).collect();
        out.insert(group.clone(), PairStats::of(&ratios, cfg.beta));
    }
    Ok(out)
}

/// Where the pair order is: epoch and position in its seeded permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct PairCursor {
    epoch: u64,
    next: usize,
}

impl PairCursor {
    /// The next `k` training pair indices.
    fn take(&mut self, n: usize, k: usize, seed: u64) -> Vec<usize> {
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let mut order: Vec<usize> = (0..n).collect();
            Rng::stream(seed, &format!("align-order/{}", self.epoch)).shuffle(&mut order);
            let take = (k - out.len()).min(n - self.next);
            out.extend_from_slice(&order[self.next..self.next + take]);
            self.next += take;
            if self.next == n {
                self.epoch += 1;
                self.next = 0;
            }
        }
        out
    }
}

/// Aligns the chat model in `model_dir` on the pairs of `pairs` into `out`; skips if the same run
/// is complete there.
pub fn align(
    model_dir: &Path,
    pairs: &Path,
    out: &Path,
    cfg: &AlignConfig,
    device: &Device,
    job: &JobOptions,
    progress: &dyn Progress,
) -> Result<Outcome, TrainError> {
    cfg.validate()?;
    let base_dir = pretrained::resolve(model_dir).map_err(|e| TrainError::Config(e.to_string()))?;
    let model_cfg = pretrained::load_config(&base_dir).map_err(|e| TrainError::Config(e.to_string()))?;
    let tokenizer = base_dir.join("tokenizer.json");
    let tok = Tok::from_file(&tokenizer)
        .map_err(|e| TrainError::Config(format!("{e}; the model needs its tokenizer.json with the chat tokens")))?;
    let set = read_pairs(pairs, cfg, &tok, model_cfg.max_seq_len)?;
    if set.dropped > 0 {
        progress.note(&format!(
            "{} pairs longer than the context of {} tokens were dropped",
            set.dropped, model_cfg.max_seq_len
        ));
    }
    let pairs_entry = FileEntry::of_path(pairs)?;
    let weights = FileEntry::of(&base_dir, "model.safetensors")?;
    let params = serde_json::json!({ "config": cfg, "model_weights": weights.xxh3, "pairs": pairs_entry.xxh3, "model": model_cfg });
    let mut manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let (dir, resuming) = match claim(out, ARTIFACT, &manifest, job)? {
        Claim::Done(outcome) => return Ok(outcome),
        Claim::Run { dir, resuming } => (dir, resuming),
    };
    let tunable = Tunable::load(&base_dir, &model_cfg, cfg.lora, cfg.seed, device)?;
    let model = &tunable.model;
    // Before any step (LoRA's B is zero) the model is the reference, taken in the precision the
    // steps compute in so that the policy starts exactly at it.
    let reference = model.cast(cfg.precision.compute_dtype())?;
    let refs = references(&dir.path().join("reference.json"), &reference, &set, cfg, device, progress)?;
    let named = tunable.named_vars();
    let loop_cfg = LoopConfig {
        steps: cfg.steps,
        lr: cfg.lr,
        schedule: cfg.schedule,
        grad_accum: 1,
        clip: cfg.clip,
        max_bad_steps: cfg.max_bad_steps,
        precision: cfg.precision,
    };
    let mut trainer = Trainer::over(named, cfg.adamw, loop_cfg)?;
    let ckpt_root = dir.path().to_path_buf();
    let metrics_path = dir.path().join("metrics.jsonl");
    let mut cursor = PairCursor { epoch: 0, next: 0 };
    match checkpoint::list(&ckpt_root)?.pop().filter(|_| resuming) {
        Some((_, latest)) => {
            let loaded = tunable.restore(&latest, device)?;
            trainer.restore(loaded.meta.step, loaded.meta.opt_step, &loaded.opt_state)?;
            truncate_metrics(&metrics_path, loaded.meta.step)?;
            cursor = serde_json::from_value(loaded.meta.loader)
                .map_err(|e| TrainError::Checkpoint(format!("{}: pair cursor: {e}", latest.display())))?;
        }
        None => truncate_metrics(&metrics_path, 0)?,
    }
    let mut metrics =
        std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path).at("opening", &metrics_path)?;
    let objective = Preference::new(cfg.beta, cfg.loss);
    progress.phase("align", Some(cfg.steps.saturating_sub(trainer.step_count())), Unit::Items);
    while trainer.step_count() < cfg.steps {
        let started = Instant::now();
        let idx = cursor.take(set.train.len(), cfg.batch_size, cfg.seed);
        let chosen: Vec<&RenderedPair> = idx.iter().map(|&i| &set.train[i]).collect();
        let reference: Vec<(f32, f32)> = idx.iter().map(|&i| refs["train"][i]).collect();
        let mut batch = Some(pair_batch(&chosen, Some(&reference)));
        // Every position is computed, padding included: the cost of the step.
        let tokens = batch.as_ref().map_or(0, |b| b.inputs.len());
        let r = trainer.step(model, &objective, device, &mut || batch.take().expect("one micro-batch per step"))?;
        let stats = objective.last_stats();
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let line = serde_json::json!({
            "step": r.step, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm, "skipped": r.skipped,
            "accuracy": stats.map(|s| s.accuracy), "margin": stats.map(|s| s.margin), "tokens": tokens, "seconds": secs,
        });
        writeln!(metrics, "{line}").at("writing", &metrics_path)?;
        progress.advance(1);
        progress.status(&format!("step {} loss {:.3}", r.step, r.loss));
        let last = r.step == cfg.steps;
        if r.step % cfg.eval_every == 0 || last {
            let val = evaluate(model, &set, &refs, cfg, device)?;
            writeln!(metrics, "{}", serde_json::json!({"step": r.step, "held_out": val}))
                .at("writing", &metrics_path)?;
        }
        let stop = job.interrupt.is_set() && !last;
        if r.step % cfg.checkpoint_every == 0 || last || stop {
            metrics.flush().at("writing", &metrics_path)?;
            let (opt_step, state) = trainer.optimizer().state();
            let loader = serde_json::to_value(cursor).expect("cursor serialises");
            let meta = Meta { step: r.step, opt_step, loader, model: model_cfg.clone(), val_loss: None };
            let path = tunable.save(&ckpt_root, &state, &meta, &tokenizer)?;
            checkpoint::prune(&ckpt_root, cfg.keep_checkpoints, None)?;
            if stop {
                return Err(TrainError::Interrupted { step: r.step, checkpoint: path });
            }
        }
    }
    drop(metrics);
    let after = evaluate(model, &set, &refs, cfg, device)?;
    let summary: Vec<String> =
        after.iter().map(|(g, s)| format!("{g} accuracy {:.1}%, margin {:.3}", 100.0 * s.accuracy, s.margin)).collect();
    progress.finish(&format!("{} steps; held-out pairs: {}", trainer.step_count(), summary.join("; ")));
    manifest.stats = serde_json::json!({
        "trained_values": tunable.trained_values(),
        "lora": cfg.lora,
        "final_step": trainer.step_count(),
        "train_seconds": step_seconds(&metrics_path, 0)?,
        "train_pairs": set.train.len(),
        "held_out_pairs": set.held_out.iter().map(|(g, v)| (g.clone(), v.len())).collect::<BTreeMap<_, _>>(),
        "dropped_pairs": set.dropped,
        "after": after,
    });
    dir.finish(&manifest)?;
    Ok(Outcome { manifest, skipped: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_visits_every_pair_once_per_epoch_and_resumes() {
        let mut c = PairCursor { epoch: 0, next: 0 };
        let first: Vec<usize> = (0..3).flat_map(|_| c.take(7, 3, 5)).collect();
        let mut epoch0 = first[..7].to_vec();
        epoch0.sort_unstable();
        assert_eq!(epoch0, (0..7).collect::<Vec<_>>());
        assert_eq!(c, PairCursor { epoch: 1, next: 2 });
        let mut resumed = c;
        assert_eq!(resumed.take(7, 4, 5), c.take(7, 4, 5));
    }
}

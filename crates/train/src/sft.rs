//! Instruction tuning (SFT): a base model, a mixture of conversation sources, the one loop.
//!
//! The objective is [`NextToken`] on packed batches whose targets outside the assistant's replies
//! are ignored ([`tsukuru_tokens::sft`]). Sources are the built-in world's instruction tasks (the
//! `train` split to train on, in-domain `validation` examples to report loss on) or a user's JSONL
//! conversations (a seeded hash keeps `val_fraction` of them for validation). Every `eval_every`
//! steps the loss on each source's validation conversations goes to `metrics.jsonl`, so a source
//! the model is not learning shows by name. The output directory holds checkpoints like
//! pretraining's (each with `tokenizer.json`, so chat and generation load them directly), the
//! metrics and a manifest; an interrupted run resumes exactly.

use crate::checkpoint::{self, Meta};
use crate::job::{claim, step_seconds, truncate_metrics, Claim, JobOptions};
use crate::optim::AdamWConfig;
use crate::schedule::Schedule;
use crate::trainer::{LoopConfig, NextToken, Objective, Precision, Trainer};
use crate::tunable::Tunable;
use crate::TrainError;
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tsukuru_core::error::IoContext;
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, Progress, Rng};
use tsukuru_model::{pretrained, LoraSpec, Transformer};
use tsukuru_tokenizer::chat::{self, Message, Role};
use tsukuru_tokenizer::Tok;
use tsukuru_tokens::sft::{fit, pack_in_order, Fit, MixSource, MixtureLoader, MixtureState};
use tsukuru_world::tasks::{Example, Split, TaskKind};

/// Artifact name of an instruction-tuned model.
pub const ARTIFACT: &str = "sft-model";
/// Format version of its directory.
pub const FORMAT_VERSION: u32 = 1;

/// One source of the mixture: exactly one of `world` and `jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name in reports and metrics.
    pub name: String,
    /// A world directory (`tsukuru world generate`): its instruction tasks.
    #[serde(default)]
    pub world: Option<PathBuf>,
    /// For a world source, only these tasks (default: every task with in-domain examples).
    #[serde(default)]
    pub tasks: Option<Vec<TaskKind>>,
    /// A JSONL file of conversations (OpenAI `messages`, or `prompt` and `completion`).
    #[serde(default)]
    pub jsonl: Option<PathBuf>,
    /// Share of the training conversations (normalised over the sources).
    pub ratio: f64,
    /// Passes over the source after which it is used no more (default: no limit).
    #[serde(default)]
    pub epochs: Option<u32>,
}

/// An SFT run: the mixture and the loop's settings (every key but `sources` has a default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Where conversations come from.
    pub sources: Vec<SourceConfig>,
    /// Optimiser steps (fewer if every source reaches its epochs first).
    pub steps: u64,
    /// Rows per batch.
    pub batch_size: usize,
    /// Tokens per row (at most the model's context); longer conversations are cut.
    pub seq_len: usize,
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
    /// Seed of the mixture's draws and of the validation split of JSONL sources.
    pub seed: u64,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: u64,
    /// Validation conversations per source per evaluation (at most).
    pub eval_examples: usize,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Newest checkpoints kept.
    pub keep_checkpoints: usize,
    /// Share of each JSONL source kept for validation.
    pub val_fraction: f64,
    /// A system message put before every conversation that has none.
    pub system: Option<String>,
    /// Train LoRA adapters on the projections instead of every weight (merged into the saved model).
    pub lora: Option<LoraSpec>,
    /// What the steps compute in: `float32`, or `bfloat16` (mixed precision, f32 master weights).
    #[serde(skip_serializing_if = "Precision::is_float32")]
    pub precision: Precision,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            steps: 200,
            batch_size: 8,
            seq_len: 128,
            lr: 1e-3,
            schedule: Schedule::Cosine { warmup: 10, min_ratio: 0.0 },
            adamw: AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() },
            clip: 1.0,
            max_bad_steps: 5,
            seed: 0,
            eval_every: 50,
            eval_examples: 256,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            val_fraction: 0.05,
            system: None,
            lora: None,
            precision: Precision::Float32,
        }
    }
}

impl SftConfig {
    fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.sources.is_empty() {
            return bad("the mixture lists no sources; add [[sources]] tables".into());
        }
        for s in &self.sources {
            if s.world.is_some() == s.jsonl.is_some() {
                return bad(format!("source `{}`: give exactly one of `world` and `jsonl`", s.name));
            }
            if !(s.ratio > 0.0 && s.ratio.is_finite()) {
                return bad(format!("source `{}`: ratio must be positive, got {}", s.name, s.ratio));
            }
            if s.tasks.is_some() && s.world.is_none() {
                return bad(format!("source `{}`: `tasks` applies to world sources only", s.name));
            }
        }
        let mut names: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return bad("source names must be unique".into());
        }
        if self.batch_size == 0 || self.seq_len < 2 || self.eval_every == 0 || self.checkpoint_every == 0 {
            return bad("batch_size, eval_every and checkpoint_every must be ≥ 1 and seq_len ≥ 2".into());
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!("val_fraction must be in [0, 1), got {}", self.val_fraction));
        }
        Ok(())
    }

    fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            steps: self.steps,
            lr: self.lr,
            schedule: self.schedule,
            grad_accum: 1,
            clip: self.clip,
            max_bad_steps: self.max_bad_steps,
            precision: self.precision,
        }
    }
}

/// A source read, rendered and cut to the context.
struct ReadySource {
    name: String,
    train_conversations: usize,
    val: Vec<tsukuru_tokenizer::chat::Rendered>,
    truncated: usize,
    dropped: usize,
    input: PathBuf,
}

/// A source's conversations: (to train on, to validate on).
type TrainAndVal = (Vec<Vec<Message>>, Vec<Vec<Message>>);

/// Conversations of a world source: (train, validation) from its task file.
fn world_conversations(dir: &Path, tasks: Option<&[TaskKind]>) -> Result<TrainAndVal, TrainError> {
    let path = dir.join("tasks.jsonl");
    let examples: Vec<Example> = tsukuru_world::read_jsonl(&path).map_err(|e| {
        TrainError::Config(format!("{e} (is {} a world directory from `tsukuru world generate`?)", dir.display()))
    })?;
    let wanted = |e: &Example| e.in_domain() && tasks.is_none_or(|t| t.contains(&e.task));
    let conv = |e: &Example| vec![Message::new(Role::User, &e.prompt), Message::new(Role::Assistant, &e.response)];
    let of = |split: Split| examples.iter().filter(|e| e.split == split && wanted(e)).map(conv).collect::<Vec<_>>();
    Ok((of(Split::Train), of(Split::Validation)))
}

/// Conversations of a JSONL source, split by a seeded hash of each conversation's text.
fn jsonl_conversations(path: &Path, seed: u64, val_fraction: f64) -> Result<TrainAndVal, TrainError> {
    let all = tsukuru_tokens::conversations::read_jsonl(path)?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for c in all {
        let text: String = c.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\u{1f}");
        let r = Rng::stream(seed, &format!("sft-val/{text}")).f64();
        if r < val_fraction {
            val.push(c)
        } else {
            train.push(c)
        }
    }
    Ok((train, val))
}

/// A source read and rendered: its training conversations for the mixture, the rest for reports.
fn prepare_source(s: &SourceConfig, cfg: &SftConfig, tok: &Tok) -> Result<(MixSource, ReadySource), TrainError> {
    let (train, val, input) = match (&s.world, &s.jsonl) {
        (Some(dir), _) => {
            let (t, v) = world_conversations(dir, s.tasks.as_deref())?;
            (t, v, dir.join("tasks.jsonl"))
        }
        (_, Some(path)) => {
            let (t, v) = jsonl_conversations(path, cfg.seed, cfg.val_fraction)?;
            (t, v, path.clone())
        }
        _ => unreachable!("validated: exactly one input"),
    };
    let (mut truncated, mut dropped) = (0, 0);
    let mut render = |convs: Vec<Vec<Message>>| -> Result<Vec<chat::Rendered>, TrainError> {
        let mut out = Vec::with_capacity(convs.len());
        for mut c in convs {
            if let (Some(system), Some(first)) = (&cfg.system, c.first()) {
                if first.role != Role::System {
                    c.insert(0, Message::new(Role::System, system));
                }
            }
            let mut r = chat::render(tok, &c).map_err(|e| TrainError::Config(format!("source `{}`: {e}", s.name)))?;
            match fit(&mut r, cfg.seq_len) {
                Fit::Whole => out.push(r),
                Fit::Truncated => {
                    truncated += 1;
                    out.push(r);
                }
                Fit::Dropped => dropped += 1,
            }
        }
        Ok(out)
    };
    let train = render(train)?;
    let val = render(val)?;
    if train.is_empty() {
        return Err(TrainError::Config(format!(
            "source `{}` has no training conversation that fits {} tokens",
            s.name, cfg.seq_len
        )));
    }
    let ready = ReadySource { name: s.name.clone(), train_conversations: train.len(), val, truncated, dropped, input };
    Ok((MixSource { name: s.name.clone(), ratio: s.ratio, epochs: s.epochs, examples: train }, ready))
}

/// Mean loss over the assistant tokens of up to `n` validation conversations.
fn validation_loss(
    model: &Transformer,
    val: &[chat::Rendered],
    cfg: &SftConfig,
    device: &Device,
) -> Result<Option<f64>, TrainError> {
    let examples = &val[..val.len().min(cfg.eval_examples)];
    let (mut total, mut count) = (0.0, 0usize);
    for batch in pack_in_order(examples, cfg.batch_size, cfg.seq_len) {
        let scored = batch.targets.iter().filter(|&&t| t != tsukuru_tokens::sft::IGNORE).count();
        let loss = NextToken.loss(model, &batch, device)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        total += loss * scored as f64;
        count += scored;
    }
    Ok((count > 0).then(|| total / count as f64))
}

/// Tunes the model in `base` (a checkpoint, or a training directory whose newest checkpoint is
/// taken) on the mixture of `cfg` into `out`; skips if the same run is complete there.
pub fn sft(
    base: &Path,
    out: &Path,
    cfg: &SftConfig,
    device: &Device,
    job: &JobOptions,
    progress: &dyn Progress,
) -> Result<Outcome, TrainError> {
    cfg.validate()?;
    let base_dir = pretrained::resolve(base).map_err(|e| TrainError::Config(e.to_string()))?;
    let model_cfg = pretrained::load_config(&base_dir).map_err(|e| TrainError::Config(e.to_string()))?;
    if cfg.seq_len > model_cfg.max_seq_len {
        return Err(TrainError::Config(format!(
            "seq_len {} exceeds the base model's context of {} tokens",
            cfg.seq_len, model_cfg.max_seq_len
        )));
    }
    let tokenizer = base_dir.join("tokenizer.json");
    let tok = Tok::from_file(&tokenizer).map_err(|e| {
        TrainError::Config(format!("{e}; the base model needs its tokenizer.json with the chat tokens"))
    })?;
    let total_ratio: f64 = cfg.sources.iter().map(|s| s.ratio).sum();
    if (total_ratio - 1.0).abs() > 1e-9 {
        let shares: Vec<String> =
            cfg.sources.iter().map(|s| format!("{} {:.3}", s.name, s.ratio / total_ratio)).collect();
        progress.note(&format!("mixture ratios sum to {total_ratio}, not 1; normalised to {}", shares.join(", ")));
    }
    let (mix, sources): (Vec<MixSource>, Vec<ReadySource>) =
        cfg.sources.iter().map(|s| prepare_source(s, cfg, &tok)).collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
    for s in sources.iter().filter(|s| s.truncated + s.dropped > 0) {
        progress.note(&format!(
            "source `{}`: {} conversations cut to {} tokens, {} dropped (nothing to learn left after the cut)",
            s.name, s.truncated, cfg.seq_len, s.dropped
        ));
    }
    let inputs: Vec<FileEntry> = sources.iter().map(|s| FileEntry::of_path(&s.input)).collect::<Result<_, _>>()?;
    let weights = FileEntry::of(&base_dir, "model.safetensors")?;
    let params = serde_json::json!({ "config": cfg, "base": weights.xxh3, "inputs": inputs, "model": model_cfg });
    let mut manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let (dir, resuming) = match claim(out, ARTIFACT, &manifest, job)? {
        Claim::Done(outcome) => return Ok(outcome),
        Claim::Run { dir, resuming } => (dir, resuming),
    };

    let tunable = Tunable::load(&base_dir, &model_cfg, cfg.lora, cfg.seed, device)?;
    let model = &tunable.model;
    let named = tunable.named_vars();
    let mut trainer = Trainer::over(named, cfg.adamw, cfg.loop_config())?;
    let ckpt_root = dir.path().to_path_buf();
    let metrics_path = dir.path().join("metrics.jsonl");
    let mut loader = match checkpoint::list(&ckpt_root)?.pop().filter(|_| resuming) {
        Some((_, latest)) => {
            let loaded = tunable.restore(&latest, device)?;
            trainer.restore(loaded.meta.step, loaded.meta.opt_step, &loaded.opt_state)?;
            truncate_metrics(&metrics_path, loaded.meta.step)?;
            let state: MixtureState = serde_json::from_value(loaded.meta.loader)
                .map_err(|e| TrainError::Checkpoint(format!("{}: mixture state: {e}", latest.display())))?;
            MixtureLoader::resume(&mix, cfg.batch_size, cfg.seq_len, cfg.seed, state)?
        }
        None => {
            truncate_metrics(&metrics_path, 0)?;
            MixtureLoader::new(&mix, cfg.batch_size, cfg.seq_len, cfg.seed)?
        }
    };
    let mut metrics =
        std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path).at("opening", &metrics_path)?;
    let start_step = trainer.step_count();
    progress.phase("sft", Some(cfg.steps.saturating_sub(start_step)), Unit::Items);
    let evaluate = |model: &Transformer| -> Result<BTreeMap<String, Option<f64>>, TrainError> {
        sources.iter().map(|s| Ok((s.name.clone(), validation_loss(model, &s.val, cfg, device)?))).collect()
    };
    let mut exhausted = false;
    let mut last_val = None;
    while trainer.step_count() < cfg.steps {
        let started = Instant::now();
        let Some(batch) = loader.next_batch() else {
            exhausted = true;
            break;
        };
        let trained = batch.targets.iter().filter(|&&t| t != tsukuru_tokens::sft::IGNORE).count();
        // Every position is computed, padding included: the cost of the step.
        let tokens = batch.inputs.len();
        let mut pending = Some(batch);
        let r = trainer.step(model, &NextToken, device, &mut || pending.take().expect("one micro-batch per step"))?;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let line = serde_json::json!({
            "step": r.step, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm, "skipped": r.skipped,
            "trained_tokens": trained, "tokens": tokens, "seconds": secs,
        });
        writeln!(metrics, "{line}").at("writing", &metrics_path)?;
        progress.advance(1);
        progress.status(&format!("step {} loss {:.3}", r.step, r.loss));
        let last = r.step == cfg.steps;
        if r.step % cfg.eval_every == 0 || last {
            let val = evaluate(model)?;
            writeln!(metrics, "{}", serde_json::json!({"step": r.step, "val_loss": val}))
                .at("writing", &metrics_path)?;
            last_val = mean_loss(&val);
        }
        let stop = job.interrupt.is_set() && !last;
        if r.step % cfg.checkpoint_every == 0 || last || stop {
            save(&ckpt_root, &tunable, &trainer, &loader, &model_cfg, last_val, &tokenizer, cfg)?;
            if stop {
                let path = ckpt_root.join(checkpoint::dir_name(r.step));
                return Err(TrainError::Interrupted { step: r.step, checkpoint: path });
            }
        }
    }
    drop(metrics);
    let final_step = trainer.step_count();
    if exhausted {
        progress.note(&format!("every source reached its epochs after {final_step} steps; stopping there"));
    }
    let val = evaluate(model)?;
    if checkpoint::list(&ckpt_root)?.last().is_none_or(|(s, _)| *s != final_step) {
        save(&ckpt_root, &tunable, &trainer, &loader, &model_cfg, mean_loss(&val), &tokenizer, cfg)?;
    }
    progress.finish(&format!("{final_step} steps, validation loss {}", describe(&val)));
    let taken = loader.state().taken;
    manifest.stats = serde_json::json!({
        "trained_values": tunable.trained_values(),
        "lora": cfg.lora,
        "final_step": final_step,
        "stopped_early": exhausted,
        "train_seconds": step_seconds(&metrics_path, 0)?,
        "val_loss": val,
        "sources": sources.iter().zip(&cfg.sources).zip(&taken).map(|((s, c), n)| serde_json::json!({
            "name": s.name,
            "share": c.ratio / total_ratio,
            "train_conversations": s.train_conversations,
            "val_conversations": s.val.len(),
            "conversations_trained": n,
            "truncated": s.truncated,
            "dropped": s.dropped,
        })).collect::<Vec<_>>(),
    });
    dir.finish(&manifest)?;
    Ok(Outcome { manifest, skipped: false })
}

/// Writes a checkpoint and prunes old ones.
#[allow(clippy::too_many_arguments)]
fn save(
    root: &Path,
    tunable: &Tunable,
    trainer: &Trainer,
    loader: &MixtureLoader,
    model: &tsukuru_model::ModelConfig,
    val_loss: Option<f64>,
    tokenizer: &Path,
    cfg: &SftConfig,
) -> Result<(), TrainError> {
    let (opt_step, state) = trainer.optimizer().state();
    let loader = serde_json::to_value(loader.state()).expect("mixture state serialises");
    let meta = Meta { step: trainer.step_count(), opt_step, loader, model: model.clone(), val_loss };
    tunable.save(root, &state, &meta, tokenizer)?;
    checkpoint::prune(root, cfg.keep_checkpoints, None)
}

/// Mean of the sources' validation losses (those measured).
fn mean_loss(val: &BTreeMap<String, Option<f64>>) -> Option<f64> {
    let xs: Vec<f64> = val.values().flatten().copied().collect();
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn describe(val: &BTreeMap<String, Option<f64>>) -> String {
    let parts: Vec<String> = val
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k} {v:.3}"),
            None => format!("{k} n/a"),
        })
        .collect();
    parts.join(", ")
}

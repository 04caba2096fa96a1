//! The evaluation stage of a base model: validation bits per byte against a unigram baseline,
//! the world's fact probe, and samples, written to `eval/` with a manifest (so a rerun skips).
//!
//! Files: `summary.json` (every figure), `probe.jsonl` (one line per probed fact), `samples.jsonl`.

use crate::perplexity::{model_loss, unigram_loss, SplitLoss};
use crate::probe::{fact_probe, GroupScore, ProbeConfig};
use crate::samples::{samples, Sample};
use crate::Result;
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, OutputDir, Prepared, Progress};
use tsukuru_infer::SamplingParams;
use tsukuru_tokenizer::Tok;
use tsukuru_tokens::TokenDataset;

/// Artifact name of a base-model evaluation.
pub const ARTIFACT: &str = "base-eval";
/// Format version of the evaluation directory.
pub const FORMAT_VERSION: u32 = 1;

/// Settings of the evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaseEvalConfig {
    /// Window length for the validation loss.
    pub seq_len: usize,
    /// Windows per forward pass.
    pub batch_size: usize,
    /// Facts probed per group (stated / never stated); 0 skips the probe.
    pub probe_facts: usize,
    /// Options per multiple-choice item.
    pub probe_choices: usize,
    /// Samples written.
    pub samples: usize,
    /// Opening tokens given per sample.
    pub sample_prompt_tokens: usize,
    /// New tokens per sample.
    pub sample_tokens: usize,
    /// Sampling temperature of the samples.
    pub temperature: f32,
    /// Top-k of the samples.
    pub top_k: usize,
    /// Seed of the probe and the samples.
    pub seed: u64,
}

impl Default for BaseEvalConfig {
    fn default() -> Self {
        Self {
            seq_len: 256,
            batch_size: 8,
            probe_facts: 200,
            probe_choices: 4,
            samples: 3,
            sample_prompt_tokens: 8,
            sample_tokens: 48,
            temperature: 0.8,
            top_k: 50,
            seed: 0,
        }
    }
}

/// Where the evaluated things are.
#[derive(Debug, Clone, Copy)]
pub struct BaseEvalInputs<'a> {
    /// A model directory or training output (see `tsukuru_model::pretrained::resolve`).
    pub model: &'a Path,
    /// Token shards the model was trained on (train split for the baseline, val for scoring).
    pub tokens: &'a Path,
    /// The world the text came from, for the fact probe (none: no probe).
    pub world: Option<&'a Path>,
}

/// Everything the evaluation measured (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseEvalSummary {
    /// The checkpoint evaluated.
    pub checkpoint: String,
    /// Parameters of the model.
    pub params: usize,
    /// The model on the validation split.
    pub model: SplitLoss,
    /// A unigram model of the training tokens on the same targets.
    pub unigram: SplitLoss,
    /// Fact probe on stated facts, if a world was given.
    pub probe_stated: Option<GroupScore>,
    /// Fact probe on never-stated facts, if a world was given.
    pub probe_unstated: Option<GroupScore>,
    /// Samples.
    pub samples: Vec<Sample>,
}

/// Evaluates the model of `inputs` into `out`; skips if the same evaluation is complete there.
pub fn evaluate_base(
    inputs: BaseEvalInputs<'_>,
    out: &Path,
    cfg: &BaseEvalConfig,
    device: &Device,
    force: bool,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let ckpt = tsukuru_model::pretrained::resolve(inputs.model)?;
    let weights = FileEntry::of(&ckpt, "model.safetensors")?;
    let tok_manifest =
        Manifest::expect(inputs.tokens, tsukuru_tokens::tokenize::ARTIFACT, "make it with `tsukuru data tokenize`")?;
    let world = match inputs.world {
        Some(w) => Some(Manifest::expect(w, tsukuru_world::ARTIFACT, "run `tsukuru world generate`")?.fingerprint),
        None => None,
    };
    let params = serde_json::json!({
        "config": cfg, "weights": weights.xxh3, "tokens": tok_manifest.fingerprint, "world": world,
    });
    let mut manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match OutputDir::prepare(out, ARTIFACT, &manifest.fingerprint, force)? {
        Prepared::Done(manifest) => return Ok(Outcome { manifest, skipped: true }),
        Prepared::Fresh(dir) | Prepared::Resume(dir) => dir,
    };
    let model = tsukuru_model::pretrained::load(&ckpt, DType::F32, device)?;
    let tok = Tok::from_file(&ckpt.join("tokenizer.json"))?;
    let train = TokenDataset::open(inputs.tokens, "train")?;
    let val = TokenDataset::open(inputs.tokens, "val")?;
    let steps = 2 + u64::from(inputs.world.is_some()) + 1;
    progress.phase("evaluate", Some(steps), Unit::Items);
    let unigram = unigram_loss(&train, &val)?;
    progress.advance(1);
    let model_split = model_loss(&model, &val, cfg.seq_len, cfg.batch_size)?;
    progress.advance(1);
    let mut files = vec!["summary.json".to_string(), "samples.jsonl".to_string()];
    let (mut stated, mut unstated) = (None, None);
    if let Some(w) = inputs.world {
        let (_, entities, facts) = tsukuru_world::World::load_truth(w)?;
        let pcfg = ProbeConfig { facts: cfg.probe_facts, choices: cfg.probe_choices, seed: cfg.seed };
        let probe = fact_probe(&model, &tok, &entities, &facts, &pcfg)?;
        write_jsonl(&dir.path().join("probe.jsonl"), &probe.items)?;
        files.push("probe.jsonl".into());
        (stated, unstated) = (Some(probe.stated), Some(probe.unstated));
        progress.advance(1);
    }
    let sampling = SamplingParams { temperature: cfg.temperature, top_k: cfg.top_k, top_p: 1.0, seed: cfg.seed };
    let samples = samples(&model, &tok, &val, cfg.samples, cfg.sample_prompt_tokens, cfg.sample_tokens, sampling)?;
    write_jsonl(&dir.path().join("samples.jsonl"), &samples)?;
    progress.advance(1);
    let summary = BaseEvalSummary {
        checkpoint: ckpt.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        params: model.config().param_count(),
        model: model_split,
        unigram,
        probe_stated: stated,
        probe_unstated: unstated,
        samples,
    };
    let text = serde_json::to_string_pretty(&summary).expect("summary serialises");
    tsukuru_core::atomic::write_atomic(dir.path().join("summary.json"), text.as_bytes())?;
    progress.finish(&format!(
        "validation {:.3} bits/byte (unigram {:.3})",
        summary.model.bits_per_byte, summary.unigram.bits_per_byte
    ));
    manifest.files = files.iter().map(|f| FileEntry::of(dir.path(), f)).collect::<Result<_, _>>()?;
    manifest.stats = serde_json::to_value(&summary).expect("summary serialises");
    dir.finish(&manifest)?;
    Ok(Outcome { manifest, skipped: false })
}

fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    tsukuru_core::atomic::write_atomic(path, &crate::output::jsonl(rows))?;
    Ok(())
}

//! `tsukuru sft`: instruction-tune a base model on a mixture of conversation sources.

use super::pretrain::JobArgs;
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tsukuru_core::Progress;
use tsukuru_model::LoraSpec;
use tsukuru_train::pretrain::JobOptions;
use tsukuru_train::sft::SftConfig;

/// Arguments of `sft`.
#[derive(Args, Debug)]
pub struct SftArgs {
    /// The base model: a checkpoint directory, or a training directory (its newest checkpoint).
    #[arg(long)]
    pub base: PathBuf,
    /// The mixture (TOML): `[[sources]]` tables (`name`, `world = DIR` or `jsonl = FILE`, `ratio`,
    /// optional `epochs`, and `tasks` for world sources) and the loop's settings; relative paths
    /// are taken from the file's directory. See configs/sft.toml.
    #[arg(long)]
    pub mixture: PathBuf,
    /// Output directory for checkpoints, metrics.jsonl and the manifest.
    #[arg(long)]
    pub out: PathBuf,
    /// Override a key of the mixture file, e.g. --set steps=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// LoRA instead of every weight.
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Resuming, device, replacing.
    #[command(flatten)]
    pub job: JobArgs,
}

/// LoRA flags of the tuning commands.
#[derive(Args, Debug)]
pub struct LoraArgs {
    /// Train LoRA adapters of this rank on every block projection instead of every weight (the
    /// saved model has them merged in: a plain checkpoint).
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA's scale numerator (updates are scaled by alpha / rank; default 2 × rank).
    #[arg(long, requires = "lora_rank")]
    pub lora_alpha: Option<f64>,
}

impl LoraArgs {
    /// The adapters asked for, if any.
    pub fn spec(&self) -> Option<LoraSpec> {
        self.lora_rank.map(|rank| LoraSpec { rank, alpha: self.lora_alpha.unwrap_or(2.0 * rank as f64) })
    }
}

/// Runs `sft`.
pub fn run(a: SftArgs, progress: &dyn Progress) -> Result<()> {
    let mut cfg: SftConfig = tsukuru_core::config::load(Some(&a.mixture), "", &a.sets)?;
    cfg.lora = a.lora.spec().or(cfg.lora);
    let base_dir = a.mixture.parent().unwrap_or(Path::new("."));
    for s in &mut cfg.sources {
        for p in [&mut s.world, &mut s.jsonl].into_iter().flatten() {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        }
    }
    sft(&a.base, &a.out, &cfg, &super::pretrain::device(&a.job.device)?, a.job.resume, a.job.force, progress)
}

/// Runs instruction tuning and prints its figures. SIGINT/SIGTERM make it save a checkpoint and stop.
pub fn sft(
    base: &Path,
    out: &Path,
    cfg: &SftConfig,
    device: &candle_core::Device,
    resume: bool,
    force: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let signals = crate::signals::StopOnSignal::install()?;
    let job = JobOptions { resume, force, interrupt: signals.interrupt().clone() };
    let o = tsukuru_train::sft::sft(base, out, cfg, device, &job, progress)
        .with_context(|| format!("sft of {} into {}", base.display(), out.display()))?;
    let s = &o.manifest.stats;
    let per_source: Vec<String> = s["val_loss"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {:.3}", v.as_f64().unwrap_or(f64::NAN))).collect())
        .unwrap_or_default();
    let detail = format!("{} steps, validation loss per source: {}", s["final_step"], per_source.join(", "));
    super::report("sft", out, o.skipped, &detail);
    Ok(())
}

//! `tsukuru align`: preference optimisation (DPO or IPO) of a chat model on preference pairs.

use super::pretrain::JobArgs;
use super::sft::LoraArgs;
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tsukuru_core::Progress;
use tsukuru_train::align::AlignConfig;
use tsukuru_train::preference::PreferenceLoss;
use tsukuru_train::pretrain::JobOptions;

/// Arguments of `align`.
#[derive(Args, Debug)]
pub struct AlignArgs {
    /// The model to align (usually an sft output): a checkpoint or a training directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Preference pairs (JSONL): the world's pairs.jsonl, or lines of {"prompt", "chosen", "rejected"}
    /// (prompt: a string or OpenAI messages; each reply: a string or one assistant message).
    #[arg(long)]
    pub pairs: PathBuf,
    /// Output directory for checkpoints, metrics.jsonl, reference.json and the manifest.
    #[arg(long)]
    pub out: PathBuf,
    /// Strength of the pull toward the reference (starting) model.
    #[arg(long)]
    pub beta: Option<f64>,
    /// The preference loss: dpo or ipo.
    #[arg(long, value_parser = ["dpo", "ipo"])]
    pub loss: Option<String>,
    /// A TOML file of settings (keys of AlignConfig; see configs/align.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a setting, e.g. --set steps=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// LoRA instead of every weight.
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Resuming, device, replacing.
    #[command(flatten)]
    pub job: JobArgs,
}

/// Runs `align`.
pub fn run(a: AlignArgs, progress: &dyn Progress) -> Result<()> {
    let mut cfg: AlignConfig = tsukuru_core::config::load(a.config.as_deref(), "", &a.sets)?;
    cfg.lora = a.lora.spec().or(cfg.lora);
    if let Some(beta) = a.beta {
        cfg.beta = beta;
    }
    if let Some(loss) = &a.loss {
        cfg.loss = if loss == "ipo" { PreferenceLoss::Ipo } else { PreferenceLoss::Dpo };
    }
    let device = super::pretrain::device(&a.job.device)?;
    align(&a.model, &a.pairs, &a.out, &cfg, &device, a.job.resume, a.job.force, progress)
}

/// Runs alignment and prints its figures. SIGINT/SIGTERM make it save a checkpoint and stop.
#[allow(clippy::too_many_arguments)]
pub fn align(
    model: &Path,
    pairs: &Path,
    out: &Path,
    cfg: &AlignConfig,
    device: &candle_core::Device,
    resume: bool,
    force: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let signals = crate::signals::StopOnSignal::install()?;
    let job = JobOptions { resume, force, interrupt: signals.interrupt().clone() };
    let o = tsukuru_train::align::align(model, pairs, out, cfg, device, &job, progress)
        .with_context(|| format!("align {} into {}", model.display(), out.display()))?;
    let after = &o.manifest.stats["after"];
    let groups: Vec<String> = after
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(g, s)| {
                    let acc = 100.0 * s["accuracy"].as_f64().unwrap_or(f64::NAN);
                    format!("{g} preference accuracy {acc:.1}%, margin {:.3}", s["margin"].as_f64().unwrap_or(f64::NAN))
                })
                .collect()
        })
        .unwrap_or_default();
    let detail = format!("{} steps; held-out pairs: {}", o.manifest.stats["final_step"], groups.join("; "));
    super::report("align", out, o.skipped, &detail);
    Ok(())
}

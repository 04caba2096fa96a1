//! `tsukuru pretrain`: train a base model on token shards.

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tsukuru_core::Progress;
use tsukuru_train::pretrain::{JobOptions, PretrainConfig};

/// Arguments of `pretrain`.
#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Token shards (output of `data tokenize`).
    #[arg(long)]
    pub tokens: PathBuf,
    /// Output directory for checkpoints, metrics.jsonl and the manifest.
    #[arg(long)]
    pub out: PathBuf,
    /// Config whose [pretrain] table is used (default: the built-in configs/tiny.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a key, e.g. --set pretrain.steps=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Resuming, device, replacing.
    #[command(flatten)]
    pub job: JobArgs,
}

/// Flags every training command shares.
#[derive(Args, Debug)]
pub struct JobArgs {
    /// Continue an interrupted run from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Device: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Replace a different tsukuru output in --out.
    #[arg(long)]
    pub force: bool,
}

/// The part of a config file `pretrain` reads; other tables (world, data, …) are ignored here.
#[derive(Deserialize)]
struct PretrainFile {
    pretrain: PretrainConfig,
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn device(name: &str) -> Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        other => {
            let ordinal = match other.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest.trim_start_matches(':').parse().with_context(|| format!("bad device '{other}'"))?,
                None => anyhow::bail!("unknown device '{other}': use cpu, cuda or cuda:N"),
            };
            #[cfg(feature = "cuda")]
            let opened = tsukuru_model::gpu::open(ordinal);
            #[cfg(not(feature = "cuda"))]
            let opened = candle_core::Device::new_cuda(ordinal);
            opened.with_context(|| {
                format!("device {other}: this build has no CUDA support or no such GPU (build with --features cuda)")
            })
        }
    }
}

/// Runs `pretrain`.
pub fn run(a: PretrainArgs, progress: &dyn Progress) -> Result<()> {
    let file: PretrainFile = tsukuru_core::config::load(a.config.as_deref(), super::speedrun::TINY, &a.sets)?;
    pretrain(&a.tokens, &a.out, &file.pretrain, &device(&a.job.device)?, a.job.resume, a.job.force, progress)
}

/// Runs pretraining and prints its figures. SIGINT/SIGTERM make it save a checkpoint and stop.
pub fn pretrain(
    tokens: &Path,
    out: &Path,
    cfg: &PretrainConfig,
    device: &candle_core::Device,
    resume: bool,
    force: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let signals = crate::signals::StopOnSignal::install()?;
    let job = JobOptions { resume, force, interrupt: signals.interrupt().clone() };
    let o = tsukuru_train::pretrain::pretrain(tokens, out, cfg, device, &job, progress)
        .with_context(|| format!("pretrain into {}", out.display()))?;
    let s = &o.manifest.stats;
    let detail = format!(
        "{} parameters, {} steps, validation loss {:.4}, {:.3} bits/byte",
        s["params"],
        s["final_step"],
        s["val_loss"].as_f64().unwrap_or(f64::NAN),
        s["val_bpb"].as_f64().unwrap_or(f64::NAN)
    );
    super::report("pretrain", out, o.skipped, &detail);
    Ok(())
}

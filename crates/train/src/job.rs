//! What every training job shares around the loop: how it claims its output directory (fresh,
//! resumed, or already done), the options that govern resuming and stopping, and the upkeep of
//! `metrics.jsonl` across resumed runs.

use crate::TrainError;
use std::path::Path;
use tsukuru_core::error::IoContext;
use tsukuru_core::{Interrupt, Manifest, Outcome, OutputDir, Prepared};

/// How a training job treats earlier output in its directory, and requests to stop.
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// Continue an interrupted run of the same settings from its latest checkpoint (without it,
    /// such a run is refused rather than silently continued).
    pub resume: bool,
    /// Replace a different tsukuru output.
    pub force: bool,
    /// Polled after every step: once set, a checkpoint is written and the job returns
    /// [`TrainError::Interrupted`].
    pub interrupt: Interrupt,
}

/// What a job found in its output directory.
pub(crate) enum Claim {
    /// The same run is complete there: nothing to do.
    Done(Outcome),
    /// Train into `dir`, continuing its latest checkpoint when `resuming`.
    Run {
        /// The claimed directory.
        dir: OutputDir,
        /// An interrupted run of the same settings is continued.
        resuming: bool,
    },
}

/// Claims `out` for a run of `artifact` with `manifest`'s fingerprint: done, fresh, or an
/// interrupted run continued (only with `job.resume`; otherwise refused with the way out).
pub(crate) fn claim(out: &Path, artifact: &str, manifest: &Manifest, job: &JobOptions) -> Result<Claim, TrainError> {
    match OutputDir::prepare_resumable(out, artifact, &manifest.fingerprint, job.force)? {
        Prepared::Done(manifest) => Ok(Claim::Done(Outcome { manifest, skipped: true })),
        Prepared::Fresh(dir) => Ok(Claim::Run { dir, resuming: false }),
        Prepared::Resume(dir) if job.resume => Ok(Claim::Run { dir, resuming: true }),
        Prepared::Resume(_) => Err(TrainError::Config(format!(
            "{} holds an interrupted run with these settings; pass --resume to continue it or --force to start over",
            out.display()
        ))),
    }
}

/// Time spent in training steps, summed over `metrics.jsonl` (so it spans resumed runs): each
/// step line's `seconds`, or `tokens_per_step / tokens_per_s` for lines that give a rate.
pub(crate) fn step_seconds(path: &Path, tokens_per_step: u64) -> Result<f64, TrainError> {
    let text = std::fs::read_to_string(path).at("reading", path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| match v["seconds"].as_f64() {
            Some(s) => Some(s),
            None => v["tokens_per_s"].as_f64().filter(|t| *t > 0.0).map(|tps| tokens_per_step as f64 / tps),
        })
        .sum::<f64>())
}

/// Keeps only the lines of `metrics.jsonl` for steps up to `step` (the resumed checkpoint).
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    tsukuru_core::atomic::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

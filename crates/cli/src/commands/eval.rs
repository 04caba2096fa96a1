//! `tsukuru eval`: a model on a task suite (per-item records, a summary with in-domain and
//! out-of-domain columns); `tsukuru eval contamination`: which items occur in training data.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use tsukuru_core::Progress;
use tsukuru_eval::contamination::{check, ContaminationReport};
use tsukuru_eval::harness::{evaluate, HarnessConfig, Summary};
use tsukuru_eval::suite::{Suite, SuiteOptions};

/// Arguments of `eval`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    /// `eval contamination`.
    #[command(subcommand)]
    pub command: Option<EvalCmd>,
    /// The model: a checkpoint or a training directory (its final checkpoint).
    #[arg(long, required = true)]
    pub model: Option<PathBuf>,
    /// Output directory: results.jsonl (one record per item), summary.json, summary.md.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Clean and contaminated columns from a report of `tsukuru eval contamination` on the same tasks.
    #[arg(long)]
    pub contamination: Option<PathBuf>,
    /// Few-shot examples before each item (drawn from the task's few-shot examples).
    #[arg(long, default_value_t = 0)]
    pub num_fewshot: usize,
    /// Longest generated reply, in tokens.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Replace an earlier evaluation in --out made with other settings.
    #[arg(long)]
    pub force: bool,
    /// The tasks.
    #[command(flatten)]
    pub tasks: TaskArgs,
}

/// The task suite's flags, shared by `eval` and `eval contamination`.
#[derive(Args, Debug, Clone)]
pub struct TaskArgs {
    /// Comma-separated: FILE.jsonl (docs/ARTIFACTS.md), world:DIR (the world's test split),
    /// world-val:DIR (its validation split), docs:DIR (documents of prepared text).
    #[arg(long, required = true)]
    pub tasks: Option<String>,
    /// Built-in tasks: items per task and domain (docs: per split), at most.
    #[arg(long, default_value_t = 40)]
    pub per_group: usize,
    /// Seed of the built-in samples and of the few-shot draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl TaskArgs {
    /// The suite the flags name.
    pub fn suite(&self) -> Result<Suite> {
        let spec = self.tasks.as_deref().context("--tasks is required")?;
        let opts = SuiteOptions { per_group: self.per_group, seed: self.seed, ..SuiteOptions::default() };
        Suite::load(spec, &opts).with_context(|| format!("reading --tasks {spec}"))
    }
}

/// Subcommands of `eval`.
#[derive(Subcommand, Debug)]
pub enum EvalCmd {
    /// Mark each item clean or contaminated by n-gram overlap with the training data.
    Contamination(ContaminationArgs),
}

/// Arguments of `eval contamination`.
#[derive(Args, Debug)]
pub struct ContaminationArgs {
    /// Training data: prepared text (data prepare), token shards (data tokenize), or raw files.
    #[arg(long)]
    pub train: PathBuf,
    /// Report to write (JSON), for `tsukuru eval --contamination`.
    #[arg(long)]
    pub out: PathBuf,
    /// N-gram length in words (13 as in GPT-3 and lm-evaluation-harness).
    #[arg(long, default_value_t = 13)]
    pub n: usize,
    /// Most memory for the n-gram filter, in MiB (its false-positive rate is reported).
    #[arg(long, default_value_t = 1024)]
    pub max_filter_mib: usize,
    /// The tasks.
    #[command(flatten)]
    pub tasks: TaskArgs,
}

/// Runs `eval`.
pub fn run(a: EvalArgs, progress: &dyn Progress) -> Result<()> {
    if let Some(EvalCmd::Contamination(c)) = a.command {
        return contamination(&c.train, &c.tasks.suite()?, c.n, c.max_filter_mib, &c.out, progress).map(|_| ());
    }
    let (model, out) = (a.model.context("--model is required")?, a.out.context("--out is required")?);
    let report = a.contamination.as_deref().map(ContaminationReport::read).transpose()?;
    let cfg =
        HarnessConfig { num_fewshot: a.num_fewshot, max_new_tokens: a.max_new_tokens, ..HarnessConfig::default() };
    let summary = eval(&model, &a.tasks.suite()?, report.as_ref(), &out, &cfg, a.force, progress)?;
    print!("{}", summary.to_markdown());
    Ok(())
}

/// Evaluates `model` on `suite` into `out` and prints where the results went.
pub fn eval(
    model: &Path,
    suite: &Suite,
    report: Option<&ContaminationReport>,
    out: &Path,
    cfg: &HarnessConfig,
    force: bool,
    progress: &dyn Progress,
) -> Result<Summary> {
    let (o, summary) = evaluate(model, suite, report, out, cfg, force, progress)
        .with_context(|| format!("evaluating {} into {}", model.display(), out.display()))?;
    let detail = format!("{} items of {} tasks", summary.items, suite.tasks.len());
    super::report("eval", out, o.skipped, &detail);
    Ok(summary)
}

/// Checks `suite` against `train` and writes the report to `out` (never over a directory).
pub fn contamination(
    train: &Path,
    suite: &Suite,
    n: usize,
    max_filter_mib: usize,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ContaminationReport> {
    if out.is_dir() {
        bail!("--out {} is a directory; give the report's file name, e.g. contamination.json", out.display());
    }
    let report = check(train, suite, n, max_filter_mib << 20, progress)
        .with_context(|| format!("checking the tasks against {}", train.display()))?;
    let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
    tsukuru_core::atomic::write_atomic(out, text.as_bytes())?;
    for task in &suite.tasks {
        let (checked, dirty, unchecked) = report.counts(Some(&task.name));
        println!("{}: {dirty} of {checked} checked items contaminated ({unchecked} shorter than {n} words)", task.name);
    }
    let (checked, dirty, unchecked) = report.counts(None);
    println!(
        "contamination: wrote {} ({dirty} of {checked} items contaminated, {unchecked} unchecked; {} training documents, \
         false-positive rate per n-gram {:.1e})",
        out.display(),
        report.documents,
        report.false_positive_rate
    );
    Ok(report)
}

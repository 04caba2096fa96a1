//! `tsukuru select --run DIR --metric NAME`: the checkpoint to ship, chosen on validation items,
//! with the reasons written down.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use tsukuru_core::run::RunDir;
use tsukuru_core::Progress;
use tsukuru_eval::harness::HarnessConfig;
use tsukuru_eval::select::{check_validation_spec, checkpoints, select as choose, Metric, Selection};
use tsukuru_eval::suite::{Suite, SuiteOptions};

/// Arguments of `select`.
#[derive(Args, Debug)]
pub struct SelectArgs {
    /// The run directory (e.g. runs/speedrun).
    #[arg(long)]
    pub run: PathBuf,
    /// in_domain, out_of_domain, or TASK/METRIC (e.g. world/facts/acc; bits_per_byte is lower-better).
    #[arg(long, default_value = "in_domain")]
    pub metric: String,
    /// Training stages whose checkpoints compete, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "sft,align")]
    pub stages: Vec<String>,
    /// Validation items (a --tasks SPEC; default world-val:RUN/world). Test splits are refused.
    #[arg(long)]
    pub tasks: Option<String>,
    /// Built-in tasks: items per task and domain, at most.
    #[arg(long, default_value_t = 40)]
    pub per_group: usize,
    /// Output directory (default RUN/selection, which the report card shows).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an earlier selection made with other settings.
    #[arg(long)]
    pub force: bool,
}

/// Runs `select`.
pub fn run(a: SelectArgs, progress: &dyn Progress) -> Result<()> {
    if !a.run.is_dir() {
        bail!("--run {} is not a directory; give a run such as runs/speedrun", a.run.display());
    }
    let run = RunDir::new(&a.run);
    let spec = a.tasks.clone().unwrap_or_else(|| format!("world-val:{}", run.world().display()));
    let stages: Vec<&str> = a.stages.iter().map(String::as_str).collect();
    let out = a.out.clone().unwrap_or_else(|| run.selection());
    let s = select(&run, &stages, &spec, &Metric::parse(&a.metric)?, a.per_group, &out, a.force, progress)?;
    print!("{}", s.to_markdown());
    Ok(())
}

/// Chooses among the checkpoints of `stages` of `run` on the validation items of `spec`, into `out`.
#[allow(clippy::too_many_arguments)]
pub fn select(
    run: &RunDir,
    stages: &[&str],
    spec: &str,
    metric: &Metric,
    per_group: usize,
    out: &std::path::Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<Selection> {
    check_validation_spec(spec)?;
    let mut candidates = Vec::new();
    for stage in stages {
        let dir = run.root().join(stage);
        if !dir.is_dir() {
            bail!("{} has no stage `{stage}`; --stages takes base, sft or align", run.root().display());
        }
        candidates.extend(checkpoints(stage, &dir)?);
    }
    let suite = Suite::load(spec, &SuiteOptions { per_group, ..SuiteOptions::default() })
        .with_context(|| format!("reading the validation items {spec}"))?;
    let (o, s) = choose(&candidates, &suite, spec, metric, out, &HarnessConfig::default(), force, progress)
        .with_context(|| format!("selecting a checkpoint of {}", run.root().display()))?;
    super::report("select", out, o.skipped, &s.reasons[0]);
    Ok(s)
}

//! `tsukuru arena`: models compared two by two on the same prompts, in both orders, judged by the
//! ground truth or by a model; Bradley–Terry ratings with bootstrap intervals.

use super::eval::TaskArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use tsukuru_core::Progress;
use tsukuru_eval::arena::{arena_into, prompts_of, ArenaConfig, Judge};

/// Arguments of `arena`.
#[derive(Args, Debug)]
pub struct ArenaArgs {
    /// Comma-separated model directories (checkpoints or training directories), at least two.
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<PathBuf>,
    /// `reference` (each reply scored against the item's answer) or a judge model's directory.
    #[arg(long, default_value = "reference")]
    pub judge: String,
    /// Output directory: battles.jsonl, standings.json, standings.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Longest reply, in tokens.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Bootstrap resamples of the prompts for the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Replace an earlier arena in --out made with other settings.
    #[arg(long)]
    pub force: bool,
    /// The prompts: `generate` items of a --tasks SPEC (e.g. world:DIR or a JSONL file).
    #[command(flatten)]
    pub prompts: TaskArgs,
}

/// Runs `arena`.
pub fn run(a: ArenaArgs, progress: &dyn Progress) -> Result<()> {
    if a.models.len() < 2 {
        bail!("--models needs at least two model directories, comma-separated");
    }
    // Names: the directories' last components, or whole paths when those collide.
    let short: Vec<String> = a
        .models
        .iter()
        .map(|p| p.file_name().map_or(p.display().to_string(), |n| n.to_string_lossy().into()))
        .collect();
    let unique = short.iter().collect::<std::collections::BTreeSet<_>>().len() == short.len();
    let models: Vec<(String, PathBuf)> = a
        .models
        .iter()
        .zip(short)
        .map(|(p, s)| (if unique { s } else { p.display().to_string() }, p.clone()))
        .collect();
    let prompts = prompts_of(a.prompts.suite()?)?;
    let cfg = ArenaConfig { max_new_tokens: a.max_new_tokens, bootstrap: a.bootstrap, seed: a.prompts.seed };
    let judge = Judge::parse(&a.judge);
    let (o, standings) = arena_into(&models, &prompts, &judge, &a.out, &cfg, a.force, progress)
        .with_context(|| format!("arena into {}", a.out.display()))?;
    super::report("arena", &a.out, o.skipped, &format!("{} prompts, {} models", standings.prompts, models.len()));
    print!("{}", standings.to_markdown());
    Ok(())
}

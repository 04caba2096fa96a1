//! `tsukuru data prepare` and `tsukuru data tokenize`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tsukuru_core::Progress;
use tsukuru_data::input::TxtSplit;
use tsukuru_data::PrepareConfig;

/// Data subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Clean, filter, dedup and split text into compressed train/val shards.
    Prepare(PrepareArgs),
    /// Encode prepared text into binary token shards.
    Tokenize(TokenizeArgs),
}

/// Arguments of `data prepare`.
#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// Input files or directories (searched recursively): .txt, .md, .jsonl, .jsonl.zst, .parquet.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// JSONL field or parquet column holding the text [config: text_field, default text].
    #[arg(long)]
    pub text_field: Option<String>,
    /// Share of documents for validation [config: val_fraction, default 0.01].
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// How .txt files become documents: file, paragraph or line [config: txt_split].
    #[arg(long, value_parser = ["file", "paragraph", "line"])]
    pub txt_split: Option<String>,
    /// Skip documents with invalid UTF-8 (counted) instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
    /// TOML config with filters and dedup settings (see configs/prepare.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set dedup.threshold=0.7 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Drop documents sharing an n-gram with these evaluation items (a --tasks SPEC of `tsukuru eval`).
    #[arg(long, value_name = "TASKS")]
    pub decontaminate: Option<String>,
    /// N-gram length in words for --decontaminate.
    #[arg(long, default_value_t = 13)]
    pub decontaminate_n: usize,
    /// Replace a different tsukuru output in --out.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `data tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Prepared text (output of `data prepare`).
    #[arg(long)]
    pub data: PathBuf,
    /// Tokenizer directory (output of `tokenizer train`).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens per shard before starting a new one.
    #[arg(long, default_value_t = 100_000_000)]
    pub shard_tokens: u64,
    /// Replace a different tsukuru output in --out.
    #[arg(long)]
    pub force: bool,
}

/// The built-in defaults of `data prepare`, as TOML.
pub const PREPARE_DEFAULTS: &str = include_str!("../../../../configs/prepare.toml");

/// Runs a data subcommand.
pub fn run(cmd: DataCmd, progress: &dyn Progress) -> Result<()> {
    match cmd {
        DataCmd::Prepare(a) => {
            let mut cfg: PrepareConfig = tsukuru_core::config::load(a.config.as_deref(), PREPARE_DEFAULTS, &a.sets)?;
            if let Some(f) = a.text_field {
                cfg.text_field = f;
            }
            if let Some(v) = a.val_fraction {
                cfg.val_fraction = v;
            }
            if let Some(s) = a.txt_split {
                cfg.txt_split = match s.as_str() {
                    "paragraph" => TxtSplit::Paragraph,
                    "line" => TxtSplit::Line,
                    _ => TxtSplit::File,
                };
            }
            cfg.skip_invalid |= a.skip_invalid;
            let decontaminate = match &a.decontaminate {
                Some(spec) => {
                    let suite = tsukuru_eval::suite::Suite::load(spec, &Default::default())
                        .with_context(|| format!("reading --decontaminate {spec}"))?;
                    Some(tsukuru_eval::contamination::decontamination(&suite, a.decontaminate_n)?)
                }
                None => None,
            };
            prepare(&a.input, &a.out, &cfg, decontaminate.as_ref(), a.force, progress)
        }
        DataCmd::Tokenize(a) => tokenize(&a.data, &a.tokenizer, &a.out, a.shard_tokens, a.force, progress),
    }
}

/// Runs `data prepare` and prints its counts.
pub fn prepare(
    input: &[PathBuf],
    out: &std::path::Path,
    cfg: &PrepareConfig,
    decontaminate: Option<&tsukuru_data::Decontaminate>,
    force: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let o = tsukuru_data::prepare_decontaminated(input, out, cfg, decontaminate, force, progress)
        .with_context(|| format!("data prepare into {}", out.display()))?;
    let c = &o.manifest.stats["counts"];
    let dropped: std::collections::BTreeMap<&'static str, u64> = tsukuru_data::filter::Reason::ALL
        .iter()
        .map(|r| (r.name(), c["dropped"][r.name()].as_u64().unwrap_or(0)))
        .collect();
    let detail = format!(
        "{} documents read, {} train, {} val; dropped: {}",
        c["docs_read"],
        c["train_docs"],
        c["val_docs"],
        tsukuru_data::prepare::drop_summary(&dropped)
    );
    super::report("data prepare", out, o.skipped, &detail);
    Ok(())
}

/// Runs `data tokenize` and prints its counts.
pub fn tokenize(
    data: &std::path::Path,
    tokenizer: &std::path::Path,
    out: &std::path::Path,
    shard_tokens: u64,
    force: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let o = tsukuru_tokens::tokenize::tokenize(data, tokenizer, out, shard_tokens, force, progress)
        .with_context(|| format!("data tokenize into {}", out.display()))?;
    let s = &o.manifest.stats;
    let detail = format!(
        "{} train tokens in {} documents, {} val tokens",
        s["train"]["tokens"], s["train"]["docs"], s["val"]["tokens"]
    );
    super::report("data tokenize", out, o.skipped, &detail);
    Ok(())
}

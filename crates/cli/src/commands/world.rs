//! `tsukuru world generate`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use tsukuru_core::Progress;
use tsukuru_world::Scale;

/// World subcommands.
#[derive(Subcommand, Debug)]
pub enum WorldCmd {
    /// Generate a world: entities.jsonl, facts.jsonl, corpus.jsonl, heldout.jsonl, templates.jsonl, phantoms.jsonl,
    /// tasks.jsonl (instruction examples), pairs.jsonl (preference pairs).
    Generate(GenerateArgs),
}

/// Arguments of `world generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Output directory (created; must be empty, or hold this same world).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed: the same seed and scale give byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Size: tiny (~400 entities), small (~4,000) or medium (~40,000).
    #[arg(long, default_value = "tiny", value_parser = ["tiny", "small", "medium"])]
    pub scale: String,
    /// Replace a different tsukuru output in --out.
    #[arg(long)]
    pub force: bool,
}

/// Runs a world subcommand.
pub fn run(cmd: WorldCmd, progress: &dyn Progress) -> Result<()> {
    match cmd {
        WorldCmd::Generate(a) => {
            let scale = Scale::parse(&a.scale).expect("clap restricts the values");
            generate(&a.out, a.seed, scale, a.force, progress)
        }
    }
}

/// Runs `world generate` and prints its counts.
pub fn generate(out: &Path, seed: u64, scale: Scale, force: bool, progress: &dyn Progress) -> Result<()> {
    let o = tsukuru_world::generate_into(out, seed, scale, force, progress)
        .with_context(|| format!("world generate into {}", out.display()))?;
    let s = &o.manifest.stats;
    let detail = format!(
        "{} entities, {} facts, {} corpus documents, {} bytes of text",
        s["entities"], s["facts"], s["corpus_docs"], s["corpus_bytes"]
    );
    super::report("world", out, o.skipped, &detail);
    Ok(())
}

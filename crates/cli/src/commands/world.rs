//! `tsukuru world generate`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, OutputDir, Prepared, Progress};
use tsukuru_world::{Scale, World, ARTIFACT, FORMAT_VERSION};

/// World subcommands.
#[derive(Subcommand, Debug)]
pub enum WorldCmd {
    /// Generate a world: entities.jsonl, facts.jsonl, corpus.jsonl, heldout.jsonl, templates.jsonl, phantoms.jsonl.
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
            generate(&a.out, a.seed, scale, a.force, progress).map(|_| ())
        }
    }
}

/// Generates the world into `out` unless the same world is already there; returns its manifest.
pub fn generate(out: &Path, seed: u64, scale: Scale, force: bool, progress: &dyn Progress) -> Result<Manifest> {
    let params = serde_json::json!({ "seed": seed, "scale": scale, "generator": FORMAT_VERSION });
    let mut manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match OutputDir::prepare(out, ARTIFACT, &manifest.fingerprint, force)? {
        Prepared::Done(m) => {
            super::report("world", out, true, &summary(&m.stats));
            return Ok(m);
        }
        Prepared::Fresh(dir) => dir,
    };
    progress.phase("world", None, Unit::Items);
    let world = World::generate(seed, scale);
    let files = world.write(dir.path()).with_context(|| format!("writing the world to {}", out.display()))?;
    manifest.files = files.iter().map(|f| FileEntry::of(dir.path(), f)).collect::<Result<_, _>>()?;
    manifest.stats = world.stats();
    progress.finish(&summary(&manifest.stats));
    dir.finish(&manifest)?;
    super::report("world", out, false, &summary(&manifest.stats));
    Ok(manifest)
}

fn summary(stats: &serde_json::Value) -> String {
    format!(
        "{} entities, {} facts, {} corpus documents, {} bytes of text",
        stats["entities"], stats["facts"], stats["corpus_docs"], stats["corpus_bytes"]
    )
}

//! `tsukuru export gguf`: write a trained model as one GGUF file for llama.cpp and its peers.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tsukuru_model::gguf::{export_gguf, GgufDtype};

/// Export formats.
#[derive(Subcommand, Debug)]
pub enum ExportCmd {
    /// One GGUF file (llama.cpp's `llama` architecture, or `qwen3` for models with QK-norm),
    /// tokenizer included.
    Gguf(GgufArgs),
}

/// Arguments of `export gguf`.
#[derive(Args, Debug)]
pub struct GgufArgs {
    /// A checkpoint directory, or a training output such as runs/NAME/base (newest checkpoint).
    #[arg(long)]
    pub model: PathBuf,
    /// The GGUF file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Precision of the weight matrices: f32, f16 or q8_0 (norm weights stay f32).
    #[arg(long, default_value = "f32")]
    pub dtype: GgufDtype,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs an export command.
pub fn run(cmd: ExportCmd) -> Result<()> {
    match cmd {
        ExportCmd::Gguf(a) => {
            let s = export_gguf(&a.model, &a.out, a.dtype, a.force)
                .with_context(|| format!("exporting {} to GGUF", a.model.display()))?;
            let mut detail = format!(
                "architecture {}, {} tensors, {:.1} MiB",
                s.architecture,
                s.tensors,
                s.bytes as f64 / (1 << 20) as f64
            );
            if !s.kept_f16.is_empty() {
                detail += &format!("; kept in f16 (rows not a whole number of blocks): {}", s.kept_f16.join(", "));
            }
            println!("export: wrote {} ({detail})", a.out.display());
            Ok(())
        }
    }
}

//! `tsukuru generate`: continue a prompt with a trained model, streaming the text as it comes.

use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use tsukuru_infer::{Generation, Sampler, SamplingParams, TextStream};
use tsukuru_model::Transformer;
use tsukuru_tokenizer::{special, Tok};

/// Arguments of `generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A checkpoint directory (config.json, model.safetensors, tokenizer.json), or a training
    /// output such as runs/NAME/base, whose newest checkpoint is used.
    #[arg(long)]
    pub model: PathBuf,
    /// Text to continue (the model sees it after a document-start token, as in training).
    #[arg(long)]
    pub prompt: String,
    /// How tokens are chosen.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Device: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// Most tokens to add (fewer if the model's context ends first).
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (0: no limit).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Sample only among the most likely tokens whose probabilities add up to p (1: no limit).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Seed of the sampling: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampler these flags describe.
    pub fn sampler(&self) -> Result<Sampler> {
        let params =
            SamplingParams { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed: self.seed };
        Ok(Sampler::new(params)?)
    }
}

/// A model directory (see `pretrained::resolve`) loaded with its tokenizer: (directory, model, tokenizer).
pub fn load(model: &std::path::Path, device: &str) -> Result<(PathBuf, Transformer, Tok)> {
    let device = super::pretrain::device(device)?;
    let dir = tsukuru_model::pretrained::resolve(model)?;
    let model = tsukuru_model::pretrained::load(&dir, candle_core::DType::F32, &device)?;
    let tok_path = dir.join("tokenizer.json");
    let tok =
        Tok::from_file(&tok_path).with_context(|| format!("loading the model's tokenizer {}", tok_path.display()))?;
    Ok((dir, model, tok))
}

/// Generates from `prompt`, writing the text to `out` as it comes; returns the generation.
pub fn stream(
    model: &Transformer,
    tok: &Tok,
    prompt: &[u32],
    sampling: &SamplingArgs,
    sampler: &mut Sampler,
    stop: &[u32],
    out: &mut dyn Write,
) -> Result<Generation> {
    let mut stream = TextStream::new(tok);
    let mut failed = None;
    let g = tsukuru_infer::generate(model, prompt, sampling.max_new_tokens, sampler, stop, &mut |id| {
        if failed.is_none() {
            failed = stream
                .push(id)
                .map_err(anyhow::Error::from)
                .and_then(|piece| {
                    write!(out, "{piece}")?;
                    Ok(out.flush()?)
                })
                .err();
        }
    })?;
    if let Some(e) = failed {
        return Err(e.context("writing the generated text"));
    }
    write!(out, "{}", stream.finish()?)?;
    Ok(g)
}

/// Runs `generate`: prints the prompt and its continuation to stdout, and a summary to stderr.
pub fn run(a: GenerateArgs, quiet: bool) -> Result<()> {
    let mut sampler = a.sampling.sampler()?;
    let (dir, model, tok) = load(&a.model, &a.device)?;
    let mut prompt = vec![special::BOS];
    prompt.extend(tok.encode(&a.prompt)?);
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    out.flush()?;
    let started = Instant::now();
    // A document-start or end token means the model finished this text.
    let stop = [special::BOS, special::EOS];
    let g = stream(&model, &tok, &prompt, &a.sampling, &mut sampler, &stop, &mut out)?;
    writeln!(out)?;
    let secs = started.elapsed().as_secs_f64();
    if !quiet {
        eprintln!(
            "generate: {} prompt + {} new tokens in {secs:.2}s ({:.1} tokens/s), finish: {:?}, model {}",
            prompt.len(),
            g.tokens.len(),
            g.tokens.len() as f64 / secs.max(1e-9),
            g.finish,
            dir.display()
        );
    }
    Ok(())
}

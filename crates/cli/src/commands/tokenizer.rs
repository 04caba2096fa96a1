//! `tsukuru tokenizer train|encode|decode`.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tsukuru_core::Progress;
use tsukuru_tokenizer::{Tok, TokenizerConfig};

/// Tokenizer subcommands.
#[derive(Subcommand, Debug)]
pub enum TokenizerCmd {
    /// Train byte-level BPE on the train split of prepared text.
    Train(TrainArgs),
    /// Print the token ids of a text (and the tokens with --verbose).
    Encode(EncodeArgs),
    /// Print the text of token ids.
    Decode(DecodeArgs),
}

/// Arguments of `tokenizer train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Prepared text (output of `data prepare`).
    #[arg(long)]
    pub data: PathBuf,
    /// Vocabulary size, special tokens included [default 8192].
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Least number of occurrences for a merge [default 2].
    #[arg(long)]
    pub min_frequency: Option<u64>,
    /// Most characters of training text to read, 0 for all [default 2,000,000,000].
    #[arg(long)]
    pub max_chars: Option<u64>,
    /// Longest token in characters [default 16].
    #[arg(long)]
    pub max_token_length: Option<usize>,
    /// Output directory (tokenizer.json + manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace a different tsukuru output in --out.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `tokenizer encode`.
#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// Tokenizer directory.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Text to encode; reads stdin when absent.
    pub text: Option<String>,
    /// Also print each token.
    #[arg(long)]
    pub verbose: bool,
    /// Batch mode: read one JSON string per stdin line, print one JSON array of ids per line.
    #[arg(long, conflicts_with_all = ["text", "verbose"])]
    pub jsonl: bool,
}

/// Arguments of `tokenizer decode`.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// Tokenizer directory.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Token ids (space- or comma-separated); reads stdin when absent.
    pub ids: Vec<String>,
}

/// Runs a tokenizer subcommand.
pub fn run(cmd: TokenizerCmd, progress: &dyn Progress) -> Result<()> {
    match cmd {
        TokenizerCmd::Train(a) => {
            let d = TokenizerConfig::default();
            let cfg = TokenizerConfig {
                vocab_size: a.vocab_size.unwrap_or(d.vocab_size),
                min_frequency: a.min_frequency.unwrap_or(d.min_frequency),
                max_chars: a.max_chars.unwrap_or(d.max_chars),
                max_token_length: a.max_token_length.unwrap_or(d.max_token_length),
            };
            train(&a.data, &a.out, &cfg, a.force, progress)
        }
        TokenizerCmd::Encode(a) => {
            let tok = Tok::load(&a.tokenizer)?;
            if a.jsonl {
                return encode_jsonl(&tok);
            }
            let text = match a.text {
                Some(t) => t,
                None => std::io::read_to_string(std::io::stdin()).context("reading stdin")?,
            };
            let ids = tok.encode(&text)?;
            println!("{}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
            if a.verbose {
                for id in &ids {
                    println!("{id}\t{:?}", tok.decode(&[*id])?);
                }
                eprintln!("{} bytes, {} tokens", text.len(), ids.len());
            }
            Ok(())
        }
        TokenizerCmd::Decode(a) => {
            let tok = Tok::load(&a.tokenizer)?;
            let raw = if a.ids.is_empty() {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                a.ids.join(" ")
            };
            let mut ids = Vec::new();
            for part in raw.split(|c: char| c.is_whitespace() || c == ',').filter(|p| !p.is_empty()) {
                let id: u32 = part.parse().with_context(|| format!("'{part}' is not a token id"))?;
                if id as usize >= tok.vocab_size() {
                    bail!("token id {id} is outside the vocabulary of {}", tok.vocab_size());
                }
                ids.push(id);
            }
            print!("{}", tok.decode(&ids)?);
            Ok(())
        }
    }
}

fn encode_jsonl(tok: &Tok) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        let text: String =
            serde_json::from_str(&line).with_context(|| format!("stdin line {}: expected a JSON string", i + 1))?;
        writeln!(out, "{}", serde_json::to_string(&tok.encode(&text)?)?)?;
    }
    Ok(out.flush()?)
}

/// Runs `tokenizer train` and prints its figures.
pub fn train(
    data: &std::path::Path,
    out: &std::path::Path,
    cfg: &TokenizerConfig,
    force: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let o = tsukuru_tokenizer::train(data, out, cfg, force, progress)
        .with_context(|| format!("tokenizer train into {}", out.display()))?;
    let s = &o.manifest.stats;
    let detail = format!(
        "vocab {}, {:.3} bytes/token on validation text",
        s["vocab_size"],
        s["val_bytes_per_token"].as_f64().unwrap_or(0.0)
    );
    super::report("tokenizer train", out, o.skipped, &detail);
    Ok(())
}

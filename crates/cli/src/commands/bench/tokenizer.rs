//! `tsukuru bench tokenizer`: encoding throughput, for side-by-side runs with Python peers
//! (benches/tokenizer.sh). Prints one JSON line per thread count.

use super::median_time;
use anyhow::{Context, Result};
use clap::Args;
use rayon::prelude::*;
use std::path::PathBuf;
use tsukuru_core::Manifest;
use tsukuru_data::shards::for_each_record;
use tsukuru_tokenizer::Tok;

/// Arguments of `bench tokenizer`.
#[derive(Args, Debug)]
pub struct TokenizerBenchArgs {
    /// Prepared text (its train split is encoded).
    #[arg(long)]
    pub data: PathBuf,
    /// Tokenizer directory.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Most text to load, in MiB.
    #[arg(long, default_value_t = 64)]
    pub max_mib: u64,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
}

/// Runs `bench tokenizer`.
pub fn run(a: &TokenizerBenchArgs) -> Result<()> {
    let tok = Tok::load(&a.tokenizer)?;
    let manifest = Manifest::expect(&a.data, tsukuru_data::prepare::ARTIFACT, "run `tsukuru data prepare` first")?;
    let mut texts = Vec::new();
    let mut bytes = 0u64;
    let limit = a.max_mib.saturating_mul(1 << 20);
    for s in tsukuru_data::prepare::shards(&manifest, "train")? {
        for_each_record(&a.data.join(&s.path), &mut |r| {
            bytes += r.text.len() as u64;
            texts.push(r.text);
            bytes < limit
        })?;
        if bytes >= limit {
            break;
        }
    }
    let threads_all = rayon::current_num_threads();
    for threads in [1, threads_all] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("building a thread pool")?;
        let mut counts: Vec<usize> = Vec::new();
        let median = median_time(0, a.repeat, || {
            counts = pool.install(|| {
                texts.par_iter().map(|t| tok.encode_text(t).map(|ids| ids.len())).collect::<Result<_, _>>()
            })?;
            Ok(())
        })?;
        let tokens: usize = counts.iter().sum();
        println!(
            "{}",
            serde_json::json!({
                "bench": "tokenizer_encode", "impl": "tsukuru", "threads": threads, "docs": texts.len(),
                "bytes": bytes, "tokens": tokens, "seconds_median": median,
                "mib_per_s": bytes as f64 / median / (1u64 << 20) as f64,
            })
        );
    }
    Ok(())
}

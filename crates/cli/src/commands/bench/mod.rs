//! `tsukuru bench`: speed measurements printed as JSON lines, for side-by-side runs with peers
//! (benches/). The model benchmarks take the flags of the PyTorch reference script and print its
//! keys, so one script can compare the two line by line.

mod matmul;
mod model;
mod tokenizer;

use anyhow::Result;
use clap::Subcommand;
use std::time::Instant;

/// Bench subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Encoding throughput of a tokenizer on prepared text, one thread and all threads.
    Tokenizer(tokenizer::TokenizerBenchArgs),
    /// Training steps per second of the Llama-style model on random tokens (median of --steps).
    Train(model::ModelBenchArgs),
    /// Greedy decoding with the KV cache on random weights: a prompt, then --new-tokens one by one.
    Generate(model::ModelBenchArgs),
    /// Matrix-product throughput on the benchmark model's shapes (candle and the attention kernel).
    Matmul(matmul::MatmulBenchArgs),
}

/// Runs a bench subcommand.
pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Tokenizer(a) => tokenizer::run(&a),
        BenchCmd::Train(a) => model::train(&a),
        BenchCmd::Generate(a) => model::generate(&a),
        BenchCmd::Matmul(a) => matmul::run(&a),
    }
}

/// Median of `reps` timed calls (at least one) after `warmup` untimed ones, in seconds.
fn median_time(warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

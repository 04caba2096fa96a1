//! `tsukuru bench`: speed measurements printed as JSON lines, for side-by-side runs with peers
//! (benches/). The model benchmarks take the flags of the PyTorch reference script and print its
//! keys, so one script can compare the two line by line.

mod matmul;
mod model;
mod tokenizer;

use anyhow::Result;
use clap::Subcommand;

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

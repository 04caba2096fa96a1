//! `tsukuru`: the one binary. Raw flags become a validated plan here; the work lives in the library crates.

mod commands;
mod progress;
mod signals;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// tsukuru (作る, "to make"): make a language model from a compute budget and raw text.
#[derive(Parser, Debug)]
#[command(name = "tsukuru", version, about, max_term_width = 100)]
struct Cli {
    /// Print no progress (results and errors still go to stdout and stderr).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The built-in synthetic world (entities, facts, corpus with ground truth).
    #[command(subcommand)]
    World(commands::world::WorldCmd),
    /// Prepare raw text (clean, filter, dedup, split) and tokenize it into shards.
    #[command(subcommand)]
    Data(commands::data::DataCmd),
    /// Train a byte-level BPE tokenizer, or inspect one.
    #[command(subcommand)]
    Tokenizer(commands::tokenizer::TokenizerCmd),
    /// Train a base model on token shards (resumable; checkpoints and metrics.jsonl in --out).
    Pretrain(commands::pretrain::PretrainArgs),
    /// Continue a prompt with a trained model (KV cache; temperature, top-k, top-p, seed).
    Generate(commands::generate::GenerateArgs),
    /// Measure speed, for side-by-side comparison with peers (see benches/).
    #[command(subcommand)]
    Bench(commands::bench::BenchCmd),
    /// Run every stage that exists, on the built-in world by default, into runs/NAME.
    Speedrun(commands::speedrun::SpeedrunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = progress::Reporter::detect(cli.quiet);
    let result = match cli.command {
        Command::World(c) => commands::world::run(c, &progress),
        Command::Data(c) => commands::data::run(c, &progress),
        Command::Tokenizer(c) => commands::tokenizer::run(c, &progress),
        Command::Speedrun(a) => commands::speedrun::run(a, &progress),
        Command::Bench(c) => commands::bench::run(c),
        Command::Pretrain(a) => commands::pretrain::run(a, &progress),
        Command::Generate(a) => commands::generate::run(a, cli.quiet),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let interrupted = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<tsukuru_train::TrainError>(),
                    Some(tsukuru_train::TrainError::Interrupted { .. })
                )
            });
            if interrupted {
                ExitCode::from(signals::EXIT_INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

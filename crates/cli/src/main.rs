//! `tsukuru`: the one binary. Raw flags become a validated plan here; the work lives in the library crates.

// The commands' doc comments are their `--help` text, where `[pretrain]` and `cuda[:N]` are literal
// brackets, not links.
#![allow(rustdoc::broken_intra_doc_links)]

mod commands;
mod progress;
mod signals;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// Training allocates and frees tensors of many megabytes every step. glibc's malloc hands such
// blocks back to the kernel on free, so each new one costs page faults and zeroing (a third of a
// training step, measured); mimalloc, told never to purge (see `main`), keeps and reuses them.
// Its version 2 (the `v2` feature) is used: version 3 held 6% more peak memory in training at the
// same speed (measured on the reference model, 6 and 12 layers).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same index in versions 2 and 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

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
    /// Turn a compute budget (GPUs × hours, money or FLOPs) into a model, a token count and a
    /// pretraining config by scaling laws.
    Plan(commands::plan::PlanArgs),
    /// Fit your own scaling law: an isoFLOP grid of small pretraining runs, L(N, D) fitted with
    /// bootstrap intervals, a chart, and a larger held-out run predicted before it is trained.
    Sweep(commands::sweep::SweepArgs),
    /// Train a base model on token shards (resumable; checkpoints and metrics.jsonl in --out).
    Pretrain(commands::pretrain::PretrainArgs),
    /// Instruction-tune a base model on a mixture of conversation sources (world tasks, JSONL).
    Sft(commands::sft::SftArgs),
    /// Align a chat model on preference pairs (DPO or IPO against the frozen starting model).
    Align(commands::align::AlignArgs),
    /// Talk to an instruction-tuned model: multi-turn in the terminal, or one reply with --prompt.
    Chat(commands::chat::ChatArgs),
    /// Evaluate a model on tasks (multiple choice, generation, bits per byte; in- and out-of-domain);
    /// `eval contamination` finds items that occur in training data.
    Eval(commands::eval::EvalArgs),
    /// Compare models two by two on the same prompts (both orders); Bradley–Terry ratings with intervals.
    Arena(commands::arena::ArenaArgs),
    /// Continue a prompt with a trained model (KV cache; temperature, top-k, top-p, seed).
    Generate(commands::generate::GenerateArgs),
    /// Choose a run's checkpoint on validation items by a metric, and write down why.
    Select(commands::select::SelectArgs),
    /// Write a run's report card: report.md with plots (cost, curves, per-stage tables, contamination).
    Report(commands::report::ReportArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (chat, completions, streaming).
    Serve(commands::serve::ServeArgs),
    /// Write a trained model in another format (GGUF for llama.cpp).
    #[command(subcommand)]
    Export(commands::export::ExportCmd),
    /// Measure speed, for side-by-side comparison with peers (see benches/).
    #[command(subcommand)]
    Bench(commands::bench::BenchCmd),
    /// Run every stage that exists, on the built-in world by default, into runs/NAME.
    Speedrun(commands::speedrun::SpeedrunArgs),
}

fn main() -> ExitCode {
    // Freed memory stays with the process for reuse instead of being returned to the kernel a few
    // milliseconds later (each return costs page faults and zeroing on the next use: measured 20%
    // of a training step). Peak memory is unchanged; only the release after a peak is skipped.
    // SAFETY: setting an option is thread-safe in mimalloc and takes plain integers.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // candle splits its own element-wise ops over a second pool of threads that spin between
    // ops; the hot work runs in tsukuru's kernels on rayon's pool, and on a few cores the spinning
    // pool takes cycles from it (measured +4–5% training speed without it, docs/PERF.md). Set
    // CANDLE_NUM_THREADS to give candle's pool threads again.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Single-threaded here: no other thread reads the environment yet.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = Cli::parse();
    // Rust ignores SIGPIPE, so printing into a closed pipe (`tsukuru plan | head`) panics. Every
    // command but the server writes only to the terminal and to files: they get the Unix default,
    // a quiet end. The server keeps the signal ignored: a client that hangs up is an error it handles.
    #[cfg(unix)]
    if !matches!(cli.command, Command::Serve(_)) {
        // SAFETY: no other thread exists yet, and SIG_DFL is a valid disposition for SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let progress = progress::Reporter::detect(cli.quiet);
    let result = match cli.command {
        Command::World(c) => commands::world::run(c, &progress),
        Command::Data(c) => commands::data::run(c, &progress),
        Command::Tokenizer(c) => commands::tokenizer::run(c, &progress),
        Command::Speedrun(a) => commands::speedrun::run(a, &progress),
        Command::Bench(c) => commands::bench::run(c),
        Command::Plan(a) => commands::plan::run(a),
        Command::Sweep(a) => commands::sweep::run(a, &progress),
        Command::Pretrain(a) => commands::pretrain::run(a, &progress),
        Command::Sft(a) => commands::sft::run(a, &progress),
        Command::Align(a) => commands::align::run(a, &progress),
        Command::Eval(a) => commands::eval::run(a, &progress),
        Command::Arena(a) => commands::arena::run(a, &progress),
        Command::Generate(a) => commands::generate::run(a, cli.quiet),
        Command::Chat(a) => commands::chat::run(a),
        Command::Export(c) => commands::export::run(c),
        Command::Report(a) => commands::report::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Select(a) => commands::select::run(a, &progress),
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

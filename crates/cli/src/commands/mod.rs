//! One module per top-level command.

pub mod align;
pub mod arena;
pub mod bench;
pub mod chat;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod plan;
pub mod pretrain;
pub mod report;
pub mod select;
pub mod serve;
pub mod sft;
pub mod speedrun;
pub mod sweep;
pub mod tokenizer;
pub mod world;

/// Prints a stage result line: what was written, or that a complete output was reused.
pub fn report(stage: &str, dir: &std::path::Path, skipped: bool, detail: &str) {
    if skipped {
        println!("{stage}: {} is already complete with these settings; skipped ({detail})", dir.display());
    } else {
        println!("{stage}: wrote {} ({detail})", dir.display());
    }
}

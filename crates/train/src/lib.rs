//! tsukuru-train: one training loop for every objective.
//!
//! [`trainer::Trainer`] runs optimiser steps for any [`trainer::Objective`] (next-token prediction
//! for pretraining and, on packed masked batches, instruction tuning; preference optimisation in
//! [`preference`]) with gradient accumulation, global-norm clipping, a learning-rate
//! [`schedule::Schedule`], [`optim::AdamW`] with parameter groups, and a guard that skips
//! non-finite steps and stops after too many in a row. The jobs around it: [`pretrain`], [`sft`]
//! and [`align`].

pub mod align;
pub mod checkpoint;
pub mod job;
pub mod optim;
pub mod preference;
pub mod pretrain;
pub mod schedule;
pub mod sft;
pub mod trainer;
pub mod tunable;

pub use optim::{AdamW, AdamWConfig};
pub use schedule::Schedule;
pub use trainer::{LoopConfig, NextToken, Objective, Precision, StepReport, Trainer};

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Token shards could not be read.
    #[error(transparent)]
    Tokens(#[from] tsukuru_tokens::TokensError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A setting is out of range.
    #[error("invalid training config: {0}")]
    Config(String),
    /// A checkpoint is missing, corrupt or made for another model.
    #[error("checkpoint {0}")]
    Checkpoint(String),
    /// File system problem.
    #[error(transparent)]
    Core(#[from] tsukuru_core::Error),
    /// A stop was requested (SIGINT/SIGTERM); the state was saved first.
    #[error("interrupted after step {step}; saved checkpoint {}; continue with --resume", checkpoint.display())]
    Interrupted {
        /// The last step taken.
        step: u64,
        /// The checkpoint written on the way out.
        checkpoint: std::path::PathBuf,
    },
    /// Too many non-finite steps in a row.
    #[error(
        "training diverged: {in_a_row} steps in a row up to step {step} had a non-finite loss or gradient \
         (learning rate {lr:.3e}); lower the learning rate, raise warmup, or tighten clipping"
    )]
    Diverged {
        /// The last step taken.
        step: u64,
        /// Consecutive bad steps.
        in_a_row: u32,
        /// Learning rate at that step.
        lr: f64,
    },
}

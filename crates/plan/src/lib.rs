//! tsukuru-plan: phase 0, committing to a budget.
//!
//! [`budget`] turns GPUs × hours, money or a FLOP count into training compute; [`law`] holds the
//! parametric scaling law L(N, D) = E + A/N^α + B/D^β with the published constants and the worth
//! of repeated data; [`planner`] picks a model from the depth preset and a token count under a
//! rule (tokens per parameter, or a law) and the user's limits on unique data and model size, and
//! writes the pretraining config; [`fit`] fits one's own law to a sweep's losses (Chinchilla's
//! Approach 3 with bootstrap intervals); [`sweep`] lays out an isoFLOP grid and reads its results;
//! [`plot`] draws the isoFLOP curves and the fitted frontier.

pub mod budget;
pub mod fit;
pub mod hardware;
pub mod law;
mod lbfgs;
pub mod output;
pub mod planner;
pub mod plot;
pub mod sweep;

pub use budget::Budget;
pub use hardware::{Cluster, ACCELERATORS};
pub use law::{Law, EPOCH, HOFFMANN};
pub use planner::{Plan, PlanRequest, Rule};

use std::path::PathBuf;

/// Errors of planning and fitting; each names the flag, field or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A value given by the user is impossible.
    #[error("{field} = {value}: {reason}")]
    Input {
        /// The flag or config key.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused and what to give instead.
        reason: String,
    },
    /// A file could not be used.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Too few or degenerate points to fit a law.
    #[error("cannot fit a scaling law: {0}")]
    Fit(String),
    /// File system problem.
    #[error(transparent)]
    Core(#[from] tsukuru_core::Error),
}

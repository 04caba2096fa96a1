//! tsukuru-tokens: token shards on disk and the loaders that feed training.
//!
//! [`tokenize`] encodes prepared text shards in parallel into binary token
//! shards ([`format`](mod@format), documented there byte by byte); [`dataset`] maps them
//! back; [`loader`] yields `(B, T)` training windows that always start at a
//! document boundary, in a seeded order, resumable from a small serialisable state. For
//! instruction tuning, [`conversations`] reads users' chat data and [`sft`] mixes rendered
//! conversations from several sources by ratio into packed, masked batches; [`preferences`] reads,
//! renders and batches preference pairs for alignment.

pub mod conversations;
pub mod dataset;
pub mod format;
pub mod loader;
pub mod preferences;
pub mod sft;
pub mod tokenize;

pub use dataset::TokenDataset;
pub use loader::{Batch, Loader, LoaderConfig, LoaderState};

/// Errors of token shards and loaders.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// File system or manifest problem.
    #[error(transparent)]
    Core(#[from] tsukuru_core::Error),
    /// Reading text shards failed.
    #[error(transparent)]
    Data(#[from] tsukuru_data::DataError),
    /// Loading or using the tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] tsukuru_tokenizer::TokError),
    /// A shard is malformed, or settings do not fit the data.
    #[error("{0}")]
    Format(String),
}

/// Result alias for tsukuru-tokens.
pub type Result<T, E = TokensError> = std::result::Result<T, E>;

//! tsukuru-infer: turning a model into text, without HTTP.
//!
//! [`Sampler`] picks the next token from logits (greedy, temperature, top-k, top-p, seeded);
//! [`generate()`] runs prefill and decoding over the model's KV cache; [`TextStream`] turns a
//! growing list of token ids into text pieces that never split a UTF-8 character. [`engine`]
//! serves many requests at once on one thread in batched steps over a paged key–value cache
//! whose blocks and prefix cache [`blocks`] manages, with [`stop`] sequences held back until
//! certain.

pub mod blocks;
pub mod engine;
pub mod generate;
pub mod sampler;
pub mod stop;
pub mod stream;

pub use generate::{generate, FinishReason, Generation};
pub use sampler::{Sampler, SamplingParams};
pub use stream::TextStream;

/// Errors of inference.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A request that cannot be served (bad sampling parameter, prompt too long, …).
    #[error("{0}")]
    Request(String),
    /// Decoding token ids to text failed.
    #[error(transparent)]
    Tokenizer(#[from] tsukuru_tokenizer::TokError),
}

/// Result alias for tsukuru-infer.
pub type Result<T, E = InferError> = std::result::Result<T, E>;

//! tsukuru-eval: how good is a model, measured against baselines and ground truth.
//!
//! For a base model: [`perplexity`] (loss and bits per byte over a whole split, next to a unigram
//! model fitted on the training tokens), [`probe`] (fact completion on the built-in world, facts the
//! corpus states against facts it never states, with chance level), and [`samples`]. The
//! [`base`] stage runs them all into an `eval/` directory with a manifest; [`report`] renders it.
//! For chat models: [`chat_tasks`] asks the world's instruction tasks through the chat template and
//! scores the replies ([`scoring`]) in-domain and out-of-domain, with the hallucination rate.
//! [`contamination`] finds evaluation items whose n-grams occur in the training text; [`loglik`]
//! answers log-likelihood requests and scores multiple choice (`acc`, `acc_norm`); [`items`] reads
//! users' evaluation items (multiple choice, generation, text) from JSONL.

pub mod arena;
pub mod base;
pub mod bradley_terry;
pub mod card;
pub mod chat_tasks;
pub mod contamination;
pub mod harness;
pub mod items;
pub mod loglik;
mod output;
pub mod perplexity;
pub mod plots;
pub mod probe;
pub mod report;
pub mod samples;
pub mod scoring;
pub mod select;
pub mod suite;

/// Errors of evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// File system or manifest problem.
    #[error(transparent)]
    Core(#[from] tsukuru_core::Error),
    /// Text could not be read.
    #[error(transparent)]
    Data(#[from] tsukuru_data::DataError),
    /// Token shards could not be read.
    #[error(transparent)]
    Tokens(#[from] tsukuru_tokens::TokensError),
    /// The world could not be read.
    #[error(transparent)]
    World(#[from] tsukuru_world::Error),
    /// The model could not be loaded.
    #[error(transparent)]
    Load(#[from] tsukuru_model::pretrained::LoadError),
    /// Tokenizer problem.
    #[error(transparent)]
    Tokenizer(#[from] tsukuru_tokenizer::TokError),
    /// Generation failed.
    #[error(transparent)]
    Infer(#[from] tsukuru_infer::InferError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A setting or input that cannot be evaluated.
    #[error("{0}")]
    Config(String),
}

/// Result alias for tsukuru-eval.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

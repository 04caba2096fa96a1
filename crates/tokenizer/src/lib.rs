//! tsukuru-tokenizer: byte-level BPE over Hugging Face `tokenizers`.
//!
//! Text is split GPT-4 style (contractions, words, 1–2 digit numbers,
//! punctuation runs, whitespace), mapped to bytes, and merged by BPE. Every
//! UTF-8 string round-trips exactly because all 256 bytes are in the base
//! alphabet and nothing normalises the text. The output is a standard
//! `tokenizer.json` that Python's `tokenizers` loads and encodes identically.

pub mod chat;
pub mod special;
mod train;

pub use train::{train, TokenizerConfig, ARTIFACT, FORMAT_VERSION};

use std::path::Path;
use tokenizers::Tokenizer;

/// Errors of tokenizer training and use.
#[derive(Debug, thiserror::Error)]
pub enum TokError {
    /// File system or manifest problem.
    #[error(transparent)]
    Core(#[from] tsukuru_core::Error),
    /// Reading the text shards failed.
    #[error(transparent)]
    Data(#[from] tsukuru_data::DataError),
    /// The `tokenizers` library reported an error.
    #[error("{context}: {message}")]
    Library {
        /// What was being done.
        context: String,
        /// The library's message.
        message: String,
    },
    /// A bad setting, or data that cannot support it.
    #[error("{0}")]
    Config(String),
}

/// Result alias for tsukuru-tokenizer.
pub type Result<T, E = TokError> = std::result::Result<T, E>;

pub(crate) fn lib_err(context: &str) -> impl Fn(tokenizers::Error) -> TokError + '_ {
    move |e| TokError::Library { context: context.to_string(), message: e.to_string() }
}

/// A trained tokenizer.
#[derive(Clone)]
pub struct Tok {
    /// Recognises special-token strings (for chat templates written by tsukuru itself).
    inner: Tokenizer,
    /// Treats special-token strings as plain text (for data, which must not inject control tokens).
    plain: Tokenizer,
}

impl Tok {
    /// Loads `dir/tokenizer.json` after checking `dir`'s manifest.
    pub fn load(dir: &Path) -> Result<Self> {
        tsukuru_core::Manifest::expect(dir, ARTIFACT, "train one with `tsukuru tokenizer train`")?;
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// Loads a `tokenizer.json` directly.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| TokError::Library {
            context: format!("loading {}", path.display()),
            message: e.to_string(),
        })?;
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let tok = Self { inner, plain };
        for (id, s) in special::SPECIAL_TOKENS.iter().enumerate() {
            if tok.inner.token_to_id(s) != Some(id as u32) {
                return Err(TokError::Config(format!(
                    "{}: special token {s} is not at id {id}; this is not a tsukuru tokenizer",
                    path.display()
                )));
            }
        }
        Ok(tok)
    }

    /// Token ids of `text` (no BOS added); special-token strings in the text map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(lib_err("encoding"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of untrusted text: a literal `<|bos|>` or `<|user|>` in it is encoded as
    /// ordinary bytes, so data can never inject document boundaries or chat roles.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.plain.encode_fast(text, false).map_err(lib_err("encoding"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included, so that `decode(encode(s)) == s`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(lib_err("decoding"))
    }

    /// The token string of one id (byte-level form), if the id exists.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

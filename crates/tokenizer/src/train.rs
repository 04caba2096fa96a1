//! `tokenizer train`: byte-level BPE trained on prepared text shards.

use crate::special::{MIN_VOCAB, SPECIAL_TOKENS};
use crate::{lib_err, Result, Tok, TokError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, TokenizerBuilder};
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, OutputDir, Prepared, Progress};
use tsukuru_data::prepare::{shards, ARTIFACT as TEXT_ARTIFACT};
use tsukuru_data::shards::SplitReader;

/// Artifact name of a trained tokenizer.
pub const ARTIFACT: &str = "tokenizer";
/// Format version of the tokenizer directory (docs/ARTIFACTS.md).
pub const FORMAT_VERSION: u32 = 1;

/// GPT-4-style split: contractions, letter runs, 1–2 digits, punctuation runs, newlines, spaces.
pub const SPLIT_PATTERN: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// Settings of `tokenizer train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerConfig {
    /// Vocabulary size including the special tokens (default 8192).
    pub vocab_size: usize,
    /// Least count a pair needs to be merged (default 2).
    pub min_frequency: u64,
    /// Most characters of training text read, 0 for all (default 2,000,000,000).
    pub max_chars: u64,
    /// Longest token in characters (default 16): stops merging whole phrases of repeated boilerplate.
    pub max_token_length: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self { vocab_size: 8192, min_frequency: 2, max_chars: 2_000_000_000, max_token_length: 16 }
    }
}

impl TokenizerConfig {
    /// Checks every field, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size < MIN_VOCAB {
            return Err(TokError::Config(format!(
                "vocab_size {} is too small: it must hold {} special tokens and 256 bytes, so at least {MIN_VOCAB}",
                self.vocab_size,
                SPECIAL_TOKENS.len()
            )));
        }
        if self.vocab_size > u32::MAX as usize || self.min_frequency == 0 || self.max_token_length == 0 {
            return Err(TokError::Config("vocab_size must fit u32; min_frequency and max_token_length ≥ 1".into()));
        }
        Ok(())
    }
}

/// An empty tokenizer with tsukuru's pipeline (split → byte level → BPE; byte-level decoder).
type Bpe = tokenizers::TokenizerImpl<
    BPE,
    tokenizers::NormalizerWrapper,
    tokenizers::PreTokenizerWrapper,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

fn pipeline() -> Result<Bpe> {
    let split = Split::new(SplitPattern::Regex(SPLIT_PATTERN.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(lib_err("compiling the split pattern"))?;
    let pre = Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]);
    let built = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(tokenizers::PreTokenizerWrapper::from(pre)))
        .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
        .with_decoder(Some(tokenizers::DecoderWrapper::from(ByteLevelDecoder::default())))
        .build()
        .map_err(lib_err("building the tokenizer"))?;
    Ok(built)
}

/// Streams training texts from the train split, stopping at `max_chars`; records the first error
/// (the trainer's iterator cannot return one) and the bytes actually read.
struct Texts<'a> {
    records: SplitReader,
    chars_left: u64,
    bytes_read: Arc<AtomicU64>,
    error: Arc<Mutex<Option<TokError>>>,
    progress: &'a dyn Progress,
}

impl Iterator for Texts<'_> {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        if self.chars_left == 0 {
            return None;
        }
        match self.records.next()? {
            Ok(r) => {
                self.chars_left = self.chars_left.saturating_sub(r.text.chars().count() as u64);
                self.bytes_read.fetch_add(r.text.len() as u64, Ordering::Relaxed);
                self.progress.advance(r.text.len() as u64);
                Some(r.text)
            }
            Err(e) => {
                *self.error.lock().expect("not poisoned") = Some(e.into());
                None
            }
        }
    }
}

/// Trains a tokenizer on the train split of the text shards in `data` and writes it to `out`.
pub fn train(data: &Path, out: &Path, cfg: &TokenizerConfig, force: bool, progress: &dyn Progress) -> Result<Outcome> {
    cfg.validate()?;
    let text = Manifest::expect(data, TEXT_ARTIFACT, "prepare it with `tsukuru data prepare`")?;
    let params = serde_json::json!({ "config": cfg, "data": text.fingerprint, "split_pattern": SPLIT_PATTERN });
    let mut manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match OutputDir::prepare(out, ARTIFACT, &manifest.fingerprint, force)? {
        Prepared::Done(manifest) => return Ok(Outcome { manifest, skipped: true }),
        Prepared::Fresh(dir) | Prepared::Resume(dir) => dir,
    };
    let train_shards = shards(&text, "train")?;
    let total: u64 = train_shards.iter().map(|s| s.text_bytes).sum();
    progress.phase("tokenizer: counting words", Some(total), Unit::Bytes);
    let mut tokenizer = pipeline()?;
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|s| AddedToken::from(*s, true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .max_token_length(Some(cfg.max_token_length))
        .show_progress(false)
        .build();
    let error = Arc::new(Mutex::new(None));
    let bytes_read = Arc::new(AtomicU64::new(0));
    let texts = Texts {
        records: SplitReader::open(data, "train")?,
        chars_left: if cfg.max_chars == 0 { u64::MAX } else { cfg.max_chars },
        bytes_read: bytes_read.clone(),
        error: error.clone(),
        progress,
    };
    let started = std::time::Instant::now();
    tokenizer.train(&mut trainer, texts).map_err(lib_err("training BPE"))?;
    if let Some(e) = error.lock().expect("not poisoned").take() {
        return Err(e);
    }
    tokenizer.add_special_tokens(&specials);
    let tokenizer: tokenizers::Tokenizer = tokenizer.into();
    let seconds = started.elapsed().as_secs_f64();
    let got = tokenizer.get_vocab_size(true);
    if got < cfg.vocab_size {
        return Err(TokError::Config(format!(
            "the training data supports only {got} tokens (no pair left occurring {} or more times) but vocab_size is {}; \
             lower --vocab-size to at most {got} or add more data",
            cfg.min_frequency, cfg.vocab_size
        )));
    }
    let path = dir.path().join("tokenizer.json");
    let json = tokenizer.to_string(true).map_err(lib_err("serialising tokenizer.json"))?;
    tsukuru_core::atomic::write_atomic(&path, json.as_bytes())?;
    let tok = Tok::from_file(&path)?;
    progress.finish(&format!("trained {got} tokens in {seconds:.1}s"));

    let (split, bytes, tokens, docs) = compression(&tok, data, &text)?;
    manifest.files = vec![FileEntry::of(dir.path(), "tokenizer.json")?];
    manifest.stats = serde_json::json!({
        "vocab_size": got,
        "special_tokens": SPECIAL_TOKENS,
        "train_seconds": seconds,
        "train_text_bytes": bytes_read.load(Ordering::Relaxed),
        "compression_split": split,
        "val_docs": docs,
        "val_bytes": bytes,
        "val_tokens": tokens,
        "val_bytes_per_token": if tokens > 0 { bytes as f64 / tokens as f64 } else { 0.0 },
    });
    dir.finish(&manifest)?;
    Ok(Outcome { manifest, skipped: false })
}

/// Bytes per token on the validation split (or, if it is empty, on the first train documents):
/// the split used, bytes, tokens and documents, over at most 100,000 documents.
fn compression(tok: &Tok, data: &Path, text: &Manifest) -> Result<(&'static str, u64, u64, u64)> {
    let split = if shards(text, "val")?.iter().any(|s| s.docs > 0) { "val" } else { "train" };
    let (mut bytes, mut tokens, mut docs) = (0u64, 0u64, 0u64);
    for record in SplitReader::open(data, split)?.take(100_000) {
        let r = record?;
        bytes += r.text.len() as u64;
        tokens += tok.encode(&r.text)?.len() as u64;
        docs += 1;
    }
    Ok((split, bytes, tokens, docs))
}

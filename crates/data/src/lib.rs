//! tsukuru-data: raw text in, clean deduplicated train/val text shards out.
//!
//! The flow is one pure step per module: [`input`] finds files and streams
//! documents (txt, jsonl, parquet), [`normalize`] cleans text, [`filter`] drops
//! low-quality documents with a reason each, [`dedup`] removes exact and near
//! duplicates ([`minhash`], [`bloom`]) in bounded memory, and [`shards`] writes
//! compressed JSONL. [`prepare()`] runs them in order and writes the manifest last.
//! [`ngrams`] finds word n-grams shared between texts: evaluation items in training data, or
//! training documents that overlap evaluation items (decontamination).

pub mod bloom;
pub mod dedup;
pub mod error;
pub mod filter;
pub mod input;
pub mod minhash;
pub mod ngrams;
pub mod normalize;
pub mod prepare;
pub mod shards;

pub use error::{DataError, Result};
pub use prepare::{prepare, prepare_decontaminated, Decontaminate, PrepareConfig};

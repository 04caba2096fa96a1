//! A split of token shards opened as one sequence of documents.

use crate::format::TokenShard;
use crate::tokenize::{ShardStat, ARTIFACT};
use crate::{Result, TokensError};
use std::path::Path;
use tsukuru_core::Manifest;

/// All shards of one split (`train` or `val`), documents numbered across shards.
#[derive(Debug)]
pub struct TokenDataset {
    shards: Vec<TokenShard>,
    /// First global document number of each shard, plus the total at the end.
    doc_offsets: Vec<u64>,
    bos: u32,
    vocab_size: u32,
    text_bytes: Option<u64>,
}

impl TokenDataset {
    /// Opens the `split` shards listed in `dir`'s manifest.
    pub fn open(dir: &Path, split: &str) -> Result<Self> {
        let manifest = Manifest::expect(dir, ARTIFACT, "make it with `tsukuru data tokenize`")?;
        let list: Vec<ShardStat> = manifest
            .stats
            .get(split)
            .and_then(|s| s.get("shards"))
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| TokensError::Format(format!("{}: bad shard list: {e}", dir.display())))?
            .unwrap_or_default();
        let shards = list.iter().map(|s| TokenShard::open(&dir.join(&s.path))).collect::<Result<Vec<_>>>()?;
        let mut ds = Self::from_shards(shards, &format!("{} ({split})", dir.display()))?;
        ds.text_bytes = manifest.stats.get(split).and_then(|s| s.get("text_bytes")).and_then(|b| b.as_u64());
        Ok(ds)
    }

    /// A dataset over already opened shards, which must agree on vocabulary and BOS.
    pub fn from_shards(shards: Vec<TokenShard>, name: &str) -> Result<Self> {
        let first = shards.first().ok_or_else(|| TokensError::Format(format!("{name}: no token shards")))?;
        let (bos, vocab_size) = (first.bos(), first.vocab_size());
        let mut doc_offsets = vec![0];
        for s in &shards {
            if s.bos() != bos || s.vocab_size() != vocab_size {
                return Err(TokensError::Format(format!(
                    "{}: vocabulary differs from other shards",
                    s.path().display()
                )));
            }
            doc_offsets.push(doc_offsets.last().expect("non-empty") + s.n_docs());
        }
        if doc_offsets.last() == Some(&0) {
            return Err(TokensError::Format(format!("{name}: the shards hold no documents")));
        }
        Ok(Self { shards, doc_offsets, bos, vocab_size, text_bytes: None })
    }

    /// Documents in the split.
    pub fn n_docs(&self) -> u64 {
        *self.doc_offsets.last().expect("non-empty")
    }

    /// Tokens in the split.
    pub fn n_tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.n_tokens()).sum()
    }

    /// UTF-8 bytes of the split's original text, when the manifest records it (for bits per byte).
    pub fn text_bytes(&self) -> Option<u64> {
        self.text_bytes
    }

    /// The BOS id that starts every document.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    fn locate(&self, doc: u64) -> (&TokenShard, u64) {
        let s = self.doc_offsets.partition_point(|o| *o <= doc) - 1;
        (&self.shards[s], doc - self.doc_offsets[s])
    }

    /// Length in tokens of global document `doc` (BOS included).
    ///
    /// # Panics
    /// If `doc >= n_docs()`.
    pub fn doc_len(&self, doc: u64) -> u64 {
        let (shard, local) = self.locate(doc);
        let (a, b) = shard.doc_range(local);
        b - a
    }

    /// Appends the first `max` tokens of document `doc` to `out`.
    ///
    /// # Panics
    /// If `doc >= n_docs()`.
    pub fn read_doc(&self, doc: u64, max: u64, out: &mut Vec<u32>) {
        let (shard, local) = self.locate(doc);
        let (a, b) = shard.doc_range(local);
        shard.read_into(a, b.min(a.saturating_add(max)), out);
    }
}

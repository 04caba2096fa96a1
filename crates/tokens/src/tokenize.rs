//! `data tokenize`: text shards → token shards, encoded in parallel, written in order.

use crate::format::ShardWriter;
use crate::{Result, TokensError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, OutputDir, Prepared, Progress};
use tsukuru_data::prepare::{shards, ARTIFACT as TEXT_ARTIFACT};
use tsukuru_data::shards::SplitReader;
use tsukuru_tokenizer::{special, Tok, ARTIFACT as TOKENIZER_ARTIFACT};

/// Artifact name of token shards.
pub const ARTIFACT: &str = "token-shards";
/// Format version of the token-shards directory (docs/ARTIFACTS.md).
pub const FORMAT_VERSION: u32 = crate::format::VERSION;

/// The tokenizer's file, copied into the token-shards directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// One token shard as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardStat {
    /// Path relative to the output directory.
    pub path: String,
    /// Tokens, BOS markers included.
    pub tokens: u64,
    /// Documents.
    pub docs: u64,
    /// UTF-8 bytes of the documents' text (bits-per-byte needs it).
    pub text_bytes: u64,
}

/// Documents encoded per parallel batch.
const BATCH: usize = 2048;

/// Encodes both splits of `data` with the tokenizer in `tokenizer`, into `out`.
///
/// Shards rotate after `shard_tokens` tokens.
pub fn tokenize(
    data: &Path,
    tokenizer: &Path,
    out: &Path,
    shard_tokens: u64,
    force: bool,
    progress: &dyn Progress,
) -> Result<Outcome> {
    if shard_tokens == 0 {
        return Err(TokensError::Format("shard_tokens must be at least 1".into()));
    }
    let text = Manifest::expect(data, TEXT_ARTIFACT, "prepare it with `tsukuru data prepare`")?;
    let tok_manifest = Manifest::expect(tokenizer, TOKENIZER_ARTIFACT, "train one with `tsukuru tokenizer train`")?;
    let params = serde_json::json!({
        "data": text.fingerprint, "tokenizer": tok_manifest.fingerprint, "shard_tokens": shard_tokens,
    });
    let mut manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match OutputDir::prepare(out, ARTIFACT, &manifest.fingerprint, force)? {
        Prepared::Done(manifest) => return Ok(Outcome { manifest, skipped: true }),
        Prepared::Fresh(dir) | Prepared::Resume(dir) => dir,
    };
    let tok = Tok::load(tokenizer)?;
    // The ids mean nothing without their tokenizer: keep a copy beside them, so that training and
    // every later stage can decode without knowing where the tokenizer was trained.
    let tok_src = tokenizer.join("tokenizer.json");
    let tok_copy = dir.path().join(TOKENIZER_FILE);
    std::fs::copy(&tok_src, &tok_copy).map_err(|e| tsukuru_core::Error::io("copying", &tok_src, e))?;
    let mut stats = serde_json::Map::new();
    let total: u64 = ["train", "val"]
        .iter()
        .map(|s| shards(&text, s).map(|v| v.iter().map(|x| x.text_bytes).sum::<u64>()))
        .sum::<Result<u64, _>>()?;
    progress.phase("tokenize", Some(total), Unit::Bytes);
    let started = std::time::Instant::now();
    let mut all_files = vec![TOKENIZER_FILE.to_string()];
    for split in ["train", "val"] {
        let list = encode_split(data, split, &tok, dir.path(), shard_tokens, progress)?;
        let tokens: u64 = list.iter().map(|s| s.tokens).sum();
        let docs: u64 = list.iter().map(|s| s.docs).sum();
        let text_bytes: u64 = list.iter().map(|s| s.text_bytes).sum();
        all_files.extend(list.iter().map(|s| s.path.clone()));
        stats.insert(
            split.into(),
            serde_json::json!({ "tokens": tokens, "docs": docs, "text_bytes": text_bytes, "shards": list }),
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let train_tokens = stats["train"]["tokens"].as_u64().unwrap_or(0);
    if train_tokens == 0 {
        return Err(TokensError::Format(format!("{}: the train split holds no documents", data.display())));
    }
    stats.insert("vocab_size".into(), tok.vocab_size().into());
    stats.insert("bos".into(), special::BOS.into());
    stats.insert("token_bytes".into(), crate::format::width_for(tok.vocab_size()).into());
    stats.insert("seconds".into(), seconds.into());
    progress.finish(&format!("{train_tokens} train tokens in {seconds:.1}s"));
    manifest.files = all_files.iter().map(|f| FileEntry::of(dir.path(), f)).collect::<Result<_, _>>()?;
    manifest.stats = serde_json::Value::Object(stats);
    dir.finish(&manifest)?;
    Ok(Outcome { manifest, skipped: false })
}

fn encode_split(
    data: &Path,
    split: &str,
    tok: &Tok,
    out: &Path,
    shard_tokens: u64,
    progress: &dyn Progress,
) -> Result<Vec<ShardStat>> {
    let split_dir = out.join(split);
    std::fs::create_dir_all(&split_dir).map_err(|e| tsukuru_core::Error::io("creating", &split_dir, e))?;
    let mut done = Vec::new();
    let mut writer: Option<(ShardWriter, String, u64)> = None;
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    let flush = |batch: &mut Vec<String>,
                 writer: &mut Option<(ShardWriter, String, u64)>,
                 done: &mut Vec<ShardStat>|
     -> Result<()> {
        let encoded: Vec<(Vec<u32>, u64)> =
            batch.par_iter().map(|t| tok.encode_text(t).map(|ids| (ids, t.len() as u64))).collect::<Result<_, _>>()?;
        progress.advance(batch.iter().map(|t| t.len() as u64).sum());
        batch.clear();
        for (ids, bytes) in encoded {
            if writer.is_none() {
                let rel = format!("{split}/{:05}.bin", done.len());
                *writer = Some((ShardWriter::create(&out.join(&rel), tok.vocab_size(), special::BOS)?, rel, 0));
            }
            let (w, _, text_bytes) = writer.as_mut().expect("opened above");
            w.push(&ids)?;
            *text_bytes += bytes;
            if w.tokens() >= shard_tokens {
                let (w, rel, text_bytes) = writer.take().expect("open");
                let (tokens, docs) = w.finish()?;
                done.push(ShardStat { path: rel, tokens, docs, text_bytes });
            }
        }
        Ok(())
    };
    for record in SplitReader::open(data, split)? {
        batch.push(record?.text);
        if batch.len() >= BATCH {
            flush(&mut batch, &mut writer, &mut done)?;
        }
    }
    flush(&mut batch, &mut writer, &mut done)?;
    if let Some((w, rel, text_bytes)) = writer.take() {
        let (tokens, docs) = w.finish()?;
        done.push(ShardStat { path: rel, tokens, docs, text_bytes });
    }
    Ok(done)
}

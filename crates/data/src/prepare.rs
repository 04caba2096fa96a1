//! `data prepare`: inputs → normalise → filter → dedup → train/val text shards + manifest.
//!
//! Documents stream through in batches: normalisation, filters and dedup keys
//! are computed for a batch in parallel, then decisions are taken in input order
//! (first copy wins), so the output is identical for any number of threads.
//! The train/val split hashes the normalised text with the seed: it does not
//! depend on order, and two copies of a text can never land on both sides.
//! With evaluation items given ([`prepare_decontaminated`]), documents sharing an n-gram with
//! any of them are dropped too, so a benchmark cannot leak into training.

use crate::dedup::{Dedup, DedupConfig};
use crate::error::{DataError, Result};
use crate::filter::{FilterConfig, Reason};
use crate::input::{discover, read_docs, Content, ReadOptions, TxtSplit};
use crate::ngrams::NgramIndex;
use crate::normalize::normalize;
use crate::shards::{Record, ShardInfo, ShardWriter};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, OutputDir, Prepared, Progress};

/// Artifact name of prepared text.
pub const ARTIFACT: &str = "text-shards";
/// On-disk format version of text shards (docs/ARTIFACTS.md).
pub const FORMAT_VERSION: u32 = 1;

/// Settings of `data prepare` (its TOML config; every field has a default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrepareConfig {
    /// JSONL field / parquet column with the text (default `text`).
    pub text_field: String,
    /// How `.txt` files are cut into documents (default `file`).
    pub txt_split: TxtSplit,
    /// Share of documents for the validation split (default 0.01).
    pub val_fraction: f64,
    /// Seed of the split and of the MinHash permutations (default 0).
    pub seed: u64,
    /// Uncompressed text per shard before rotating, in MiB (default 256).
    pub shard_mib: u64,
    /// Skip documents with invalid UTF-8 instead of failing (default false).
    pub skip_invalid: bool,
    /// Quality filters.
    pub filters: FilterConfig,
    /// Exact and near dedup.
    pub dedup: DedupConfig,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        Self {
            text_field: "text".into(),
            txt_split: TxtSplit::File,
            val_fraction: 0.01,
            seed: 0,
            shard_mib: 256,
            skip_invalid: false,
            filters: FilterConfig::default(),
            dedup: DedupConfig::default(),
        }
    }
}

impl PrepareConfig {
    /// Checks every field, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(DataError::Config(format!("val_fraction must be within [0, 1), got {}", self.val_fraction)));
        }
        if self.text_field.is_empty() || !(1..=1 << 20).contains(&self.shard_mib) {
            return Err(DataError::Config("text_field must be non-empty and shard_mib within 1..=1048576".into()));
        }
        self.filters.validate().map_err(DataError::Config)?;
        self.dedup.validate().map_err(DataError::Config)
    }
}

/// Documents kept and dropped, overall and per input.
#[derive(Debug, Default, Serialize)]
struct Counts {
    docs_read: u64,
    train_docs: u64,
    val_docs: u64,
    train_bytes: u64,
    val_bytes: u64,
    dropped: BTreeMap<&'static str, u64>,
    per_input: Vec<InputCounts>,
}

#[derive(Debug, Default, Serialize)]
struct InputCounts {
    read: u64,
    kept: u64,
}

/// Training documents to drop because they share an n-gram with evaluation items.
#[derive(Debug, Clone)]
pub struct Decontaminate {
    /// Every n-gram of the items.
    pub index: NgramIndex,
    /// Identifies the items and n (part of the output's fingerprint).
    pub fingerprint: String,
}

/// Runs the whole preparation into `out`. See the module header.
pub fn prepare(
    inputs: &[PathBuf],
    out: &Path,
    cfg: &PrepareConfig,
    force: bool,
    progress: &dyn Progress,
) -> Result<Outcome> {
    prepare_decontaminated(inputs, out, cfg, None, force, progress)
}

/// [`prepare`], also dropping every document that shares an n-gram with `decontaminate`'s items
/// (counted as `contaminated`).
pub fn prepare_decontaminated(
    inputs: &[PathBuf],
    out: &Path,
    cfg: &PrepareConfig,
    decontaminate: Option<&Decontaminate>,
    force: bool,
    progress: &dyn Progress,
) -> Result<Outcome> {
    cfg.validate()?;
    let files = discover(inputs)?;
    let mut params = serde_json::json!({
        "config": cfg,
        "inputs": files.iter().map(|f| serde_json::json!({
            "path": f.path.display().to_string(), "format": f.format, "bytes": f.bytes, "modified_ns": f.modified_ns.to_string(),
        })).collect::<Vec<_>>(),
    });
    if let Some(d) = decontaminate {
        // Only when given, so that earlier outputs keep their fingerprints.
        params["decontaminate"] = d.fingerprint.clone().into();
    }
    let mut manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match OutputDir::prepare(out, ARTIFACT, &manifest.fingerprint, force)? {
        Prepared::Done(manifest) => return Ok(Outcome { manifest, skipped: true }),
        Prepared::Fresh(dir) | Prepared::Resume(dir) => dir,
    };

    let total: u64 = files.iter().map(|f| f.bytes).sum();
    progress.phase("prepare", Some(total), Unit::Bytes);
    let mut state = State {
        cfg,
        decontaminate: decontaminate.map(|d| &d.index),
        dedup: Dedup::new(&cfg.dedup, cfg.seed, total),
        train: ShardWriter::new(dir.path(), "train", cfg.shard_mib << 20),
        val: ShardWriter::new(dir.path(), "val", cfg.shard_mib << 20),
        counts: Counts {
            per_input: files.iter().map(|_| InputCounts::default()).collect(),
            // Every reason is listed, zeros included, so a manifest always shows each filter's count.
            dropped: Reason::ALL.iter().map(|r| (r.name(), 0)).collect(),
            ..Default::default()
        },
        batch: Vec::new(),
        batch_bytes: 0,
    };
    let opts = ReadOptions {
        text_field: cfg.text_field.clone(),
        txt_split: cfg.txt_split,
        skip_invalid: cfg.skip_invalid,
        max_doc_bytes: (cfg.filters.max_chars as u64).saturating_mul(4),
    };
    for (source, file) in files.iter().enumerate() {
        read_docs(file, &opts, &mut |content, consumed| {
            progress.advance(consumed);
            state.push(source as u32, content)
        })?;
        state.flush()?;
    }
    let State { dedup, train, val, counts, .. } = state;
    let (train, val) = (train.finish()?, val.finish()?);
    let kept = counts.train_docs + counts.val_docs;
    if kept == 0 {
        return Err(DataError::EmptyInput(format!(
            "all {} documents were dropped ({}); check --text-field and the [filters] thresholds",
            counts.docs_read,
            drop_summary(&counts.dropped)
        )));
    }
    progress.finish(&format!(
        "kept {kept} of {} documents ({} train, {} val); dropped: {}",
        counts.docs_read,
        counts.train_docs,
        counts.val_docs,
        drop_summary(&counts.dropped)
    ));
    manifest.files = train.iter().chain(&val).map(|s| FileEntry::of(dir.path(), &s.path)).collect::<Result<_, _>>()?;
    manifest.stats = serde_json::json!({
        "counts": counts,
        "dedup": dedup.report(),
        "shards": { "train": train, "val": val },
    });
    dir.finish(&manifest)?;
    Ok(Outcome { manifest, skipped: false })
}

/// Non-zero drop counts as `reason n, …`, or `none`.
pub fn drop_summary(dropped: &BTreeMap<&'static str, u64>) -> String {
    let nonzero: Vec<String> = dropped.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect();
    if nonzero.is_empty() {
        "none".into()
    } else {
        nonzero.join(", ")
    }
}

/// Streaming state: the batch being filled and everything decided so far.
struct State<'a> {
    cfg: &'a PrepareConfig,
    decontaminate: Option<&'a NgramIndex>,
    dedup: Dedup,
    train: ShardWriter,
    val: ShardWriter,
    counts: Counts,
    batch: Vec<(u32, Content)>,
    batch_bytes: usize,
}

/// A document after the parallel step: normalised text, dedup keys and split, or why it was dropped.
type Verdict = std::result::Result<(String, crate::dedup::DocKeys, bool), Reason>;

/// Documents per parallel batch and bytes per batch: enough work per thread, bounded memory.
const BATCH_DOCS: usize = 4096;
const BATCH_BYTES: usize = 32 << 20;

impl State<'_> {
    fn push(&mut self, source: u32, content: Content) -> Result<()> {
        if let Content::Text(t) = &content {
            self.batch_bytes += t.len();
        }
        self.batch.push((source, content));
        if self.batch.len() >= BATCH_DOCS || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn drop_doc(&mut self, reason: Reason) {
        *self.counts.dropped.entry(reason.name()).or_default() += 1;
    }

    fn flush(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let (cfg, dedup, decontaminate) = (self.cfg, &self.dedup, self.decontaminate);
        let processed: Vec<(u32, Verdict)> = batch
            .into_par_iter()
            .map(|(source, content)| {
                let text = match content {
                    Content::Text(t) => normalize(&t),
                    Content::Null => return (source, Err(Reason::Null)),
                    Content::InvalidUtf8 => return (source, Err(Reason::InvalidUtf8)),
                    Content::TooLong => return (source, Err(Reason::TooLong)),
                };
                if let Some(reason) = cfg.filters.check(&text) {
                    return (source, Err(reason));
                }
                if decontaminate.is_some_and(|index| index.overlaps(&text)) {
                    return (source, Err(Reason::Contaminated));
                }
                let keys = dedup.keys(&text);
                let val = is_val(&text, cfg.seed, cfg.val_fraction);
                (source, Ok((text, keys, val)))
            })
            .collect();
        for (source, result) in processed {
            self.counts.docs_read += 1;
            self.counts.per_input[source as usize].read += 1;
            let (text, keys, val) = match result {
                Ok(ok) => ok,
                Err(reason) => {
                    self.drop_doc(reason);
                    continue;
                }
            };
            if let Some(reason) = self.dedup.check(&keys) {
                self.drop_doc(reason);
                continue;
            }
            self.counts.per_input[source as usize].kept += 1;
            let bytes = text.len() as u64;
            let record = Record { text, source };
            if val {
                self.counts.val_docs += 1;
                self.counts.val_bytes += bytes;
                self.val.write(&record)?;
            } else {
                self.counts.train_docs += 1;
                self.counts.train_bytes += bytes;
                self.train.write(&record)?;
            }
        }
        Ok(())
    }
}

/// Whether a normalised text belongs to the validation split (a pure function of text and seed).
pub fn is_val(text: &str, seed: u64, fraction: f64) -> bool {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), seed ^ 0x0073_706c_6974);
    (h as f64 / u64::MAX as f64) < fraction
}

/// Shards listed in a text-shards manifest, for one split.
pub fn shards(manifest: &Manifest, split: &str) -> Result<Vec<ShardInfo>> {
    let v = manifest.stats.get("shards").and_then(|s| s.get(split)).cloned().unwrap_or_default();
    serde_json::from_value(v).map_err(|e| DataError::Config(format!("manifest lists no valid {split} shards: {e}")))
}

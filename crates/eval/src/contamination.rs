//! Contamination of an evaluation suite: which items' text occurs in the training data.
//!
//! The training data streams through once into an n-gram index
//! ([`tsukuru_data::ngrams::NgramIndex`], a Bloom filter sized from the data's size within a
//! memory cap); then every item's whole text (question and answer, [`Item::full_text`]) is looked
//! up. An item is contaminated when any of its n-grams occurs in training, clean when none does,
//! and unchecked when it has fewer than n words. The filter's false-positive rate is reported:
//! it is the chance that a clean item's single n-gram is wrongly found, so an item with k n-grams
//! is wrongly marked with probability at most k times it.
//!
//! Training data is read from prepared text (`tsukuru data prepare`: its train split), token
//! shards (`tsukuru data tokenize`: its train split, decoded with the tokenizer stored beside
//! it), or raw input files (txt, jsonl, parquet, read as `data prepare` reads them).

use crate::items::Item;
use crate::suite::Suite;
use crate::{EvalError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Progress};
use tsukuru_data::ngrams::{normalised_words, NgramIndex};

/// An item's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// None of its n-grams occurs in training.
    Clean,
    /// Some of its n-grams occur in training.
    Contaminated,
    /// Shorter than n words: cannot be checked this way.
    Unchecked,
}

/// One item checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCheck {
    /// Its task.
    pub task: String,
    /// Its id.
    pub id: String,
    /// Clean, contaminated or unchecked.
    pub verdict: Verdict,
    /// Its n-grams found in training.
    pub matched: usize,
    /// Its n-grams in all.
    pub ngrams: usize,
    /// The overlapping passages (normalised words).
    pub spans: Vec<String>,
}

/// A whole check (`tsukuru eval contamination`'s output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContaminationReport {
    /// N-gram length in words.
    pub n: usize,
    /// The training data, as given.
    pub train: String,
    /// Training documents read.
    pub documents: u64,
    /// Training n-grams added (with repeats).
    pub ngrams_added: u64,
    /// Bytes of the filter.
    pub filter_bytes: usize,
    /// Chance that one n-gram never trained on is reported present.
    pub false_positive_rate: f64,
    /// Every test item of the suite.
    pub items: Vec<ItemCheck>,
}

impl ContaminationReport {
    /// The verdict on `(task, id)`, if it was checked.
    pub fn verdict(&self, task: &str, id: &str) -> Option<Verdict> {
        self.items.iter().find(|c| c.task == task && c.id == id).map(|c| c.verdict)
    }

    /// Reads a report written by `tsukuru eval contamination`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EvalError::Config(format!("cannot read the contamination report {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            EvalError::Config(format!(
                "{} is not a contamination report ({e}); make it with `tsukuru eval contamination`",
                path.display()
            ))
        })
    }

    /// (checked, contaminated, unchecked) counts of `task`, or of all tasks.
    pub fn counts(&self, task: Option<&str>) -> (usize, usize, usize) {
        let of = |v: Verdict| self.items.iter().filter(|c| task.is_none_or(|t| c.task == t) && c.verdict == v).count();
        let (clean, dirty) = (of(Verdict::Clean), of(Verdict::Contaminated));
        (clean + dirty, dirty, of(Verdict::Unchecked))
    }
}

/// What `tsukuru data prepare --decontaminate` drops: every document sharing an `n`-gram with any
/// item of `suite` (test items and few-shot examples alike: both are shown to the model).
pub fn decontamination(suite: &Suite, n: usize) -> Result<tsukuru_data::Decontaminate> {
    if n == 0 {
        return Err(EvalError::Config("the n-gram length must be at least 1".into()));
    }
    let items = || suite.tasks.iter().flat_map(|t| t.items.iter().chain(&t.fewshot));
    let words: usize = items().map(|i| normalised_words(&i.full_text()).len()).sum();
    // Items are few, so the filter can be generous: sized for four times their n-grams, a
    // training n-gram is wrongly found with a chance near 3e-8.
    let mut index = NgramIndex::sized_for(n, words as u64 * 4, 256 << 20);
    items().for_each(|i| index.add_text(&i.full_text()));
    Ok(tsukuru_data::Decontaminate { index, fingerprint: format!("{}/{n}", suite.fingerprint()) })
}

/// Checks every test item of `suite` against `index`.
pub fn check_suite(index: &NgramIndex, suite: &Suite) -> Vec<ItemCheck> {
    suite.tasks.iter().flat_map(|t| t.items.iter().map(move |item| check_item(index, &t.name, item))).collect()
}

fn check_item(index: &NgramIndex, task: &str, item: &Item) -> ItemCheck {
    let text = item.full_text();
    let overlap = index.check(&text);
    let words = normalised_words(&text);
    let verdict = match (overlap.checkable(), overlap.contaminated()) {
        (false, _) => Verdict::Unchecked,
        (true, true) => Verdict::Contaminated,
        (true, false) => Verdict::Clean,
    };
    ItemCheck {
        task: task.to_string(),
        id: item.id().to_string(),
        verdict,
        matched: overlap.matched,
        ngrams: overlap.ngrams,
        spans: overlap.spans.iter().map(|r| words[r.clone()].join(" ")).collect(),
    }
}

/// Streams the training data at `train` into an n-gram index of at most `max_bytes`; returns it
/// with the number of documents read.
pub fn index_training(train: &Path, n: usize, max_bytes: usize, progress: &dyn Progress) -> Result<(NgramIndex, u64)> {
    // About one n-gram per word, and about five bytes per word of English-like text.
    let expect = |bytes: u64| bytes / 5;
    let artifact = Manifest::read(train).ok().map(|m| m.artifact);
    let mut docs = 0u64;
    let index = match artifact.as_deref() {
        Some(tsukuru_data::prepare::ARTIFACT) => {
            let manifest = Manifest::read(train)?;
            let bytes = manifest.stats["counts"]["train_bytes"].as_u64().unwrap_or(1 << 30);
            let mut index = NgramIndex::sized_for(n, expect(bytes), max_bytes);
            progress.phase("index training text", Some(bytes), Unit::Bytes);
            for record in tsukuru_data::shards::SplitReader::open(train, "train")? {
                let record = record?;
                index.add_text(&record.text);
                progress.advance(record.text.len() as u64);
                docs += 1;
            }
            index
        }
        Some(tsukuru_tokens::tokenize::ARTIFACT) => {
            let data = tsukuru_tokens::TokenDataset::open(train, "train")?;
            let tok = tsukuru_tokenizer::Tok::from_file(&train.join("tokenizer.json"))?;
            let bytes = data.text_bytes().unwrap_or(data.n_tokens() * 4);
            let mut index = NgramIndex::sized_for(n, expect(bytes), max_bytes);
            progress.phase("index training tokens", Some(data.n_docs()), Unit::Items);
            let mut ids = Vec::new();
            for d in 0..data.n_docs() {
                ids.clear();
                data.read_doc(d, u64::MAX, &mut ids);
                let body: Vec<u32> = ids.iter().copied().filter(|&t| t != data.bos()).collect();
                index.add_text(&tok.decode(&body)?);
                progress.advance(1);
                docs += 1;
            }
            index
        }
        Some(other) => {
            return Err(EvalError::Config(format!(
                "{} holds a `{other}` output; give prepared text, token shards or raw files as --train",
                train.display()
            )))
        }
        None => {
            let files = tsukuru_data::input::discover(&[train.to_path_buf()])?;
            let bytes: u64 = files.iter().map(|f| f.bytes).sum();
            let mut index = NgramIndex::sized_for(n, expect(bytes), max_bytes);
            let defaults = tsukuru_data::PrepareConfig::default();
            let opts = tsukuru_data::input::ReadOptions {
                text_field: defaults.text_field,
                txt_split: defaults.txt_split,
                skip_invalid: true,
                max_doc_bytes: u64::MAX,
            };
            progress.phase("index training files", Some(bytes), Unit::Bytes);
            for file in &files {
                tsukuru_data::input::read_docs(file, &opts, &mut |content, consumed| {
                    if let tsukuru_data::input::Content::Text(text) = content {
                        index.add_text(&text);
                        docs += 1;
                    }
                    progress.advance(consumed);
                    Ok(())
                })?;
            }
            index
        }
    };
    Ok((index, docs))
}

/// Checks `suite` against the training data at `train` with `n`-grams.
pub fn check(
    train: &Path,
    suite: &Suite,
    n: usize,
    max_bytes: usize,
    progress: &dyn Progress,
) -> Result<ContaminationReport> {
    if n == 0 {
        return Err(EvalError::Config("--n must be at least 1".into()));
    }
    let (index, documents) = index_training(train, n, max_bytes, progress)?;
    let items = check_suite(&index, suite);
    let dirty = items.iter().filter(|c| c.verdict == Verdict::Contaminated).count();
    progress.finish(&format!("{documents} training documents; {dirty} of {} items contaminated", items.len()));
    Ok(ContaminationReport {
        n,
        train: train.display().to_string(),
        documents,
        ngrams_added: index.added(),
        filter_bytes: index.bytes(),
        false_positive_rate: index.false_positive_rate(),
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::Domain;

    fn text(id: &str, body: &str) -> Item {
        Item::Text { id: id.into(), task: Some("t".into()), text: body.into(), domain: Domain::In }
    }

    #[test]
    fn leaked_items_are_found_in_raw_training_files_with_their_spans() {
        let dir = tempfile::tempdir().unwrap();
        let leaked = "the quick brown fox jumps over the lazy dog near the old mill by the river";
        let train = format!("{{\"text\": \"Intro words here. {leaked}. More words.\"}}\n{{\"text\": \"other\"}}\n");
        std::fs::write(dir.path().join("train.jsonl"), train).unwrap();
        let suite = Suite::from_items(vec![
            text("leak", &format!("Question: {}?", leaked.to_uppercase())),
            text("clean", "a sentence of fourteen words that never appears in the training data at all"),
            text("short", "too short"),
        ])
        .unwrap();
        let report = check(dir.path(), &suite, 13, 1 << 20, &tsukuru_core::progress::NoProgress).unwrap();
        assert_eq!(report.documents, 2);
        let by_id = |id: &str| report.items.iter().find(|c| c.id == id).unwrap();
        assert_eq!(by_id("leak").verdict, Verdict::Contaminated);
        assert_eq!(by_id("leak").spans, vec![leaked.to_string()]);
        assert_eq!(by_id("clean").verdict, Verdict::Clean);
        assert_eq!(by_id("short").verdict, Verdict::Unchecked);
        assert_eq!(report.counts(None), (2, 1, 1));
        assert_eq!(report.verdict("t", "leak"), Some(Verdict::Contaminated));
        assert!(report.false_positive_rate < 1e-6);
    }
}

//! Word n-gram overlap between texts: whether evaluation items leaked into training data (13-grams,
//! as in GPT-3's and lm-evaluation-harness's decontamination), or which training documents
//! overlap evaluation items (`data prepare --decontaminate`).
//!
//! One side's text streams through once; each of its n-grams is hashed (XXH3 of the normalised
//! words) into a Bloom filter of fixed size, so memory stays bounded however much text there is.
//! The price is false positives: an n-gram never trained on is reported present with the filter's
//! rate ([`NgramIndex::false_positive_rate`]), which is reported beside the verdicts. An item is
//! contaminated when any of its n-grams is found; the words those n-grams cover are returned as
//! spans, so a report can show what overlapped. Normalisation: lower case, words are runs of
//! letters and digits (punctuation and spacing never hide an overlap). Items shorter than `n`
//! words cannot be checked this way and say so.

use crate::bloom::Bloom;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Probes per n-gram in the filter.
const PROBES: u32 = 7;

/// Filter bits per expected n-gram in [`NgramIndex::sized_for`]: with 7 probes, a false-positive
/// rate of about 2e-4 when the expected count is reached.
const BITS_PER_NGRAM: usize = 20;

/// Lower-cased words (runs of letters and digits) of `text`: what n-gram overlap, containment and
/// ROUGE compare, so that case, punctuation and spacing never hide a match.
pub fn normalised_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// The training side: every n-gram of the text added so far.
#[derive(Debug, Clone)]
pub struct NgramIndex {
    n: usize,
    bloom: Bloom,
}

/// What an item shares with the training text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlap {
    /// The item's words (after normalisation).
    pub words: usize,
    /// Its n-grams found in the training text.
    pub matched: usize,
    /// Its n-grams in all (0 when it is shorter than n words: it cannot be checked).
    pub ngrams: usize,
    /// Runs of the item's words covered by found n-grams, as word ranges.
    pub spans: Vec<Range<usize>>,
}

impl Overlap {
    /// True when any n-gram of the item was found in the training text.
    pub fn contaminated(&self) -> bool {
        self.matched > 0
    }

    /// False when the item is shorter than n words.
    pub fn checkable(&self) -> bool {
        self.ngrams > 0
    }
}

fn hash(words: &[String]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for w in words {
        h.update(w.as_bytes());
        h.update(&[0x1f]);
    }
    h.digest()
}

impl NgramIndex {
    /// An empty index of `n`-grams in a filter of `bytes` bytes.
    pub fn new(n: usize, bytes: usize) -> Self {
        Self { n: n.max(1), bloom: Bloom::new(bytes, PROBES) }
    }

    /// An empty index sized for about `expected` n-grams, within `max_bytes` (at least 64 KiB).
    pub fn sized_for(n: usize, expected: u64, max_bytes: usize) -> Self {
        let bytes = (expected as usize).saturating_mul(BITS_PER_NGRAM) / 8;
        Self::new(n, bytes.clamp(1 << 16, max_bytes.max(1 << 16)))
    }

    /// Bytes the filter holds.
    pub fn bytes(&self) -> usize {
        self.bloom.bytes()
    }

    /// The n-gram length.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Adds every n-gram of `text` (a document: n-grams never span two documents).
    pub fn add_text(&mut self, text: &str) {
        let words = normalised_words(text);
        for gram in words.windows(self.n) {
            self.bloom.insert(hash(gram));
        }
    }

    /// N-grams added so far (with repeats).
    pub fn added(&self) -> u64 {
        self.bloom.inserted()
    }

    /// The chance that an n-gram never added is reported present, at the current fill.
    pub fn false_positive_rate(&self) -> f64 {
        self.bloom.false_positive_rate()
    }

    /// Whether any n-gram of `text` was added (stops at the first).
    pub fn overlaps(&self, text: &str) -> bool {
        normalised_words(text).windows(self.n).any(|gram| self.bloom.contains(hash(gram)))
    }

    /// What `item` shares with the text added so far.
    pub fn check(&self, item: &str) -> Overlap {
        let words = normalised_words(item);
        let mut spans: Vec<Range<usize>> = Vec::new();
        let mut matched = 0;
        for (i, gram) in words.windows(self.n).enumerate() {
            if !self.bloom.contains(hash(gram)) {
                continue;
            }
            matched += 1;
            match spans.last_mut() {
                Some(last) if last.end >= i => last.end = i + self.n,
                _ => spans.push(i..i + self.n),
            }
        }
        Overlap { words: words.len(), matched, ngrams: words.len().saturating_sub(self.n - 1), spans }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_are_found_with_their_spans_and_clean_items_stay_clean() {
        let mut index = NgramIndex::new(5, 1 << 16);
        index.add_text("The capital of Ostavia is Kelm, a city of bridges. Its people speak Ostavish.");
        index.add_text("Unrelated text about tractors and kettles in a second document here.");
        // Case and punctuation do not hide the overlap; the span covers the shared words.
        let leaked = index.check("Question: THE capital of ostavia is -- kelm? Answer please");
        assert!(leaked.contaminated() && leaked.checkable());
        assert_eq!(leaked.spans, vec![1..7]);
        assert_eq!((leaked.words, leaked.ngrams, leaked.matched), (9, 5, 2));
        let clean = index.check("What is the largest city of a country that does not exist at all?");
        assert!(!clean.contaminated() && clean.spans.is_empty());
        let short = index.check("Kelm is big");
        assert!(!short.checkable() && !short.contaminated());
        assert!(index.false_positive_rate() < 1e-6, "{}", index.false_positive_rate());
    }

    #[test]
    fn ngrams_never_span_two_documents() {
        let mut index = NgramIndex::new(3, 1 << 12);
        index.add_text("a b c d e");
        index.add_text("f g h i j");
        assert!(index.check("c d e").contaminated());
        assert!(!index.check("d e f").contaminated() && !index.check("e f g").contaminated());
    }

    #[test]
    fn the_false_positive_rate_follows_the_fill() {
        let mut small = NgramIndex::new(3, 64);
        for i in 0..200 {
            small.add_text(&format!("word{i} other{i} more{i} tail{i}"));
        }
        let rate = small.false_positive_rate();
        assert!(rate > 0.5, "a 64-byte filter holding 400 trigrams is nearly full: {rate}");
        let hits = (0..200).filter(|i| small.check(&format!("never{i} seen{i} before{i}")).contaminated()).count();
        let observed = hits as f64 / 200.0;
        assert!((observed - rate).abs() < 0.2, "observed {observed} vs predicted {rate}");
    }
}

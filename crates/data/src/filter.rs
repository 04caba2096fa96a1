//! Quality filters: each returns why a document fails, or nothing if it passes.
//!
//! Thresholds follow the spirit of Gopher's rules (Rae et al., 2021): length
//! bounds, the share of duplicated lines, the share of characters inside
//! repeated word n-grams (boilerplate and spam), and the share of characters
//! that are not text (markup, binary debris).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Why a document was dropped. Each reason has its own count in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The text field was null or missing its value.
    Null,
    /// Bytes that are not UTF-8 (only counted with `--skip-invalid`).
    InvalidUtf8,
    /// Empty after normalisation.
    Empty,
    /// Fewer characters than `min_chars`.
    TooShort,
    /// More characters than `max_chars`.
    TooLong,
    /// Too many duplicated lines.
    RepeatedLines,
    /// Too many characters inside repeated n-grams.
    RepeatedNgrams,
    /// Too many characters that are not text.
    NonText,
    /// Exact duplicate of an earlier document.
    ExactDuplicate,
    /// Near duplicate of an earlier document (MinHash LSH).
    NearDuplicate,
    /// Shares an n-gram with an evaluation item (`--decontaminate`).
    Contaminated,
}

impl Reason {
    /// Every reason, in report order.
    pub const ALL: [Reason; 11] = [
        Reason::Null,
        Reason::InvalidUtf8,
        Reason::Empty,
        Reason::TooShort,
        Reason::TooLong,
        Reason::RepeatedLines,
        Reason::RepeatedNgrams,
        Reason::NonText,
        Reason::ExactDuplicate,
        Reason::NearDuplicate,
        Reason::Contaminated,
    ];

    /// snake_case name as in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Null => "null",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::Empty => "empty",
            Reason::TooShort => "too_short",
            Reason::TooLong => "too_long",
            Reason::RepeatedLines => "repeated_lines",
            Reason::RepeatedNgrams => "repeated_ngrams",
            Reason::NonText => "non_text",
            Reason::ExactDuplicate => "exact_duplicate",
            Reason::NearDuplicate => "near_duplicate",
            Reason::Contaminated => "contaminated",
        }
    }
}

/// Filter thresholds (the `[filters]` table of a prepare config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Minimum length in characters (default 40).
    pub min_chars: usize,
    /// Maximum length in characters (default 1,000,000).
    pub max_chars: usize,
    /// Maximum share of non-empty lines that duplicate another line of the document (default 0.3).
    pub max_repeated_line_fraction: f64,
    /// Word n-gram size for the repetition filter (default 5).
    pub repeated_ngram_size: usize,
    /// Maximum share of characters inside word n-grams that occur more than once (default 0.15).
    pub max_repeated_ngram_fraction: f64,
    /// Documents with fewer words skip the repetition filters (default 50): in a short text a
    /// name said three times is not boilerplate.
    pub repetition_min_words: usize,
    /// Maximum share of characters that are neither letters, digits, whitespace nor punctuation (default 0.25).
    pub max_non_text_fraction: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            min_chars: 40,
            max_chars: 1_000_000,
            max_repeated_line_fraction: 0.3,
            repeated_ngram_size: 5,
            max_repeated_ngram_fraction: 0.15,
            repetition_min_words: 50,
            max_non_text_fraction: 0.25,
        }
    }
}

impl FilterConfig {
    /// Checks ranges, naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_chars > self.max_chars {
            return Err(format!(
                "filters.min_chars ({}) exceeds filters.max_chars ({})",
                self.min_chars, self.max_chars
            ));
        }
        for (name, v) in [
            ("filters.max_repeated_line_fraction", self.max_repeated_line_fraction),
            ("filters.max_repeated_ngram_fraction", self.max_repeated_ngram_fraction),
            ("filters.max_non_text_fraction", self.max_non_text_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be within [0, 1], got {v}"));
            }
        }
        if self.repeated_ngram_size == 0 {
            return Err("filters.repeated_ngram_size must be at least 1".into());
        }
        Ok(())
    }

    /// The first filter `text` (already normalised) fails, if any.
    pub fn check(&self, text: &str) -> Option<Reason> {
        if text.is_empty() {
            return Some(Reason::Empty);
        }
        let chars = text.chars().count();
        if chars < self.min_chars {
            return Some(Reason::TooShort);
        }
        if chars > self.max_chars {
            return Some(Reason::TooLong);
        }
        if text.split_whitespace().nth(self.repetition_min_words.saturating_sub(1)).is_some() {
            if repeated_line_fraction(text) > self.max_repeated_line_fraction {
                return Some(Reason::RepeatedLines);
            }
            if repeated_ngram_fraction(text, self.repeated_ngram_size) > self.max_repeated_ngram_fraction {
                return Some(Reason::RepeatedNgrams);
            }
        }
        if non_text_fraction(text, chars) > self.max_non_text_fraction {
            return Some(Reason::NonText);
        }
        None
    }
}

/// Share of non-empty lines that repeat an earlier line of the same document.
pub fn repeated_line_fraction(text: &str) -> f64 {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.len() < 2 {
        return 0.0;
    }
    let mut seen = std::collections::HashSet::with_capacity(lines.len());
    let dups = lines.iter().filter(|l| !seen.insert(**l)).count();
    dups as f64 / lines.len() as f64
}

/// Share of word characters covered by word `n`-grams that occur more than once.
pub fn repeated_ngram_fraction(text: &str, n: usize) -> f64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < n * 2 {
        return 0.0;
    }
    let total: usize = words.iter().map(|w| w.len()).sum();
    let mut counts: HashMap<&[&str], u32> = HashMap::new();
    for g in words.windows(n) {
        *counts.entry(g).or_default() += 1;
    }
    let mut covered = vec![false; words.len()];
    for (i, g) in words.windows(n).enumerate() {
        if counts[g] > 1 {
            covered[i..i + n].iter_mut().for_each(|c| *c = true);
        }
    }
    let dup: usize = words.iter().zip(&covered).filter(|(_, c)| **c).map(|(w, _)| w.len()).sum();
    dup as f64 / total.max(1) as f64
}

/// Share of characters that are not letters, digits, whitespace or common punctuation.
pub fn non_text_fraction(text: &str, chars: usize) -> f64 {
    let odd = text
        .chars()
        .filter(|c| !(c.is_alphanumeric() || c.is_whitespace() || ".,;:!?'\"-()%&/’“”—–…".contains(*c)))
        .count();
    odd as f64 / chars.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_filter_catches_its_case() {
        let f = FilterConfig::default();
        let good = "The river town of Elmford has a small harbour, two bakeries and a library that opens late.";
        assert_eq!(f.check(good), None);
        assert_eq!(f.check(""), Some(Reason::Empty));
        assert_eq!(f.check("too short"), Some(Reason::TooShort));
        let lines = "Buy now and save big today, friends, this week only!\n".repeat(6) + "Unique closing line.";
        assert_eq!(f.check(&lines), Some(Reason::RepeatedLines));
        let spam = "click here for the best deals ".repeat(9);
        assert_eq!(f.check(&spam), Some(Reason::RepeatedNgrams));
        let markup = "<div class={x}>[[#]]</div> <span>{{}}</span> ##@@** <<>>|| ~~^^ ==++ ${}";
        assert_eq!(f.check(markup), Some(Reason::NonText));
        let long = FilterConfig { max_chars: 50, ..f.clone() };
        assert_eq!(long.check(good), Some(Reason::TooLong));
    }

    #[test]
    fn validate_names_the_field() {
        let bad = FilterConfig { max_non_text_fraction: 1.5, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("filters.max_non_text_fraction"));
    }
}

//! Exact and near-duplicate removal in bounded memory.
//!
//! Keys are computed per document in parallel ([`Dedup::keys`]); decisions are
//! taken in input order ([`Dedup::check`]) so the first copy is the one kept and
//! the result does not depend on thread timing. Both the exact hashes and the
//! LSH band keys live in one [`Bloom`] filter of fixed size.

use crate::bloom::Bloom;
use crate::filter::Reason;
use crate::minhash::MinHasher;
use serde::{Deserialize, Serialize};

/// Dedup settings (the `[dedup]` table of a prepare config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Drop exact duplicates of normalised text (default true).
    pub exact: bool,
    /// Drop near duplicates found by MinHash LSH (default true).
    pub near: bool,
    /// Jaccard similarity of word shingles above which two documents are near duplicates (default 0.8).
    pub threshold: f64,
    /// Number of MinHash permutations; bands × rows is chosen for the threshold within it (default 128).
    pub num_perm: usize,
    /// Words per shingle (default 5).
    pub shingle: usize,
    /// Memory for the Bloom filter holding all keys, in MiB (default 256).
    pub memory_mib: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { exact: true, near: true, threshold: 0.8, num_perm: 128, shingle: 5, memory_mib: 256 }
    }
}

impl DedupConfig {
    /// Checks ranges, naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(format!("dedup.threshold must be within (0, 1), got {}", self.threshold));
        }
        if !(8..=1024).contains(&self.num_perm) {
            return Err(format!("dedup.num_perm must be within 8..=1024, got {}", self.num_perm));
        }
        if self.shingle == 0 || !(1..=1 << 20).contains(&self.memory_mib) {
            return Err("dedup.shingle must be at least 1 and dedup.memory_mib within 1..=1048576".into());
        }
        Ok(())
    }
}

/// Keys of one document, computed off the ordered path.
#[derive(Debug, Clone)]
pub struct DocKeys {
    exact: u64,
    bands: Vec<u64>,
}

/// The dedup state for one prepare run.
#[derive(Debug)]
pub struct Dedup {
    config: DedupConfig,
    hasher: Option<MinHasher>,
    bloom: Bloom,
}

const EXACT_SALT: u64 = 0x6578_6163_7400_0000;

impl Dedup {
    /// A fresh state for `config`, seeded so that runs are reproducible.
    ///
    /// The filter takes `memory_mib`, or less when the input is small: a document of at least
    /// 40 bytes adds at most `bands + 1` keys, and 10 bits per key keep the false-positive rate
    /// near 1%, so `input_bytes / 2` bytes always suffice for `input_bytes` of text.
    pub fn new(config: &DedupConfig, seed: u64, input_bytes: u64) -> Self {
        let hasher = config.near.then(|| {
            let (b, r) = crate::minhash::optimal_bands(config.threshold, config.num_perm);
            MinHasher::new(b, r, config.shingle, seed)
        });
        let bytes = (config.memory_mib << 20).min((input_bytes / 2).max(1 << 20) as usize);
        Self { config: config.clone(), hasher, bloom: Bloom::new(bytes, 7) }
    }

    /// Exact hash and band keys of a normalised document. Thread-safe.
    pub fn keys(&self, text: &str) -> DocKeys {
        let exact = xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), EXACT_SALT);
        let bands = match &self.hasher {
            Some(h) => h.band_keys(&h.signature(text)),
            None => Vec::new(),
        };
        DocKeys { exact, bands }
    }

    /// Decides, in input order, whether the document duplicates an earlier kept one; records it if not.
    pub fn check(&mut self, keys: &DocKeys) -> Option<Reason> {
        if self.config.exact && self.bloom.contains(keys.exact) {
            return Some(Reason::ExactDuplicate);
        }
        if keys.bands.iter().any(|k| self.bloom.contains(*k)) {
            if self.config.exact {
                self.bloom.insert(keys.exact);
            }
            return Some(Reason::NearDuplicate);
        }
        if self.config.exact {
            self.bloom.insert(keys.exact);
        }
        for k in &keys.bands {
            self.bloom.insert(*k);
        }
        None
    }

    /// Figures for the manifest: band layout, filter size and fill, and the
    /// estimated share of unique documents wrongly dropped by filter collisions.
    pub fn report(&self) -> serde_json::Value {
        let (bands, rows) = self.hasher.as_ref().map(|h| h.layout()).unwrap_or((0, 0));
        let p = self.bloom.false_positive_rate();
        let probes_per_doc = bands as f64 + if self.config.exact { 1.0 } else { 0.0 };
        serde_json::json!({
            "bands": bands,
            "rows": rows,
            "bloom_bytes": self.bloom.bytes(),
            "bloom_keys": self.bloom.inserted(),
            "bloom_false_positive_rate": p,
            "estimated_false_drop_rate": 1.0 - (1.0 - p).powf(probes_per_doc),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_copy_kept_later_copies_dropped() {
        let cfg = DedupConfig { memory_mib: 1, ..Default::default() };
        let mut d = Dedup::new(&cfg, 0, 1 << 30);
        let base: String = (0..200).map(|i| format!("word{i} ")).collect();
        let near = base.replace("word100 ", "changed ");
        let other: String = (0..200).map(|i| format!("other{i} ")).collect();
        assert_eq!(d.check(&d.keys(&base)), None);
        assert_eq!(d.check(&d.keys(&base)), Some(Reason::ExactDuplicate));
        assert_eq!(d.check(&d.keys(&near)), Some(Reason::NearDuplicate));
        assert_eq!(d.check(&d.keys(&other)), None);
    }
}

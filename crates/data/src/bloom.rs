//! A Bloom filter: set membership in fixed memory, with a known false-positive rate.
//!
//! Dedup must stay within a memory bound however much text streams through, so
//! keys seen so far live in a fixed bit array (as in Dolma's deduper) rather
//! than a growing hash set. A key never inserted is reported present with
//! probability `(1 - e^{-kn/m})^k` for `n` keys in `m` bits with `k` probes;
//! [`Bloom::false_positive_rate`] gives that figure for the manifest.

/// Bloom filter over 64-bit keys (the caller hashes its values).
#[derive(Debug, Clone)]
pub struct Bloom {
    bits: Vec<u64>,
    probes: u32,
    inserted: u64,
}

use tsukuru_core::rng::mix64 as mix;

impl Bloom {
    /// A filter of `bytes` bytes (rounded up to 8) using `probes` bit probes per key.
    pub fn new(bytes: usize, probes: u32) -> Self {
        // Zeroed allocations are lazily backed by the OS, so untouched pages cost nothing.
        Self { bits: vec![0u64; bytes.div_ceil(8).max(1)], probes: probes.max(1), inserted: 0 }
    }

    fn positions(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let m = self.bits.len() as u64 * 64;
        let h1 = key;
        let h2 = mix(key) | 1;
        (0..self.probes as u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    /// Whether `key` may have been inserted (false positives possible, false negatives not).
    pub fn contains(&self, key: u64) -> bool {
        self.positions(key).all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    /// Inserts `key`; returns whether it was (possibly) present before.
    pub fn insert(&mut self, key: u64) -> bool {
        let mut present = true;
        let positions: Vec<usize> = self.positions(key).collect();
        for p in positions {
            let (word, bit) = (p / 64, 1u64 << (p % 64));
            present &= self.bits[word] & bit != 0;
            self.bits[word] |= bit;
        }
        self.inserted += 1;
        present
    }

    /// Keys inserted so far.
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    /// Size of the bit array in bytes.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }

    /// Probability that a key never inserted tests present, at the current fill.
    pub fn false_positive_rate(&self) -> f64 {
        let m = self.bits.len() as f64 * 64.0;
        let k = self.probes as f64;
        (1.0 - (-k * self.inserted as f64 / m).exp()).powf(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_measured_fp_near_formula() {
        let mut b = Bloom::new(16 * 1024, 7); // 131,072 bits
        let n = 12_000u64; // ~11 bits per key
        for k in 0..n {
            b.insert(mix(k));
        }
        assert!((0..n).all(|k| b.contains(mix(k))));
        let trials = 100_000u64;
        let fp = (0..trials).filter(|k| b.contains(mix(k + 1_000_000))).count() as f64 / trials as f64;
        let predicted = b.false_positive_rate();
        assert!(predicted > 0.0005 && predicted < 0.01, "{predicted}");
        assert!((fp - predicted).abs() < predicted * 0.5 + 0.0005, "measured {fp}, predicted {predicted}");
    }
}

//! MinHash signatures over word shingles, and LSH banding for near-duplicate search.
//!
//! Two documents whose shingle sets have Jaccard similarity `s` agree on one
//! MinHash value with probability `s`. Cutting a signature of `b·r` values into
//! `b` bands of `r` rows, they share at least one whole band with probability
//! `1 - (1 - s^r)^b`, an S-curve whose midpoint is set by the threshold. We pick
//! `(b, r)` for the configured threshold by minimising the area of false
//! positives below it plus false negatives above it, as datasketch does.

/// The Mersenne prime 2^61 - 1: permutations are `(a·x + c) mod p`.
const P: u64 = (1 << 61) - 1;

/// A family of `b·r` hash permutations plus the band layout.
#[derive(Debug, Clone)]
pub struct MinHasher {
    coeffs: Vec<(u64, u64)>,
    bands: usize,
    rows: usize,
    shingle: usize,
}

impl MinHasher {
    /// `bands × rows` permutations over word `shingle`-grams, drawn from `seed`.
    pub fn new(bands: usize, rows: usize, shingle: usize, seed: u64) -> Self {
        let mut rng = tsukuru_core::Rng::stream(seed, "minhash");
        let coeffs = (0..bands * rows).map(|_| (1 + rng.below(P - 1), rng.below(P))).collect();
        Self { coeffs, bands, rows, shingle: shingle.max(1) }
    }

    /// Bands and rows.
    pub fn layout(&self) -> (usize, usize) {
        (self.bands, self.rows)
    }

    /// The MinHash signature of `text`: lower-cased words, `shingle`-grams, `b·r` minima.
    pub fn signature(&self, text: &str) -> Vec<u64> {
        let words: Vec<String> =
            text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
        let mut sig = vec![u64::MAX; self.coeffs.len()];
        let mut shingles: Vec<u64> = if words.len() < self.shingle {
            vec![xxhash_rust::xxh3::xxh3_64(words.join(" ").as_bytes())]
        } else {
            words.windows(self.shingle).map(|g| xxhash_rust::xxh3::xxh3_64(g.join(" ").as_bytes())).collect()
        };
        shingles.sort_unstable();
        shingles.dedup();
        for x in shingles {
            let x = x % P;
            for (s, (a, c)) in sig.iter_mut().zip(&self.coeffs) {
                let h = ((*a as u128 * x as u128 + *c as u128) % P as u128) as u64;
                if h < *s {
                    *s = h;
                }
            }
        }
        sig
    }

    /// One 64-bit key per band: equal keys mean the band's rows all agree.
    pub fn band_keys(&self, signature: &[u64]) -> Vec<u64> {
        signature
            .chunks(self.rows)
            .enumerate()
            .map(|(band, rows)| {
                let mut h = xxhash_rust::xxh3::Xxh3::with_seed(band as u64 ^ 0x006e_6561_7264_7570);
                for r in rows {
                    h.update(&r.to_le_bytes());
                }
                h.digest()
            })
            .collect()
    }
}

/// Share of equal positions in two signatures: an estimate of Jaccard similarity.
pub fn estimate_jaccard(a: &[u64], b: &[u64]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// Probability that two documents of similarity `s` share a band.
pub fn collision_probability(s: f64, bands: usize, rows: usize) -> f64 {
    1.0 - (1.0 - s.powi(rows as i32)).powi(bands as i32)
}

/// The `(bands, rows)` with `bands·rows ≤ num_perm` that best separates pairs at `threshold`.
pub fn optimal_bands(threshold: f64, num_perm: usize) -> (usize, usize) {
    let integrate = |f: &dyn Fn(f64) -> f64, lo: f64, hi: f64| {
        let steps = 200;
        let h = (hi - lo) / steps as f64;
        (0..steps).map(|i| f(lo + (i as f64 + 0.5) * h) * h).sum::<f64>()
    };
    let mut best = (1, num_perm.max(1));
    let mut best_err = f64::INFINITY;
    for bands in 1..=num_perm {
        for rows in 1..=num_perm / bands {
            let fp = integrate(&|s| collision_probability(s, bands, rows), 0.0, threshold);
            let fnr = integrate(&|s| 1.0 - collision_probability(s, bands, rows), threshold, 1.0);
            if fp + fnr < best_err {
                best_err = fp + fnr;
                best = (bands, rows);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_estimate_jaccard() {
        let m = MinHasher::new(16, 8, 3, 1);
        let base: Vec<String> = (0..300).map(|i| format!("w{i}")).collect();
        let a = base.join(" ");
        let mut edited = base.clone();
        for i in (0..300).step_by(30) {
            edited[i] = format!("x{i}");
        }
        let b = edited.join(" ");
        // 10 edits kill up to 30 of 298 3-shingles: Jaccard ≈ 268/328 ≈ 0.82.
        let j = estimate_jaccard(&m.signature(&a), &m.signature(&b));
        assert!((0.65..0.95).contains(&j), "{j}");
        let other: String = (0..300).map(|i| format!("z{i} ")).collect();
        assert!(estimate_jaccard(&m.signature(&a), &m.signature(&other)) < 0.1);
        assert_eq!(m.signature(&a), m.signature(&a.to_uppercase()));
    }

    #[test]
    fn banding_matches_threshold() {
        let (b, r) = optimal_bands(0.8, 128);
        assert!(b * r <= 128);
        // The S-curve's steep part sits at the threshold: pairs well above are caught, pairs well below are not.
        assert!(collision_probability(0.95, b, r) > 0.99, "{b}x{r}");
        assert!(collision_probability(0.9, b, r) > 0.9, "{b}x{r}");
        assert!((0.2..0.8).contains(&collision_probability(0.8, b, r)), "{b}x{r}");
        assert!(collision_probability(0.5, b, r) < 0.01, "{b}x{r}");
    }
}

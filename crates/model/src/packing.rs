//! Several short sequences packed into one row of a batch, kept apart in attention.
//!
//! Instruction data is mostly short conversations; padding each to the context length wastes most
//! of a batch. Packing puts them end to end in one row, and attention keeps them apart: a query may
//! see only the keys of its own sequence (a block-diagonal causal mask), so every sequence is
//! computed exactly as if it were alone in its row. Positions are not reset at a sequence start:
//! rotary embeddings depend only on the distance between query and key, which the mask keeps
//! within one sequence, so the absolute offset changes nothing but rounding.

use candle_core::{DType, Device, Result, Tensor};
use std::sync::Arc;

/// For every position of a `(B, T)` batch, where its sequence starts in its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    batch: usize,
    seq: usize,
    /// `starts[b · T + t]`: the first position of the sequence that position `t` of row `b` is in.
    starts: Arc<[u32]>,
}

impl Packing {
    /// From the lengths of the sequences of each row, in order. A row's lengths must sum to at most
    /// `seq`; positions after the last sequence form one more (padding) sequence.
    pub fn from_lengths(seq: usize, rows: &[Vec<usize>]) -> Result<Self> {
        let mut starts = Vec::with_capacity(rows.len() * seq);
        for (b, lengths) in rows.iter().enumerate() {
            let total: usize = lengths.iter().sum();
            if total > seq || lengths.contains(&0) {
                candle_core::bail!("packing: row {b} has sequences of lengths {lengths:?}; each must be ≥ 1 and they must sum to ≤ {seq}");
            }
            let mut at = 0;
            for &len in lengths.iter().chain(std::iter::once(&(seq - total))) {
                starts.extend(std::iter::repeat_n(at as u32, len));
                at += len;
            }
        }
        Ok(Self { batch: rows.len(), seq, starts: starts.into() })
    }

    /// Rows in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions per row.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// The start of every position's sequence, row-major `(B · T)`.
    pub fn starts(&self) -> Arc<[u32]> {
        self.starts.clone()
    }

    /// Additive attention mask `(B, 1, T, T)`: 0 where query `t` may see key `s` (same sequence,
    /// `s ≤ t`), −∞ elsewhere.
    pub fn mask(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let (b, t) = (self.batch, self.seq);
        let mut mask = Vec::with_capacity(b * t * t);
        for row in self.starts.chunks_exact(t.max(1)) {
            for (i, &first) in row.iter().enumerate() {
                mask.extend((0..t).map(|j| if j >= first as usize && j <= i { 0f32 } else { f32::NEG_INFINITY }));
            }
        }
        Tensor::from_vec(mask, (b, 1, t, t), device)?.to_dtype(dtype)
    }

    /// An error unless this packing describes a `(batch, seq)` batch.
    pub fn check(&self, batch: usize, seq: usize) -> Result<()> {
        if (self.batch, self.seq) != (batch, seq) {
            candle_core::bail!(
                "packing describes a ({}, {}) batch, but the batch is ({batch}, {seq})",
                self.batch,
                self.seq
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_follow_the_lengths_and_the_rest_is_one_more_sequence() {
        let p = Packing::from_lengths(6, &[vec![2, 3], vec![6]]).unwrap();
        assert_eq!(&*p.starts(), &[0, 0, 2, 2, 2, 5, 0, 0, 0, 0, 0, 0]);
        assert!(Packing::from_lengths(4, &[vec![3, 2]]).unwrap_err().to_string().contains("row 0"));
        assert!(Packing::from_lengths(4, &[vec![0, 2]]).is_err());
    }

    #[test]
    fn the_mask_is_block_diagonal_and_causal() {
        let p = Packing::from_lengths(3, &[vec![1, 2]]).unwrap();
        let m = p.mask(DType::F32, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let seen: Vec<bool> = m.iter().map(|x| *x == 0.0).collect();
        assert_eq!(seen, [true, false, false, false, true, false, false, true, true]);
    }
}

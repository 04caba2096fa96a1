//! Loss and bits per byte over a whole token split, for a model and for a unigram baseline.
//!
//! The split's token stream (documents in order, each starting with BOS) is cut into windows of
//! `seq_len + 1` tokens overlapping by one, so every token but the first is predicted exactly once;
//! the baseline predicts the same targets. Bits per byte divide the summed loss in bits by the
//! split's UTF-8 text bytes, so models with different tokenizers compare fairly.

use crate::{EvalError, Result};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use tsukuru_model::Transformer;
use tsukuru_tokens::TokenDataset;

/// Loss of one predictor over one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitLoss {
    /// Tokens predicted.
    pub tokens: u64,
    /// Mean loss, nats per token.
    pub nats_per_token: f64,
    /// Bits per byte of the split's text.
    pub bits_per_byte: f64,
}

impl SplitLoss {
    fn new(total_nats: f64, tokens: u64, text_bytes: u64) -> Self {
        Self {
            tokens,
            nats_per_token: total_nats / tokens.max(1) as f64,
            bits_per_byte: total_nats / std::f64::consts::LN_2 / text_bytes.max(1) as f64,
        }
    }
}

fn stream(data: &TokenDataset) -> Vec<u32> {
    let mut ids = Vec::with_capacity(data.n_tokens() as usize);
    for d in 0..data.n_docs() {
        data.read_doc(d, u64::MAX, &mut ids);
    }
    ids
}

fn text_bytes(data: &TokenDataset) -> Result<u64> {
    data.text_bytes()
        .filter(|b| *b > 0)
        .ok_or_else(|| EvalError::Config("the token split does not record its text bytes; re-tokenize it".into()))
}

/// The model's loss over every token of `data`, `batch` windows of `seq_len` at a time.
pub fn model_loss(model: &Transformer, data: &TokenDataset, seq_len: usize, batch: usize) -> Result<SplitLoss> {
    let ids = stream(data);
    let total = stream_nats(model, &ids, seq_len, batch)?;
    Ok(SplitLoss::new(total, ids.len() as u64 - 1, text_bytes(data)?))
}

/// Summed loss in nats of predicting every token of `ids` but the first, in windows of at most
/// `seq_len` (and the model's context) overlapping by one token, `batch` windows per forward pass.
pub fn stream_nats(model: &Transformer, ids: &[u32], seq_len: usize, batch: usize) -> Result<f64> {
    if ids.len() < 2 {
        return Err(EvalError::Config("fewer than two tokens to score".into()));
    }
    let seq_len = seq_len.min(model.config().max_seq_len);
    let windows: Vec<&[u32]> =
        (0..ids.len() - 1).step_by(seq_len).map(|s| &ids[s..(s + seq_len + 1).min(ids.len())]).collect();
    let mut total = 0.0;
    for group in windows.chunks(batch.max(1)) {
        // Windows of one group share a length except possibly the stream's last one: score it alone.
        for same in group.chunk_by(|a, b| a.len() == b.len()) {
            let t = same[0].len() - 1;
            let inputs: Vec<u32> = same.iter().flat_map(|w| &w[..t]).copied().collect();
            let targets: Vec<u32> = same.iter().flat_map(|w| &w[1..]).copied().collect();
            let device = model.device();
            let logits = model.forward(&Tensor::from_vec(inputs, (same.len(), t), device)?, None)?;
            let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
            let targets = Tensor::from_vec(targets, (same.len(), t, 1), device)?;
            let picked = logp.gather(&targets, D::Minus1)?;
            total -= picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        }
    }
    Ok(total)
}

/// A unigram model of `train` (add-one smoothed counts) scored on the targets of `eval`.
pub fn unigram_loss(train: &TokenDataset, eval: &TokenDataset) -> Result<SplitLoss> {
    let vocab = train.vocab_size() as usize;
    let mut counts = vec![1.0f64; vocab];
    // Document by document: the training split can be far larger than memory.
    let mut doc = Vec::new();
    for d in 0..train.n_docs() {
        doc.clear();
        train.read_doc(d, u64::MAX, &mut doc);
        doc.iter().for_each(|&id| counts[id as usize] += 1.0);
    }
    let total: f64 = counts.iter().sum();
    let ids = stream(eval);
    if ids.len() < 2 {
        return Err(EvalError::Config("the split has fewer than two tokens".into()));
    }
    let nats: f64 = ids[1..].iter().map(|&id| -(counts.get(id as usize).copied().unwrap_or(1.0) / total).ln()).sum();
    Ok(SplitLoss::new(nats, ids.len() as u64 - 1, text_bytes(eval)?))
}

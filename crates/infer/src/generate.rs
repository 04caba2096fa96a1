//! Autoregressive generation over the KV cache: one forward pass for the prompt (prefill), then
//! one position per new token (decode), each seeing every earlier key and value from the cache.

use crate::{InferError, Result, Sampler};
use candle_core::{DType, Tensor};
use serde::Serialize;
use tsukuru_model::{KvCache, Transformer};

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token was produced (it is not part of the output).
    Stop,
    /// The new-token limit or the model's context was reached.
    Length,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The new tokens, without the prompt and without the stop token.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
}

/// Continues `prompt` by up to `max_new` tokens, ending early at any of `stop` tokens; calls
/// `on_token` with each kept token as soon as it is chosen (for streaming). The prompt must leave
/// room in the model's context; the output is cut at the context's end.
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    let cfg = model.config();
    if prompt.is_empty() {
        return Err(InferError::Request("the prompt is empty; give at least one token".into()));
    }
    if prompt.len() >= cfg.max_seq_len {
        return Err(InferError::Request(format!(
            "the prompt has {} tokens but the model's context is {} (max_seq_len); shorten the prompt",
            prompt.len(),
            cfg.max_seq_len
        )));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        return Err(InferError::Request(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab_size)));
    }
    let device = model.device();
    let budget = max_new.min(cfg.max_seq_len - prompt.len());
    let mut cache = KvCache::new(cfg.n_layers);
    let mut input = Tensor::new(prompt, device)?.unsqueeze(0)?;
    let mut tokens = Vec::with_capacity(budget);
    while tokens.len() < budget {
        let logits = model.forward_last(&input, Some(&mut cache))?.squeeze(0)?.to_dtype(DType::F32)?;
        let next = sampler.sample(&logits.to_vec1::<f32>()?);
        if stop.contains(&next) {
            return Ok(Generation { tokens, finish: FinishReason::Stop });
        }
        tokens.push(next);
        on_token(next);
        input = Tensor::new(&[next], device)?.unsqueeze(0)?;
    }
    Ok(Generation { tokens, finish: FinishReason::Length })
}

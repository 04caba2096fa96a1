//! Samples: the opening words of held-out validation documents, continued by the model.

use crate::Result;
use serde::{Deserialize, Serialize};
use tsukuru_infer::{generate, Sampler, SamplingParams};
use tsukuru_model::Transformer;
use tsukuru_tokenizer::{special, Tok};
use tsukuru_tokens::TokenDataset;

/// One sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The opening the model was given.
    pub prompt: String,
    /// What it wrote.
    pub completion: String,
}

/// Continues the first `prompt_tokens` tokens of `n` documents spread over `val`, each by up to
/// `new_tokens` sampled with `params` (seed + document number, so samples differ but reproduce).
pub fn samples(
    model: &Transformer,
    tok: &Tok,
    val: &TokenDataset,
    n: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    params: SamplingParams,
) -> Result<Vec<Sample>> {
    let docs = val.n_docs();
    let mut out = Vec::with_capacity(n);
    for i in 0..(n as u64).min(docs) {
        let doc = i * docs / (n as u64).min(docs).max(1);
        let mut ids = Vec::new();
        // BOS plus the opening tokens.
        val.read_doc(doc, prompt_tokens as u64 + 1, &mut ids);
        let room = model.config().max_seq_len.saturating_sub(ids.len());
        let mut sampler = Sampler::new(SamplingParams { seed: params.seed.wrapping_add(i), ..params })?;
        let g = generate(model, &ids, new_tokens.min(room), &mut sampler, &[special::BOS, special::EOS], &mut |_| {})?;
        out.push(Sample { prompt: tok.decode(&ids[1..])?, completion: tok.decode(&g.tokens)? });
    }
    Ok(out)
}

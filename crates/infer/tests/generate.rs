//! Generation over the KV cache equals recomputing the whole sequence at every step; limits hold;
//! streamed text pieces add up to the decoded whole.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tsukuru_infer::{generate, FinishReason, Sampler, SamplingParams, TextStream};
use tsukuru_model::init::init_params;
use tsukuru_model::{ModelConfig, Transformer};

mod common;

fn model(max_seq_len: usize) -> Transformer {
    let mut cfg = ModelConfig::from_depth(1, 97, max_seq_len);
    cfg.n_kv_heads = 1;
    let map = init_params(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap()
}

#[test]
fn cached_greedy_generation_equals_full_recomputation() {
    let m = model(64);
    let prompt = [5u32, 17, 42, 8];
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let g = generate(&m, &prompt, 20, &mut sampler, &[], &mut |_| {}).unwrap();
    assert_eq!((g.tokens.len(), g.finish), (20, FinishReason::Length));
    // Reference: no cache, the whole sequence each step; its argmax must pick the same token.
    // (crates/model/tests/cache.rs checks the logits themselves agree within 1e-5.)
    let mut seq = prompt.to_vec();
    for &t in &g.tokens {
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits: Vec<f32> = m.forward_last(&ids, None).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let best = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).unwrap().0;
        assert_eq!(best as u32, t);
        seq.push(t);
    }
}

#[test]
fn stop_tokens_end_generation_and_are_not_returned() {
    let m = model(64);
    let prompt = [5u32, 17, 42, 8];
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    let free = generate(&m, &prompt, 10, &mut s, &[], &mut |_| {}).unwrap();
    let stop = free.tokens[3];
    let first = free.tokens.iter().position(|&t| t == stop).unwrap();
    let mut streamed = Vec::new();
    let g = generate(&m, &prompt, 10, &mut s, &[stop], &mut |t| streamed.push(t)).unwrap();
    assert_eq!(g.finish, FinishReason::Stop);
    assert_eq!(g.tokens, free.tokens[..first]);
    assert_eq!(streamed, g.tokens);
}

#[test]
fn the_context_limits_the_output_and_a_full_prompt_is_refused() {
    let m = model(16);
    let mut s = Sampler::new(SamplingParams { temperature: 0.9, top_k: 20, top_p: 0.9, seed: 1 }).unwrap();
    let g = generate(&m, &[1; 12], 100, &mut s, &[], &mut |_| {}).unwrap();
    assert_eq!((g.tokens.len(), g.finish), (4, FinishReason::Length));
    let err = generate(&m, &[1; 16], 1, &mut s, &[], &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("16 tokens") && err.contains("max_seq_len"), "{err}");
    let err = generate(&m, &[1, 500], 1, &mut s, &[], &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("500") && err.contains("vocabulary"), "{err}");
    assert!(generate(&m, &[], 1, &mut s, &[], &mut |_| {}).is_err());
}

#[test]
fn streamed_pieces_concatenate_to_the_decoded_text() {
    let tok = common::tok();
    let text = "Zürich — 東京 🚲 was founded in 1201.";
    let ids = tok.encode_text(text).unwrap();
    let mut stream = TextStream::new(&tok);
    let mut out = String::new();
    for &id in &ids {
        let piece = stream.push(id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "a piece split a character: {piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&stream.finish().unwrap());
    assert_eq!(out, text);
}

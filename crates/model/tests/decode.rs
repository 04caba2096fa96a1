//! Batch-1 decoding over a sequence's own paged cache gives the logits of the full forward pass, for every
//! model variant, across cache growth and mixed with multi-token chunks (prefill after decode).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tsukuru_model::init::init_params;
use tsukuru_model::{Activation, KvCache, ModelConfig, Transformer};

fn config(n_heads: usize, n_kv_heads: usize, activation: Activation, qk_norm: bool, tie: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 61,
        d_model: 16 * n_heads,
        n_layers: 2,
        n_heads,
        n_kv_heads,
        ffn_dim: 40,
        activation,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        qk_norm,
        tie_embeddings: tie,
        max_seq_len: 160,
    }
}

/// Initial weights scaled up so that attention is far from uniform and every position matters
/// (at the usual 0.02 a wrong rotary angle moves the logits by less than 1e-3).
fn sharp_model(cfg: &ModelConfig, seed: u64) -> Transformer {
    let dev = Device::Cpu;
    let map = init_params(cfg, seed, DType::F32, &dev).unwrap();
    for var in map.all_vars() {
        if var.rank() == 2 {
            var.set(&(var.as_tensor() * 10.0).unwrap()).unwrap();
        }
    }
    Transformer::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn decoding_matches_the_full_forward_pass_for_every_variant() {
    let dev = Device::Cpu;
    let n = 150;
    let ids: Vec<u32> = (0..n).map(|i| (i * 37 % 61) as u32).collect();
    let all = Tensor::from_vec(ids.clone(), (1, n), &dev).unwrap();
    for cfg in [
        config(1, 1, Activation::Swiglu, false, false),
        config(4, 2, Activation::Swiglu, true, false),
        config(2, 1, Activation::Relu2, false, true),
        config(3, 3, Activation::Gelu, true, false),
    ] {
        let model = sharp_model(&cfg, 9);
        let full = model.forward(&all, None).unwrap();
        // Prefill 5, decode to 100 (the cache grows past its first 64 positions), a 3-token chunk
        // (the tensor path reading the decoded cache), then decode to the end.
        let mut cache = KvCache::new(cfg.n_layers);
        let mut parts = Vec::new();
        let mut at = 0;
        for len in
            std::iter::once(5).chain(std::iter::repeat_n(1, 95)).chain([3]).chain(std::iter::repeat_n(1, n - 103))
        {
            let chunk = all.narrow(1, at, len).unwrap();
            parts.push(model.forward(&chunk, Some(&mut cache)).unwrap());
            at += len;
            assert_eq!(cache.len(), at);
        }
        let stepped = Tensor::cat(&parts, 1).unwrap();
        let d = max_diff(&full, &stepped) / full.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{cfg:?}: decoded logits differ from the full pass by {d}");

        // From an empty cache, one token at a time from the first.
        let mut cache = KvCache::new(cfg.n_layers);
        let first: Vec<Tensor> =
            (0..8).map(|i| model.forward(&all.narrow(1, i, 1).unwrap(), Some(&mut cache)).unwrap()).collect();
        let d = max_diff(&full.narrow(1, 0, 8).unwrap(), &Tensor::cat(&first, 1).unwrap());
        assert!(d < 1e-3, "{cfg:?}: decoding from an empty cache differs by {d}");
    }
}

#[test]
fn decoding_rejects_tokens_outside_the_vocabulary() {
    let dev = Device::Cpu;
    let cfg = config(2, 2, Activation::Swiglu, false, false);
    let model = sharp_model(&cfg, 1);
    let mut cache = KvCache::new(cfg.n_layers);
    let err = model.forward(&Tensor::new(&[[61u32]], &dev).unwrap(), Some(&mut cache)).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    assert_eq!(cache.len(), 0);
}

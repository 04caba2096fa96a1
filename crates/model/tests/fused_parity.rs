//! The whole model gives the same logits, loss and gradients with the fused CPU kernels as with the
//! composite ops, for every variant (one head, grouped-query attention, QK-norm, tied embeddings),
//! with and without the KV cache. Its own test binary: it switches the kernels process-wide.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tsukuru_model::init::init_params;
use tsukuru_model::ops::{cross_entropy, set_fused_enabled};
use tsukuru_model::{Activation, KvCache, ModelConfig, Transformer};

fn config(n_heads: usize, n_kv_heads: usize, activation: Activation, qk_norm: bool, tie: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 97,
        d_model: 32 * n_heads,
        n_layers: 2,
        n_heads,
        n_kv_heads,
        ffn_dim: 72,
        activation,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        qk_norm,
        tie_embeddings: tie,
        max_seq_len: 64,
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn fused_and_composite_paths_agree_on_every_variant() {
    let dev = Device::Cpu;
    let ids: Vec<u32> = (0..3 * 21).map(|i| (i * 37 % 97) as u32).collect();
    let inputs = Tensor::from_vec(
        ids.iter().enumerate().filter(|(i, _)| i % 21 != 20).map(|(_, &t)| t).collect::<Vec<_>>(),
        (3, 20),
        &dev,
    )
    .unwrap();
    let targets = Tensor::from_vec(
        ids.iter().enumerate().filter(|(i, _)| i % 21 != 0).map(|(_, &t)| t).collect::<Vec<_>>(),
        60,
        &dev,
    )
    .unwrap();
    for cfg in [
        config(1, 1, Activation::Swiglu, false, false),
        config(4, 2, Activation::Swiglu, true, false),
        config(2, 1, Activation::Relu2, false, true),
        config(3, 3, Activation::Gelu, true, false),
    ] {
        let map = init_params(&cfg, 5, DType::F32, &dev).unwrap();
        let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
        let run = |fused: bool| {
            set_fused_enabled(fused);
            let logits = model.forward(&inputs, None).unwrap();
            let loss = cross_entropy(&logits.reshape((60, cfg.vocab_size)).unwrap(), &targets).unwrap();
            let grads = loss.backward().unwrap();
            let mut cache = KvCache::new(cfg.n_layers);
            let prefill = model.forward(&inputs.narrow(1, 0, 17).unwrap(), Some(&mut cache)).unwrap();
            let step = model.forward(&inputs.narrow(1, 17, 3).unwrap(), Some(&mut cache)).unwrap();
            let cached = Tensor::cat(&[prefill, step], 1).unwrap();
            (logits, loss, grads, cached)
        };
        let (la, lossa, ga, ca) = run(true);
        let (lb, lossb, gb, cb) = run(false);
        let what = format!("{} heads / {} kv, {:?}", cfg.n_heads, cfg.n_kv_heads, cfg.activation);
        assert!(max_diff(&la, &lb) < 1e-4, "{what}: logits differ by {}", max_diff(&la, &lb));
        assert!(max_diff(&ca, &cb) < 1e-4, "{what}: cached logits differ by {}", max_diff(&ca, &cb));
        assert!(max_diff(&la, &ca) < 1e-4, "{what}: cached and full logits differ");
        assert!(max_diff(&lossa, &lossb) < 1e-5, "{what}: losses differ");
        for (name, var) in map.data().lock().unwrap().iter() {
            let (a, b) = (ga.get(var.as_tensor()).unwrap(), gb.get(var.as_tensor()).unwrap());
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-3);
            let d = max_diff(a, b) / scale;
            assert!(d < 1e-3, "{what}: gradient of {name} differs by {d} (relative)");
        }
    }
}

//! Low-rank adapters: attaching them changes nothing until they train, only they take gradients
//! when the base is frozen, and merging them gives a plain model with the adapted model's logits.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use tsukuru_model::init::init_params;
use tsukuru_model::{LoraSpec, ModelConfig, Transformer};

fn config() -> ModelConfig {
    ModelConfig { n_kv_heads: 1, ..ModelConfig::from_depth(2, 50, 32) }
}

/// The base weights as constants (frozen), the way a tuning job loads them.
fn base_tensors() -> HashMap<String, Tensor> {
    let map = init_params(&config(), 4, DType::F32, &Device::Cpu).unwrap();
    let data = map.data().lock().unwrap();
    data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn adapters_start_neutral_train_alone_and_merge_into_a_plain_model() {
    let dev = Device::Cpu;
    let base = base_tensors();
    let plain = Transformer::new(&config(), VarBuilder::from_tensors(base.clone(), DType::F32, &dev)).unwrap();
    let mut adapted = Transformer::new(&config(), VarBuilder::from_tensors(base.clone(), DType::F32, &dev)).unwrap();
    let adapters = VarMap::new();
    let spec = LoraSpec { rank: 4, alpha: 8.0 };
    adapted.attach_lora(spec, &adapters, 5).unwrap();
    assert!(adapted.adapted() && !plain.adapted());
    // 2 layers × 7 projections × (A, B).
    assert_eq!(adapters.all_vars().len(), 28);
    assert!(adapters.data().lock().unwrap().contains_key("model.layers.1.mlp.down_proj.lora_B.weight"));

    let ids = Tensor::from_vec((0..24u32).map(|i| i * 7 % 50).collect::<Vec<_>>(), (2, 12), &dev).unwrap();
    let targets = Tensor::from_vec((0..24u32).map(|i| i * 3 % 50).collect::<Vec<_>>(), 24, &dev).unwrap();
    let (a0, p0) = (adapted.forward(&ids, None).unwrap(), plain.forward(&ids, None).unwrap());
    assert!(max_diff(&a0, &p0) < 1e-6, "B starts at zero: the adapted model is the base");

    // Gradients reach the adapters only (B first: A's gradient is zero while B is).
    let grads = adapted.loss(&ids, &targets, None).unwrap().backward().unwrap();
    let data = adapters.data().lock().unwrap();
    let b = &data["model.layers.0.self_attn.q_proj.lora_B.weight"];
    let gb = grads.get(b.as_tensor()).expect("B has a gradient");
    assert!(gb.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    // No product or norm of the frozen base spends work on a gradient (candle's own embedding
    // lookup still returns one for its table).
    for (name, t) in base.iter().filter(|(n, _)| !n.contains("embed_tokens")) {
        assert!(grads.get(t).is_none(), "{name} is frozen but got a gradient");
    }
    // Give every B a value, as training would.
    for (name, var) in data.iter().filter(|(n, _)| n.contains("lora_B")) {
        let (o, r) = var.dims2().unwrap();
        let seed = name.len() as f32;
        let v: Vec<f32> = (0..o * r).map(|i| ((i as f32 * 0.37 + seed).sin()) * 0.05).collect();
        Var::set(var, &Tensor::from_vec(v, (o, r), &dev).unwrap()).unwrap();
    }
    drop(data);
    let tuned = adapted.forward(&ids, None).unwrap();
    assert!(max_diff(&tuned, &p0) > 1e-3, "trained adapters change the logits");

    // Merged weights written over the base make a plain model with the same logits.
    let mut merged = base.clone();
    let weights = adapted.merged_weights().unwrap();
    assert_eq!(weights.len(), 14);
    merged.extend(weights);
    let plain_merged = Transformer::new(&config(), VarBuilder::from_tensors(merged, DType::F32, &dev)).unwrap();
    let d = max_diff(&plain_merged.forward(&ids, None).unwrap(), &tuned);
    assert!(d < 1e-4, "merged and adapted logits differ by {d}");
    assert!(LoraSpec { rank: 0, alpha: 1.0 }.validate().is_err());
}

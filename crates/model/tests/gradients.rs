//! Gradients reach every parameter and match finite differences in f64, for every layer variant.
//!
//! candle's fused norm/softmax/attention ops silently drop gradients; these tests are what keeps the
//! model built from ops that carry them.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use tsukuru_model::init::{init_params, param_specs};
use tsukuru_model::ops::cross_entropy;
use tsukuru_model::{Activation, ModelConfig, Transformer};

fn tiny(activation: Activation, qk_norm: bool, n_kv_heads: usize, tie: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 11,
        d_model: 8,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads,
        ffn_dim: 12,
        activation,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        qk_norm,
        tie_embeddings: tie,
        max_seq_len: 16,
    }
}

fn variants() -> Vec<ModelConfig> {
    vec![
        tiny(Activation::Swiglu, false, 2, false),
        tiny(Activation::Relu2, true, 1, false),
        tiny(Activation::Gelu, false, 1, true),
    ]
}

fn batch(dev: &Device) -> (Tensor, Tensor) {
    let ids: Vec<u32> = vec![1, 5, 3, 7, 2, 9, 4, 0, 6, 10, 8, 3];
    let targets: Vec<u32> = vec![5, 3, 7, 2, 9, 4, 0, 6, 10, 8, 3, 1];
    (Tensor::from_vec(ids, (2, 6), dev).unwrap(), Tensor::from_vec(targets, 12, dev).unwrap())
}

fn loss(model: &Transformer, ids: &Tensor, targets: &Tensor) -> Tensor {
    let logits = model.forward(ids, None).unwrap();
    let v = logits.dim(2).unwrap();
    cross_entropy(&logits.reshape(((), v)).unwrap(), targets).unwrap()
}

fn vars(map: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = map.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    let dev = Device::Cpu;
    for cfg in variants() {
        let map = init_params(&cfg, 1, DType::F32, &dev).unwrap();
        let specs = param_specs(&cfg);
        assert_eq!(specs.iter().map(|(_, s, _)| s.iter().product::<usize>()).sum::<usize>(), cfg.param_count());
        let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
        let (ids, targets) = batch(&dev);
        let grads = loss(&model, &ids, &targets).backward().unwrap();
        let all = vars(&map);
        assert_eq!(all.len(), specs.len());
        for (name, var) in all {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{cfg:?}: no gradient for {name}"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm} ({:?})", cfg.activation);
        }
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let dev = Device::Cpu;
    for cfg in variants() {
        let map = init_params(&cfg, 2, DType::F64, &dev).unwrap();
        // Bigger weights than the 0.02 init make every path matter to the loss.
        for (_, var) in vars(&map) {
            let t = var.as_tensor();
            if t.rank() == 2 {
                var.set(&(t * 10.0).unwrap()).unwrap();
            }
        }
        let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F64, &dev)).unwrap();
        let (ids, targets) = batch(&dev);
        let grads = loss(&model, &ids, &targets).backward().unwrap();
        let eps = 1e-6;
        for (name, var) in vars(&map) {
            let g: Vec<f64> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let shape = var.as_tensor().shape().clone();
            // Three entries per tensor: first, middle, last.
            for &i in &[0, base.len() / 2, base.len() - 1] {
                let probe = |delta: f64| {
                    let mut w = base.clone();
                    w[i] += delta;
                    var.set(&Tensor::from_vec(w, shape.clone(), &dev).unwrap()).unwrap();
                    loss(&model, &ids, &targets).to_scalar::<f64>().unwrap()
                };
                let numeric = (probe(eps) - probe(-eps)) / (2.0 * eps);
                var.set(&Tensor::from_vec(base.clone(), shape.clone(), &dev).unwrap()).unwrap();
                let err = (numeric - g[i]).abs() / (numeric.abs() + g[i].abs()).max(1e-8);
                assert!(
                    err < 1e-5 || (numeric - g[i]).abs() < 1e-9,
                    "{name}[{i}] ({:?}, qk_norm {}): analytic {} vs numeric {numeric}",
                    cfg.activation,
                    cfg.qk_norm,
                    g[i]
                );
            }
        }
    }
}

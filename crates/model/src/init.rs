//! Parameter names, shapes and initialisation.
//!
//! Weights are drawn from tsukuru's own seeded generator (Box–Muller over `core::Rng`), so the same
//! seed gives the same model on every run and platform. Linear and embedding weights are N(0, 0.02);
//! the projections that write into the residual stream (`o_proj`, `down_proj`) are scaled by
//! 1/√(2·layers) so the stream's variance does not grow with depth (GPT-2); norms start at 1.

use crate::config::{Activation, ModelConfig};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use tsukuru_core::Rng;

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// All ones (norm gains).
    Ones,
}

/// Every parameter of a model: Hugging Face name, shape, initialisation. In a fixed order.
pub fn param_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, Init)> {
    let (d, hd, f) = (cfg.d_model, cfg.head_dim(), cfg.ffn_dim);
    let std = 0.02;
    let residual = Init::Normal(std / (2.0 * cfg.n_layers as f64).sqrt());
    let mut specs = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, d], Init::Normal(std))];
    for i in 0..cfg.n_layers {
        let p = |name: &str| format!("model.layers.{i}.{name}");
        specs.push((p("input_layernorm.weight"), vec![d], Init::Ones));
        specs.push((p("self_attn.q_proj.weight"), vec![cfg.n_heads * hd, d], Init::Normal(std)));
        specs.push((p("self_attn.k_proj.weight"), vec![cfg.n_kv_heads * hd, d], Init::Normal(std)));
        specs.push((p("self_attn.v_proj.weight"), vec![cfg.n_kv_heads * hd, d], Init::Normal(std)));
        specs.push((p("self_attn.o_proj.weight"), vec![d, cfg.n_heads * hd], residual));
        if cfg.qk_norm {
            specs.push((p("self_attn.q_norm.weight"), vec![hd], Init::Ones));
            specs.push((p("self_attn.k_norm.weight"), vec![hd], Init::Ones));
        }
        specs.push((p("post_attention_layernorm.weight"), vec![d], Init::Ones));
        if cfg.activation == Activation::Swiglu {
            specs.push((p("mlp.gate_proj.weight"), vec![f, d], Init::Normal(std)));
        }
        specs.push((p("mlp.up_proj.weight"), vec![f, d], Init::Normal(std)));
        specs.push((p("mlp.down_proj.weight"), vec![d, f], residual));
    }
    specs.push(("model.norm.weight".to_string(), vec![d], Init::Ones));
    if !cfg.tie_embeddings {
        specs.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, d], Init::Normal(std)));
    }
    specs
}

/// Freshly initialised, trainable parameters for `cfg`, from `seed`.
pub fn init_params(cfg: &ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<VarMap> {
    let map = VarMap::new();
    let mut rng = Rng::stream(seed, "init");
    {
        let mut data = map.data().lock().expect("fresh map is not poisoned");
        for (name, shape, init) in param_specs(cfg) {
            let n: usize = shape.iter().product();
            let values: Vec<f64> = match init {
                Init::Ones => vec![1.0; n],
                Init::Normal(std) => (0..n).map(|_| std * normal(&mut rng)).collect(),
            };
            let t = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    Ok(map)
}

/// A standard normal draw (Box–Muller; the second value is discarded for simplicity).
fn normal(rng: &mut Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

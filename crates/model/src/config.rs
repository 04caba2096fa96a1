//! Model configuration: every architectural variant is a field here, never a copied model file.

use serde::{Deserialize, Serialize};

/// Feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Gated SiLU (Llama): `down(silu(gate(x)) * up(x))`.
    Swiglu,
    /// Squared ReLU (Primer, nanochat): `down(relu(up(x))²)`.
    Relu2,
    /// GELU, tanh approximation (GPT-2): `down(gelu(up(x)))`.
    Gelu,
}

/// Shape and variant of a decoder-only transformer (`config.json` beside the weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Hidden width of the feed-forward block.
    pub ffn_dim: usize,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Epsilon of RMSNorm.
    pub norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMSNorm on each head's queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
    /// The output projection shares the embedding matrix.
    pub tie_embeddings: bool,
    /// Longest sequence the model accepts (RoPE tables are built for it).
    pub max_seq_len: usize,
}

/// A config field that makes no sense, with its name and value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model config: {field} = {value}: {reason}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Its value, as text.
    pub value: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl ModelConfig {
    /// The one-dial preset (nanochat style): width = 64 × depth, heads of 64 dimensions,
    /// full multi-head attention, SwiGLU with an 8/3 expansion rounded to a multiple of 64.
    pub fn from_depth(depth: usize, vocab_size: usize, max_seq_len: usize) -> Self {
        let d_model = 64 * depth.max(1);
        let n_heads = (d_model / 64).max(1);
        let ffn_dim = Self::ffn_dim_for(d_model);
        Self {
            vocab_size,
            d_model,
            n_layers: depth.max(1),
            n_heads,
            n_kv_heads: n_heads,
            ffn_dim,
            activation: Activation::Swiglu,
            norm_eps: 1e-5,
            rope_theta: 10_000.0,
            qk_norm: false,
            tie_embeddings: false,
            max_seq_len,
        }
    }

    /// The preset's SwiGLU width for a residual width: 8/3 × `d_model`, rounded up to a multiple
    /// of 64 (of `d_model` itself below 64, so that tiny models are not dominated by the rounding).
    pub fn ffn_dim_for(d_model: usize) -> usize {
        let m = d_model.clamp(1, 64);
        (d_model * 8 / 3).div_ceil(m) * m
    }

    /// Dimensions per head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Checks every field, naming the first that is impossible.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, value: &dyn std::fmt::Display, reason: &str| {
            Err(ConfigError { field, value: value.to_string(), reason: reason.to_string() })
        };
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("ffn_dim", self.ffn_dim),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return err(field, &v, "must be at least 1");
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return err("d_model", &self.d_model, &format!("must be divisible by n_heads = {}", self.n_heads));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return err("n_kv_heads", &self.n_kv_heads, &format!("must divide n_heads = {}", self.n_heads));
        }
        if !self.head_dim().is_multiple_of(2) {
            return err("d_model", &self.d_model, "d_model / n_heads must be even for rotary embeddings");
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return err("norm_eps", &self.norm_eps, "must be positive");
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 1.0 {
            return err("rope_theta", &self.rope_theta, "must be greater than 1");
        }
        Ok(())
    }

    /// Number of parameters (embedding and output projection counted once when tied).
    pub fn param_count(&self) -> usize {
        let (d, hd) = (self.d_model, self.head_dim());
        let attn = d * d * 2 + 2 * d * self.n_kv_heads * hd + if self.qk_norm { 2 * hd } else { 0 };
        let ffn = match self.activation {
            Activation::Swiglu => 3 * d * self.ffn_dim,
            Activation::Relu2 | Activation::Gelu => 2 * d * self.ffn_dim,
        };
        let block = attn + ffn + 2 * d;
        let embed = self.vocab_size * d;
        let head = if self.tie_embeddings { 0 } else { self.vocab_size * d };
        embed + head + self.n_layers * block + d
    }

    /// Parameters that take part in matrix products per token (all but the embedding lookup).
    pub fn matmul_params(&self) -> usize {
        let embed = self.vocab_size * self.d_model;
        // A tied embedding still does the output projection's work.
        self.param_count() - embed + if self.tie_embeddings { embed } else { 0 }
    }

    /// Training FLOPs per token at sequence length `seq`: 6·N for the matrix products plus
    /// the attention scores and weighted sum, 6 · 2 · layers · seq · d_model (forward + backward,
    /// full causal square as PaLM's and nanochat's estimates count it).
    pub fn flops_per_token(&self, seq: usize) -> f64 {
        6.0 * self.matmul_params() as f64 + 12.0 * (self.n_layers * seq * self.d_model) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_shapes_name_the_field() {
        let ok = ModelConfig::from_depth(2, 100, 64);
        assert_eq!(ok.validate(), Ok(()));
        let e = ModelConfig { n_heads: 3, ..ok.clone() }.validate().unwrap_err();
        assert_eq!((e.field, e.value.as_str()), ("d_model", "128"));
        assert!(e.to_string().contains("divisible by n_heads = 3"), "{e}");
        let e = ModelConfig { n_kv_heads: 3, n_heads: 2, ..ok.clone() }.validate().unwrap_err();
        assert_eq!(e.field, "n_kv_heads");
        assert_eq!(ModelConfig { vocab_size: 0, ..ok }.validate().unwrap_err().field, "vocab_size");
    }

    #[test]
    fn depth_preset_and_counts() {
        let c = ModelConfig::from_depth(4, 1000, 128);
        assert_eq!((c.d_model, c.n_heads, c.ffn_dim), (256, 4, 704));
        // 2 embeddings + 4 × (4·256² attention + 3·256·704 MLP + 2·256 norms) + final norm.
        assert_eq!(c.param_count(), 2 * 1000 * 256 + 4 * (4 * 256 * 256 + 3 * 256 * 704 + 512) + 256);
        let tied = ModelConfig { tie_embeddings: true, ..c.clone() };
        assert_eq!(tied.param_count() + 1000 * 256, c.param_count());
        assert_eq!(tied.matmul_params(), c.matmul_params());
    }
}

//! The differentiable building blocks of the model, each taking the fused CPU kernel
//! ([`crate::kernels`]) for f32 tensors on the CPU and the [`composite`] version otherwise.
//!
//! Setting `TSUKURU_KERNELS=composite` in the environment forces the composite versions everywhere
//! (to compare speed or numbers against the reference path); `TSUKURU_KERNELS=separate` keeps the
//! fused kernels but runs a block's halves as separate ops where they would be one graph node
//! ([`one_node`]), to measure what the single node saves; `TSUKURU_KERNELS=halves` keeps a node
//! per half where a training step would make the whole stack of blocks one (`ops::trunk`).

pub mod attn_residual;
pub mod composite;
mod explicit;
pub mod mlp_residual;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) mod rows_by_id;
pub(crate) mod trunk;

pub use composite::{causal_mask, rope_tables, softmax_last};

use crate::kernels;
use crate::packing::Packing;
use candle_core::{DType, Module, Result, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

/// A target that is not scored (prompt tokens in instruction tuning, padding): the losses skip it
/// and average over the others.
pub use tsukuru_core::IGNORE_TARGET as IGNORE;

/// 0: not decided yet, 1: fused kernels on, 2: off.
static FUSED: AtomicU8 = AtomicU8::new(0);

/// Whether the fused kernels may be used at all (`TSUKURU_KERNELS=composite` turns them off).
pub fn fused_enabled() -> bool {
    match FUSED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = kernels_setting() != "composite";
            set_fused_enabled(on);
            on
        }
    }
}

/// Turns the fused kernels on or off for the whole process (comparisons and tests).
pub fn set_fused_enabled(on: bool) {
    FUSED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether `ts` take the fused CPU kernels: all f32 on the CPU, and the kernels not switched off.
pub fn fused(ts: &[&Tensor]) -> bool {
    fused_enabled() && ts.iter().all(|t| kernels::supported(t))
}

/// `TSUKURU_KERNELS`, read from the environment once.
fn kernels_setting() -> &'static str {
    static SETTING: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SETTING.get_or_init(|| std::env::var("TSUKURU_KERNELS").unwrap_or_default())
}

/// Whether a block's halves may be one graph node each (`TSUKURU_KERNELS=separate` says no).
fn one_node_enabled() -> bool {
    kernels_setting() != "separate"
}

/// Whether a training step may run the whole stack of blocks as one node (`ops::trunk`);
/// `TSUKURU_KERNELS=halves` keeps one node per half, to measure what the stack saves.
pub(crate) fn stack_enabled() -> bool {
    one_node_enabled() && kernels_setting() != "halves"
}

/// Whether `ts` take the one-node block halves ([`attn_residual`], [`mlp_residual`]) where the
/// CPU kernels do not apply: f32 or bf16 (a GPU, or bf16 on the CPU), a gradient to be taken (what
/// they save is the backward's; without one, as in decoding, the separate ops do less, such as
/// stacking no weights), and neither the fused ops nor the single nodes switched off (the
/// separate composites stay the reference).
pub fn one_node(ts: &[&Tensor]) -> bool {
    fused_enabled()
        && one_node_enabled()
        && ts.iter().all(|t| matches!(t.dtype(), DType::F32 | DType::BF16))
        && ts.iter().any(|t| t.track_op())
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`. Shapes: x (…, D), weight (D).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::gpu::supported(&[x, weight]) {
        return crate::gpu::rms_norm::rms_norm(x, weight, eps);
    }
    if fused(&[x, weight]) {
        kernels::rms_norm::rms_norm(x, weight, eps)
    } else {
        composite::rms_norm(x, weight, eps)
    }
}

/// Rows `ids` (u32, any shape) of an embedding table `(vocab, D)`, shaped `ids.dims() + [D]`. On
/// a GPU with a backward of its own (`gpu::embedding`); elsewhere candle's row gather.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::gpu::supported(&[table]) && ids.dtype() == DType::U32 {
        return crate::gpu::embedding::embedding(table, ids);
    }
    let mut dims = ids.dims().to_vec();
    dims.push(table.dim(1)?);
    table.index_select(&ids.flatten_all()?, 0)?.reshape(dims)
}

/// Rotary embeddings (Llama's half-split convention) of `x (B, H, T, head_dim)` at positions
/// `start..start + T`, from the tables of [`rope_tables`].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, start: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::gpu::supported(&[x]) {
        return crate::gpu::rope::rope(x, cos, sin, start);
    }
    if fused(&[x]) {
        kernels::rope::rope(x, cos, sin, start)
    } else {
        composite::rope(x, cos, sin, start)
    }
}

/// A linear layer without bias, `x · wᵀ` for `x (…, in)` and `w (out, in)`.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if fused(&[x, w]) {
        kernels::linear::linear(x, w)
    } else {
        candle_nn::Linear::new(w.clone(), None).forward(x)
    }
}

/// The SwiGLU block's second half: `(silu(gate) ⊙ up) · wᵀ`, with `w (D, F)` the down projection.
/// On the CPU one op that recomputes the gated product in the backward pass instead of keeping it.
pub fn swiglu_down(gate: &Tensor, up: &Tensor, w: &Tensor) -> Result<Tensor> {
    if fused(&[gate, up, w]) {
        kernels::swiglu_down::swiglu_down(gate, up, w)
    } else {
        linear(&swiglu(gate, up)?, w)
    }
}

/// The feed-forward half of a SwiGLU block with its residual connection,
/// `x + (silu(n · gateᵀ) ⊙ (n · upᵀ)) · downᵀ` with `n = rms_norm(x, gain)`: weights `(F, D)`,
/// `(F, D)`, `(D, F)`. On the CPU one op, the gate and up projections one product
/// ([`kernels::mlp_block`]); otherwise (a GPU, bf16) one node of the graph ([`mlp_residual`]).
pub fn swiglu_residual(
    x: &Tensor,
    gain: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    down: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if fused(&[x, gain, gate, up, down]) {
        return kernels::mlp_block::mlp_block(x, gate, up, gain, down, eps);
    }
    if one_node(&[x, gain, gate, up, down]) {
        return mlp_residual::mlp_residual(x, gain, gate, up, down, eps);
    }
    let n = rms_norm(x, gain, eps)?;
    x + linear(&swiglu(&linear(&n, gate)?, &linear(&n, up)?)?, down)?
}

/// Causal attention `softmax(scale · q·kᵀ + mask) · v` of q `(B, H, T, hd)` against k and v
/// `(B, KV, S, hd)` (each key/value head serving H / KV query heads), the T queries at positions
/// `start..start + T`. With `packing` (training only: `start` 0, S = T) each query sees only its
/// own sequence. Returns `(B, T, H · hd)`, the heads side by side for the output projection.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    start: usize,
    packing: Option<&Packing>,
) -> Result<Tensor> {
    if let Some(p) = packing {
        let (b, _, t, _) = q.dims4()?;
        if start != 0 || k.dim(2)? != t {
            candle_core::bail!("attention: packed sequences need start 0 and no cached keys");
        }
        p.check(b, t)?;
    }
    #[cfg(feature = "cuda")]
    if crate::gpu::supported(&[q, k, v]) && crate::gpu::attention::supports_head_dim(q.dim(3)?) {
        return crate::gpu::attention::attention(q, k, v, scale, start, packing);
    }
    if fused(&[q, k, v]) {
        kernels::attention::attention(q, k, v, scale, start, packing)
    } else {
        composite::attention(q, k, v, scale, start, packing)
    }
}

/// SwiGLU's gate: `silu(gate) ⊙ up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::gpu::supported(&[gate, up]) {
        return crate::gpu::swiglu::swiglu(gate, up);
    }
    if fused(&[gate, up]) {
        kernels::swiglu::swiglu(gate, up)
    } else {
        composite::swiglu(gate, up)
    }
}

/// Mean cross-entropy of the logits `h · wᵀ` (`h (N, d)`, `w (V, d)`) against u32 `targets (N)`
/// (those that are not [`IGNORE`]): the output projection and the loss together, without holding
/// all the logits on the CPU.
pub fn linear_cross_entropy(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::gpu::supported(&[h, w]) {
        return crate::gpu::linear_cross_entropy::linear_cross_entropy(h, w, targets);
    }
    if fused(&[h, w]) {
        kernels::linear_cross_entropy::linear_cross_entropy(h, w, targets)
    } else {
        composite::cross_entropy(&h.matmul(&w.t()?)?, targets)
    }
}

/// The log-probability of each u32 target under the logits `h · wᵀ` (`h (N, d)`, `w (V, d)`), 0 for
/// [`IGNORE`]: `(N)`, for losses on sequence log-probabilities (preference optimisation). On the CPU
/// and the GPU the logits are never held whole.
pub fn linear_logprobs(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::gpu::supported(&[h, w]) {
        return crate::gpu::linear_logprobs::linear_logprobs(h, w, targets);
    }
    if fused(&[h, w]) {
        kernels::linear_logprobs::linear_logprobs(h, w, targets)
    } else {
        composite::token_logprobs(&h.matmul(&w.t()?)?, targets)
    }
}

/// Mean cross-entropy of `logits (N, V)` against u32 `targets (N)` (those that are not [`IGNORE`]).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused(&[logits]) {
        kernels::cross_entropy::cross_entropy(logits, targets)
    } else {
        composite::cross_entropy(logits, targets)
    }
}

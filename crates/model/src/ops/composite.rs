//! The building blocks as compositions of basic candle ops, each carrying gradients.
//!
//! candle 0.11's fused `rms_norm`, `softmax_last_dim`, `layer_norm` and `sdpa` have no backward
//! pass: gradients silently stop at them. Everything here is built from ops that carry gradients
//! (reductions, broadcasts, unary maps, matmul), checked by finite differences in the tests. These
//! run on every device and dtype, and are the reference the fused CPU kernels are tested against.

use super::IGNORE;
use crate::packing::Packing;
use candle_core::{DType, Device, Result, Tensor, D};

/// `x` in f32 when it is in half precision (bf16 or f16), else `x` itself: the norms, softmaxes and
/// losses compute their statistics, exponentials and sums in f32, as autocast does, since a sum
/// kept in bf16 stops growing once its spacing exceeds the terms (at 256 for terms near 1).
fn widened(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`. Shapes: x (…, D), weight (D).
/// Computed in f32 for half-precision inputs, returned in x's dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let xw = widened(x)?;
    let ms = xw.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    xw.broadcast_mul(&inv)?.broadcast_mul(&widened(weight)?)?.to_dtype(x.dtype())
}

/// Softmax over the last dimension, shifted by the row maximum for stability. Computed in f32 for
/// half-precision inputs, returned in x's dtype.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let xw = widened(x)?;
    // The maximum is a constant shift: detaching it leaves the gradient unchanged and cheaper.
    let max = xw.max_keepdim(D::Minus1)?.detach();
    let e = xw.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_dtype(x.dtype())
}

/// Rotary tables for positions `0..max_seq_len`: `(cos, sin)`, each `(max_seq_len, head_dim / 2)`.
pub fn rope_tables(
    head_dim: usize,
    max_seq_len: usize,
    theta: f64,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(max_seq_len * half);
    let mut sin = Vec::with_capacity(max_seq_len * half);
    for pos in 0..max_seq_len {
        for i in 0..half {
            let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let angle = pos as f64 * freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (max_seq_len, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (max_seq_len, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Applies rotary embeddings (Llama's half-split convention) to x `(B, H, T, head_dim)` at
/// positions `start..start + T`, given the tables from [`rope_tables`].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, start: usize) -> Result<Tensor> {
    let (_, _, t, hd) = x.dims4()?;
    let half = hd / 2;
    let cos = cos.narrow(0, start, t)?;
    let sin = sin.narrow(0, start, t)?;
    let cos = Tensor::cat(&[&cos, &cos], 1)?;
    let sin = Tensor::cat(&[&sin, &sin], 1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)?.broadcast_add(&rotated.broadcast_mul(&sin)?)
}

/// Additive causal mask `(T, S)` for `T` queries at positions `start..start + T` over `S = start + T`
/// keys: 0 where the key is at or before the query, −∞ after it.
pub fn causal_mask(t: usize, start: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let s = start + t;
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..s).map(move |j| if j <= start + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Tensor::from_vec(mask, (t, s), device)?.to_dtype(dtype)
}

/// `softmax(scale · scores + mask)` over the last dimension of `(B, H, T, S)` scores whose `T`
/// queries sit at positions `start..start + T`: the causal mask, or the packing's (`start` 0).
pub fn attention_softmax(scores: &Tensor, scale: f64, start: usize, packing: Option<&Packing>) -> Result<Tensor> {
    let dims = scores.dims();
    let t = dims[dims.len() - 2];
    let mask = match packing {
        Some(p) => p.mask(scores.dtype(), scores.device())?,
        None => causal_mask(t, start, scores.dtype(), scores.device())?,
    };
    softmax_last(&(scores * scale)?.broadcast_add(&mask)?)
}

/// SwiGLU's gate: `silu(gate) ⊙ up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// Mean cross-entropy of `logits (N, V)` against `targets (N)` (u32) over the targets that are not
/// [`IGNORE`], composed so it carries gradients (0 when every target is ignored). Half-precision
/// logits are taken in f32, and the loss is then an f32 scalar.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = &widened(logits)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_z)?;
    let t = targets.to_vec1::<u32>()?;
    if !t.contains(&IGNORE) {
        return log_probs.gather(&targets.unsqueeze(1)?, 1)?.mean_all()?.neg();
    }
    // Ignored rows pick any column (0) and are weighted out.
    let scored = t.iter().filter(|&&x| x != IGNORE).count();
    let picks: Vec<u32> = t.iter().map(|&x| if x == IGNORE { 0 } else { x }).collect();
    let weights: Vec<f32> = t.iter().map(|&x| if x == IGNORE { 0.0 } else { 1.0 / scored.max(1) as f32 }).collect();
    let picks = Tensor::from_vec(picks, (t.len(), 1), logits.device())?;
    let weights = Tensor::from_vec(weights, (t.len(), 1), logits.device())?.to_dtype(logits.dtype())?;
    (log_probs.gather(&picks, 1)? * weights)?.sum_all()?.neg()
}

/// Log-probability of each u32 target under `logits (N, V)`, 0 where the target is [`IGNORE`];
/// returns `(N)`, composed so it carries gradients. Half-precision logits are taken in f32, and the
/// log-probabilities are then f32.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = &widened(logits)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_z)?;
    let t = targets.to_vec1::<u32>()?;
    let picks: Vec<u32> = t.iter().map(|&x| if x == IGNORE { 0 } else { x }).collect();
    let keep: Vec<f32> = t.iter().map(|&x| if x == IGNORE { 0.0 } else { 1.0 }).collect();
    let picks = Tensor::from_vec(picks, (t.len(), 1), logits.device())?;
    let keep = Tensor::from_vec(keep, t.len(), logits.device())?.to_dtype(logits.dtype())?;
    log_probs.gather(&picks, 1)?.squeeze(1)? * keep
}

/// Causal attention of q `(B, H, T, hd)` against k, v `(B, KV, S, hd)` at positions
/// `start..start + T` (within packed sequences when `packing` is given): the full score matrix,
/// masked softmax, products; returns `(B, T, H · hd)`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    start: usize,
    packing: Option<&Packing>,
) -> Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    // Grouped-query attention: each key/value head serves h / kv query heads.
    let groups = h / k.dim(1)?;
    let repeat = |y: &Tensor| -> Result<Tensor> {
        if groups == 1 {
            return Ok(y.clone());
        }
        let (b, kv, s, hd) = y.dims4()?;
        y.unsqueeze(2)?.broadcast_as((b, kv, groups, s, hd))?.contiguous()?.reshape((b, kv * groups, s, hd))
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    let scores = q.contiguous()?.matmul(&k.transpose(2, 3)?.contiguous()?)?; // (B, H, T, S)
    let att = attention_softmax(&scores, scale, start, packing)?;
    let y = att.matmul(&v.contiguous()?)?; // (B, H, T, hd)
    y.transpose(1, 2)?.reshape((b, t, h * hd))
}

//! Attention's `softmax(scale · scores + causal mask)` over the last dimension, fused.
//!
//! The composite version writes the scaled scores, the masked scores, their exponentials and the
//! normalised result (each `B × H × T × S`) and keeps them for the backward pass. Here the forward
//! writes only the probabilities (zeros past each query's position), and the backward computes
//! `scale · p ⊙ (g − Σ g ⊙ p)` from the probabilities alone.

use super::simd::{self, dispatch};
use super::{f32s, rows_per_task};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Scaled, causally masked softmax: the query of row `i` (within its `T` rows) sits at position
/// `start + i` and sees keys `0..=start + i`.
#[derive(Debug, Clone, Copy)]
struct MaskedSoftmax {
    scale: f32,
    start: usize,
    t: usize,
}

impl MaskedSoftmax {
    /// Keys visible to row `r` of the flattened `(…, T, S)` tensor.
    fn visible(&self, r: usize, s: usize) -> usize {
        (self.start + r % self.t + 1).min(s)
    }
}

#[inline(always)]
fn forward_row_impl(x: &[f32], scale: f32, visible: usize, out: &mut [f32]) {
    let (xv, ov) = (&x[..visible], &mut out[..visible]);
    let m = simd::max(xv) * scale;
    let total = simd::exp_shifted(xv, scale, m, ov);
    let inv = 1.0 / total;
    ov.iter_mut().for_each(|o| *o *= inv);
    out[visible..].iter_mut().for_each(|o| *o = 0.0);
}

dispatch! {
    /// One row of probabilities.
    pub fn forward_row(x: &[f32], scale: f32, visible: usize, out: &mut [f32]) -> () = forward_row_impl;
}

#[inline(always)]
fn backward_row_impl(p: &[f32], g: &[f32], scale: f32, visible: usize, out: &mut [f32]) {
    let (pv, gv) = (&p[..visible], &g[..visible]);
    let inner = simd::dot(pv, gv);
    for ((o, &pj), &gj) in out[..visible].iter_mut().zip(pv).zip(gv) {
        *o = scale * pj * (gj - inner);
    }
    out[visible..].iter_mut().for_each(|o| *o = 0.0);
}

dispatch! {
    /// One row of the gradient with respect to the scores.
    pub fn backward_row(p: &[f32], g: &[f32], scale: f32, visible: usize, out: &mut [f32]) -> () = backward_row_impl;
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(storage, layout, self.name())?;
        let s = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        let per = rows_per_task(s);
        out.par_chunks_mut(per * s).zip(x.par_chunks(per * s)).enumerate().for_each(|(c, (o, xi))| {
            for (k, (orow, xrow)) in o.chunks_exact_mut(s).zip(xi.chunks_exact(s)).enumerate() {
                forward_row(xrow, self.scale, self.visible(c * per + k, s), orow);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &MaskedSoftmaxGrad(*self))?))
    }
}

/// The backward op: probabilities and their gradient → the gradient of the scores.
struct MaskedSoftmaxGrad(MaskedSoftmax);

impl CustomOp2 for MaskedSoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-masked-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = f32s(s1, l1, self.name())?;
        let g = f32s(s2, l2, self.name())?;
        let s = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; p.len()];
        let per = rows_per_task(s);
        let op = self.0;
        out.par_chunks_mut(per * s).enumerate().for_each(|(c, o)| {
            let base = c * per * s;
            for (k, orow) in o.chunks_exact_mut(s).enumerate() {
                let at = base + k * s;
                backward_row(&p[at..at + s], &g[at..at + s], op.scale, op.visible(c * per + k, s), orow);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `softmax(scale · scores + causal mask)` over the last dimension of contiguous f32 scores
/// `(…, T, S)` on the CPU, the `T` queries sitting at positions `start..start + T`.
pub fn masked_softmax(scores: &Tensor, scale: f64, start: usize) -> Result<Tensor> {
    let dims = scores.dims();
    let t = dims.get(dims.len().saturating_sub(2)).copied().unwrap_or(1).max(1);
    scores.contiguous()?.apply_op1(MaskedSoftmax { scale: scale as f32, start, t })
}

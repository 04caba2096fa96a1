//! RMSNorm over the last dimension, `x / sqrt(mean(x²) + eps) · w`, fused.
//!
//! The forward writes the output and keeps one inverse RMS per row; the backward writes `dx` and
//! the weight's gradient `dw = Σ_rows g ⊙ x̂` in one pass:
//! `dx = inv · (w ⊙ g − x̂ · mean(x̂ ⊙ w ⊙ g))` with `x̂ = x · inv`.

use super::simd::{self, dispatch};
use super::{f32s, rows_per_task, zeros};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

struct RmsNorm {
    eps: f32,
    inv: Mutex<Vec<f32>>,
}

#[inline(always)]
fn forward_row_impl(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> f32 {
    let inv = 1.0 / (simd::dot(x, x) / x.len() as f32 + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * wi;
    }
    inv
}

dispatch! {
    /// One normalised row; returns its inverse RMS.
    pub fn forward_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> f32 = forward_row_impl;
}

#[inline(always)]
fn backward_row_impl(x: &[f32], w: &[f32], g: &[f32], inv: f32, dx: &mut [f32], dw: &mut [f32]) {
    let d = x.len() as f32;
    let mut inner = 0f32;
    for ((&xi, &wi), &gi) in x.iter().zip(w).zip(g) {
        inner += xi * wi * gi;
    }
    let coef = inner * inv * inv / d;
    for (((o, &xi), &wi), &gi) in dx.iter_mut().zip(x).zip(w).zip(g) {
        *o = inv * (wi * gi - xi * coef);
    }
    for ((a, &xi), &gi) in dw.iter_mut().zip(x).zip(g) {
        *a += gi * xi * inv;
    }
}

dispatch! {
    /// One row of `dx`, accumulating into `dw`.
    pub fn backward_row(x: &[f32], w: &[f32], g: &[f32], inv: f32, dx: &mut [f32], dw: &mut [f32]) -> () = backward_row_impl;
}

/// Every row of `x (rows × D)` normalised into `out`, over the threads; returns the rows' inverse
/// RMS (what the backward pass needs).
pub(crate) fn forward_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Vec<f32> {
    let d = w.len().max(1);
    let per = rows_per_task(d);
    out.par_chunks_mut(per * d)
        .zip(x.par_chunks(per * d))
        .flat_map_iter(|(o, xi)| {
            o.chunks_exact_mut(d)
                .zip(xi.chunks_exact(d))
                .map(|(orow, xrow)| forward_row(xrow, w, eps, orow))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The backward pass over every row, over the threads: writes `dx` (plus `add` when given, the
/// gradient a residual connection carries past the norm) and returns the weight's gradient.
pub(crate) fn backward_rows(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    inv: &[f32],
    add: Option<&[f32]>,
    dx: &mut [f32],
) -> Vec<f32> {
    let d = w.len().max(1);
    let per = rows_per_task(d);
    // Each task accumulates its own partial dw; the partials are summed at the end.
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(per * d)
        .enumerate()
        .map(|(c, o)| {
            let mut dw = vec![0f32; d];
            for (k, orow) in o.chunks_exact_mut(d).enumerate() {
                let r = c * per + k;
                let at = r * d;
                backward_row(&x[at..at + d], w, &g[at..at + d], inv[r], orow, &mut dw);
                if let Some(add) = add {
                    orow.iter_mut().zip(&add[at..at + d]).for_each(|(o, a)| *o += a);
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; d];
    for p in partials {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    dw
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(s2, l2, self.name())?;
        let d = w.len().max(1);
        if x.len() % d != 0 {
            candle_core::bail!("rms-norm: last dimension is not {d}, the weight's length");
        }
        let mut out = zeros(x.len());
        let inv = forward_rows(x, w, self.eps, &mut out);
        *self.inv.lock().expect("not poisoned") = inv;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let inv = self.inv.lock().expect("not poisoned").clone();
        let packed = x.contiguous()?.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormGrad { inv })?;
        let rows = packed.dim(0)? - 1;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(w.shape())?;
        // A frozen gain (not tracked) gets no gradient: candle would store one anyway.
        Ok((Some(dx), w.track_op().then_some(dw)))
    }
}

/// The backward op: x, w, g → `(rows + 1, D)`: `dx` rows, then `dw`.
struct RmsNormGrad {
    inv: Vec<f32>,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(s2, l2, self.name())?;
        let g = f32s(s3, l3, self.name())?;
        let d = w.len().max(1);
        let rows = x.len() / d;
        let mut out = zeros((rows + 1) * d);
        let (dx, dw) = out.split_at_mut(rows * d);
        dw.copy_from_slice(&backward_rows(x, w, g, &self.inv, None, dx));
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, d))))
    }
}

/// RMSNorm of contiguous f32 `x (…, D)` with weight `(D)` on the CPU.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32, inv: Mutex::new(Vec::new()) })
}

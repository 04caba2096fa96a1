//! The log-probability of each target under the logits `h · Wᵀ`, as one op that never holds all
//! the logits: what preference optimisation needs (sums of a reply's token log-probabilities,
//! differentiated through a loss built on them).
//!
//! Unlike [`super::linear_cross_entropy`], whose gradient is fixed when the forward pass runs, the
//! gradient here depends on what the caller builds on the log-probabilities, so the backward pass
//! gets one incoming gradient per row and recomputes each chunk's logits (nothing is kept): `d logits_i = −g_i ·
//! (softmax_i − onehot(t_i))`, then `dh = d logits · W` and `dW = d logitsᵀ · h`. Rows whose target
//! is [`IGNORE`] give 0 and get no gradient.

use super::cross_entropy::{check_targets, grad_rows_in_place, lse_of_row};
use super::{f32s, matmul, u32s, F32View};
use crate::ops::IGNORE;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows of logits computed at a time.
const CHUNK: usize = 512;

struct LinearLogprobs;

/// The inputs of an op on the logits `h · Wᵀ` against targets: `h (N, d)`, `w (V, d)`, `N` targets.
pub(crate) struct Projected<'a> {
    pub(crate) h: &'a [f32],
    pub(crate) w: &'a [f32],
    pub(crate) targets: &'a [u32],
    pub(crate) n: usize,
    pub(crate) d: usize,
    pub(crate) v: usize,
}

/// Reads and checks [`Projected`] inputs (shapes that fit, targets inside the vocabulary or
/// ignored); errors name `op`.
pub(crate) fn projected<'a>(
    h: (&'a CpuStorage, &Layout),
    w: (&'a CpuStorage, &Layout),
    t: (&'a CpuStorage, &Layout),
    op: &str,
) -> Result<Projected<'a>> {
    let (hs, ws, targets) = (f32s(h.0, h.1, op)?, f32s(w.0, w.1, op)?, u32s(t.0, t.1, op)?);
    let ((n, d), (v, d2)) = (h.1.shape().dims2()?, w.1.shape().dims2()?);
    if d != d2 || targets.len() != n {
        candle_core::bail!("{op}: h {n}×{d}, weight {v}×{d2}, {} targets", targets.len());
    }
    check_targets(targets, v)?;
    Ok(Projected { h: hs, w: ws, targets, n, d, v })
}

/// The chunk's logits `h_c · Wᵀ` into `logits` (rows × V) and their log-sum-exps into `lse`.
pub(crate) fn chunk_logits(hc: &[f32], w: &[f32], d: usize, v: usize, logits: &mut [f32], lse: &mut [f32]) {
    let rows = hc.len() / d;
    matmul(rows, v, d, &mut logits[..rows * v], v, false, (hc, d, 1), (w, 1, d), 1.0, true);
    logits[..rows * v].par_chunks(v).zip(lse[..rows].par_iter_mut()).for_each(|(row, l)| *l = lse_of_row(row));
}

impl CustomOp3 for LinearLogprobs {
    fn name(&self) -> &'static str {
        "fused-linear-logprobs"
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
        let Projected { h, w, targets, n, d, v } = projected((s1, l1), (s2, l2), (s3, l3), self.name())?;
        let mut logits = vec![0f32; CHUNK.min(n) * v];
        let mut lse = vec![0f32; CHUNK.min(n)];
        let mut out = vec![0f32; n];
        for (c, hc) in h.chunks(CHUNK * d).enumerate() {
            let (r0, rows) = (c * CHUNK, hc.len() / d);
            chunk_logits(hc, w, d, v, &mut logits, &mut lse);
            for i in 0..rows {
                let t = targets[r0 + i];
                out[r0 + i] = if t == IGNORE { 0.0 } else { logits[i * v + t as usize] - lse[i] };
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ((n, d), (v, _)) = (h.dims2()?, w.dims2()?);
        let grad = grad.contiguous()?;
        let op = self.name();
        let views = [F32View::of(h, op)?, F32View::of(w, op)?, F32View::of(&grad, op)?];
        let [hv, wv, g] = views.each_ref().map(F32View::get);
        let targets = targets.to_vec1::<u32>()?;
        // A frozen output layer (not tracked) gets no gradient.
        let need_dw = w.track_op();
        let (mut dh, mut dw) = (vec![0f32; n * d], vec![0f32; if need_dw { v * d } else { 0 }]);
        let mut logits = vec![0f32; CHUNK.min(n) * v];
        let mut lse = vec![0f32; CHUNK.min(n)];
        for (c, hc) in hv.chunks(CHUNK * d).enumerate() {
            let (r0, rows) = (c * CHUNK, hc.len() / d);
            chunk_logits(hc, wv, d, v, &mut logits, &mut lse);
            let lg = &mut logits[..rows * v];
            // d logp / d logits = onehot − softmax: the cross-entropy gradient scaled by −g.
            lg.par_chunks_mut(v).enumerate().for_each(|(i, row)| {
                let r = r0 + i;
                grad_rows_in_place(row, &lse[i..i + 1], &targets[r..r + 1], -g[r]);
            });
            matmul(rows, d, v, &mut dh[r0 * d..(r0 + rows) * d], d, false, (lg, v, 1), (wv, d, 1), 1.0, true);
            if need_dw {
                matmul(v, d, rows, &mut dw, d, c > 0, (lg, 1, v), (hc, d, 1), 1.0, true);
            }
        }
        let dev = h.device();
        let dw = if need_dw { Some(Tensor::from_vec(dw, (v, d), dev)?) } else { None };
        Ok((Some(Tensor::from_vec(dh, (n, d), dev)?), dw, None))
    }
}

/// The log-probability of each u32 target (0 for [`IGNORE`]) under the logits `h · wᵀ`, for f32 CPU
/// tensors `h (N, d)` and `w (V, d)`; returns `(N)`, differentiable in `h` and `w`.
pub fn linear_logprobs(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    h.contiguous()?.apply_op3(&w.contiguous()?, &targets.contiguous()?, LinearLogprobs)
}

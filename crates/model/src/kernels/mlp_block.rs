//! The feed-forward half of a SwiGLU block with its residual connection as one op:
//! `y = x + (silu(n · Wgᵀ) ⊙ (n · Wuᵀ)) · Wdᵀ` with `n = rmsnorm(x)`.
//!
//! As separate ops the half is a norm, two projections, the gated down projection and an add:
//! five nodes of candle's autograd graph, each of whose gradients the graph walk zero-fills and adds
//! into on one thread while the pool waits. Here the gate and up projections are one product
//! against their weights stacked (`[Wg; Wu; norm gain]`, the caller's concatenation), the
//! residual add is the down projection accumulating into a copy of `x`, and the backward pass
//! writes one gradient per input.

use super::grad_sink::{stack, WeightGrad};
use super::rms_norm::{backward_rows, forward_rows};
use super::swiglu;
use super::{copied, f32s, matmul, new_product, rows_per_task, zeros, F32View};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

struct MlpBlock {
    eps: f32,
    /// Where the gradients of the stacked weights and of the down projection go.
    w_grad: WeightGrad,
    down_grad: WeightGrad,
    /// What the backward pass reads again: each row's inverse RMS, the normalised input and the
    /// gate and up projections side by side (`rows × 2F`).
    saved: Mutex<Option<Saved>>,
}

struct Saved {
    inv: Vec<f32>,
    normed: Vec<f32>,
    gate_up: Vec<f32>,
}

/// `(rows, D, F)` from x `(…, D)`, the stacked weights `(2F + 1, D)` and `Wd (D, F)`.
fn dims(x: &[usize], w: &[usize], down: &[usize]) -> Result<(usize, usize, usize)> {
    match (x.last(), w, down) {
        (Some(&d), &[s, wd], &[dd, f]) if wd == d && dd == d && s == 2 * f + 1 => {
            Ok((x.iter().product::<usize>() / d.max(1), d, f))
        }
        _ => candle_core::bail!(
            "mlp-block: x {x:?}, stacked weights {w:?} and down {down:?} do not fit (expected (…, D), (2F + 1, D), (D, F))"
        ),
    }
}

/// `silu(gate) ⊙ up` of every row of `gate_up (rows × 2F)`, over the threads.
fn gated(gate_up: &[f32], f: usize) -> Vec<f32> {
    let mut h = zeros(gate_up.len() / 2);
    let per = rows_per_task(f);
    h.par_chunks_mut(per * f).zip(gate_up.par_chunks(per * 2 * f)).for_each(|(h, gu)| {
        for (hrow, gurow) in h.chunks_exact_mut(f).zip(gu.chunks_exact(2 * f)) {
            let (g, u) = gurow.split_at(f);
            swiglu::forward(g, u, hrow);
        }
    });
    h
}

impl CustomOp3 for MlpBlock {
    fn name(&self) -> &'static str {
        "fused-mlp-block"
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
        let (x, w, down) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?, f32s(s3, l3, self.name())?);
        let (rows, d, f) = dims(l1.dims(), l2.dims(), l3.dims())?;
        let mut normed = zeros(rows * d);
        let inv = forward_rows(x, &w[2 * f * d..], self.eps, &mut normed);
        let gate_up = new_product(rows, 2 * f, d, (&normed, d, 1), (w, 1, d), true);
        let h = gated(&gate_up, f);
        let mut y = copied(x);
        matmul(rows, d, f, &mut y, d, true, (&h, f, 1), (down, 1, f), 1.0, true);
        *self.saved.lock().expect("not poisoned") = Some(Saved { inv, normed, gate_up });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        down: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, d, f) = dims(x.dims(), w.dims(), down.dims())?;
        let grad = grad.contiguous()?;
        let op = self.name();
        let views = [F32View::of(x, op)?, F32View::of(w, op)?, F32View::of(down, op)?, F32View::of(&grad, op)?];
        let [xv, wv, dv, g] = views.each_ref().map(F32View::get);
        let saved = self.saved.lock().expect("not poisoned");
        let Some(Saved { inv, normed, gate_up }) = saved.as_ref() else {
            candle_core::bail!("{op}: backward pass before the forward pass")
        };
        let dh = new_product(rows, f, d, (g, d, 1), (dv, f, 1), true);
        // The down projection's weight gradient needs the gated product again: recomputed (not
        // kept) in the same pass as the gate's and up's gradients, one sigmoid for both.
        let mut h = zeros(rows * f);
        let mut d_gate_up = zeros(rows * 2 * f);
        let per = rows_per_task(2 * f);
        d_gate_up.par_chunks_mut(per * 2 * f).zip(h.par_chunks_mut(per * f)).enumerate().for_each(|(c, (out, hc))| {
            for (i, (orow, hrow)) in out.chunks_exact_mut(2 * f).zip(hc.chunks_exact_mut(f)).enumerate() {
                let r = c * per + i;
                let (gate, up) = gate_up[r * 2 * f..(r + 1) * 2 * f].split_at(f);
                let (dg, du) = orow.split_at_mut(f);
                swiglu::forward_backward(gate, up, &dh[r * f..(r + 1) * f], hrow, dg, du);
            }
        });
        let d_down = self.down_grad.needed().then(|| new_product(d, f, rows, (g, 1, d), (&h, f, 1), true));
        let d_normed = new_product(rows, d, 2 * f, (&d_gate_up, 2 * f, 1), (wv, d, 1), true);
        let mut dx = zeros(rows * d);
        let d_gain = backward_rows(xv, &wv[2 * f * d..], &d_normed, inv, Some(g), &mut dx);
        let dw = self.w_grad.needed().then(|| {
            let mut dw = new_product(2 * f, d, rows, (&d_gate_up, 1, 2 * f), (normed, d, 1), true);
            dw.extend_from_slice(&d_gain);
            dw
        });
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            dw.map(|dw| self.w_grad.give(dw, w)).transpose()?.flatten(),
            d_down.map(|dd| self.down_grad.give(dd, down)).transpose()?.flatten(),
        ))
    }
}

/// `x + swiglu_down(rmsnorm(x))` for f32 CPU tensors: `x (…, D)`, `gate` and `up` `(F, D)`, the
/// norm's `gain (D)` and `down (D, F)`. Returns `(…, D)`. The op reads `[gate; up; gain]` stacked
/// `(2F + 1, D)`; with a gradient sink open the weights' gradients go there ([`super::grad_sink`]).
pub fn mlp_block(x: &Tensor, gate: &Tensor, up: &Tensor, gain: &Tensor, down: &Tensor, eps: f64) -> Result<Tensor> {
    let (stacked, w_grad) = stack(&[gate, up, gain], x.dim(candle_core::D::Minus1)?)?;
    let (down, down_grad) = stack(&[down], down.dim(candle_core::D::Minus1)?)?;
    let op = MlpBlock { eps: eps as f32, w_grad, down_grad, saved: Mutex::new(None) };
    x.contiguous()?.apply_op3(&stacked.contiguous()?, &down.contiguous()?, op)
}

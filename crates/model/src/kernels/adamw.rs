//! AdamW's update in place: one pass over each parameter that reads the gradient and writes the
//! weights and both moments, where the tensor version allocates about a dozen full-size
//! intermediates per parameter per step (and three separate in-place passes read the moments
//! twice: 11 words of memory traffic per parameter instead of 7).

use super::simd::dispatch;
use super::F32View;
use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor};
use rayon::prelude::*;
use std::cell::Cell;

/// Elements per rayon task.
const CHUNK: usize = 32_768;

/// Runs `f` on the elements of a contiguous f32 CPU tensor, writable; the tensor's storage stays
/// locked for writing meanwhile (so `f` must not touch `t` through another handle).
fn with_mut<R>(t: &Tensor, op: &'static str, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
    /// The closure, run once by candle on the locked storage.
    struct Run<F, R> {
        op: &'static str,
        f: Cell<Option<F>>,
        out: Cell<Option<Result<R>>>,
    }
    impl<F: FnOnce(&mut [f32]) -> Result<R>, R> InplaceOp1 for Run<F, R> {
        fn name(&self) -> &'static str {
            self.op
        }

        fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
            let CpuStorage::F32(v) = s else { candle_core::bail!("{}: expected f32 data", self.op) };
            let Some((a, b)) = l.contiguous_offsets() else {
                candle_core::bail!("{}: expected a contiguous tensor", self.op)
            };
            let f = self.f.take().expect("run once");
            self.out.set(Some(f(&mut v[a..b])));
            Ok(())
        }
    }
    let run = Run { op, f: Cell::new(Some(f)), out: Cell::new(None) };
    t.inplace_op1(&run)?;
    run.out.take().unwrap_or_else(|| candle_core::bail!("{op}: expected a CPU tensor"))
}

/// The constants of one update.
#[derive(Clone, Copy)]
struct Coeffs {
    /// Gradient factor (accumulation and clipping).
    scale: f32,
    beta1: f32,
    beta2: f32,
    lr: f32,
    /// Bias corrections `1 − β1^t` and `1 − β2^t`.
    bc1: f32,
    bc2: f32,
    eps: f32,
    /// `1 − lr · weight_decay`.
    keep: f32,
}

#[inline(always)]
fn update_impl(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: &Coeffs) {
    for (((wi, mi), vi), &gi) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        let x = gi * c.scale;
        *mi = c.beta1 * *mi + (1.0 - c.beta1) * x;
        *vi = c.beta2 * *vi + (1.0 - c.beta2) * (x * x);
        *wi = *wi * c.keep - c.lr * (*mi / c.bc1) / ((*vi / c.bc2).sqrt() + c.eps);
    }
}

dispatch! {
    /// `m ← β1·m + (1 − β1)·s·g`, `v ← β2·v + (1 − β2)·(s·g)²`, then
    /// `w ← w·(1 − lr·wd) − lr · (m / bc1) / (sqrt(v / bc2) + eps)`, element by element.
    fn update(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: &Coeffs) -> () = update_impl;
}

/// Settings of one AdamW update of one parameter.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay applied to this parameter (0 for undecayed ones).
    pub weight_decay: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Bias corrections `1 − β1^t` and `1 − β2^t`.
    pub bias_corrections: (f64, f64),
    /// Factor applied to the gradient first (accumulation and clipping).
    pub grad_scale: f64,
}

/// Updates contiguous f32 CPU tensors `w`, `m`, `v` in place from gradient `g`, in one pass. `w`,
/// `m`, `v` and `g` must be four different storages (each of the first three is locked for
/// writing while the pass runs).
pub fn adamw_step(w: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, s: &AdamWStep) -> Result<()> {
    const OP: &str = "adamw-update";
    let g = g.contiguous()?;
    let gv = F32View::of(&g, OP)?;
    let c = Coeffs {
        scale: s.grad_scale as f32,
        beta1: s.beta1 as f32,
        beta2: s.beta2 as f32,
        lr: s.lr as f32,
        bc1: s.bias_corrections.0 as f32,
        bc2: s.bias_corrections.1 as f32,
        eps: s.eps as f32,
        keep: 1.0 - s.lr as f32 * s.weight_decay as f32,
    };
    let n = gv.get().len();
    with_mut(w, OP, |w| {
        with_mut(m, OP, |m| {
            with_mut(v, OP, |v| {
                if w.len() != n || m.len() != n || v.len() != n {
                    candle_core::bail!(
                        "{OP}: weights {}, moments {} and {}, gradient {n} elements",
                        w.len(),
                        m.len(),
                        v.len()
                    );
                }
                let parts = w.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK));
                parts.zip(gv.get().par_chunks(CHUNK)).for_each(|(((w, m), v), g)| update(w, m, v, g, &c));
                Ok(())
            })
        })
    })
}

#[inline(always)]
fn sum_squares_impl(xs: &[f32]) -> f64 {
    // Eight f64 lanes, so that the loop vectorises (one running sum would be a serial chain).
    let mut acc = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += f64::from(c[i]) * f64::from(c[i]);
        }
    }
    acc.iter().sum::<f64>() + rest
}

dispatch! {
    /// Sum of the squares of `xs`, in f64.
    fn sum_squares_of(xs: &[f32]) -> f64 = sum_squares_impl;
}

/// Sum of squares of a contiguous f32 CPU tensor, accumulated in f64 chunk by chunk: the
/// gradient norm without an f64 copy (and a squared copy) of every gradient.
pub fn sum_squares(t: &Tensor) -> Result<f64> {
    let view = super::F32View::of(t, "sum_squares")?;
    Ok(view.get().par_chunks(CHUNK).map(sum_squares_of).sum())
}

//! SwiGLU's gate, `silu(a) ⊙ b`, fused: the composite keeps `sigmoid(a)`, `a · sigmoid(a)` and the
//! product for its backward; this writes the output only, and the backward writes both gradients
//! (`da = g ⊙ b ⊙ σ(a)(1 + a(1 − σ(a)))`, `db = g ⊙ a σ(a)`) in one pass.

use super::f32s;
use super::simd::{self, dispatch};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 16_384;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + simd::exp(-x))
}

#[inline(always)]
fn forward_impl(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x * sigmoid(x) * y;
    }
}

dispatch! {
    /// `out = silu(a) · b`.
    pub fn forward(a: &[f32], b: &[f32], out: &mut [f32]) -> () = forward_impl;
}

/// For one element: `silu(a)` and the gradients `(da, db)` of `silu(a) · b` for the incoming `g`.
#[inline(always)]
fn gradients(a: f32, b: f32, g: f32) -> (f32, f32, f32) {
    let s = sigmoid(a);
    let silu = a * s;
    (silu, g * b * (s + silu * (1.0 - s)), g * silu)
}

#[inline(always)]
fn backward_impl(a: &[f32], b: &[f32], g: &[f32], da: &mut [f32], db: &mut [f32]) {
    for i in 0..a.len().min(b.len()).min(g.len()).min(da.len()).min(db.len()) {
        (_, da[i], db[i]) = gradients(a[i], b[i], g[i]);
    }
}

dispatch! {
    /// Both gradients.
    pub fn backward(a: &[f32], b: &[f32], g: &[f32], da: &mut [f32], db: &mut [f32]) -> () = backward_impl;
}

#[inline(always)]
fn forward_backward_impl(a: &[f32], b: &[f32], g: &[f32], out: &mut [f32], da: &mut [f32], db: &mut [f32]) {
    let n = a.len().min(b.len()).min(g.len()).min(out.len()).min(da.len()).min(db.len());
    for i in 0..n {
        let silu;
        (silu, da[i], db[i]) = gradients(a[i], b[i], g[i]);
        out[i] = silu * b[i];
    }
}

dispatch! {
    /// The output `silu(a) ⊙ b` again and both gradients, from one sigmoid per element (for a
    /// backward pass that needs the recomputed output too).
    pub fn forward_backward(a: &[f32], b: &[f32], g: &[f32], out: &mut [f32], da: &mut [f32], db: &mut [f32]) -> () = forward_backward_impl;
}

/// `out = silu(a) ⊙ b` over the threads.
pub(crate) fn forward_all(a: &[f32], b: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (x, y))| forward(x, y, o));
}

/// Both gradients of `silu(a) ⊙ b` for the incoming `g`, over the threads.
pub(crate) fn backward_all(a: &[f32], b: &[f32], g: &[f32], da: &mut [f32], db: &mut [f32]) {
    da.par_chunks_mut(CHUNK).zip(db.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, (x, y))| {
        let r = c * CHUNK..(c * CHUNK + x.len());
        backward(&a[r.clone()], &b[r.clone()], &g[r], x, y);
    });
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ in shape", l1.shape(), l2.shape());
        }
        let mut out = vec![0f32; a.len()];
        forward_all(a, b, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = a.apply_op3_no_bwd(b, &grad.contiguous()?, &SwiGluGrad)?;
        let n = a.elem_count();
        let flat = packed.flatten_all()?;
        Ok((Some(flat.narrow(0, 0, n)?.reshape(a.shape())?), Some(flat.narrow(0, n, n)?.reshape(b.shape())?)))
    }
}

/// The backward op: a, b, g → `(2, …)`: `da` then `db`.
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad"
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
        let (a, b, g) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?, f32s(s3, l3, self.name())?);
        let n = a.len();
        let mut out = vec![0f32; 2 * n];
        let (da, db) = out.split_at_mut(n);
        backward_all(a, b, g, da, db);
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }
}

/// `silu(a) ⊙ b` for contiguous f32 tensors of one shape on the CPU.
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, SwiGlu)
}

//! AdamW's update and the gradient norm on the GPU (`cuda/adamw.cu`): the update in place in one
//! pass per parameter (the CPU kernel's formula), the sum of squares of every gradient into
//! per-block f64 partial sums and then one total, read back once per step instead of once per
//! parameter.

use super::{device, elementwise, grid, launch, output, ptr, Arg, ADAMW};
use crate::kernels::adamw::AdamWStep;
use candle_core::{DType, Result, Tensor};

/// Blocks of the sum of squares per gradient, at most.
const SUM_BLOCKS: usize = 1024;

/// Updates the f32 CUDA tensors `w`, `m`, `v` (contiguous, four different storages with `g`) in
/// place from gradient `g` (f32 or bf16).
pub fn adamw_step(w: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, s: &AdamWStep) -> Result<()> {
    let name = "gpu adamw";
    let n = w.elem_count();
    if [w, m, v].iter().any(|t| t.dtype() != DType::F32 || !t.is_contiguous())
        || [m, v, g].iter().any(|t| t.elem_count() != n)
    {
        candle_core::bail!("{name}: weights, moments (contiguous f32) and gradient must have {n} elements");
    }
    let g = g.contiguous()?;
    let args = [
        Arg::Ptr(ptr(w, name)?),
        Arg::Ptr(ptr(m, name)?),
        Arg::Ptr(ptr(v, name)?),
        Arg::Ptr(ptr(&g, name)?),
        Arg::Count(n as u64),
        Arg::Float(s.grad_scale as f32),
        Arg::Float(s.beta1 as f32),
        Arg::Float(s.beta2 as f32),
        Arg::Float(s.lr as f32),
        Arg::Float(s.bias_corrections.0 as f32),
        Arg::Float(s.bias_corrections.1 as f32),
        Arg::Float(s.eps as f32),
        Arg::Float(1.0 - s.lr as f32 * s.weight_decay as f32),
    ];
    launch(&device(w)?, &ADAMW, "adamw_update", g.dtype(), elementwise(n), &args)
}

/// Σ g² over every element of every gradient (CUDA tensors, f32 or bf16), in f64.
pub fn sum_squares(grads: &[&Tensor]) -> Result<f64> {
    let Some(first) = grads.first() else { return Ok(0.0) };
    let name = "gpu sum_squares";
    let dev = device(first)?;
    let blocks: Vec<usize> = grads.iter().map(|g| g.elem_count().div_ceil(256).clamp(1, SUM_BLOCKS)).collect();
    let total: usize = blocks.iter().sum();
    let partial = output(&dev, total, DType::F64)?;
    let base = ptr(&partial, name)?;
    let mut at = 0;
    for (g, &nb) in grads.iter().zip(&blocks) {
        let g = g.contiguous()?;
        let args = [Arg::Ptr(ptr(&g, name)?), Arg::Ptr(base + 8 * at as u64), Arg::Count(g.elem_count() as u64)];
        launch(&dev, &ADAMW, "sum_squares", g.dtype(), grid((nb as u32, 1, 1), (256, 1, 1)), &args)?;
        at += nb;
    }
    let sum = output(&dev, 1, DType::F64)?;
    let args = [Arg::Ptr(base), super::int(total, "partial sums")?, Arg::Ptr(ptr(&sum, name)?)];
    // The f32 and bf16 entries of sum_partials are the same code (it reads f64 only).
    launch(&dev, &ADAMW, "sum_partials", DType::F32, grid((1, 1, 1), (256, 1, 1)), &args)?;
    sum.to_vec1::<f64>().map(|v| v[0])
}

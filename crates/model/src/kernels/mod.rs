//! Fused CPU kernels with their own backward pass, as candle custom ops.
//!
//! Each replaces a chain of candle ops whose intermediates the autograd graph would keep alive
//! (one full tensor per step of the chain, forward and backward): the fused forward writes only
//! its output, the backward writes only the gradient. Rows are split over rayon's threads, and the
//! inner loops are compiled twice — for the baseline target and for AVX2 + FMA, chosen at run time
//! ([`simd`]). The composite versions in [`crate::ops`] stay as the reference the tests compare
//! against and as the path for other devices and dtypes.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod gemv;
pub mod linear_cross_entropy;
pub mod rms_norm;
pub mod rope;
pub mod simd;
pub mod swiglu;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Tensor};

/// True when `t` can take the fused CPU path: f32 on the CPU.
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// The CPU storage behind a tensor's storage guard, or an error naming the op.
fn cpu_storage<'a>(s: &'a candle_core::Storage, op: &str) -> Result<&'a CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("{op}: expected a CPU tensor"),
    }
}

/// The f32 elements of a contiguous CPU tensor, or an error naming the op.
fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: expected f32 data, got {:?}", s.dtype()) };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

/// The u32 elements of a contiguous CPU tensor, or an error naming the op.
fn u32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else { candle_core::bail!("{op}: expected u32 data, got {:?}", s.dtype()) };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

/// Rows handed to one rayon task: large enough to amortise scheduling, small enough to balance.
fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

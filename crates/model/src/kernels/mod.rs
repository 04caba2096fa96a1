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
pub mod swiglu_down;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Tensor};
use gemm::{gemm, Parallelism};

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

/// The f32 elements of a contiguous CPU tensor, held for reading (its storage stays read-locked
/// while the view lives).
pub(crate) struct F32View<'a> {
    guard: candle_core::StorageRef<'a>,
    range: std::ops::Range<usize>,
}

impl<'a> F32View<'a> {
    /// The view, or an error naming `op` if `t` is not a contiguous f32 tensor on the CPU.
    pub(crate) fn of(t: &'a Tensor, op: &str) -> Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        let len = f32s(cpu_storage(&guard, op)?, layout, op)?.len();
        let start = layout.start_offset();
        Ok(Self { guard, range: start..start + len })
    }

    /// The elements.
    pub(crate) fn get(&self) -> &[f32] {
        match &*self.guard {
            candle_core::Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            _ => unreachable!("checked in F32View::of"),
        }
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

/// `c (m × n) = a · b` (or `c += a · b`), all row-major with the given row strides, over the
/// threads; `b_t` reads b as the transpose of a row-major `(n × k)` matrix.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "product: operands smaller than their sizes");
    // (row step, column step) of each operand.
    let (ars, acs) = if a_t { (1, m) } else { (k, 1) };
    let (brs, bcs) = if b_t { (1, k) } else { (n, 1) };
    let threads = rayon::current_num_threads();
    // SAFETY: the sizes asserted above cover every index the strides reach.
    unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            acs as isize,
            ars as isize,
            b.as_ptr(),
            bcs as isize,
            brs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None },
        )
    }
}

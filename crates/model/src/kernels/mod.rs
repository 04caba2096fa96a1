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
pub mod attn_block;
pub mod cross_entropy;
pub mod gemv;
pub mod grad_sink;
pub mod linear;
pub mod linear_cross_entropy;
pub mod linear_logprobs;
pub mod mlp_block;
pub mod rms_norm;
pub mod rope;
#[cfg(target_arch = "x86_64")]
mod sgemm;
pub mod simd;
pub mod swiglu;
pub mod swiglu_down;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

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

/// Below this many floats a buffer is filled on the calling thread.
const PARALLEL_FILL_MIN: usize = 1 << 16;

/// `len` zeros, written by rayon's threads. The ops' outputs and gradients (tens of MB per training
/// step) filled on the calling thread cost more than some of the kernels, with the other threads
/// idle meanwhile (measured: 3% of a step's samples, all on one thread).
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len < PARALLEL_FILL_MIN {
        return vec![0f32; len];
    }
    // SAFETY: all-zero bytes are 0.0.
    unsafe { written_in_parallel(len, |_, to, n| std::ptr::write_bytes(to, 0, n)) }
}

/// A copy of `xs`, written by rayon's threads (as [`zeros`]).
pub(crate) fn copied(xs: &[f32]) -> Vec<f32> {
    if xs.len() < PARALLEL_FILL_MIN {
        return xs.to_vec();
    }
    // SAFETY: `start + n` never passes `xs.len()`.
    unsafe {
        written_in_parallel(xs.len(), |start, to, n| std::ptr::copy_nonoverlapping(xs.as_ptr().add(start), to, n))
    }
}

/// A vector of `len` floats whose ranges of [`PARALLEL_FILL_MIN`] are written by rayon's tasks:
/// `write(start, to, n)` writes elements `start..start + n` at `to`, one C library memset or copy
/// per range (the widest stores this CPU has, where a per-element rayon fill compiles to 16-byte
/// ones).
///
/// # Safety
/// `write` initialises all `n` floats at `to`.
unsafe fn written_in_parallel(len: usize, write: impl Fn(usize, *mut f32, usize) + Sync) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(len);
    let out = SharedOut::new(v.as_mut_ptr());
    (0..len).into_par_iter().step_by(PARALLEL_FILL_MIN).for_each(|start| {
        // Each task writes its own range, inside the capacity.
        write(start, unsafe { out.ptr().add(start) }, PARALLEL_FILL_MIN.min(len - start))
    });
    // SAFETY: every element was written (the caller's promise).
    unsafe { v.set_len(len) };
    v
}

/// A raw output pointer shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);
// SAFETY: every user writes disjoint elements from each task and keeps the buffer alive and
// otherwise unused until the tasks are joined.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Wraps the start of an output buffer.
    pub(crate) fn new(ptr: *mut f32) -> Self {
        Self(ptr)
    }

    /// The pointer (a method, so closures capture the whole wrapper rather than its field).
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// A matrix operand: its elements, the step between rows and the step between columns.
pub(crate) type Operand<'a> = (&'a [f32], usize, usize);

/// `c (m × n, row stride ldc) = scale · a · b (+ c when accumulating)`, on this thread or, with
/// `parallel`, over rayon's threads. Either operand may be a transposed view (any steps).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    a: Operand,
    b: Operand,
    scale: f32,
    parallel: bool,
) {
    if m > 0 && n > 0 {
        assert!(c.len() >= (m - 1) * ldc + n, "matmul: output too small");
    }
    // SAFETY: `c` was just checked to hold the output, and it is initialised.
    unsafe { matmul_raw(m, n, k, c.as_mut_ptr(), ldc, accumulate, a, b, scale, parallel) }
}

/// `scale · a · b` as a new row-major `m × n` vector, which the product writes once (no
/// zero-filling pass first). Arguments as for [`matmul`].
pub(crate) fn new_product(m: usize, n: usize, k: usize, a: Operand, b: Operand, parallel: bool) -> Vec<f32> {
    let mut c = Vec::with_capacity(m * n);
    // SAFETY: a product that does not accumulate writes every element of its output and reads
    // none, so the vector is initialised when its length is set.
    unsafe {
        matmul_raw(m, n, k, c.as_mut_ptr(), n, false, a, b, 1.0, parallel);
        c.set_len(m * n);
    }
    c
}

/// [`matmul`] through a pointer to the output.
///
/// # Safety
/// `c` points to `(m − 1) · ldc + n` writable floats, initialised if accumulating.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_raw(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Operand,
    b: Operand,
    scale: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 {
        assert!(a.0.len() > (m - 1) * a.1 + (k - 1) * a.2 && b.0.len() > (k - 1) * b.1 + (n - 1) * b.2);
    }
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    #[cfg(target_arch = "x86_64")]
    if sgemm::available() {
        return sgemm::matmul(m, n, k, c, ldc, accumulate, a, b, scale, threads);
    }
    // The operands were checked above, the output by the caller.
    gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        accumulate,
        a.0.as_ptr(),
        a.2 as isize,
        a.1 as isize,
        b.0.as_ptr(),
        b.2 as isize,
        b.1 as isize,
        1.0,
        scale,
        false,
        false,
        false,
        if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None },
    )
}

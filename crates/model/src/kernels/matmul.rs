//! Batched matrix products for attention, `(…, M, K) × (…, K, N)`, one whole product per thread.
//!
//! candle runs a batch of products one after another and splits each across the threads; for
//! attention's many small products (one per sequence and head, e.g. 256 × 64 × 256) that splitting
//! costs more than it saves (measured 50 GFLOP/s against 120 for large products on 2 threads).
//! Here each thread takes whole products. The last two dimensions may have any strides, so
//! transposed views (`kᵀ`, and the backward's `Bᵀ`, `Aᵀ`) are read in place without a copy.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// A batch of matrices inside a buffer: count, rows, columns and strides.
#[derive(Debug, Clone, Copy)]
struct Batched {
    batch: usize,
    rows: usize,
    cols: usize,
    batch_stride: usize,
    row_stride: isize,
    col_stride: isize,
    offset: usize,
}

fn batched(l: &Layout, op: &str) -> Result<Batched> {
    let (dims, strides) = (l.dims(), l.stride());
    let r = dims.len();
    if r < 2 {
        candle_core::bail!("{op}: expected at least 2 dimensions, got {dims:?}");
    }
    // The batch dimensions must collapse into one: each steps over whole copies of the next. Only
    // dimensions of size > 1 count; candle leaves any stride on a size-1 dimension (a tensor it
    // calls contiguous may carry a stride from before a transpose there).
    let outer: Vec<usize> = (0..r - 2).filter(|&i| dims[i] > 1).collect();
    for w in outer.windows(2) {
        if strides[w[0]] != strides[w[1]] * dims[w[1]] {
            candle_core::bail!("{op}: batch dimensions of {dims:?} with strides {strides:?} do not collapse");
        }
    }
    let batch = dims[..r - 2].iter().product();
    let batch_stride = outer.last().map_or(0, |&i| strides[i]);
    Ok(Batched {
        batch,
        rows: dims[r - 2],
        cols: dims[r - 1],
        batch_stride,
        row_stride: strides[r - 2] as isize,
        col_stride: strides[r - 1] as isize,
        offset: l.start_offset(),
    })
}

struct BatchedMatmul;

impl CustomOp2 for BatchedMatmul {
    fn name(&self) -> &'static str {
        "batched-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("{}: expected f32 operands", self.name())
        };
        let (x, y) = (batched(l1, self.name())?, batched(l2, self.name())?);
        if x.batch != y.batch || x.cols != y.rows {
            candle_core::bail!("{}: cannot multiply {:?} by {:?}", self.name(), l1.dims(), l2.dims());
        }
        let (m, k, n) = (x.rows, x.cols, y.cols);
        let mut out = vec![0f32; x.batch * m * n];
        out.par_chunks_mut(m * n).enumerate().for_each(|(i, c)| {
            let (pa, pb) = (&a[x.offset + i * x.batch_stride..], &b[y.offset + i * y.batch_stride..]);
            // SAFETY: the layouts were checked above: every index the strides reach lies in the
            // operands' storage (candle's own layout guarantees), and `c` holds exactly m × n.
            unsafe {
                gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    pa.as_ptr(),
                    x.col_stride,
                    x.row_stride,
                    pb.as_ptr(),
                    y.col_stride,
                    y.row_stride,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                )
            }
        });
        let mut dims = l1.dims().to_vec();
        let r = dims.len();
        dims[r - 1] = n;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let da = grad.apply_op2_no_bwd(&b.t()?, &BatchedMatmul)?;
        let db = a.t()?.apply_op2_no_bwd(grad, &BatchedMatmul)?;
        Ok((Some(da), Some(db)))
    }
}

/// `a × b` over the last two dimensions, batched over the others (which must match), for f32
/// tensors on the CPU; the operands may be transposed views.
pub fn batched_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.apply_op2(b, BatchedMatmul)
}

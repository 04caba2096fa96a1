//! SwiGLU's gate `silu(a) ⊙ b` on the GPU (`cuda/swiglu.cu`): the backward recomputes σ(a) from
//! the inputs instead of keeping it. Besides the candle op over two tensors, the forward and
//! backward outside the graph for the gate and up projections side by side in one `(rows, 2F)`
//! product (`forward_paired`, `backward_paired`), whose backward also returns the gated product.

use super::{alloc, device, grid, int, launch, output, ptr, storage_ptr, Arg, SWIGLU};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

struct Swiglu;

/// Blocks of 256 threads, one row at a time each (the rows beyond 65,535 taken in turn).
fn rows_grid(rows: usize) -> super::LaunchConfig {
    grid((rows.clamp(1, 65_535) as u32, 1, 1), (256, 1, 1))
}

/// `(rows, f)` of a contiguous `(…, f)` shape.
fn rows_of(shape: &Shape) -> Result<(usize, usize)> {
    let f = shape.dims().last().copied().unwrap_or(1).max(1);
    Ok((shape.elem_count() / f, f))
}

/// `h = silu(a) ⊙ b` over `rows × f`, a and b with row stride `ld`, h contiguous.
fn launch_forward(dev: &CudaDevice, dtype: DType, [a, b, h]: [u64; 3], rows: usize, f: usize, ld: usize) -> Result<()> {
    let args = [Arg::Ptr(a), Arg::Ptr(b), Arg::Ptr(h), int(rows, "rows")?, int(f, "width")?, Arg::Long(ld as i64)];
    launch(dev, &SWIGLU, "swiglu_fwd", dtype, rows_grid(rows), &args)
}

/// `(da, db)` with row stride `ld_out` from a and b (row stride `ld_in`) and g (contiguous), and h
/// too where its address is not 0.
fn launch_backward(
    dev: &CudaDevice,
    dtype: DType,
    [a, b, g, da, db, h]: [u64; 6],
    rows: usize,
    f: usize,
    (ld_in, ld_out): (usize, usize),
) -> Result<()> {
    let ptrs = [a, b, g, da, db, h].map(Arg::Ptr);
    let sizes = [int(rows, "rows")?, int(f, "width")?, Arg::Long(ld_in as i64), Arg::Long(ld_out as i64)];
    launch(dev, &SWIGLU, "swiglu_bwd", dtype, rows_grid(rows), &[&ptrs[..], &sizes].concat())
}

/// `silu(a) ⊙ b` for contiguous `a` and `b` into fresh storage.
fn forward_storage(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout) -> Result<CudaStorage> {
    let name = "gpu-swiglu";
    if la.shape() != lb.shape() {
        candle_core::bail!("{name}: gate {:?} and up {:?} differ in shape", la.shape(), lb.shape());
    }
    let (rows, f) = rows_of(la.shape())?;
    let h = alloc(&a.device, la.shape(), a.dtype())?;
    let ph = storage_ptr(&h, &Layout::contiguous(la.shape()), name)?;
    launch_forward(&a.device, a.dtype(), [storage_ptr(a, la, name)?, storage_ptr(b, lb, name)?, ph], rows, f, f)?;
    Ok(h)
}

/// The backward outside the graph: `(da, db)` from the upstream gradient.
fn backward(a: &Tensor, b: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = device(a)?;
    let (a, b, g) = (a.contiguous()?, b.contiguous()?, grad.contiguous()?);
    let name = "gpu-swiglu backward";
    let (da, db) = (output(&dev, a.shape(), a.dtype())?, output(&dev, b.shape(), b.dtype())?);
    let (rows, f) = rows_of(a.shape())?;
    let ptrs = [ptr(&a, name)?, ptr(&b, name)?, ptr(&g, name)?, ptr(&da, name)?, ptr(&db, name)?, 0];
    launch_backward(&dev, a.dtype(), ptrs, rows, f, (f, f))?;
    Ok((da, db))
}

/// `silu(gate) ⊙ up` `(rows, F)` of `gu (rows, 2F)`, the gate and up projections side by side,
/// outside the graph.
pub(crate) fn forward_paired(gu: &Tensor) -> Result<Tensor> {
    let name = "gpu swiglu (paired)";
    let gu = gu.contiguous()?;
    let (rows, f) = paired_halves(&gu, name)?;
    let width = 2 * f;
    let dev = device(&gu)?;
    let h = output(&dev, (rows, f), gu.dtype())?;
    let base = ptr(&gu, name)?;
    let half = (f * gu.dtype().size_in_bytes()) as u64;
    launch_forward(&dev, gu.dtype(), [base, base + half, ptr(&h, name)?], rows, f, width)?;
    Ok(h)
}

/// [`forward_paired`]'s backward outside the graph: the gradient `(rows, 2F)` of `gu` from the
/// upstream `g (rows, F)`, and the gated product `(rows, F)` recomputed in the same pass.
pub(crate) fn backward_paired(gu: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let name = "gpu swiglu backward (paired)";
    let (gu, g) = (gu.contiguous()?, g.contiguous()?);
    let (rows, f) = paired_halves(&gu, name)?;
    let width = 2 * f;
    if g.dims() != [rows, f] || g.dtype() != gu.dtype() {
        candle_core::bail!(
            "{name}: the gradient {:?} ({:?}) is not ({rows}, {f}) in {:?}",
            g.dims(),
            g.dtype(),
            gu.dtype()
        );
    }
    let dev = device(&gu)?;
    let (dgu, h) = (output(&dev, (rows, width), gu.dtype())?, output(&dev, (rows, f), gu.dtype())?);
    let half = (f * gu.dtype().size_in_bytes()) as u64;
    let (base, dbase) = (ptr(&gu, name)?, ptr(&dgu, name)?);
    let ptrs = [base, base + half, ptr(&g, name)?, dbase, dbase + half, ptr(&h, name)?];
    launch_backward(&dev, gu.dtype(), ptrs, rows, f, (width, width))?;
    Ok((dgu, h))
}

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "gpu-swiglu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gpu-swiglu runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((forward_storage(a, la, b, lb)?, la.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (da, db) = backward(a, b, grad)?;
        Ok((Some(da), Some(db)))
    }
}

/// `silu(gate) ⊙ up` on a CUDA device (f32 or bf16, the same for both).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dtype() != up.dtype() {
        candle_core::bail!("gpu swiglu: gate is {:?} but up {:?}", gate.dtype(), up.dtype());
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)
}

/// Rows and the half width F of `gu (rows, 2F)`, the gate and up projections side by side.
fn paired_halves(gu: &Tensor, name: &str) -> Result<(usize, usize)> {
    let (rows, width) = gu.dims2()?;
    if !width.is_multiple_of(2) {
        candle_core::bail!("{name}: {width} columns do not split into gate and up halves");
    }
    Ok((rows, width / 2))
}

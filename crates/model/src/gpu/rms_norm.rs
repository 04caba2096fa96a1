//! RMSNorm on the GPU (`cuda/rms_norm.cu`): the forward keeps one inverse RMS per row (f32), the
//! backward writes `dx` per row and the weight's gradient as partial sums over groups of rows
//! followed by their sum.

use super::{alloc, device, grid, int, launch, output, ptr, row_threads, storage_ptr, Arg, RMS_NORM};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

/// Row groups of the weight gradient's first step: enough blocks to fill a large GPU.
const DW_GROUPS: usize = 128;

/// Threads for a row of `d`: one per 16-byte chunk (the kernels take the chunks where rows are
/// aligned, single elements with the same threads otherwise).
fn threads(d: usize, dtype: candle_core::DType) -> u32 {
    row_threads(d.div_ceil(16 / dtype.size_in_bytes()))
}

struct RmsNorm {
    eps: f32,
    inv: Mutex<Option<Tensor>>,
}

/// `y = rmsnorm(x) · w` for `x (rows, D)` contiguous, into fresh storage, and each row's inverse
/// RMS (f32).
fn forward_storage(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    eps: f32,
) -> Result<(CudaStorage, Tensor)> {
    let name = "gpu-rms-norm";
    let dev = &x.device;
    let d = lw.shape().elem_count();
    let n = lx.shape().elem_count();
    if d == 0 || !n.is_multiple_of(d) {
        candle_core::bail!("{name}: last dimension of {:?} is not {d}, the weight's length", lx.shape());
    }
    let rows = n / d;
    let dtype = x.dtype();
    if w.dtype() != dtype {
        // The kernel reads the weight as x's type.
        candle_core::bail!("{name}: x is {dtype:?} but the weight is {:?}; cast one to the other", w.dtype());
    }
    let y = alloc(dev, lx.shape(), dtype)?;
    let inv = output(dev, rows, candle_core::DType::F32)?;
    let args = [
        Arg::Ptr(storage_ptr(x, lx, name)?),
        Arg::Ptr(storage_ptr(w, lw, name)?),
        Arg::Ptr(storage_ptr(&y, &Layout::contiguous(lx.shape()), name)?),
        Arg::Ptr(ptr(&inv, name)?),
        int(d, "width")?,
        Arg::Float(eps),
    ];
    launch(dev, &RMS_NORM, "rms_norm_fwd", dtype, grid((rows as u32, 1, 1), (threads(d, dtype), 1, 1)), &args)?;
    Ok((y, inv))
}

/// [`rms_norm`]'s forward outside the graph: `(y, inverse RMS per row)`.
pub(crate) fn forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let (xs, lx) = x.storage_and_layout();
    let (ws, lw) = w.storage_and_layout();
    let (Storage::Cuda(xs), Storage::Cuda(ws)) = (&*xs, &*ws) else {
        candle_core::bail!("gpu rms_norm: x and the weight must be on a CUDA device")
    };
    let (y, inv) = forward_storage(xs, lx, ws, lw, eps as f32)?;
    Ok((Tensor::from_storage(Storage::Cuda(y), x.shape(), BackpropOp::none(), false), inv))
}

/// The backward outside the graph, from the forward's inverse RMS: `dx` (plus `residual`, the
/// gradient reaching x around the norm, when given, in the same pass), and with `want_dw` the
/// weight's gradient.
pub(crate) fn backward(
    x: &Tensor,
    w: &Tensor,
    inv: &Tensor,
    grad: &Tensor,
    residual: Option<&Tensor>,
    want_dw: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let dev = device(x)?;
    let (x, g) = (x.contiguous()?, grad.contiguous()?);
    let d = w.elem_count();
    let dtype = x.dtype();
    let name = "gpu-rms-norm backward";
    if w.dtype() != dtype || g.dtype() != dtype || g.shape() != x.shape() || d == 0 || !x.elem_count().is_multiple_of(d)
    {
        candle_core::bail!(
            "{name}: x {:?} ({dtype:?}), weight {:?} ({:?}) and gradient {:?} ({:?}) must share a dtype, the gradient \
             x's shape, x's rows the weight's length",
            x.shape(),
            w.shape(),
            w.dtype(),
            g.shape(),
            g.dtype()
        );
    }
    let rows = x.elem_count() / d;
    let dx = output(&dev, x.shape(), dtype)?;
    let (xp, wp, gp, ip) = (ptr(&x, name)?, ptr(w, name)?, ptr(&g, name)?, ptr(inv, name)?);
    let residual = residual.map(|r| r.contiguous()).transpose()?;
    if residual.as_ref().is_some_and(|r| r.shape() != x.shape() || r.dtype() != dtype) {
        candle_core::bail!("{name}: the residual gradient's shape or dtype differs from x's {:?}", x.shape());
    }
    let rp = residual.as_ref().map(|r| ptr(r, name)).transpose()?.unwrap_or(0);
    let args = [
        Arg::Ptr(xp),
        Arg::Ptr(wp),
        Arg::Ptr(gp),
        Arg::Ptr(ip),
        Arg::Ptr(rp),
        Arg::Ptr(ptr(&dx, name)?),
        int(d, "width")?,
    ];
    launch(&dev, &RMS_NORM, "rms_norm_bwd_dx", dtype, grid((rows as u32, 1, 1), (threads(d, dtype), 1, 1)), &args)?;
    if !want_dw {
        return Ok((dx, None));
    }
    let groups = DW_GROUPS.min(rows.div_ceil(8)).max(1);
    let partial = output(&dev, (groups, d), candle_core::DType::F32)?;
    let pp = ptr(&partial, name)?;
    let cols = d.div_ceil(32) as u32;
    let args = [Arg::Ptr(xp), Arg::Ptr(gp), Arg::Ptr(ip), Arg::Ptr(pp), int(rows, "rows")?, int(d, "width")?];
    launch(&dev, &RMS_NORM, "rms_norm_bwd_dw_partial", dtype, grid((cols, groups as u32, 1), (32, 8, 1)), &args)?;
    let dw = output(&dev, w.shape(), w.dtype())?;
    let args = [Arg::Ptr(pp), Arg::Ptr(ptr(&dw, name)?), int(groups, "groups")?, int(d, "width")?];
    launch(
        &dev,
        &RMS_NORM,
        "rms_norm_bwd_dw_sum",
        w.dtype(),
        grid((d.div_ceil(256) as u32, 1, 1), (256, 1, 1)),
        &args,
    )?;
    Ok((dx, Some(dw)))
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "gpu-rms-norm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gpu-rms-norm runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout) -> Result<(CudaStorage, Shape)> {
        let (y, inv) = forward_storage(x, lx, w, lw, self.eps)?;
        *self.inv.lock().expect("not poisoned") = Some(inv);
        Ok((y, lx.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(inv) = self.inv.lock().expect("not poisoned").clone() else {
            candle_core::bail!("gpu-rms-norm: backward before forward")
        };
        // A frozen gain (not tracked) gets no gradient.
        let (dx, dw) = backward(x, w, &inv, grad, None, w.track_op())?;
        Ok((Some(dx), dw))
    }
}

/// RMSNorm of `x (…, D)` with weight `(D)` on a CUDA device (f32 or bf16, the same for both).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if x.dtype() != weight.dtype() {
        candle_core::bail!("gpu rms_norm: x is {:?} but the weight {:?}", x.dtype(), weight.dtype());
    }
    x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32, inv: Mutex::new(None) })
}

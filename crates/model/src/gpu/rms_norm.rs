//! RMSNorm on the GPU (`cuda/rms_norm.cu`): the forward keeps one inverse RMS per row (f32), the
//! backward writes `dx` per row and the weight's gradient as partial sums over groups of rows
//! followed by their sum.

use super::{alloc, device, grid, int, launch, output, ptr, row_threads, storage_ptr, Arg, RMS_NORM};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// Row groups of the weight gradient's first step: enough blocks to fill a large GPU.
const DW_GROUPS: usize = 128;

struct RmsNorm {
    eps: f32,
    inv: Mutex<Option<Tensor>>,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "gpu-rms-norm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gpu-rms-norm runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = &x.device;
        let d = lw.shape().elem_count();
        let n = lx.shape().elem_count();
        if d == 0 || !n.is_multiple_of(d) {
            candle_core::bail!("gpu-rms-norm: last dimension of {:?} is not {d}, the weight's length", lx.shape());
        }
        let rows = n / d;
        let dtype = x.dtype();
        let y = alloc(dev, lx.shape(), dtype)?;
        let inv = output(dev, rows, candle_core::DType::F32)?;
        let args = [
            Arg::Ptr(storage_ptr(x, lx, self.name())?),
            Arg::Ptr(storage_ptr(w, lw, self.name())?),
            Arg::Ptr(storage_ptr(&y, &Layout::contiguous(lx.shape()), self.name())?),
            Arg::Ptr(ptr(&inv, self.name())?),
            int(d, "width")?,
            Arg::Float(self.eps),
        ];
        launch(dev, &RMS_NORM, "rms_norm_fwd", dtype, grid((rows as u32, 1, 1), (row_threads(d), 1, 1)), &args)?;
        *self.inv.lock().expect("not poisoned") = Some(inv);
        Ok((y, lx.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(inv) = self.inv.lock().expect("not poisoned").clone() else {
            candle_core::bail!("gpu-rms-norm: backward before forward")
        };
        let dev = device(x)?;
        let (x, g) = (x.contiguous()?, grad.contiguous()?);
        let d = w.elem_count();
        let rows = x.elem_count() / d;
        let dtype = x.dtype();
        let name = "gpu-rms-norm backward";
        let dx = output(&dev, x.shape(), dtype)?;
        let (xp, wp, gp, ip) = (ptr(&x, name)?, ptr(w, name)?, ptr(&g, name)?, ptr(&inv, name)?);
        let args =
            [Arg::Ptr(xp), Arg::Ptr(wp), Arg::Ptr(gp), Arg::Ptr(ip), Arg::Ptr(ptr(&dx, name)?), int(d, "width")?];
        launch(&dev, &RMS_NORM, "rms_norm_bwd_dx", dtype, grid((rows as u32, 1, 1), (row_threads(d), 1, 1)), &args)?;
        // A frozen gain (not tracked) gets no gradient.
        if !w.track_op() {
            return Ok((Some(dx), None));
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
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm of `x (…, D)` with weight `(D)` on a CUDA device (f32 or bf16, the same for both).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if x.dtype() != weight.dtype() {
        candle_core::bail!("gpu rms_norm: x is {:?} but the weight {:?}", x.dtype(), weight.dtype());
    }
    x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32, inv: Mutex::new(None) })
}

//! SwiGLU's gate `silu(a) ⊙ b` on the GPU (`cuda/swiglu.cu`): the backward recomputes σ(a) from
//! the inputs instead of keeping it.

use super::{alloc, device, elementwise, launch, output, ptr, storage_ptr, Arg, SWIGLU};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

struct Swiglu;

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "gpu-swiglu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gpu-swiglu runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout) -> Result<(CudaStorage, Shape)> {
        if la.shape() != lb.shape() {
            candle_core::bail!("gpu-swiglu: gate {:?} and up {:?} differ in shape", la.shape(), lb.shape());
        }
        let n = la.shape().elem_count();
        let h = alloc(&a.device, la.shape(), a.dtype())?;
        let args = [
            Arg::Ptr(storage_ptr(a, la, self.name())?),
            Arg::Ptr(storage_ptr(b, lb, self.name())?),
            Arg::Ptr(storage_ptr(&h, &Layout::contiguous(la.shape()), self.name())?),
            Arg::Count(n as u64),
        ];
        launch(&a.device, &SWIGLU, "swiglu_fwd", a.dtype(), elementwise(n), &args)?;
        Ok((h, la.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dev = device(a)?;
        let g = grad.contiguous()?;
        let name = "gpu-swiglu backward";
        let (da, db) = (output(&dev, a.shape(), a.dtype())?, output(&dev, b.shape(), b.dtype())?);
        let n = a.elem_count();
        let args = [
            Arg::Ptr(ptr(a, name)?),
            Arg::Ptr(ptr(b, name)?),
            Arg::Ptr(ptr(&g, name)?),
            Arg::Ptr(ptr(&da, name)?),
            Arg::Ptr(ptr(&db, name)?),
            Arg::Count(n as u64),
        ];
        launch(&dev, &SWIGLU, "swiglu_bwd", a.dtype(), elementwise(n), &args)?;
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

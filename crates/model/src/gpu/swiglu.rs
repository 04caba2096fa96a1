//! SwiGLU's gate `silu(a) ⊙ b` on the GPU (`cuda/swiglu.cu`): the backward recomputes σ(a) from
//! the inputs instead of keeping it.

use super::{alloc, device, elementwise, launch, output, ptr, storage_ptr, Arg, SWIGLU};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};

struct Swiglu;

/// `silu(a) ⊙ b` for contiguous `a` and `b` into fresh storage.
fn forward_storage(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout) -> Result<CudaStorage> {
    let name = "gpu-swiglu";
    if la.shape() != lb.shape() {
        candle_core::bail!("{name}: gate {:?} and up {:?} differ in shape", la.shape(), lb.shape());
    }
    let n = la.shape().elem_count();
    let h = alloc(&a.device, la.shape(), a.dtype())?;
    let args = [
        Arg::Ptr(storage_ptr(a, la, name)?),
        Arg::Ptr(storage_ptr(b, lb, name)?),
        Arg::Ptr(storage_ptr(&h, &Layout::contiguous(la.shape()), name)?),
        Arg::Count(n as u64),
    ];
    launch(&a.device, &SWIGLU, "swiglu_fwd", a.dtype(), elementwise(n), &args)?;
    Ok(h)
}

/// [`swiglu`]'s forward outside the graph.
pub(crate) fn forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cuda(sa), Storage::Cuda(sb)) = (&*sa, &*sb) else {
        candle_core::bail!("gpu swiglu: gate and up must be on a CUDA device")
    };
    let h = forward_storage(sa, la, sb, lb)?;
    Ok(Tensor::from_storage(Storage::Cuda(h), a.shape(), BackpropOp::none(), false))
}

/// The backward outside the graph: `(da, db)` from the upstream gradient.
pub(crate) fn backward(a: &Tensor, b: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = device(a)?;
    let (a, b, g) = (a.contiguous()?, b.contiguous()?, grad.contiguous()?);
    let name = "gpu-swiglu backward";
    let (da, db) = (output(&dev, a.shape(), a.dtype())?, output(&dev, b.shape(), b.dtype())?);
    let n = a.elem_count();
    let args = [
        Arg::Ptr(ptr(&a, name)?),
        Arg::Ptr(ptr(&b, name)?),
        Arg::Ptr(ptr(&g, name)?),
        Arg::Ptr(ptr(&da, name)?),
        Arg::Ptr(ptr(&db, name)?),
        Arg::Count(n as u64),
    ];
    launch(&dev, &SWIGLU, "swiglu_bwd", a.dtype(), elementwise(n), &args)?;
    Ok((da, db))
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

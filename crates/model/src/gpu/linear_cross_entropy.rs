//! The output projection and the mean cross-entropy on the GPU without the whole `N × V` logits:
//! rows are taken a chunk at a time, the chunk's logits come from one product (cuBLAS through
//! candle), `cuda/cross_entropy.cu` turns them into the rows' losses and, in place, into their
//! gradient, and both products of the backward (`dh = G · W`, `dW += Gᵀ · h`) follow at once. The
//! forward pass thus computes `dh` and `dW` of the mean loss; the backward only scales them by the
//! incoming gradient. `dW` is summed over chunks in f32.

use super::{alloc, device, int, launch, output, ptr, storage_ptr, Arg, CROSS_ENTROPY};
use crate::ops::IGNORE;
use candle_core::cuda_backend::cudarc::driver::result::memcpy_dtod_async;
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Logits held at a time: 2²⁷ values (256 MiB in bf16), 4,096 rows at 32,768 words.
const CHUNK_VALUES: usize = 1 << 27;

/// Records the loss computed outside the graph as a node over `h` and `w`, with its gradients.
struct Loss {
    loss: Tensor,
    dh: Option<Tensor>,
    dw: Option<Tensor>,
}

impl CustomOp2 for Loss {
    fn name(&self) -> &'static str {
        "gpu-linear-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gpu-linear-cross-entropy runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, h: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let shape = Shape::from(());
        let out = alloc(&h.device, &shape, DType::F32)?;
        let dst = storage_ptr(&out, &Layout::contiguous(&shape), self.name())?;
        let stream = h.device.cuda_stream();
        // SAFETY: one f32 from the loss tensor (alive in self) into the fresh scalar, on the stream
        // that wrote it.
        unsafe { memcpy_dtod_async(dst, ptr(&self.loss, self.name())?, 4, stream.cu_stream()) }.w()?;
        Ok((out, shape))
    }

    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scaled = |g: &Option<Tensor>, dtype: DType| -> Result<Option<Tensor>> {
            g.as_ref().map(|g| g.broadcast_mul(&grad.to_dtype(g.dtype())?)?.to_dtype(dtype)).transpose()
        };
        Ok((scaled(&self.dh, h.dtype())?, scaled(&self.dw, w.dtype())?))
    }
}

/// Mean cross-entropy of the logits `h · wᵀ` (`h (N, d)`, `w (V, d)`, f32 or bf16) against u32
/// `targets (N)` that are not [`IGNORE`], on a CUDA device; an f32 scalar.
pub fn linear_cross_entropy(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let name = "gpu linear_cross_entropy";
    let ((n, d), (v, dw_)) = (h.dims2()?, w.dims2()?);
    if d != dw_ || targets.dims() != [n] || h.dtype() != w.dtype() {
        candle_core::bail!(
            "{name}: h {:?} {:?}, w {:?} {:?} and targets {:?} do not fit",
            h.dims(),
            h.dtype(),
            w.dims(),
            w.dtype(),
            targets.dims()
        );
    }
    let host: Vec<u32> = targets.to_vec1()?;
    if let Some(bad) = host.iter().find(|&&t| t != IGNORE && t as usize >= v) {
        candle_core::bail!("{name}: target {bad} is outside the vocabulary of {v}");
    }
    let scored = host.iter().filter(|&&t| t != IGNORE).count();
    let dev = device(h)?;
    let (hd, wd, targets) = (h.detach().contiguous()?, w.detach().contiguous()?, targets.contiguous()?);
    let (need_dh, need_dw) = (h.track_op(), w.track_op());
    let grads = need_dh || need_dw;
    let scale = 1.0 / scored.max(1) as f32;
    let chunk = (CHUNK_VALUES / v).max(1);
    let mut loss = Tensor::zeros((), DType::F32, h.device())?;
    let (mut dh_parts, mut dw): (Vec<Tensor>, Option<Tensor>) = (Vec::new(), None);
    for start in (0..n).step_by(chunk) {
        let rows = chunk.min(n - start);
        let hc = hd.narrow(0, start, rows)?;
        let logits = hc.matmul(&wd.t()?)?.contiguous()?;
        let row_loss = output(&dev, rows, DType::F32)?;
        let args = [
            Arg::Ptr(ptr(&logits, name)?),
            Arg::Ptr(ptr(&targets.narrow(0, start, rows)?, name)?),
            Arg::Ptr(ptr(&row_loss, name)?),
            int(v, "vocabulary")?,
            Arg::Float(scale),
            Arg::Int(i32::from(grads)),
        ];
        let cfg = super::grid((rows as u32, 1, 1), (1024, 1, 1));
        launch(&dev, &CROSS_ENTROPY, "cross_entropy_rows", h.dtype(), cfg, &args)?;
        loss = (loss + row_loss.sum_all()?)?;
        // `logits` now holds the chunk's gradient.
        if need_dh {
            dh_parts.push(logits.matmul(&wd)?);
        }
        if need_dw {
            let part = logits.t()?.matmul(&hc)?.to_dtype(DType::F32)?;
            dw = Some(match dw {
                None => part,
                Some(acc) => (acc + part)?,
            });
        }
    }
    let loss = (loss * f64::from(scale))?;
    let dh = if need_dh { Some(Tensor::cat(&dh_parts, 0)?) } else { None };
    h.apply_op2(w, Loss { loss, dh, dw })
}

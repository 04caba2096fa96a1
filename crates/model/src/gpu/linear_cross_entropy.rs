//! The output projection and the mean cross-entropy on the GPU without the whole `N × V` logits:
//! rows are taken a chunk at a time, the chunk's logits come from one product (cuBLAS through
//! candle), `cuda/cross_entropy.cu` turns them into the rows' losses and, in place, into their
//! gradient, and both products of the backward (`dh = G · W`, `dW += Gᵀ · h`) follow at once. The
//! forward pass thus computes `dh` and `dW` of the mean loss; the backward only scales them by the
//! incoming gradient. `dW` is summed over chunks in f32 by cuBLASLt, each chunk's product added
//! into the sum in place ([`super::matmul`]).

use super::{device, int, launch, output, ptr, storage_copy, Arg, CROSS_ENTROPY};
use crate::ops::IGNORE;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Logits held at a time: 2²⁷ values (256 MiB in bf16), 4,096 rows at 32,768 words.
const CHUNK_VALUES: usize = 1 << 27;

/// Rows per chunk at a vocabulary of `v`.
pub(super) fn chunk_rows_for(v: usize) -> usize {
    (CHUNK_VALUES / v).max(1)
}

/// The logits `hc · wᵀ` of one chunk of rows and the rows' losses (`lse − x[target]`, 0 where
/// ignored); with `write_grad`, the logits are turned in place into the loss's gradient
/// `(softmax − onehot) · scale`, times `row_scale` per row when given.
pub(super) fn chunk_rows(
    hc: &Tensor,
    wd: &Tensor,
    targets: &Tensor,
    scale: f32,
    row_scale: Option<&Tensor>,
    write_grad: bool,
) -> Result<(Tensor, Tensor)> {
    let name = "gpu cross-entropy rows";
    let dev = device(hc)?;
    let (rows, v) = (hc.dim(0)?, wd.dim(0)?);
    let logits = hc.matmul(&wd.t()?)?.contiguous()?;
    let row_loss = output(&dev, rows, DType::F32)?;
    let row_scale = row_scale.map(|r| r.to_dtype(DType::F32)?.contiguous()).transpose()?;
    let args = [
        Arg::Ptr(ptr(&logits, name)?),
        Arg::Ptr(ptr(targets, name)?),
        Arg::Ptr(ptr(&row_loss, name)?),
        int(v, "vocabulary")?,
        Arg::Float(scale),
        Arg::Ptr(match &row_scale {
            Some(r) => ptr(r, name)?,
            None => 0,
        }),
        Arg::Int(i32::from(write_grad)),
    ];
    let cfg = super::grid((rows as u32, 1, 1), (1024, 1, 1));
    launch(&dev, &CROSS_ENTROPY, "cross_entropy_rows", hc.dtype(), cfg, &args)?;
    Ok((logits, row_loss))
}

/// Shapes and targets checked: `(N, V, the targets on the host)`.
pub(super) fn checked(h: &Tensor, w: &Tensor, targets: &Tensor, name: &str) -> Result<(usize, usize, Vec<u32>)> {
    let ((n, d), (v, dw)) = (h.dims2()?, w.dims2()?);
    if d != dw || targets.dims() != [n] || h.dtype() != w.dtype() {
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
    Ok((n, v, host))
}

/// The backward's two products over chunks: `dh` chunk by chunk, `dW` summed in f32.
#[derive(Default)]
pub(super) struct Backward {
    dh: Vec<Tensor>,
    dw: Option<Tensor>,
}

impl Backward {
    /// Adds one chunk: `grad` the gradient of its logits, `hc` its rows of `h`.
    pub(super) fn add(&mut self, grad: &Tensor, hc: &Tensor, wd: &Tensor, (dh, dw): (bool, bool)) -> Result<()> {
        if dh {
            self.dh.push(grad.matmul(wd)?);
        }
        if dw {
            // Products straight into the f32 sum: the first chunk makes it, the rest add into it.
            let gt = grad.t()?;
            self.dw = Some(match self.dw.take() {
                None => super::matmul::matmul(&gt, hc, None, DType::F32)?,
                Some(acc) => super::matmul::accumulate(acc, &gt, hc)?,
            });
        }
        Ok(())
    }

    /// `dh` whole (when asked for) and `dW` in f32.
    pub(super) fn finish(self) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dh = if self.dh.is_empty() { None } else { Some(Tensor::cat(&self.dh, 0)?) };
        Ok((dh, self.dw))
    }
}

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

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((storage_copy(&self.loss, self.name())?, Shape::from(())))
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
    let (n, v, host) = checked(h, w, targets, "gpu linear_cross_entropy")?;
    let scored = host.iter().filter(|&&t| t != IGNORE).count();
    let (hd, wd, targets) = (h.detach().contiguous()?, w.detach().contiguous()?, targets.contiguous()?);
    let (need_dh, need_dw) = (h.track_op(), w.track_op());
    let grads = need_dh || need_dw;
    let scale = 1.0 / scored.max(1) as f32;
    let chunk = chunk_rows_for(v);
    let mut loss = Tensor::zeros((), DType::F32, h.device())?;
    let mut back = Backward::default();
    for start in (0..n).step_by(chunk) {
        let rows = chunk.min(n - start);
        let hc = hd.narrow(0, start, rows)?;
        let (logits, row_loss) = chunk_rows(&hc, &wd, &targets.narrow(0, start, rows)?, scale, None, grads)?;
        loss = (loss + row_loss.sum_all()?)?;
        // `logits` now holds the chunk's gradient.
        back.add(&logits, &hc, &wd, (need_dh, need_dw))?;
    }
    let loss = (loss * f64::from(scale))?;
    let (dh, dw) = back.finish()?;
    h.apply_op2(w, Loss { loss, dh, dw })
}

//! Per-target log-probabilities through the output projection on the GPU, `(N)` f32, without the
//! whole `N × V` logits: the forward takes rows a chunk at a time through the cross-entropy rows
//! kernel (`log p = −loss`); the backward recomputes each chunk's logits and turns them in place
//! into `(onehot − softmax) · g` with the incoming per-row gradient `g`, then into `dh` and `dW`
//! (summed in f32) — the preference losses' sequence log-probabilities on the GPU.

use super::linear_cross_entropy::{checked, chunk_rows, chunk_rows_for, Backward};
use super::storage_copy;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Records log-probabilities computed outside the graph as a node over `h` and `w`.
struct Logprobs {
    /// `h` and `w` detached and contiguous, and the targets, for the backward's recomputation.
    h: Tensor,
    w: Tensor,
    targets: Tensor,
    out: Tensor,
}

impl CustomOp2 for Logprobs {
    fn name(&self) -> &'static str {
        "gpu-linear-logprobs"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gpu-linear-logprobs runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((storage_copy(&self.out, self.name())?, self.out.shape().clone()))
    }

    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        let (n, v) = (self.h.dim(0)?, self.w.dim(0)?);
        let chunk = chunk_rows_for(v);
        let mut back = Backward::default();
        for start in (0..n).step_by(chunk) {
            let rows = chunk.min(n - start);
            let hc = self.h.narrow(0, start, rows)?;
            let (targets, g) = (self.targets.narrow(0, start, rows)?, grad.narrow(0, start, rows)?);
            // d log p / d logits = onehot − softmax: the kernel's (softmax − onehot) times −g.
            let (logits, _) = chunk_rows(&hc, &self.w, &targets, -1.0, Some(&g), true)?;
            back.add(&logits, &hc, &self.w, (h.track_op(), w.track_op()))?;
        }
        let (dh, dw) = back.finish()?;
        Ok((dh.map(|t| t.to_dtype(h.dtype())).transpose()?, dw.map(|t| t.to_dtype(w.dtype())).transpose()?))
    }
}

/// The log-probability of each u32 target under the logits `h · wᵀ` (`h (N, d)`, `w (V, d)`, f32
/// or bf16, on a CUDA device), 0 for [`crate::ops::IGNORE`]; `(N)` f32.
pub fn linear_logprobs(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, v, _) = checked(h, w, targets, "gpu linear_logprobs")?;
    let (hd, wd, targets) = (h.detach().contiguous()?, w.detach().contiguous()?, targets.contiguous()?);
    let chunk = chunk_rows_for(v);
    let mut parts = Vec::new();
    for start in (0..n).step_by(chunk) {
        let rows = chunk.min(n - start);
        let (_, loss) =
            chunk_rows(&hd.narrow(0, start, rows)?, &wd, &targets.narrow(0, start, rows)?, 1.0, None, false)?;
        parts.push(loss.neg()?);
    }
    let out = Tensor::cat(&parts, 0)?;
    h.apply_op2(w, Logprobs { h: hd, w: wd, targets, out })
}

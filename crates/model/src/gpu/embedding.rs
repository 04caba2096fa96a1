//! Embedding lookup on the GPU with a backward of its own (`cuda/embedding.cu`). The forward is
//! candle's row gather. The backward sums each table row's gradient over the tokens that looked it
//! up, one block per id present, in an order fixed on the host (the ids read back and grouped by a
//! counting sort), so it is the same bits run after run. candle's index-add would give one thread to each column and walk every token in turn: 768
//! threads stepping through 32,768 rows at the reference shape, most of a training step.

use super::{device, grid, int, launch, ptr, Arg, EMBEDDING};
use crate::ops::rows_by_id::group_by_id;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

struct Embedding;

impl CustomOp2 for Embedding {
    fn name(&self) -> &'static str {
        "gpu-embedding"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gpu-embedding runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        table: &CudaStorage,
        lt: &Layout,
        ids: &CudaStorage,
        li: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (_, d) = lt.shape().dims2()?;
        let rows = table.index_select(ids, lt, li, 0)?;
        Ok((rows, Shape::from((li.shape().elem_count(), d))))
    }

    fn bwd(&self, table: &Tensor, ids: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let name = "gpu-embedding backward";
        let (vocab, d) = table.dims2()?;
        let n = ids.elem_count();
        let grad = grad.contiguous()?;
        if grad.dims() != [n, d] || grad.dtype() != table.dtype() {
            candle_core::bail!(
                "{name}: gradient {:?} ({:?}) is not ({n}, {d}) in {:?}",
                grad.dims(),
                grad.dtype(),
                table.dtype()
            );
        }
        // Grouped here rather than in the forward, which then costs decoding nothing: the read
        // waits for the backward's work so far (this op, a forward's first, comes last in it), and
        // what remains of a step is short.
        let (groups, present) = group_by_id(&ids.to_vec1::<u32>()?, vocab)?;
        // The sum in f32 whatever the table's type, cast at the end; rows no token looked up stay 0.
        let sum = Tensor::zeros((vocab, d), DType::F32, table.device())?;
        if present > 0 {
            let groups = Tensor::from_vec(groups, n + 2 * present + 1, table.device())?;
            let at = ptr(&groups, name)?;
            let (starts, ids_at) = (at + 4 * n as u64, at + 4 * (n + present + 1) as u64);
            let args = [
                Arg::Ptr(at),
                Arg::Ptr(starts),
                Arg::Ptr(ids_at),
                Arg::Ptr(ptr(&grad, name)?),
                Arg::Ptr(ptr(&sum, name)?),
                int(d, "width")?,
            ];
            let cfg = grid((present as u32, 1, 1), (super::row_threads(d).min(256), 1, 1));
            launch(&device(table)?, &EMBEDDING, "embedding_bwd", grad.dtype(), cfg, &args)?;
        }
        Ok((Some(sum.to_dtype(table.dtype())?), None))
    }
}

/// Rows `ids` (u32, any shape) of `table (vocab, D)` on a CUDA device, shaped `ids.dims() + [D]`,
/// differentiable with respect to the table.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if ids.dtype() != DType::U32 {
        candle_core::bail!("gpu-embedding: ids must be u32, got {:?}", ids.dtype());
    }
    let mut dims = ids.dims().to_vec();
    dims.push(table.dim(1)?);
    table.apply_op2(&ids.flatten_all()?.contiguous()?, Embedding)?.reshape(dims)
}

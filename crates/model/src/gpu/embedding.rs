//! Embedding lookup on the GPU with a backward of its own (`cuda/embedding.cu`). The forward is
//! candle's row gather; the backward adds each looked-up row's gradient into its table row with
//! one thread per element, where candle's index-add gives one thread to each column and walks every
//! token in turn: 768 threads stepping through 32,768 rows at the reference shape, most of a
//! training step.

use super::{device, grid, int, launch, ptr, Arg, EMBEDDING};
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
        let (ids, grad) = (ids.contiguous()?, grad.contiguous()?);
        if grad.dims() != [n, d] || grad.dtype() != table.dtype() {
            candle_core::bail!(
                "{name}: gradient {:?} ({:?}) is not ({n}, {d}) in {:?}",
                grad.dims(),
                grad.dtype(),
                table.dtype()
            );
        }
        let dev = device(table)?;
        // The sum in f32 whatever the table's type, cast at the end.
        let sum = Tensor::zeros((vocab, d), DType::F32, table.device())?;
        let args = [
            Arg::Ptr(ptr(&ids, name)?),
            Arg::Ptr(ptr(&grad, name)?),
            Arg::Ptr(ptr(&sum, name)?),
            int(n, "tokens")?,
            int(d, "width")?,
            int(vocab, "vocabulary")?,
        ];
        // Each thread takes elements a grid's width apart; a few waves of blocks cover the device.
        let blocks = (n * d).div_ceil(256).clamp(1, 8192) as u32;
        launch(&dev, &EMBEDDING, "embedding_bwd", grad.dtype(), grid((blocks, 1, 1), (256, 1, 1)), &args)?;
        Ok((Some(sum.to_dtype(table.dtype())?), None))
    }
}

/// Rows `ids` (u32, any shape) of `table (vocab, D)` on a CUDA device, shaped `ids.dims() + [D]`,
/// differentiable with respect to the table.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if ids.dtype() != DType::U32 {
        candle_core::bail!("gpu-embedding: ids must be u32, got {:?}", ids.dtype());
    }
    let d = table.dim(1)?;
    let mut dims = ids.dims().to_vec();
    dims.push(d);
    table.apply_op2(&ids.flatten_all()?.contiguous()?, Embedding)?.reshape(dims)
}

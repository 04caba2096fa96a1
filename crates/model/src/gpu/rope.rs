//! Rotary embeddings on the GPU (`cuda/rope.cu`). The input is read and the output written through
//! strides, so the projections' `(B, T, H, hd)` output transposed to `(B, H, T, hd)` needs no copy
//! in, and the output can be contiguous or the input's own place. The backward is the rotation by
//! the opposite angle.

use super::{alloc, grid, int, launch, ptr, storage_base, storage_ptr, Arg, ROPE};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

struct Rope {
    cos: Tensor,
    sin: Tensor,
    start: usize,
}

impl Rope {
    /// Rotates `x` (its storage as `l` describes it, last dimension contiguous) by `sign` times the
    /// tables' angles into `out`, an address and the (b, head, position) strides of a layout of the
    /// same shape; `out` may be x's own place (each pair is read before it is written).
    fn launch(&self, x: &CudaStorage, l: &Layout, sign: f32, out: (u64, [usize; 3])) -> Result<()> {
        let name = "gpu-rope";
        let (b, h, t, hd) = l.shape().dims4()?;
        let (rows, half) = self.cos.dims2()?;
        let st = l.stride();
        if hd != 2 * half || self.start + t > rows || st[3] != 1 {
            candle_core::bail!(
                "{name}: x {:?} (strides {st:?}) does not fit tables {:?} at start {}",
                l.dims(),
                self.cos.dims(),
                self.start
            );
        }
        let dtype = x.dtype();
        let (cos, sin) = (self.cos.to_dtype(dtype)?.contiguous()?, self.sin.to_dtype(dtype)?.contiguous()?);
        let n = b * h * t;
        let mut args = vec![
            Arg::Ptr(storage_base(x, l.start_offset(), name)?),
            Arg::Ptr(ptr(&cos, name)?),
            Arg::Ptr(ptr(&sin, name)?),
            Arg::Ptr(out.0),
            int(h, "heads")?,
            int(t, "positions")?,
            int(hd, "head_dim")?,
        ];
        args.extend(st[..3].iter().chain(&out.1).map(|&x| Arg::Long(x as i64)));
        args.extend([int(self.start, "start")?, Arg::Float(sign), int(n, "rows")?]);
        // Eight rows of (b, head, position) per block, 32 threads along each.
        let cfg = grid((n.div_ceil(8).clamp(1, 65_535) as u32, 1, 1), (32, 8, 1));
        launch(&x.device, &ROPE, "rope", dtype, cfg, &args)
    }

    /// `x` rotated by `sign` into new contiguous storage.
    fn rotate(&self, x: &CudaStorage, l: &Layout, sign: f32) -> Result<CudaStorage> {
        let (_, h, t, hd) = l.shape().dims4()?;
        let y = alloc(&x.device, l.shape(), x.dtype())?;
        let strides = [h * t * hd, t * hd, hd];
        self.launch(x, l, sign, (storage_ptr(&y, &Layout::contiguous(l.shape()), "gpu-rope")?, strides))?;
        Ok(y)
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "gpu-rope"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gpu-rope runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((self.rotate(x, l, 1.0)?, l.shape().clone()))
    }

    /// The rotation of the gradient by the opposite angles, outside the graph.
    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = rows_contiguous(grad)?;
        let (s, l) = grad.storage_and_layout();
        let Storage::Cuda(c) = &*s else { candle_core::bail!("gpu-rope: gradient not on a CUDA device") };
        let y = self.rotate(c, l, -1.0)?;
        Ok(Some(Tensor::from_storage(Storage::Cuda(y), grad.shape(), BackpropOp::none(), false)))
    }
}

/// `x (B, H, T, hd)` (rows contiguous) rotated in place by the tables' angles from `start`, outside
/// the graph: for a tensor made outside the graph that nothing has read yet (the query and key parts
/// of a fresh projection), so no other reader sees the change. (The attention backward's kernels
/// take the gradients back through the rotation themselves.)
pub(crate) fn rotate_in_place(x: &Tensor, cos: &Tensor, sin: &Tensor, start: usize) -> Result<()> {
    let op = Rope { cos: cos.clone(), sin: sin.clone(), start };
    let (s, l) = x.storage_and_layout();
    let Storage::Cuda(c) = &*s else { candle_core::bail!("gpu-rope: x not on a CUDA device") };
    let st = l.stride();
    if st.len() != 4 {
        candle_core::bail!("gpu-rope: x {:?} is not (B, H, T, hd)", l.dims());
    }
    op.launch(c, l, 1.0, (storage_base(c, l.start_offset(), "gpu-rope")?, [st[0], st[1], st[2]]))
}

/// RoPE of `x (B, H, T, hd)` (any strides with the last dimension contiguous) at positions
/// `start..start + T`, from the tables of [`crate::ops::rope_tables`], on a CUDA device.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, start: usize) -> Result<Tensor> {
    let x = rows_contiguous(x)?;
    x.apply_op1(Rope { cos: cos.clone(), sin: sin.clone(), start })
}

/// `t` itself when its rows (last dimension) are contiguous, which is all the strided kernel
/// needs, else a contiguous copy.
fn rows_contiguous(t: &Tensor) -> Result<Tensor> {
    if t.stride().last() == Some(&1) {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

//! Causal attention on the GPU without the `(T × S)` scores (`cuda/attention.cu`, after
//! FlashAttention-2): the forward keeps each query row's log-sum-exp, the backward recomputes the
//! probabilities tile by tile (one kernel for dQ, one for dK and dV). In bf16 every product runs on
//! the tensor cores (`cuda/attention_tc.cu`); f32 keeps FMA kernels (`cuda/attention.cu`). Queries, keys and values are
//! read through their strides; grouped-query heads and packed rows are handled in the kernels.
//! The output is `(B, T, H · hd)`, ready for the output projection.

use super::{alloc, device, int, launch, output, ptr, storage_base, Arg, LaunchConfig, ATTENTION, ATTENTION_TC};
use crate::packing::Packing;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

/// Rows per tile and threads per block, as in the kernels.
const TILE: usize = 64;
const THREADS: u32 = 256;

/// Elements every row of q, k and v starts on (their strides and offsets are multiples of it): the
/// tensor-core kernels read 16 bytes at a time.
const ALIGN: usize = 8;

/// Head sizes the kernels are built for.
pub const HEAD_DIMS: [usize; 2] = [64, 128];

/// The op, and what its forward and backward share outside the graph ([`Attention::forward`],
/// [`Attention::backward`]).
pub(crate) struct Attention {
    scale: f32,
    start: usize,
    /// Per position of the batch, where its packed sequence starts (u32 on the device).
    seg: Option<Tensor>,
    /// Each query row's log-sum-exp `(B, H, T)`, from the forward.
    lse: Mutex<Option<Tensor>>,
}

/// What every kernel takes about q, k and v: their addresses, and their (b, head, position)
/// strides after the scalars.
struct Operands {
    ptrs: [Arg; 3],
    strides: [Arg; 9],
}

impl Operands {
    fn of(parts: [(&CudaStorage, &Layout); 3]) -> Result<Self> {
        let dtypes = parts.map(|(s, _)| s.dtype());
        if dtypes[1..].iter().any(|&d| d != dtypes[0]) {
            // The kernels read all three as one element type.
            candle_core::bail!("gpu-attention: q, k and v must share a dtype, got {dtypes:?}");
        }
        let mut ptrs = Vec::with_capacity(3);
        let mut strides = Vec::with_capacity(9);
        for ((s, l), what) in parts.into_iter().zip(["q", "k", "v"]) {
            let st = l.stride();
            if l.dims().len() != 4 || !rows_aligned(l) {
                candle_core::bail!(
                    "gpu-attention: {what} {:?} (strides {st:?}, offset {}) needs 4 dimensions, the last \
                     contiguous, the others and the offset multiples of {ALIGN}",
                    l.dims(),
                    l.start_offset()
                );
            }
            ptrs.push(Arg::Ptr(storage_base(s, l.start_offset(), "gpu-attention")?));
            strides.extend(st[..3].iter().map(|&x| Arg::Long(x as i64)));
        }
        let ptrs = ptrs.try_into().unwrap_or_else(|_| unreachable!("three operands"));
        let strides = strides.try_into().unwrap_or_else(|_| unreachable!("three operands"));
        Ok(Self { ptrs, strides })
    }

    /// `ptrs`, then `middle`, then `scalars`, then the strides: every kernel's argument order.
    fn args(self, middle: impl IntoIterator<Item = Arg>, scalars: [Arg; 6]) -> Vec<Arg> {
        self.ptrs.into_iter().chain(middle).chain(scalars).chain(self.strides).collect()
    }
}

/// The three kernels of the op.
#[derive(Clone, Copy)]
enum Kernel {
    Forward,
    Dq,
    Dkv,
}

/// Launches `kernel` for head size `hd`: in bf16 the tensor-core version (attention_tc.cu, four
/// warps), in f32 the FMA one (attention.cu, 256 threads), each with the shared memory its layout
/// takes (64-row tiles: f32 rows padded by 4; bf16 rows padded by 8, each tile the walk loads
/// twice over, one pair loading while the other is used).
fn run(dev: &CudaDevice, kernel: Kernel, dtype: DType, hd: usize, grid: (u32, u32, u32), args: &[Arg]) -> Result<()> {
    let f32_tile = TILE * (hd + 4) * 4;
    let bf16_tile = TILE * (hd + 8) * 2;
    let (name, block, bytes) = match (kernel, dtype) {
        (Kernel::Forward, DType::BF16) => ("attention_fwd_tc", 128, 4 * bf16_tile),
        (Kernel::Dq, DType::BF16) => ("attention_bwd_dq_tc", 128, 4 * bf16_tile),
        (Kernel::Dkv, DType::BF16) => ("attention_bwd_dkv_tc", 128, 6 * bf16_tile + 4 * TILE * 4),
        (Kernel::Forward, _) => ("attention_fwd", THREADS, 3 * f32_tile),
        (Kernel::Dq, _) => ("attention_bwd_dq", THREADS, 4 * f32_tile),
        (Kernel::Dkv, _) => ("attention_bwd_dkv", THREADS, 4 * f32_tile + 2 * TILE * 4),
    };
    let module = if dtype == DType::BF16 { &ATTENTION_TC } else { &ATTENTION };
    let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: bytes as u32 };
    launch(dev, module, &format!("{name}_hd{hd}"), dtype, cfg, args)
}

impl Attention {
    /// Sizes `(b, h, kv, t, s, hd)` from the operands' shapes, checked.
    fn sizes(&self, q: &Shape, k: &Shape, v: &Shape) -> Result<(usize, usize, usize, usize, usize, usize)> {
        let (b, h, t, hd) = q.dims4()?;
        let (bk, kv, s, hdk) = k.dims4()?;
        if (bk, hdk) != (b, hd) || k != v || kv == 0 || h % kv != 0 || !HEAD_DIMS.contains(&hd) || s < self.start + t {
            candle_core::bail!("gpu-attention: q {q:?}, k {k:?} and v {v:?} do not fit (start {})", self.start);
        }
        if b * h > 65_535 || t == 0 {
            // A block per (batch row, head) on the grid's second axis, which holds 65,535.
            candle_core::bail!("gpu-attention: batch {b} × {h} heads over {t} queries: needs 1 to 65,535 (row, head) pairs and a query");
        }
        Ok((b, h, kv, t, s, hd))
    }

    /// Head counts, lengths, start and scale, as the kernels take them.
    fn scalars(&self, h: usize, kv: usize, t: usize, s: usize) -> Result<[Arg; 6]> {
        Ok([
            int(h, "heads")?,
            int(kv, "kv heads")?,
            int(t, "queries")?,
            int(s, "keys")?,
            int(self.start, "start")?,
            Arg::Float(self.scale),
        ])
    }

    /// An op for queries at `start..` (kept within their packed sequences with `packing`).
    pub(crate) fn new(q: &Tensor, scale: f64, start: usize, packing: Option<&Packing>) -> Result<Self> {
        let seg = packing.map(|p| Tensor::from_slice(&p.starts(), p.batch() * p.seq(), q.device())).transpose()?;
        Ok(Self { scale: scale as f32, start, seg, lse: Mutex::new(None) })
    }

    /// The output `(B, T, H · hd)` into fresh storage, and each query row's log-sum-exp.
    fn forward_storage(&self, parts: [(&CudaStorage, &Layout); 3]) -> Result<(CudaStorage, Shape, Tensor)> {
        let [(q, lq), (_, lk), (_, lv)] = parts;
        let (b, h, kv, t, s, hd) = self.sizes(lq.shape(), lk.shape(), lv.shape())?;
        let dev = &q.device;
        let name = "gpu-attention";
        let shape = Shape::from((b, t, h * hd));
        let o = alloc(dev, &shape, q.dtype())?;
        let lse = output(dev, (b, h, t), DType::F32)?;
        let middle = [Arg::Ptr(storage_base(&o, 0, name)?), Arg::Ptr(ptr(&lse, name)?), self.seg_arg()?];
        let args = Operands::of(parts)?.args(middle, self.scalars(h, kv, t, s)?);
        let grid = (t.div_ceil(TILE) as u32, (b * h) as u32, 1);
        run(dev, Kernel::Forward, q.dtype(), hd, grid, &args)?;
        Ok((o, shape, lse))
    }

    /// The forward outside the graph: the output `(B, T, H · hd)`; each query row's log-sum-exp is
    /// kept for [`Attention::backward`].
    pub(crate) fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (q, k, v) = (aligned_rows(q)?, aligned_rows(k)?, aligned_rows(v)?);
        let (gq, gk, gv) = (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
        let (Storage::Cuda(sq), Storage::Cuda(sk), Storage::Cuda(sv)) = (&*gq.0, &*gk.0, &*gv.0) else {
            candle_core::bail!("gpu-attention: q, k and v must be on a CUDA device")
        };
        let (o, shape, lse) = self.forward_storage([(sq, gq.1), (sk, gk.1), (sv, gv.1)])?;
        *self.lse.lock().expect("not poisoned") = Some(lse);
        Ok(Tensor::from_storage(Storage::Cuda(o), shape, BackpropOp::none(), false))
    }

    /// `(dq, dk, dv)`, shaped as q, k and v (views of positions-major `(B, T, heads, hd)` buffers),
    /// from the forward's inputs and output and the output's gradient, outside the graph.
    pub(crate) fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, h, kv, t, s, hd) = self.sizes(q.shape(), k.shape(), v.shape())?;
        let dev = device(q)?;
        let (dq, dk, dv) = (
            output(&dev, (b, t, h, hd), q.dtype())?,
            output(&dev, (b, s, kv, hd), q.dtype())?,
            output(&dev, (b, s, kv, hd), q.dtype())?,
        );
        let name = "gpu-attention backward";
        let to = [ptr(&dq, name)?, ptr(&dk, name)?, ptr(&dv, name)?];
        self.backward_to(q, k, v, out, grad, to, (h * hd, kv * hd), None)?;
        Ok((dq.transpose(1, 2)?, dk.transpose(1, 2)?, dv.transpose(1, 2)?))
    }

    /// The gradients of q, k and v (as many keys as queries) side by side in one buffer
    /// `(B, T, H + 2·KV, hd)`, the order of their projections' stacked output, so that their
    /// weights' gradients take one product without a concatenating copy. Where q and k were
    /// rotated by the RoPE tables `rope` (`(positions, hd / 2)` each), the kernels take dQ and dK
    /// back through the rotation as they write them, so the buffer holds the projections' gradients.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward_joint(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (b, h, kv, t, s, hd) = self.sizes(q.shape(), k.shape(), v.shape())?;
        if s != t {
            candle_core::bail!(
                "gpu-attention backward: one buffer for dq, dk and dv needs as many keys ({s}) as queries ({t})"
            );
        }
        let d = output(&device(q)?, (b, t, h + 2 * kv, hd), q.dtype())?;
        let at = ptr(&d, "gpu-attention backward")?;
        let size = q.dtype().size_in_bytes() as u64;
        let to = [at, at + (h * hd) as u64 * size, at + ((h + kv) * hd) as u64 * size];
        let ld = (h + 2 * kv) * hd;
        self.backward_to(q, k, v, out, grad, to, (ld, ld), rope)?;
        Ok(d)
    }

    /// The backward's kernels: D, then dQ and dK/dV written positions-major from the addresses
    /// `to`, `ld.0` (dQ) and `ld.1` (dK, dV) elements from one position's row of heads to the next;
    /// with `rope`, dQ and dK taken back through the rotation by those tables.
    #[allow(clippy::too_many_arguments)]
    fn backward_to(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
        [to_q, to_k, to_v]: [u64; 3],
        (ld_q, ld_kv): (usize, usize),
        rope: Option<(&Tensor, &Tensor)>,
    ) -> Result<()> {
        let name = "gpu-attention backward";
        let Some(lse) = self.lse.lock().expect("not poisoned").clone() else {
            candle_core::bail!("{name}: backward before forward")
        };
        let (q, k, v) = (aligned_rows(q)?, aligned_rows(k)?, aligned_rows(v)?);
        // Read whole, sixteen bytes at a time: contiguous from an aligned start.
        let (out, dout) = (aligned_whole(out)?, aligned_whole(grad)?);
        let (b, h, kv, t, s, hd) = self.sizes(q.shape(), k.shape(), v.shape())?;
        let dev = device(&q)?;
        let dtype = q.dtype();
        // D = rowsum(dO ⊙ O) per query and head, (B, T, H) in f32, one pass over each.
        let dsum = output(&dev, (b, t, h), DType::F32)?;
        let rows = b * t * h;
        let (pd, po, ps) = (ptr(&dout, name)?, ptr(&out, name)?, ptr(&dsum, name)?);
        let args = [Arg::Ptr(pd), Arg::Ptr(po), Arg::Ptr(ps), int(rows, "rows")?, int(hd, "head size")?];
        // A warp per row, eight per block.
        let cfg = super::grid((rows.div_ceil(8).clamp(1, 65_536) as u32, 1, 1), (256, 1, 1));
        launch(&dev, &ATTENTION, "attention_dsum", dtype, cfg, &args)?;
        let (gq, gk, gv) = (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
        let (Storage::Cuda(sq), Storage::Cuda(sk), Storage::Cuda(sv)) = (&*gq.0, &*gk.0, &*gv.0) else {
            candle_core::bail!("{name}: q, k and v must be on a CUDA device")
        };
        let operands = || Operands::of([(sq, gq.1), (sk, gk.1), (sv, gv.1)]);
        let common =
            [Arg::Ptr(ptr(&dout, name)?), Arg::Ptr(ptr(&lse, name)?), Arg::Ptr(ptr(&dsum, name)?), self.seg_arg()?];
        let scalars = self.scalars(h, kv, t, s)?;
        // The tables in the operands' dtype, one row per position, as the kernels index them.
        let tables = match rope {
            Some((cos, sin)) => {
                let positions = (self.start + t).max(s);
                let fits = |x: &Tensor| {
                    x.dims().len() == 2 && x.dim(0).ok() >= Some(positions) && x.dim(1).ok() == Some(hd / 2)
                };
                if !fits(cos) || !fits(sin) {
                    candle_core::bail!(
                        "{name}: RoPE tables {:?} and {:?} do not cover {positions} positions of head size {hd}",
                        cos.dims(),
                        sin.dims()
                    );
                }
                Some((cos.to_dtype(dtype)?.contiguous()?, sin.to_dtype(dtype)?.contiguous()?))
            }
            None => None,
        };
        let table_args = match &tables {
            Some((cos, sin)) => [Arg::Ptr(ptr(cos, name)?), Arg::Ptr(ptr(sin, name)?)],
            None => [Arg::Ptr(0), Arg::Ptr(0)],
        };
        let mut args = operands()?.args(common.iter().cloned().chain([Arg::Ptr(to_q)]), scalars);
        args.push(Arg::Long(ld_q as i64));
        args.extend(table_args);
        run(&dev, Kernel::Dq, dtype, hd, (t.div_ceil(TILE) as u32, (b * h) as u32, 1), &args)?;
        let mut args = operands()?.args(common.into_iter().chain([Arg::Ptr(to_k), Arg::Ptr(to_v)]), scalars);
        args.push(Arg::Long(ld_kv as i64));
        args.extend(table_args);
        run(&dev, Kernel::Dkv, dtype, hd, (s.div_ceil(TILE) as u32, (b * kv) as u32, 1), &args)
    }

    fn seg_arg(&self) -> Result<Arg> {
        Ok(Arg::Ptr(match &self.seg {
            Some(s) => ptr(s, "gpu-attention")?,
            None => 0,
        }))
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "gpu-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gpu-attention runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (o, shape, lse) = self.forward_storage([(q, lq), (k, lk), (v, lv)])?;
        *self.lse.lock().expect("not poisoned") = Some(lse);
        Ok((o, shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.backward(q, k, v, out, grad)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Causal attention's forward and backward (queries from position 0, no packing, as many keys as
/// queries) outside candle's graph, the way a training step's attention node runs them: the
/// output's gradient `grad (B, T, H · hd)` in, the gradients of q, k and v side by side
/// `(B, T, H + 2·KV, hd)` out. For timing the kernels on their own (`tsukuru bench matmul`).
pub fn forward_backward(q: &Tensor, k: &Tensor, v: &Tensor, grad: &Tensor, scale: f64) -> Result<Tensor> {
    let op = Attention::new(q, scale, 0, None)?;
    let out = op.forward(q, k, v)?;
    op.backward_joint(q, k, v, &out, grad, None)
}

/// True when the kernels take this head size.
pub fn supports_head_dim(hd: usize) -> bool {
    HEAD_DIMS.contains(&hd)
}

/// Causal attention of q `(B, H, T, hd)` against k and v `(B, KV, S, hd)` (any strides with the
/// last dimension contiguous, hd in [`HEAD_DIMS`], one dtype), the queries at positions
/// `start..start + T`, kept within their packed sequences with `packing`; `(B, T, H · hd)`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    start: usize,
    packing: Option<&Packing>,
) -> Result<Tensor> {
    if q.dtype() != k.dtype() || q.dtype() != v.dtype() {
        candle_core::bail!(
            "gpu attention: q, k and v differ in dtype ({:?}, {:?}, {:?})",
            q.dtype(),
            k.dtype(),
            v.dtype()
        );
    }
    let op = Attention::new(q, scale, start, packing)?;
    aligned_rows(q)?.apply_op3(&aligned_rows(k)?, &aligned_rows(v)?, op)
}

/// Whether the rows of `l` are contiguous and start on [`ALIGN`]-element boundaries (the other
/// strides and the offset multiples of it).
fn rows_aligned(l: &Layout) -> bool {
    let (outer, last) = l.stride().split_at(l.stride().len().saturating_sub(1));
    last == [1] && outer.iter().chain([&l.start_offset()]).all(|x| x % ALIGN == 0)
}

/// `t` itself when it is contiguous from an [`ALIGN`]-element boundary, else a contiguous copy.
fn aligned_whole(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().start_offset().is_multiple_of(ALIGN) {
        Ok(t.clone())
    } else {
        t.force_contiguous()
    }
}

/// `t` itself when its rows are contiguous and start on [`ALIGN`]-element boundaries, as the
/// kernels read them, else a copy with contiguous rows (`hd` long, so aligned) from offset 0.
fn aligned_rows(t: &Tensor) -> Result<Tensor> {
    if rows_aligned(t.layout()) {
        Ok(t.clone())
    } else {
        t.force_contiguous()
    }
}

//! Forward and backward passes outside candle's graph, for the ops that are one node of it
//! ([`super::mlp_residual`], [`super::attn_residual`]): the GPU kernels on a GPU ([`crate::gpu`]),
//! the same arithmetic in candle ops elsewhere, where the tests check those nodes against the
//! separate ops. Nothing here records a gradient; callers pass detached tensors.

use super::composite;
use crate::packing::Packing;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, Var, D};
use std::sync::Mutex;

/// RMSNorm of `x (rows, D)` and each row's inverse RMS (f32, `(rows)`), outside the graph.
pub(super) fn norm_forward(x: &Tensor, gain: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return crate::gpu::rms_norm::forward(x, gain, eps);
    }
    let xw = x.to_dtype(DType::F32)?;
    let inv = (xw.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let y = xw.broadcast_mul(&inv)?.broadcast_mul(&gain.to_dtype(DType::F32)?)?;
    Ok((y.to_dtype(x.dtype())?, inv.flatten_all()?))
}

/// RMSNorm's gradients `(dx + residual, dgain)` from the upstream `g`, the kept inverse RMS and
/// the gradient `residual` reaching x around the norm: `dx = inv · (gain ⊙ g − x · inv² · mean(x ⊙
/// gain ⊙ g))`, `dgain = Σ_rows g ⊙ x · inv`.
pub(super) fn norm_backward(
    x: &Tensor,
    gain: &Tensor,
    inv: &Tensor,
    g: &Tensor,
    residual: &Tensor,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        let (dx, dgain) = crate::gpu::rms_norm::backward(x, gain, inv, g, Some(residual), true)?;
        return Ok((dx, dgain.expect("asked for")));
    }
    let (rows, d) = x.dims2()?;
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let (xw, gw, ww, inv) = (f32(x)?, f32(g)?, f32(gain)?, inv.reshape((rows, 1))?);
    let wg = gw.broadcast_mul(&ww)?;
    let coef = ((&xw * &wg)?.sum_keepdim(1)? * inv.sqr()?)? / d as f64;
    let dx = (wg - xw.broadcast_mul(&coef?)?)?.broadcast_mul(&inv)?;
    let dgain = (gw * xw.broadcast_mul(&inv)?)?.sum(0)?;
    Ok(((dx + f32(residual)?)?.to_dtype(x.dtype())?, dgain.to_dtype(gain.dtype())?))
}

/// `silu(gate) ⊙ up` `(rows, F)` of `gu (rows, 2F)`, the gate and up projections side by side.
pub(super) fn gate_forward(gu: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if gu.device().is_cuda() {
        return crate::gpu::swiglu::forward_paired(gu);
    }
    let f = gu.dim(1)? / 2;
    composite::swiglu(&gu.narrow(1, 0, f)?, &gu.narrow(1, f, f)?)
}

/// The gate's backward: the gradient `(rows, 2F)` of `gu` from the upstream `g (rows, F)`, the
/// gate's half `g · up · σ(gate) · (1 + gate · (1 − σ(gate)))` and up's `g · gate · σ(gate)`; and
/// the gated product, recomputed.
pub(super) fn gate_backward(gu: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if gu.device().is_cuda() {
        return crate::gpu::swiglu::backward_paired(gu, g);
    }
    let f = gu.dim(1)? / 2;
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let (aw, bw, gw) = (f32(&gu.narrow(1, 0, f)?)?, f32(&gu.narrow(1, f, f)?)?, f32(g)?);
    let s = (aw.neg()?.exp()? + 1.0)?.recip()?;
    let da = (((&gw * &bw)? * &s)? * ((&aw * (1.0 - &s)?)? + 1.0)?)?;
    let db = ((gw * &aw)? * &s)?;
    let h = ((aw * s)? * bw)?;
    Ok((Tensor::cat(&[da, db], 1)?.to_dtype(gu.dtype())?, h.to_dtype(gu.dtype())?))
}

/// RoPE of `x (B, H, T, hd)` (any layout) at positions `start..`. On a GPU `x` is rotated in
/// place and returned: the caller made it outside the graph and nothing has read it yet.
pub(super) fn rope_forward(x: &Tensor, cos: &Tensor, sin: &Tensor, start: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        crate::gpu::rope::rotate_in_place(x, cos, sin, start, 1.0)?;
        return Ok(x.clone());
    }
    composite::rope(x, cos, sin, start)
}

/// Causal attention ([`super::attention`]'s arguments) outside the graph: on a GPU the flash
/// kernels, which keep each query row's log-sum-exp for the backward; elsewhere the composite,
/// whose backward runs through a graph of its own.
pub(super) struct Attention {
    scale: f64,
    start: usize,
    packing: Option<Packing>,
    #[cfg(feature = "cuda")]
    gpu: Option<crate::gpu::attention::Attention>,
}

impl Attention {
    /// For queries like `q (B, H, T, hd)` at positions `start..`.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub(super) fn new(q: &Tensor, scale: f64, start: usize, packing: Option<&Packing>) -> Result<Self> {
        #[cfg(feature = "cuda")]
        let gpu = match crate::gpu::supported(&[q]) && crate::gpu::attention::supports_head_dim(q.dim(3)?) {
            true => Some(crate::gpu::attention::Attention::new(q, scale, start, packing)?),
            false => None,
        };
        Ok(Self {
            scale,
            start,
            packing: packing.cloned(),
            #[cfg(feature = "cuda")]
            gpu,
        })
    }

    /// The output `(B, T, H · hd)` of q `(B, H, T, hd)` against k and v `(B, KV, S, hd)`.
    pub(super) fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return gpu.forward(q, k, v);
        }
        composite::attention(q, k, v, self.scale, self.start, self.packing.as_ref())
    }

    /// The gradient `(B · T, (H + 2·KV) · hd)` of the projections that made q `(B, H, T, hd)`, k and
    /// v `(B, KV, T, hd)` (q and k then rotated by the tables `cos`, `sin` from position 0), side by
    /// side in their stacked order, from the forward's rotated inputs, its output and the output's
    /// gradient. On a GPU the kernels write the three into one buffer and the rotations are undone
    /// there in place (RoPE's backward is the rotation by the opposite angles).
    #[allow(clippy::too_many_arguments)]
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub(super) fn backward_projections(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        grad: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let (b, h, t, hd) = q.dims4()?;
        let kv = k.dim(1)?;
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            let d = gpu.backward_joint(q, k, v, o, grad)?;
            for (first, count) in [(0, h), (h, kv)] {
                crate::gpu::rope::rotate_in_place(&d.narrow(2, first, count)?.transpose(1, 2)?, cos, sin, 0, -1.0)?;
            }
            return d.reshape((b * t, (h + 2 * kv) * hd));
        }
        let vars = [Var::from_tensor(q)?, Var::from_tensor(k)?, Var::from_tensor(v)?];
        let [vq, vk, vv] = &vars;
        let out = composite::attention(vq, vk, vv, self.scale, self.start, self.packing.as_ref())?;
        let grads = (out * grad)?.sum_all()?.backward()?;
        // Detached: the walk's results record how they were made (from the variables above), and
        // a caller passing them on must not have a later walk retrace this one.
        let get = |v: &Var| {
            grads.get(v).map(Tensor::detach).ok_or_else(|| candle_core::Error::Msg("attention: no gradient".into()))
        };
        let unrotate = |g: Tensor| composite::rope(&g, cos, &sin.neg()?, 0);
        let flat = |g: Tensor, count: usize| g.transpose(1, 2)?.contiguous()?.reshape((b * t, count * hd));
        Tensor::cat(&[flat(unrotate(get(vq)?)?, h)?, flat(unrotate(get(vk)?)?, kv)?, flat(get(vv)?, kv)?], 1)
    }
}

/// A block half's gradients from its output's gradient.
pub(super) struct HalfGrads {
    /// Of its input x, the residual's share included.
    pub(super) dx: Tensor,
    /// Of the projections read along D (the stacked weights without the gain row), in their rows.
    pub(super) d_w: Tensor,
    /// Of the norm's gain `(D)`.
    pub(super) dgain: Tensor,
    /// Of the output projection.
    pub(super) d_proj: Tensor,
}

/// The backward of a block half computed outside the graph, from its input `x`, its stacked
/// weights (the projections read along D, then the norm's gain as the last row), its output
/// projection and its output's gradient.
pub(super) trait HalfBackward: Send + Sync + 'static {
    /// The node's name in candle's graph.
    const NAME: &'static str;
    /// The half's gradients.
    fn backward(&self, x: &Tensor, stacked: &Tensor, proj: &Tensor, grad: &Tensor) -> Result<HalfGrads>;
}

/// A block half as one node over `(x, stacked weights, output projection)`: its output `x + y`, `y`
/// computed beforehand outside the graph, and its backward `B`.
pub(super) struct OneNode<B> {
    y: Mutex<Option<Tensor>>,
    back: B,
}

impl<B: HalfBackward> OneNode<B> {
    /// `x + y` as a node over `x`, `stacked` and `proj` whose backward is `back`.
    pub(super) fn apply(x: &Tensor, stacked: &Tensor, proj: &Tensor, y: Tensor, back: B) -> Result<Tensor> {
        x.contiguous()?.apply_op3(stacked, &proj.contiguous()?, Self { y: Mutex::new(Some(y)), back })
    }

    /// `x + y` into new storage of x's kind; `pick` finds y's storage of that kind.
    fn add<S: BackendStorage>(&self, x: &S, lx: &Layout, pick: impl Fn(&Storage) -> Option<&S>) -> Result<(S, Shape)> {
        let Some(y) = self.y.lock().expect("not poisoned").take() else {
            candle_core::bail!("{}: forward ran twice", B::NAME)
        };
        let (ys, ly) = y.storage_and_layout();
        let Some(ys) = pick(&ys) else { candle_core::bail!("{}: input and output on different devices", B::NAME) };
        Ok((x.binary_impl::<candle_core::op::Add>(ys, lx, ly)?, lx.shape().clone()))
    }
}

impl<B: HalfBackward> CustomOp3 for OneNode<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.add(x, lx, |s| match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.add(x, lx, |s| match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        stacked: &Tensor,
        proj: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.back.backward(x, stacked, proj, grad)?;
        let d_stacked = Tensor::cat(&[g.d_w, g.dgain.reshape((1, g.dgain.elem_count()))?], 0)?;
        Ok((Some(g.dx), Some(d_stacked), Some(g.d_proj)))
    }
}

/// What the one-node halves' tests share.
#[cfg(test)]
pub(super) mod testing {
    use candle_core::{Device, Tensor, Var};

    /// A variable of uniform values in `[-scale, scale)` from a fixed seed.
    pub(crate) fn uniform(shape: &[usize], seed: u64, scale: f64) -> Var {
        let mut s = seed;
        let v: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale as f32
            })
            .collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// ‖a − b‖ / ‖b‖.
    pub(crate) fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let num = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        (num / b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).sqrt()
    }
}

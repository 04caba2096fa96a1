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

/// `x + a · wᵀ` for `x (rows, D)`, `a (rows, K)`, `w (D, K)`: a block half's output projection
/// with its residual connection. On a GPU one cuBLASLt product that adds x in its epilogue.
pub(super) fn residual_product(x: &Tensor, a: &Tensor, w: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::gpu::supported(&[x, a, w]) && x.dtype() == a.dtype() {
        return crate::gpu::matmul::matmul(a, &w.t()?, Some(x), x.dtype());
    }
    x + a.matmul(&w.t()?)?
}

/// `gᵀ · a`, a weight's gradient from the gradient `g (rows, out)` of its product and the
/// product's input `a (rows, in)`. On a GPU in f32 straight from bf16 operands (a master weight's
/// dtype, so no cast follows); elsewhere in the operands' dtype.
pub(super) fn weight_grad(g: &Tensor, a: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::gpu::supported(&[g, a]) {
        return crate::gpu::matmul::matmul(&g.t()?, a, None, DType::F32);
    }
    g.t()?.matmul(a)
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
        crate::gpu::rope::rotate_in_place(x, cos, sin, start)?;
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
    /// gradient. On a GPU the kernels write the three into one buffer, taking dQ and dK back through
    /// the rotations as they write them (RoPE's backward is the rotation by the opposite angles).
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
            return gpu.backward_joint(q, k, v, o, grad, Some((cos, sin)))?.reshape((b * t, (h + 2 * kv) * hd));
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

/// An output computed outside the graph, for the node that records it: its forward hands over a
/// copy as the node's own storage (a node's output is new storage), once.
pub(super) struct Computed(Mutex<Option<Tensor>>);

impl Computed {
    /// Holds `t` until the node's forward takes it.
    pub(super) fn new(t: Tensor) -> Self {
        Self(Mutex::new(Some(t)))
    }

    /// The CPU forward's result.
    pub(super) fn cpu(&self, name: &str) -> Result<(CpuStorage, Shape)> {
        let out = self.take(name)?;
        // `try_clone` copies the whole buffer: the output must be laid out from its start.
        let starts = {
            let (_, l) = out.storage_and_layout();
            l.is_contiguous() && l.start_offset() == 0
        };
        let out = if starts { out } else { out.copy()? };
        let (s, l) = out.storage_and_layout();
        match &*s {
            Storage::Cpu(c) => Ok((c.try_clone(l)?, out.shape().clone())),
            _ => candle_core::bail!("{name}: output on another device than the inputs"),
        }
    }

    /// The CUDA forward's result: exactly the output's elements, copied.
    #[cfg(feature = "cuda")]
    pub(super) fn cuda(&self, name: &str) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = self.take(name)?.contiguous()?;
        Ok((crate::gpu::storage_copy(&out, name)?, out.shape().clone()))
    }

    fn take(&self, name: &str) -> Result<Tensor> {
        match self.0.lock().expect("not poisoned").take() {
            Some(out) => Ok(out),
            None => candle_core::bail!("{name}: forward ran twice"),
        }
    }
}

/// A block half as one node over `(x, stacked weights, output projection)`: its output `x + y`,
/// computed beforehand outside the graph, and its backward `B`.
pub(super) struct OneNode<B> {
    out: Computed,
    back: B,
}

impl<B: HalfBackward> OneNode<B> {
    /// `out` as a node over `x`, `stacked` and `proj` whose backward is `back`.
    pub(super) fn apply(x: &Tensor, stacked: &Tensor, proj: &Tensor, out: Tensor, back: B) -> Result<Tensor> {
        x.contiguous()?.apply_op3(stacked, &proj.contiguous()?, Self { out: Computed::new(out), back })
    }
}

impl<B: HalfBackward> CustomOp3 for OneNode<B> {
    fn name(&self) -> &'static str {
        B::NAME
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
        self.out.cpu(B::NAME)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.out.cuda(B::NAME)
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
        // The weights' gradients come in f32 from the GPU's products; candle routes them back in
        // their inputs' dtype.
        let dgain = g.dgain.reshape((1, g.dgain.elem_count()))?.to_dtype(stacked.dtype())?;
        let d_stacked = Tensor::cat(&[g.d_w.to_dtype(stacked.dtype())?, dgain], 0)?;
        Ok((Some(g.dx), Some(d_stacked), Some(g.d_proj.to_dtype(proj.dtype())?)))
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

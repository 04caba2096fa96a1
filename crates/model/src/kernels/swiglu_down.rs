//! SwiGLU's gate and the down projection as one op, `y = (silu(gate) ⊙ up) · Wᵀ`, which keeps
//! `gate` and `up` for the backward pass but not their product.
//!
//! The product (`N × ffn`, the widest activation of a block) is needed again only to form the
//! down projection's weight gradient; recomputing it there is one element-wise pass, against
//! holding it from the forward pass to the backward for every layer.

use super::swiglu::{backward_all, forward_all};
use super::{f32s, new_product, zeros, F32View};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

struct SwigluDown;

/// `silu(gate) ⊙ up`.
fn hidden(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut h = zeros(gate.len());
    forward_all(gate, up, &mut h);
    h
}

impl CustomOp3 for SwigluDown {
    fn name(&self) -> &'static str {
        "fused-swiglu-down"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gate, up, w) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?, f32s(s3, l3, self.name())?);
        let (d, f) = l3.shape().dims2()?;
        if l1.dims() != l2.dims() || l1.dims().last() != Some(&f) {
            candle_core::bail!("swiglu-down: gate {:?}, up {:?}, weight {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let n = gate.len() / f.max(1);
        let h = hidden(gate, up);
        let y = new_product(n, d, f, (&h, f, 1), (w, 1, f), true);
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("checked rank") = d;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (d, f) = w.dims2()?;
        let grad = grad.contiguous()?;
        let op = self.name();
        let views = [F32View::of(gate, op)?, F32View::of(up, op)?, F32View::of(w, op)?, F32View::of(&grad, op)?];
        let [ga, ub, wv, g] = views.each_ref().map(F32View::get);
        let n = ga.len() / f.max(1);
        // The weight's gradient needs the product again: recomputed, not kept (and not at all for
        // a frozen weight).
        let dw = w.track_op().then(|| new_product(d, f, n, (g, 1, d), (&hidden(ga, ub), f, 1), true));
        let dh = new_product(n, f, d, (g, d, 1), (wv, f, 1), true);
        let (mut dgate, mut dup) = (zeros(n * f), zeros(n * f));
        backward_all(ga, ub, &dh, &mut dgate, &mut dup);
        let dev = gate.device();
        Ok((
            Some(Tensor::from_vec(dgate, gate.shape(), dev)?),
            Some(Tensor::from_vec(dup, up.shape(), dev)?),
            dw.map(|dw| Tensor::from_vec(dw, (d, f), dev)).transpose()?,
        ))
    }
}

/// `(silu(gate) ⊙ up) · wᵀ` for f32 CPU tensors `gate`, `up` `(…, F)` and `w (D, F)`; returns
/// `(…, D)`.
pub fn swiglu_down(gate: &Tensor, up: &Tensor, w: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op3(&up.contiguous()?, &w.contiguous()?, SwigluDown)
}

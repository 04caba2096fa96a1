//! The feed-forward half of a SwiGLU block with its residual connection as one node of candle's
//! graph, for tensors the CPU kernels do not take (on a GPU): `x + (silu(n·Wgᵀ) ⊙ (n·Wuᵀ))·Wdᵀ`
//! with `n = rmsnorm(x) · gain`.
//!
//! As separate ops the half is six nodes, and candle's walk adds every gradient reaching a node's
//! input into a zero-filled tensor of its size: a fill and an add over each activation, about
//! 1.5 GB a layer in bf16 at 32,768 positions, width 768 and 2,048 hidden units, more than the
//! backward pass's own element-wise work. Here the forward runs outside the graph, the gate and up
//! projections one product against their weights stacked, and keeps `n`, each row's inverse RMS
//! and that product; the backward recomputes the gated product in the pass that differentiates it
//! and returns one gradient per input (x; the gate, up and gain weights stacked; the down
//! projection).
//! The norm and the gate are the GPU kernels on a GPU and the same arithmetic in candle ops
//! elsewhere (`ops::explicit`), which is how the tests check this op against the separate ones.

use super::explicit::{
    gate_backward, gate_forward, norm_backward, norm_forward, residual_product, weight_grad, HalfBackward, HalfGrads,
    OneNode,
};
use candle_core::{Result, Tensor};

/// What the backward reads: `n (rows, D)`, the inverse RMS `(rows)`, and the gate and up
/// projections side by side `(rows, 2F)`.
pub(super) struct MlpBackward {
    n: Tensor,
    inv: Tensor,
    gu: Tensor,
}

impl HalfBackward for MlpBackward {
    const NAME: &'static str = "mlp-residual";

    fn backward(&self, x: &Tensor, stacked: &Tensor, down: &Tensor, grad: &Tensor) -> Result<HalfGrads> {
        let (rows, d) = self.n.dims2()?;
        let f = self.gu.dim(1)? / 2;
        let g = grad.reshape((rows, d))?;
        let (dgu, h) = gate_backward(&self.gu, &g.matmul(down)?)?;
        let d_proj = weight_grad(&g, &h)?;
        // One product each way through the gate and up weights together.
        let dn = dgu.matmul(&stacked.narrow(0, 0, 2 * f)?)?;
        let gain = stacked.narrow(0, 2 * f, 1)?.reshape(d)?;
        let (dx, dgain) = norm_backward(&x.reshape((rows, d))?, &gain, &self.inv, &dn, &g)?;
        Ok(HalfGrads { dx: dx.reshape(x.shape())?, d_w: weight_grad(&dgu, &self.n)?, dgain, d_proj })
    }
}

/// The gate and up weights and the gain stacked by rows, `(2F + 1, D)`, after checking that
/// `x (…, D)` and the weights fit.
pub(super) fn stack(x: &Tensor, gain: &Tensor, gate: &Tensor, up: &Tensor, down: &Tensor) -> Result<Tensor> {
    let ((f, d), x_dims) = (gate.dims2()?, x.dims());
    if x_dims.last() != Some(&d) || up.dims() != [f, d] || down.dims() != [d, f] || gain.dims() != [d] {
        candle_core::bail!(
            "mlp-residual: x {x_dims:?}, gain {:?}, gate {:?}, up {:?} and down {:?} do not fit",
            gain.dims(),
            gate.dims(),
            up.dims(),
            down.dims()
        );
    }
    // The three read along D are one input of the node (candle takes three); the gate and up
    // weights, its first 2F rows, are one product each way.
    Tensor::cat(&[gate, up, &gain.reshape((1, d))?], 0)
}

/// The half's output `x + y` and what its backward reads, outside the graph: `x (…, D)`,
/// `stacked` from [`stack`] and `down`, all detached.
pub(super) fn forward(x: &Tensor, stacked: &Tensor, down: &Tensor, eps: f64) -> Result<(Tensor, MlpBackward)> {
    let (d, f) = down.dims2()?;
    let rows = x.elem_count() / d;
    let gain = stacked.narrow(0, 2 * f, 1)?.reshape(d)?;
    let xr = x.contiguous()?.reshape((rows, d))?;
    let (n, inv) = norm_forward(&xr, &gain, eps)?;
    let gu = n.matmul(&stacked.narrow(0, 0, 2 * f)?.t()?)?;
    let out = residual_product(&xr, &gate_forward(&gu)?, down)?.reshape(x.shape())?;
    Ok((out, MlpBackward { n, inv, gu }))
}

/// `x + (silu(n · gateᵀ) ⊙ (n · upᵀ)) · downᵀ` with `n = rms_norm(x, gain, eps)`, as one node:
/// `x (…, D)`, weights `(F, D)`, `(F, D)`, `(D, F)`, gain `(D)`, all one dtype on one device.
pub fn mlp_residual(x: &Tensor, gain: &Tensor, gate: &Tensor, up: &Tensor, down: &Tensor, eps: f64) -> Result<Tensor> {
    let stacked = stack(x, gain, gate, up, down)?;
    let (out, back) = forward(&x.detach(), &stacked.detach(), &down.detach(), eps)?;
    OneNode::apply(x, &stacked, down, out, back)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::explicit::testing::{rel, uniform};
    use crate::ops::{composite, linear};
    use candle_core::Var;

    #[test]
    fn one_node_matches_the_separate_ops_in_value_and_gradient() {
        let (d, f) = (16, 24);
        let x = uniform(&[2, 5, d], 1, 1.0);
        let gain = Var::from_tensor(&uniform(&[d], 2, 1.0).as_tensor().affine(0.2, 1.0).unwrap()).unwrap();
        let (gate, up, down) = (uniform(&[f, d], 3, 1.0), uniform(&[f, d], 4, 1.0), uniform(&[d, f], 5, 1.0));
        let mix = uniform(&[2, 5, d], 6, 1.0);
        let vars = [&x, &gain, &gate, &up, &down];
        let run = |one_node: bool| {
            let (xt, gt) = (x.as_tensor(), gain.as_tensor());
            let y = if one_node {
                mlp_residual(xt, gt, gate.as_tensor(), up.as_tensor(), down.as_tensor(), 1e-5).unwrap()
            } else {
                let n = composite::rms_norm(xt, gt, 1e-5).unwrap();
                let h = composite::swiglu(&linear(&n, gate.as_tensor()).unwrap(), &linear(&n, up.as_tensor()).unwrap());
                (xt + linear(&h.unwrap(), down.as_tensor()).unwrap()).unwrap()
            };
            let grads = (&y * mix.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            let g: Vec<Tensor> = vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect();
            (y, g)
        };
        let ((y1, g1), (y2, g2)) = (run(true), run(false));
        assert!(rel(&y1, &y2) < 1e-6, "values differ by {}", rel(&y1, &y2));
        for (name, (a, b)) in ["x", "gain", "gate", "up", "down"].iter().zip(g1.iter().zip(&g2)) {
            assert!(rel(a, b) < 1e-5, "gradient of {name} differs by {}", rel(a, b));
        }
    }
}

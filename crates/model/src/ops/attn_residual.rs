//! The attention half of a block with its residual connection as one node of candle's graph, for
//! tensors the CPU kernels do not take (on a GPU): `x + attention(rope(n·Wqᵀ), rope(n·Wkᵀ), n·Wvᵀ)·Woᵀ`
//! with `n = rmsnorm(x) · gain`, over whole sequences (training; no cache).
//!
//! As separate ops the half is a norm, four products, two reshapes and two transposes per
//! projection, two rotations, the attention and an add, and candle's walk adds every gradient
//! reaching a node's input into a zero-filled tensor of its size: ~3.5 GB of fills, adds and
//! strided copies a layer in bf16 at 32,768 positions and width 768. Here the forward runs outside
//! the graph and keeps `n`, each row's inverse RMS, the rotated queries and keys, the values, the
//! attention's output and (on a GPU) its log-sum-exp; the backward returns one gradient per input
//! (x; the query, key, value and gain weights stacked; the output projection). The pieces are those
//! of `ops::explicit`: GPU kernels on a GPU, candle ops elsewhere.

use super::explicit::{
    norm_backward, norm_forward, residual_product, rope_forward, weight_grad, Attention, HalfBackward, HalfGrads,
    OneNode,
};
use crate::packing::Packing;
use candle_core::{Result, Tensor};

/// What the backward reads.
pub(super) struct AttnBackward {
    /// `n (rows, D)` and the inverse RMS `(rows)`.
    n: Tensor,
    inv: Tensor,
    /// Rotated queries `(B, H, T, hd)` and keys, values `(B, KV, T, hd)`, the attention's output
    /// `(B, T, H · hd)`.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    attention: Attention,
    cos: Tensor,
    sin: Tensor,
    /// Query and key/value heads.
    heads: (usize, usize),
}

impl HalfBackward for AttnBackward {
    const NAME: &'static str = "attn-residual";

    fn backward(&self, x: &Tensor, stacked: &Tensor, wo: &Tensor, grad: &Tensor) -> Result<HalfGrads> {
        let (rows, d) = self.n.dims2()?;
        let (h, kv) = self.heads;
        let (b, _, t, hd) = self.q.dims4()?;
        let g = grad.reshape((rows, d))?;
        let d_proj = weight_grad(&g, &self.o.reshape((rows, h * hd))?)?;
        let d_o = g.matmul(wo)?.reshape((b, t, h * hd))?;
        let d_qkv =
            self.attention.backward_projections(&self.q, &self.k, &self.v, &self.o, &d_o, &self.cos, &self.sin)?;
        // One product each way through the three weights together.
        let dn = d_qkv.matmul(&stacked.narrow(0, 0, (h + 2 * kv) * hd)?)?;
        let d_w = weight_grad(&d_qkv, &self.n)?;
        let gain = stacked.narrow(0, (h + 2 * kv) * hd, 1)?.reshape(d)?;
        let (dx, dgain) = norm_backward(&x.reshape((rows, d))?, &gain, &self.inv, &dn, &g)?;
        Ok(HalfGrads { dx: dx.reshape(x.shape())?, d_w, dgain, d_proj })
    }
}

/// The query, key and value weights and the gain stacked by rows, `((H + 2·KV)·hd + 1, D)`, after
/// checking that `x (B, T, D)` and the weights fit `heads`.
pub(super) fn stack(
    x: &Tensor,
    gain: &Tensor,
    [wq, wk, wv, wo]: [&Tensor; 4],
    heads: (usize, usize),
) -> Result<Tensor> {
    let (_, _, d) = x.dims3()?;
    let (h, kv) = heads;
    let hd = wq.dim(0)? / h.max(1);
    let fits = h > 0
        && kv > 0
        && h % kv == 0
        && wq.dims() == [h * hd, d]
        && wk.dims() == [kv * hd, d]
        && wv.dims() == [kv * hd, d]
        && wo.dims() == [d, h * hd]
        && gain.dims() == [d];
    if !fits {
        candle_core::bail!(
            "attn-residual: x {:?}, wq {:?}, wk {:?}, wv {:?}, wo {:?}, gain {:?} do not fit {h} query and {kv} key/value heads",
            x.dims(),
            wq.dims(),
            wk.dims(),
            wv.dims(),
            wo.dims(),
            gain.dims()
        );
    }
    Tensor::cat(&[wq, wk, wv, &gain.reshape((1, d))?], 0)
}

/// The half's output `x + y` and what its backward reads, outside the graph: `x (B, T, D)`,
/// `stacked` from [`stack`] and `wo`, all detached.
pub(super) fn forward(
    x: &Tensor,
    stacked: &Tensor,
    wo: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    heads: (usize, usize),
    packing: Option<&Packing>,
    eps: f64,
) -> Result<(Tensor, AttnBackward)> {
    let (b, t, d) = x.dims3()?;
    let (h, kv) = heads;
    let hd = wo.dim(1)? / h;
    if let Some(p) = packing {
        p.check(b, t)?;
    }
    let rows = b * t;
    let gain = stacked.narrow(0, (h + 2 * kv) * hd, 1)?.reshape(d)?;
    let x = x.contiguous()?.reshape((rows, d))?;
    let (n, inv) = norm_forward(&x, &gain, eps)?;
    // The three projections as one product against their stacked weights, each then viewed
    // (B, heads, T, hd) where it lies (on a GPU the queries and keys are rotated there too).
    let qkv = n.matmul(&stacked.narrow(0, 0, (h + 2 * kv) * hd)?.t()?)?.reshape((b, t, h + 2 * kv, hd))?;
    let part = |first: usize, count: usize| qkv.narrow(2, first, count)?.transpose(1, 2);
    let (cos, sin) = (cos.detach(), sin.detach());
    let q = rope_forward(&part(0, h)?, &cos, &sin, 0)?;
    let k = rope_forward(&part(h, kv)?, &cos, &sin, 0)?;
    let v = part(h + kv, kv)?;
    let attention = Attention::new(&q, 1.0 / (hd as f64).sqrt(), 0, packing)?;
    let o = attention.forward(&q, &k, &v)?;
    let out = residual_product(&x, &o.reshape((rows, h * hd))?, wo)?.reshape((b, t, d))?;
    Ok((out, AttnBackward { n, inv, q, k, v, o, attention, cos, sin, heads }))
}

/// `x + attention(rope(n·wqᵀ), rope(n·wkᵀ), n·wvᵀ)·woᵀ` with `n = rms_norm(x, gain, eps)`, causal
/// over whole sequences (kept apart with `packing`), as one node: `x (B, T, D)`, `wq (H·hd, D)`,
/// `wk` and `wv (KV·hd, D)`, `wo (D, H·hd)`, gain `(D)`, the RoPE tables of
/// [`super::rope_tables`]; `heads` is `(H, KV)`.
pub fn attn_residual(
    x: &Tensor,
    gain: &Tensor,
    weights: [&Tensor; 4],
    rope: (&Tensor, &Tensor),
    heads: (usize, usize),
    packing: Option<&Packing>,
    eps: f64,
) -> Result<Tensor> {
    let stacked = stack(x, gain, weights, heads)?;
    let wo = weights[3];
    let (out, back) = forward(&x.detach(), &stacked.detach(), &wo.detach(), rope, heads, packing, eps)?;
    OneNode::apply(x, &stacked, wo, out, back)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::explicit::testing::{rel, uniform};
    use crate::ops::{attention, composite, linear, rope_tables};
    use candle_core::{DType, Device, Var};

    /// The node against the separate ops, for grouped heads with and without packed rows.
    #[test]
    fn one_node_matches_the_separate_ops_in_value_and_gradient() {
        let (b, t, d, h, kv, hd) = (2, 9, 16, 4, 2, 4);
        let (cos, sin) = rope_tables(hd, 32, 10_000.0, DType::F32, &Device::Cpu).unwrap();
        let x = uniform(&[b, t, d], 1, 1.0);
        let gain = Var::from_tensor(&uniform(&[d], 2, 0.2).as_tensor().affine(1.0, 1.0).unwrap()).unwrap();
        let w = |rows: usize, seed| uniform(&[rows, d], seed, 0.5);
        let (wq, wk, wv, wo) = (w(h * hd, 3), w(kv * hd, 4), w(kv * hd, 5), uniform(&[d, h * hd], 6, 0.5));
        let mix = uniform(&[b, t, d], 7, 1.0);
        let vars = [&x, &gain, &wq, &wk, &wv, &wo];
        let packing = Packing::from_lengths(t, &[vec![4, 5], vec![9]]).unwrap();
        for packed in [None, Some(&packing)] {
            let run = |one_node: bool| {
                let (xt, gt) = (x.as_tensor(), gain.as_tensor());
                let y = if one_node {
                    let weights = [wq.as_tensor(), wk.as_tensor(), wv.as_tensor(), wo.as_tensor()];
                    attn_residual(xt, gt, weights, (&cos, &sin), (h, kv), packed, 1e-5).unwrap()
                } else {
                    let n = composite::rms_norm(xt, gt, 1e-5).unwrap();
                    let heads =
                        |w: &Var, c| linear(&n, w).unwrap().reshape((b, t, c, hd)).unwrap().transpose(1, 2).unwrap();
                    let q = composite::rope(&heads(&wq, h), &cos, &sin, 0).unwrap();
                    let k = composite::rope(&heads(&wk, kv), &cos, &sin, 0).unwrap();
                    let o = attention(&q, &k, &heads(&wv, kv), 1.0 / (hd as f64).sqrt(), 0, packed).unwrap();
                    (xt + linear(&o, wo.as_tensor()).unwrap()).unwrap()
                };
                let grads = (&y * mix.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
                let g: Vec<Tensor> = vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect();
                (y, g)
            };
            let ((y1, g1), (y2, g2)) = (run(true), run(false));
            assert!(rel(&y1, &y2) < 1e-6, "values differ by {} (packed: {})", rel(&y1, &y2), packed.is_some());
            for (name, (a, b)) in ["x", "gain", "wq", "wk", "wv", "wo"].iter().zip(g1.iter().zip(&g2)) {
                assert!(rel(a, b) < 1e-5, "gradient of {name} differs by {} (packed: {})", rel(a, b), packed.is_some());
            }
        }
    }
}

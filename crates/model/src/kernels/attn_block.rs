//! The attention half of a block with its residual connection as one op, for training and
//! scoring whole sequences: `y = x + attention(rope(n · Wqᵀ), rope(n · Wkᵀ), n · Wvᵀ) · Woᵀ` with
//! `n = rmsnorm(x)`.
//!
//! As separate ops the half is a norm, three projections, six reshapes and transposes, two
//! rotations, the attention, the output projection and an add: fifteen nodes of candle's autograd
//! graph, each of whose gradients the graph walk zero-fills and adds into on one thread while the
//! pool waits. Here q, k and v are one product against their weights stacked (`[Wq; Wk; Wv; gain]`,
//! the caller's concatenation), rotated in place and read by the attention where they lie; the
//! backward pass writes their gradients into one buffer, so the input's gradient is one product
//! too, and the residual add is the output projection accumulating into a copy of `x`.

use super::attention::{Attention, Dims, Heads};
use super::grad_sink::{stack, WeightGrad};
use super::rms_norm::{backward_rows, forward_rows};
use super::rope::{rotate, tables};
use super::{copied, f32s, matmul, new_product, rows_per_task, zeros, F32View, SharedOut};
use crate::packing::Packing;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

struct AttnBlock {
    eps: f32,
    heads: usize,
    kv_heads: usize,
    attention: Attention,
    /// Cosines and sines of positions `0..T`, `head_dim / 2` per position.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Where the gradients of the stacked weights and of the output projection go.
    w_grad: WeightGrad,
    wo_grad: WeightGrad,
    saved: Mutex<Option<Saved>>,
}

/// What the backward pass reads again.
struct Saved {
    /// Each row's inverse RMS.
    inv: Vec<f32>,
    /// The normalised input, `rows × D`.
    normed: Vec<f32>,
    /// q and k rotated, and v: `rows × (H + 2·KV)·hd`.
    qkv: Vec<f32>,
    /// The attention's output before the projection, `rows × H·hd` (the attention keeps its
    /// rows' log-sum-exp itself).
    out: Vec<f32>,
}

/// The shapes of one call, from x `(B, T, D)`, the stacked weights `(E + 1, D)` and `Wo (D, H·hd)`.
struct Shapes {
    dims: Dims,
    d: usize,
    /// Width of a q, k, v row: `(H + 2·KV) · hd`.
    e: usize,
}

impl AttnBlock {
    fn shapes(&self, x: &[usize], w: &[usize], wo: &[usize]) -> Result<Shapes> {
        let (h, kv) = (self.heads, self.kv_heads);
        if let (&[b, t, d], &[s, wd], &[od, hhd]) = (x, w, wo) {
            let hd = hhd / h.max(1);
            let e = (h + 2 * kv) * hd;
            let fits = kv > 0 && h.is_multiple_of(kv) && hd * h == hhd && hd % 2 == 0;
            if fits && wd == d && od == d && s == e + 1 && self.cos.len() == t * hd / 2 {
                return Ok(Shapes { dims: Dims { b, h, kv, t, s: t, hd }, d, e });
            }
        }
        candle_core::bail!(
            "attn-block: x {x:?}, stacked weights {w:?} and output projection {wo:?} do not fit {} heads, {} key/value heads \
             (expected (B, T, D), ((H + 2·KV)·hd + 1, D), (D, H·hd))",
            self.heads,
            self.kv_heads
        )
    }

    /// Rotates the q and k heads of every row of `qkv` (`rows × e`, positions cycling through T)
    /// in place, by the table's angles (`sign` −1 rotates back).
    fn rotate_all(&self, qkv: &mut [f32], s: &Shapes, sign: f32) {
        let (hd, t, e) = (s.dims.hd, s.dims.t, s.e);
        let half = hd / 2;
        let rotated = (s.dims.h + s.dims.kv) * hd;
        let per = rows_per_task(e);
        qkv.par_chunks_mut(per * e).enumerate().for_each(|(c, rows)| {
            let mut head = vec![0f32; hd];
            for (i, row) in rows.chunks_exact_mut(e).enumerate() {
                let p = (c * per + i) % t;
                let (cos, sin) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
                for out in row[..rotated].chunks_exact_mut(hd) {
                    head.copy_from_slice(out);
                    rotate(&head, cos, sin, sign, out);
                }
            }
        });
    }

    /// Where q, k and v lie in a `rows × e` buffer: offsets of their first rows and the steps
    /// between batches, heads and positions.
    fn layout(s: &Shapes) -> [(usize, (usize, usize, usize)); 3] {
        let (hd, t, e) = (s.dims.hd, s.dims.t, s.e);
        let steps = (t * e, hd, e);
        [(0, steps), (s.dims.h * hd, steps), ((s.dims.h + s.dims.kv) * hd, steps)]
    }
}

impl CustomOp3 for AttnBlock {
    fn name(&self) -> &'static str {
        "fused-attn-block"
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
        let (x, w, wo) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?, f32s(s3, l3, self.name())?);
        let s = self.shapes(l1.dims(), l2.dims(), l3.dims())?;
        let (d, e, hhd) = (s.d, s.e, s.dims.h * s.dims.hd);
        let rows = s.dims.b * s.dims.t;
        let mut normed = zeros(rows * d);
        let inv = forward_rows(x, &w[e * d..], self.eps, &mut normed);
        let mut qkv = new_product(rows, e, d, (&normed, d, 1), (w, 1, d), true);
        self.rotate_all(&mut qkv, &s, 1.0);
        let [q, k, v] = Self::layout(&s).map(|(at, steps)| Heads::strided(qkv.as_slice(), at, steps));
        let out = self.attention.forward(s.dims, q, k, v);
        let mut y = copied(x);
        matmul(rows, d, hhd, &mut y, d, true, (&out, hhd, 1), (wo, 1, hhd), 1.0, true);
        *self.saved.lock().expect("not poisoned") = Some(Saved { inv, normed, qkv, out });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        wo: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let s = self.shapes(x.dims(), w.dims(), wo.dims())?;
        let (d, e, hhd) = (s.d, s.e, s.dims.h * s.dims.hd);
        let rows = s.dims.b * s.dims.t;
        let grad = grad.contiguous()?;
        let op = self.name();
        let views = [F32View::of(x, op)?, F32View::of(w, op)?, F32View::of(wo, op)?, F32View::of(&grad, op)?];
        let [xv, wv, wov, g] = views.each_ref().map(F32View::get);
        let saved = self.saved.lock().expect("not poisoned");
        let Some(Saved { inv, normed, qkv, out }) = saved.as_ref() else {
            candle_core::bail!("{op}: backward pass before the forward pass")
        };
        let d_wo = self.wo_grad.needed().then(|| new_product(d, hhd, rows, (g, 1, d), (out, hhd, 1), true));
        let d_out = new_product(rows, hhd, d, (g, d, 1), (wov, hhd, 1), true);
        let mut d_qkv = zeros(rows * e);
        let [q, k, v] = Self::layout(&s).map(|(at, steps)| Heads::strided(qkv.as_slice(), at, steps));
        let grads = SharedOut::new(d_qkv.as_mut_ptr());
        let [dq, dk, dv] = Self::layout(&s).map(|(at, steps)| Heads::strided(grads, at, steps));
        // SAFETY: d_qkv holds every row of q, k and v in the layout they were read with, in
        // columns of their own, zeroed; it is not touched until the call returns.
        unsafe { self.attention.backward_into(s.dims, (q, k, v), out, &d_out, (dq, dk, dv)) };
        self.rotate_all(&mut d_qkv, &s, -1.0);
        let d_normed = new_product(rows, d, e, (&d_qkv, e, 1), (wv, d, 1), true);
        let mut dx = zeros(rows * d);
        let d_gain = backward_rows(xv, &wv[e * d..], &d_normed, inv, Some(g), &mut dx);
        let dw = self.w_grad.needed().then(|| {
            let mut dw = new_product(e, d, rows, (&d_qkv, 1, e), (normed, d, 1), true);
            dw.extend_from_slice(&d_gain);
            dw
        });
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            dw.map(|dw| self.w_grad.give(dw, w)).transpose()?.flatten(),
            d_wo.map(|dw| self.wo_grad.give(dw, wo)).transpose()?.flatten(),
        ))
    }
}

/// `x + attention(rmsnorm(x))` for f32 CPU tensors over whole sequences (positions from 0, no
/// cache): `x (B, T, D)`, `[wq, wk, wv]` `(H·hd, D)`, `(KV·hd, D)` twice, the norm's `gain (D)`,
/// `wo (D, H·hd)`, the rotary tables `(max_seq_len, hd / 2)`; with `packing`, each query sees its
/// own sequence only. Returns `(B, T, D)`. The op reads `[wq; wk; wv; gain]` stacked
/// `((H + 2·KV)·hd + 1, D)`; with a gradient sink open the weights' gradients go there
/// ([`super::grad_sink`]).
#[allow(clippy::too_many_arguments)]
pub fn attn_block(
    x: &Tensor,
    [wq, wk, wv]: [&Tensor; 3],
    gain: &Tensor,
    wo: &Tensor,
    (heads, kv_heads): (usize, usize),
    (cos, sin): (&Tensor, &Tensor),
    packing: Option<&Packing>,
    eps: f64,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    if let Some(p) = packing {
        p.check(b, t)?;
    }
    let hd = wo.dim(1)? / heads.max(1);
    let (cos, sin) = tables(cos, sin, 0, t)?;
    let attention = Attention::new((1.0 / (hd as f64).sqrt()) as f32, 0, packing);
    let (stacked, w_grad) = stack(&[wq, wk, wv, gain], x.dim(2)?)?;
    let (wo, wo_grad) = stack(&[wo], wo.dim(1)?)?;
    let op =
        AttnBlock { eps: eps as f32, heads, kv_heads, attention, cos, sin, w_grad, wo_grad, saved: Mutex::new(None) };
    x.contiguous()?.apply_op3(&stacked.contiguous()?, &wo.contiguous()?, op)
}

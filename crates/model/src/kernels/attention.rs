//! Causal attention `softmax(scale · q·kᵀ + mask) · v` as one op with its own backward, computed
//! one block of query rows at a time (the flash-attention scheme, on the CPU).
//!
//! The composite keeps the scores and the probabilities of every head for the backward pass (two
//! `T × S` matrices per head and layer), copies `kᵀ`, the grouped-query repeat of k and v, and the
//! transposed output. Here a block of at most `BLOCK` query rows sees only the keys it may attend
//! to (so the masked half of the products is skipped), its scores live in a per-thread buffer, and
//! only the log-sum-exp of each row is kept; the backward recomputes the probabilities from it.
//! Key/value heads are shared by their query heads in place, and the output is written directly
//! in `(B, T, H · head_dim)` order, ready for the output projection.

use super::simd::{self, dispatch};
use super::{matmul, matmul_raw, zeros, SharedOut};
use crate::packing::Packing;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Query rows per block: the block's scores (`BLOCK × S`) stay in L2 for S up to a few thousand.
const BLOCK: usize = 64;

/// A `(B, heads, T, head_dim)` operand inside a buffer `D`: where its first row lies and the steps
/// between batches, heads and rows; the last dimension is contiguous. The buffer is a slice to read
/// ([`HeadsIn`]) or, for a gradient that several tasks write (each its own rows), a shared pointer
/// ([`HeadsOut`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads<D> {
    data: D,
    offset: usize,
    sb: usize,
    sh: usize,
    st: usize,
}

/// Heads read in place.
pub(crate) type HeadsIn<'a> = Heads<&'a [f32]>;
/// Heads written by the tasks of a backward pass.
pub(crate) type HeadsOut = Heads<SharedOut>;

impl<D> Heads<D> {
    /// Heads within `data`: the first row at `offset`, then steps between batches, heads and rows.
    pub(crate) fn strided(data: D, offset: usize, (sb, sh, st): (usize, usize, usize)) -> Self {
        Self { data, offset, sb, sh, st }
    }

    /// Offset of row `t` of head `h` in batch `b`.
    fn at(&self, b: usize, h: usize, t: usize) -> usize {
        self.offset + b * self.sb + h * self.sh + t * self.st
    }
}

impl<'a> HeadsIn<'a> {
    fn of(s: &'a CpuStorage, l: &Layout, hd: usize, what: &str) -> Result<Self> {
        let CpuStorage::F32(data) = s else { candle_core::bail!("attention: {what} must be f32") };
        let (dims, st) = (l.dims(), l.stride());
        if dims.len() != 4 || dims[3] != hd || (hd > 1 && st[3] != 1) {
            candle_core::bail!("attention: {what} must be (B, heads, T, {hd}) with contiguous rows, got {dims:?}");
        }
        Ok(Self::strided(data.as_slice(), l.start_offset(), (st[0], st[1], st[2])))
    }
}

impl HeadsOut {
    /// Row `t` of head `h` in batch `b` (a valid place to write only if the buffer holds it).
    fn row(&self, b: usize, h: usize, t: usize) -> *mut f32 {
        self.data.ptr().wrapping_add(self.at(b, h, t))
    }
}

/// The shapes an attention call works on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) b: usize,
    pub(crate) h: usize,
    pub(crate) kv: usize,
    pub(crate) t: usize,
    pub(crate) s: usize,
    pub(crate) hd: usize,
}

/// The attention of one call: its scale, causal offset and packing, and the log-sum-exp of each
/// query row that the forward pass leaves for the backward pass.
pub(crate) struct Attention {
    scale: f32,
    /// Position of the first query (keys before it come from a cache).
    start: usize,
    /// With packed sequences, the first key each query `(b, t)` may see (`b · T + t`).
    first: Option<Arc<[u32]>>,
    /// Log-sum-exp of each query row's scaled scores, `(B, H, T)`, for the backward pass.
    lse: Mutex<Vec<f32>>,
}

impl Attention {
    /// Keys visible to query row `i` (0-based within this call): the end of its range.
    fn visible(&self, i: usize, s: usize) -> usize {
        (self.start + i + 1).min(s)
    }

    /// The first key query row `i` of batch `b` may see: the start of its packed sequence, or 0.
    fn first_key(&self, b: usize, i: usize, t: usize) -> usize {
        self.first.as_ref().map_or(0, |f| f[b * t + i] as usize)
    }

    /// Scaled, masked scores of query rows `r0..r1` of `(b, h)` against their visible keys, turned
    /// into probabilities in place: `p` holds `(r1 − r0) × keys` values. With `lse` given the rows
    /// are normalised by it (backward); otherwise each row's log-sum-exp is written there.
    #[allow(clippy::too_many_arguments)]
    fn probabilities(
        &self,
        d: Dims,
        q: HeadsIn,
        k: HeadsIn,
        (b, h, r0, r1): (usize, usize, usize, usize),
        p: &mut [f32],
        lse: &mut [f32],
        given: bool,
    ) -> usize {
        let keys = self.visible(r1 - 1, d.s);
        let kvh = h / (d.h / d.kv);
        let rows = r1 - r0;
        matmul(
            rows,
            keys,
            d.hd,
            p,
            keys,
            false,
            (&q.data[q.at(b, h, r0)..], q.st, 1),
            (&k.data[k.at(b, kvh, 0)..], 1, k.st),
            self.scale,
            false,
        );
        for (i, row) in p[..rows * keys].chunks_exact_mut(keys).enumerate() {
            let (lo, hi) = (self.first_key(b, r0 + i, d.t), self.visible(r0 + i, d.s));
            lse[i] = normalise_row(row, lo, hi, if given { lse[i] } else { f32::NAN });
        }
        keys
    }
}

#[inline(always)]
fn normalise_row_impl(row: &mut [f32], lo: usize, hi: usize, lse: f32) -> f32 {
    let (before, rest) = row.split_at_mut(lo);
    before.fill(0.0);
    let (seen, masked) = rest.split_at_mut(hi - lo);
    masked.fill(0.0);
    if !lse.is_nan() {
        for x in seen.iter_mut() {
            *x = simd::exp(*x - lse);
        }
        return lse;
    }
    simd::softmax_in_place(seen, 1.0)
}

dispatch! {
    /// Scaled scores → probabilities in place: entries `lo..hi` (the visible keys) become
    /// `exp(x − lse)`, the rest 0. `lse` is computed from them when NaN is given; returns it.
    pub fn normalise_row(row: &mut [f32], lo: usize, hi: usize, lse: f32) -> f32 = normalise_row_impl;
}

impl Attention {
    /// The attention of queries at positions `start..`, within their packed sequences if `packing`.
    pub(crate) fn new(scale: f32, start: usize, packing: Option<&Packing>) -> Self {
        Self { scale, start, first: packing.map(Packing::starts), lse: Mutex::new(Vec::new()) }
    }

    /// The output `(B, T, H · hd)`; the log-sum-exp of every query row `(B, H, T)` is kept for
    /// [`Self::backward_into`].
    pub(crate) fn forward(&self, d: Dims, q: HeadsIn, k: HeadsIn, v: HeadsIn) -> Vec<f32> {
        let hd = d.hd;
        let blocks = d.t.div_ceil(BLOCK);
        let mut out = zeros(d.b * d.t * d.h * hd);
        let mut lse = vec![0f32; d.b * d.h * d.t];
        let out_ptr = SharedOut::new(out.as_mut_ptr());
        // One task per (batch, head, block of query rows); each writes its own rows of the output.
        lse.par_chunks_mut(d.t).enumerate().for_each(|(bh, lse_bh)| {
            let (b, h) = (bh / d.h, bh % d.h);
            let kvh = h / (d.h / d.kv);
            let mut p = vec![0f32; BLOCK * d.s];
            let mut o = vec![0f32; BLOCK * hd];
            for blk in 0..blocks {
                let (r0, r1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(d.t));
                let rows = r1 - r0;
                let keys = self.probabilities(d, q, k, (b, h, r0, r1), &mut p, &mut lse_bh[r0..r1], false);
                matmul(
                    rows,
                    hd,
                    keys,
                    &mut o,
                    hd,
                    false,
                    (&p, keys, 1),
                    (&v.data[v.at(b, kvh, 0)..], v.st, 1),
                    1.0,
                    false,
                );
                for (i, row) in o[..rows * hd].chunks_exact(hd).enumerate() {
                    let at = ((b * d.t + r0 + i) * d.h + h) * hd;
                    // SAFETY: row (b, r0 + i, h) of the output belongs to this task alone, and
                    // lies inside `out` (b < B, r0 + i < T, h < H).
                    unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out_ptr.ptr().add(at), hd) };
                }
            }
        });
        *self.lse.lock().expect("lse lock") = lse;
        out
    }

    /// Gradients of q, k and v for the output `o` and its gradient `g` (both `(B, T, H · hd)`) of
    /// the last [`Self::forward`], written through `dq` and accumulated into `dk` and `dv`. One task per (batch, key/value
    /// head), which owns that head's dk and dv and the dq of its query heads.
    ///
    /// # Safety
    /// The three buffers hold every row of their operand's shape, `dk` and `dv` zeroed, and no
    /// row of one is a row of another; nothing else touches them until this returns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn backward_into(
        &self,
        d: Dims,
        (qh, kh, vh): (HeadsIn, HeadsIn, HeadsIn),
        o_all: &[f32],
        g_all: &[f32],
        (dq, dk, dv): (HeadsOut, HeadsOut, HeadsOut),
    ) {
        let lse = self.lse.lock().expect("lse lock");
        let hd = d.hd;
        let groups = d.h / d.kv;
        let blocks = d.t.div_ceil(BLOCK);
        (0..d.b * d.kv).into_par_iter().for_each(|bkv| {
            let (b, kvh) = (bkv / d.kv, bkv % d.kv);
            let (mut p, mut dp) = (vec![0f32; BLOCK * d.s], vec![0f32; BLOCK * d.s]);
            let mut lse_blk = [0f32; BLOCK];
            let (dk_at, dv_at) = (dk.row(b, kvh, 0), dv.row(b, kvh, 0));
            for h in kvh * groups..(kvh + 1) * groups {
                for blk in 0..blocks {
                    let (r0, r1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(d.t));
                    let rows = r1 - r0;
                    let lse_at = (b * d.h + h) * d.t + r0;
                    lse_blk[..rows].copy_from_slice(&lse[lse_at..lse_at + rows]);
                    let keys = self.probabilities(d, qh, kh, (b, h, r0, r1), &mut p, &mut lse_blk, true);
                    // Rows of o and g for this head: stride H · hd in the (B, T, H · hd) output.
                    let row_step = d.h * hd;
                    let og = ((b * d.t + r0) * d.h + h) * hd;
                    let (ob, gb) = (&o_all[og..], &g_all[og..]);
                    // SAFETY (all four products): the caller's buffers hold these rows, and this
                    // task alone writes the dk and dv rows of (b, kvh) and the dq rows of (b, h).
                    // dv += pᵀ · g
                    unsafe {
                        matmul_raw(keys, hd, rows, dv_at, dv.st, true, (&p, 1, keys), (gb, row_step, 1), 1.0, false)
                    };
                    // dp = g · vᵀ
                    matmul(
                        rows,
                        keys,
                        hd,
                        &mut dp,
                        keys,
                        false,
                        (gb, row_step, 1),
                        (&vh.data[vh.at(b, kvh, 0)..], 1, vh.st),
                        1.0,
                        false,
                    );
                    // ds = p ⊙ (dp − rowsum(g ⊙ o)), scaled; kept in dp.
                    for i in 0..rows {
                        let (orow, grow) = (&ob[i * row_step..i * row_step + hd], &gb[i * row_step..i * row_step + hd]);
                        let delta = simd::dot(orow, grow);
                        let (pr, dr) = (&p[i * keys..(i + 1) * keys], &mut dp[i * keys..(i + 1) * keys]);
                        for (x, &pv) in dr.iter_mut().zip(pr) {
                            *x = pv * (*x - delta) * self.scale;
                        }
                    }
                    // dq = ds · k, into rows r0..r1 of (b, h).
                    let kb = (&kh.data[kh.at(b, kvh, 0)..], kh.st, 1);
                    unsafe {
                        matmul_raw(rows, hd, keys, dq.row(b, h, r0), dq.st, false, (&dp, keys, 1), kb, 1.0, false)
                    };
                    // dk += dsᵀ · q
                    let qb = (&qh.data[qh.at(b, h, r0)..], qh.st, 1);
                    unsafe { matmul_raw(keys, hd, rows, dk_at, dk.st, true, (&dp, 1, keys), qb, 1.0, false) };
                }
            }
        });
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let (qd, kd) = (l1.dims(), l2.dims());
        let hd = *qd.last().unwrap_or(&0);
        let (q, k, v) = (Heads::of(s1, l1, hd, "q")?, Heads::of(s2, l2, hd, "k")?, Heads::of(s3, l3, hd, "v")?);
        let d = Dims { b: qd[0], h: qd[1], kv: kd[1], t: qd[2], s: kd[2], hd };
        if kd[0] != d.b || d.kv == 0 || !d.h.is_multiple_of(d.kv) || l3.dims() != kd || self.start + d.t > d.s {
            candle_core::bail!("attention: q {qd:?} does not fit k {kd:?} / v {:?} at start {}", l3.dims(), self.start);
        }
        let out = self.forward(d, q, k, v);
        Ok((CpuStorage::F32(out), Shape::from((d.b, d.t, d.h * hd))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (os, ol) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let op = "attention backward";
        let qc = super::cpu_storage(&qs, op)?;
        let (kc, vc) = (super::cpu_storage(&ks, op)?, super::cpu_storage(&vs, op)?);
        let (oc, gc) = (super::cpu_storage(&os, op)?, super::cpu_storage(&gs, op)?);
        let hd = q.dim(3)?;
        let heads = (Heads::of(qc, ql, hd, "q")?, Heads::of(kc, kl, hd, "k")?, Heads::of(vc, vl, hd, "v")?);
        let d = Dims { b: q.dim(0)?, h: q.dim(1)?, kv: k.dim(1)?, t: q.dim(2)?, s: k.dim(2)?, hd };
        let (o, g) = (super::f32s(oc, ol, op)?, super::f32s(gc, gl, op)?);
        let mut dq = zeros(d.b * d.h * d.t * hd);
        let mut dk = zeros(d.b * d.kv * d.s * hd);
        let mut dv = zeros(d.b * d.kv * d.s * hd);
        let contiguous = |heads: usize, t: usize| (heads * t * hd, t * hd, hd);
        let outs = (
            Heads::strided(SharedOut::new(dq.as_mut_ptr()), 0, contiguous(d.h, d.t)),
            Heads::strided(SharedOut::new(dk.as_mut_ptr()), 0, contiguous(d.kv, d.s)),
            Heads::strided(SharedOut::new(dv.as_mut_ptr()), 0, contiguous(d.kv, d.s)),
        );
        // SAFETY: three separate buffers of the operands' full contiguous shapes, dk and dv zeroed.
        unsafe { self.backward_into(d, heads, o, g, outs) };
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (d.b, d.h, d.t, hd), dev)?),
            Some(Tensor::from_vec(dk, (d.b, d.kv, d.s, hd), dev)?),
            Some(Tensor::from_vec(dv, (d.b, d.kv, d.s, hd), dev)?),
        ))
    }
}

/// Causal attention of f32 CPU tensors: q `(B, H, T, hd)`, k and v `(B, KV, S, hd)` (KV dividing H;
/// any strides with contiguous rows), the T queries at positions `start..start + T` of the S keys;
/// with `packing` (checked by the caller to match), within each query's own sequence.
/// Returns `(B, T, H · hd)`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    start: usize,
    packing: Option<&Packing>,
) -> Result<Tensor> {
    q.apply_op3(k, v, Attention::new(scale as f32, start, packing))
}

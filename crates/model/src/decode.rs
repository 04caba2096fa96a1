//! Batch-1 decoding on the CPU in f32: one new token through the same weights and the same math as
//! [`Transformer::forward`], over plain buffers instead of tensors.
//!
//! Decoding one token reads every weight once and does little else, so the tensor path's
//! per-operation costs — a fresh output allocation per op, the cache re-concatenated every step,
//! keys transposed into a copy for each product — are a large share of its time (30%, measured).
//! Here the cache is a buffer written in place (one row per position), activations live in a few
//! reused vectors, and the matrix–vector products of one input run as one parallel call
//! ([`gemv_many`]). Every model variant (grouped-query attention, QK-norm, tied output,
//! activations) goes through the same steps as the tensor path; tests compare the two.

use crate::config::Activation;
use crate::kernels::attention::normalise_row;
use crate::kernels::gemv::{gemv, gemv_many};
use crate::kernels::rope::rotate;
use crate::kernels::F32View;
use crate::kernels::{rms_norm::forward_row as rms_row, simd, swiglu};
use crate::transformer::{KvCache, LayerKv, Transformer};
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

/// Keys and values of one layer for one sequence, `[kv_head][position][head_dim]`, with room for
/// `cap` positions (grown by doubling).
#[derive(Debug, Clone)]
pub(crate) struct HostKv {
    k: Vec<f32>,
    v: Vec<f32>,
    cap: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl HostKv {
    fn with_capacity(kv_heads: usize, head_dim: usize, cap: usize) -> Self {
        let n = kv_heads * cap * head_dim;
        Self { k: vec![0.0; n], v: vec![0.0; n], cap, kv_heads, head_dim }
    }

    /// Copies `(1, KV, len, hd)` tensors in, leaving room for at least `need` positions.
    pub(crate) fn from_tensors(k: &Tensor, v: &Tensor, need: usize) -> Result<Self> {
        let (b, kv_heads, len, head_dim) = k.dims4()?;
        if b != 1 {
            candle_core::bail!("decode: the cache holds {b} sequences; batch-1 decoding needs one");
        }
        let mut host = Self::with_capacity(kv_heads, head_dim, grown(len.max(need)));
        let cap = host.cap;
        for (src, buf) in [(k, &mut host.k), (v, &mut host.v)] {
            let data = src.flatten_all()?.to_vec1::<f32>()?;
            for h in 0..kv_heads {
                let from = &data[h * len * head_dim..(h + 1) * len * head_dim];
                buf[h * cap * head_dim..][..len * head_dim].copy_from_slice(from);
            }
        }
        Ok(host)
    }

    /// The first `len` positions as `(1, KV, len, hd)` tensors (for the tensor path).
    pub(crate) fn to_tensors(&self, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let hd = self.head_dim;
        let take = |buf: &[f32]| -> Result<Tensor> {
            let mut out = Vec::with_capacity(self.kv_heads * len * hd);
            for h in 0..self.kv_heads {
                out.extend_from_slice(&buf[h * self.cap * hd..][..len * hd]);
            }
            Tensor::from_vec(out, (1, self.kv_heads, len, hd), device)
        };
        Ok((take(&self.k)?, take(&self.v)?))
    }

    /// Makes room for position `pos`, keeping the first `pos` positions.
    fn reserve(&mut self, pos: usize) {
        if pos < self.cap {
            return;
        }
        let mut bigger = Self::with_capacity(self.kv_heads, self.head_dim, grown(pos + 1));
        let hd = self.head_dim;
        for h in 0..self.kv_heads {
            let (from, to) = (h * self.cap * hd, h * bigger.cap * hd);
            bigger.k[to..to + pos * hd].copy_from_slice(&self.k[from..from + pos * hd]);
            bigger.v[to..to + pos * hd].copy_from_slice(&self.v[from..from + pos * hd]);
        }
        *self = bigger;
    }

    fn write(&mut self, pos: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        for h in 0..self.kv_heads {
            let at = (h * self.cap + pos) * hd;
            self.k[at..at + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
            self.v[at..at + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
    }
}

/// Capacity for `n` positions: the next power of two, at least 64.
fn grown(n: usize) -> usize {
    n.next_power_of_two().max(64)
}

/// A weight's elements for the step (an error names decoding if it is not contiguous f32 on the CPU).
fn view(t: &Tensor) -> Result<F32View<'_>> {
    F32View::of(t, "decode")
}

/// Whether [`step`] can run this model: f32 weights on the CPU, fused kernels allowed.
pub(crate) fn eligible(model: &Transformer) -> bool {
    // Adapted projections take the general path (merged checkpoints decode here as usual).
    crate::ops::fused_enabled() && crate::kernels::supported(model.embed.embeddings()) && !model.adapted()
}

/// Rotates each head of `x` (heads of `2 · cos.len()` values) in place.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for head in x.chunks_exact_mut(2 * cos.len()) {
        let src = head.to_vec();
        rotate(&src, cos, sin, 1.0, head);
    }
}

/// Logits `(1, 1, V)` for one token at position `cache.len()`, appending its keys and values.
pub(crate) fn step(model: &Transformer, token: u32, cache: &mut KvCache) -> Result<Tensor> {
    // Run on a worker of the pool: each parallel product below is then split among the workers
    // directly, instead of the calling thread handing it over and sleeping until it is done.
    rayon::scope(|_| step_on_worker(model, token, cache))
}

fn step_on_worker(model: &Transformer, token: u32, cache: &mut KvCache) -> Result<Tensor> {
    let cfg = model.config();
    let (d, hd, nh, nkv) = (cfg.d_model, cfg.head_dim(), cfg.n_heads, cfg.n_kv_heads);
    let (pos, eps) = (cache.len(), cfg.norm_eps as f32);
    if token as usize >= cfg.vocab_size {
        candle_core::bail!("token id {token} is outside the vocabulary of {}", cfg.vocab_size);
    }
    let embed = view(model.embed.embeddings())?;
    let mut x = embed.get()[token as usize * d..(token as usize + 1) * d].to_vec();
    let (cos_t, sin_t) = (view(&model.rope.0)?, view(&model.rope.1)?);
    let half = hd / 2;
    let (cos, sin) = (&cos_t.get()[pos * half..(pos + 1) * half], &sin_t.get()[pos * half..(pos + 1) * half]);

    let (mut h, mut o) = (vec![0f32; d], vec![0f32; d]);
    let (mut q, mut k, mut v) = (vec![0f32; nh * hd], vec![0f32; nkv * hd], vec![0f32; nkv * hd]);
    let mut att = vec![0f32; nh * hd];
    let (mut gate, mut up, mut hidden) = (vec![0f32; cfg.ffn_dim], vec![0f32; cfg.ffn_dim], vec![0f32; cfg.ffn_dim]);
    let scale = 1.0 / (hd as f32).sqrt();
    let groups = nh / nkv;
    for (layer, block) in model.blocks.iter().enumerate() {
        let a = &block.attn;
        rms_row(&x, view(&block.input_norm)?.get(), eps, &mut h);
        let (wq, wk, wv) = (view(a.q.weight())?, view(a.k.weight())?, view(a.v.weight())?);
        gemv_many(vec![(wq.get(), &mut q[..]), (wk.get(), &mut k[..]), (wv.get(), &mut v[..])], &h);
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            for (t, w) in [(&mut q, view(qn)?), (&mut k, view(kn)?)] {
                for head in t.chunks_exact_mut(hd) {
                    let src = head.to_vec();
                    rms_row(&src, w.get(), eps, head);
                }
            }
        }
        rope(&mut q, cos, sin);
        rope(&mut k, cos, sin);

        let slot = &mut cache.layers[layer];
        let kv = match std::mem::take(slot) {
            LayerKv::Host(mut kv) => {
                kv.reserve(pos);
                kv
            }
            LayerKv::Tensors(pk, pv) => HostKv::from_tensors(&pk, &pv, pos + 1)?,
            LayerKv::Empty => HostKv::with_capacity(nkv, hd, grown(pos + 1)),
        };
        let kv = slot.insert_host(kv);
        kv.write(pos, &k, &v);
        let cap = kv.cap;
        let (keys, values) = (&kv.k, &kv.v);
        att.par_chunks_mut(hd).zip(q.par_chunks(hd)).enumerate().for_each(|(head, (out, qh))| {
            let base = (head / groups) * cap * hd;
            let mut p: Vec<f32> =
                (0..=pos).map(|s| scale * simd::dot(qh, &keys[base + s * hd..base + (s + 1) * hd])).collect();
            // Every cached position is visible to the newest query: probabilities in place.
            normalise_row(&mut p, 0, pos + 1, f32::NAN);
            out.fill(0.0);
            for (s, &w) in p.iter().enumerate() {
                let row = &values[base + s * hd..base + (s + 1) * hd];
                for (o, &vv) in out.iter_mut().zip(row) {
                    *o += w * vv;
                }
            }
        });
        gemv(view(a.o.weight())?.get(), &att, &mut o);
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);

        rms_row(&x, view(&block.post_norm)?.get(), eps, &mut h);
        let m = &block.mlp;
        let wu = view(m.up.weight())?;
        match (m.activation, &m.gate) {
            (Activation::Swiglu, Some(g)) => {
                let wg = view(g.weight())?;
                gemv_many(vec![(wg.get(), &mut gate[..]), (wu.get(), &mut up[..])], &h);
                swiglu::forward(&gate, &up, &mut hidden);
            }
            (Activation::Relu2, _) => {
                gemv(wu.get(), &h, &mut up);
                hidden.iter_mut().zip(&up).for_each(|(o, &u)| *o = u.max(0.0) * u.max(0.0));
            }
            _ => {
                gemv(wu.get(), &h, &mut up);
                hidden.iter_mut().zip(&up).for_each(|(o, &u)| *o = gelu_tanh(u));
            }
        }
        gemv(view(m.down.weight())?.get(), &hidden, &mut o);
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
    }
    rms_row(&x, view(&model.norm)?.get(), eps, &mut h);
    let mut logits = vec![0f32; cfg.vocab_size];
    gemv(view(model.lm_head.weight())?.get(), &h, &mut logits);
    cache.advance(1);
    Tensor::from_vec(logits, (1, 1, cfg.vocab_size), &Device::Cpu)
}

/// GELU, tanh approximation (what candle's `gelu` computes).
fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

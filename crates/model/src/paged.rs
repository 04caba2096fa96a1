//! The paged key–value cache and the batched forward pass over it, on the CPU in f32.
//!
//! Keys and values live in [`KvBlocks`]: a pool of fixed-size blocks, each holding `block_size`
//! consecutive positions of one sequence for every layer. A sequence owns a list of blocks (its
//! block table), so its cache grows a block at a time without copying, sequences of any length
//! share one pool whose size bounds memory, and a block holding a prompt prefix can be read by
//! several sequences at once (prefix caching, decided by the caller).
//!
//! [`Transformer::forward_paged`] runs one step for a batch of sequences: each brings a chunk of
//! new tokens (one when decoding, many when prefilling) at its own positions. The projections of
//! all the batch's tokens share one pass over the weights ([`gemv_many`]), which is what makes
//! batched decoding cheaper per token than decoding alone; attention then reads each token's own
//! sequence from its blocks. Every token is computed by the same per-row arithmetic whatever else
//! is in the batch and however its prompt was cut into chunks, so outputs do not depend on either
//! (tests hold them bit-identical). The same pass serves [`crate::KvCache`] for one sequence.

use crate::config::{Activation, ModelConfig};
use crate::kernels::attention::normalise_row;
use crate::kernels::gemv::{gemv, gemv_many};
use crate::kernels::rope::rotate;
use crate::kernels::F32View;
use crate::kernels::{rms_norm::forward_row as rms_row, simd, swiglu};
use crate::transformer::Transformer;
use candle_core::Result;
use rayon::prelude::*;

/// A pool of key–value blocks for one model.
#[derive(Debug, Clone)]
pub struct KvBlocks {
    block_size: usize,
    n_blocks: usize,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    /// `[block][layer][kv_head][slot][head_dim]`: one block's keys of one head are contiguous.
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvBlocks {
    /// A pool of `n_blocks` blocks of `block_size` positions for models shaped like `cfg`. The
    /// memory is reserved zeroed, so the operating system backs it with pages only as blocks are
    /// first written.
    pub fn new(cfg: &ModelConfig, block_size: usize, n_blocks: usize) -> Self {
        let mut pool = Self {
            block_size: block_size.max(1),
            n_blocks: 0,
            layers: cfg.n_layers,
            kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim(),
            k: Vec::new(),
            v: Vec::new(),
        };
        pool.grow(n_blocks);
        pool
    }

    /// Bytes one block of `block_size` positions takes for models shaped like `cfg` (keys and
    /// values).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize) -> usize {
        2 * 4 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim() * block_size
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Grows the pool to `n_blocks` blocks (never shrinks), keeping what is stored.
    pub fn grow(&mut self, n_blocks: usize) {
        if n_blocks > self.n_blocks {
            let len = n_blocks * self.block_floats();
            self.k.resize(len, 0.0);
            self.v.resize(len, 0.0);
            self.n_blocks = n_blocks;
        }
    }

    fn block_floats(&self) -> usize {
        self.layers * self.kv_heads * self.block_size * self.head_dim
    }

    /// Where position `pos` of the sequence with block table `blocks` starts, for `layer` and head 0.
    fn at(&self, blocks: &[u32], pos: usize, layer: usize) -> usize {
        let (block, slot) = (blocks[pos / self.block_size] as usize, pos % self.block_size);
        ((block * self.layers + layer) * self.kv_heads * self.block_size + slot) * self.head_dim
    }

    /// The step between heads of one position.
    fn head_step(&self) -> usize {
        self.block_size * self.head_dim
    }
}

/// One sequence's share of a batched step: `tokens` at positions `start..start + tokens.len()`,
/// with the keys and values of positions `0..start` already in the blocks of `blocks`.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// New tokens.
    pub tokens: &'a [u32],
    /// Position of the first new token (positions already cached).
    pub start: usize,
    /// Block table: block `i` holds positions `i · block_size ..`; it must cover every position
    /// up to the last new one.
    pub blocks: &'a [u32],
    /// Logits for every new position (to score a prompt), or only for the last.
    pub all_logits: bool,
}

/// A weight's elements (an error names the paged pass if it is not contiguous f32 on the CPU).
fn view(t: &candle_core::Tensor) -> Result<F32View<'_>> {
    F32View::of(t, "paged forward")
}

/// Normalises each `w.len()`-wide piece of `x` in place.
fn rms_pieces(x: &mut [f32], w: &[f32], eps: f32) {
    for piece in x.chunks_exact_mut(w.len()) {
        let src = piece.to_vec();
        rms_row(&src, w, eps, piece);
    }
}

/// GELU, tanh approximation (what candle's `gelu` computes).
fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

impl Transformer {
    /// Whether [`Transformer::forward_paged`] can run this model: f32 weights on the CPU, fused
    /// kernels allowed, no adapters (merged checkpoints run here as usual).
    pub fn supports_paged(&self) -> bool {
        crate::ops::fused_enabled() && crate::kernels::supported(self.embed.embeddings()) && !self.adapted()
    }

    /// One step for a batch of sequences over the paged cache `kv`: writes the keys and values of
    /// every chunk's new tokens into its blocks and returns, per chunk, its logits row-major
    /// (`tokens.len() × V` with `all_logits`, else `V`). Chunks must not write the same block.
    pub fn forward_paged(&self, kv: &mut KvBlocks, batch: &[Chunk]) -> Result<Vec<Vec<f32>>> {
        // Run on a worker of the pool: each parallel product below is then split among the
        // workers directly, instead of the calling thread handing it over and sleeping.
        rayon::scope(|_| self.paged_on_worker(kv, batch))
    }

    fn check_batch(&self, kv: &KvBlocks, batch: &[Chunk]) -> Result<()> {
        let cfg = self.config();
        if !self.supports_paged() {
            candle_core::bail!("the paged cache needs f32 weights on the CPU without adapters");
        }
        if (kv.layers, kv.kv_heads, kv.head_dim) != (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim()) {
            candle_core::bail!("the key-value pool was made for a model of another shape");
        }
        for c in batch {
            let end = c.start + c.tokens.len();
            if c.tokens.is_empty() {
                candle_core::bail!("a chunk of the batch has no tokens");
            }
            if end > cfg.max_seq_len {
                candle_core::bail!(
                    "sequence of {end} positions exceeds max_seq_len = {}; shorten the input or raise max_seq_len",
                    cfg.max_seq_len
                );
            }
            if let Some(&t) = c.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                candle_core::bail!("token id {t} is outside the vocabulary of {}", cfg.vocab_size);
            }
            if c.blocks.len() * kv.block_size < end || c.blocks.iter().any(|&b| b as usize >= kv.n_blocks) {
                candle_core::bail!("the block table does not cover {end} positions in a pool of {}", kv.n_blocks);
            }
        }
        Ok(())
    }

    fn paged_on_worker(&self, kv: &mut KvBlocks, batch: &[Chunk]) -> Result<Vec<Vec<f32>>> {
        self.check_batch(kv, batch)?;
        let cfg = self.config();
        let (d, hd, nh, nkv, ffn) = (cfg.d_model, cfg.head_dim(), cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim);
        let eps = cfg.norm_eps as f32;
        // Every new token as (chunk, position), in batch order.
        let rows: Vec<(usize, usize)> =
            batch.iter().enumerate().flat_map(|(c, ch)| (0..ch.tokens.len()).map(move |j| (c, ch.start + j))).collect();
        let n = rows.len();

        let embed = view(self.embed.embeddings())?;
        let mut x = Vec::with_capacity(n * d);
        for ch in batch {
            for &t in ch.tokens {
                x.extend_from_slice(&embed.get()[t as usize * d..(t as usize + 1) * d]);
            }
        }
        let (cos_t, sin_t) = (view(&self.rope.0)?, view(&self.rope.1)?);
        let half = hd / 2;
        let table = |t: &[f32], pos: usize| t[pos * half..(pos + 1) * half].to_vec();
        let angles: Vec<(Vec<f32>, Vec<f32>)> =
            rows.iter().map(|&(_, p)| (table(cos_t.get(), p), table(sin_t.get(), p))).collect();

        let mut h = vec![0f32; n * d];
        let (mut q, mut k, mut v) = (vec![0f32; n * nh * hd], vec![0f32; n * nkv * hd], vec![0f32; n * nkv * hd]);
        let mut att = vec![0f32; n * nh * hd];
        let mut o = vec![0f32; n * d];
        let (mut gate, mut up, mut hidden) = (vec![0f32; n * ffn], vec![0f32; n * ffn], vec![0f32; n * ffn]);
        let scale = 1.0 / (hd as f32).sqrt();
        let groups = nh / nkv;
        let norm_rows = |x: &[f32], w: &[f32], out: &mut [f32]| {
            out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, x)| {
                rms_row(x, w, eps, o);
            })
        };
        for (layer, block) in self.blocks.iter().enumerate() {
            let a = &block.attn;
            norm_rows(&x, view(&block.input_norm)?.get(), &mut h);
            let (wq, wk, wv) = (view(a.q.weight())?, view(a.k.weight())?, view(a.v.weight())?);
            gemv_many(vec![(wq.get(), &mut q[..]), (wk.get(), &mut k[..]), (wv.get(), &mut v[..])], &h, d);
            if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
                rms_pieces(&mut q, view(qn)?.get(), eps);
                rms_pieces(&mut k, view(kn)?.get(), eps);
            }
            for (i, (cos, sin)) in angles.iter().enumerate() {
                for t in [&mut q[i * nh * hd..(i + 1) * nh * hd], &mut k[i * nkv * hd..(i + 1) * nkv * hd]] {
                    for head in t.chunks_exact_mut(hd) {
                        let src = head.to_vec();
                        rotate(&src, cos, sin, 1.0, head);
                    }
                }
            }
            // New keys and values into their blocks, then attention reads the blocks.
            let step = kv.head_step();
            for (i, &(c, pos)) in rows.iter().enumerate() {
                let at = kv.at(batch[c].blocks, pos, layer);
                for head in 0..nkv {
                    let (dst, src) = (at + head * step, (i * nkv + head) * hd);
                    kv.k[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                    kv.v[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
            }
            let pool = &*kv;
            att.par_chunks_mut(hd).zip(q.par_chunks(hd)).enumerate().for_each(|(idx, (out, qh))| {
                let (i, head) = (idx / nh, idx % nh);
                let (c, pos) = rows[i];
                let blocks = batch[c].blocks;
                let off = (head / groups) * step;
                let key = |s: usize| pool.at(blocks, s, layer) + off;
                let mut p: Vec<f32> = (0..=pos).map(|s| scale * simd::dot(qh, &pool.k[key(s)..key(s) + hd])).collect();
                // Every cached position up to this one is visible to it: probabilities in place.
                normalise_row(&mut p, 0, pos + 1, f32::NAN);
                out.fill(0.0);
                for (s, &w) in p.iter().enumerate() {
                    let row = &pool.v[key(s)..key(s) + hd];
                    for (o, &vv) in out.iter_mut().zip(row) {
                        *o += w * vv;
                    }
                }
            });
            gemv(view(a.o.weight())?.get(), &att, nh * hd, &mut o);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);

            norm_rows(&x, view(&block.post_norm)?.get(), &mut h);
            let m = &block.mlp;
            let wu = view(m.up.weight())?;
            match (m.activation, &m.gate) {
                (Activation::Swiglu, Some(g)) => {
                    let wg = view(g.weight())?;
                    gemv_many(vec![(wg.get(), &mut gate[..]), (wu.get(), &mut up[..])], &h, d);
                    swiglu::forward(&gate, &up, &mut hidden);
                }
                (Activation::Relu2, _) => {
                    gemv(wu.get(), &h, d, &mut up);
                    hidden.iter_mut().zip(&up).for_each(|(o, &u)| *o = u.max(0.0) * u.max(0.0));
                }
                _ => {
                    gemv(wu.get(), &h, d, &mut up);
                    hidden.iter_mut().zip(&up).for_each(|(o, &u)| *o = gelu_tanh(u));
                }
            }
            gemv(view(m.down.weight())?.get(), &hidden, ffn, &mut o);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        }

        // The final norm and the output layer only for the rows whose logits are wanted.
        let norm = view(&self.norm)?;
        let mut wanted = Vec::new();
        let mut at = 0;
        for ch in batch {
            let len = ch.tokens.len();
            let from = if ch.all_logits { at } else { at + len - 1 };
            for i in from..at + len {
                let mut row = vec![0f32; d];
                rms_row(&x[i * d..(i + 1) * d], norm.get(), eps, &mut row);
                wanted.extend_from_slice(&row);
            }
            at += len;
        }
        let vocab = cfg.vocab_size;
        let mut logits = vec![0f32; wanted.len() / d * vocab];
        gemv(view(self.lm_head.weight())?.get(), &wanted, d, &mut logits);
        let mut out = Vec::with_capacity(batch.len());
        let mut rest = &logits[..];
        for ch in batch {
            let take = if ch.all_logits { ch.tokens.len() } else { 1 } * vocab;
            out.push(rest[..take].to_vec());
            rest = &rest[take..];
        }
        Ok(out)
    }
}

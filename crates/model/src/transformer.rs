//! The Llama-style decoder: pre-norm blocks of grouped-query attention with RoPE and a
//! feed-forward network, no biases. Weight names follow the Hugging Face Llama / Qwen3
//! `state_dict` (`model.layers.0.self_attn.q_proj.weight`, …) so export is a rename-free copy.

use crate::config::{Activation, ModelConfig};
use crate::kernels;
use crate::lora::{LoraSpec, Proj};
use crate::ops::trunk::{trunk, Layer};
use crate::ops::{
    attention, fused, linear, linear_cross_entropy, linear_logprobs, one_node, rms_norm, rope, rope_tables, swiglu,
    swiglu_down, swiglu_residual,
};
use crate::packing::Packing;
use crate::paged::{Chunk, KvBlocks};
use candle_core::{DType, Device, Result, Tensor, TensorId};
use candle_nn::{Embedding, Linear, VarBuilder};
use std::cell::RefCell;
use std::collections::HashMap;

/// One layer's cached keys and values: `(B, KV, capacity, head_dim)` buffers whose first `len`
/// positions are filled. New positions are written in place, the capacity doubling when full, so a
/// decoding step copies its own keys and values rather than the whole cache.
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

/// Positions a layer's cache holds at first.
const FIRST_CAPACITY: usize = 256;

impl LayerCache {
    /// Appends `k` and `v` `(B, KV, T, head_dim)` to the cache in `slot` (made on first use) and
    /// returns views of every cached position.
    fn append(slot: &mut Option<LayerCache>, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, kv, t, hd) = k.dims4()?;
        let len = slot.as_ref().map_or(0, |c| c.len);
        let capacity = match slot {
            Some(c) => c.k.dim(2)?,
            None => 0,
        };
        if len + t > capacity {
            let grown = (len + t).max(2 * capacity).max(FIRST_CAPACITY);
            let buffer = || Tensor::zeros((b, kv, grown, hd), k.dtype(), k.device());
            let (nk, nv) = (buffer()?, buffer()?);
            if let Some(old) = slot.as_ref().filter(|c| c.len > 0) {
                nk.slice_set(&old.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                nv.slice_set(&old.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            *slot = Some(LayerCache { k: nk, v: nv, len });
        }
        let c = slot.as_mut().expect("made above");
        c.k.slice_set(&k.contiguous()?, 2, c.len)?;
        c.v.slice_set(&v.contiguous()?, 2, c.len)?;
        c.len += t;
        Ok((c.k.narrow(2, 0, c.len)?, c.v.narrow(2, 0, c.len)?))
    }
}

impl Clone for LayerCache {
    /// A copy with buffers of its own: the buffers are written in place, so sharing them would let
    /// one copy's new positions overwrite the other's.
    fn clone(&self) -> Self {
        let copy = |t: &Tensor| t.copy().expect("copying a cache buffer");
        Self { k: copy(&self.k), v: copy(&self.v), len: self.len }
    }
}

/// Keys and values of earlier positions of one sequence (or one batch), for incremental decoding.
///
/// On the CPU in f32 a single sequence is cached in blocks of its own ([`KvBlocks`]) and decoded
/// by the paged pass; otherwise each layer keeps `(B, KV, capacity, head_dim)` buffers written in
/// place.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    paged: Option<KvBlocks>,
    len: usize,
}

/// Positions per block of a single sequence's paged cache.
const OWN_BLOCK: usize = 64;

impl KvCache {
    /// An empty cache for `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self { layers: vec![None; n_layers], paged: None, len: 0 }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub(crate) struct Attention {
    pub(crate) q: Proj,
    pub(crate) k: Proj,
    pub(crate) v: Proj,
    pub(crate) o: Proj,
    pub(crate) q_norm: Option<Tensor>,
    pub(crate) k_norm: Option<Tensor>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    eps: f64,
}

impl Attention {
    fn new(cfg: &ModelConfig, vb: &VarBuilder) -> Result<Self> {
        let (d, hd) = (cfg.d_model, cfg.head_dim());
        let norm = |name: &str| if cfg.qk_norm { vb.get(hd, &format!("{name}.weight")).map(Some) } else { Ok(None) };
        Ok(Self {
            q: Proj::new(vb, cfg.n_heads * hd, d, "q_proj")?,
            k: Proj::new(vb, cfg.n_kv_heads * hd, d, "k_proj")?,
            v: Proj::new(vb, cfg.n_kv_heads * hd, d, "v_proj")?,
            o: Proj::new(vb, d, cfg.n_heads * hd, "o_proj")?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: hd,
            eps: cfg.norm_eps,
        })
    }

    fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let norm = |n: &Option<Tensor>| n.as_ref().map(f).transpose();
        Ok(Self {
            q: self.q.map(f)?,
            k: self.k.map(f)?,
            v: self.v.map(f)?,
            o: self.o.map(f)?,
            q_norm: norm(&self.q_norm)?,
            k_norm: norm(&self.k_norm)?,
            ..*self
        })
    }

    /// x (B, T, D) at positions `start..start + T` → (B, T, D).
    fn forward(
        &self,
        x: &Tensor,
        rope_t: &(Tensor, Tensor),
        start: usize,
        cache: Option<&mut Option<LayerCache>>,
        packing: Option<&Packing>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, self.head_dim))?.transpose(1, 2);
        let mut q = heads(self.q.forward(x)?, self.n_heads)?; // (B, H, T, hd)
        let mut k = heads(self.k.forward(x)?, self.n_kv_heads)?; // (B, KV, T, hd)
        let v = heads(self.v.forward(x)?, self.n_kv_heads)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = rms_norm(&q, qn, self.eps)?;
            k = rms_norm(&k, kn, self.eps)?;
        }
        // The fused rope reads the transposed views in place; the composite copes with any layout.
        let q = rope(&q, &rope_t.0, &rope_t.1, start)?;
        let k = rope(&k, &rope_t.0, &rope_t.1, start)?;
        let (k, v) = match cache {
            Some(slot) => LayerCache::append(slot, &k, &v)?,
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        self.o.forward(&attention(&q, &k, &v, scale, start, packing)?)
    }
}

pub(crate) struct Mlp {
    pub(crate) gate: Option<Proj>,
    pub(crate) up: Proj,
    pub(crate) down: Proj,
    pub(crate) activation: Activation,
}

impl Mlp {
    fn new(cfg: &ModelConfig, vb: &VarBuilder) -> Result<Self> {
        let gate = match cfg.activation {
            Activation::Swiglu => Some(Proj::new(vb, cfg.ffn_dim, cfg.d_model, "gate_proj")?),
            _ => None,
        };
        Ok(Self {
            gate,
            up: Proj::new(vb, cfg.ffn_dim, cfg.d_model, "up_proj")?,
            down: Proj::new(vb, cfg.d_model, cfg.ffn_dim, "down_proj")?,
            activation: cfg.activation,
        })
    }

    fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let gate = self.gate.as_ref().map(|g| g.map(f)).transpose()?;
        Ok(Self { gate, up: self.up.map(f)?, down: self.down.map(f)?, activation: self.activation })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let up = self.up.forward(x)?;
        let hidden = match (self.activation, &self.gate) {
            // The fused op keeps gate and up but not their product; an adapted down projection
            // needs the product as its input, so it takes the separate ops.
            (Activation::Swiglu, Some(gate)) if !self.down.adapted() => {
                return swiglu_down(&gate.forward(x)?, &up, self.down.weight())
            }
            (Activation::Swiglu, Some(gate)) => swiglu(&gate.forward(x)?, &up)?,
            (Activation::Relu2, _) => up.relu()?.sqr()?,
            _ => up.gelu()?,
        };
        self.down.forward(&hidden)
    }
}

pub(crate) struct Block {
    pub(crate) input_norm: Tensor,
    pub(crate) attn: Attention,
    pub(crate) post_norm: Tensor,
    pub(crate) mlp: Mlp,
    eps: f64,
}

impl Block {
    /// `x` plus the attention of its normalised self: over whole sequences without adapters or
    /// QK-norm, one op on the CPU in f32 ([`kernels::attn_block`]), otherwise (a GPU, bf16) one
    /// node of the graph ([`crate::ops::attn_residual`]).
    fn attn_residual(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        start: usize,
        cache: Option<&mut Option<LayerCache>>,
        packing: Option<&Packing>,
    ) -> Result<Tensor> {
        let a = &self.attn;
        let projections = [&a.q, &a.k, &a.v, &a.o];
        let weights = projections.map(Proj::weight);
        let whole = cache.is_none() && start == 0 && a.q_norm.is_none();
        if whole
            && !projections.iter().any(|p| p.adapted())
            && fused(&[x, &self.input_norm, &rope.0])
            && fused(&weights)
        {
            let heads = (a.n_heads, a.n_kv_heads);
            return kernels::attn_block::attn_block(
                x,
                [weights[0], weights[1], weights[2]],
                &self.input_norm,
                weights[3],
                heads,
                (&rope.0, &rope.1),
                packing,
                self.eps,
            );
        }
        if whole
            && !projections.iter().any(|p| p.adapted())
            && one_node(&[x, &self.input_norm, &rope.0])
            && one_node(&weights)
        {
            let heads = (a.n_heads, a.n_kv_heads);
            return crate::ops::attn_residual::attn_residual(
                x,
                &self.input_norm,
                weights,
                (&rope.0, &rope.1),
                heads,
                packing,
                self.eps,
            );
        }
        x + a.forward(&rms_norm(x, &self.input_norm, self.eps)?, rope, start, cache, packing)?
    }

    /// The block's weights for the stack of blocks as one node ([`crate::ops::trunk`]): where both
    /// halves would be one node each (SwiGLU, no adapters or QK-norm, tensors the CPU kernels do
    /// not take, a gradient to be taken).
    fn stack_layer(&self, x: &Tensor, rope: &(Tensor, Tensor)) -> Option<Layer<'_>> {
        let (a, m) = (&self.attn, &self.mlp);
        let gate = m.gate.as_ref()?;
        let plain = a.q_norm.is_none() && ![&a.q, &a.k, &a.v, &a.o, gate, &m.up, &m.down].iter().any(|p| p.adapted());
        let attn = [&self.input_norm, a.q.weight(), a.k.weight(), a.v.weight(), a.o.weight()];
        let mlp = [&self.post_norm, gate.weight(), m.up.weight(), m.down.weight()];
        let all: Vec<&Tensor> = attn.iter().chain(&mlp).copied().chain([x, &rope.0]).collect();
        let heads = (a.n_heads, a.n_kv_heads);
        (plain && !fused(&all) && one_node(&all)).then_some(Layer { attn, mlp, heads, eps: self.eps })
    }

    /// `x` plus the feed-forward half of its normalised self: for SwiGLU without adapters one op.
    fn mlp_residual(&self, x: &Tensor) -> Result<Tensor> {
        let m = &self.mlp;
        match &m.gate {
            Some(gate) if ![gate, &m.up, &m.down].iter().any(|p| p.adapted()) => {
                swiglu_residual(x, &self.post_norm, gate.weight(), m.up.weight(), m.down.weight(), self.eps)
            }
            _ => x + m.forward(&rms_norm(x, &self.post_norm, self.eps)?)?,
        }
    }
}

/// The decoder. One definition trains, loads and serves: weights come from a `VarBuilder`.
pub struct Transformer {
    cfg: ModelConfig,
    pub(crate) embed: Embedding,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Linear,
    pub(crate) rope: (Tensor, Tensor),
    device: Device,
    /// For a copy made by [`Transformer::cast`]: each cast weight's master variable, by the cast's
    /// id, where the block stack sends its gradient ([`crate::ops::trunk`]).
    masters: HashMap<TensorId, Tensor>,
}

impl Transformer {
    /// Builds the model from `vb` (a fresh parameter map for training, or loaded weights).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let m = vb.pp("model");
        let embed_w = m.get((cfg.vocab_size, cfg.d_model), "embed_tokens.weight")?;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let l = m.pp("layers").pp(i);
            blocks.push(Block {
                input_norm: l.get(cfg.d_model, "input_layernorm.weight")?,
                attn: Attention::new(cfg, &l.pp("self_attn"))?,
                post_norm: l.get(cfg.d_model, "post_attention_layernorm.weight")?,
                mlp: Mlp::new(cfg, &l.pp("mlp"))?,
                eps: cfg.norm_eps,
            });
        }
        let lm_head = if cfg.tie_embeddings {
            Linear::new(embed_w.clone(), None)
        } else {
            Linear::new(vb.get((cfg.vocab_size, cfg.d_model), "lm_head.weight")?, None)
        };
        let rope = rope_tables(cfg.head_dim(), cfg.max_seq_len, cfg.rope_theta, vb.dtype(), vb.device())?;
        Ok(Self {
            cfg: cfg.clone(),
            embed: Embedding::new(embed_w, cfg.d_model),
            blocks,
            norm: m.get(cfg.d_model, "norm.weight")?,
            lm_head,
            rope,
            device: vb.device().clone(),
            masters: HashMap::new(),
        })
    }

    /// Attaches a low-rank adapter ([`crate::lora`]) to every projection of every block (attention
    /// and feed-forward), its `A` and `B` new variables in `vars` under the projection's name
    /// (`model.layers.N.self_attn.q_proj.lora_A.weight`, …), `A` drawn from `seed`. The embedding,
    /// norms and output layer stay as they are.
    pub fn attach_lora(&mut self, spec: LoraSpec, vars: &candle_nn::VarMap, seed: u64) -> Result<()> {
        for p in self.projections_mut() {
            p.attach(spec, vars, seed)?;
        }
        Ok(())
    }

    /// True when adapters are attached.
    pub fn adapted(&self) -> bool {
        self.blocks.iter().any(|b| b.attn.q.adapted())
    }

    /// Every adapted projection's weight with its adapter merged in, by weight name: written over
    /// the base weights, they make a plain checkpoint.
    pub fn merged_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let projections = self.blocks.iter().flat_map(|b| {
            [&b.attn.q, &b.attn.k, &b.attn.v, &b.attn.o, &b.mlp.up, &b.mlp.down].into_iter().chain(b.mlp.gate.as_ref())
        });
        projections.filter(|p| p.adapted()).map(|p| Ok((format!("{}.weight", p.name()), p.merged()?))).collect()
    }

    fn projections_mut(&mut self) -> impl Iterator<Item = &mut Proj> {
        self.blocks.iter_mut().flat_map(|b| {
            let Block { attn, mlp, .. } = b;
            [&mut attn.q, &mut attn.k, &mut attn.v, &mut attn.o, &mut mlp.up, &mut mlp.down]
                .into_iter()
                .chain(mlp.gate.as_mut())
        })
    }

    /// The same model computing in `dtype`: every weight (adapters included) and the RoPE tables
    /// cast, differentiably, so the gradients of a loss computed with the copy reach this model's
    /// variables in their own dtype. Mixed-precision training builds one per step from the f32
    /// master weights: products in bf16, master weights and optimiser state in f32. The embedding
    /// table is not cast; the rows it looks up are (as autocast leaves embeddings alone): its
    /// gradient sums every occurrence of a token, a sum bf16 would round after a few hundred terms.
    /// A tied output layer gets a cast of its own, so the two gradients meet in the master's dtype.
    /// The copy records each cast weight's master, where the block stack of a training step sends
    /// its gradient directly (`ops::trunk`).
    pub fn cast(&self, dtype: DType) -> Result<Self> {
        let masters = RefCell::new(HashMap::new());
        let f = |t: &Tensor| {
            let cast = t.to_dtype(dtype)?;
            if t.is_variable() {
                masters.borrow_mut().insert(cast.id(), t.clone());
            }
            Ok(cast)
        };
        let blocks = self.blocks.iter().map(|b| {
            Ok(Block {
                input_norm: f(&b.input_norm)?,
                attn: b.attn.map(&f)?,
                post_norm: f(&b.post_norm)?,
                mlp: b.mlp.map(&f)?,
                eps: b.eps,
            })
        });
        Ok(Self {
            cfg: self.cfg.clone(),
            embed: self.embed.clone(),
            blocks: blocks.collect::<Result<_>>()?,
            norm: f(&self.norm)?,
            lm_head: Linear::new(f(self.lm_head.weight())?, None),
            rope: (f(&self.rope.0)?, f(&self.rope.1)?),
            device: self.device.clone(),
            masters: masters.into_inner(),
        })
    }

    /// The dtype its weights compute in.
    pub fn dtype(&self) -> DType {
        self.norm.dtype()
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device its weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits `(B, T, V)` for token ids `(B, T)` at positions `cache.len()..` (or `0..` without a cache).
    /// With a cache, the new keys and values are appended to it.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.forward_cached(ids, cache, true)
    }

    /// Logits of the last position only, `(B, V)`: what decoding needs.
    pub fn forward_last(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let logits = self.forward_cached(ids, cache, false)?;
        let t = logits.dim(1)?;
        logits.narrow(1, t - 1, 1)?.squeeze(1)
    }

    /// Logits `(B, T, V)`, or `(B, 1, V)` for the last position only unless `all`: then only that
    /// row goes through the output projection, the largest product of a prompt's pass.
    fn forward_cached(&self, ids: &Tensor, mut cache: Option<&mut KvCache>, all: bool) -> Result<Tensor> {
        let (b, _) = ids.dims2()?;
        if let (1, Some(cache)) = (b, cache.as_deref_mut()) {
            if self.supports_paged() && cache.layers.iter().all(Option::is_none) {
                return self.forward_own_blocks(&ids.to_vec2::<u32>()?[0], cache, all);
            }
        }
        if cache.as_ref().is_some_and(|c| c.paged.is_some()) {
            candle_core::bail!("this cache holds one sequence decoded on the CPU path; start a new cache");
        }
        let h = self.hidden(ids, cache, None)?;
        let t = h.dim(1)?;
        let h = if all { h } else { h.narrow(1, t - 1, 1)?.contiguous()? };
        linear(&h, self.lm_head.weight())
    }

    /// One sequence through the paged pass over blocks only its cache uses.
    fn forward_own_blocks(&self, tokens: &[u32], cache: &mut KvCache, all: bool) -> Result<Tensor> {
        let end = cache.len + tokens.len();
        self.check_length(end)?;
        let kv = cache.paged.get_or_insert_with(|| KvBlocks::new(&self.cfg, OWN_BLOCK, 0));
        kv.grow(end.div_ceil(OWN_BLOCK));
        let blocks: Vec<u32> = (0..kv.n_blocks() as u32).collect();
        let chunk = Chunk { tokens, start: cache.len, blocks: &blocks, all_logits: all };
        let logits = self.forward_paged(kv, &[chunk])?.remove(0);
        cache.len = end;
        let rows = logits.len() / self.cfg.vocab_size;
        Tensor::from_vec(logits, (1, rows, self.cfg.vocab_size), &self.device)
    }

    fn check_length(&self, positions: usize) -> Result<()> {
        if positions > self.cfg.max_seq_len {
            candle_core::bail!(
                "sequence of {positions} positions exceeds max_seq_len = {}; shorten the input or raise max_seq_len",
                self.cfg.max_seq_len
            );
        }
        Ok(())
    }

    /// Mean cross-entropy of the predictions for `ids (B, T)` against u32 `targets (B · T)`, the
    /// training loss; targets equal to [`crate::ops::IGNORE`] are not scored. With `packing`, each
    /// row holds several sequences that attention keeps apart. On the CPU the output projection and
    /// the loss run as one op that never holds all the logits ([`crate::ops::linear_cross_entropy`]).
    pub fn loss(&self, ids: &Tensor, targets: &Tensor, packing: Option<&Packing>) -> Result<Tensor> {
        let h = self.hidden(ids, None, packing)?;
        let (b, t, d) = h.dims3()?;
        linear_cross_entropy(&h.reshape((b * t, d))?, self.lm_head.weight(), targets)
    }

    /// The log-probability of each target `(B · T)` given `ids (B, T)` (0 where the target is
    /// [`crate::ops::IGNORE`]), differentiable: summed over a reply, the sequence log-probability
    /// that preference optimisation compares.
    pub fn token_logprobs(&self, ids: &Tensor, targets: &Tensor, packing: Option<&Packing>) -> Result<Tensor> {
        let h = self.hidden(ids, None, packing)?;
        let (b, t, d) = h.dims3()?;
        linear_logprobs(&h.reshape((b * t, d))?, self.lm_head.weight(), targets)
    }

    /// Every block over whole sequences as one node of the graph while a training step collects
    /// the weights' gradients ([`crate::ops::trunk`]); `None` where that does not apply.
    fn stack(&self, x: &Tensor, packing: Option<&Packing>) -> Result<Option<Tensor>> {
        let Some(layers) = self.blocks.iter().map(|b| b.stack_layer(x, &self.rope)).collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let master = |w: &Tensor| self.masters.get(&w.id()).cloned().or_else(|| w.is_variable().then(|| w.clone()));
        trunk(x, &layers, (&self.rope.0, &self.rope.1), packing, &master)
    }

    /// The final normalised hidden states `(B, T, D)`, before the output projection.
    fn hidden(&self, ids: &Tensor, mut cache: Option<&mut KvCache>, packing: Option<&Packing>) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let start = cache.as_ref().map_or(0, |c| c.len());
        self.check_length(start + t)?;
        // A cast model looks its rows up in the master table and computes in its own dtype.
        let mut x = crate::ops::embedding(self.embed.embeddings(), ids)?.to_dtype(self.dtype())?;
        if cache.is_none() {
            if let Some(y) = self.stack(&x, packing)? {
                return rms_norm(&y, &self.norm, self.cfg.norm_eps);
            }
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.attn_residual(&x, &self.rope, start, slot, packing)?;
            x = block.mlp_residual(&x)?;
        }
        if let Some(cache) = cache {
            cache.len += t;
        }
        rms_norm(&x, &self.norm, self.cfg.norm_eps)
    }
}

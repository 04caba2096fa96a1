//! A model's stack of blocks as one node of candle's graph, while a training step collects its
//! weights' gradients in a sink ([`crate::kernels::grad_sink`]). Each half runs forward outside
//! the graph as the one-node halves do ([`super::attn_residual`], [`super::mlp_residual`]); the
//! node's backward runs the halves' backward passes in reverse, handing each one the gradient of
//! the next half's input directly and each weight's gradient to the sink in its variable's dtype.
//!
//! Why: candle's walk adds every gradient that reaches a node's input into a zero-filled tensor of
//! its size. With one node per half that is a fill and an add over x for every half (24 a step at
//! GPT-2-small's shape, 0.2 GB of traffic each in bf16), and each weight's gradient passes through
//! the backward of the stacking `cat` and of the cast from its f32 master, with a fill and an add in
//! each dtype on the way: by count ~9 GB a step, ~3 ms at 3 TB/s. Here x's gradient goes from half
//! to half, and each weight's gradient is cast once into its variable's dtype. On the CPU the
//! numbers are the same bits either way (the fills add zeros; the cat and its backward copy); on a
//! GPU the weights' gradients come from their products in f32, which the per-half nodes round to
//! the weights' bf16 before candle casts them back.

use super::explicit::{Computed, HalfBackward, HalfGrads};
use super::{attn_residual, mlp_residual};
use crate::kernels::grad_sink::{self, GradSink};
use crate::packing::Packing;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// One block's weights as the stack reads them.
pub(crate) struct Layer<'a> {
    /// The attention half: the norm's gain `(D)`, then wq `(H·hd, D)`, wk and wv `(KV·hd, D)`, wo
    /// `(D, H·hd)`.
    pub(crate) attn: [&'a Tensor; 5],
    /// The feed-forward half: the norm's gain, then gate and up `(F, D)`, down `(D, F)`.
    pub(crate) mlp: [&'a Tensor; 4],
    /// Query and key/value heads.
    pub(crate) heads: (usize, usize),
    /// The norms' epsilon.
    pub(crate) eps: f64,
}

/// The variable whose gradient a weight's is: the weight itself when it is one, or the master a
/// mixed-precision copy was cast from. `None` for a weight that takes no gradient.
pub(crate) type Master<'a> = &'a dyn Fn(&Tensor) -> Option<Tensor>;

/// x `(B, T, D)` through every layer (`x + attention half`, then `+ feed-forward half`), causal
/// over whole sequences (kept apart with `packing`), as one node over x. `None` when no sink is
/// open on this thread (or `TSUKURU_KERNELS=halves` is set) or a weight's gradient has nowhere to go but candle's walk (a weight that
/// is neither a variable nor a registered copy of one, yet takes part in a graph): the caller then
/// takes the halves one node each.
pub(crate) fn trunk(
    x: &Tensor,
    layers: &[Layer],
    rope: (&Tensor, &Tensor),
    packing: Option<&Packing>,
    master: Master,
) -> Result<Option<Tensor>> {
    // x must carry the graph: the node records a backward only over its input, so an untracked x
    // (a frozen embedding) would leave every block weight without a gradient, silently.
    let Some(sink) = grad_sink::open().filter(|_| super::stack_enabled() && x.track_op()) else {
        return Ok(None);
    };
    let all = layers.iter().flat_map(|l| l.attn.iter().chain(&l.mlp));
    if layers.is_empty() || all.clone().any(|w| master(w).is_none() && w.track_op()) {
        return Ok(None);
    }
    let mut halves = Vec::with_capacity(2 * layers.len());
    let mut h = x.detach();
    for l in layers {
        let [gain, wq, wk, wv, wo] = l.attn;
        let stacked = attn_residual::stack(&h, gain, [wq, wk, wv, wo], l.heads)?.detach();
        let wo_ = wo.detach();
        let (out, back) = attn_residual::forward(&h, &stacked, &wo_, rope, l.heads, packing, l.eps)?;
        halves.push(Half::new(back, [h, stacked, wo_], &[wq, wk, wv], [gain, wo], master)?);
        h = out;

        let [gain, gate, up, down] = l.mlp;
        let stacked = mlp_residual::stack(&h, gain, gate, up, down)?.detach();
        let down_ = down.detach();
        let (out, back) = mlp_residual::forward(&h, &stacked, &down_, l.eps)?;
        halves.push(Half::new(back, [h, stacked, down_], &[gate, up], [gain, down], master)?);
        h = out;
    }
    let node = Trunk { out: Computed::new(h), halves: Mutex::new(halves), sink };
    x.apply_op1(node).map(Some)
}

/// A half's gradients from its output's.
type Backward = Box<dyn FnOnce(&Tensor) -> Result<HalfGrads> + Send>;

/// A half's backward and where its weights' gradients go.
struct Half {
    back: Backward,
    /// The projections read along D with their row counts, in the order they were stacked.
    rows: Vec<(Option<Tensor>, usize)>,
    /// The norm's gain and the output projection.
    gain: Option<Tensor>,
    proj: Option<Tensor>,
}

impl Half {
    /// `back` over what the half's forward read (its input, stacked weights and output
    /// projection, detached), sending the gradients of `rows` (the weights stacked along D, in
    /// order) and of `[gain, proj]` to their masters.
    fn new<B: HalfBackward>(
        back: B,
        [input, stacked, proj]: [Tensor; 3],
        rows: &[&Tensor],
        [gain, proj_w]: [&Tensor; 2],
        master: Master,
    ) -> Result<Self> {
        Ok(Self {
            back: Box::new(move |g| back.backward(&input, &stacked, &proj, g)),
            rows: rows.iter().map(|w| Ok((master(w), w.dim(0)?))).collect::<Result<_>>()?,
            gain: master(gain),
            proj: master(proj_w),
        })
    }

    /// Runs the backward, hands the weights' gradients to `sink` and returns x's.
    fn backward(self, grad: &Tensor, sink: &GradSink) -> Result<Tensor> {
        let g = (self.back)(grad)?;
        let mut at = 0;
        for (var, n) in &self.rows {
            give(sink, var, g.d_w.narrow(0, at, *n)?)?;
            at += n;
        }
        give(sink, &self.gain, g.dgain)?;
        give(sink, &self.proj, g.d_proj)?;
        Ok(g.dx)
    }
}

/// `grad` into the sink as `var`'s, in its dtype and shape.
fn give(sink: &GradSink, var: &Option<Tensor>, grad: Tensor) -> Result<()> {
    if let Some(var) = var {
        sink.push(var, grad.detach().to_dtype(var.dtype())?.reshape(var.shape())?);
    }
    Ok(())
}

/// The node: its output computed beforehand, and the halves in forward order.
struct Trunk {
    out: Computed,
    halves: Mutex<Vec<Half>>,
    sink: Arc<GradSink>,
}

impl CustomOp1 for Trunk {
    fn name(&self) -> &'static str {
        "block-stack"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.out.cpu("block stack")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &candle_core::CudaStorage, _: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        self.out.cuda("block stack")
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Taken, so each half's saved activations are freed as soon as its backward is done.
        let mut halves = std::mem::take(&mut *self.halves.lock().expect("not poisoned"));
        if halves.is_empty() {
            candle_core::bail!("block stack: backward ran twice");
        }
        // Detached as candle's walk detaches each gradient it passes on: what a half returns must
        // not carry a record of how it was made into the next half's backward.
        let mut g = grad.detach();
        while let Some(half) = halves.pop() {
            g = half.backward(&g, &self.sink)?.detach();
        }
        Ok(Some(g))
    }
}

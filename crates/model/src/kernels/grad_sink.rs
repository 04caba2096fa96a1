//! Weight gradients passed from the fused ops straight to the trainer, around candle's graph walk.
//!
//! candle's backward pass adds every gradient into its store as a zero-filled tensor plus the
//! gradient, on the calling thread while the pool waits; and a weight that an op reads stacked
//! (`Tensor::cat` of the projections and the norm gain) first sends its gradient back through
//! cat's backward, a copy per part. For the default model that is about 280 MB of fills, copies
//! and adds per step, single-threaded. While a sink is open on a thread ([`collect`]), the fused
//! ops built there read their weights detached from the graph, and their backward passes put each
//! weight's gradient, split into the variables it was stacked from, into the sink;
//! [`GradSink::add_to`] then hands them to candle's gradient store. The gradients are the same
//! numbers either way: the same products, and the split is a copy.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

/// Gradients of variables left by the fused ops' backward passes.
#[derive(Default)]
pub struct GradSink {
    /// `(variable, gradient)`; a variable read by several ops appears once per op.
    grads: Mutex<Vec<(Tensor, Tensor)>>,
}

thread_local! {
    /// The sink the fused ops built on this thread send their weights' gradients to.
    static OPEN: RefCell<Option<Arc<GradSink>>> = const { RefCell::new(None) };
}

/// Runs `f` (a forward pass) with a new sink open on this thread, and returns what it returned
/// and the sink, which the backward pass of the ops built meanwhile fills.
pub fn collect<T>(f: impl FnOnce() -> T) -> (T, Arc<GradSink>) {
    /// Puts the previous sink back, also when `f` panics.
    struct Restore(Option<Arc<GradSink>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OPEN.with(|o| *o.borrow_mut() = self.0.take());
        }
    }
    let sink = Arc::new(GradSink::default());
    let _restore = Restore(OPEN.with(|o| o.replace(Some(sink.clone()))));
    (f(), sink)
}

/// The sink open on this thread, if any: ops that route their weights' gradients themselves
/// (the block stack of [`crate::ops::trunk`]) hand them to it.
pub(crate) fn open() -> Option<Arc<GradSink>> {
    OPEN.with(|o| o.borrow().clone())
}

impl GradSink {
    /// Adds `grad`, the gradient of the variable `var` (in its dtype and shape).
    pub(crate) fn push(&self, var: &Tensor, grad: Tensor) {
        self.grads.lock().expect("gradient sink lock").push((var.clone(), grad));
    }

    /// Moves every gradient in the sink into `grads`, summed with what candle's walk left there
    /// for the same variable (a weight both read by a fused op and used elsewhere, such as a tied
    /// embedding).
    pub fn add_to(&self, grads: &mut GradStore) -> Result<()> {
        for (var, g) in self.grads.lock().expect("gradient sink lock").drain(..) {
            let sum = match grads.remove(&var) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            grads.insert(&var, sum);
        }
        Ok(())
    }
}

/// Where the gradient of a fused op's weight goes: into the sink that was open when the op was
/// built (split into the parts it was stacked from), or back to candle as one tensor.
pub(crate) struct WeightGrad {
    sunk: Option<(Vec<Tensor>, Arc<GradSink>)>,
    needed: bool,
}

/// `parts` (each `(…, width)` or `(width,)`) stacked by rows into the tensor a fused op reads,
/// and where its gradient goes. With a sink open and every part a variable, the tensor is built
/// from detached parts, so candle's walk never reaches them.
pub(crate) fn stack(parts: &[&Tensor], width: usize) -> Result<(Tensor, WeightGrad)> {
    let sink = open().filter(|_| parts.iter().all(|p| p.is_variable()));
    let rows = |p: &Tensor| -> Result<Tensor> {
        let p = if sink.is_some() { p.detach() } else { p.clone() };
        if p.rank() == 2 && p.dim(1)? == width {
            Ok(p)
        } else {
            p.reshape((p.elem_count() / width.max(1), width))
        }
    };
    let shaped = parts.iter().map(|p| rows(p)).collect::<Result<Vec<_>>>()?;
    let tensor = if shaped.len() == 1 { shaped[0].clone() } else { Tensor::cat(&shaped, 0)? };
    let needed = sink.is_some() || tensor.track_op();
    let sunk = sink.map(|s| (parts.iter().map(|&p| p.clone()).collect(), s));
    Ok((tensor, WeightGrad { sunk, needed }))
}

impl WeightGrad {
    /// Whether the op should compute the weight's gradient at all.
    pub(crate) fn needed(&self) -> bool {
        self.needed
    }

    /// Hands over the gradient of the stacked tensor `w` (its elements in order): into the sink,
    /// returning `None` for candle; or as a tensor of `w`'s shape for candle to route back.
    pub(crate) fn give(&self, grad: Vec<f32>, w: &Tensor) -> Result<Option<Tensor>> {
        let Some((parts, sink)) = &self.sunk else {
            return Tensor::from_vec(grad, w.shape(), w.device()).map(Some);
        };
        if let [p] = parts.as_slice() {
            sink.push(p, Tensor::from_vec(grad, p.shape(), p.device())?);
            return Ok(None);
        }
        let mut at = 0;
        for p in parts {
            let n = p.elem_count();
            sink.push(p, Tensor::from_slice(&grad[at..at + n], p.shape(), p.device())?);
            at += n;
        }
        Ok(None)
    }
}

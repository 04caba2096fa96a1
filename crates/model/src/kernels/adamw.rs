//! AdamW's update in place: three passes over each parameter (first moment, second moment,
//! weights) with no temporaries, where the tensor version allocates about a dozen full-size
//! intermediates per parameter per step.

use super::f32s;
use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 32_768;

fn f32s_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: expected f32 data") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

/// `m ← β·m + (1 − β)·(s·g)`, or with `(s·g)²` for the second moment.
struct Moment {
    beta: f32,
    scale: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let m = f32s_mut(s1, l1, self.name())?;
        let g = f32s(s2, l2, self.name())?;
        let (beta, scale, square) = (self.beta, self.scale, self.square);
        m.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(m, g)| {
            for (mi, &gi) in m.iter_mut().zip(g) {
                let x = gi * scale;
                *mi = beta * *mi + (1.0 - beta) * if square { x * x } else { x };
            }
        });
        Ok(())
    }
}

/// `w ← w·(1 − lr·wd) − lr · (m / bc1) / (sqrt(v / bc2) + eps)`.
struct Update {
    lr: f32,
    decay: f32,
    bc1: f32,
    bc2: f32,
    eps: f32,
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let w = f32s_mut(s1, l1, self.name())?;
        let (m, v) = (f32s(s2, l2, self.name())?, f32s(s3, l3, self.name())?);
        let keep = 1.0 - self.lr * self.decay;
        let (lr, bc1, bc2, eps) = (self.lr, self.bc1, self.bc2, self.eps);
        w.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK))).for_each(|(w, (m, v))| {
            for ((wi, &mi), &vi) in w.iter_mut().zip(m).zip(v) {
                *wi = *wi * keep - lr * (mi / bc1) / ((vi / bc2).sqrt() + eps);
            }
        });
        Ok(())
    }
}

/// Settings of one AdamW update of one parameter.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay applied to this parameter (0 for undecayed ones).
    pub weight_decay: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Bias corrections `1 − β1^t` and `1 − β2^t`.
    pub bias_corrections: (f64, f64),
    /// Factor applied to the gradient first (accumulation and clipping).
    pub grad_scale: f64,
}

/// Updates contiguous f32 CPU tensors `w`, `m`, `v` in place from gradient `g`. `m` and `v` must
/// not share storage with each other or with `w`.
pub fn adamw_step(w: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, s: &AdamWStep) -> Result<()> {
    let g = g.contiguous()?;
    let scale = s.grad_scale as f32;
    m.inplace_op2(&g, &Moment { beta: s.beta1 as f32, scale, square: false })?;
    v.inplace_op2(&g, &Moment { beta: s.beta2 as f32, scale, square: true })?;
    let update = Update {
        lr: s.lr as f32,
        decay: s.weight_decay as f32,
        bc1: s.bias_corrections.0 as f32,
        bc2: s.bias_corrections.1 as f32,
        eps: s.eps as f32,
    };
    w.inplace_op3(m, v, &update)
}

/// Sum of squares of a contiguous f32 CPU tensor, accumulated in f64 chunk by chunk: the
/// gradient norm without an f64 copy (and a squared copy) of every gradient.
pub fn sum_squares(t: &Tensor) -> Result<f64> {
    let view = super::F32View::of(t, "sum_squares")?;
    Ok(view.get().par_chunks(CHUNK).map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>()).sum())
}

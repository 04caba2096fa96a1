//! Mean cross-entropy of logits `(N, V)` against targets `(N)`, fused.
//!
//! The composite version materialises the shifted logits, their exponentials and the log-softmax
//! (each `N × V`, kept for the backward pass) and then as many gradients. Here the forward reads the
//! logits once and keeps only each row's log-sum-exp; the backward writes the one `N × V` gradient,
//! `(softmax − onehot) · g / N`, N counting the targets that are not ignored.

use super::simd::{self, dispatch};
use super::{f32s, rows_per_task, u32s};
use crate::ops::IGNORE;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The forward op; it keeps the rows' log-sum-exp for its backward.
struct CrossEntropy {
    lse: Mutex<Vec<f32>>,
}

#[inline(always)]
fn row_lse(row: &[f32]) -> f32 {
    let m = simd::max(row);
    m + simd::sum_exp(row, m).ln()
}

dispatch! {
    /// Log-sum-exp of one row.
    pub fn lse_of_row(row: &[f32]) -> f32 = row_lse;
}

#[inline(always)]
fn grad_rows_in_place_impl(rows: &mut [f32], lse: &[f32], targets: &[u32], scale: f32) {
    let v = rows.len() / lse.len().max(1);
    for (i, o) in rows.chunks_exact_mut(v).enumerate() {
        if targets[i] == IGNORE {
            o.fill(0.0);
            continue;
        }
        for x in o.iter_mut() {
            *x = simd::exp(*x - lse[i]) * scale;
        }
        o[targets[i] as usize] -= scale;
    }
}

dispatch! {
    /// Logit rows turned into their gradient `(softmax(x) − onehot(t)) · scale` in place (zero for
    /// ignored targets).
    pub fn grad_rows_in_place(rows: &mut [f32], lse: &[f32], targets: &[u32], scale: f32) -> () = grad_rows_in_place_impl;
}

#[inline(always)]
fn loss_and_grad_row_impl(row: &mut [f32], target: u32, scale: f32) -> f32 {
    if target == IGNORE {
        row.fill(0.0);
        return 0.0;
    }
    let logit = row[target as usize];
    let lse = simd::softmax_in_place(row, scale);
    row[target as usize] -= scale;
    lse - logit
}

dispatch! {
    /// One row of logits turned into its gradient `(softmax(x) − onehot(t)) · scale` in place
    /// with one exponential per value (zero for an ignored target); returns the row's loss
    /// `lse − x_t` (0 when ignored).
    pub fn loss_and_grad_row(row: &mut [f32], target: u32, scale: f32) -> f32 = loss_and_grad_row_impl;
}

/// Every row of `rows` (`V` values each) turned into its gradient in place, over the threads;
/// returns the sum of the rows' losses.
pub(crate) fn loss_and_gradient_in_place(rows: &mut [f32], v: usize, targets: &[u32], scale: f32) -> f64 {
    rows.par_chunks_mut(v).zip(targets.par_iter()).map(|(row, &t)| f64::from(loss_and_grad_row(row, t, scale))).sum()
}

/// Targets the mean runs over: those that are not [`IGNORE`] (at least 1, so that a batch with
/// nothing to score gives a zero loss rather than NaN).
pub(crate) fn scored(targets: &[u32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE).count().max(1)
}

/// Every row of `rows` (`V` values each) turned into its gradient in place, over the threads.
pub(crate) fn gradient_in_place(rows: &mut [f32], v: usize, lse: &[f32], targets: &[u32], scale: f32) {
    let per = rows_per_task(v);
    rows.par_chunks_mut(per * v).enumerate().for_each(|(c, o)| {
        let (r0, n) = (c * per, o.len() / v);
        grad_rows_in_place(o, &lse[r0..r0 + n], &targets[r0..r0 + n], scale);
    });
}

/// An error naming the first target outside a vocabulary of `v` (other than [`IGNORE`]).
pub(crate) fn check_targets(targets: &[u32], v: usize) -> Result<()> {
    match targets.iter().find(|&&t| t as usize >= v && t != IGNORE) {
        Some(&bad) => candle_core::bail!("cross-entropy: target {bad} is outside the vocabulary of {v}"),
        None => Ok(()),
    }
}

fn dims(l: &Layout) -> Result<(usize, usize)> {
    l.shape().dims2()
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = f32s(s1, l1, self.name())?;
        let targets = u32s(s2, l2, self.name())?;
        let (n, v) = dims(l1)?;
        if targets.len() != n {
            candle_core::bail!("cross-entropy: {n} rows of logits but {} targets", targets.len());
        }
        check_targets(targets, v)?;
        let lse: Vec<f32> = logits.par_chunks(v).with_min_len(rows_per_task(v)).map(lse_of_row).collect();
        let total: f64 = lse
            .iter()
            .zip(targets)
            .enumerate()
            .filter(|(_, (_, &t))| t != IGNORE)
            .map(|(i, (&z, &t))| f64::from(z - logits[i * v + t as usize]))
            .sum();
        *self.lse.lock().expect("not poisoned") = lse;
        Ok((CpuStorage::F32(vec![(total / scored(targets) as f64) as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().expect("not poisoned").clone();
        let g = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &CrossEntropyGrad { lse })?;
        Ok((Some(g), None))
    }
}

/// The backward op: logits, targets and the incoming (scalar) gradient → `N × V`.
struct CrossEntropyGrad {
    lse: Vec<f32>,
}

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
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
        let logits = f32s(s1, l1, self.name())?;
        let targets = u32s(s2, l2, self.name())?;
        let g = f32s(s3, l3, self.name())?;
        let lse = &self.lse;
        let (n, v) = dims(l1)?;
        let scale = g.first().copied().unwrap_or(0.0) / scored(targets) as f32;
        let mut out = logits.to_vec();
        gradient_in_place(&mut out, v, lse, targets, scale);
        Ok((CpuStorage::F32(out), Shape::from((n, v))))
    }
}

/// Mean cross-entropy of contiguous f32 `logits (N, V)` on the CPU against u32 `targets (N)`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy { lse: Mutex::new(Vec::new()) })
}

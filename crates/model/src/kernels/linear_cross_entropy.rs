//! The output projection and the mean cross-entropy as one op: `loss = mean_i CE(h_i · Wᵀ, t_i)`,
//! without ever holding the whole `N × V` logits.
//!
//! Separately, the logits (`N × V`, the largest activation of a small model: 64 MiB for 2,048
//! tokens over 8,192 words) are kept for the backward pass and then matched by a gradient of the
//! same size. Here rows are taken `CHUNK` at a time: the chunk's logits are computed into one
//! reused buffer, turned into their gradient `(softmax − onehot) / N` in place, and both products of
//! the backward (`dh = g · W`, `dW += gᵀ · h`) are done at once. The op keeps only `dh` and `dW`;
//! its backward scales them by the incoming gradient. Same products, same arithmetic, a fraction of
//! the memory.

use super::cross_entropy::{loss_and_gradient_in_place, scored};
use super::grad_sink::{stack, WeightGrad};
use super::linear_logprobs::{chunk_logits, projected, Projected};
use super::{matmul, zeros};
use crate::ops::IGNORE;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// Rows of logits computed at a time (a 16 MiB buffer at 8,192 words).
const CHUNK: usize = 512;

struct LinearCrossEntropy {
    /// Whether a backward pass can follow (otherwise only the loss is computed).
    need_grads: bool,
    /// Whether the weight takes a gradient (a frozen output layer does not), and where it goes.
    need_dw: bool,
    w_grad: WeightGrad,
    /// `dh (N × d)` and `dW (V × d)` of the mean loss, computed by the forward pass.
    grads: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp3 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-linear-cross-entropy"
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
        let Projected { h, w, targets, n, d, v } = projected((s1, l1), (s2, l2), (s3, l3), self.name())?;
        let scale = 1.0 / scored(targets) as f32;
        let dh_len = if self.need_grads { n * d } else { 0 };
        let dw_len = if self.need_grads && self.need_dw { v * d } else { 0 };
        let (mut dh, mut dw) = (zeros(dh_len), zeros(dw_len));
        let mut logits = zeros(CHUNK.min(n) * v);
        let mut lse = vec![0f32; CHUNK.min(n)];
        let mut total = 0f64;
        for (c, hc) in h.chunks(CHUNK * d).enumerate() {
            let rows = hc.len() / d;
            let tc = &targets[c * CHUNK..c * CHUNK + rows];
            if !self.need_grads {
                chunk_logits(hc, w, d, v, &mut logits, &mut lse);
                let lg = &logits[..rows * v];
                total += (0..rows)
                    .filter(|&i| tc[i] != IGNORE)
                    .map(|i| f64::from(lse[i] - lg[i * v + tc[i] as usize]))
                    .sum::<f64>();
                continue;
            }
            // The logits become their gradient in place, their losses summed on the way.
            let lg = &mut logits[..rows * v];
            matmul(rows, v, d, lg, v, false, (hc, d, 1), (w, 1, d), 1.0, true);
            total += loss_and_gradient_in_place(lg, v, tc, scale);
            let dhc = &mut dh[c * CHUNK * d..c * CHUNK * d + rows * d];
            matmul(rows, d, v, dhc, d, false, (lg, v, 1), (w, d, 1), 1.0, true);
            if self.need_dw {
                matmul(v, d, rows, &mut dw, d, c > 0, (lg, 1, v), (hc, d, 1), 1.0, true);
            }
        }
        if self.need_grads {
            *self.grads.lock().expect("grads lock") = Some((dh, dw));
        }
        Ok((CpuStorage::F32(vec![(total * f64::from(scale)) as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some((dh, dw)) = self.grads.lock().expect("grads lock").take() else {
            candle_core::bail!("linear cross-entropy: backward called twice");
        };
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let scaled = |x: Vec<f32>| -> Vec<f32> {
            if g == 1.0 {
                x
            } else {
                x.into_iter().map(|e| e * g).collect()
            }
        };
        let dw = if self.need_dw { self.w_grad.give(scaled(dw), w)? } else { None };
        Ok((Some(Tensor::from_vec(scaled(dh), h.shape(), h.device())?), dw, None))
    }
}

/// Mean cross-entropy of the logits `h · wᵀ` against u32 `targets`, for f32 CPU tensors
/// `h (N, d)` and `w (V, d)`; the logits are never held whole. The gradients are computed in the
/// forward pass when either input carries them; with a gradient sink open the weight's goes there
/// ([`super::grad_sink`]).
pub fn linear_cross_entropy(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (w, w_grad) = stack(&[w], w.dim(1)?)?;
    let need_dw = w_grad.needed();
    let op = LinearCrossEntropy { need_grads: h.track_op() || need_dw, need_dw, w_grad, grads: Mutex::new(None) };
    h.contiguous()?.apply_op3(&w.contiguous()?, &targets.contiguous()?, op)
}

//! Rotary position embeddings (Llama's half-split convention), fused: the composite version builds
//! the rotated half with a negation and a concatenation, two broadcast products and a sum, each a
//! full tensor kept for the backward pass. Here one pass writes the output; the backward is the
//! same rotation by the opposite angle.

use super::rows_per_task;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The rotation for `t` consecutive positions: `cos`/`sin` rows of `half` values each.
#[derive(Debug, Clone)]
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    t: usize,
    half: usize,
    /// Rotate by −θ (the backward pass).
    inverse: bool,
}

/// One head's row rotated by the angles whose cosines and sines are given (`sign` −1 rotates back):
/// the first half pairs with the second.
pub(crate) fn rotate(x: &[f32], cos: &[f32], sin: &[f32], sign: f32, out: &mut [f32]) {
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        let s = sign * sin[i];
        o1[i] = x1[i] * cos[i] - x2[i] * s;
        o2[i] = x2[i] * cos[i] + x1[i] * s;
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else { candle_core::bail!("{}: expected f32 data", self.name()) };
        let (half, hd) = (self.half, 2 * self.half);
        let (dims, strides) = (layout.dims(), layout.stride());
        let r = dims.len();
        if hd == 0 || r < 2 || dims[r - 1] != hd || (hd > 1 && strides[r - 1] != 1) {
            candle_core::bail!("rope: expected (…, T, {hd}) with contiguous rows, got {dims:?}");
        }
        // Where each row starts: rows may be strided (a transposed view of the projection's output
        // is read in place), the output is contiguous.
        let rows = layout.shape().elem_count() / hd;
        let row_start = |i: usize| {
            let (mut rest, mut at) = (i, layout.start_offset());
            for d in (0..r - 1).rev() {
                at += (rest % dims[d]) * strides[d];
                rest /= dims[d];
            }
            at
        };
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; rows * hd];
        let per = rows_per_task(hd);
        out.par_chunks_mut(per * hd).enumerate().for_each(|(c, o)| {
            for (k, orow) in o.chunks_exact_mut(hd).enumerate() {
                let row = c * per + k;
                let at = row_start(row);
                let xrow = &data[at..at + hd];
                let p = row % self.t;
                rotate(xrow, &self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half], sign, orow);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rope { inverse: !self.inverse, ..self.clone() };
        Ok(Some(grad.apply_op1_no_bwd(&inverse)?))
    }
}

/// Rotary embeddings of f32 `x (…, T, head_dim)` on the CPU (rows contiguous, any other strides;
/// the output is contiguous) at positions `start..start + T`, from the `(max_seq_len, head_dim / 2)`
/// tables.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, start: usize) -> Result<Tensor> {
    let dims = x.dims();
    let (t, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let (cos, sin) = tables(cos, sin, start, t)?;
    x.apply_op1(Rope { cos, sin, t, half: hd / 2, inverse: false })
}

/// The cosines and sines of positions `start..start + t`, `t` rows of `head_dim / 2` values each,
/// from the `(max_seq_len, head_dim / 2)` tables.
pub(crate) fn tables(cos: &Tensor, sin: &Tensor, start: usize, t: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let table = |m: &Tensor| m.narrow(0, start, t)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>();
    Ok((table(cos)?, table(sin)?))
}

//! Rotary position embeddings (Llama's half-split convention), fused: the composite version builds
//! the rotated half with a negation and a concatenation, two broadcast products and a sum, each a
//! full tensor kept for the backward pass. Here one pass writes the output; the backward is the
//! same rotation by the opposite angle.

use super::{f32s, rows_per_task};
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

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(storage, layout, self.name())?;
        let (half, hd) = (self.half, 2 * self.half);
        if hd == 0 || x.len() % hd != 0 {
            candle_core::bail!("rope: last dimension is not {hd}");
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        let per = rows_per_task(hd);
        out.par_chunks_mut(per * hd).zip(x.par_chunks(per * hd)).enumerate().for_each(|(c, (o, xi))| {
            for (k, (orow, xrow)) in o.chunks_exact_mut(hd).zip(xi.chunks_exact(hd)).enumerate() {
                let p = (c * per + k) % self.t;
                let (cos, sin) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
                let (x1, x2) = xrow.split_at(half);
                let (o1, o2) = orow.split_at_mut(half);
                for i in 0..half {
                    let s = sign * sin[i];
                    o1[i] = x1[i] * cos[i] - x2[i] * s;
                    o2[i] = x2[i] * cos[i] + x1[i] * s;
                }
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rope { inverse: !self.inverse, ..self.clone() };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

/// Rotary embeddings of contiguous f32 `x (…, T, head_dim)` on the CPU at positions
/// `start..start + T`, from the `(max_seq_len, head_dim / 2)` tables.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, start: usize) -> Result<Tensor> {
    let dims = x.dims();
    let (t, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let table = |m: &Tensor| m.narrow(0, start, t)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>();
    x.contiguous()?.apply_op1(Rope { cos: table(cos)?, sin: table(sin)?, t, half: hd / 2, inverse: false })
}

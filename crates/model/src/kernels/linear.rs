//! A linear layer without bias, `y = x · wᵀ`, as one op whose backward pass runs its two products
//! straight from the stored layouts.
//!
//! Through candle's ops the same layer is a broadcast matmul against a transposed view: the
//! backward pass then copies the transposed operands into contiguous tensors before each product.
//! Here the products read the transposed views in place (`kernels::matmul` packs either layout).

use super::{cpu_storage, f32s, new_product, F32View};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

struct Linear;

/// `(rows, in)` of an input `x (…, in)` against `w (out, in)`, or an error naming the shapes.
fn dims(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize)> {
    match (x.last(), w) {
        (Some(&k), &[n, wk]) if k == wk => Ok((x.iter().product::<usize>() / k.max(1), k, n)),
        _ => candle_core::bail!("linear: input {x:?} does not match weight {w:?} (expected (…, in) and (out, in))"),
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let (rows, k, n) = dims(l1.dims(), l2.dims())?;
        let y = new_product(rows, n, k, (x, k, 1), (w, 1, k), true);
        let mut shape = l1.dims().to_vec();
        *shape.last_mut().expect("checked rank") = n;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, k, n) = dims(x.dims(), w.dims())?;
        let grad = grad.contiguous()?;
        let op = self.name();
        let views = [F32View::of(x, op)?, F32View::of(w, op)?, F32View::of(&grad, op)?];
        let [xv, wv, g] = views.each_ref().map(F32View::get);
        // dx = g · w, dw = gᵀ · x; a frozen weight (not tracked: LoRA's base) gets no gradient.
        let dx = new_product(rows, k, n, (g, n, 1), (wv, k, 1), true);
        let dev = x.device();
        let dw = match w.track_op() {
            true => Some(Tensor::from_vec(new_product(n, k, rows, (g, 1, n), (xv, k, 1), true), (n, k), dev)?),
            false => None,
        };
        Ok((Some(Tensor::from_vec(dx, x.shape(), dev)?), dw))
    }
}

/// `x · wᵀ` for f32 CPU tensors `x (…, in)` and `w (out, in)`; returns `(…, out)`.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

/// A 2-D f32 CPU operand read in place: its elements from the first one on, and its strides.
fn operand<'a>(s: &'a candle_core::Storage, l: &Layout) -> Result<(&'a [f32], usize, usize)> {
    let CpuStorage::F32(v) = cpu_storage(s, "product")? else { candle_core::bail!("product: expected f32 tensors") };
    Ok((&v[l.start_offset()..], l.stride()[0], l.stride()[1]))
}

/// `a · b` for 2-D f32 CPU tensors read in place through their strides (a transposed view costs
/// nothing extra); not differentiable. Returns a contiguous `(m, n)` tensor.
pub fn product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let ((m, k), (kb, n)) = (a.dims2()?, b.dims2()?);
    if k != kb {
        candle_core::bail!("product: {:?} times {:?}", a.dims(), b.dims());
    }
    let ((ga, la), (gb, lb)) = (a.storage_and_layout(), b.storage_and_layout());
    let c = new_product(m, n, k, operand(&ga, la)?, operand(&gb, lb)?, true);
    Tensor::from_vec(c, (m, n), a.device())
}

//! AdamW's update and the gradient norm on the GPU (`cuda/adamw.cu`), each over every parameter
//! in one launch: the kernels read a table with one entry per tensor (addresses, length, first
//! chunk of 4,096 elements, and for the update `1 − lr·wd`). The update is the CPU kernel's
//! formula in one pass per element; the norm's sum of squares comes back as one f64, read once per
//! step instead of once per parameter.

use super::{device, grid, launch, output, ptr, Arg, ADAMW};
use crate::kernels::adamw::AdamWStep;
use candle_core::{DType, Result, Tensor};

/// Elements per chunk, as in the kernels.
const CHUNK: usize = 4096;
/// Blocks at most: the kernels stride over the chunks.
const BLOCKS: usize = 2048;

/// One parameter of an update.
pub struct Param<'a> {
    /// Weights (f32, contiguous), updated in place.
    pub w: &'a Tensor,
    /// First moments (f32, contiguous), updated in place.
    pub m: &'a Tensor,
    /// Second moments (f32, contiguous), updated in place.
    pub v: &'a Tensor,
    /// The gradient (f32 or bf16, the same for every parameter of a call).
    pub g: &'a Tensor,
    /// This parameter's weight decay.
    pub weight_decay: f64,
}

/// The kernels' table, eight words per tensor, and the chunks it covers.
#[derive(Default)]
struct Table {
    words: Vec<i64>,
    chunks: usize,
}

impl Table {
    fn push(&mut self, [w, m, v, g]: [u64; 4], n: usize, keep: f32) {
        let words = [w, m, v, g, n as u64, self.chunks as u64, u64::from(keep.to_bits()), 0];
        // The kernels read them as unsigned; the device tensor holding them is i64.
        self.words.extend(words.map(|x| x as i64));
        self.chunks += n.div_ceil(CHUNK);
    }

    /// The table on `like`'s device, with the launch shape for its chunks.
    fn upload(&self, like: &Tensor) -> Result<(Tensor, super::LaunchConfig)> {
        let t = Tensor::from_slice(&self.words, self.words.len(), like.device())?;
        Ok((t, grid((self.chunks.clamp(1, BLOCKS) as u32, 1, 1), (256, 1, 1))))
    }
}

/// Updates every parameter in place from its gradient with one launch.
pub fn adamw_step(params: &[Param], s: &AdamWStep) -> Result<()> {
    let name = "gpu adamw";
    let Some(first) = params.first() else { return Ok(()) };
    let dtype = first.g.dtype();
    let mut table = Table::default();
    // Contiguous gradients, alive until the launch is queued.
    let grads: Vec<Tensor> = params.iter().map(|p| p.g.contiguous()).collect::<Result<_>>()?;
    for (p, g) in params.iter().zip(&grads) {
        let n = p.w.elem_count();
        let f32s = [p.w, p.m, p.v].iter().all(|t| t.dtype() == DType::F32 && t.is_contiguous());
        if !f32s || p.m.elem_count() != n || p.v.elem_count() != n || g.elem_count() != n || g.dtype() != dtype {
            candle_core::bail!(
                "{name}: weights and moments must be contiguous f32 of one length, gradients of it and all {dtype:?}"
            );
        }
        let keep = 1.0 - s.lr as f32 * p.weight_decay as f32;
        table.push([ptr(p.w, name)?, ptr(p.m, name)?, ptr(p.v, name)?, ptr(g, name)?], n, keep);
    }
    let (t, cfg) = table.upload(first.w)?;
    let args = [
        Arg::Ptr(ptr(&t, name)?),
        super::int(params.len(), "parameters")?,
        Arg::Count(table.chunks as u64),
        Arg::Float(s.grad_scale as f32),
        Arg::Float(s.beta1 as f32),
        Arg::Float(s.beta2 as f32),
        Arg::Float(s.lr as f32),
        Arg::Float(s.bias_corrections.0 as f32),
        Arg::Float(s.bias_corrections.1 as f32),
        Arg::Float(s.eps as f32),
    ];
    launch(&device(first.w)?, &ADAMW, "adamw_update", dtype, cfg, &args)
}

/// Σ g² over every element of every gradient (CUDA tensors, all f32 or all bf16), in f64.
pub fn sum_squares(grads: &[&Tensor]) -> Result<f64> {
    let name = "gpu sum_squares";
    let Some(first) = grads.first() else { return Ok(0.0) };
    let dtype = first.dtype();
    let grads: Vec<Tensor> = grads.iter().map(|g| g.contiguous()).collect::<Result<_>>()?;
    let mut table = Table::default();
    for g in &grads {
        if g.dtype() != dtype {
            candle_core::bail!("{name}: gradients of mixed dtypes ({dtype:?} and {:?})", g.dtype());
        }
        table.push([0, 0, 0, ptr(g, name)?], g.elem_count(), 0.0);
    }
    let dev = device(first)?;
    let partial = output(&dev, table.chunks.max(1), DType::F64)?;
    let (t, cfg) = table.upload(first)?;
    let (tp, pp) = (ptr(&t, name)?, ptr(&partial, name)?);
    let chunks = Arg::Count(table.chunks as u64);
    let args = [Arg::Ptr(tp), super::int(grads.len(), "gradients")?, chunks, Arg::Ptr(pp)];
    launch(&dev, &ADAMW, "sum_squares", dtype, cfg, &args)?;
    let sum = output(&dev, 1, DType::F64)?;
    let args = [Arg::Ptr(pp), chunks, Arg::Ptr(ptr(&sum, name)?)];
    // The f32 and bf16 entries of sum_partials are the same code (it reads f64 only).
    launch(&dev, &ADAMW, "sum_partials", DType::F32, grid((1, 1, 1), (256, 1, 1)), &args)?;
    sum.to_vec1::<f64>().map(|v| v[0])
}

//! `tsukuru bench matmul`: matrix-product throughput on the shapes of a training step, and causal
//! attention (benches/matmul_peer.py runs PyTorch on the same shapes beside it). On the CPU, the
//! benchmark model's shapes through candle's product and tsukuru's, and attention through candle's
//! ops and the fused op; on a GPU (`--device cuda`), the reference's GPT-2-small step (32,768
//! positions, width 768, SwiGLU 2,048, vocabulary 32,768 in chunks of 4,096 rows) through candle's
//! cuBLAS products, and attention through the flash kernels.

use super::median_time;
use anyhow::Result;
use candle_core::{DType, Tensor, Var};
use clap::Args;
use tsukuru_model::ops::composite;
use tsukuru_model::{kernels, ops, Packing};

/// Arguments of `bench matmul`.
#[derive(Args, Debug)]
pub struct MatmulBenchArgs {
    /// Timed repetitions per shape (the median is reported).
    #[arg(long, default_value_t = 9)]
    pub repeat: usize,
    /// Device: cpu, or cuda[:N] in a build with the `cuda` feature (the GPU shapes).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Data type of the operands.
    #[arg(long, default_value = "float32", value_parser = ["float32", "bfloat16"])]
    pub dtype: String,
}

/// A product to time.
type Product<'a> = &'a dyn Fn() -> Result<Tensor>;

/// Products as `(m, k, n, a transposed, b transposed)`: the benchmark model's step on the CPU
/// (2,048 tokens, width 384), the reference's on a GPU (32,768 tokens, width 768).
const CPU_PRODUCTS: [(usize, usize, usize, bool, bool); 5] = [
    (2048, 384, 1024, false, false),
    (2048, 1024, 384, false, false),
    (2048, 384, 8192, false, false),
    (2048, 384, 1024, false, true),
    (384, 2048, 1024, true, false),
];
const GPU_PRODUCTS: [(usize, usize, usize, bool, bool); 6] = [
    (32768, 768, 768, false, true),  // a projection: x · Wᵀ
    (32768, 768, 4096, false, true), // gate and up as one product
    (32768, 2048, 768, false, true), // down
    (32768, 768, 768, false, false), // an input gradient: g · W
    (768, 32768, 768, true, false),  // a weight gradient: gᵀ · x
    (4096, 768, 32768, false, true), // a chunk of the output layer
];

/// Runs `bench matmul`: one JSON line per shape and implementation.
pub fn run(a: &MatmulBenchArgs) -> Result<()> {
    let dev = super::super::pretrain::device(&a.device)?;
    let dtype = if a.dtype == "bfloat16" { DType::BF16 } else { DType::F32 };
    anyhow::ensure!(
        dev.is_cuda() || dtype == DType::F32,
        "bench matmul: --dtype bfloat16 is for --device cuda (the CPU kernels compared here are f32)"
    );
    // Each repetition runs to the end of its device work.
    let median = |f: Product<'_>| median_time(2, a.repeat, || f().and_then(|t| Ok(t.device().synchronize()?)));
    let print = |name: &str, implementation: &str, flops: f64, secs: f64| {
        let line = serde_json::json!({
            "bench": "matmul", "impl": implementation, "shape": name, "dtype": a.dtype, "device": a.device,
            "seconds": secs, "gflops": flops / secs / 1e9,
        });
        println!("{line}");
    };
    let randn = |shape: &[usize]| -> Result<Tensor> { Ok(Tensor::randn(0f32, 1.0, shape, &dev)?.to_dtype(dtype)?) };
    let products: &[_] = if dev.is_cuda() { &GPU_PRODUCTS } else { &CPU_PRODUCTS };
    // `t` marks an operand read transposed (the backward pass's products).
    for &(m, k, n, ta, tb) in products {
        let x = randn(&if ta { [k, m] } else { [m, k] })?;
        let y = randn(&if tb { [n, k] } else { [k, n] })?;
        let operands = || -> Result<(Tensor, Tensor)> {
            Ok((if ta { x.t()? } else { x.clone() }, if tb { y.t()? } else { y.clone() }))
        };
        let name = format!("{m}x{k}x{n}{}{}", if ta { " aT" } else { "" }, if tb { " bT" } else { "" });
        let flops = 2.0 * (m * k * n) as f64;
        print(&name, "candle", flops, median(&|| operands().and_then(|(p, q)| Ok(p.matmul(&q)?)))?);
        if !dev.is_cuda() {
            let fused = || operands().and_then(|(p, q)| Ok(kernels::linear::product(&p, &q)?));
            print(&name, "tsukuru", flops, median(&fused)?);
        }
    }
    // Causal attention, head size 64: on the CPU 8 sequences × 6 heads of 256 positions through
    // candle's ops (full score matrix, masked softmax) and the fused op; on a GPU 32 × 12 of 1,024
    // through the flash kernels. GFLOP/s count the full products (4·B·H·T²·hd forward, three times
    // that with the backward), as the PyTorch peer does, so the figures compare times.
    let (b, h, t) = if dev.is_cuda() { (32, 12, 1024) } else { (8, 6, 256) };
    let var = || -> Result<Var> { Ok(Var::from_tensor(&randn(&[b, h, t, 64])?)?) };
    let (q, k, v) = (var()?, var()?, var()?);
    let g = randn(&[b, t, h * 64])?;
    let flops = 4.0 * (b * h * t * t * 64) as f64;
    type Attn = fn(&Tensor, &Tensor, &Tensor, f64, usize, Option<&Packing>) -> candle_core::Result<Tensor>;
    let impls: &[(&str, Attn)] = if dev.is_cuda() {
        &[("tsukuru-fused", ops::attention)]
    } else {
        &[("candle", composite::attention), ("tsukuru-fused", kernels::attention::attention)]
    };
    let name = format!("causal attention {b}x{h}x{t}x64");
    for &(implementation, f) in impls {
        let fwd = || Ok(f(q.as_tensor(), k.as_tensor(), v.as_tensor(), 0.125, 0, None)?);
        print(&format!("{name} fwd"), implementation, flops, median(&fwd)?);
        let both = || {
            // On a GPU as a training step runs the kernels, and as the PyTorch peer times them: the
            // backward from a given output gradient (through candle's graph the loss `Σ out ⊙ g`
            // would add a sum over all of `out` in one block, by count up to a third of the kernels').
            #[cfg(feature = "cuda")]
            if dev.is_cuda() {
                let (q, k, v) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
                return Ok(tsukuru_model::gpu::attention::forward_backward(q, k, v, &g, 0.125)?);
            }
            let grads = (fwd()? * &g)?.sum_all()?.backward()?;
            Ok(grads.get(q.as_tensor()).expect("gradient of q").clone())
        };
        print(&format!("{name} fwd+bwd"), implementation, 3.0 * flops, median(&both)?);
    }
    Ok(())
}

//! `tsukuru bench matmul`: matrix-product throughput on the shapes of the benchmark model's
//! training step (candle's product and tsukuru's), and causal attention through candle's ops and through the fused op
//! (benches/matmul.sh runs PyTorch on the same shapes beside it).

use super::median_time;
use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use clap::Args;
use tsukuru_model::ops::composite;
use tsukuru_model::{kernels, Packing};

/// Arguments of `bench matmul`.
#[derive(Args, Debug)]
pub struct MatmulBenchArgs {
    /// Timed repetitions per shape (the median is reported).
    #[arg(long, default_value_t = 9)]
    pub repeat: usize,
}

/// A product to time.
type Product<'a> = &'a dyn Fn() -> Result<Tensor>;

/// Median seconds of `f` over `reps` runs after two untimed ones.
fn median(reps: usize, f: Product<'_>) -> Result<f64> {
    median_time(2, reps, || f().map(drop))
}

fn randn_var(shape: (usize, usize, usize, usize)) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?)?)
}

/// Runs `bench matmul`: one JSON line per shape and implementation.
pub fn run(a: &MatmulBenchArgs) -> Result<()> {
    let dev = Device::Cpu;
    let print = |name: &str, implementation: &str, flops: f64, secs: f64| {
        let line = serde_json::json!({
            "bench": "matmul", "impl": implementation, "shape": name, "seconds": secs, "gflops": flops / secs / 1e9,
        });
        println!("{line}");
    };
    // Weight products of one step (tokens × d_model against the layers' matrices), as `m×k×n`,
    // with `t` marking an operand read transposed (the backward pass's products).
    for (m, k, n, ta, tb) in [
        (2048, 384, 1024, false, false),
        (2048, 1024, 384, false, false),
        (2048, 384, 8192, false, false),
        (2048, 384, 1024, false, true),
        (384, 2048, 1024, true, false),
    ] {
        let x = Tensor::randn(0f32, 1.0, if ta { (k, m) } else { (m, k) }, &dev)?;
        let y = Tensor::randn(0f32, 1.0, if tb { (n, k) } else { (k, n) }, &dev)?;
        let secs = median(a.repeat, &|| {
            let xa = if ta { x.t()? } else { x.clone() };
            let yb = if tb { y.t()? } else { y.clone() };
            Ok(xa.matmul(&yb)?)
        })?;
        let name = format!("{m}x{k}x{n}{}{}", if ta { " aT" } else { "" }, if tb { " bT" } else { "" });
        print(&name, "candle", 2.0 * (m * k * n) as f64, secs);
        let secs = median(a.repeat, &|| {
            let xa = if ta { x.t()? } else { x.clone() };
            let yb = if tb { y.t()? } else { y.clone() };
            Ok(kernels::linear::product(&xa, &yb)?)
        })?;
        print(&name, "tsukuru", 2.0 * (m * k * n) as f64, secs);
    }
    // Causal attention over 8 sequences × 6 heads of 256 positions, head size 64: candle's ops
    // (full score matrix, masked softmax) against the fused op, forward and forward + backward.
    // GFLOP/s count the full products (4·B·H·T²·hd forward, three times that with the backward),
    // as the PyTorch peer does, so the figures compare times.
    let (q, k, v) = (randn_var((8, 6, 256, 64))?, randn_var((8, 6, 256, 64))?, randn_var((8, 6, 256, 64))?);
    let g = Tensor::randn(0f32, 1.0, (8, 256, 6 * 64), &dev)?;
    let flops = 4.0 * 48.0 * 256.0 * 256.0 * 64.0;
    let scale = 1.0 / 8.0;
    type Attn = fn(&Tensor, &Tensor, &Tensor, f64, usize, Option<&Packing>) -> candle_core::Result<Tensor>;
    let impls: [(&str, Attn); 2] = [("candle", composite::attention), ("tsukuru-fused", kernels::attention::attention)];
    for (implementation, f) in impls {
        let fwd = || Ok(f(q.as_tensor(), k.as_tensor(), v.as_tensor(), scale, 0, None)?);
        print("causal attention 8x6x256x64 fwd", implementation, flops, median(a.repeat, &fwd)?);
        let both = || {
            let grads = (fwd()? * &g)?.sum_all()?.backward()?;
            Ok(grads.get(q.as_tensor()).expect("gradient of q").clone())
        };
        print("causal attention 8x6x256x64 fwd+bwd", implementation, 3.0 * flops, median(a.repeat, &both)?);
    }
    Ok(())
}

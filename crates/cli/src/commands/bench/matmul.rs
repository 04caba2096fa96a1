//! `tsukuru bench matmul`: matrix-product throughput on the shapes of the benchmark model's
//! training step, for candle's product and for the batched attention kernel (benches/matmul.sh
//! runs PyTorch on the same shapes beside it).

use super::median_time;
use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;
use tsukuru_model::kernels::matmul::batched_matmul;

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
    }
    // Attention: 8 sequences × 6 heads of 256 positions, head size 64.
    let q = Tensor::randn(0f32, 1.0, (8, 6, 256, 64), &dev)?;
    let kk = Tensor::randn(0f32, 1.0, (8, 6, 256, 64), &dev)?;
    let p = Tensor::randn(0f32, 1.0, (8, 6, 256, 256), &dev)?;
    let flops = 2.0 * 48.0 * 256.0 * 64.0 * 256.0;
    let cases: [(&str, &str, Product<'_>); 6] = [
        ("48x(256x64x256) q kT", "candle", &|| Ok(q.matmul(&kk.t()?.contiguous()?)?)),
        ("48x(256x64x256) q kT", "tsukuru-kernel", &|| Ok(batched_matmul(&q, &kk.t()?)?)),
        ("48x(256x256x64) p v", "candle", &|| Ok(p.matmul(&kk)?)),
        ("48x(256x256x64) p v", "tsukuru-kernel", &|| Ok(batched_matmul(&p, &kk)?)),
        ("48x(256x256x64) pT g", "candle", &|| Ok(p.t()?.matmul(&q)?)),
        ("48x(256x256x64) pT g", "tsukuru-kernel", &|| Ok(batched_matmul(&p.t()?, &q)?)),
    ];
    for (name, implementation, f) in cases {
        print(name, implementation, flops, median(a.repeat, f)?);
    }
    Ok(())
}

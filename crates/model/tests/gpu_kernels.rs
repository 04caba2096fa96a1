//! The fused GPU kernels against the composite ops, on a CUDA device (this file builds only with
//! the `cuda` feature and fails without a GPU). Each check draws fresh random inputs, runs the
//! kernel with its outputs poisoned (NaN before the launch, so an unwritten element fails), and
//! compares value and gradients with the composite computed in f32 on the same (rounded) inputs:
//! ‖fused − reference‖ / ‖reference‖ under 1e-5 for f32 storage and 1e-2 for bf16. Last, a whole
//! model's loss and gradients on the GPU (f32, and bf16 through a cast) against the CPU.
#![cfg(feature = "cuda")]

mod parity;

use candle_core::{DType, Device, Result, Tensor, Var};
use tsukuru_model::gpu;
use tsukuru_model::kernels::grad_sink;
use tsukuru_model::ops::attn_residual::attn_residual;
use tsukuru_model::ops::composite;
use tsukuru_model::ops::mlp_residual::mlp_residual;
use tsukuru_model::Packing;

fn device() -> Device {
    gpu::set_poison(true);
    // Opened as the CLI opens it (one stream, no per-buffer events), so the checks run what a run does.
    gpu::open(0).expect("these checks need a CUDA device")
}

/// ‖a − b‖ / ‖b‖ in f64 (NaN when either holds a NaN, which fails every bound).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let a: Vec<f32> = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::BF16 {
        1e-2
    } else {
        1e-5
    }
}

/// Runs `fused` on the inputs in `dtype` and `reference` on the same values in f32, and compares
/// the outputs and the gradients of `Σ out ⊙ r` (r random) with respect to every input.
fn check(
    what: &str,
    dtype: DType,
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let dev = device();
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(&dev).unwrap().to_dtype(dtype).unwrap()).unwrap())
        .collect();
    // Copies of their own (in f32 `to_dtype` would hand back the same tensor), so a kernel that
    // wrote into an input would show against the reference.
    let refs: Vec<Var> = vars
        .iter()
        .map(|v| Var::from_tensor(&v.as_tensor().to_dtype(DType::F32).unwrap().copy().unwrap()).unwrap())
        .collect();
    let out = fused(&vars.iter().map(|v| v.as_tensor().clone()).collect::<Vec<_>>()).unwrap();
    let want = reference(&refs.iter().map(|v| v.as_tensor().clone()).collect::<Vec<_>>()).unwrap();
    assert_eq!(out.dims(), want.dims(), "{what}: shape");
    let e = rel(&out, &want);
    assert!(e < tolerance(dtype), "{what} ({dtype:?}): output off by {e:.2e}");
    let r = Tensor::randn(0f32, 1.0, out.shape(), &dev).unwrap();
    let g = (out.to_dtype(DType::F32).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gw = (want * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, (v, rv)) in vars.iter().zip(&refs).enumerate() {
        let (a, b) = (g.get(v.as_tensor()), gw.get(rv.as_tensor()));
        let (Some(a), Some(b)) = (a, b) else { panic!("{what}: input {i} has no gradient") };
        let e = rel(a, b);
        assert!(e < tolerance(dtype), "{what} ({dtype:?}): gradient of input {i} off by {e:.2e}");
    }
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

#[test]
fn rms_norm_matches_the_composite() {
    for dtype in [DType::F32, DType::BF16] {
        for (rows, d) in [(7, 64), (300, 768), (33, 2048 + 96)] {
            let w = randn(&[d]).affine(0.2, 1.0).unwrap();
            check(
                &format!("rms_norm {rows}×{d}"),
                dtype,
                &[randn(&[rows, d]), w],
                |t| gpu::rms_norm::rms_norm(&t[0], &t[1], 1e-5),
                |t| composite::rms_norm(&t[0], &t[1], 1e-5),
            );
        }
    }
}

#[test]
fn swiglu_matches_the_composite() {
    for dtype in [DType::F32, DType::BF16] {
        for shape in [[3, 5, 7], [4, 256, 2048]] {
            check(
                &format!("swiglu {shape:?}"),
                dtype,
                &[randn(&shape), randn(&shape)],
                |t| gpu::swiglu::swiglu(&t[0], &t[1]),
                |t| composite::swiglu(&t[0], &t[1]),
            );
        }
    }
}

#[test]
fn the_feed_forward_half_as_one_node_matches_the_separate_composites() {
    for dtype in [DType::F32, DType::BF16] {
        for (b, t, d, f) in [(1, 7, 64, 96), (2, 128, 256, 704)] {
            // Weights scaled as initialisation scales them, so the bf16 products stay in range.
            let w = |rows, cols: usize| randn(&[rows, cols]).affine(1.0 / (cols as f64).sqrt(), 0.0).unwrap();
            let gain = randn(&[d]).affine(0.2, 1.0).unwrap();
            check(
                &format!("mlp_residual b{b} t{t} d{d} f{f}"),
                dtype,
                &[randn(&[b, t, d]), gain, w(f, d), w(f, d), w(d, f)],
                |x| mlp_residual(&x[0], &x[1], &x[2], &x[3], &x[4], 1e-5),
                |x| {
                    let n = composite::rms_norm(&x[0], &x[1], 1e-5)?;
                    let h = composite::swiglu(&n.broadcast_matmul(&x[2].t()?)?, &n.broadcast_matmul(&x[3].t()?)?)?;
                    &x[0] + h.broadcast_matmul(&x[4].t()?)?
                },
            );
        }
    }
}

#[test]
fn the_attention_half_as_one_node_matches_the_separate_composites() {
    let dev = device();
    for dtype in [DType::F32, DType::BF16] {
        for (b, t, d, h, kv, hd, packed) in [(1, 70, 256, 4, 2, 64, false), (2, 130, 256, 2, 1, 128, true)] {
            let (cos, sin) = composite::rope_tables(hd, t, 10_000.0, dtype, &dev).unwrap();
            let (cos32, sin32) = (cos.to_dtype(DType::F32).unwrap(), sin.to_dtype(DType::F32).unwrap());
            let packing = packed.then(|| Packing::from_lengths(t, &vec![vec![60, t - 60]; b]).unwrap());
            let w = |rows: usize, cols: usize| randn(&[rows, cols]).affine(1.0 / (cols as f64).sqrt(), 0.0).unwrap();
            let gain = randn(&[d]).affine(0.2, 1.0).unwrap();
            let inputs = [randn(&[b, t, d]), gain, w(h * hd, d), w(kv * hd, d), w(kv * hd, d), w(d, h * hd)];
            check(
                &format!("attn_residual b{b} t{t} h{h} kv{kv} hd{hd} packed {packed}"),
                dtype,
                &inputs,
                |x| {
                    let weights = [&x[2], &x[3], &x[4], &x[5]];
                    attn_residual(&x[0], &x[1], weights, (&cos, &sin), (h, kv), packing.as_ref(), 1e-5)
                },
                |x| {
                    let n = composite::rms_norm(&x[0], &x[1], 1e-5)?;
                    let heads = |w: &Tensor, c| n.broadcast_matmul(&w.t()?)?.reshape((b, t, c, hd))?.transpose(1, 2);
                    let q = composite::rope(&heads(&x[2], h)?, &cos32, &sin32, 0)?;
                    let k = composite::rope(&heads(&x[3], kv)?, &cos32, &sin32, 0)?;
                    let scale = 1.0 / (hd as f64).sqrt();
                    let o = composite::attention(&q, &k, &heads(&x[4], kv)?, scale, 0, packing.as_ref())?;
                    &x[0] + o.broadcast_matmul(&x[5].t()?)?
                },
            );
        }
    }
}

#[test]
fn the_embedding_gradient_matches_candles_row_gather() {
    let dev = device();
    for dtype in [DType::F32, DType::BF16] {
        // A vocabulary smaller than the batch, so tokens repeat and their rows' gradients meet.
        let (vocab, d, b, t) = (37, 96, 4, 150);
        let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7919 + i / 5) % vocab) as u32).collect();
        let ids = Tensor::from_vec(ids, (b, t), &dev).unwrap();
        check(
            &format!("embedding vocab {vocab} d{d} b{b} t{t}"),
            dtype,
            &[randn(&[vocab, d])],
            |x| gpu::embedding::embedding(&x[0], &ids),
            |x| x[0].index_select(&ids.flatten_all()?, 0)?.reshape((b, t, d)),
        );
    }
}

#[test]
fn rope_matches_the_composite_on_transposed_views() {
    let dev = device();
    for dtype in [DType::F32, DType::BF16] {
        for (b, t, h, hd, start) in [(2, 5, 3, 8, 0), (2, 300, 4, 64, 0), (1, 7, 2, 128, 100)] {
            let (cos, sin) = composite::rope_tables(hd, 512, 10_000.0, dtype, &dev).unwrap();
            let (cos32, sin32) = (cos.to_dtype(DType::F32).unwrap(), sin.to_dtype(DType::F32).unwrap());
            // As the attention calls it: the projection's (B, T, H, hd) output seen as (B, H, T, hd).
            check(
                &format!("rope b{b} t{t} h{h} hd{hd} start {start}"),
                dtype,
                &[randn(&[b, t, h, hd])],
                |x| gpu::rope::rope(&x[0].transpose(1, 2)?, &cos, &sin, start),
                |x| composite::rope(&x[0].transpose(1, 2)?, &cos32, &sin32, start),
            );
        }
    }
}

#[test]
fn the_output_layer_losses_match_the_composites() {
    let dev = device();
    for dtype in [DType::F32, DType::BF16] {
        // 40,000 rows at 4,096 words take several chunks; one target in seven ignored.
        for (n, d, v) in [(9, 16, 50), (40_000, 64, 4096)] {
            let ids: Vec<u32> = (0..n as u32)
                .map(|i| if i % 7 == 3 { u32::MAX } else { i.wrapping_mul(2_654_435_761) % v as u32 })
                .collect();
            let targets = Tensor::from_vec(ids, n, &dev).unwrap();
            let inputs = [randn(&[n, d]), randn(&[v, d]).affine(0.1, 0.0).unwrap()];
            check(
                &format!("linear_cross_entropy n{n} d{d} v{v}"),
                dtype,
                &inputs,
                |t| gpu::linear_cross_entropy::linear_cross_entropy(&t[0], &t[1], &targets),
                |t| composite::cross_entropy(&t[0].matmul(&t[1].t()?)?, &targets),
            );
            check(
                &format!("linear_logprobs n{n} d{d} v{v}"),
                dtype,
                &inputs,
                |t| gpu::linear_logprobs::linear_logprobs(&t[0], &t[1], &targets),
                |t| composite::token_logprobs(&t[0].matmul(&t[1].t()?)?, &targets),
            );
        }
    }
}

/// cuBLASLt's products against candle's on the CPU in f32: operands row-major or transposed
/// views, starting off any 16-byte boundary, with and without an addend, into the operands' dtype
/// or f32, and accumulated in place.
#[test]
fn cublaslt_products_match_candles() {
    let dev = device();
    let (m, k, n) = (37, 70, 45);
    for dtype in [DType::F32, DType::BF16] {
        let on = |t: &Tensor| t.to_device(&dev).unwrap().to_dtype(dtype).unwrap();
        // Row 1 onwards of a larger matrix: the first element is 2 or 4 bytes past a row of 70.
        let a_rows = randn(&[m + 1, k]);
        let b_rows = randn(&[k, n]);
        let c = randn(&[m, n]);
        let (a_cpu, b_cpu) = (a_rows.narrow(0, 1, m).unwrap(), b_rows.clone());
        let want = a_cpu.matmul(&b_cpu).unwrap();
        let a_views =
            [on(&a_rows).narrow(0, 1, m).unwrap(), on(&a_cpu.t().unwrap().contiguous().unwrap()).t().unwrap()];
        let b_views = [on(&b_rows), on(&b_cpu.t().unwrap().contiguous().unwrap()).t().unwrap()];
        for (i, a) in a_views.iter().enumerate() {
            for (j, b) in b_views.iter().enumerate() {
                for out in [dtype, DType::F32] {
                    let what = format!("{dtype:?} a{i} b{j} into {out:?}");
                    let got = gpu::matmul::matmul(a, b, None, out).unwrap();
                    assert_eq!(got.dtype(), out, "{what}");
                    let e = rel(&got.to_device(&Device::Cpu).unwrap(), &want);
                    assert!(e < tolerance(dtype), "{what}: product off by {e:.2e}");
                    let add = on(&c).to_dtype(out).unwrap();
                    let got = gpu::matmul::matmul(a, b, Some(&add), out).unwrap();
                    let e = rel(&got.to_device(&Device::Cpu).unwrap(), &(&want + &c).unwrap());
                    assert!(e < tolerance(dtype), "{what}: product plus addend off by {e:.2e}");
                }
                let acc = gpu::matmul::matmul(a, b, None, DType::F32).unwrap();
                let acc = gpu::matmul::accumulate(acc, a, b).unwrap();
                let e = rel(&acc.to_device(&Device::Cpu).unwrap(), &(&want * 2.0).unwrap());
                assert!(e < tolerance(dtype), "{dtype:?} a{i} b{j}: accumulated twice, off by {e:.2e}");
            }
        }
    }
    assert_eq!(gpu::matmul::fallbacks(), 0, "cuBLASLt refused a product (the first reason is on stderr)");
}

#[test]
fn attention_matches_the_composite() {
    use tsukuru_model::packing::Packing;
    // (B, H, KV, T, S, hd, start, packed): whole sequences, grouped heads, a ragged last tile,
    // queries after a cache, packed rows.
    let cases = [
        (2, 4, 4, 64, 64, 64, 0, false),
        (2, 6, 2, 200, 200, 64, 0, false),
        (1, 4, 1, 77, 77, 128, 0, false),
        (1, 2, 2, 5, 150, 64, 145, false),
        (2, 4, 2, 130, 130, 64, 0, true),
    ];
    for dtype in [DType::F32, DType::BF16] {
        for (b, h, kv, t, s, hd, start, packed) in cases {
            let packing = packed.then(|| Packing::from_lengths(t, &[vec![60, 1, 50], vec![t]]).unwrap());
            let scale = 1.0 / (hd as f64).sqrt();
            // Queries as the model makes them (contiguous after RoPE); keys and values as transposed
            // views of the projections' (B, S, KV, hd) output.
            check(
                &format!("attention b{b} h{h} kv{kv} t{t} s{s} hd{hd} start {start} packed {packed}"),
                dtype,
                &[randn(&[b, h, t, hd]), randn(&[b, s, kv, hd]), randn(&[b, s, kv, hd])],
                |x| {
                    let (k, v) = (x[1].transpose(1, 2)?, x[2].transpose(1, 2)?);
                    gpu::attention::attention(&x[0], &k, &v, scale, start, packing.as_ref())
                },
                |x| {
                    let (k, v) = (x[1].transpose(1, 2)?, x[2].transpose(1, 2)?);
                    composite::attention(&x[0], &k, &v, scale, start, packing.as_ref())
                },
            );
        }
    }
}

#[test]
fn adamw_and_the_gradient_norm_match_the_cpu_kernels() {
    use tsukuru_model::kernels::adamw::{adamw_step, sum_squares, AdamWStep};
    let dev = device();
    let step = AdamWStep {
        lr: 3e-3,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        bias_corrections: (1.0 - 0.9f64.powi(3), 1.0 - 0.95f64.powi(3)),
        grad_scale: 0.7,
    };
    // Two parameters in one launch, one decayed and one not, one shorter than a chunk.
    let params: Vec<(usize, f64)> = vec![(300_001, 0.1), (1_000, 0.0)];
    let mut cpu = Vec::new();
    let mut gpu_tensors = Vec::new();
    for &(n, wd) in &params {
        let (w, m, g) = (randn(&[n]), randn(&[n]).affine(0.1, 0.0).unwrap(), randn(&[n]));
        let v = randn(&[n]).affine(0.1, 0.0).unwrap().sqr().unwrap();
        let on_gpu = |t: &Tensor| t.to_device(&dev).unwrap();
        gpu_tensors.push((on_gpu(&w), on_gpu(&m), on_gpu(&v), on_gpu(&g), wd));
        // The CPU kernel updates in place too.
        let (cw, cm, cv) = (w.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
        adamw_step(&cw, &cm, &cv, &g, &AdamWStep { weight_decay: wd, ..step }).unwrap();
        cpu.push((cw, cm, cv, g, m));
    }
    let list: Vec<gpu::adamw::Param> =
        gpu_tensors.iter().map(|(w, m, v, g, wd)| gpu::adamw::Param { w, m, v, g, weight_decay: *wd }).collect();
    gpu::adamw::adamw_step(&list, &step).unwrap();
    for (i, ((gw, gm, gv, ..), (cw, cm, cv, ..))) in gpu_tensors.iter().zip(&cpu).enumerate() {
        for (what, a, b) in [("w", gw, cw), ("m", gm, cm), ("v", gv, cv)] {
            let e = rel(a, b);
            assert!(e < 1e-6, "adamw parameter {i} {what} off by {e:.2e}");
        }
    }
    // The gradients and the first moments as they were: sums of squares over two tensors.
    let (g0, m0) = (&cpu[0].3, &cpu[1].4);
    let gpu_sum = gpu::adamw::sum_squares(&[&g0.to_device(&dev).unwrap(), &m0.to_device(&dev).unwrap()]).unwrap();
    let cpu_sum = sum_squares(g0).unwrap() + sum_squares(m0).unwrap();
    assert!((gpu_sum - cpu_sum).abs() < 1e-9 * cpu_sum, "sum of squares {gpu_sum} vs {cpu_sum}");
}

/// PyTorch's training curves from the parity fixture (the same weights and batch; PyTorch in f32,
/// and in bf16 autocast), followed on the GPU: every fused GPU op the model's shapes take, the
/// GPU's AdamW over the f32 masters.
#[test]
fn adamw_loss_curves_on_the_gpu_follow_pytorch_in_f32_and_in_bf16_mixed_precision() {
    parity::follow_curves(&device(), &|params, step| {
        let list: Vec<gpu::adamw::Param> =
            params.iter().map(|&(w, m, v, g)| gpu::adamw::Param { w, m, v, g, weight_decay: 0.0 }).collect();
        gpu::adamw::adamw_step(&list, step).unwrap();
    });
}

#[test]
fn a_whole_model_on_the_gpu_matches_the_cpu() {
    use candle_nn::VarBuilder;
    use tsukuru_model::{init::init_params, ModelConfig, Transformer};
    let dev = device();
    // Head size 64 (the kernels' size), grouped heads, an odd length: every fused GPU op runs.
    let cfg = ModelConfig { vocab_size: 300, n_kv_heads: 2, ..ModelConfig::from_depth(4, 300, 96) };
    let ids: Vec<u32> = (0..2 * 90u32).map(|i| i.wrapping_mul(2_654_435_761) % 300).collect();
    let targets: Vec<u32> = ids.iter().map(|&i| (i * 7 + 1) % 300).collect();
    // `sunk`: as the trainer runs it, the weights' gradients collected past candle's walk (the
    // blocks then one node); otherwise every gradient through the walk.
    let run = |device: &Device, dtype: DType, sunk: bool| {
        let map = init_params(&cfg, 11, DType::F32, device).unwrap();
        let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, device)).unwrap();
        let inputs = Tensor::from_slice(&ids, (2, 90), device).unwrap();
        let targets = Tensor::from_slice(&targets, 180, device).unwrap();
        let loss = || model.cast(dtype).unwrap().loss(&inputs, &targets, None).unwrap();
        let (loss, grads) = if sunk {
            let (loss, sink) = grad_sink::collect(loss);
            let mut grads = loss.backward().unwrap();
            sink.add_to(&mut grads).unwrap();
            (loss, grads)
        } else {
            let loss = loss();
            let grads = loss.backward().unwrap();
            (loss, grads)
        };
        let data = map.data().lock().unwrap();
        let mut named: Vec<(String, Tensor)> = data
            .iter()
            .map(|(k, v)| (k.clone(), grads.get(v.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (loss.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap(), named)
    };
    let (want, want_grads) = run(&Device::Cpu, DType::F32, false);
    // f32 allows for cuBLAS running f32 products in TF32 if candle asks it to.
    for (dtype, tol) in [(DType::F32, 2e-3), (DType::BF16, 3e-2)] {
        for sunk in [false, true] {
            let (got, got_grads) = run(&dev, dtype, sunk);
            assert!(
                (got - want).abs() < tol as f32 * want,
                "{dtype:?}, sunk {sunk}: loss {got} on the GPU, {want} on the CPU"
            );
            for ((name, g), (_, w)) in got_grads.iter().zip(&want_grads) {
                let e = rel(g, w);
                assert!(e < tol, "{dtype:?}, sunk {sunk}: gradient of {name} off by {e:.2e}");
            }
        }
    }
}

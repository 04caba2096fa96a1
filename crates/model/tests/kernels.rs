//! The fused CPU kernels give the composite ops' values and gradients (which the f64 finite
//! difference tests pin), on odd sizes that exercise every remainder of the vector loops.

use candle_core::{Device, Tensor, Var};
use tsukuru_core::Rng;
use tsukuru_model::kernels;
use tsukuru_model::ops::composite;

fn randn(rng: &mut Rng, shape: &[usize], scale: f32) -> Var {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.f64() as f32 * 2.0 - 1.0) * scale).collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d.to_scalar::<f32>().unwrap()
}

/// Forward values and the gradients of `sum(out · w)` (a random projection) agree between paths.
fn check(name: &str, inputs: &[&Var], fused: &dyn Fn() -> Tensor, reference: &dyn Fn() -> Tensor, tol: f32) {
    let (a, b) = (fused(), reference());
    let d = max_diff(&a, &b);
    assert!(d < tol, "{name}: outputs differ by {d}");
    let mut rng = Rng::new(9);
    let w = randn(&mut rng, a.dims(), 1.0);
    let ga = (a * w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (b * w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, x) in inputs.iter().enumerate() {
        let (da, db) = (ga.get(x).expect("fused gradient"), gb.get(x).expect("reference gradient"));
        let d = max_diff(da, db);
        assert!(d < tol, "{name}: gradient of input {i} differs by {d}");
    }
}

#[test]
fn rms_norm_matches_the_composite() {
    let mut rng = Rng::new(1);
    for d in [5, 8, 67] {
        let x = randn(&mut rng, &[3, 7, d], 2.0);
        let w = randn(&mut rng, &[d], 1.5);
        check(
            "rms_norm",
            &[&x, &w],
            &|| kernels::rms_norm::rms_norm(&x, &w, 1e-5).unwrap(),
            &|| composite::rms_norm(&x, &w, 1e-5).unwrap(),
            2e-5,
        );
    }
}

#[test]
fn swiglu_matches_the_composite() {
    let mut rng = Rng::new(3);
    let a = randn(&mut rng, &[4, 37], 6.0);
    let b = randn(&mut rng, &[4, 37], 2.0);
    check(
        "swiglu",
        &[&a, &b],
        &|| kernels::swiglu::swiglu(&a, &b).unwrap(),
        &|| composite::swiglu(&a, &b).unwrap(),
        1e-5,
    );
}

#[test]
fn cross_entropy_matches_the_composite() {
    let mut rng = Rng::new(4);
    let logits = randn(&mut rng, &[13, 101], 8.0);
    let targets: Vec<u32> = (0..13).map(|_| rng.below(101) as u32).collect();
    let targets = Tensor::from_vec(targets, 13, &Device::Cpu).unwrap();
    let (a, b) = (
        kernels::cross_entropy::cross_entropy(&logits, &targets).unwrap(),
        composite::cross_entropy(&logits, &targets).unwrap(),
    );
    let d = max_diff(&a, &b);
    assert!(d < 1e-5, "loss differs by {d}");
    let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
    let d = max_diff(ga.get(&logits).unwrap(), gb.get(&logits).unwrap());
    assert!(d < 1e-6, "gradient differs by {d}");
    let bad = Tensor::from_vec(vec![101u32; 13], 13, &Device::Cpu).unwrap();
    let err = kernels::cross_entropy::cross_entropy(&logits, &bad).unwrap_err().to_string();
    assert!(err.contains("101") && err.contains("vocabulary"), "{err}");
}

#[test]
fn the_vectorised_exp_is_accurate_over_the_range_softmax_uses() {
    let mut worst = 0f32;
    for i in -8000..=800 {
        let x = i as f32 * 0.01;
        let (got, want) = (kernels::simd::exp(x), x.exp());
        worst = worst.max(((got - want) / want).abs());
    }
    assert!(worst < 5e-7, "relative error {worst}");
    assert!(kernels::simd::exp(f32::NAN).is_nan());
}

#[test]
fn rope_matches_the_composite_with_an_offset() {
    let mut rng = Rng::new(8);
    let (cos, sin) = tsukuru_model::ops::rope_tables(10, 32, 10_000.0, candle_core::DType::F32, &Device::Cpu).unwrap();
    for (t, start) in [(7, 0), (3, 20)] {
        let x = randn(&mut rng, &[2, 3, t, 10], 2.0);
        check(
            "rope",
            &[&x],
            &|| kernels::rope::rope(&x, &cos, &sin, start).unwrap(),
            &|| composite::rope(&x, &cos, &sin, start).unwrap(),
            2e-6,
        );
        // A transposed view (B, T, H, hd) → (B, H, T, hd), as the model passes it, read in place.
        let y = randn(&mut rng, &[2, t, 3, 10], 2.0);
        let view = || y.as_tensor().transpose(1, 2).unwrap();
        check(
            "rope of a view",
            &[&y],
            &|| kernels::rope::rope(&view(), &cos, &sin, start).unwrap(),
            &|| composite::rope(&view().contiguous().unwrap(), &cos, &sin, start).unwrap(),
            2e-6,
        );
    }
}

#[test]
fn fused_attention_matches_the_composite_across_blocks_offsets_and_groups() {
    let mut rng = Rng::new(11);
    // (batch, query heads, kv heads, queries, keys, head size): several 64-row blocks and a
    // remainder, queries after cached keys (start = keys − queries), grouped heads.
    for (b, h, kv, t, s, hd) in [(2, 4, 2, 150, 150, 16), (1, 3, 3, 70, 100, 8), (2, 2, 1, 5, 5, 6)] {
        let q = randn(&mut rng, &[b, t, h, hd], 1.5);
        let k = randn(&mut rng, &[b, kv, s, hd], 1.5);
        let v = randn(&mut rng, &[b, s, kv, hd], 1.0);
        let scale = 1.0 / (hd as f64).sqrt();
        let start = s - t;
        // q and v as transposed views (as the model makes them), k contiguous.
        let qv = || q.as_tensor().transpose(1, 2).unwrap();
        let vv = || v.as_tensor().transpose(1, 2).unwrap();
        check(
            &format!("attention b{b} h{h} kv{kv} t{t} s{s}"),
            &[&q, &k, &v],
            &|| kernels::attention::attention(&qv(), k.as_tensor(), &vv(), scale, start, None).unwrap(),
            &|| composite::attention(&qv(), k.as_tensor(), &vv(), scale, start, None).unwrap(),
            2e-5,
        );
    }
}

#[test]
fn linear_cross_entropy_matches_projection_then_cross_entropy() {
    let mut rng = Rng::new(12);
    // 600 rows: one full chunk of 512 and a remainder.
    for (n, d, v) in [(600, 24, 37), (3, 8, 5)] {
        let h = randn(&mut rng, &[n, d], 1.0);
        let w = randn(&mut rng, &[v, d], 1.0);
        let targets: Vec<u32> = (0..n).map(|i| (i * 7 % v) as u32).collect();
        let t = Tensor::from_vec(targets, n, &Device::Cpu).unwrap();
        let fused = kernels::linear_cross_entropy::linear_cross_entropy(h.as_tensor(), w.as_tensor(), &t).unwrap();
        let plain = composite::cross_entropy(&h.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap(), &t).unwrap();
        let d0 = max_diff(&fused, &plain);
        assert!(d0 < 1e-5, "n{n}: losses differ by {d0}");
        // Scaled by an upstream gradient of 3, as the backward must.
        let ga = (fused * 3.0).unwrap().backward().unwrap();
        let gb = (&plain * 3.0).unwrap().backward().unwrap();
        for (name, x) in [("h", &h), ("w", &w)] {
            let d = max_diff(ga.get(x).unwrap(), gb.get(x).unwrap());
            assert!(d < 1e-5, "n{n}: gradient of {name} differs by {d}");
        }
        // Without variables no gradients are computed, and the loss is the same.
        let bare =
            kernels::linear_cross_entropy::linear_cross_entropy(&h.as_tensor().detach(), &w.as_tensor().detach(), &t);
        assert!(max_diff(&bare.unwrap(), &plain) < 1e-5);
    }
    let h = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err =
        kernels::linear_cross_entropy::linear_cross_entropy(&h, &w, &Tensor::new(&[0u32, 3], &Device::Cpu).unwrap());
    assert!(err.unwrap_err().to_string().contains("outside the vocabulary"));
}

#[test]
fn linear_logprobs_match_projection_then_log_softmax() {
    let mut rng = Rng::new(14);
    // A full chunk of 512 rows and a remainder; every fifth target ignored.
    for (n, d, v) in [(600, 24, 37), (3, 8, 5)] {
        let h = randn(&mut rng, &[n, d], 1.0);
        let w = randn(&mut rng, &[v, d], 1.0);
        let targets: Vec<u32> =
            (0..n).map(|i| if i % 5 == 4 { tsukuru_model::ops::IGNORE } else { (i * 7 % v) as u32 }).collect();
        let t = Tensor::from_vec(targets, n, &Device::Cpu).unwrap();
        check(
            "linear_logprobs",
            &[&h, &w],
            &|| kernels::linear_logprobs::linear_logprobs(h.as_tensor(), w.as_tensor(), &t).unwrap(),
            &|| composite::token_logprobs(&h.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap(), &t).unwrap(),
            2e-5,
        );
        let lp = kernels::linear_logprobs::linear_logprobs(h.as_tensor(), w.as_tensor(), &t).unwrap();
        let lp = lp.to_vec1::<f32>().unwrap();
        assert!(lp.iter().all(|&x| x <= 0.0) && lp.iter().skip(4).step_by(5).all(|&x| x == 0.0));
    }
}

#[test]
fn swiglu_down_matches_the_gate_then_the_projection() {
    let mut rng = Rng::new(13);
    for (rows, f, d) in [(18, 37, 11), (1, 8, 4)] {
        let gate = randn(&mut rng, &[rows, f], 2.0);
        let up = randn(&mut rng, &[rows, f], 2.0);
        let w = randn(&mut rng, &[d, f], 1.0);
        check(
            "swiglu_down",
            &[&gate, &up, &w],
            &|| kernels::swiglu_down::swiglu_down(gate.as_tensor(), up.as_tensor(), w.as_tensor()).unwrap(),
            &|| {
                let h = composite::swiglu(gate.as_tensor(), up.as_tensor()).unwrap();
                h.matmul(&w.as_tensor().t().unwrap()).unwrap()
            },
            2e-5,
        );
    }
}

#[test]
fn linear_matches_candles_product_with_the_transposed_weight() {
    let mut rng = Rng::new(17);
    // Sizes off the 6 × 16 tile and across the 384-deep block, and one row.
    for (b, t, k, n) in [(2, 13, 37, 21), (1, 1, 8, 4), (1, 7, 400, 35)] {
        let x = randn(&mut rng, &[b, t, k], 1.0);
        let w = randn(&mut rng, &[n, k], 1.0);
        check(
            "linear",
            &[&x, &w],
            &|| kernels::linear::linear(x.as_tensor(), w.as_tensor()).unwrap(),
            &|| x.as_tensor().broadcast_matmul(&w.as_tensor().t().unwrap()).unwrap(),
            1e-4,
        );
    }
}

#[test]
fn product_reads_transposed_views_in_place() {
    let mut rng = Rng::new(19);
    let a = randn(&mut rng, &[40, 23], 1.0);
    let b = randn(&mut rng, &[23, 30], 1.0);
    let want = a.as_tensor().matmul(b.as_tensor()).unwrap();
    let (at, bt) = (a.as_tensor().t().unwrap().contiguous().unwrap(), b.as_tensor().t().unwrap().contiguous().unwrap());
    for (x, y) in [(a.as_tensor().clone(), b.as_tensor().clone()), (at.t().unwrap(), bt.t().unwrap())] {
        let got = kernels::linear::product(&x, &y).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
    }
}

#[test]
fn swiglu_block_matches_the_norm_projections_and_residual_taken_apart() {
    let mut rng = Rng::new(19);
    // Rows across several tasks, and a single row; widths off the vector length.
    for (b, t, d, f) in [(2, 45, 13, 37), (1, 1, 8, 4)] {
        let x = randn(&mut rng, &[b, t, d], 2.0);
        let gain = randn(&mut rng, &[d], 1.5);
        let gate = randn(&mut rng, &[f, d], 1.0);
        let up = randn(&mut rng, &[f, d], 1.0);
        let down = randn(&mut rng, &[d, f], 1.0);
        let (xt, gt, wg, wu, wd) =
            (x.as_tensor(), gain.as_tensor(), gate.as_tensor(), up.as_tensor(), down.as_tensor());
        check(
            "swiglu block",
            &[&x, &gain, &gate, &up, &down],
            &|| tsukuru_model::ops::swiglu_residual(xt, gt, wg, wu, wd, 1e-5).unwrap(),
            &|| {
                let n = composite::rms_norm(xt, gt, 1e-5).unwrap();
                let h = composite::swiglu(
                    &n.broadcast_matmul(&wg.t().unwrap()).unwrap(),
                    &n.broadcast_matmul(&wu.t().unwrap()).unwrap(),
                );
                (xt + h.unwrap().broadcast_matmul(&wd.t().unwrap()).unwrap()).unwrap()
            },
            1e-4,
        );
    }
}

#[test]
fn attention_block_matches_the_norm_projections_rope_attention_and_residual_taken_apart() {
    let mut rng = Rng::new(23);
    // (batch, positions, query heads, kv heads, head size): two 64-row query blocks and a
    // remainder with grouped heads; one position.
    for (b, t, h, kv, hd) in [(2, 70, 4, 2, 8), (1, 1, 2, 1, 6)] {
        let d = 12;
        let (cos, sin) = composite::rope_tables(hd, 128, 10_000.0, candle_core::DType::F32, &Device::Cpu).unwrap();
        let x = randn(&mut rng, &[b, t, d], 2.0);
        let gain = randn(&mut rng, &[d], 1.5);
        let [wq, wk, wv] = [h, kv, kv].map(|n| randn(&mut rng, &[n * hd, d], 0.5));
        let wo = randn(&mut rng, &[d, h * hd], 0.5);
        let ts = [&x, &gain, &wq, &wk, &wv, &wo].map(Var::as_tensor);
        let [xt, gt, q, k, v, o] = ts;
        check(
            &format!("attention block b{b} t{t} h{h} kv{kv}"),
            &[&x, &gain, &wq, &wk, &wv, &wo],
            &|| kernels::attn_block::attn_block(xt, [q, k, v], gt, o, (h, kv), (&cos, &sin), None, 1e-5).unwrap(),
            &|| {
                let n = composite::rms_norm(xt, gt, 1e-5).unwrap();
                let heads = |w: &Tensor, n_heads: usize| {
                    let y = n.broadcast_matmul(&w.t().unwrap()).unwrap();
                    y.reshape((b, t, n_heads, hd)).unwrap().transpose(1, 2).unwrap()
                };
                let qr = composite::rope(&heads(q, h), &cos, &sin, 0).unwrap();
                let kr = composite::rope(&heads(k, kv), &cos, &sin, 0).unwrap();
                let a = composite::attention(&qr, &kr, &heads(v, kv), 1.0 / (hd as f64).sqrt(), 0, None).unwrap();
                (xt + a.broadcast_matmul(&o.t().unwrap()).unwrap()).unwrap()
            },
            1e-4,
        );
    }
}

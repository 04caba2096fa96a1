//! Half-precision inputs to the composite ops: the statistics, exponentials and sums run in f32
//! (as autocast does), so the results equal the f32 computation on the same rounded inputs to
//! within the output's rounding, where sums kept in bf16 stall on long rows.

use candle_core::{DType, Device, Tensor, Var};
use tsukuru_model::ops::composite;

/// A row-major `(rows, cols)` tensor of deterministic values in `lo..lo + span`, rounded to bf16.
fn values(rows: usize, cols: usize, lo: f32, span: f32) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| lo + span * (((i as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0))
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap()
}

/// Largest difference relative to the largest magnitude of `want`.
fn rel(got: &Tensor, want: &Tensor) -> f32 {
    let (g, w) = (got.to_dtype(DType::F32).unwrap(), want.to_dtype(DType::F32).unwrap());
    let max = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    max(&(g - &w).unwrap()) / max(&w).max(1e-6)
}

#[test]
fn bf16_norm_softmax_and_loss_reduce_in_f32() {
    // 4,096-wide rows of values near 1: a bf16 running sum stops growing at 256 (its spacing is 2
    // there), which would put the mean square near 1/16 of its value.
    let x = values(3, 4096, 0.9, 0.2);
    let gain = values(1, 4096, 0.5, 1.0).squeeze(0).unwrap();
    let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let norm = composite::rms_norm(&x, &gain, 1e-5).unwrap();
    assert_eq!(norm.dtype(), DType::BF16);
    let want = composite::rms_norm(&f32_of(&x), &f32_of(&gain), 1e-5).unwrap();
    assert!(rel(&norm, &want) < 1e-2, "rms_norm off by {}", rel(&norm, &want));

    let p = composite::softmax_last(&x).unwrap();
    assert_eq!(p.dtype(), DType::BF16);
    let want = composite::softmax_last(&f32_of(&x)).unwrap();
    assert!(rel(&p, &want) < 1e-2, "softmax off by {}", rel(&p, &want));

    // The loss comes back in f32; its gradient reaches the bf16 logits in bf16.
    let logits = Var::from_tensor(&values(4, 4096, -2.0, 4.0)).unwrap();
    let targets = Tensor::new(&[1u32, 7, 4095, 0], &Device::Cpu).unwrap();
    let loss = composite::cross_entropy(logits.as_tensor(), &targets).unwrap();
    assert_eq!(loss.dtype(), DType::F32);
    let lf = Var::from_tensor(&f32_of(logits.as_tensor())).unwrap();
    let want = composite::cross_entropy(lf.as_tensor(), &targets).unwrap();
    let (l, w) = (loss.to_scalar::<f32>().unwrap(), want.to_scalar::<f32>().unwrap());
    assert!((l - w).abs() < 1e-4 * w.abs(), "loss {l} vs {w}");
    let (g, gw) = (loss.backward().unwrap(), want.backward().unwrap());
    let (g, gw) = (g.get(logits.as_tensor()).unwrap(), gw.get(lf.as_tensor()).unwrap());
    assert_eq!(g.dtype(), DType::BF16);
    assert!(rel(g, gw) < 1e-2, "loss gradient off by {}", rel(g, gw));
}

/// Norm of `a − b` relative to the norm of `b`, in f32.
fn rel_norm(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    norm(&(&a - &b).unwrap()) / norm(&b).max(1e-12)
}

#[test]
fn a_bf16_cast_passes_f32_gradients_to_every_master_weight() {
    use candle_nn::{VarBuilder, VarMap};
    use tsukuru_model::{init::init_params, LoraSpec, ModelConfig, Transformer};
    let dev = Device::Cpu;
    let base = ModelConfig { n_layers: 2, ..ModelConfig::from_depth(2, 64, 32) };
    let ids = Tensor::from_vec((0..48u32).map(|i| (i * 37 + 5) % 64).collect(), (2, 24), &dev).unwrap();
    let targets = Tensor::from_vec((0..48u32).map(|i| (i * 11 + 3) % 64).collect(), 48, &dev).unwrap();
    for (tie, lora) in [(false, false), (true, false), (false, true)] {
        let cfg = ModelConfig { tie_embeddings: tie, ..base.clone() };
        let map = init_params(&cfg, 7, DType::F32, &dev).unwrap();
        let mut model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
        let trained = if lora {
            let adapters = VarMap::new();
            model.attach_lora(LoraSpec { rank: 4, alpha: 8.0 }, &adapters, 1).unwrap();
            adapters
        } else {
            map
        };
        let cast = model.cast(DType::BF16).unwrap();
        assert_eq!(cast.dtype(), DType::BF16);
        let want = model.loss(&ids, &targets, None).unwrap();
        let got = cast.loss(&ids, &targets, None).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let (w, g) = (want.to_scalar::<f32>().unwrap(), got.to_scalar::<f32>().unwrap());
        assert!((w - g).abs() < 1e-2 * w, "tie {tie}, lora {lora}: loss {g} vs f32 {w}");
        let (gw, gg) = (want.backward().unwrap(), got.backward().unwrap());
        for (name, var) in trained.data().lock().unwrap().iter() {
            let Some(g) = gg.get(var.as_tensor()) else { panic!("tie {tie}, lora {lora}: no gradient for {name}") };
            assert_eq!(g.dtype(), DType::F32, "{name}");
            let w = gw.get(var.as_tensor()).unwrap();
            // LoRA's A starts with a zero gradient (B is zero): nothing to compare.
            if w.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0 {
                assert!(rel_norm(g, w) < 5e-2, "tie {tie}, lora {lora}: {name} off by {}", rel_norm(g, w));
            }
        }
    }
}

#[test]
fn a_bf16_cast_sums_a_frequent_tokens_embedding_gradient_in_f32() {
    use candle_nn::VarBuilder;
    use tsukuru_model::{init::init_params, ModelConfig, Transformer};
    let dev = Device::Cpu;
    let cfg = ModelConfig { n_layers: 1, ..ModelConfig::from_depth(1, 64, 1024) };
    let map = init_params(&cfg, 3, DType::F32, &dev).unwrap();
    let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
    // One token 2,048 times: its embedding row's gradient is a sum of 2,048 terms.
    let ids = Tensor::from_vec(vec![3u32; 2048], (2, 1024), &dev).unwrap();
    let targets = Tensor::from_vec((0..2048u32).map(|i| i % 64).collect(), 2048, &dev).unwrap();
    let table = map.data().lock().unwrap()["model.embed_tokens.weight"].clone();
    let row = |m: &Transformer| {
        let grads = m.loss(&ids, &targets, None).unwrap().backward().unwrap();
        grads.get(table.as_tensor()).unwrap().narrow(0, 3, 1).unwrap()
    };
    let (want, got) = (row(&model), row(&model.cast(DType::BF16).unwrap()));
    assert_eq!(got.dtype(), DType::F32);
    // The terms come from a bf16 backward and largely cancel, so the sum keeps a few percent of
    // their rounding either way (3.6% here); summed in bf16 as well it was off by 9.7%.
    let e = rel_norm(&got, &want);
    assert!(e < 6e-2, "the embedding row's gradient is off by {e}");
}

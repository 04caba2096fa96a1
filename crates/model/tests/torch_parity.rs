//! tsukuru's transformer against an independent PyTorch implementation on the same weights:
//! logits, loss and every parameter's gradient, through the fused CPU kernels and through the
//! composite ops. The expected values come from `scripts/torch_parity.sh` (PyTorch float32), and
//! both sides compute the weights from one formula, so the fixture holds no weights. Training
//! curves too: a few AdamW steps in f32, and in bf16 mixed precision against PyTorch's autocast.
//! Its own test binary: it switches the kernels process-wide.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::Deserialize;
use std::collections::HashMap;
use tsukuru_model::init::param_specs;
use tsukuru_model::ops::{cross_entropy, set_fused_enabled};
use tsukuru_model::{ModelConfig, Transformer};

#[derive(Deserialize)]
struct Fixture {
    variants: Vec<Variant>,
    curves: Curves,
}

/// PyTorch's losses over a few AdamW steps on the first variant's batch.
#[derive(Deserialize)]
struct Curves {
    steps: usize,
    lr: f64,
    float32: Vec<f64>,
    bfloat16: Vec<f64>,
}

#[derive(Deserialize)]
struct Variant {
    config: ModelConfig,
    batch: usize,
    seq: usize,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    loss: f32,
    logits: Vec<f32>,
    grads: HashMap<String, Vec<f32>>,
}

/// The fixture script's `weight`: parameter number `p`, gains near 1, matrices ±1/√fan_in.
fn weights(cfg: &ModelConfig) -> VarMap {
    let map = VarMap::new();
    let mut data = map.data().lock().unwrap();
    for (p, (name, shape, _)) in param_specs(cfg).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let wave = (0..n).map(|i| ((i + 1) as f64 * 0.7548776662 + (p + 1) as f64 * 2.399963).sin());
        let values: Vec<f32> = if shape.len() == 1 {
            wave.map(|w| (1.0 + 0.25 * w) as f32).collect()
        } else {
            let amp = if p == 0 { 1.0 } else { 1.0 / (shape[1] as f64).sqrt() };
            wave.map(|w| (amp * w) as f32).collect()
        };
        let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
        data.insert(name, Var::from_tensor(&t).unwrap());
    }
    drop(data);
    map
}

/// Largest |a − b| over the largest |b| (at least 1): a relative error for the whole tensor.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn logits_loss_and_gradients_match_pytorch() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torch_parity.json"))
        .expect("fixture missing; regenerate with scripts/torch_parity.sh");
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    let dev = Device::Cpu;
    for v in &fixture.variants {
        let cfg = &v.config;
        let map = weights(cfg);
        let model = Transformer::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
        let inputs = Tensor::from_slice(&v.inputs, (v.batch, v.seq), &dev).unwrap();
        let targets = Tensor::from_slice(&v.targets, v.batch * v.seq, &dev).unwrap();
        for fused in [true, false] {
            set_fused_enabled(fused);
            let what = format!("{cfg:?}, fused kernels {fused}");
            let logits = model.forward(&inputs, None).unwrap();
            let flat = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let e = rel_err(&flat, &v.logits);
            assert!(e < 2e-5, "logits differ from PyTorch's by {e} (relative) for {what}");
            // The training loss: output projection and cross-entropy as one op on the CPU.
            let loss = model.loss(&inputs, &targets, None).unwrap();
            let separate =
                cross_entropy(&logits.reshape((v.batch * v.seq, cfg.vocab_size)).unwrap(), &targets).unwrap();
            let l = loss.to_scalar::<f32>().unwrap();
            let l2 = separate.to_scalar::<f32>().unwrap();
            assert!((l2 - v.loss).abs() < 1e-5 * v.loss, "cross-entropy of the logits {l2} vs PyTorch's {}", v.loss);
            assert!((l - v.loss).abs() < 1e-5 * v.loss, "loss {l} vs PyTorch's {} for {what}", v.loss);
            let grads = loss.backward().unwrap();
            let vars = map.data().lock().unwrap();
            assert_eq!(vars.len(), v.grads.len());
            for (name, expected) in &v.grads {
                let g = grads.get(vars[name].as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
                let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let e = rel_err(&g, expected);
                assert!(e < 5e-5, "gradient of {name} differs from PyTorch's by {e} (relative) for {what}");
            }
        }
    }
}

/// Losses of the fixture's AdamW steps (no weight decay; the fused CPU update) on the first
/// variant's batch, each step computing through a cast of the f32 master weights to `dtype`.
fn curve(v: &Variant, c: &Curves, dtype: DType) -> Vec<f64> {
    use tsukuru_model::kernels::adamw::{adamw_step, AdamWStep};
    let dev = Device::Cpu;
    let map = weights(&v.config);
    let model = Transformer::new(&v.config, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
    let inputs = Tensor::from_slice(&v.inputs, (v.batch, v.seq), &dev).unwrap();
    let targets = Tensor::from_slice(&v.targets, v.batch * v.seq, &dev).unwrap();
    let vars: Vec<Var> = map.data().lock().unwrap().values().cloned().collect();
    let moments: Vec<(Tensor, Tensor)> =
        vars.iter().map(|w| (w.zeros_like().unwrap(), w.zeros_like().unwrap())).collect();
    (1..=c.steps as i32)
        .map(|t| {
            let loss = model.cast(dtype).unwrap().loss(&inputs, &targets, None).unwrap();
            let grads = loss.backward().unwrap();
            let step = AdamWStep {
                lr: c.lr,
                weight_decay: 0.0,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                bias_corrections: (1.0 - 0.9f64.powi(t), 1.0 - 0.95f64.powi(t)),
                grad_scale: 1.0,
            };
            for (w, (m, v)) in vars.iter().zip(&moments) {
                adamw_step(w.as_tensor(), m, v, grads.get(w.as_tensor()).unwrap(), &step).unwrap();
            }
            f64::from(loss.to_scalar::<f32>().unwrap())
        })
        .collect()
}

#[test]
fn adamw_loss_curves_follow_pytorch_in_f32_and_in_bf16_mixed_precision() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torch_parity.json"))
        .expect("fixture missing; regenerate with scripts/torch_parity.sh");
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    let (v, c) = (&fixture.variants[0], &fixture.curves);
    for (dtype, want, tol) in [(DType::F32, &c.float32, 1e-3), (DType::BF16, &c.bfloat16, 3e-2)] {
        let got = curve(v, c, dtype);
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert!((g - w).abs() < tol * w, "{dtype:?} step {}: loss {g:.5}, PyTorch {w:.5}", i + 1);
        }
        assert!(got[c.steps - 1] < 0.5 * got[0], "{dtype:?}: the loss did not fall: {got:?}");
    }
}

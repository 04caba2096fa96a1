//! The PyTorch parity fixture (`tests/fixtures/torch_parity.json`, made by
//! `scripts/torch_parity.sh`) and the weights both sides compute from one formula, shared by the
//! test binaries that compare with it (the CPU parity checks and the device checks). The fixture is
//! built into the binary, which then runs wherever it is carried.
// Each test binary that includes this uses a part of it.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::Deserialize;
use std::collections::HashMap;
use tsukuru_model::init::param_specs;
use tsukuru_model::kernels::adamw::AdamWStep;
use tsukuru_model::kernels::grad_sink;
use tsukuru_model::{ModelConfig, Transformer};

/// The fixture: model variants with PyTorch's outputs, and training curves.
#[derive(Deserialize)]
pub struct Fixture {
    pub variants: Vec<Variant>,
    pub curves: Curves,
}

/// PyTorch's losses over a few AdamW steps on the first variant's batch.
#[derive(Deserialize)]
pub struct Curves {
    pub steps: usize,
    pub lr: f64,
    pub float32: Vec<f64>,
    pub bfloat16: Vec<f64>,
}

/// A model, a batch and what PyTorch computed for it.
#[derive(Deserialize)]
pub struct Variant {
    pub config: ModelConfig,
    pub batch: usize,
    pub seq: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub loss: f32,
    pub logits: Vec<f32>,
    pub grads: HashMap<String, Vec<f32>>,
}

/// The fixture, parsed.
pub fn fixture() -> Fixture {
    serde_json::from_str(include_str!("../fixtures/torch_parity.json"))
        .expect("a readable fixture; regenerate it with scripts/torch_parity.sh")
}

/// The fixture script's `weight`, on `dev`: parameter number `p`, gains near 1, matrices ±1/√fan_in.
pub fn weights(cfg: &ModelConfig, dev: &Device) -> VarMap {
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
        let t = Tensor::from_vec(values, shape, dev).unwrap();
        data.insert(name, Var::from_tensor(&t).unwrap());
    }
    drop(data);
    map
}

/// One AdamW update over `(weight, first moment, second moment, gradient)` of every parameter.
pub type Update<'a> = &'a dyn Fn(&[(&Tensor, &Tensor, &Tensor, &Tensor)], &AdamWStep);

/// Follows the fixture's curves on `dev`: its AdamW steps (no weight decay, `update` applying each)
/// on the first variant's batch, every step through a cast of the f32 master weights, in f32
/// against PyTorch's f32 losses (within 1e-3) and in bf16 against its bf16 autocast (3e-2); and
/// the loss must halve.
pub fn follow_curves(dev: &Device, update: Update) {
    let fixture = fixture();
    let (v, c) = (&fixture.variants[0], &fixture.curves);
    for (dtype, want, tol) in [(DType::F32, &c.float32, 1e-3), (DType::BF16, &c.bfloat16, 3e-2)] {
        let map = weights(&v.config, dev);
        let model = Transformer::new(&v.config, VarBuilder::from_varmap(&map, DType::F32, dev)).unwrap();
        let inputs = Tensor::from_slice(&v.inputs, (v.batch, v.seq), dev).unwrap();
        let targets = Tensor::from_slice(&v.targets, v.batch * v.seq, dev).unwrap();
        let vars: Vec<Var> = map.data().lock().unwrap().values().cloned().collect();
        let moments: Vec<(Tensor, Tensor)> =
            vars.iter().map(|w| (w.zeros_like().unwrap(), w.zeros_like().unwrap())).collect();
        let mut got = Vec::new();
        for t in 1..=c.steps as i32 {
            // As the trainer takes a step: the weights' gradients collected past candle's walk.
            let (loss, sink) = grad_sink::collect(|| model.cast(dtype).unwrap().loss(&inputs, &targets, None));
            let loss = loss.unwrap();
            let mut grads = loss.backward().unwrap();
            sink.add_to(&mut grads).unwrap();
            let params: Vec<_> = vars
                .iter()
                .zip(&moments)
                .map(|(w, (m, v))| (w.as_tensor(), m, v, grads.get(w.as_tensor()).expect("a gradient per weight")))
                .collect();
            let step = AdamWStep {
                lr: c.lr,
                weight_decay: 0.0,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                bias_corrections: (1.0 - 0.9f64.powi(t), 1.0 - 0.95f64.powi(t)),
                grad_scale: 1.0,
            };
            update(&params, &step);
            got.push(f64::from(loss.to_scalar::<f32>().unwrap()));
        }
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert!((g - w).abs() < tol * w, "{dtype:?} step {}: loss {g:.5}, PyTorch {w:.5}", i + 1);
        }
        assert!(got[c.steps - 1] < 0.5 * got[0], "{dtype:?}: the loss did not fall: {got:?}");
    }
}

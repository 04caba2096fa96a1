//! AdamW's in-place CPU update equals the tensor-op version step after step (its own test binary:
//! it switches the fused kernels process-wide).

use candle_core::{Device, Tensor, Var};
use tsukuru_model::ops::set_fused_enabled;
use tsukuru_train::{AdamW, AdamWConfig};

fn params() -> Vec<(String, Var)> {
    let dev = Device::Cpu;
    let mk = |shape: &[usize], seed: u32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> =
            (0..n).map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
    };
    vec![
        ("model.layers.0.mlp.up_proj.weight".into(), mk(&[37, 53], 1)),
        ("model.norm.weight".into(), mk(&[53], 2)),
        ("model.embed_tokens.weight".into(), mk(&[11, 53], 3)),
    ]
}

#[test]
fn fused_and_tensor_updates_agree_over_many_steps() {
    let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let run = |fused: bool| {
        set_fused_enabled(fused);
        let vars = params();
        let mut opt = AdamW::new(vars.clone(), cfg).unwrap();
        for step in 0..25 {
            // A loss whose gradient changes every step: sum(w² · c) with c depending on the step.
            let loss = vars
                .iter()
                .map(|(_, v)| (v.as_tensor().sqr().unwrap() * (1.0 + step as f64 * 0.1)).unwrap().sum_all().unwrap())
                .reduce(|a, b| (a + b).unwrap())
                .unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, 1e-2, 0.5).unwrap();
        }
        let (_, state) = opt.state();
        (vars.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect::<Vec<_>>(), state)
    };
    let (wa, sa) = run(true);
    let (wb, sb) = run(false);
    let max_abs = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    // Relative to the tensor's largest entry: only rounding may differ.
    let diff = |a: &Tensor, b: &Tensor| max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-6);
    for (a, b) in wa.iter().zip(&wb) {
        assert!(diff(a, b) < 1e-6, "weights differ by {}", diff(a, b));
    }
    for ((na, a), (nb, b)) in sa.iter().zip(&sb) {
        assert_eq!(na, nb);
        assert!(diff(a, b) < 1e-6, "{na} differs by {}", diff(a, b));
    }
    // The update really moved the weights.
    assert!(diff(&wa[0], &params()[0].1.as_tensor().copy().unwrap()) > 1e-3);
}

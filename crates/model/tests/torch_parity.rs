//! tsukuru's transformer against an independent PyTorch implementation on the same weights:
//! logits, loss and every parameter's gradient, through the fused CPU kernels and through the
//! composite ops. The expected values come from `scripts/torch_parity.sh` (PyTorch float32), and
//! both sides compute the weights from one formula, so the fixture holds no weights. Training
//! curves too: a few AdamW steps in f32, and in bf16 mixed precision against PyTorch's autocast.
//! Its own test binary: it switches the kernels process-wide.

mod parity;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use parity::{fixture, follow_curves, weights};
use tsukuru_model::ops::{cross_entropy, set_fused_enabled};
use tsukuru_model::Transformer;

/// Largest |a − b| over the largest |b| (at least 1): a relative error for the whole tensor.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn logits_loss_and_gradients_match_pytorch() {
    let fixture = fixture();
    let dev = Device::Cpu;
    for v in &fixture.variants {
        let cfg = &v.config;
        let map = weights(cfg, &dev);
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

/// The fixture's training curves on the CPU, through the fused CPU AdamW update.
#[test]
fn adamw_loss_curves_follow_pytorch_in_f32_and_in_bf16_mixed_precision() {
    use tsukuru_model::kernels::adamw::adamw_step;
    follow_curves(&Device::Cpu, &|params, step| {
        for &(w, m, v, g) in params {
            adamw_step(w, m, v, g, step).unwrap();
        }
    });
}

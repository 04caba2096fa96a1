//! Packed sequences do not see each other: a sequence's loss and gradients are the same alone in
//! its row and packed behind another one, on the fused and on the composite path; ignored targets
//! drop out of the mean. Its own test binary: it switches the kernels process-wide.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tsukuru_model::init::init_params;
use tsukuru_model::ops::{set_fused_enabled, IGNORE};
use tsukuru_model::{Activation, ModelConfig, Packing, Transformer};

const T: usize = 80;

fn model() -> (VarMap, Transformer) {
    let cfg = ModelConfig {
        vocab_size: 61,
        d_model: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 96,
        activation: Activation::Swiglu,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        qk_norm: false,
        tie_embeddings: false,
        max_seq_len: T,
    };
    let map = init_params(&cfg, 9, DType::F32, &Device::Cpu).unwrap();
    let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap();
    (map, model)
}

/// Loss and every gradient of one row `ids` (inputs `ids[..T]`, targets `ids[1..]`) in which only
/// targets at positions in `scored` count.
fn loss_and_grads(
    map: &VarMap,
    model: &Transformer,
    ids: &[u32],
    scored: std::ops::Range<usize>,
    packing: Option<&Packing>,
) -> (f32, Vec<(String, Vec<f32>)>) {
    let inputs = Tensor::from_slice(&ids[..T], (1, T), &Device::Cpu).unwrap();
    let targets: Vec<u32> = (0..T).map(|i| if scored.contains(&i) { ids[i + 1] } else { IGNORE }).collect();
    let targets = Tensor::from_vec(targets, T, &Device::Cpu).unwrap();
    let loss = model.loss(&inputs, &targets, packing).unwrap();
    let grads = loss.backward().unwrap();
    let mut out: Vec<(String, Vec<f32>)> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(name, v)| {
            let g = grads.get(v.as_tensor()).unwrap();
            (name.clone(), g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    (loss.to_scalar::<f32>().unwrap(), out)
}

fn max_rel_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    a.iter()
        .zip(b)
        .map(|((_, x), (_, y))| {
            let scale = y.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale
        })
        .fold(0.0, f32::max)
}

#[test]
fn a_packed_sequence_is_computed_as_if_alone() {
    let (map, model) = model();
    // Sequence A (30 tokens) then B (41 tokens, so 40 targets), then padding.
    let a: Vec<u32> = (0..30).map(|i| (i * 7 % 61) as u32).collect();
    let b: Vec<u32> = (0..41).map(|i| (i * 13 % 59 + 1) as u32).collect();
    let pad = |mut v: Vec<u32>| {
        v.resize(T + 1, 0);
        v
    };
    let packed_ids = pad([a.clone(), b.clone()].concat());
    let alone_ids = pad(b.clone());
    let packed = Packing::from_lengths(T, &[vec![a.len(), b.len()]]).unwrap();
    let alone = Packing::from_lengths(T, &[vec![b.len()]]).unwrap();
    for fused in [true, false] {
        set_fused_enabled(fused);
        let (l_alone, g_alone) = loss_and_grads(&map, &model, &alone_ids, 0..b.len() - 1, Some(&alone));
        let shifted = a.len()..a.len() + b.len() - 1;
        let (l_packed, g_packed) = loss_and_grads(&map, &model, &packed_ids, shifted.clone(), Some(&packed));
        assert!((l_alone - l_packed).abs() < 1e-5, "fused {fused}: loss {l_alone} alone vs {l_packed} packed");
        let d = max_rel_diff(&g_packed, &g_alone);
        assert!(d < 1e-4, "fused {fused}: gradients differ by {d} (relative)");
        // Control: without the packing B attends to A, and the numbers move.
        let (l_leaky, _) = loss_and_grads(&map, &model, &packed_ids, shifted, None);
        assert!((l_leaky - l_packed).abs() > 1e-3, "fused {fused}: attention across sequences changed nothing");
    }
}

#[test]
fn fused_and_composite_agree_on_packed_rows_with_ignored_targets() {
    let (map, model) = model();
    let ids: Vec<u32> = (0..=T).map(|i| (i * 11 % 61) as u32).collect();
    let packing = Packing::from_lengths(T, &[vec![17, 25, 30]]).unwrap();
    let run = |fused: bool| {
        set_fused_enabled(fused);
        loss_and_grads(&map, &model, &ids, 5..60, Some(&packing))
    };
    let ((la, ga), (lb, gb)) = (run(true), run(false));
    assert!((la - lb).abs() < 1e-5, "loss {la} fused vs {lb} composite");
    let d = max_rel_diff(&ga, &gb);
    assert!(d < 1e-3, "gradients differ by {d} (relative)");
    // Every target ignored: zero loss and zero gradients, not NaN.
    set_fused_enabled(true);
    let (l, g) = loss_and_grads(&map, &model, &ids, 0..0, Some(&packing));
    assert_eq!(l, 0.0);
    assert!(g.iter().all(|(_, v)| v.iter().all(|x| *x == 0.0)));
}

//! The loop on a tiny model: the loss falls, accumulation equals a bigger batch, divergence stops
//! cleanly, bf16 mixed precision follows the f32 curve.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use tsukuru_model::init::init_params;
use tsukuru_model::{ModelConfig, Transformer};
use tsukuru_tokens::format::{ShardWriter, TokenShard};
use tsukuru_tokens::{Batch, Loader, LoaderConfig, TokenDataset};
use tsukuru_train::{AdamW, AdamWConfig, LoopConfig, NextToken, Objective, Precision, Schedule, Trainer};

const VOCAB: usize = 32;

/// Documents that count upward by a per-document stride: learnable from context.
fn dataset(dir: &std::path::Path) -> TokenDataset {
    let path = dir.join("0.bin");
    let mut w = ShardWriter::create(&path, VOCAB, 0).unwrap();
    for d in 0..200u32 {
        let stride = 1 + d % 3;
        let start = 1 + d % 29;
        let doc: Vec<u32> = (0..40).map(|i| 1 + (start + i * stride) % (VOCAB as u32 - 1)).collect();
        w.push(&doc).unwrap();
    }
    w.finish().unwrap();
    TokenDataset::from_shards(vec![TokenShard::open(&path).unwrap()], "test").unwrap()
}

fn model(seed: u64) -> (ModelConfig, VarMap, Transformer) {
    let cfg = ModelConfig { vocab_size: VOCAB, ..ModelConfig::from_depth(1, VOCAB, 64) };
    let map = init_params(&cfg, seed, DType::F32, &Device::Cpu).unwrap();
    let m = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap();
    (cfg, map, m)
}

fn named(map: &VarMap) -> Vec<(String, Var)> {
    map.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn loop_cfg(steps: u64, accum: usize) -> LoopConfig {
    LoopConfig {
        steps,
        lr: 3e-3,
        schedule: Schedule::Cosine { warmup: 5, min_ratio: 0.1 },
        grad_accum: accum,
        clip: 1.0,
        max_bad_steps: 3,
        precision: Default::default(),
    }
}

fn trainer(map: &VarMap, cfg: LoopConfig) -> Trainer {
    let vars = named(map);
    let opt = AdamW::new(vars.clone(), AdamWConfig::default()).unwrap();
    Trainer::new(vars.into_iter().map(|(_, v)| v).collect(), opt, cfg).unwrap()
}

#[test]
fn loss_falls_on_learnable_data() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let (_, map, m) = model(1);
    let mut loader = Loader::new(&ds, LoaderConfig::train(8, 32, 0)).unwrap();
    let mut t = trainer(&map, loop_cfg(60, 1));
    let mut losses = Vec::new();
    for _ in 0..60 {
        let r = t.step(&m, &NextToken, &Device::Cpu, &mut || loader.next_batch()).unwrap();
        assert!(!r.skipped && r.grad_norm > 0.0);
        losses.push(r.loss);
    }
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    let last = losses[55..].iter().sum::<f64>() / 5.0;
    assert!((first - (VOCAB as f64).ln()).abs() < 0.3, "initial loss {first} should be near ln(V)");
    assert!(last < 0.5 * first, "loss did not fall enough: {first:.3} → {last:.3}");
}

#[test]
fn accumulation_equals_one_larger_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let mut loader = Loader::new(&ds, LoaderConfig::train(4, 16, 3)).unwrap();
    let (a, b) = (loader.next_batch(), loader.next_batch());
    let joined = Batch {
        inputs: [a.inputs.clone(), b.inputs.clone()].concat(),
        targets: [a.targets.clone(), b.targets.clone()].concat(),
        batch: 8,
        seq: 16,
        epoch: 0,
        lengths: None,
        reference: None,
    };
    let run = |accum: usize, batches: Vec<Batch>| {
        let (_, map, m) = model(5);
        // Adam's first step is about lr · sign(g): with the default eps a gradient near 1e-8 turns
        // rounding differences of 1e-10 (summation order) into visible update differences. A
        // larger eps keeps the comparison about accumulation, not about rounding.
        let vars = named(&map);
        let opt = AdamW::new(vars.clone(), AdamWConfig { eps: 1e-4, ..AdamWConfig::default() }).unwrap();
        let cfg = LoopConfig { clip: 0.0, ..loop_cfg(10, accum) };
        let mut t = Trainer::new(vars.into_iter().map(|(_, v)| v).collect(), opt, cfg).unwrap();
        let mut it = batches.into_iter();
        t.step(&m, &NextToken, &Device::Cpu, &mut || it.next().unwrap()).unwrap();
        let mut all: Vec<(String, Var)> = named(&map);
        all.sort_by(|x, y| x.0.cmp(&y.0));
        all.iter().flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect::<Vec<_>>()
    };
    let accumulated = run(2, vec![a, b]);
    let single = run(1, vec![joined]);
    let diff = accumulated.iter().zip(&single).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-6, "accumulated and single-batch updates differ by {diff}");
}

struct Exploding;
impl Objective for Exploding {
    fn loss(&self, model: &Transformer, batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
        NextToken.loss(model, batch, device)? * f64::NAN
    }
}

#[test]
fn non_finite_steps_are_skipped_then_stop_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let (_, map, m) = model(2);
    let before: Vec<f32> = map.data().lock().unwrap()["model.norm.weight"].as_tensor().to_vec1().unwrap();
    let mut loader = Loader::new(&ds, LoaderConfig::train(2, 16, 0)).unwrap();
    let mut t = trainer(&map, loop_cfg(10, 1));
    for _ in 0..2 {
        assert!(t.step(&m, &Exploding, &Device::Cpu, &mut || loader.next_batch()).unwrap().skipped);
    }
    let err = t.step(&m, &Exploding, &Device::Cpu, &mut || loader.next_batch()).err().unwrap().to_string();
    assert!(err.contains("3 steps in a row") && err.contains("lower the learning rate"), "{err}");
    assert_eq!(t.skipped(), 3);
    let after: Vec<f32> = map.data().lock().unwrap()["model.norm.weight"].as_tensor().to_vec1().unwrap();
    assert_eq!(before, after, "skipped steps must not touch the weights");
}

#[test]
fn bf16_mixed_precision_tracks_f32_and_keeps_f32_masters() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let run = |precision: Precision| {
        let (_, map, m) = model(4);
        let mut loader = Loader::new(&ds, LoaderConfig::train(8, 32, 0)).unwrap();
        let mut t = trainer(&map, LoopConfig { precision, ..loop_cfg(40, 2) });
        let losses: Vec<f64> =
            (0..40).map(|_| t.step(&m, &NextToken, &Device::Cpu, &mut || loader.next_batch()).unwrap().loss).collect();
        for (name, v) in named(&map) {
            assert_eq!(v.dtype(), DType::F32, "master weight {name}");
        }
        for (name, s) in t.optimizer().state().1 {
            assert_eq!(s.dtype(), DType::F32, "optimiser state {name}");
        }
        losses
    };
    let (full, mixed) = (run(Precision::Float32), run(Precision::Bfloat16));
    // The bf16 run really computed in bf16 (its losses are not the f32 ones) ...
    assert!(full.iter().zip(&mixed).any(|(f, b)| f != b), "bf16 losses equal the f32 ones bit for bit");
    // ... yet follows the same curve: bf16 keeps 8 significant bits, a relative 0.4% per value.
    for (i, (f, b)) in full.iter().zip(&mixed).enumerate() {
        assert!((f - b).abs() < 0.01 * f, "step {}: f32 loss {f:.4}, bf16 {b:.4}", i + 1);
    }
    assert!(
        mixed[35..].iter().sum::<f64>() < 0.5 * mixed[..5].iter().sum::<f64>(),
        "bf16 loss did not fall: {mixed:?}"
    );
}

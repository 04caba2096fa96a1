//! Checkpoints: a resumed run equals the unbroken one exactly; bad checkpoints give clear errors.

use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use std::path::Path;
use tsukuru_model::init::init_params;
use tsukuru_model::{ModelConfig, Transformer};
use tsukuru_tokens::format::{ShardWriter, TokenShard};
use tsukuru_tokens::{Loader, LoaderConfig, TokenDataset};
use tsukuru_train::checkpoint::{self, Meta};
use tsukuru_train::{AdamW, AdamWConfig, LoopConfig, NextToken, Schedule, Trainer};

const VOCAB: usize = 32;

fn dataset(dir: &Path) -> TokenDataset {
    let path = dir.join("0.bin");
    let mut w = ShardWriter::create(&path, VOCAB, 0).unwrap();
    for d in 0..100u32 {
        let doc: Vec<u32> = (0..30).map(|i| 1 + (d + i * (1 + d % 3)) % (VOCAB as u32 - 1)).collect();
        w.push(&doc).unwrap();
    }
    w.finish().unwrap();
    TokenDataset::from_shards(vec![TokenShard::open(&path).unwrap()], "test").unwrap()
}

fn cfg() -> ModelConfig {
    ModelConfig { vocab_size: VOCAB, n_kv_heads: 1, ..ModelConfig::from_depth(2, VOCAB, 32) }
}

const LOADER: LoaderConfig = LoaderConfig { batch_size: 4, seq_len: 16, seed: 9, shuffle: true, buffer: 64 };

fn setup(model_cfg: &ModelConfig, seed: u64) -> (VarMap, Transformer, Trainer) {
    let map = init_params(model_cfg, seed, DType::F32, &Device::Cpu).unwrap();
    let m = Transformer::new(model_cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap();
    let vars: Vec<(String, Var)> = map.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let opt = AdamW::new(vars.clone(), AdamWConfig::default()).unwrap();
    let lc = LoopConfig {
        steps: 20,
        lr: 2e-3,
        schedule: Schedule::Cosine { warmup: 3, min_ratio: 0.1 },
        grad_accum: 2,
        clip: 1.0,
        max_bad_steps: 3,
        precision: Default::default(),
    };
    let t = Trainer::new(vars.into_iter().map(|(_, v)| v).collect(), opt, lc).unwrap();
    (map, m, t)
}

#[test]
fn ten_plus_resume_plus_ten_equals_twenty() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let dev = Device::Cpu;

    let (_, m, mut t) = setup(&cfg(), 4);
    let mut loader = Loader::new(&ds, LOADER).unwrap();
    let straight: Vec<f64> =
        (0..20).map(|_| t.step(&m, &NextToken, &dev, &mut || loader.next_batch()).unwrap().loss).collect();

    let ckpts = tmp.path().join("ckpt");
    let (map, m, mut t) = setup(&cfg(), 4);
    let mut loader = Loader::new(&ds, LOADER).unwrap();
    let mut resumed: Vec<f64> =
        (0..10).map(|_| t.step(&m, &NextToken, &dev, &mut || loader.next_batch()).unwrap().loss).collect();
    let (opt_step, state) = t.optimizer().state();
    let meta = Meta {
        step: t.step_count(),
        opt_step,
        loader: serde_json::to_value(loader.state()).unwrap(),
        model: cfg(),
        val_loss: None,
    };
    checkpoint::save(&ckpts, &map, &state, &meta, None).unwrap();
    drop((map, m, t, loader));

    // A fresh process starts from other weights: loading must overwrite all of them.
    let (map, m, mut t) = setup(&cfg(), 99);
    let (_, latest) = checkpoint::list(&ckpts).unwrap().pop().unwrap();
    let loaded = checkpoint::load(&latest, &map, &cfg(), &dev).unwrap();
    t.restore(loaded.meta.step, loaded.meta.opt_step, &loaded.opt_state).unwrap();
    let mut loader = Loader::resume(&ds, LOADER, serde_json::from_value(loaded.meta.loader.clone()).unwrap()).unwrap();
    resumed.extend((0..10).map(|_| t.step(&m, &NextToken, &dev, &mut || loader.next_batch()).unwrap().loss));
    assert_eq!(straight, resumed, "a resumed run must reproduce the unbroken one exactly");
}

#[test]
fn bad_checkpoints_are_refused_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let (map, _, t) = setup(&cfg(), 4);
    let loader = Loader::new(&ds, LOADER).unwrap();
    let (opt_step, state) = t.optimizer().state();
    let meta =
        Meta { step: 3, opt_step, loader: serde_json::to_value(loader.state()).unwrap(), model: cfg(), val_loss: None };
    let root = tmp.path().join("ckpt");
    let dir = checkpoint::save(&root, &map, &state, &meta, None).unwrap();
    assert!(dir.ends_with("step-0000003"));

    let wider = ModelConfig { d_model: 192, n_heads: 3, ..cfg() };
    let err = checkpoint::load(&dir, &map, &wider, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("d_model: checkpoint 128 ≠ config 192") && err.contains("n_heads"), "{err}");

    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = checkpoint::load(&dir, &map, &cfg(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model.safetensors is unreadable"), "{err}");

    std::fs::write(dir.join("meta.json"), "{ not json").unwrap();
    let err = checkpoint::load(&dir, &map, &cfg(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("meta.json is corrupt"), "{err}");

    for step in [5, 7, 9] {
        checkpoint::save(&root, &map, &state, &Meta { step, ..meta.clone() }, None).unwrap();
    }
    checkpoint::prune(&root, 2, Some(&dir)).unwrap();
    let left: Vec<u64> = checkpoint::list(&root).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(left, vec![3, 7, 9], "keeps the newest two and the protected best");
}

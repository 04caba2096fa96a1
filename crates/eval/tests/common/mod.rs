//! A tiny world, prepared, tokenized, with a tokenizer; and untrained models over its vocabulary.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tsukuru_core::NoProgress;
use tsukuru_model::init::init_params;
use tsukuru_model::{ModelConfig, Transformer};

/// A tiny world, prepared, with a tokenizer and token shards; made once per test binary.
pub fn run() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path().to_path_buf();
        tsukuru_world::generate_into(&r.join("world"), 4, tsukuru_world::Scale::Tiny, false, &NoProgress).unwrap();
        let cfg = tsukuru_data::PrepareConfig { val_fraction: 0.1, ..Default::default() };
        tsukuru_data::prepare(&[r.join("world/corpus.jsonl")], &r.join("data"), &cfg, false, &NoProgress).unwrap();
        let tcfg = tsukuru_tokenizer::TokenizerConfig { vocab_size: 512, ..Default::default() };
        tsukuru_tokenizer::train(&r.join("data"), &r.join("tok"), &tcfg, false, &NoProgress).unwrap();
        tsukuru_tokens::tokenize::tokenize(
            &r.join("data"),
            &r.join("tok"),
            &r.join("tokens"),
            1 << 20,
            false,
            &NoProgress,
        )
        .unwrap();
        (tmp, r)
    })
    .1
}

pub fn model(vocab: usize) -> (ModelConfig, Transformer, candle_nn::VarMap) {
    model_with_context(vocab, 64)
}

/// An untrained one-layer model with a context of `context` tokens.
#[allow(dead_code)] // not every test binary uses it
pub fn model_with_context(vocab: usize, context: usize) -> (ModelConfig, Transformer, candle_nn::VarMap) {
    let cfg = ModelConfig::from_depth(1, vocab, context);
    let map = init_params(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let m = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap();
    (cfg, m, map)
}

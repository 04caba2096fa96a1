//! A byte-level BPE tokenizer trained on a tiny world, made once per test binary.

use std::sync::OnceLock;
use tsukuru_core::NoProgress;
use tsukuru_tokenizer::Tok;

/// A tokenizer trained on a tiny world (made once per test binary).
pub fn tok() -> Tok {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let tmp = DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let world = tmp.path().join("world");
        tsukuru_world::generate_into(&world, 2, tsukuru_world::Scale::Tiny, false, &NoProgress).unwrap();
        let data = tmp.path().join("data");
        let cfg = tsukuru_data::PrepareConfig::default();
        tsukuru_data::prepare(&[world.join("corpus.jsonl")], &data, &cfg, false, &NoProgress).unwrap();
        let tcfg = tsukuru_tokenizer::TokenizerConfig { vocab_size: 400, ..Default::default() };
        tsukuru_tokenizer::train(&data, &tmp.path().join("tok"), &tcfg, false, &NoProgress).unwrap();
        tmp
    });
    Tok::load(&tmp.path().join("tok")).unwrap()
}

//! A tokenizer trained once per test binary on the tiny world's prepared text.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tsukuru_core::NoProgress;
use tsukuru_tokenizer::{train, Tok, TokenizerConfig};

/// Prepared text from the tiny world, made once per test binary.
pub fn prepared() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let world = tmp.path().join("world");
        tsukuru_world::generate_into(&world, 1, tsukuru_world::Scale::Tiny, false, &NoProgress).unwrap();
        let input = world.join("corpus.jsonl");
        let data = tmp.path().join("data");
        let cfg = tsukuru_data::PrepareConfig { val_fraction: 0.1, ..Default::default() };
        tsukuru_data::prepare(&[input], &data, &cfg, false, &NoProgress).unwrap();
        (tmp, data)
    })
    .1
}

/// A 1,024-token tokenizer trained on [`prepared`].
pub fn trained() -> &'static Tok {
    static TOK: OnceLock<(tempfile::TempDir, Tok)> = OnceLock::new();
    &TOK.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("tok");
        let cfg = TokenizerConfig { vocab_size: 1024, ..Default::default() };
        let o = train(prepared(), &out, &cfg, false, &NoProgress).unwrap();
        let bpt = o.manifest.stats["val_bytes_per_token"].as_f64().unwrap();
        assert!(bpt > 2.0, "a 1024-token BPE must compress the world's English well, got {bpt} bytes/token");
        (tmp, Tok::load(&out).unwrap())
    })
    .1
}

//! Fixtures shared by the post-training tests: a tiny world, a tokenizer trained on its corpus, an
//! untrained base checkpoint carrying that tokenizer, a JSONL file of conversations, and a
//! progress sink that records notes and phases and can request a stop at a given step.

#![allow(dead_code)]

use candle_core::{DType, Device};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use tsukuru_core::progress::{Progress, Unit};
use tsukuru_core::{Interrupt, NoProgress};
use tsukuru_model::init::init_params;
use tsukuru_model::ModelConfig;
use tsukuru_train::checkpoint::{self, Meta};

/// A world, a tokenizer trained on its corpus, an untrained base checkpoint with that tokenizer,
/// and a JSONL file of arithmetic conversations; made once per test binary.
pub struct Fixture {
    _tmp: tempfile::TempDir,
    /// The world directory.
    pub world: PathBuf,
    /// The base checkpoint's training directory.
    pub base: PathBuf,
    /// Conversations in `prompt`/`completion` lines.
    pub jsonl: PathBuf,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let world = tmp.path().join("world");
        tsukuru_world::generate_into(&world, 1, tsukuru_world::Scale::Tiny, false, &NoProgress).unwrap();
        let data = tmp.path().join("data");
        let prep = tsukuru_data::PrepareConfig { val_fraction: 0.1, ..Default::default() };
        tsukuru_data::prepare(&[world.join("corpus.jsonl")], &data, &prep, false, &NoProgress).unwrap();
        let tok_dir = tmp.path().join("tok");
        let tok_cfg = tsukuru_tokenizer::TokenizerConfig { vocab_size: 512, ..Default::default() };
        tsukuru_tokenizer::train(&data, &tok_dir, &tok_cfg, false, &NoProgress).unwrap();
        let model = ModelConfig::from_depth(1, 512, 128);
        let map = init_params(&model, 3, DType::F32, &Device::Cpu).unwrap();
        let meta = Meta { step: 0, opt_step: 0, loader: serde_json::Value::Null, model, val_loss: None };
        let base = tmp.path().join("base");
        checkpoint::save(&base, &map, &[], &meta, Some(&tok_dir.join("tokenizer.json"))).unwrap();
        let jsonl = tmp.path().join("sums.jsonl");
        let lines: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    "{{\"prompt\": \"What is {} plus {}?\", \"completion\": \"{}\"}}",
                    i % 10,
                    i / 10,
                    i % 10 + i / 10
                )
            })
            .collect();
        std::fs::write(&jsonl, lines.join("\n")).unwrap();
        Fixture { _tmp: tmp, world, base, jsonl }
    })
}

/// Records notes, and sets an interrupt once a given step is reported.
#[derive(Default)]
pub struct Recorder {
    /// Notes received.
    pub notes: Mutex<Vec<String>>,
    /// Phases started.
    pub phases: Mutex<Vec<String>>,
    /// A status prefix ("step 7 ") at which the interrupt is set.
    pub stop_at: Option<(String, Interrupt)>,
}

impl Progress for Recorder {
    fn phase(&self, name: &str, _: Option<u64>, _: Unit) {
        self.phases.lock().unwrap().push(name.to_string());
    }
    fn advance(&self, _: u64) {}
    fn finish(&self, _: &str) {}
    fn status(&self, status: &str) {
        if let Some((prefix, flag)) = &self.stop_at {
            if status.starts_with(prefix.as_str()) {
                flag.set();
            }
        }
    }
    fn note(&self, message: &str) {
        self.notes.lock().unwrap().push(message.to_string());
    }
}

//! Instruction tuning end to end on the tiny world: the validation loss of every source falls, the
//! mixture follows its ratios (normalised, and said so), an interrupted run resumes to the same
//! weights, and bad input is refused with the reason.

mod common;

use candle_core::Device;
use common::{fixture, Recorder};
use std::path::Path;
use tsukuru_core::{Interrupt, NoProgress};
use tsukuru_train::checkpoint;
use tsukuru_train::pretrain::JobOptions;
use tsukuru_train::sft::{sft, SftConfig, SourceConfig};
use tsukuru_train::Schedule;

fn config(steps: u64) -> SftConfig {
    let f = fixture();
    SftConfig {
        sources: vec![
            SourceConfig {
                name: "world".into(),
                world: Some(f.world.clone()),
                tasks: None,
                jsonl: None,
                ratio: 3.0,
                epochs: None,
            },
            SourceConfig {
                name: "sums".into(),
                world: None,
                tasks: None,
                jsonl: Some(f.jsonl.clone()),
                ratio: 1.0,
                epochs: None,
            },
        ],
        steps,
        batch_size: 4,
        seq_len: 96,
        lr: 3e-3,
        schedule: Schedule::Cosine { warmup: 3, min_ratio: 0.1 },
        eval_every: 5,
        eval_examples: 32,
        checkpoint_every: 100,
        ..SftConfig::default()
    }
}

fn val_losses(dir: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let val = v.get("val_loss")?;
            Some((v["step"].as_u64()?, val["world"].as_f64()?, val["sums"].as_f64()?))
        })
        .collect()
}

#[test]
fn every_source_learns_and_the_mixture_follows_its_ratios() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sft");
    let rec = Recorder::default();
    let o = sft(&fixture().base, &out, &config(40), &Device::Cpu, &JobOptions::default(), &rec).unwrap();
    let notes = rec.notes.lock().unwrap().clone();
    assert!(notes.iter().any(|n| n.contains("sum to 4") && n.contains("world 0.750")), "{notes:?}");
    let vals = val_losses(&out);
    assert_eq!(vals.iter().map(|v| v.0).collect::<Vec<_>>(), vec![5, 10, 15, 20, 25, 30, 35, 40]);
    let (first, last) = (vals[0], vals[vals.len() - 1]);
    assert!(last.1 < 0.8 * first.1, "world validation loss {} → {}", first.1, last.1);
    assert!(last.2 < 0.8 * first.2, "sums validation loss {} → {}", first.2, last.2);
    let sources = o.manifest.stats["sources"].as_array().unwrap();
    let taken = |i: usize| sources[i]["conversations_trained"].as_f64().unwrap();
    let share = taken(0) / (taken(0) + taken(1));
    assert!((share - 0.75).abs() < 0.1, "world's share of the draws {share}");
    // The final checkpoint carries the tokenizer: chat and generation can load it alone.
    let (_, last_ckpt) = checkpoint::list(&out).unwrap().pop().unwrap();
    assert!(last_ckpt.join("tokenizer.json").is_file() && last_ckpt.ends_with("step-0000040"));
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(12);
    let whole = tmp.path().join("whole");
    sft(&fixture().base, &whole, &cfg, &Device::Cpu, &JobOptions::default(), &NoProgress).unwrap();

    let parts = tmp.path().join("parts");
    let interrupt = Interrupt::new();
    let rec = Recorder { stop_at: Some(("step 7 ".into(), interrupt.clone())), ..Default::default() };
    let job = JobOptions { interrupt, ..JobOptions::default() };
    let err = sft(&fixture().base, &parts, &cfg, &Device::Cpu, &job, &rec).unwrap_err();
    assert!(err.to_string().contains("interrupted after step 7"), "{err}");
    let refused = sft(&fixture().base, &parts, &cfg, &Device::Cpu, &JobOptions::default(), &NoProgress).unwrap_err();
    assert!(refused.to_string().contains("--resume"), "{refused}");
    let job = JobOptions { resume: true, ..JobOptions::default() };
    sft(&fixture().base, &parts, &cfg, &Device::Cpu, &job, &NoProgress).unwrap();

    let weights =
        |dir: &Path| std::fs::read(checkpoint::list(dir).unwrap().pop().unwrap().1.join("model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&parts), "resumed weights differ from the unbroken run's");
    assert_eq!(val_losses(&whole), val_losses(&parts));
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |cfg: &SftConfig, base: &Path| {
        sft(base, &tmp.path().join("out"), cfg, &Device::Cpu, &JobOptions::default(), &NoProgress)
            .unwrap_err()
            .to_string()
    };
    let base = &fixture().base;
    let bad_line = tmp.path().join("bad.jsonl");
    std::fs::write(&bad_line, "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}\n").unwrap();
    let mut cfg = config(2);
    cfg.sources[1].jsonl = Some(bad_line);
    let err = run(&cfg, base);
    assert!(err.contains("bad.jsonl:2:") && err.contains("missing `completion`"), "{err}");

    let mut cfg = config(2);
    cfg.sources[0].jsonl = Some(fixture().jsonl.clone());
    assert!(run(&cfg, base).contains("exactly one of `world` and `jsonl`"));

    let mut cfg = config(2);
    cfg.seq_len = 4096;
    assert!(run(&cfg, base).contains("exceeds the base model's context of 128"));

    // A base model whose directory lacks the tokenizer.
    let bare = tmp.path().join("bare");
    let src = checkpoint::list(base).unwrap().pop().unwrap().1;
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), bare.join(f)).unwrap();
    }
    let err = run(&config(2), &bare);
    assert!(err.contains("tokenizer.json"), "{err}");
    // A tokenizer without the chat tokens at their ids (here `<|user|>` renamed).
    let text = std::fs::read_to_string(src.join("tokenizer.json")).unwrap();
    std::fs::write(bare.join("tokenizer.json"), text.replace("<|user|>", "<|usr|>")).unwrap();
    let err = run(&config(2), &bare);
    assert!(err.contains("<|user|>") && err.contains("chat tokens"), "{err}");
}

#[test]
fn lora_trains_adapters_only_saves_a_plain_model_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(10);
    cfg.lora = Some(tsukuru_model::LoraSpec { rank: 4, alpha: 8.0 });
    cfg.lr = 1e-2;
    let whole = tmp.path().join("whole");
    let o = sft(&fixture().base, &whole, &cfg, &Device::Cpu, &JobOptions::default(), &NoProgress).unwrap();
    // One layer of width 64, FFN 192 (depth 1): 4 · ((64 + 64) · 4 + (64 + 192) · 3) adapter values.
    assert_eq!(o.manifest.stats["trained_values"], 4 * (128 * 4 + 256 * 3));
    let vals = val_losses(&whole);
    assert!(vals.last().unwrap().1 < vals[0].1, "world validation loss did not fall: {vals:?}");
    // The checkpoint is a plain model (merged weights) beside the adapters it resumes from.
    let (_, last) = checkpoint::list(&whole).unwrap().pop().unwrap();
    assert!(last.join(checkpoint::ADAPTER_FILE).is_file());
    let merged = tsukuru_model::pretrained::load(&last, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(!merged.adapted());
    let base =
        checkpoint::read_tensors(&checkpoint::list(&fixture().base).unwrap()[0].1, "model.safetensors", &Device::Cpu);
    let tuned = checkpoint::read_tensors(&last, "model.safetensors", &Device::Cpu).unwrap();
    let base = base.unwrap();
    let changed = |name: &str| {
        let d = (&base[name] - &tuned[name]).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        d > 0.0
    };
    assert!(changed("model.layers.0.self_attn.q_proj.weight"), "the adapters were not merged");
    assert!(!changed("model.embed_tokens.weight") && !changed("model.norm.weight"), "frozen weights moved");

    let parts = tmp.path().join("parts");
    let interrupt = Interrupt::new();
    let rec = Recorder { stop_at: Some(("step 4 ".into(), interrupt.clone())), ..Default::default() };
    let job = JobOptions { interrupt, ..JobOptions::default() };
    assert!(sft(&fixture().base, &parts, &cfg, &Device::Cpu, &job, &rec).is_err());
    let job = JobOptions { resume: true, ..JobOptions::default() };
    sft(&fixture().base, &parts, &cfg, &Device::Cpu, &job, &NoProgress).unwrap();
    let weights =
        |dir: &Path| std::fs::read(checkpoint::list(dir).unwrap().pop().unwrap().1.join("model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&parts), "resumed LoRA run differs from the unbroken one");
}

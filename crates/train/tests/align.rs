//! Alignment end to end on the tiny world's pairs: held-out pairs get ranked (DPO and IPO), an
//! interrupted run resumes to the same weights without recomputing the reference, and bad input
//! is refused with the reason.

mod common;

use candle_core::Device;
use common::{fixture, Recorder};
use std::path::Path;
use tsukuru_core::{Interrupt, NoProgress};
use tsukuru_train::align::{align, AlignConfig};
use tsukuru_train::checkpoint;
use tsukuru_train::preference::PreferenceLoss;
use tsukuru_train::pretrain::JobOptions;
use tsukuru_train::Schedule;

fn config(steps: u64, loss: PreferenceLoss) -> AlignConfig {
    AlignConfig {
        loss,
        steps,
        batch_size: 8,
        lr: 3e-3,
        schedule: Schedule::Cosine { warmup: 2, min_ratio: 0.1 },
        eval_every: 10,
        eval_pairs: 64,
        ..AlignConfig::default()
    }
}

/// Every fifth of the world's pairs (the reference pass over all of them would dominate the tests).
fn pairs() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let text = std::fs::read_to_string(fixture().world.join("pairs.jsonl")).unwrap();
        let kept: Vec<&str> = text.lines().step_by(5).collect();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pairs.jsonl");
        std::fs::write(&path, kept.join("\n")).unwrap();
        (tmp, path)
    })
    .1
    .clone()
}

#[test]
fn held_out_pairs_get_ranked_by_dpo_and_ipo() {
    for loss in [PreferenceLoss::Dpo, PreferenceLoss::Ipo] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("align");
        let o = align(
            &fixture().base,
            &pairs(),
            &out,
            &config(30, loss),
            &Device::Cpu,
            &JobOptions::default(),
            &NoProgress,
        )
        .unwrap();
        let after = &o.manifest.stats["after"];
        // Before any step the policy is the reference (every margin 0, no pair ranked right).
        let first = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let step1: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        assert!(step1["margin"].as_f64().unwrap().abs() < 1e-5, "{loss:?}: first batch margin {step1}");
        for group in ["in_domain", "out_of_domain"] {
            let (acc, margin) = (after[group]["accuracy"].as_f64().unwrap(), after[group]["margin"].as_f64().unwrap());
            assert!(acc > 0.6 && margin > 0.0, "{loss:?} {group}: accuracy {acc}, margin {margin}");
        }
        assert!(out.join("reference.json").is_file());
        let (_, last) = checkpoint::list(&out).unwrap().pop().unwrap();
        assert!(last.ends_with("step-0000030") && last.join("tokenizer.json").is_file());
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights_with_the_stored_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(8, PreferenceLoss::Dpo);
    let whole = tmp.path().join("whole");
    align(&fixture().base, &pairs(), &whole, &cfg, &Device::Cpu, &JobOptions::default(), &NoProgress).unwrap();

    let parts = tmp.path().join("parts");
    let interrupt = Interrupt::new();
    let rec = Recorder { stop_at: Some(("step 3 ".into(), interrupt.clone())), ..Default::default() };
    let job = JobOptions { interrupt, ..JobOptions::default() };
    let err = align(&fixture().base, &pairs(), &parts, &cfg, &Device::Cpu, &job, &rec).unwrap_err();
    assert!(err.to_string().contains("interrupted after step 3"), "{err}");
    let rec = Recorder::default();
    let job = JobOptions { resume: true, ..JobOptions::default() };
    align(&fixture().base, &pairs(), &parts, &cfg, &Device::Cpu, &job, &rec).unwrap();
    assert!(!rec.phases.lock().unwrap().contains(&"reference".to_string()), "the reference was recomputed");

    let weights =
        |dir: &Path| std::fs::read(checkpoint::list(dir).unwrap().pop().unwrap().1.join("model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&parts), "resumed weights differ from the unbroken run's");
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |cfg: &AlignConfig, pairs: &Path| {
        let out = tmp.path().join("out");
        align(&fixture().base, pairs, &out, cfg, &Device::Cpu, &JobOptions::default(), &NoProgress)
            .unwrap_err()
            .to_string()
    };
    let bad = tmp.path().join("mine.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": \"b\"}\n",
    )
    .unwrap();
    let err = run(&config(2, PreferenceLoss::Dpo), &bad);
    assert!(err.contains("mine.jsonl:2:") && err.contains("missing `rejected`"), "{err}");
    let cfg = AlignConfig { beta: 0.0, ..config(2, PreferenceLoss::Dpo) };
    assert!(run(&cfg, &pairs()).contains("beta must be positive"));
    assert!(run(&config(2, PreferenceLoss::Dpo), &tmp.path().join("absent.jsonl")).contains("absent.jsonl"));
}

//! The world's instruction tasks put to each stage's model (base, sft, align): how often the greedy
//! reply is right, in-domain and out-of-domain (separate columns, never averaged together), and
//! how often a question about something that does not exist is answered instead of declined.
//!
//! The items are the `world/<task>` generation items of the world's validation split
//! ([`crate::suite`], never `train`), the same for every model so the columns compare, asked and
//! scored by the harness ([`crate::harness`]); ROUGE-L counts as its F1. Invented-name questions
//! (`world/unknown`) are the hallucination measure and stay out of the accuracy.

use crate::harness::{run_suite, HarnessConfig, Record};
use crate::items::Domain;
use crate::output::{self, Claim};
use crate::suite::{Suite, SuiteOptions};
use crate::{EvalError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, Progress};
use tsukuru_tokenizer::Tok;
use tsukuru_world::tasks::Split;

/// Artifact name of a task evaluation.
pub const ARTIFACT: &str = "task-eval";
/// Format version of its directory.
pub const FORMAT_VERSION: u32 = 2;

/// The task of invented-name questions.
const UNKNOWN: &str = "world/unknown";

/// Settings of the task evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskEvalConfig {
    /// The split asked (`validation` or `test`; never `train`).
    pub split: Split,
    /// Examples per task and domain, at most.
    pub per_group: usize,
    /// Longest reply.
    pub max_new_tokens: usize,
    /// Seed of the sample of examples.
    pub seed: u64,
}

impl Default for TaskEvalConfig {
    fn default() -> Self {
        Self { split: Split::Validation, per_group: 40, max_new_tokens: 64, seed: 0 }
    }
}

/// A model's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScores {
    /// Mean score over in-domain examples (invented names excluded).
    pub in_domain: Option<f64>,
    /// Examples behind `in_domain`.
    pub n_in: usize,
    /// Mean score over out-of-domain examples (invented names excluded).
    pub out_of_domain: Option<f64>,
    /// Examples behind `out_of_domain`.
    pub n_out: usize,
    /// Share of questions about invented names answered instead of declined.
    pub hallucination_rate: Option<f64>,
    /// Invented-name questions asked.
    pub n_unknown: usize,
    /// Mean score per task (without the `world/` prefix): (in-domain, out-of-domain).
    pub by_task: BTreeMap<String, (Option<f64>, Option<f64>)>,
}

fn mean<'r>(records: impl Iterator<Item = &'r Record>) -> (Option<f64>, usize) {
    let (sum, n) = records.fold((0.0, 0), |(s, n), r| (s + r.score, n + 1));
    ((n > 0).then(|| sum / n as f64), n)
}

impl TaskScores {
    /// Scores of a set of records.
    pub fn of(records: &[Record]) -> Self {
        let scored = |d: Domain| records.iter().filter(move |r| r.domain == d && r.task != UNKNOWN);
        let (in_domain, n_in) = mean(scored(Domain::In));
        let (out_of_domain, n_out) = mean(scored(Domain::Out));
        let (refused, n_unknown) = mean(records.iter().filter(|r| r.task == UNKNOWN));
        let mut by_task = BTreeMap::new();
        for r in records {
            let of = |d: Domain| mean(records.iter().filter(|x| x.task == r.task && x.domain == d)).0;
            by_task
                .entry(r.task.trim_start_matches("world/").to_string())
                .or_insert_with(|| (of(Domain::In), of(Domain::Out)));
        }
        Self { in_domain, n_in, out_of_domain, n_out, hallucination_rate: refused.map(|r| 1.0 - r), n_unknown, by_task }
    }
}

/// The world's instruction tasks on the configured split: its generation items only.
pub fn suite(world: &Path, cfg: &TaskEvalConfig) -> Result<Suite> {
    let source = match cfg.split {
        Split::Validation => "world-val",
        Split::Test => "world",
        Split::Train => {
            return Err(EvalError::Config(
                "evaluate on the validation or test split, never on training examples".into(),
            ))
        }
    };
    let opts = SuiteOptions { per_group: cfg.per_group, seed: cfg.seed, ..SuiteOptions::default() };
    Ok(Suite::load(&format!("{source}:{}", world.display()), &opts)?.generation_only())
}

/// Evaluates each `(name, model directory)` on the world's tasks into `out`: `NAME.jsonl` per model
/// (one harness record per example) and `summary.json` (every model's [`TaskScores`], in the given
/// order). Skips when the same models, world and settings are complete there.
pub fn evaluate_stages(
    models: &[(&str, &Path)],
    world: &Path,
    out: &Path,
    cfg: &TaskEvalConfig,
    force: bool,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let suite = suite(world, cfg)?;
    // Each model's checkpoint, resolved once: the one fingerprinted is the one evaluated.
    let resolved: Vec<(&str, std::path::PathBuf)> = models
        .iter()
        .map(|(name, dir)| Ok((*name, tsukuru_model::pretrained::resolve(dir)?)))
        .collect::<Result<_>>()?;
    let mut weights = Vec::new();
    for (name, dir) in &resolved {
        weights.push((name.to_string(), FileEntry::of(dir, "model.safetensors")?.xxh3));
    }
    let params = serde_json::json!({ "config": cfg, "suite": suite.fingerprint(), "models": weights });
    let manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match output::claim::<serde_json::Value>(out, &manifest, force)? {
        Claim::Done(outcome, _) => return Ok(outcome),
        Claim::Write(dir) => dir,
    };
    let hc = HarnessConfig { max_new_tokens: cfg.max_new_tokens, ..HarnessConfig::default() };
    let mut stages = Vec::new();
    let mut files = Vec::new();
    for (name, dir_m) in &resolved {
        let model = tsukuru_model::pretrained::load(dir_m, candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let tok = Tok::from_file(&dir_m.join("tokenizer.json"))?;
        progress.phase(&format!("tasks {name}"), Some(suite.len() as u64), Unit::Items);
        let records = run_suite(&model, &tok, &suite, None, &hc, progress)?;
        let scores = TaskScores::of(&records);
        progress.finish(&format!(
            "{name}: in-domain {}, out-of-domain {}, hallucination {}",
            show(scores.in_domain),
            show(scores.out_of_domain),
            show(scores.hallucination_rate)
        ));
        files.push((format!("{name}.jsonl"), output::jsonl(&records)));
        stages.push(serde_json::json!({ "name": name, "scores": scores }));
    }
    let summary = serde_json::json!({ "split": cfg.split, "examples": suite.len(), "stages": stages });
    files.push(("summary.json".into(), serde_json::to_vec_pretty(&summary).expect("summary serialises")));
    output::finish(dir, manifest, &files, &summary)
}

fn show(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{:.1}%", 100.0 * v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(task: &str, domain: Domain, score: f64) -> Record {
        let s = String::new();
        Record {
            task: format!("world/{task}"),
            id: s.clone(),
            kind: "generate".into(),
            domain,
            shots: 0,
            prompt: s.clone(),
            target: s.clone(),
            output: s,
            score,
            metrics: BTreeMap::new(),
            bytes: None,
            truncated: false,
            contamination: None,
        }
    }

    #[test]
    fn columns_stay_apart_and_invented_names_measure_hallucination() {
        let records = [
            record("fact", Domain::In, 1.0),
            record("fact", Domain::In, 0.0),
            record("summary", Domain::In, 0.5),
            record("reverse", Domain::Out, 0.0),
            record("unknown", Domain::In, 1.0),
            record("unknown", Domain::Out, 0.0),
            record("unknown", Domain::Out, 0.0),
        ];
        let s = TaskScores::of(&records);
        assert_eq!((s.in_domain, s.n_in), (Some(0.5), 3));
        assert_eq!((s.out_of_domain, s.n_out), (Some(0.0), 1));
        assert_eq!(s.n_unknown, 3);
        assert!((s.hallucination_rate.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.by_task["fact"], (Some(0.5), None));
        assert_eq!(s.by_task["reverse"], (None, Some(0.0)));
    }

    #[test]
    fn the_suite_is_the_split_s_generation_items_and_never_training() {
        let dir = tempfile::tempdir().unwrap();
        tsukuru_world::generate_into(dir.path(), 2, tsukuru_world::Scale::Tiny, false, &tsukuru_core::NoProgress)
            .unwrap();
        let cfg = TaskEvalConfig { per_group: 4, ..TaskEvalConfig::default() };
        let s = suite(dir.path(), &cfg).unwrap();
        assert!(s.tasks.len() >= 8 && s.tasks.iter().all(|t| t.name != "world/facts"));
        assert!(s.tasks.iter().flat_map(|t| &t.items).all(|i| i.kind() == "generate"));
        assert_eq!(suite(dir.path(), &cfg).unwrap(), s, "the sample is seeded");
        let train = TaskEvalConfig { split: Split::Train, ..cfg };
        assert!(suite(dir.path(), &train).unwrap_err().to_string().contains("never on training"));
    }
}

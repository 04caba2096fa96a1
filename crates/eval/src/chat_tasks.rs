//! The world's instruction tasks asked in the chat format: how often a model's greedy reply is
//! right, in-domain and out-of-domain (separate columns, never averaged together), and how often it
//! answers a question about something that does not exist instead of saying it does not know.
//!
//! The same examples (a seeded sample of at most `per_group` per task and domain from one split,
//! never `train`) are put to every model of a stage list — base, sft, align — so the columns
//! compare. Replies are scored by each example's [`Scoring`] ([`crate::scoring`]); ROUGE-L counts
//! as its F1. Invented-name questions are the hallucination measure and stay out of the accuracy.

use crate::harness::{greedy_reply, keep_end, STOP};
use crate::scoring::score;
use crate::{EvalError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use tsukuru_core::error::IoContext;
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, OutputDir, Prepared, Progress, Rng};
use tsukuru_model::Transformer;
use tsukuru_tokenizer::chat::{render_prompt, Message, Role};
use tsukuru_tokenizer::Tok;
use tsukuru_world::tasks::{Example, Split, TaskKind};

/// Artifact name of a task evaluation.
pub const ARTIFACT: &str = "task-eval";
/// Format version of its directory.
pub const FORMAT_VERSION: u32 = 1;

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

/// One asked example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Example id in the world's `tasks.jsonl`.
    pub id: String,
    /// Its task.
    pub task: TaskKind,
    /// In-domain for instruction tuning.
    pub in_domain: bool,
    /// The user's message.
    pub prompt: String,
    /// The reference reply.
    pub reference: String,
    /// The model's greedy reply.
    pub reply: String,
    /// Its score in [0, 1].
    pub score: f64,
}

/// A model's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScores {
    /// Mean score over in-domain examples (invented names excluded), and their count.
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
    /// Mean score per task: (in-domain, out-of-domain).
    pub by_task: BTreeMap<String, (Option<f64>, Option<f64>)>,
}

fn mean(xs: impl Iterator<Item = f64>) -> (Option<f64>, usize) {
    let (sum, n) = xs.fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    ((n > 0).then(|| sum / n as f64), n)
}

impl TaskScores {
    /// Scores of a set of records.
    pub fn of(records: &[TaskRecord]) -> Self {
        let scored = |ind: bool| records.iter().filter(move |r| r.in_domain == ind && r.task != TaskKind::Unknown);
        let (in_domain, n_in) = mean(scored(true).map(|r| r.score));
        let (out_of_domain, n_out) = mean(scored(false).map(|r| r.score));
        let (refused, n_unknown) = mean(records.iter().filter(|r| r.task == TaskKind::Unknown).map(|r| r.score));
        let mut by_task = BTreeMap::new();
        for task in TaskKind::ALL {
            let of =
                |ind: bool| mean(records.iter().filter(|r| r.task == task && r.in_domain == ind).map(|r| r.score)).0;
            let pair = (of(true), of(false));
            if pair != (None, None) {
                by_task.insert(task.name().to_string(), pair);
            }
        }
        Self { in_domain, n_in, out_of_domain, n_out, hallucination_rate: refused.map(|r| 1.0 - r), n_unknown, by_task }
    }
}

/// The examples asked: up to `per_group` per (task, domain) of the split, a seeded sample.
pub fn select<'e>(examples: &'e [Example], cfg: &TaskEvalConfig) -> Result<Vec<&'e Example>> {
    if cfg.split == Split::Train {
        return Err(EvalError::Config("evaluate on the validation or test split, never on training examples".into()));
    }
    let mut groups: BTreeMap<(TaskKind, bool), Vec<&Example>> = BTreeMap::new();
    for e in examples.iter().filter(|e| e.split == cfg.split) {
        groups.entry((e.task, e.in_domain())).or_default().push(e);
    }
    let mut out = Vec::new();
    for ((task, ind), mut group) in groups {
        Rng::stream(cfg.seed, &format!("task-eval/{}/{ind}", task.name())).shuffle(&mut group);
        out.extend(group.into_iter().take(cfg.per_group));
    }
    Ok(out)
}

/// Asks `model` every example (greedy decoding through the chat template) and scores the replies.
pub fn ask(
    model: &Transformer,
    tok: &Tok,
    examples: &[&Example],
    cfg: &TaskEvalConfig,
    progress: &dyn Progress,
) -> Result<Vec<TaskRecord>> {
    let context = model.config().max_seq_len;
    let mut out = Vec::with_capacity(examples.len());
    for e in examples {
        let mut prompt = render_prompt(tok, &[Message::new(Role::User, &e.prompt)])?;
        // A prompt longer than the context keeps its end (the question), leaving room to reply.
        keep_end(&mut prompt, context - cfg.max_new_tokens.min(context / 2));
        let reply = greedy_reply(model, tok, &prompt, cfg.max_new_tokens, &STOP)?;
        let s = score(e.scoring, &reply, &e.answer, &e.response);
        out.push(TaskRecord {
            id: e.id.clone(),
            task: e.task,
            in_domain: e.in_domain(),
            prompt: e.prompt.clone(),
            reference: e.response.clone(),
            reply,
            score: s,
        });
        progress.advance(1);
    }
    Ok(out)
}

/// Evaluates each `(name, model directory)` on the world's tasks into `out`: `NAME.jsonl` per model
/// (one record per example) and `summary.json` (every model's [`TaskScores`], in the given order).
/// Skips when the same models, world and settings are complete there.
pub fn evaluate_stages(
    models: &[(&str, &Path)],
    world: &Path,
    out: &Path,
    cfg: &TaskEvalConfig,
    force: bool,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let tasks_file = FileEntry::of(world, "tasks.jsonl")?;
    // Each model's checkpoint, resolved once: the one fingerprinted is the one evaluated.
    let resolved: Vec<(&str, std::path::PathBuf)> = models
        .iter()
        .map(|(name, dir)| Ok((*name, tsukuru_model::pretrained::resolve(dir)?)))
        .collect::<Result<_>>()?;
    let mut weights = Vec::new();
    for (name, dir) in &resolved {
        weights.push((name.to_string(), FileEntry::of(dir, "model.safetensors")?.xxh3));
    }
    let params = serde_json::json!({ "config": cfg, "tasks": tasks_file.xxh3, "models": weights });
    let mut manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match OutputDir::prepare(out, ARTIFACT, &manifest.fingerprint, force)? {
        Prepared::Done(manifest) => return Ok(Outcome { manifest, skipped: true }),
        Prepared::Fresh(dir) | Prepared::Resume(dir) => dir,
    };
    let examples: Vec<Example> = tsukuru_world::read_jsonl(&world.join("tasks.jsonl"))?;
    let chosen = select(&examples, cfg)?;
    let mut summary = Vec::new();
    let mut files = Vec::new();
    for (name, dir_m) in &resolved {
        let model = tsukuru_model::pretrained::load(dir_m, candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let tok = Tok::from_file(&dir_m.join("tokenizer.json"))?;
        progress.phase(&format!("tasks {name}"), Some(chosen.len() as u64), Unit::Items);
        let records = ask(&model, &tok, &chosen, cfg, progress)?;
        let scores = TaskScores::of(&records);
        progress.finish(&format!(
            "{name}: in-domain {}, out-of-domain {}, hallucination {}",
            show(scores.in_domain),
            show(scores.out_of_domain),
            show(scores.hallucination_rate)
        ));
        let file = format!("{name}.jsonl");
        let path = dir.path().join(&file);
        let mut f = tsukuru_core::atomic::AtomicFile::create(&path)?;
        for r in &records {
            writeln!(f, "{}", serde_json::to_string(r).expect("records serialise")).at("writing", &path)?;
        }
        f.commit()?;
        files.push(file);
        summary.push(serde_json::json!({ "name": name, "scores": scores }));
    }
    let summary = serde_json::json!({ "split": cfg.split, "examples": chosen.len(), "stages": summary });
    let text = serde_json::to_string_pretty(&summary).expect("summary serialises");
    tsukuru_core::atomic::write_atomic(dir.path().join("summary.json"), text.as_bytes())?;
    files.push("summary.json".into());
    manifest.files = files.iter().map(|f| FileEntry::of(dir.path(), f)).collect::<std::result::Result<_, _>>()?;
    manifest.stats = summary;
    dir.finish(&manifest)?;
    Ok(Outcome { manifest, skipped: false })
}

fn show(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{:.1}%", 100.0 * v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(task: TaskKind, in_domain: bool, score: f64) -> TaskRecord {
        let s = String::new();
        TaskRecord { id: s.clone(), task, in_domain, prompt: s.clone(), reference: s.clone(), reply: s, score }
    }

    #[test]
    fn columns_stay_apart_and_invented_names_measure_hallucination() {
        let records = [
            record(TaskKind::Fact, true, 1.0),
            record(TaskKind::Fact, true, 0.0),
            record(TaskKind::Summary, true, 0.5),
            record(TaskKind::Reverse, false, 0.0),
            record(TaskKind::Unknown, true, 1.0),
            record(TaskKind::Unknown, false, 0.0),
            record(TaskKind::Unknown, false, 0.0),
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
    fn selection_samples_each_group_and_refuses_the_train_split() {
        let world = tsukuru_world::World::generate(2, tsukuru_world::Scale::Tiny);
        let cfg = TaskEvalConfig { per_group: 4, ..TaskEvalConfig::default() };
        let chosen = select(&world.tasks, &cfg).unwrap();
        assert!(chosen.iter().all(|e| e.split == Split::Validation));
        let mut groups: BTreeMap<(TaskKind, bool), usize> = BTreeMap::new();
        for e in &chosen {
            *groups.entry((e.task, e.in_domain())).or_default() += 1;
        }
        assert!(groups.values().all(|&n| n <= 4) && groups.len() >= 15, "{groups:?}");
        assert_eq!(select(&world.tasks, &cfg).unwrap(), chosen, "the sample is seeded");
        let train = TaskEvalConfig { split: Split::Train, ..cfg };
        assert!(select(&world.tasks, &train).unwrap_err().to_string().contains("never on training"));
    }
}

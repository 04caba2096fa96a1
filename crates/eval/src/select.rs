//! `tsukuru select`: choose the checkpoint to ship by a metric on held-out validation items.
//!
//! Candidates are the saved checkpoints (`step-NNNNNNN/`) of the run's training stages. Each is
//! evaluated on the same validation items — by default the world's validation split, never its
//! test split and never training data (a SPEC naming the test split or prepared training text is
//! refused) — and the best by the metric is chosen. The decision is written with its reasons: the
//! chosen value with its 95% interval, and the paired difference to each other candidate on the
//! same items, so a win within noise is called one.
//!
//! Metrics: `in_domain` / `out_of_domain` (the mean main score of every choice and generation
//! item of that domain: `acc`, or the generation rule's score), or `TASK/METRIC` (one task's
//! metric over all its items, e.g. `world/facts/acc_norm`; `bits_per_byte` is lower-better).

use crate::harness::{run_suite, HarnessConfig, Record};
use crate::items::Domain;
use crate::output::{self, Claim};
use crate::suite::{parse_spec, Source, Suite};
use crate::{EvalError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, Progress};
use tsukuru_world::tasks::Split;

/// Artifact name of a selection.
pub const ARTIFACT: &str = "selection";
/// Format version of its directory.
pub const FORMAT_VERSION: u32 = 1;

/// What a checkpoint is judged by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    /// Mean main score of the choice and generation items of one domain.
    Domain(Domain),
    /// One metric of one task, over all its items.
    Task {
        /// The task.
        task: String,
        /// Its metric.
        metric: String,
    },
}

impl Metric {
    /// Parses `in_domain`, `out_of_domain` or `TASK/METRIC`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "in_domain" => Ok(Metric::Domain(Domain::In)),
            "out_of_domain" => Ok(Metric::Domain(Domain::Out)),
            _ => match name.rsplit_once('/') {
                Some((task, metric)) if !task.is_empty() && !metric.is_empty() => {
                    Ok(Metric::Task { task: task.into(), metric: metric.into() })
                }
                _ => Err(EvalError::Config(format!(
                    "unknown metric `{name}`: use in_domain, out_of_domain or TASK/METRIC (e.g. world/facts/acc)"
                ))),
            },
        }
    }

    /// Its name as given.
    pub fn name(&self) -> String {
        match self {
            Metric::Domain(Domain::In) => "in_domain".into(),
            Metric::Domain(Domain::Out) => "out_of_domain".into(),
            Metric::Task { task, metric } => format!("{task}/{metric}"),
        }
    }

    /// Whether smaller values are better (bits per byte).
    pub fn lower_is_better(&self) -> bool {
        matches!(self, Metric::Task { metric, .. } if metric == "bits_per_byte")
    }

    /// The metric's value on each item that has it, keyed by (task, id).
    pub fn per_item(&self, records: &[Record]) -> ItemValues {
        records
            .iter()
            .filter_map(|r| {
                let v = match self {
                    Metric::Domain(d) => (r.domain == *d && r.kind != "text").then_some(r.score),
                    Metric::Task { task, metric } => {
                        (r.task == *task).then(|| r.metrics.get(metric).copied()).flatten()
                    }
                }?;
                Some(((r.task.clone(), r.id.clone()), v))
            })
            .collect()
    }
}

/// A metric's value per item, keyed by (task, id).
pub type ItemValues = BTreeMap<(String, String), f64>;

/// A checkpoint of a training stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The stage (`sft`, `align`, …).
    pub stage: String,
    /// Its step.
    pub step: u64,
    /// Its directory.
    pub path: PathBuf,
}

/// The saved checkpoints of the stage directory `dir`, in step order.
pub fn checkpoints(stage: &str, dir: &Path) -> Result<Vec<Candidate>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| EvalError::Config(format!("cannot list the checkpoints in {}: {e}", dir.display())))?;
    let mut out: Vec<Candidate> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path().join("model.safetensors").exists().then(|| Candidate { stage: stage.into(), step, path: e.path() })
        })
        .collect();
    out.sort_by_key(|c| c.step);
    Ok(out)
}

/// A candidate's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The checkpoint.
    pub candidate: Candidate,
    /// The metric's mean.
    pub value: f64,
    /// Items behind it.
    pub n: usize,
    /// Half-width of its 95% interval (normal approximation).
    pub margin: f64,
}

/// The decision (`selection.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// The metric.
    pub metric: String,
    /// The validation items, as given.
    pub tasks: String,
    /// Every candidate, in the order evaluated.
    pub candidates: Vec<Scored>,
    /// Index of the chosen one.
    pub chosen: usize,
    /// Why, in sentences.
    pub reasons: Vec<String>,
}

impl Selection {
    /// The chosen checkpoint's directory.
    pub fn chosen_path(&self) -> &Path {
        &self.candidates[self.chosen].candidate.path
    }

    /// The decision as Markdown: a table of candidates and the reasons.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "Checkpoints scored by `{}` on {} (validation items only).\n\n| stage | step | {} | n |   |\n|---|---|---|---|---|\n",
            self.metric, self.tasks, self.metric
        );
        for (i, s) in self.candidates.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {} | {:.4} ± {:.4} | {} | {} |\n",
                s.candidate.stage,
                s.candidate.step,
                s.value,
                s.margin,
                s.n,
                if i == self.chosen { "**chosen**" } else { "" }
            ));
        }
        out.push('\n');
        for r in &self.reasons {
            out.push_str(&format!("- {r}\n"));
        }
        out
    }
}

fn mean_and_margin(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, 1.96 * (var / n).sqrt())
}

/// Refuses SPEC entries that are not validation data: the world's test split, prepared text.
pub fn check_validation_spec(spec: &str) -> Result<()> {
    for source in parse_spec(spec)? {
        match source {
            Source::World(dir, Split::Test) => {
                return Err(EvalError::Config(format!(
                    "selection must not look at the test split: use world-val:{} instead of world:{}",
                    dir.display(),
                    dir.display()
                )))
            }
            Source::Docs(dir) => {
                return Err(EvalError::Config(format!(
                    "docs:{} holds training documents; select on held-out validation items",
                    dir.display()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The decision from each candidate's per-item values (all on the same items).
pub fn decide(metric: &Metric, tasks: &str, scored: Vec<(Candidate, ItemValues)>) -> Result<Selection> {
    let mut candidates = Vec::new();
    for (c, values) in &scored {
        if values.is_empty() {
            return Err(EvalError::Config(format!(
                "no validation item has the metric `{}`; check --metric against the tasks' summary",
                metric.name()
            )));
        }
        let v: Vec<f64> = values.values().copied().collect();
        let (value, margin) = mean_and_margin(&v);
        candidates.push(Scored { candidate: c.clone(), value, n: v.len(), margin });
    }
    let better = |a: f64, b: f64| if metric.lower_is_better() { a < b } else { a > b };
    // Ties go to the earlier candidate: fewer steps of training for the same score.
    let chosen =
        (0..candidates.len())
            .fold(0, |best, i| if better(candidates[i].value, candidates[best].value) { i } else { best });
    let c = &candidates[chosen];
    let mut reasons = vec![format!(
        "{} step {} has the {} {} ({:.4} ± {:.4}, n = {}) of {} checkpoints.",
        c.candidate.stage,
        c.candidate.step,
        if metric.lower_is_better() { "lowest" } else { "highest" },
        metric.name(),
        c.value,
        c.margin,
        c.n,
        candidates.len()
    )];
    for (i, other) in candidates.iter().enumerate().filter(|(i, _)| *i != chosen) {
        // Paired on the same items: the difference's own interval.
        let diffs: Vec<f64> = scored[chosen].1.iter().filter_map(|(k, v)| Some(v - scored[i].1.get(k)?)).collect();
        let (d, m) = mean_and_margin(&diffs);
        let verdict =
            if d.abs() > m { "a real difference" } else { "within noise: another seed or sample could reverse it" };
        reasons.push(format!(
            "Against {} step {} ({:.4}): paired difference {:+.4} ± {:.4} over {} items, {verdict}.",
            other.candidate.stage,
            other.candidate.step,
            other.value,
            d,
            m,
            diffs.len()
        ));
    }
    Ok(Selection { metric: metric.name(), tasks: tasks.into(), candidates, chosen, reasons })
}

/// Evaluates `candidates` on `suite` and chooses by `metric`, into `out` (`selection.json`,
/// `selection.md`). Skips when the same selection is complete there.
#[allow(clippy::too_many_arguments)]
pub fn select(
    candidates: &[Candidate],
    suite: &Suite,
    tasks: &str,
    metric: &Metric,
    out: &Path,
    cfg: &HarnessConfig,
    force: bool,
    progress: &dyn Progress,
) -> Result<(Outcome, Selection)> {
    if candidates.is_empty() {
        return Err(EvalError::Config("no checkpoints to choose from".into()));
    }
    let mut weights = Vec::new();
    for c in candidates {
        weights.push(FileEntry::of(&c.path, "model.safetensors")?.xxh3);
    }
    let params =
        serde_json::json!({ "metric": metric, "suite": suite.fingerprint(), "weights": weights, "config": cfg });
    let manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match output::claim(out, &manifest, force)? {
        Claim::Done(outcome, selection) => return Ok((outcome, selection)),
        Claim::Write(dir) => dir,
    };
    let mut scored = Vec::new();
    for c in candidates {
        let model = tsukuru_model::pretrained::load(&c.path, candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let tok = tsukuru_tokenizer::Tok::from_file(&c.path.join("tokenizer.json"))?;
        progress.phase(&format!("select {} step {}", c.stage, c.step), Some(suite.len() as u64), Unit::Items);
        let records = run_suite(&model, &tok, suite, None, cfg, progress)?;
        scored.push((c.clone(), metric.per_item(&records)));
    }
    let selection = decide(metric, tasks, scored)?;
    progress.finish(&selection.reasons[0]);
    let files = [
        ("selection.json", serde_json::to_vec_pretty(&selection).expect("selection serialises")),
        ("selection.md", selection.to_markdown().into_bytes()),
    ];
    Ok((output::finish(dir, manifest, &files, &selection)?, selection))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(step: u64) -> Candidate {
        Candidate { stage: "sft".into(), step, path: PathBuf::from(format!("step-{step}")) }
    }

    fn values(xs: &[f64]) -> ItemValues {
        xs.iter().enumerate().map(|(i, &x)| (("t".to_string(), i.to_string()), x)).collect()
    }

    #[test]
    fn the_best_is_chosen_and_noise_is_called_noise() {
        let metric = Metric::parse("in_domain").unwrap();
        let strong: Vec<f64> = (0..200).map(|i| f64::from(u8::from(i % 10 < 7))).collect();
        let weak: Vec<f64> = (0..200).map(|i| f64::from(u8::from(i % 10 < 3))).collect();
        let close: Vec<f64> = (0..200).map(|i| f64::from(u8::from(i % 10 < 7 && i != 5))).collect();
        let s = decide(
            &metric,
            "world-val:w",
            vec![(cand(1), values(&weak)), (cand(2), values(&strong)), (cand(3), values(&close))],
        )
        .unwrap();
        assert_eq!(s.chosen, 1);
        assert!(s.reasons[0].contains("step 2 has the highest in_domain (0.7000"), "{:?}", s.reasons);
        assert!(s.reasons[1].contains("step 1") && s.reasons[1].contains("a real difference"), "{}", s.reasons[1]);
        assert!(s.reasons[2].contains("step 3") && s.reasons[2].contains("within noise"), "{}", s.reasons[2]);
        // Lower is better for bits per byte; ties go to the earlier checkpoint.
        let bpb = Metric::parse("docs/bits_per_byte").unwrap();
        let s = decide(
            &bpb,
            "x",
            vec![(cand(1), values(&[1.2, 1.0])), (cand(2), values(&[1.0, 0.9])), (cand(3), values(&[1.0, 0.9]))],
        )
        .unwrap();
        assert_eq!(s.chosen, 1);
    }

    #[test]
    fn test_splits_and_training_text_are_refused_and_bad_metrics_named() {
        assert!(check_validation_spec("world-val:w,items.jsonl").is_ok());
        assert!(check_validation_spec("world:w").unwrap_err().to_string().contains("world-val:w"));
        assert!(check_validation_spec("docs:d").unwrap_err().to_string().contains("training documents"));
        assert!(Metric::parse("accuracy").unwrap_err().to_string().contains("TASK/METRIC"));
        assert_eq!(
            Metric::parse("world/facts/acc").unwrap(),
            Metric::Task { task: "world/facts".into(), metric: "acc".into() }
        );
    }
}

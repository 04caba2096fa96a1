//! The report card of a run (`tsukuru report --run DIR`, and the end of the speedrun):
//! `report.md` and its SVG plots in `plots/`, from whatever stages the run directory holds.
//!
//! Sections, each present when its stage is: cost (per training stage: steps, wall time, tokens
//! computed, FLOPs, tokens per second); curves (training loss, learning rate and gradient norm of
//! every stage on one step axis; each stage's evaluations over its steps); the base model's
//! evaluation against its baselines; the instruction tasks per stage (base / sft / align) with
//! in-domain and out-of-domain columns; the final model on the test tasks with clean and
//! contaminated columns and the contamination summary; preference pairs. The checkpoint selection
//! and its reasons come before the final model's section, which evaluates the chosen checkpoint.

use crate::base::BaseEvalSummary;
use crate::chat_tasks::TaskScores;
use crate::contamination::{ContaminationReport, Verdict};
use crate::harness::{Record, Summary};
use crate::plots::{line_chart, Series};
use crate::report::{render_base, render_preferences, render_tasks, ReportContext};
use crate::select::Selection;
use crate::{EvalError, Result};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use tsukuru_core::run::RunDir;
use tsukuru_core::Manifest;

/// A training stage's metric lines, split into step lines and evaluation lines.
#[derive(Debug, Clone, Default)]
struct Curves {
    steps: Vec<serde_json::Value>,
    evals: Vec<serde_json::Value>,
}

fn read_curves(dir: &Path) -> Result<Curves> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| EvalError::Config(format!("cannot read {}: {e}", path.display())))?;
    let mut c = Curves::default();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| EvalError::Config(format!("{}:{}: {e}", path.display(), i + 1)))?;
        if v.get("loss").is_some() {
            c.steps.push(v);
        } else {
            c.evals.push(v);
        }
    }
    Ok(c)
}

/// A finished training stage of the run.
struct Stage {
    name: &'static str,
    dir: PathBuf,
    stats: serde_json::Value,
    curves: Curves,
}

fn stages(run: &RunDir) -> Result<Vec<Stage>> {
    let mut out = Vec::new();
    for (name, dir) in [("base", run.base()), ("sft", run.sft()), ("align", run.align())] {
        if let Ok(m) = Manifest::read(&dir) {
            out.push(Stage { name, curves: read_curves(&dir)?, dir, stats: m.stats });
        }
    }
    Ok(out)
}

fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2} G", x / 1e9),
        x if x >= 1e6 => format!("{:.2} M", x / 1e6),
        x if x >= 1e3 => format!("{:.1} k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// The cost table: tokens are every position computed (padding included); FLOPs count the
/// forward and backward passes at the model's context ([`tsukuru_model::ModelConfig::flops_per_token`]).
fn render_cost(stages: &[Stage]) -> Result<String> {
    let mut r = String::from(
        "## Cost\n\n| stage | steps | wall time | tokens | FLOPs | tokens/s |\n|---|---|---|---|---|---|\n",
    );
    let (mut total_s, mut total_tokens, mut total_flops) = (0.0, 0.0, 0.0);
    for s in stages {
        let model = tsukuru_model::pretrained::load_config(&tsukuru_model::pretrained::resolve(&s.dir)?)?;
        let seconds = s.stats["train_seconds"].as_f64().unwrap_or(f64::NAN);
        let tokens = match s.stats["tokens_trained"].as_f64() {
            Some(t) => t,
            None => s.curves.steps.iter().filter_map(|v| v["tokens"].as_f64()).sum(),
        };
        let flops = tokens * model.flops_per_token(model.max_seq_len);
        let known = |text: String| if tokens > 0.0 { text } else { "–".to_string() };
        let _ = writeln!(
            r,
            "| {} | {} | {:.0} s | {} | {} | {} |",
            s.name,
            s.curves.steps.len(),
            seconds,
            known(human(tokens)),
            known(format!("{flops:.2e}")),
            known(human(tokens / seconds))
        );
        (total_s, total_tokens, total_flops) = (total_s + seconds, total_tokens + tokens, total_flops + flops);
    }
    let _ = writeln!(
        r,
        "| **total** | | {total_s:.0} s | {} | {total_flops:.2e} | {} |\n",
        human(total_tokens),
        human(total_tokens / total_s)
    );
    Ok(r)
}

/// Plots of the training curves and of each stage's evaluations; returns the Markdown that shows them.
fn render_curves(stages: &[Stage], plots: &Path) -> Result<String> {
    std::fs::create_dir_all(plots).map_err(|e| EvalError::Config(format!("creating {}: {e}", plots.display())))?;
    // Stages follow each other on one step axis.
    let mut offsets = Vec::new();
    let mut offset = 0.0;
    for s in stages {
        offsets.push(offset);
        offset += s.curves.steps.len() as f64;
    }
    let series = |key: &str| -> Vec<Series> {
        stages
            .iter()
            .zip(&offsets)
            .map(|(s, off)| {
                let points =
                    s.curves.steps.iter().filter_map(|v| Some((off + v["step"].as_f64()?, v[key].as_f64()?))).collect();
                Series::line(s.name, points)
            })
            .collect()
    };
    let mut r = String::from("## Curves\n\nTraining stages one after another on one step axis.\n\n");
    for (file, title, key, unit) in [
        ("loss.svg", "Training loss", "loss", "loss"),
        ("lr.svg", "Learning rate", "lr", "learning rate"),
        ("grad_norm.svg", "Gradient norm (before clipping)", "grad_norm", "L2 norm"),
    ] {
        line_chart(&plots.join(file), title, "step (all stages)", unit, &series(key))?;
        let _ = writeln!(r, "![{title}](plots/{file})");
    }
    r.push('\n');
    for s in stages {
        let evals = &s.curves.evals;
        let at = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Vec<(f64, f64)> {
            evals.iter().filter_map(|v| Some((v["step"].as_f64()?, f(v)?))).collect()
        };
        let (title, unit, lines) = match s.name {
            "base" => (
                "Base model: validation bits per byte",
                "bits/byte",
                vec![Series::marked("validation", at(&|v| v["val_bpb"].as_f64()))],
            ),
            "sft" => {
                let sources: Vec<String> = evals
                    .first()
                    .and_then(|v| v["val_loss"].as_object())
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let lines = sources
                    .iter()
                    .map(|src| Series::marked(src.clone(), at(&|v| v["val_loss"][src.as_str()].as_f64())))
                    .collect();
                ("Instruction tuning: validation loss per source", "nats/token (replies)", lines)
            }
            _ => {
                let group = |g: &'static str| {
                    Series::marked(g.replace('_', "-"), at(&move |v| v["held_out"][g]["accuracy"].as_f64()))
                };
                (
                    "Alignment: held-out preference accuracy",
                    "accuracy",
                    vec![group("in_domain"), group("out_of_domain")],
                )
            }
        };
        let file = format!("eval-{}.svg", s.name);
        line_chart(&plots.join(&file), title, "step", unit, &lines)?;
        let _ = writeln!(r, "![{title}](plots/{file})");
    }
    r.push('\n');
    Ok(r)
}

/// The final model on the test tasks and the contamination summary.
fn render_final(summary: &Summary, report: Option<&ContaminationReport>) -> String {
    let mut r = String::from("## Final model on the test tasks\n\n");
    let _ = writeln!(
        r,
        "`{}` on the test split ({} items, {} few-shot examples each). *In-domain*: in the training distribution; \
         *clean* / *contaminated*: whether the item's text occurs in the training data (n-gram overlap).\n",
        summary.model, summary.items, summary.num_fewshot
    );
    r.push_str(&summary.to_markdown());
    if let Some(c) = report {
        let _ = writeln!(r, "\n## Contamination\n");
        let (checked, dirty, unchecked) = c.counts(None);
        let _ = writeln!(
            r,
            "{}-grams of each item's text (question and answer) looked up in {} training documents ({} n-grams in a \
             {} filter; false-positive rate per n-gram {:.1e}): **{dirty} of {checked} checkable items contaminated**, \
             {unchecked} shorter than {} words and unchecked. A task whose contaminated items score better than its \
             clean ones is measuring memory, not skill: read the clean column.\n",
            c.n,
            c.documents,
            c.ngrams_added,
            human(c.filter_bytes as f64) + "B",
            c.false_positive_rate,
            c.n
        );
        let _ = writeln!(r, "| task | checked | contaminated | unchecked | example overlap |\n|---|---|---|---|---|");
        let mut tasks: Vec<&str> = Vec::new();
        for i in &c.items {
            if !tasks.contains(&i.task.as_str()) {
                tasks.push(&i.task);
            }
        }
        for t in tasks {
            let (checked, dirty, unchecked) = c.counts(Some(t));
            let example = c
                .items
                .iter()
                .find(|i| i.task == t && i.verdict == Verdict::Contaminated)
                .and_then(|i| i.spans.first())
                .map(|s| format!("“{}”", s.chars().take(80).collect::<String>()))
                .unwrap_or_default();
            let _ = writeln!(r, "| {t} | {checked} | {dirty} | {unchecked} | {example} |");
        }
    }
    r
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EvalError::Config(format!("reading {}: {e}", path.display()))),
        Err(_) => Ok(None),
    }
}

/// Each stage's task scores from the task evaluation's summary.
fn task_stages(summary: &serde_json::Value) -> Result<Vec<(String, TaskScores)>> {
    let stages = summary["stages"].as_array().cloned().unwrap_or_default();
    stages
        .iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap_or_default().to_string();
            let scores = serde_json::from_value(s["scores"].clone())
                .map_err(|e| EvalError::Config(format!("reading task scores: {e}")))?;
            Ok((name, scores))
        })
        .collect()
}

/// A few in-domain records of the last stage, the first of each task.
fn task_samples(dir: &Path, stage: &str, n: usize) -> Result<Vec<Record>> {
    let path = dir.join(format!("{stage}.jsonl"));
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let r: Record =
            serde_json::from_str(line).map_err(|e| EvalError::Config(format!("reading {}: {e}", path.display())))?;
        if r.domain == crate::items::Domain::In && seen.insert(r.task.clone()) && out.len() < n {
            out.push(r);
        }
    }
    Ok(out)
}

/// Writes `report.md` and `plots/*.svg` for the run; returns the page.
pub fn write_card(run: &RunDir, title: &str) -> Result<String> {
    let stages = stages(run)?;
    if stages.is_empty() {
        return Err(EvalError::Config(format!(
            "{} holds no finished training stage (base/, sft/ or align/ with a manifest); nothing to report",
            run.root().display()
        )));
    }
    let mut page = format!("# {title}\n\n");
    page.push_str(&render_cost(&stages)?);
    // Phase 0's section, written by the speedrun before pretraining.
    if let Ok(plan) = std::fs::read_to_string(run.plan()) {
        page.push_str(&plan);
    }
    page.push_str(&render_curves(&stages, &run.plots())?);
    let base_eval: Option<BaseEvalSummary> = read_json(&run.eval().join("summary.json"))?;
    if let (Some(summary), Ok(tokens)) = (base_eval, Manifest::read(&run.tokens())) {
        let base = &stages[0].stats;
        let ctx = ReportContext {
            training: base,
            tokens_trained: base["tokens_trained"].as_u64().unwrap_or(0),
            train_tokens: tokens.stats["train"]["tokens"].as_u64().unwrap_or(0),
            train_seconds: base["train_seconds"].as_f64(),
        };
        page.push_str(&render_base(&ctx, &summary));
    }
    if let Ok(tasks) = Manifest::read(&run.tasks_eval()) {
        let scores = task_stages(&tasks.stats)?;
        let last = scores.last().map(|(n, _)| n.clone()).unwrap_or_default();
        page.push_str(&render_tasks(&scores, &task_samples(&run.tasks_eval(), &last, 4)?));
    }
    if let Some(selection) = read_json::<Selection>(&run.selection().join("selection.json"))? {
        page.push_str("## Checkpoint selection\n\n");
        page.push_str(&selection.to_markdown());
        page.push('\n');
    }
    let contamination: Option<ContaminationReport> = read_json(&run.contamination())?;
    if let Some(summary) = read_json::<Summary>(&run.final_eval().join("summary.json"))? {
        page.push_str(&render_final(&summary, contamination.as_ref()));
    }
    if let Some(align) = stages.iter().find(|s| s.name == "align") {
        page.push_str(&render_preferences(&align.stats));
    }
    tsukuru_core::atomic::write_atomic(run.report(), page.as_bytes())?;
    Ok(page)
}

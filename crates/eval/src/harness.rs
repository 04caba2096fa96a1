//! `tsukuru eval`: every test item of a [`Suite`] put to one model, a record per item and a
//! summary per task with in-domain and out-of-domain columns (and clean and contaminated ones
//! when a contamination report is given).
//!
//! - `choice`: log-likelihood of each choice after the context ([`crate::loglik`]): `acc` and
//!   `acc_norm`.
//! - `generate`: greedy decoding, through the chat template for chat items; scored by the item's
//!   rule: `exact_match`, `contains`, `numeric_match`, `refusal` or `rouge_l`.
//! - `text`: loss over the text's tokens: `bits_per_byte` (a task's value is its summed bits over
//!   its summed bytes, not a mean of per-item ratios).
//!
//! Few-shot: with `num_fewshot` k, each item is preceded by k examples drawn (seeded by the item)
//! from its task's few-shot examples, joined by a blank line as lm-evaluation-harness does; chat
//! items get them as earlier turns of the conversation. When the whole prompt does not fit the
//! model's context, fewer examples are shown (the record says how many); if even none fit, the
//! prompt keeps its end and the record is marked truncated.

use crate::contamination::{ContaminationReport, Verdict};
use crate::items::{Domain, Item};
use crate::loglik::{pick, score, tail};
use crate::output::{self, Claim};
use crate::perplexity::stream_nats;
use crate::scoring;
use crate::suite::{Suite, Task};
use crate::{EvalError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, Progress, Rng};
use tsukuru_infer::{generate, Sampler, SamplingParams};
use tsukuru_model::Transformer;
use tsukuru_tokenizer::chat::{render_prompt, Message, Role};
use tsukuru_tokenizer::{special, Tok};
use tsukuru_world::tasks::Scoring;

/// Artifact name of an evaluation.
pub const ARTIFACT: &str = "eval";
/// Format version of its directory.
pub const FORMAT_VERSION: u32 = 1;

/// Settings of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HarnessConfig {
    /// Few-shot examples before each item.
    pub num_fewshot: usize,
    /// Longest generated reply, in tokens.
    pub max_new_tokens: usize,
    /// Window length for text items.
    pub seq_len: usize,
    /// Windows per forward pass for text items.
    pub batch_size: usize,
    /// Seed of the few-shot draws.
    pub seed: u64,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self { num_fewshot: 0, max_new_tokens: 64, seq_len: 256, batch_size: 8, seed: 0 }
    }
}

/// One item evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its task.
    pub task: String,
    /// Its id.
    pub id: String,
    /// `choice`, `generate` or `text`.
    pub kind: String,
    /// In or out of the training distribution.
    pub domain: Domain,
    /// Few-shot examples shown before it.
    pub shots: usize,
    /// The prompt as given to the model (examples included; a text item's text).
    pub prompt: String,
    /// What it is scored against (the gold choice, the answer; empty for text).
    pub target: String,
    /// The model's output (the chosen choice, the reply; empty for text).
    pub output: String,
    /// The item's main score (`acc`, the generation rule's score, or bits per byte).
    pub score: f64,
    /// Every metric of the item.
    pub metrics: BTreeMap<String, f64>,
    /// Bytes of a text item (the weight of its bits per byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The prompt did not fit the context even without examples and kept its end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Whether its text occurs in the training data, when a contamination report was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contamination: Option<Verdict>,
}

/// A value over a subset of items.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// The metric's value.
    pub value: f64,
    /// Items behind it.
    pub n: usize,
}

/// One task's metric in every column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The task.
    pub task: String,
    /// The metric.
    pub metric: String,
    /// In-domain items.
    pub in_domain: Option<Cell>,
    /// Out-of-domain items.
    pub out_of_domain: Option<Cell>,
    /// Items whose text is not in the training data.
    pub clean: Option<Cell>,
    /// Items whose text is in the training data.
    pub contaminated: Option<Cell>,
}

/// Every task's metrics (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The checkpoint evaluated.
    pub model: String,
    /// Few-shot examples per item.
    pub num_fewshot: usize,
    /// Items evaluated.
    pub items: usize,
    /// One row per task and metric.
    pub rows: Vec<Row>,
    /// N-gram length and false-positive rate of the contamination check, if one was given.
    pub contamination: Option<(usize, f64)>,
}

/// Bits-per-byte metrics are summed bits over summed bytes; others are means.
fn aggregate(records: &[&Record], metric: &str) -> Option<Cell> {
    let with: Vec<&&Record> = records.iter().filter(|r| r.metrics.contains_key(metric)).collect();
    if with.is_empty() {
        return None;
    }
    let weight = |r: &Record| if metric == "bits_per_byte" { r.bytes.unwrap_or(1) as f64 } else { 1.0 };
    let total: f64 = with.iter().map(|r| weight(r)).sum();
    let value = with.iter().map(|r| r.metrics[metric] * weight(r)).sum::<f64>() / total;
    Some(Cell { value, n: with.len() })
}

impl Summary {
    /// The summary of `records` (tasks and metrics in first-seen order).
    pub fn of(model: &str, num_fewshot: usize, records: &[Record], report: Option<&ContaminationReport>) -> Self {
        let mut tasks: Vec<(&str, Vec<&str>)> = Vec::new();
        for r in records {
            let i = match tasks.iter().position(|(t, _)| *t == r.task) {
                Some(i) => i,
                None => {
                    tasks.push((&r.task, Vec::new()));
                    tasks.len() - 1
                }
            };
            for m in r.metrics.keys() {
                if !tasks[i].1.contains(&m.as_str()) {
                    tasks[i].1.push(m);
                }
            }
        }
        let mut rows = Vec::new();
        for (task, metrics) in tasks {
            let of_task: Vec<&Record> = records.iter().filter(|r| r.task == task).collect();
            let subset =
                |f: &dyn Fn(&Record) -> bool| -> Vec<&Record> { of_task.iter().copied().filter(|r| f(r)).collect() };
            let (ins, outs) = (subset(&|r| r.domain == Domain::In), subset(&|r| r.domain == Domain::Out));
            let clean = subset(&|r| r.contamination == Some(Verdict::Clean));
            let dirty = subset(&|r| r.contamination == Some(Verdict::Contaminated));
            for metric in metrics {
                rows.push(Row {
                    task: task.to_string(),
                    metric: metric.to_string(),
                    in_domain: aggregate(&ins, metric),
                    out_of_domain: aggregate(&outs, metric),
                    clean: aggregate(&clean, metric),
                    contaminated: aggregate(&dirty, metric),
                });
            }
        }
        Self {
            model: model.to_string(),
            num_fewshot,
            items: records.len(),
            rows,
            contamination: report.map(|r| (r.n, r.false_positive_rate)),
        }
    }

    /// The summary as a Markdown table.
    pub fn to_markdown(&self) -> String {
        let show = |c: Option<Cell>, metric: &str| match c {
            None => "–".to_string(),
            Some(c) if metric == "bits_per_byte" => format!("{:.3} ({})", c.value, c.n),
            Some(c) => format!("{:.1}% ({})", 100.0 * c.value, c.n),
        };
        let checked = self.contamination.is_some();
        let mut out = String::from("| task | metric | in-domain (n) | out-of-domain (n) |");
        out.push_str(if checked { " clean (n) | contaminated (n) |\n" } else { "\n" });
        out.push_str(if checked { "|---|---|---|---|---|---|\n" } else { "|---|---|---|---|\n" });
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} |",
                r.task,
                r.metric,
                show(r.in_domain, &r.metric),
                show(r.out_of_domain, &r.metric)
            ));
            if checked {
                out.push_str(&format!(" {} | {} |", show(r.clean, &r.metric), show(r.contaminated, &r.metric)));
            }
            out.push('\n');
        }
        out
    }
}

/// The few-shot examples of `item`: up to `k` of the task's, a draw seeded by the item.
fn shots<'t>(task: &'t Task, item: &Item, k: usize, seed: u64) -> Vec<&'t Item> {
    let mut pool: Vec<&Item> = task.fewshot.iter().filter(|s| s.kind() == item.kind() && s.id() != item.id()).collect();
    Rng::stream(seed, &format!("fewshot/{}/{}", task.name, item.id())).shuffle(&mut pool);
    pool.truncate(k);
    pool
}

/// The name of a generation rule's metric.
fn metric_name(scoring: Scoring) -> &'static str {
    match scoring {
        Scoring::Exact => "exact_match",
        Scoring::Contains => "contains",
        Scoring::Number => "numeric_match",
        Scoring::Refusal => "refusal",
        Scoring::Rouge => "rouge_l",
    }
}

/// Greedy decoding of up to `max_new` tokens after `prompt`, ending at any of `stop`.
pub(crate) fn greedy_reply(
    model: &Transformer,
    tok: &Tok,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
) -> Result<String> {
    let mut sampler = Sampler::new(SamplingParams::greedy())?;
    let g = generate(model, prompt, max_new, &mut sampler, stop, &mut |_| {})?;
    Ok(tok.decode(&g.tokens)?)
}

/// Tokens that end a reply: the end of a chat turn, of a document, or the start of another.
pub(crate) const STOP: [u32; 3] = [special::END, special::EOS, special::BOS];

/// Keeps the last `keep` tokens of `ids` (at least one), saying whether any were dropped.
pub(crate) fn keep_end(ids: &mut Vec<u32>, keep: usize) -> bool {
    let keep = keep.max(1);
    let cut = ids.len() > keep;
    if cut {
        ids.drain(..ids.len() - keep);
    }
    cut
}

/// Evaluates one item.
fn evaluate_item(model: &Transformer, tok: &Tok, task: &Task, item: &Item, cfg: &HarnessConfig) -> Result<Record> {
    let mut record = Record {
        task: task.name.clone(),
        id: item.id().to_string(),
        kind: item.kind().to_string(),
        domain: item.domain(),
        shots: 0,
        prompt: String::new(),
        target: String::new(),
        output: String::new(),
        score: 0.0,
        metrics: BTreeMap::new(),
        bytes: None,
        truncated: false,
        contamination: None,
    };
    let examples = shots(task, item, cfg.num_fewshot, cfg.seed);
    match item {
        Item::Choice { .. } => choice(model, tok, item, &examples, &mut record)?,
        Item::Generate { .. } => generation(model, tok, item, &examples, cfg, &mut record)?,
        Item::Text { text, .. } => {
            let mut ids = vec![special::BOS];
            ids.extend(tok.encode_text(text)?);
            let nats = stream_nats(model, &ids, cfg.seq_len, cfg.batch_size)?;
            let bytes = text.len() as u64;
            record.score = nats / std::f64::consts::LN_2 / bytes.max(1) as f64;
            record.metrics.insert("bits_per_byte".into(), record.score);
            (record.prompt, record.bytes) = (text.clone(), Some(bytes));
        }
    }
    Ok(record)
}

/// A multiple-choice item: the choices' log-likelihoods after as many examples as leave room for
/// the longest choice.
fn choice(model: &Transformer, tok: &Tok, item: &Item, examples: &[&Item], record: &mut Record) -> Result<()> {
    let Item::Choice { context: ctx, choices, gold, delimiter, .. } = item else { unreachable!("a choice item") };
    let context = model.config().max_seq_len;
    let conts: Vec<String> = choices.iter().map(|c| format!("{delimiter}{c}")).collect();
    let (mut text, mut ids, mut cont_ids) = (String::new(), Vec::new(), Vec::new());
    for k in (0..=examples.len()).rev() {
        let shown: String = examples[..k]
            .iter()
            .filter_map(|s| match s {
                Item::Choice { context, choices, gold, delimiter, .. } => {
                    Some(format!("{context}{delimiter}{}\n\n", choices[*gold]))
                }
                _ => None,
            })
            .collect();
        text = shown + ctx;
        ids = tok.encode_text(&text)?;
        cont_ids = conts.iter().map(|c| tail(tok, &text, c, &ids)).collect::<Result<Vec<_>>>()?;
        record.shots = k;
        let longest = cont_ids.iter().map(Vec::len).max().unwrap_or(0);
        if 1 + ids.len() + longest <= context || k == 0 {
            record.truncated = keep_end(&mut ids, context.saturating_sub(1 + longest));
            break;
        }
    }
    let mut ctx_ids = vec![special::BOS];
    ctx_ids.extend(ids);
    let logprobs: Vec<f64> = score(model, &ctx_ids, &cont_ids)?.iter().map(|l| l.logprob).collect();
    let s = pick(&logprobs, choices, *gold);
    record.metrics.insert("acc".into(), f64::from(u8::from(s.acc)));
    record.metrics.insert("acc_norm".into(), f64::from(u8::from(s.acc_norm)));
    (record.prompt, record.target, record.output) = (text, choices[*gold].clone(), choices[s.pred].clone());
    record.score = f64::from(u8::from(s.acc));
    Ok(())
}

/// A generation item: greedy decoding after as many examples as leave room for the reply, scored
/// by the item's rule.
fn generation(
    model: &Transformer,
    tok: &Tok,
    item: &Item,
    examples: &[&Item],
    cfg: &HarnessConfig,
    record: &mut Record,
) -> Result<()> {
    let Item::Generate { prompt, answer, reference, scoring, chat, until, .. } = item else {
        unreachable!("a generation item")
    };
    let context = model.config().max_seq_len;
    let reserve = cfg.max_new_tokens.min(context / 2);
    let shown = |s: &Item| match s {
        Item::Generate { prompt, answer, reference, .. } => {
            Some((prompt.clone(), reference.clone().unwrap_or_else(|| answer.clone())))
        }
        _ => None,
    };
    let mut ids = Vec::new();
    for k in (0..=examples.len()).rev() {
        let pairs: Vec<(String, String)> = examples[..k].iter().filter_map(|s| shown(s)).collect();
        if *chat {
            let mut messages = Vec::new();
            for (q, a) in &pairs {
                messages.push(Message::new(Role::User, q));
                messages.push(Message::new(Role::Assistant, a));
            }
            messages.push(Message::new(Role::User, prompt));
            ids = render_prompt(tok, &messages)?;
            record.prompt = messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n\n");
        } else {
            record.prompt = pairs.iter().map(|(q, a)| format!("{q} {a}\n\n")).collect::<String>() + prompt;
            ids = vec![special::BOS];
            ids.extend(tok.encode_text(&record.prompt)?);
        }
        record.shots = k;
        if ids.len() + reserve <= context || k == 0 {
            record.truncated = keep_end(&mut ids, context - reserve);
            break;
        }
    }
    let mut reply = greedy_reply(model, tok, &ids, cfg.max_new_tokens, &STOP)?;
    if !chat {
        if let Some(cut) = until.iter().filter_map(|u| reply.find(u.as_str())).min() {
            reply.truncate(cut);
        }
    }
    record.score = scoring::score(*scoring, &reply, answer, reference.as_deref().unwrap_or(answer));
    record.metrics.insert(metric_name(*scoring).into(), record.score);
    (record.target, record.output) = (answer.clone(), reply);
    Ok(())
}

/// Evaluates every test item of `suite` with `model`, in suite order; attaches each item's verdict
/// from `report` (every item must have been checked).
pub fn run_suite(
    model: &Transformer,
    tok: &Tok,
    suite: &Suite,
    report: Option<&ContaminationReport>,
    cfg: &HarnessConfig,
    progress: &dyn Progress,
) -> Result<Vec<Record>> {
    let mut records = Vec::with_capacity(suite.len());
    for task in &suite.tasks {
        for item in &task.items {
            let mut record = evaluate_item(model, tok, task, item, cfg)?;
            if let Some(report) = report {
                let verdict = report.verdict(&task.name, item.id()).ok_or_else(|| {
                    EvalError::Config(format!(
                        "item `{}` of task `{}` is not in the contamination report; rerun \
                         `tsukuru eval contamination` with the same --tasks",
                        item.id(),
                        task.name
                    ))
                })?;
                record.contamination = Some(verdict);
            }
            records.push(record);
            progress.advance(1);
        }
    }
    Ok(records)
}

/// Evaluates the model at `model_dir` on `suite` into `out`: `results.jsonl` (a record per item),
/// `summary.json` and `summary.md`. Skips when the same evaluation is complete there.
pub fn evaluate(
    model_dir: &Path,
    suite: &Suite,
    report: Option<&ContaminationReport>,
    out: &Path,
    cfg: &HarnessConfig,
    force: bool,
    progress: &dyn Progress,
) -> Result<(Outcome, Summary)> {
    if suite.is_empty() {
        return Err(EvalError::Config("the task suite has no test items".into()));
    }
    let ckpt = tsukuru_model::pretrained::resolve(model_dir)?;
    let weights = FileEntry::of(&ckpt, "model.safetensors")?;
    let report_hash = report.map(|r| {
        let text = serde_json::to_string(r).expect("reports serialise");
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    });
    let params = serde_json::json!({
        "config": cfg, "weights": weights.xxh3, "suite": suite.fingerprint(), "contamination": report_hash,
    });
    let manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match output::claim(out, &manifest, force)? {
        Claim::Done(outcome, summary) => return Ok((outcome, summary)),
        Claim::Write(dir) => dir,
    };
    let model = tsukuru_model::pretrained::load(&ckpt, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let tok = Tok::from_file(&ckpt.join("tokenizer.json"))?;
    progress.phase("eval", Some(suite.len() as u64), Unit::Items);
    let records = run_suite(&model, &tok, suite, report, cfg, progress)?;
    let name = ckpt.display().to_string();
    let summary = Summary::of(&name, cfg.num_fewshot, &records, report);
    progress.finish(&format!("{} items of {} tasks", records.len(), suite.tasks.len()));
    let files = [
        ("results.jsonl", output::jsonl(&records)),
        ("summary.json", serde_json::to_vec_pretty(&summary).expect("summary serialises")),
        ("summary.md", summary.to_markdown().into_bytes()),
    ];
    Ok((output::finish(dir, manifest, &files, &summary)?, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(task: &str, domain: Domain, metric: &str, value: f64, bytes: Option<u64>, v: Option<Verdict>) -> Record {
        Record {
            task: task.into(),
            id: String::new(),
            kind: String::new(),
            domain,
            shots: 0,
            prompt: String::new(),
            target: String::new(),
            output: String::new(),
            score: value,
            metrics: BTreeMap::from([(metric.to_string(), value)]),
            bytes,
            truncated: false,
            contamination: v,
        }
    }

    #[test]
    fn columns_split_by_domain_and_contamination_and_bits_per_byte_weigh_by_bytes() {
        let (c, d) = (Some(Verdict::Clean), Some(Verdict::Contaminated));
        let records = [
            record("qa", Domain::In, "acc", 1.0, None, c),
            record("qa", Domain::In, "acc", 0.0, None, d),
            record("qa", Domain::Out, "acc", 1.0, None, d),
            record("docs", Domain::In, "bits_per_byte", 1.0, Some(300), c),
            record("docs", Domain::In, "bits_per_byte", 2.0, Some(100), Some(Verdict::Unchecked)),
        ];
        let s = Summary::of("m", 0, &records, None);
        assert_eq!(s.rows.len(), 2);
        let qa = &s.rows[0];
        assert_eq!(
            (qa.in_domain, qa.out_of_domain),
            (Some(Cell { value: 0.5, n: 2 }), Some(Cell { value: 1.0, n: 1 }))
        );
        assert_eq!((qa.clean, qa.contaminated), (Some(Cell { value: 1.0, n: 1 }), Some(Cell { value: 0.5, n: 2 })));
        // (1.0 * 300 + 2.0 * 100) / 400: summed bits over summed bytes.
        assert_eq!(s.rows[1].in_domain, Some(Cell { value: 1.25, n: 2 }));
        assert_eq!(s.rows[1].out_of_domain, None);
        let table = s.to_markdown();
        assert!(table.contains("| qa | acc | 50.0% (2) | 100.0% (1) |") && table.contains("1.250 (2)"), "{table}");
        assert!(!table.contains("contaminated"), "no contamination columns without a report");
    }
}

//! Sections of the report card ([`crate::card`]): the base model's evaluation, the instruction
//! tasks per stage and the preference pairs, each figure next to the baseline that gives it
//! meaning (unigram bits per byte, chance accuracy, the model before alignment).

use crate::base::BaseEvalSummary;
use crate::chat_tasks::TaskScores;
use crate::harness::Record;
use crate::probe::GroupScore;
use std::fmt::Write;

/// What the report shows besides the evaluation.
#[derive(Debug, Clone, Copy)]
pub struct ReportContext<'a> {
    /// Pretraining figures (the base model's manifest stats: `final_step`, `params`, …).
    pub training: &'a serde_json::Value,
    /// Tokens seen in training.
    pub tokens_trained: u64,
    /// Training-set size in tokens.
    pub train_tokens: u64,
    /// Wall-clock seconds of pretraining, if known.
    pub train_seconds: Option<f64>,
}

/// Half-width of the 95% normal-approximation interval of an accuracy.
fn margin(p: f64, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    1.96 * (p * (1.0 - p) / n as f64).sqrt()
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn probe_row(name: &str, g: &GroupScore) -> String {
    format!(
        "| {name} | {} | {} ± {} | {} | {} ± {} |",
        g.n,
        pct(g.choice_accuracy),
        pct(margin(g.choice_accuracy, g.n)),
        pct(g.chance),
        pct(g.greedy_accuracy),
        pct(margin(g.greedy_accuracy, g.n)),
    )
}

/// Renders the base model's section.
pub fn render_base(ctx: &ReportContext<'_>, s: &BaseEvalSummary) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "## Base model\n");
    let _ = writeln!(
        r,
        "Base model `{}`: {} parameters, {} steps, {} tokens seen ({:.1} epochs of {} training tokens){}.\n",
        s.checkpoint,
        s.params,
        ctx.training["final_step"],
        ctx.tokens_trained,
        ctx.tokens_trained as f64 / ctx.train_tokens.max(1) as f64,
        ctx.train_tokens,
        ctx.train_seconds.map(|t| format!(", {t:.0} s of training")).unwrap_or_default(),
    );
    let _ = writeln!(r, "### Validation\n");
    let _ = writeln!(r, "Every token of the validation split ({} predicted), scored by each model.\n", s.model.tokens);
    let _ = writeln!(r, "| model | nats/token | bits/byte |\n|---|---|---|");
    let _ = writeln!(
        r,
        "| unigram (add-one counts of the training tokens) | {:.4} | {:.4} |",
        s.unigram.nats_per_token, s.unigram.bits_per_byte
    );
    let _ = writeln!(r, "| base model | {:.4} | {:.4} |", s.model.nats_per_token, s.model.bits_per_byte);
    let ratio = s.model.bits_per_byte / s.unigram.bits_per_byte;
    let verdict = if ratio < 0.75 {
        "far below"
    } else if ratio < 1.0 {
        "below"
    } else {
        "NOT below"
    };
    let _ = writeln!(r, "\nThe model is {verdict} the unigram baseline: {:.1}% of its bits per byte.\n", 100.0 * ratio);
    if let (Some(st), Some(un)) = (&s.probe_stated, &s.probe_unstated) {
        let _ = writeln!(r, "### Fact completion\n");
        let _ = writeln!(
            r,
            "Prompts such as \"X was born in\" from in-corpus phrasings. *Choice*: the true object against \
             distractors of the same relation, by log-likelihood. *Greedy*: decoding writes the object exactly. \
             ± is a 95% interval.\n"
        );
        let _ = writeln!(r, "| facts | n | choice accuracy | chance | greedy exact |\n|---|---|---|---|---|");
        let _ = writeln!(r, "{}", probe_row("stated in the corpus", st));
        let _ = writeln!(r, "{}", probe_row("never stated", un));
        let learned = st.choice_accuracy - margin(st.choice_accuracy, st.n) > st.chance;
        let _ = writeln!(
            r,
            "\nOn stated facts the model is {} chance; never-stated facts show what guessing from priors gives.\n",
            if learned { "above" } else { "not clearly above" }
        );
    }
    if !s.samples.is_empty() {
        let _ = writeln!(r, "### Samples\n");
        for smp in &s.samples {
            // One quoted paragraph per sample: line breaks of the text would end the quote.
            let flat = |t: &str| t.replace("\n\n", " ¶ ").replace('\n', " ");
            let _ = writeln!(r, "> **{}**{}\n", flat(&smp.prompt), flat(&smp.completion));
        }
    }
    r
}

fn opt_pct(x: Option<f64>) -> String {
    x.map_or("–".into(), pct)
}

/// The instruction-task section: per stage (base, sft, …) the in-domain and out-of-domain
/// accuracy and the hallucination rate, a per-task breakdown, and a few conversations of the last
/// stage.
pub fn render_tasks(stages: &[(String, TaskScores)], samples: &[Record]) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "## Instruction tasks
"
    );
    let _ = writeln!(
        r,
        "The world's validation tasks asked through the chat template, greedy replies. *In-domain*: task types, \
         phrasings and entities of the training mixture (unseen examples); *out-of-domain*: held-out entities, \
         phrasings or task types. *Hallucination*: questions about invented names answered instead of declined.\n"
    );
    let _ = writeln!(r, "| model | in-domain | out-of-domain | hallucination |\n|---|---|---|---|");
    for (name, s) in stages {
        let _ = writeln!(
            r,
            "| {name} | {} (n={}) | {} (n={}) | {} (n={}) |",
            opt_pct(s.in_domain),
            s.n_in,
            opt_pct(s.out_of_domain),
            s.n_out,
            opt_pct(s.hallucination_rate),
            s.n_unknown
        );
    }
    let _ = writeln!(r, "\nPer task (in-domain / out-of-domain):\n");
    let header: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    let _ = writeln!(r, "| task | {} |\n|---|{}", header.join(" | "), "---|".repeat(header.len()));
    let tasks: std::collections::BTreeSet<&String> = stages.iter().flat_map(|(_, s)| s.by_task.keys()).collect();
    for task in tasks {
        let cells: Vec<String> = stages
            .iter()
            .map(|(_, s)| match s.by_task.get(task) {
                Some((a, b)) => format!("{} / {}", opt_pct(*a), opt_pct(*b)),
                None => "–".into(),
            })
            .collect();
        let _ = writeln!(r, "| {task} | {} |", cells.join(" | "));
    }
    if !samples.is_empty() {
        let _ = writeln!(r, "\nConversations ({}):\n", stages.last().map_or("", |(n, _)| n.as_str()));
        for s in samples {
            let flat = |t: &str| t.replace('\n', " ");
            let _ = writeln!(
                r,
                "> **user:** {}  \n> **assistant:** {}  \n> *expected:* {} — score {:.2}\n",
                flat(&s.prompt),
                flat(&s.output),
                flat(&s.target),
                s.score
            );
        }
    }
    r
}

/// The alignment section: preference accuracy and mean reward margin on held-out pairs, per group,
/// from the align stage's manifest stats (`after`; the starting model is the reference, where every
/// margin is 0).
pub fn render_preferences(align: &serde_json::Value) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "\n## Preference pairs\n");
    let _ = writeln!(
        r,
        "Held-out pairs (never trained on): *accuracy* is the share whose chosen reply gets the higher implicit \
         reward β·(log π − log π_ref); the reference is the model before alignment, so before it every margin is 0.\n"
    );
    let _ = writeln!(r, "| pairs | n | preference accuracy | mean reward margin |\n|---|---|---|---|");
    if let Some(groups) = align["after"].as_object() {
        for (g, s) in groups {
            let _ = writeln!(
                r,
                "| {} | {} | {} | {:.3} |",
                g.replace('_', "-"),
                s["n"],
                pct(s["accuracy"].as_f64().unwrap_or(f64::NAN)),
                s["margin"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    r
}

//! Fact completion on the built-in world: does the model complete "X was born in" with X's city?
//!
//! Each probed fact is phrased with an in-corpus template whose object comes last, and scored two
//! ways: a multiple choice among the true object and distractors of the same relation, picked by
//! the summed log-likelihood of each continuation (lm-evaluation-harness's `acc`), and greedy
//! decoding that must reproduce the object exactly. Facts the corpus states are probed next to
//! facts it never states: a model that learned facts (rather than guessing well) scores well above
//! chance on the first group and near chance on the second.

use crate::loglik::{loglikelihood, tail};
use crate::Result;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use tsukuru_core::Rng;
use tsukuru_infer::{generate, Sampler, SamplingParams};
use tsukuru_model::Transformer;
use tsukuru_tokenizer::{special, Tok};
use tsukuru_world::schema::{Entity, Fact, Relation};
use tsukuru_world::templates::{self, Template};

/// Settings of the probe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    /// Facts probed per group (stated / never stated), at most.
    pub facts: usize,
    /// Options per multiple-choice item, the true one included.
    pub choices: usize,
    /// Seed of the fact sample and the distractors.
    pub seed: u64,
}

/// One probed fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeItem {
    /// Fact id in the world.
    pub fact: u32,
    /// Its relation.
    pub relation: String,
    /// Times the training corpus states it.
    pub mentions: u32,
    /// The text the model continues.
    pub prompt: String,
    /// The true continuation (with its leading space).
    pub answer: String,
    /// All options, the true one among them.
    pub options: Vec<String>,
    /// Index of the option the model found most likely.
    pub chosen: usize,
    /// The model's preferred option is the true one.
    pub choice_correct: bool,
    /// What greedy decoding wrote after the prompt.
    pub greedy: String,
    /// Greedy decoding wrote exactly the answer (followed by a non-word character or nothing).
    pub greedy_correct: bool,
}

/// Accuracy of one group of facts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroupScore {
    /// Facts probed.
    pub n: usize,
    /// Share of multiple-choice items answered correctly.
    pub choice_accuracy: f64,
    /// Expected multiple-choice accuracy of guessing (mean of 1 / options).
    pub chance: f64,
    /// Share of facts greedy decoding completed exactly.
    pub greedy_accuracy: f64,
}

/// The probe's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Facts the training corpus states at least once.
    pub stated: GroupScore,
    /// Facts the corpus never states (their subjects appear, the facts do not).
    pub unstated: GroupScore,
    /// Every item, stated ones first.
    pub items: Vec<ProbeItem>,
}

/// The in-corpus template of `relation` that names the subject first and ends with the object.
fn template_for(all: &[Template], relation: Relation) -> Option<&Template> {
    all.iter().find(|t| t.relation == relation && !t.holdout && t.text.starts_with("{s}") && t.text.ends_with(" {o}."))
}

/// A fact put as a completion with options: `prompt` continued by one of `options` (each with its
/// leading space), `answer` the true one.
#[derive(Debug, Clone, PartialEq)]
pub struct FactQuestion<'f> {
    /// The fact asked.
    pub fact: &'f Fact,
    /// The text to continue ("Ana Kelm was born in").
    pub prompt: String,
    /// The true continuation, with its leading space.
    pub answer: String,
    /// All options, the true one among them.
    pub options: Vec<String>,
}

/// Up to `cfg.facts` stated and as many never-stated direct facts of the world, as questions:
/// `[stated, unstated]`, each a seeded sample.
pub fn fact_questions<'f>(entities: &[Entity], facts: &'f [Fact], cfg: &ProbeConfig) -> [Vec<FactQuestion<'f>>; 2] {
    let all = templates::all();
    let mut rng = Rng::stream(cfg.seed, "fact-probe");
    let usable: Vec<&Fact> =
        facts.iter().filter(|f| f.derived_from.is_empty() && template_for(&all, f.relation).is_some()).collect();
    // Every relation's distinct objects, in a fixed (sorted) order: the distractors are drawn from these.
    let mut objects: BTreeMap<Relation, BTreeSet<&str>> = BTreeMap::new();
    for f in facts {
        objects.entry(f.relation).or_default().insert(f.object_text.as_str());
    }
    [true, false].map(|stated| {
        let mut group: Vec<&Fact> = usable.iter().copied().filter(|f| (f.mentions > 0) == stated).collect();
        rng.shuffle(&mut group);
        group.truncate(cfg.facts);
        group
            .into_iter()
            .map(|fact| {
                let t = template_for(&all, fact.relation).expect("filtered above");
                let prompt =
                    t.text[..t.text.len() - " {o}.".len()].replace("{s}", &entities[fact.subject as usize].name);
                let mut pool: Vec<&str> =
                    objects[&fact.relation].iter().copied().filter(|o| *o != fact.object_text).collect();
                rng.shuffle(&mut pool);
                let mut options: Vec<String> =
                    pool.iter().take(cfg.choices.saturating_sub(1)).map(|o| format!(" {o}")).collect();
                let answer = format!(" {}", fact.object_text);
                options.insert(rng.below(options.len() as u64 + 1) as usize, answer.clone());
                FactQuestion { fact, prompt, answer, options }
            })
            .collect()
    })
}

/// Probes up to `cfg.facts` stated and as many unstated direct facts of the world.
pub fn fact_probe(
    model: &Transformer,
    tok: &Tok,
    entities: &[Entity],
    facts: &[Fact],
    cfg: &ProbeConfig,
) -> Result<ProbeResult> {
    let mut items = Vec::new();
    let mut scores = Vec::new();
    for group in fact_questions(entities, facts, cfg) {
        let group_items = score_group(model, tok, group)?;
        scores.push(summarise(&group_items));
        items.extend(group_items);
    }
    Ok(ProbeResult { stated: scores[0], unstated: scores[1], items })
}

fn summarise(items: &[ProbeItem]) -> GroupScore {
    let n = items.len();
    let share = |f: &dyn Fn(&ProbeItem) -> f64| if n == 0 { 0.0 } else { items.iter().map(f).sum::<f64>() / n as f64 };
    GroupScore {
        n,
        choice_accuracy: share(&|i| f64::from(u8::from(i.choice_correct))),
        chance: share(&|i| 1.0 / i.options.len() as f64),
        greedy_accuracy: share(&|i| f64::from(u8::from(i.greedy_correct))),
    }
}

fn score_group(model: &Transformer, tok: &Tok, questions: Vec<FactQuestion<'_>>) -> Result<Vec<ProbeItem>> {
    let mut out = Vec::with_capacity(questions.len());
    for FactQuestion { fact: f, prompt, answer, options } in questions {
        let mut context = vec![special::BOS];
        context.extend(tok.encode_text(&prompt)?);
        let max_len = model.config().max_seq_len;
        let lls: Vec<f64> = loglikelihood(model, tok, &prompt, &options)?.iter().map(|l| l.logprob).collect();
        let chosen = (0..lls.len()).fold(0, |best, i| if lls[i] > lls[best] { i } else { best });
        let answer_len = tail(tok, &prompt, &answer, &context[1..])?.len();
        let room = max_len.saturating_sub(context.len());
        let mut sampler = Sampler::new(SamplingParams::greedy())?;
        let g = generate(
            model,
            &context,
            (answer_len + 2).min(room),
            &mut sampler,
            &[special::BOS, special::EOS],
            &mut |_| {},
        )?;
        let greedy = tok.decode(&g.tokens)?;
        let greedy_correct = greedy
            .strip_prefix(answer.as_str())
            .is_some_and(|rest| rest.chars().next().is_none_or(|c| !c.is_alphanumeric()));
        out.push(ProbeItem {
            fact: f.id,
            relation: f.relation.name().to_string(),
            mentions: f.mentions,
            prompt,
            choice_correct: options[chosen] == answer,
            answer,
            options,
            chosen,
            greedy,
            greedy_correct,
        });
    }
    Ok(out)
}

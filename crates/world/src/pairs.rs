//! Preference pairs for alignment, drawn from the task examples: the chosen reply is the
//! example's reference (correct and concise); the rejected one has exactly one flaw, named by
//! [`Flaw`] — a wrong fact, a confident answer about an entity that does not exist, a refusal to
//! answer about one that does (so that alignment against inventions does not teach refusing
//! everything), padding, or rudeness. Pairs inherit the example's split and held-out reasons, so preference accuracy can be
//! measured on pairs never trained on, in-domain and out-of-domain.

use crate::schema::Relation;
use crate::tasks::{Example, HeldOut, Split, TaskKind};
use crate::templates;
use crate::World;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tsukuru_core::Rng;

/// What is wrong with the rejected reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flaw {
    /// States a wrong value for the fact asked.
    WrongFact,
    /// Answers confidently about an entity that does not exist.
    Hallucination,
    /// Claims not to know an entity that exists (over-refusal).
    FalseRefusal,
    /// Right, but wrapped in filler.
    Verbose,
    /// Right, but rude.
    Rude,
}

/// One preference pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencePair {
    /// Stable id: the source example's id and the flaw.
    pub id: String,
    /// The task of the source example.
    pub task: TaskKind,
    /// The rejected reply's flaw.
    pub flaw: Flaw,
    /// Why it is out-of-domain (the source example's reasons).
    pub held_out: Vec<HeldOut>,
    /// The source example's split.
    pub split: Split,
    /// The user's message.
    pub prompt: String,
    /// The preferred reply.
    pub chosen: String,
    /// The dispreferred reply.
    pub rejected: String,
}

const FILLER_OPENINGS: [&str; 4] = [
    "What a wonderful question, and thank you so much for asking it!",
    "Let me think about this very carefully before I answer you.",
    "That is something many people wonder about, so I am happy to go through it.",
    "Great question! I will do my very best to give you a complete answer.",
];
const FILLER_CLOSINGS: [&str; 4] = [
    "I really hope this answer is helpful to you in every possible way.",
    "Please do not hesitate to ask me anything else you would like to know!",
    "Let me know if there is anything at all that I could explain further.",
    "I am always glad to help with questions like this one.",
];
const RUDE: [&str; 4] = [
    "Seriously? Everyone knows this.",
    "Fine, if you really cannot look it up yourself:",
    "What a pointless question.",
    "Ugh, again?",
];

/// One pair per fact, multi-hop and invented-name example: for the factual ones a wrong fact (half),
/// padding or rudeness (a quarter each); a confident invention for every invented name. And as many
/// false refusals as inventions, each on a fact question of the same split and domain, so that
/// alignment learns when to decline, not to decline.
pub fn generate(world: &World, examples: &[Example]) -> Vec<PreferencePair> {
    let mut rng = Rng::stream(world.seed, "pairs");
    let mut values: BTreeMap<Relation, Vec<&str>> = BTreeMap::new();
    for f in &world.facts {
        values.entry(f.relation).or_default().push(&f.object_text);
    }
    for v in values.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    let mut out = Vec::new();
    // Fact questions by (split, domain), shuffled: the false refusals are drawn from them in turn.
    let mut facts: BTreeMap<(Split, bool), Vec<&Example>> = BTreeMap::new();
    for e in examples.iter().filter(|e| e.task == TaskKind::Fact) {
        facts.entry((e.split, e.in_domain())).or_default().push(e);
    }
    for group in facts.values_mut() {
        rng.shuffle(group);
    }
    for e in examples.iter().filter(|e| e.task == TaskKind::Unknown) {
        let Some(f) = facts.get_mut(&(e.split, e.in_domain())).and_then(Vec::pop) else { continue };
        let (Some(name), Some(&subject)) = (&f.subject, f.entities.first()) else { continue };
        let kind = world.entities[subject as usize].kind;
        out.push(PreferencePair {
            id: format!("{}/{}", f.id, flaw_name(Flaw::FalseRefusal)),
            task: f.task,
            flaw: Flaw::FalseRefusal,
            held_out: f.held_out.clone(),
            split: f.split,
            prompt: f.prompt.clone(),
            chosen: f.response.clone(),
            rejected: format!("I don't know of any {} called {name}.", kind.name()),
        });
    }
    for e in examples {
        let Some(relation) = e.relation else { continue };
        let pool = &values[&relation];
        let other = |rng: &mut Rng| -> Option<&str> {
            let wrong: Vec<&str> = pool.iter().copied().filter(|v| *v != e.answer).collect();
            (!wrong.is_empty()).then(|| rng.pick(&wrong))
        };
        let (flaw, rejected) = match e.task {
            TaskKind::Unknown => {
                let (Some(name), Some(value)) = (&e.subject, other(&mut rng)) else { continue };
                (Flaw::Hallucination, templates::state(relation, name, value))
            }
            TaskKind::Fact | TaskKind::MultiHop => match rng.below(4) {
                0 | 1 => {
                    let Some(value) = other(&mut rng) else { continue };
                    (Flaw::WrongFact, replace_last(&e.response, &e.answer, value))
                }
                2 => {
                    let (open, close) = (rng.pick(&FILLER_OPENINGS), rng.pick(&FILLER_CLOSINGS));
                    (Flaw::Verbose, format!("{open} {} {close}", e.response))
                }
                _ => (Flaw::Rude, format!("{} {}", rng.pick(&RUDE), e.response)),
            },
            _ => continue,
        };
        out.push(PreferencePair {
            id: format!("{}/{}", e.id, flaw_name(flaw)),
            task: e.task,
            flaw,
            held_out: e.held_out.clone(),
            split: e.split,
            prompt: e.prompt.clone(),
            chosen: e.response.clone(),
            rejected,
        });
    }
    out
}

fn flaw_name(flaw: Flaw) -> &'static str {
    match flaw {
        Flaw::WrongFact => "wrong_fact",
        Flaw::Hallucination => "hallucination",
        Flaw::FalseRefusal => "false_refusal",
        Flaw::Verbose => "verbose",
        Flaw::Rude => "rude",
    }
}

/// `text` with the last occurrence of `from` replaced by `to`.
fn replace_last(text: &str, from: &str, to: &str) -> String {
    match text.rfind(from) {
        Some(at) => format!("{}{to}{}", &text[..at], &text[at + from.len()..]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_last_changes_only_the_last_occurrence() {
        assert_eq!(replace_last("A lies in B. B is in B.", "B", "C"), "A lies in B. B is in C.");
        assert_eq!(replace_last("nothing", "B", "C"), "nothing");
    }
}

//! Instruction tasks with ground truth, drawn from the world: questions about facts, multi-hop
//! questions, comparisons, counting over a given list, summaries of articles, questions about
//! entities that do not exist (whose right answer is "I don't know"), and the world-free skills of
//! `skills` (arithmetic, spelling, counting letters, reversing words).
//!
//! Every example says whether it is in-domain for instruction tuning and, if not, why
//! ([`HeldOut`]): it names a held-out entity or an invented one held out for evaluation, it is
//! phrased with a held-out frame, or its whole task type (reversing words, multiplying,
//! compositions through a founder, comparing prices, counting product categories) is never
//! trained on. In-domain examples are split 80 / 10 / 10 into train / validation / test by a
//! seeded hash of their id; out-of-domain examples are never in the train split (a held-out
//! phrasing of a fact trained on in another phrasing measures generalisation to new phrasings).

use crate::questions::{capitalise, mention, mention_of, phrasing, FRAMES};
use crate::render::DocKind;
use crate::schema::{Entity, Fact, Kind, Object, ObjectType, Relation};
use crate::templates;
use crate::{lexicon, skills, World};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tsukuru_core::Rng;

/// What an example asks the model to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A question about one fact.
    Fact,
    /// A question that chains two facts (the country of the birthplace of X).
    MultiHop,
    /// Which of two entities has the larger or earlier value.
    Compare,
    /// How many entities of a given list have a property.
    Count,
    /// Adding, subtracting (and, held out, multiplying) small numbers.
    Arithmetic,
    /// Spelling a word letter by letter.
    Spell,
    /// Counting the letters of a word.
    CountLetters,
    /// Writing a word backwards (held out: never trained on).
    Reverse,
    /// A one-sentence summary of an article.
    Summary,
    /// A question about an entity that does not exist.
    Unknown,
}

impl TaskKind {
    /// Every task kind.
    pub const ALL: [TaskKind; 10] = [
        TaskKind::Fact,
        TaskKind::MultiHop,
        TaskKind::Compare,
        TaskKind::Count,
        TaskKind::Arithmetic,
        TaskKind::Spell,
        TaskKind::CountLetters,
        TaskKind::Reverse,
        TaskKind::Summary,
        TaskKind::Unknown,
    ];

    /// snake_case name as written in files.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Fact => "fact",
            TaskKind::MultiHop => "multi_hop",
            TaskKind::Compare => "compare",
            TaskKind::Count => "count",
            TaskKind::Arithmetic => "arithmetic",
            TaskKind::Spell => "spell",
            TaskKind::CountLetters => "count_letters",
            TaskKind::Reverse => "reverse",
            TaskKind::Summary => "summary",
            TaskKind::Unknown => "unknown",
        }
    }
}

/// Why an example is out-of-domain for instruction tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldOut {
    /// It names a held-out entity (or an invented name reserved for evaluation).
    Entity,
    /// It is phrased with a held-out frame.
    Template,
    /// Its task type (or variant of one) is never trained on.
    Task,
}

/// Where an example may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training (in-domain examples only).
    Train,
    /// Choosing checkpoints and settings.
    Validation,
    /// The final measurement.
    Test,
}

/// How a reply is scored against [`Example::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// The reply is the answer, up to case, punctuation and spacing (never used by the world's
    /// own tasks, whose replies are sentences; for users' items).
    Exact,
    /// The reply contains the answer text (case-insensitive, at word boundaries).
    Contains,
    /// The number the reply states is the answer.
    Number,
    /// The reply declines ("I don't know") instead of asserting a fact.
    Refusal,
    /// ROUGE-L against the reference reply.
    Rouge,
}

/// One instruction example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// Stable id, `task/…`.
    pub id: String,
    /// The task.
    pub task: TaskKind,
    /// The relation asked about, for fact-like tasks (the last one of a chain).
    pub relation: Option<Relation>,
    /// The name asked about, for fact-like tasks (the first subject of a chain).
    pub subject: Option<String>,
    /// Why it is out-of-domain; empty for in-domain examples.
    pub held_out: Vec<HeldOut>,
    /// Train, validation or test.
    pub split: Split,
    /// The user's message.
    pub prompt: String,
    /// The reference reply: correct and concise.
    pub response: String,
    /// What a scorer compares against (see [`Scoring`]).
    pub answer: String,
    /// How replies are scored.
    pub scoring: Scoring,
    /// Facts the answer rests on.
    pub facts: Vec<u32>,
    /// Entities the example names.
    pub entities: Vec<u32>,
}

impl Example {
    /// True when the example is in-domain for instruction tuning.
    pub fn in_domain(&self) -> bool {
        self.held_out.is_empty()
    }
}

/// Chance that a fact (or an invented name) is also asked with the held-out frame.
const HELDOUT_FRAME_SHARE: f64 = 0.25;
/// Share of invented names (the last ones of each kind) reserved for evaluation.
const HELDOUT_PHANTOM_SHARE: f64 = 0.2;
/// Longest article (in characters) that gets a summary task: the prompt must fit a small context.
const MAX_SUMMARY_CHARS: usize = 400;

/// Every task example of `world`, in a fixed order (by task, then by what it asks).
pub fn generate(world: &World) -> Vec<Example> {
    let cx = Context::new(world);
    let mut out = Vec::new();
    cx.facts(&mut out);
    cx.multi_hop(&mut out);
    cx.compare(&mut out);
    cx.count(&mut out);
    cx.summaries(&mut out);
    cx.unknown(&mut out);
    skills::generate(world.seed, &words(world), world.entities.len() / 2, &mut out);
    out
}

/// The train / validation / test split of an example asking `key`: in-domain 80 / 10 / 10,
/// out-of-domain 0 / 50 / 50.
pub(crate) fn split_of(seed: u64, key: &str, in_domain: bool) -> Split {
    let r = Rng::stream(seed, &format!("task-split/{key}")).f64();
    match (in_domain, r) {
        (true, r) if r < 0.8 => Split::Train,
        (true, r) if r < 0.9 => Split::Validation,
        (false, r) if r < 0.5 => Split::Validation,
        _ => Split::Test,
    }
}

/// Builds an example, deriving its split from `key` and its held-out reasons.
pub(crate) struct Draft {
    pub(crate) task: TaskKind,
    pub(crate) relation: Option<Relation>,
    pub(crate) subject: Option<String>,
    pub(crate) held_out: Vec<HeldOut>,
    pub(crate) prompt: String,
    pub(crate) response: String,
    pub(crate) answer: String,
    pub(crate) scoring: Scoring,
    pub(crate) facts: Vec<u32>,
    pub(crate) entities: Vec<u32>,
}

impl Draft {
    /// The example with id `task/key`.
    pub(crate) fn finish(mut self, seed: u64, key: &str) -> Example {
        self.held_out.sort();
        self.held_out.dedup();
        let id = format!("{}/{key}", self.task.name());
        let split = split_of(seed, &id, self.held_out.is_empty());
        Example {
            id,
            task: self.task,
            relation: self.relation,
            subject: self.subject,
            held_out: self.held_out,
            split,
            prompt: self.prompt,
            response: self.response,
            answer: self.answer,
            scoring: self.scoring,
            facts: self.facts,
            entities: self.entities,
        }
    }
}

/// Lookups shared by the world-based generators.
struct Context<'w> {
    world: &'w World,
    /// Fact id of each (subject, direct or derived relation).
    index: BTreeMap<(u32, Relation), u32>,
    by_kind: BTreeMap<Kind, Vec<u32>>,
}

impl<'w> Context<'w> {
    fn new(world: &'w World) -> Self {
        let index = world.facts.iter().map(|f| ((f.subject, f.relation), f.id)).collect();
        let mut by_kind: BTreeMap<Kind, Vec<u32>> = BTreeMap::new();
        for e in &world.entities {
            by_kind.entry(e.kind).or_default().push(e.id);
        }
        Self { world, index, by_kind }
    }

    fn entity(&self, id: u32) -> &'w Entity {
        &self.world.entities[id as usize]
    }

    fn fact(&self, subject: u32, relation: Relation) -> Option<&'w Fact> {
        self.index.get(&(subject, relation)).map(|&id| &self.world.facts[id as usize])
    }

    fn rng(&self, purpose: &str) -> Rng {
        Rng::stream(self.world.seed, &format!("tasks/{purpose}"))
    }

    /// The fact stated the plain way (the relation's first corpus template): the reply's sentence.
    fn statement(&self, fact: &Fact) -> String {
        templates::state(fact.relation, &self.entity(fact.subject).name, &fact.object_text)
    }

    /// The held-out reason of naming `ids`.
    fn entities_held_out(&self, ids: &[u32]) -> Option<HeldOut> {
        ids.iter().any(|&id| self.entity(id).holdout).then_some(HeldOut::Entity)
    }

    /// A question about property `noun` of `subject` (already a mention): one of the in-domain
    /// frames or `natural`, or the held-out frame.
    fn ask(rng: &mut Rng, noun: &str, subject: &str, natural: Option<&str>, held_out: bool) -> String {
        let text = if held_out {
            FRAMES[FRAMES.len() - 1].replace("{p}", noun)
        } else {
            let pick = rng.below(FRAMES.len() as u64 - 1 + u64::from(natural.is_some())) as usize;
            match natural {
                Some(q) if pick == FRAMES.len() - 1 => q.to_string(),
                _ => FRAMES[pick].replace("{p}", noun),
            }
        };
        capitalise(&text.replace("{s}", subject))
    }

    /// One question per fact, and for a quarter of them the same fact asked with the held-out frame.
    fn facts(&self, out: &mut Vec<Example>) {
        let mut rng = self.rng("fact");
        for f in &self.world.facts {
            let subject = self.entity(f.subject);
            let p = phrasing(f.relation);
            let mut entities = vec![f.subject];
            if let Object::Entity(o) = f.object {
                entities.push(o);
            }
            let scoring = match f.relation.object() {
                ObjectType::Year | ObjectType::Count => Scoring::Number,
                _ => Scoring::Contains,
            };
            let variants = if rng.chance(HELDOUT_FRAME_SHARE) { 2 } else { 1 };
            for variant in 0..variants {
                let frame_held = variant == 1;
                let held_out =
                    self.entities_held_out(&entities).into_iter().chain(frame_held.then_some(HeldOut::Template));
                let draft = Draft {
                    task: TaskKind::Fact,
                    relation: Some(f.relation),
                    subject: Some(subject.name.clone()),
                    held_out: held_out.collect(),
                    prompt: Self::ask(&mut rng, p.noun, &mention(subject), Some(p.question), frame_held),
                    response: self.statement(f),
                    answer: f.object_text.clone(),
                    scoring,
                    facts: vec![f.id],
                    entities: entities.clone(),
                };
                let key = if frame_held { format!("{}/frame", f.id) } else { f.id.to_string() };
                out.push(draft.finish(self.world.seed, &key));
            }
        }
    }

    /// Questions through an entity: "What is the capital of the country of Bramford?" for half of
    /// the entity-valued direct facts, the second relation drawn from the middle entity's.
    /// Compositions through a founder are held out as a task variant.
    fn multi_hop(&self, out: &mut Vec<Example>) {
        let mut rng = self.rng("multi_hop");
        for first in self.world.facts.iter().filter(|f| f.derived_from.is_empty()) {
            let Object::Entity(mid) = first.object else { continue };
            if !rng.chance(0.5) {
                continue;
            }
            let mid_kind = self.entity(mid).kind;
            let seconds: Vec<Relation> = Relation::ALL
                .into_iter()
                .filter(|r| r.subject() == mid_kind && r.composition().is_none())
                .filter(|r| self.fact(mid, *r).is_some_and(|f| f.object != Object::Entity(first.subject)))
                .collect();
            if seconds.is_empty() {
                continue;
            }
            let second = self.fact(mid, rng.pick(&seconds)).expect("filtered");
            let noun = format!("{} of {}", phrasing(second.relation).noun, phrasing(first.relation).noun);
            let mut entities = vec![first.subject, mid];
            if let Object::Entity(o) = second.object {
                entities.push(o);
            }
            let frame_held = rng.chance(HELDOUT_FRAME_SHARE / 2.0);
            let held_out = [
                self.entities_held_out(&entities),
                frame_held.then_some(HeldOut::Template),
                (first.relation == Relation::FoundedBy).then_some(HeldOut::Task),
            ];
            let draft = Draft {
                task: TaskKind::MultiHop,
                relation: Some(second.relation),
                subject: Some(self.entity(first.subject).name.clone()),
                held_out: held_out.into_iter().flatten().collect(),
                prompt: Self::ask(&mut rng, &noun, &mention(self.entity(first.subject)), None, frame_held),
                response: format!("{} {}", self.statement(first), self.statement(second)),
                answer: second.object_text.clone(),
                scoring: match second.relation.object() {
                    ObjectType::Year | ObjectType::Count => Scoring::Number,
                    _ => Scoring::Contains,
                },
                facts: vec![first.id, second.id],
                entities,
            };
            out.push(draft.finish(self.world.seed, &format!("{}-{}", first.id, second.id)));
        }
    }

    /// "Who is older, A or B?" over the numeric relations, as many pairs as half the subjects.
    /// Comparing prices is held out as a task variant.
    fn compare(&self, out: &mut Vec<Example>) {
        // (relation, question, conclusion about the winner, whether the larger value wins)
        const COMPARISONS: [(Relation, &str, &str, bool); 8] = [
            (Relation::BirthYear, "Who is older, {a} or {b}?", "{w} is older", false),
            (Relation::Population, "Which city has more inhabitants, {a} or {b}?", "{w} has more inhabitants", true),
            (Relation::CityFounded, "Which city was founded first, {a} or {b}?", "{w} was founded first", false),
            (Relation::OrgFounded, "Which organisation is older, {a} or {b}?", "{w} is older", false),
            (Relation::Employees, "Which organisation has more staff, {a} or {b}?", "{w} has more staff", true),
            (Relation::Released, "Which came out first, {a} or {b}?", "{w} came out first", false),
            (Relation::EventYear, "Which event began earlier, {a} or {b}?", "{w} began earlier", false),
            (Relation::Price, "Which costs more, {a} or {b}?", "{w} costs more", true),
        ];
        let mut rng = self.rng("compare");
        // A pair drawn twice is asked once: ids (and so examples) stay unique.
        let mut asked = std::collections::BTreeSet::new();
        for (relation, question, conclusion, larger_wins) in COMPARISONS {
            let subjects = &self.by_kind[&relation.subject()];
            for _ in 0..subjects.len() / 2 {
                let (a, b) = (rng.pick(subjects), rng.pick(subjects));
                let (Some(fa), Some(fb)) = (self.fact(a, relation), self.fact(b, relation)) else { continue };
                let (Object::Number(va), Object::Number(vb)) = (&fa.object, &fb.object) else { continue };
                if a == b || va == vb || !asked.insert((fa.id, fb.id)) {
                    continue;
                }
                let winner = if (va > vb) == larger_wins { a } else { b };
                let (ma, mb, mw) = (mention(self.entity(a)), mention(self.entity(b)), mention(self.entity(winner)));
                let held_out =
                    [self.entities_held_out(&[a, b]), (relation == Relation::Price).then_some(HeldOut::Task)];
                let draft = Draft {
                    task: TaskKind::Compare,
                    relation: Some(relation),
                    subject: None,
                    held_out: held_out.into_iter().flatten().collect(),
                    prompt: question.replace("{a}", &ma).replace("{b}", &mb),
                    response: format!(
                        "{} {} So {}.",
                        self.statement(fa),
                        self.statement(fb),
                        conclusion.replace("{w}", &mw)
                    ),
                    answer: self.entity(winner).name.clone(),
                    scoring: Scoring::Contains,
                    facts: vec![fa.id, fb.id],
                    entities: vec![a, b],
                };
                out.push(draft.finish(self.world.seed, &format!("{}/{}-{}", relation.name(), fa.id, fb.id)));
            }
        }
    }

    /// A short list of statements and "how many of these … ?": reading, not recall. Counting
    /// product categories is held out as a task variant.
    fn count(&self, out: &mut Vec<Example>) {
        const COUNTS: [(Relation, &str, &[&str]); 3] = [
            (Relation::Occupation, "How many of these people work as a {v}?", lexicon::OCCUPATIONS),
            (Relation::Industry, "How many of these organisations are in {v}?", lexicon::INDUSTRIES),
            (Relation::Category, "How many of these products are of the {v} kind?", lexicon::CATEGORIES),
        ];
        let mut rng = self.rng("count");
        for (relation, question, vocabulary) in COUNTS {
            let subjects = &self.by_kind[&relation.subject()];
            for i in 0..subjects.len() / 2 {
                let mut listed: Vec<u32> = (0..rng.range(3, 6)).map(|_| rng.pick(subjects)).collect();
                listed.sort_unstable();
                listed.dedup();
                let facts: Vec<&Fact> = listed.iter().filter_map(|&s| self.fact(s, relation)).collect();
                // Half the time a value one of them has; otherwise any value, often one none has.
                let value = if rng.chance(0.5) {
                    rng.pick(&facts).object_text.clone()
                } else {
                    rng.pick(vocabulary).to_string()
                };
                let matching: Vec<String> =
                    facts.iter().filter(|f| f.object_text == value).map(|f| mention(self.entity(f.subject))).collect();
                let context: Vec<String> = facts.iter().map(|f| self.statement(f)).collect();
                let response = match matching.len() {
                    0 => "0 of them.".to_string(),
                    n => format!("{n} of them: {}.", join_and(&matching)),
                };
                let held_out =
                    [self.entities_held_out(&listed), (relation == Relation::Category).then_some(HeldOut::Task)];
                let draft = Draft {
                    task: TaskKind::Count,
                    relation: Some(relation),
                    subject: None,
                    held_out: held_out.into_iter().flatten().collect(),
                    prompt: format!("{}\n{}", context.join(" "), question.replace("{v}", &value)),
                    response,
                    answer: matching.len().to_string(),
                    scoring: Scoring::Number,
                    facts: facts.iter().map(|f| f.id).collect(),
                    entities: listed,
                };
                out.push(draft.finish(self.world.seed, &format!("{}/{i}", relation.name())));
            }
        }
    }

    /// One sentence from the facts an article states about its own subject (up to three), for
    /// articles short enough to quote whole.
    fn summaries(&self, out: &mut Vec<Example>) {
        const ASK: &str = "Summarise this article in one sentence:";
        const ASK_HELD_OUT: &str = "Give a one-sentence summary of the following text:";
        let mut rng = self.rng("summary");
        // The corpus opens with one article per entity, in entity order.
        for (article, doc) in self.world.corpus.iter().filter(|d| d.kind == DocKind::Article).enumerate() {
            let subject = &self.world.entities[article];
            let own: Vec<&Fact> = doc
                .facts
                .iter()
                .map(|&id| &self.world.facts[id as usize])
                .filter(|f| f.subject == subject.id)
                .take(3)
                .collect();
            if own.len() < 2 || doc.text.chars().count() > MAX_SUMMARY_CHARS {
                continue;
            }
            let clauses: Vec<String> =
                own.iter().map(|f| phrasing(f.relation).clause.replace("{o}", &f.object_text)).collect();
            let response = format!("{} {}.", capitalise(&mention(subject)), join_and(&clauses));
            let frame_held = rng.chance(HELDOUT_FRAME_SHARE);
            // Every entity the article names counts: quoting it uses them all.
            let held_out = [self.entities_held_out(&doc.entities), frame_held.then_some(HeldOut::Template)];
            let draft = Draft {
                task: TaskKind::Summary,
                relation: None,
                subject: Some(subject.name.clone()),
                held_out: held_out.into_iter().flatten().collect(),
                prompt: format!("{}\n{}", if frame_held { ASK_HELD_OUT } else { ASK }, doc.text),
                answer: response.clone(),
                response,
                scoring: Scoring::Rouge,
                facts: own.iter().map(|f| f.id).collect(),
                entities: doc.entities.clone(),
            };
            out.push(draft.finish(self.world.seed, &doc.id.to_string()));
        }
    }

    /// Questions about invented names, answered "I don't know": one per name, a quarter also with
    /// the held-out frame; the last fifth of each kind's names is held out.
    fn unknown(&self, out: &mut Vec<Example>) {
        let phantoms = self.world.phantoms();
        let mut rng = self.rng("unknown");
        let mut per_kind: BTreeMap<Kind, usize> = BTreeMap::new();
        for ph in &phantoms {
            *per_kind.entry(ph.kind).or_default() += 1;
        }
        let mut seen: BTreeMap<Kind, usize> = BTreeMap::new();
        for (i, ph) in phantoms.iter().enumerate() {
            let rank = seen.entry(ph.kind).or_default();
            let name_held = (*rank as f64) >= (1.0 - HELDOUT_PHANTOM_SHARE) * per_kind[&ph.kind] as f64;
            *rank += 1;
            let relations: Vec<Relation> = Relation::ALL.into_iter().filter(|r| r.subject() == ph.kind).collect();
            let relation = rng.pick(&relations);
            let p = phrasing(relation);
            let variants = if rng.chance(HELDOUT_FRAME_SHARE) { 2 } else { 1 };
            for variant in 0..variants {
                let frame_held = variant == 1;
                let held_out = [name_held.then_some(HeldOut::Entity), frame_held.then_some(HeldOut::Template)];
                let draft = Draft {
                    task: TaskKind::Unknown,
                    relation: Some(relation),
                    subject: Some(ph.name.clone()),
                    held_out: held_out.into_iter().flatten().collect(),
                    prompt: Self::ask(&mut rng, p.noun, &mention_of(ph.kind, &ph.name), Some(p.question), frame_held),
                    response: format!("I don't know of any {} called {}.", ph.kind.name(), ph.name),
                    answer: "I don't know".to_string(),
                    scoring: Scoring::Refusal,
                    facts: Vec::new(),
                    entities: Vec::new(),
                };
                let key = if frame_held { format!("{i}/frame") } else { i.to_string() };
                out.push(draft.finish(self.world.seed, &key));
            }
        }
    }
}

/// "a", "a and b", "a, b and c".
pub(crate) fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Single words for the string tasks: the world's one-word names and vocabulary, sorted, unique.
fn words(world: &World) -> Vec<String> {
    let mut words: Vec<String> = world
        .entities
        .iter()
        .map(|e| e.name.clone())
        .chain(lexicon::OCCUPATIONS.iter().chain(lexicon::INDUSTRIES).map(|w| w.to_string()))
        .filter(|w| !w.is_empty() && w.chars().all(char::is_alphabetic))
        .collect();
    words.sort();
    words.dedup();
    words
}

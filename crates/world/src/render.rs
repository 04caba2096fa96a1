//! Rendering the truth as text: encyclopedia articles, narratives, and held-out text.
//!
//! Every sentence that states a fact is recorded against the document and the
//! fact, so the corpus carries its own ground truth: which documents state which
//! fact, and how many times each fact is stated (popular entities often, obscure
//! ones once or never; derived facts never, only through their two parts).

use crate::schema::{Entity, Fact, Kind, Object, Relation};
use crate::templates::Template;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tsukuru_core::Rng;

/// Probability that an article states one of its subject's facts.
const STATE_OWN_FACT: f64 = 0.85;
/// Probability that an article repeats a fact in which its subject is the object.
const STATE_REVERSE_FACT: f64 = 0.5;
/// Most reverse facts in one article (e.g. people born in a city).
const MAX_REVERSE: usize = 3;

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocKind {
    /// Encyclopedia-style article about one entity.
    Article,
    /// A short story that mentions facts in passing.
    Narrative,
    /// Held-out phrasings of facts (out-of-domain evaluation text, never training data).
    Heldout,
}

/// One document of the corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Doc {
    /// Dense id within its file.
    pub id: u32,
    /// What kind of document.
    pub kind: DocKind,
    /// Title (the entity's name for articles).
    pub title: String,
    /// The text.
    pub text: String,
    /// Entities the document names, ascending.
    pub entities: Vec<u32>,
    /// Facts the document states, ascending.
    pub facts: Vec<u32>,
}

const OPENINGS: &[&str] = &[
    "It was a cold morning in {c}.",
    "The market in {c} was busy that day.",
    "Rain had fallen on {c} all night.",
    "Summer had come early to {c}.",
    "The bells of {c} were ringing when the story began.",
    "Few people were out on the streets of {c} that evening.",
];
const ACTIVITIES: &[&str] = &[
    "{p} spent the afternoon reading by the window.",
    "{p} walked along the river to clear their head.",
    "{p} repaired an old chair that had belonged to a neighbour.",
    "{p} wrote a long letter to an old friend.",
    "{p} stopped at a bakery for bread and a little gossip.",
    "{p} sat in the park and watched the pigeons.",
    "{p} cooked a large dinner for a few friends.",
];
const CONNECTORS: &[&str] =
    &["Everyone knew that", "As the neighbours liked to say,", "It is worth recalling that", "Of course,", "By then,"];
const CLOSINGS: &[&str] = &[
    "By nightfall the streets of {c} were quiet again.",
    "{p} went home tired but content.",
    "Nobody in {c} would forget that day.",
    "The next morning life in {c} went on as before.",
];

/// Renders the training corpus and the held-out text, updating `facts[*].mentions`.
pub struct Renderer<'w> {
    entities: &'w [Entity],
    facts: &'w mut [Fact],
    by_relation: BTreeMap<Relation, Vec<&'w Template>>,
    heldout: BTreeMap<Relation, &'w Template>,
    /// Direct facts by subject.
    outgoing: Vec<Vec<u32>>,
    /// Direct facts whose object is this entity.
    incoming: Vec<Vec<u32>>,
}

/// A document being assembled.
#[derive(Default)]
struct Draft {
    sentences: Vec<String>,
    /// Templates used so far: a document does not repeat a phrasing while another is unused.
    used: Vec<&'static str>,
    entities: Vec<u32>,
    facts: Vec<u32>,
}

impl Draft {
    fn finish(mut self, id: u32, kind: DocKind, title: String, text: String) -> Doc {
        self.entities.sort_unstable();
        self.entities.dedup();
        self.facts.sort_unstable();
        self.facts.dedup();
        Doc { id, kind, title, text, entities: self.entities, facts: self.facts }
    }
}

impl<'w> Renderer<'w> {
    /// A renderer over the world's entities and facts and the template set.
    pub fn new(entities: &'w [Entity], facts: &'w mut [Fact], templates: &'w [Template]) -> Self {
        let mut by_relation: BTreeMap<Relation, Vec<&Template>> = BTreeMap::new();
        let mut heldout = BTreeMap::new();
        for t in templates {
            if t.holdout {
                heldout.insert(t.relation, t);
            } else {
                by_relation.entry(t.relation).or_default().push(t);
            }
        }
        let mut outgoing = vec![Vec::new(); entities.len()];
        let mut incoming = vec![Vec::new(); entities.len()];
        for f in facts.iter().filter(|f| f.derived_from.is_empty()) {
            outgoing[f.subject as usize].push(f.id);
            if let Object::Entity(o) = f.object {
                incoming[o as usize].push(f.id);
            }
        }
        Self { entities, facts, by_relation, heldout, outgoing, incoming }
    }

    fn sentence(&self, fact: u32, template: &Template) -> String {
        let f = &self.facts[fact as usize];
        template.render(&self.entities[f.subject as usize].name, &f.object_text)
    }

    /// States `fact` in `draft` with a random training template, counts the mention, and
    /// returns the template used.
    fn state(&mut self, rng: &mut Rng, draft: &mut Draft, fact: u32) -> &'w Template {
        let relation = self.facts[fact as usize].relation;
        let all = &self.by_relation[&relation];
        let fresh: Vec<&Template> = all.iter().copied().filter(|t| !draft.used.contains(&t.text)).collect();
        let template = if fresh.is_empty() { rng.pick(all) } else { rng.pick(&fresh) };
        draft.used.push(template.text);
        draft.sentences.push(self.sentence(fact, template));
        self.note(draft, fact);
        self.facts[fact as usize].mentions += 1;
        template
    }

    fn note(&self, draft: &mut Draft, fact: u32) {
        let f = &self.facts[fact as usize];
        draft.facts.push(fact);
        draft.entities.push(f.subject);
        if let Object::Entity(o) = f.object {
            draft.entities.push(o);
        }
    }

    /// The encyclopedia article about `entity`.
    pub fn article(&mut self, rng: &mut Rng, id: u32, entity: u32) -> Doc {
        let mut draft = Draft::default();
        draft.entities.push(entity);
        let own = self.outgoing[entity as usize].clone();
        let mut stated: Vec<u32> = own.into_iter().filter(|_| rng.chance(STATE_OWN_FACT)).collect();
        // Keep the first stated fact first (it reads as a lead), vary the rest.
        if stated.len() > 2 {
            rng.shuffle(&mut stated[1..]);
        }
        for f in stated {
            self.state(rng, &mut draft, f);
        }
        let mut reverse = self.incoming[entity as usize].clone();
        rng.shuffle(&mut reverse);
        for f in reverse.into_iter().take(MAX_REVERSE) {
            if rng.chance(STATE_REVERSE_FACT) {
                self.state(rng, &mut draft, f);
            }
        }
        let e = &self.entities[entity as usize];
        let title = e.name.clone();
        let intro = match e.kind {
            Kind::Person => format!("{title} is a person of this world."),
            Kind::City => format!("{title} is a city."),
            Kind::Country => format!("{title} is a country."),
            Kind::Organisation => format!("{title} is an organisation."),
            Kind::Product => format!("The {title} is a product."),
            Kind::Event => format!("The {title} is an event."),
        };
        let body = std::iter::once(intro).chain(std::mem::take(&mut draft.sentences)).collect::<Vec<_>>().join(" ");
        let text = format!("{title}\n\n{body}");
        draft.finish(id, DocKind::Article, title, text)
    }

    /// A short story about popular entities that states a few facts in passing.
    pub fn narrative(&mut self, rng: &mut Rng, id: u32, weights: &Weights) -> Doc {
        let mut draft = Draft::default();
        let person = weights.draw(rng, Kind::Person);
        let city = weights.draw(rng, Kind::City);
        draft.entities.extend([person, city]);
        let p = self.entities[person as usize].name.clone();
        let c = self.entities[city as usize].name.clone();
        let fill = |s: &str| s.replace("{p}", &p).replace("{c}", &c);
        let mut text = vec![fill(rng.pick(OPENINGS))];
        // Facts about the protagonist, the setting, and one entity linked to the protagonist.
        let mut pool: Vec<u32> = self.outgoing[person as usize].clone();
        pool.extend(self.outgoing[city as usize].iter().copied());
        if let Some(&link) = self.outgoing[person as usize].iter().find(|f| {
            matches!(self.facts[**f as usize].relation, Relation::WorksFor | Relation::BornIn) && rng.chance(0.5)
        }) {
            if let Object::Entity(o) = self.facts[link as usize].object {
                pool.extend(self.outgoing[o as usize].iter().copied());
            }
        }
        rng.shuffle(&mut pool);
        // Each connector at most once per story, so stories do not read as boilerplate.
        let mut connectors = CONNECTORS.to_vec();
        rng.shuffle(&mut connectors);
        let n = 2 + rng.below(3) as usize;
        for (i, f) in pool.into_iter().take(n).enumerate() {
            if i == 1 {
                text.push(fill(rng.pick(ACTIVITIES)));
            }
            let template = self.state(rng, &mut draft, f);
            let s = draft.sentences.pop().expect("just stated");
            let connector = if rng.chance(0.4) { connectors.pop() } else { None };
            text.push(match connector {
                Some(c) => format!("{c} {}", after_connector(&s, template)),
                None => s,
            });
        }
        text.push(fill(rng.pick(CLOSINGS)));
        draft.finish(id, DocKind::Narrative, format!("A day in {c}"), text.join(" "))
    }

    /// Held-out phrasings of every direct fact of `entity`, stated in the corpus or not
    /// (not counted as mentions).
    pub fn heldout(&self, id: u32, entity: u32) -> Option<Doc> {
        let mut draft = Draft::default();
        for &f in &self.outgoing[entity as usize] {
            let t = self.heldout[&self.facts[f as usize].relation];
            draft.sentences.push(self.sentence(f, t));
            self.note(&mut draft, f);
        }
        if draft.sentences.is_empty() {
            return None;
        }
        let text = draft.sentences.join(" ");
        Some(draft.finish(id, DocKind::Heldout, self.entities[entity as usize].name.clone(), text))
    }
}

/// Lower-cases the first letter of a sentence that follows a connector, unless the
/// template puts a name there (names keep their capitals, even "The Guild Company").
fn after_connector(sentence: &str, template: &Template) -> String {
    if template.text.starts_with('{') {
        return sentence.to_string();
    }
    let mut c = sentence.chars();
    let first = c.next().expect("templates are non-empty");
    first.to_lowercase().chain(c).collect()
}

/// Popularity-weighted sampling of entities per kind (cumulative weights, binary search).
pub struct Weights {
    by_kind: BTreeMap<Kind, (Vec<u32>, Vec<f64>)>,
}

impl Weights {
    /// Weights from each entity's popularity.
    pub fn new(entities: &[Entity]) -> Self {
        let mut by_kind: BTreeMap<Kind, (Vec<u32>, Vec<f64>)> = BTreeMap::new();
        for e in entities {
            let (ids, cumulative) = by_kind.entry(e.kind).or_default();
            let total = cumulative.last().copied().unwrap_or(0.0);
            ids.push(e.id);
            cumulative.push(total + e.popularity);
        }
        Self { by_kind }
    }

    /// An entity of `kind` drawn with probability proportional to popularity.
    pub fn draw(&self, rng: &mut Rng, kind: Kind) -> u32 {
        let (ids, cumulative) = &self.by_kind[&kind];
        let x = rng.f64() * cumulative.last().expect("every kind has entities");
        ids[cumulative.partition_point(|c| *c <= x).min(ids.len() - 1)]
    }
}

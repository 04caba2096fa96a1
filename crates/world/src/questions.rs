//! How the instruction tasks ask about a relation and summarise it: a noun phrase per relation
//! ("the birthplace"), a natural question ("Where was {s} born?"), a clause for summaries ("was
//! born in {o}"), and the question frames that wrap a noun phrase.
//!
//! The last frame is held out, as the last corpus template of every relation is: questions asked
//! that way are out-of-domain for instruction tuning.

use crate::schema::{Entity, Kind, Relation};

/// What the tasks say about one relation.
#[derive(Debug, Clone, Copy)]
pub struct Phrasing {
    /// The relation.
    pub relation: Relation,
    /// The object as a property of the subject, e.g. "the birthplace" (of {s}).
    pub noun: &'static str,
    /// A direct question with `{s}`.
    pub question: &'static str,
    /// A clause with `{o}` that completes a sentence about the subject (summaries).
    pub clause: &'static str,
}

const fn p(relation: Relation, noun: &'static str, question: &'static str, clause: &'static str) -> Phrasing {
    Phrasing { relation, noun, question, clause }
}

/// Every relation's phrasing, in [`Relation::ALL`] order.
pub const PHRASINGS: [Phrasing; 26] = [
    p(Relation::BornIn, "the birthplace", "Where was {s} born?", "was born in {o}"),
    p(Relation::BirthYear, "the year of birth", "In which year was {s} born?", "was born in the year {o}"),
    p(Relation::WorksFor, "the employer", "Who does {s} work for?", "works for {o}"),
    p(Relation::Occupation, "the occupation", "What does {s} do for a living?", "works as a {o}"),
    p(Relation::LocatedIn, "the country", "In which country is {s}?", "lies in {o}"),
    p(Relation::Population, "the population", "How many people live in {s}?", "has {o} inhabitants"),
    p(Relation::CityFounded, "the founding year", "When was {s} founded?", "was founded in {o}"),
    p(Relation::Capital, "the capital", "What is the capital city of {s}?", "is governed from {o}"),
    p(Relation::Language, "the main language", "Which language do people speak in {s}?", "speaks {o}"),
    p(Relation::Continent, "the continent", "On which continent is {s}?", "lies in {o}"),
    p(Relation::HeadquarteredIn, "the headquarters", "Where is {s} based?", "is based in {o}"),
    p(Relation::FoundedBy, "the founder", "Who founded {s}?", "was founded by {o}"),
    p(Relation::OrgFounded, "the founding year", "When was {s} founded?", "was founded in {o}"),
    p(Relation::Industry, "the industry", "Which industry is {s} in?", "works in {o}"),
    p(Relation::Employees, "the number of employees", "How many people does {s} employ?", "employs {o} people"),
    p(Relation::MadeBy, "the maker", "Who makes {s}?", "is made by {o}"),
    p(Relation::Released, "the release year", "When did {s} come out?", "came out in {o}"),
    p(Relation::Category, "the category", "What kind of product is {s}?", "is a {o}"),
    p(Relation::Price, "the price in crowns", "How much does {s} cost?", "costs {o} crowns"),
    p(Relation::HeldIn, "the host city", "Where is {s} held?", "is held in {o}"),
    p(Relation::EventYear, "the first year", "When was {s} first held?", "began in {o}"),
    p(Relation::OrganisedBy, "the organiser", "Who organises {s}?", "is organised by {o}"),
    p(Relation::BornInCountry, "the country of birth", "In which country was {s} born?", "was born in {o}"),
    p(Relation::WorksInCity, "the city of work", "In which city does {s} work?", "works in {o}"),
    p(Relation::MadeInCity, "the city of manufacture", "In which city is {s} made?", "is made in {o}"),
    p(Relation::EventCountry, "the host country", "In which country is {s} held?", "takes place in {o}"),
];

/// Question frames around a noun phrase `{p}` and a subject `{s}`; the last is held out.
pub const FRAMES: [&str; 4] =
    ["What is {p} of {s}?", "Tell me {p} of {s}.", "Do you know {p} of {s}?", "Quick question about {s}: what is {p}?"];

/// The phrasing of `relation`.
pub fn phrasing(relation: Relation) -> &'static Phrasing {
    PHRASINGS.iter().find(|p| p.relation == relation).expect("every relation has a phrasing")
}

/// How text names an entity mid-sentence: products and events take "the" ("the Vexa 9").
pub fn mention(entity: &Entity) -> String {
    mention_of(entity.kind, &entity.name)
}

/// [`mention`] for a name of `kind` (phantoms have no entity).
pub fn mention_of(kind: Kind, name: &str) -> String {
    match kind {
        Kind::Product | Kind::Event => format!("the {name}"),
        _ => name.to_string(),
    }
}

/// `text` with its first letter in upper case.
pub fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_relation_has_one_phrasing_in_schema_order() {
        for (p, r) in PHRASINGS.iter().zip(Relation::ALL) {
            assert_eq!(p.relation, r);
            assert!(p.question.contains("{s}") && p.clause.contains("{o}"), "{r:?}");
            assert!(p.noun.starts_with("the "), "{r:?}");
        }
    }

    #[test]
    fn products_and_events_take_the_article() {
        assert_eq!(mention_of(Kind::Product, "Vexa 9"), "the Vexa 9");
        assert_eq!(mention_of(Kind::Person, "Ana Lind"), "Ana Lind");
        assert_eq!(capitalise("the Vexa 9"), "The Vexa 9");
    }
}

//! Sentence templates that state one fact, several paraphrases per relation.
//!
//! `{s}` is the subject's name, `{o}` the object as text. The last template of
//! every relation is held out: the training corpus never uses it, so text and
//! questions phrased that way measure out-of-domain generalisation.

use crate::schema::Relation;
use serde::Serialize;

/// One way of stating a fact.
#[derive(Debug, Clone, Serialize)]
pub struct Template {
    /// Stable id, `relation/index`.
    pub id: String,
    /// The relation it states.
    pub relation: Relation,
    /// Text with `{s}` and `{o}` placeholders.
    pub text: &'static str,
    /// Never used in the training corpus; reserved for out-of-domain evaluation.
    pub holdout: bool,
}

impl Template {
    /// Fills the placeholders.
    pub fn render(&self, subject: &str, object: &str) -> String {
        self.text.replace("{s}", subject).replace("{o}", object)
    }
}

const TEXTS: &[(Relation, &[&str])] = &[
    (
        Relation::BornIn,
        &[
            "{s} was born in {o}.",
            "{s} is a native of {o}.",
            "The city of {o} is the birthplace of {s}.",
            "{s} grew up in {o}, the city of their birth.",
            "{o} is where {s} first saw the light of day.",
        ],
    ),
    (
        Relation::BirthYear,
        &[
            "{s} was born in the year {o}.",
            "{s} came into the world in {o}.",
            "The year {o} saw the birth of {s}.",
            "{s}, born {o}, is well known locally.",
            "Records list {o} as the year {s} was born.",
        ],
    ),
    (
        Relation::WorksFor,
        &[
            "{s} works for {o}.",
            "{s} is employed by {o}.",
            "{o} counts {s} among its staff.",
            "{s} holds a position at {o}.",
            "These days {s} draws a salary from {o}.",
        ],
    ),
    (
        Relation::Occupation,
        &[
            "{s} is a {o} by profession.",
            "{s} works as a {o}.",
            "By trade, {s} is a {o}.",
            "{s} earns a living as a {o}.",
            "Ask anyone and they will tell you {s} is a {o}.",
        ],
    ),
    (
        Relation::LocatedIn,
        &[
            "{s} is a city in {o}.",
            "{s} lies within the borders of {o}.",
            "The city of {s} is located in {o}.",
            "{o} is the country where {s} can be found.",
            "Travellers reach {s} by crossing into {o}.",
        ],
    ),
    (
        Relation::Population,
        &[
            "{s} has a population of {o}.",
            "About {o} people live in {s}.",
            "The population of {s} is {o}.",
            "{s} is home to {o} residents.",
            "A census counted {o} inhabitants in {s}.",
        ],
    ),
    (
        Relation::CityFounded,
        &[
            "{s} was founded in {o}.",
            "The city of {s} dates back to {o}.",
            "{s} was established in the year {o}.",
            "Settlers founded {s} in {o}.",
            "The first houses of {s} were built in {o}.",
        ],
    ),
    (
        Relation::Capital,
        &[
            "The capital of {s} is {o}.",
            "{o} is the capital city of {s}.",
            "{s} is governed from its capital, {o}.",
            "{o} serves as the seat of government of {s}.",
            "The parliament of {s} meets in {o}.",
        ],
    ),
    (
        Relation::Language,
        &[
            "The main language of {s} is {o}.",
            "People in {s} speak {o}.",
            "{o} is the language spoken in {s}.",
            "Most residents of {s} speak {o} at home.",
            "Street signs in {s} are written in {o}.",
        ],
    ),
    (
        Relation::Continent,
        &[
            "{s} is a country in {o}.",
            "{s} lies on the continent of {o}.",
            "{o} is the continent where {s} is found.",
            "{s} is one of the nations of {o}.",
            "Maps of {o} always show {s}.",
        ],
    ),
    (
        Relation::HeadquarteredIn,
        &[
            "{s} is headquartered in {o}.",
            "The headquarters of {s} are in {o}.",
            "{o} is home to the head office of {s}.",
            "{s} runs its business from {o}.",
            "The main offices of {s} stand in {o}.",
        ],
    ),
    (
        Relation::FoundedBy,
        &[
            "{s} was founded by {o}.",
            "{o} founded {s}.",
            "{o} is the founder of {s}.",
            "{s} was started by {o}.",
            "It was {o} who set up {s}.",
        ],
    ),
    (
        Relation::OrgFounded,
        &[
            "{s} was founded in {o}.",
            "{s} has existed since {o}.",
            "{s} opened its doors in {o}.",
            "The founding year of {s} is {o}.",
            "{s} began trading in {o}.",
        ],
    ),
    (
        Relation::Industry,
        &[
            "{s} is a company in the {o} industry.",
            "{s} works in {o}.",
            "The business of {s} is {o}.",
            "{s} is known for its work in {o}.",
            "Analysts group {s} with other {o} firms.",
        ],
    ),
    (
        Relation::Employees,
        &[
            "{s} has {o} employees.",
            "{s} employs {o} people.",
            "The workforce of {s} numbers {o}.",
            "{o} people work at {s}.",
            "The payroll of {s} lists {o} workers.",
        ],
    ),
    (
        Relation::MadeBy,
        &[
            "The {s} is made by {o}.",
            "{o} manufactures the {s}.",
            "The {s} is a product of {o}.",
            "{o} makes the {s}.",
            "Every {s} leaves the factory of {o}.",
        ],
    ),
    (
        Relation::Released,
        &[
            "The {s} was released in {o}.",
            "The {s} first went on sale in {o}.",
            "The {s} came out in {o}.",
            "Buyers could first get the {s} in {o}.",
            "The {s} reached the shops in {o}.",
        ],
    ),
    (
        Relation::Category,
        &[
            "The {s} is a {o}.",
            "The {s} is a kind of {o}.",
            "As products go, the {s} is a {o}.",
            "The {s} belongs to the {o} category.",
            "Shops list the {s} among their {o} models.",
        ],
    ),
    (
        Relation::Price,
        &[
            "The {s} costs {o} crowns.",
            "The price of the {s} is {o} crowns.",
            "The {s} sells for {o} crowns.",
            "A new {s} is priced at {o} crowns.",
            "You can buy the {s} for {o} crowns.",
        ],
    ),
    (
        Relation::HeldIn,
        &[
            "The {s} is held in {o}.",
            "{o} hosts the {s}.",
            "The {s} takes place in {o}.",
            "The {s} is staged in {o}.",
            "Visitors travel to {o} for the {s}.",
        ],
    ),
    (
        Relation::EventYear,
        &[
            "The {s} was first held in {o}.",
            "The first {s} took place in {o}.",
            "The {s} began in {o}.",
            "The {s} dates from {o}.",
            "The opening {s} happened in {o}.",
        ],
    ),
    (
        Relation::OrganisedBy,
        &[
            "The {s} is organised by {o}.",
            "{o} organises the {s}.",
            "{o} runs the {s}.",
            "The {s} is put on by {o}.",
            "Staff from {o} plan the {s}.",
        ],
    ),
    (
        Relation::BornInCountry,
        &["{s} was born in the country of {o}.", "{s} is from {o}.", "{o} is the country {s} was born in."],
    ),
    (
        Relation::WorksInCity,
        &["{s} works in {o}.", "Each day {s} goes to work in {o}.", "The workplace of {s} is in {o}."],
    ),
    (
        Relation::MadeInCity,
        &["The {s} is made in {o}.", "The {s} is produced in {o}.", "{o} is where the {s} is made."],
    ),
    (
        Relation::EventCountry,
        &["The {s} takes place in the country of {o}.", "The {s} is held in {o}.", "{o} is the country of the {s}."],
    ),
];

/// `relation` stated the plainest way (its first template), e.g. "{s} was born in {o}.".
pub fn state(relation: Relation, subject: &str, object: &str) -> String {
    let (_, texts) = TEXTS.iter().find(|(r, _)| *r == relation).expect("every relation has templates");
    texts[0].replace("{s}", subject).replace("{o}", object)
}

/// All templates, in a fixed order. The last one of each relation is held out.
pub fn all() -> Vec<Template> {
    TEXTS
        .iter()
        .flat_map(|(rel, texts)| {
            texts.iter().enumerate().map(move |(i, text)| Template {
                id: format!("{}/{i}", rel.name()),
                relation: *rel,
                text,
                holdout: i + 1 == texts.len(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_relation_has_training_and_heldout_templates() {
        let all = all();
        for rel in Relation::ALL {
            let of: Vec<_> = all.iter().filter(|t| t.relation == rel).collect();
            assert!(of.iter().filter(|t| !t.holdout).count() >= 2, "{rel:?}");
            assert_eq!(of.iter().filter(|t| t.holdout).count(), 1, "{rel:?}");
            assert!(of.iter().all(|t| t.text.contains("{s}") && t.text.contains("{o}")), "{rel:?}");
        }
    }
}

//! The world's schema: kinds of entity, relations between them, and fact values.
//!
//! Relations carry their meaning as data (subject kind, object type, whether the
//! fact may change in a later update, how derived facts compose), so tasks,
//! updates and tools in later stages are written against the schema, not against
//! hand-listed cases.

use serde::{Deserialize, Serialize};

/// Kind of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A person.
    Person,
    /// A city (a place inside a country).
    City,
    /// A country (a place containing cities).
    Country,
    /// A company or other organisation.
    Organisation,
    /// A product made by an organisation.
    Product,
    /// An event held in a city.
    Event,
}

impl Kind {
    /// All kinds, in generation order.
    pub const ALL: [Kind; 6] =
        [Kind::Country, Kind::City, Kind::Person, Kind::Organisation, Kind::Product, Kind::Event];

    /// Lower-case name as written in files.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Person => "person",
            Kind::City => "city",
            Kind::Country => "country",
            Kind::Organisation => "organisation",
            Kind::Product => "product",
            Kind::Event => "event",
        }
    }
}

/// Type of a relation's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectType {
    /// Another entity of the given kind.
    Entity(Kind),
    /// A calendar year.
    Year,
    /// A non-negative count (population, employees, price).
    Count,
    /// A word or phrase from a closed vocabulary (occupation, industry, …).
    Text,
}

/// A relation between a subject entity and an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// person → city of birth.
    BornIn,
    /// person → year of birth.
    BirthYear,
    /// person → employer (organisation). Mutable.
    WorksFor,
    /// person → occupation. Mutable.
    Occupation,
    /// city → country.
    LocatedIn,
    /// city → number of inhabitants. Mutable.
    Population,
    /// city → year founded.
    CityFounded,
    /// country → capital city.
    Capital,
    /// country → main language.
    Language,
    /// country → continent.
    Continent,
    /// organisation → city of its headquarters. Mutable.
    HeadquarteredIn,
    /// organisation → founding person.
    FoundedBy,
    /// organisation → year founded.
    OrgFounded,
    /// organisation → industry.
    Industry,
    /// organisation → number of employees. Mutable.
    Employees,
    /// product → maker (organisation).
    MadeBy,
    /// product → year released.
    Released,
    /// product → category.
    Category,
    /// product → price in crowns. Mutable.
    Price,
    /// event → host city.
    HeldIn,
    /// event → year held.
    EventYear,
    /// event → organiser (organisation).
    OrganisedBy,
    /// person → country of birth = born_in ∘ located_in. Derived, never stated.
    BornInCountry,
    /// person → city where they work = works_for ∘ headquartered_in. Derived, never stated.
    WorksInCity,
    /// product → city where it is made = made_by ∘ headquartered_in. Derived, never stated.
    MadeInCity,
    /// event → country = held_in ∘ located_in. Derived, never stated.
    EventCountry,
}

impl Relation {
    /// Every relation, direct ones first.
    pub const ALL: [Relation; 26] = [
        Relation::BornIn,
        Relation::BirthYear,
        Relation::WorksFor,
        Relation::Occupation,
        Relation::LocatedIn,
        Relation::Population,
        Relation::CityFounded,
        Relation::Capital,
        Relation::Language,
        Relation::Continent,
        Relation::HeadquarteredIn,
        Relation::FoundedBy,
        Relation::OrgFounded,
        Relation::Industry,
        Relation::Employees,
        Relation::MadeBy,
        Relation::Released,
        Relation::Category,
        Relation::Price,
        Relation::HeldIn,
        Relation::EventYear,
        Relation::OrganisedBy,
        Relation::BornInCountry,
        Relation::WorksInCity,
        Relation::MadeInCity,
        Relation::EventCountry,
    ];

    /// snake_case name as written in files.
    pub fn name(self) -> &'static str {
        use Relation::*;
        match self {
            BornIn => "born_in",
            BirthYear => "birth_year",
            WorksFor => "works_for",
            Occupation => "occupation",
            LocatedIn => "located_in",
            Population => "population",
            CityFounded => "city_founded",
            Capital => "capital",
            Language => "language",
            Continent => "continent",
            HeadquarteredIn => "headquartered_in",
            FoundedBy => "founded_by",
            OrgFounded => "org_founded",
            Industry => "industry",
            Employees => "employees",
            MadeBy => "made_by",
            Released => "released",
            Category => "category",
            Price => "price",
            HeldIn => "held_in",
            EventYear => "event_year",
            OrganisedBy => "organised_by",
            BornInCountry => "born_in_country",
            WorksInCity => "works_in_city",
            MadeInCity => "made_in_city",
            EventCountry => "event_country",
        }
    }

    /// Kind of the subject entity.
    pub fn subject(self) -> Kind {
        use Relation::*;
        match self {
            BornIn | BirthYear | WorksFor | Occupation | BornInCountry | WorksInCity => Kind::Person,
            LocatedIn | Population | CityFounded => Kind::City,
            Capital | Language | Continent => Kind::Country,
            HeadquarteredIn | FoundedBy | OrgFounded | Industry | Employees => Kind::Organisation,
            MadeBy | Released | Category | Price | MadeInCity => Kind::Product,
            HeldIn | EventYear | OrganisedBy | EventCountry => Kind::Event,
        }
    }

    /// Type of the object.
    pub fn object(self) -> ObjectType {
        use Relation::*;
        match self {
            BornIn | HeldIn | HeadquarteredIn | Capital | WorksInCity | MadeInCity => ObjectType::Entity(Kind::City),
            LocatedIn | BornInCountry | EventCountry => ObjectType::Entity(Kind::Country),
            WorksFor | MadeBy | OrganisedBy => ObjectType::Entity(Kind::Organisation),
            FoundedBy => ObjectType::Entity(Kind::Person),
            BirthYear | CityFounded | OrgFounded | Released | EventYear => ObjectType::Year,
            Population | Employees | Price => ObjectType::Count,
            Occupation | Language | Continent | Industry | Category => ObjectType::Text,
        }
    }

    /// Whether a later update of the world may change this fact (a job, a population…).
    pub fn mutable(self) -> bool {
        use Relation::*;
        matches!(self, WorksFor | Occupation | Population | HeadquarteredIn | Employees | Price)
    }

    /// For a derived relation, the two direct relations it composes (`a` then `b`).
    pub fn composition(self) -> Option<(Relation, Relation)> {
        use Relation::*;
        match self {
            BornInCountry => Some((BornIn, LocatedIn)),
            WorksInCity => Some((WorksFor, HeadquarteredIn)),
            MadeInCity => Some((MadeBy, HeadquarteredIn)),
            EventCountry => Some((HeldIn, LocatedIn)),
            _ => None,
        }
    }

    /// Looks a relation up by its file name.
    pub fn from_name(name: &str) -> Option<Relation> {
        Relation::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The object of a fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Object {
    /// An entity id.
    Entity(u32),
    /// A year or a count.
    Number(i64),
    /// A phrase.
    Text(String),
}

/// One entity of the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    /// Dense id, equal to the entity's index in the world.
    pub id: u32,
    /// What it is.
    pub kind: Kind,
    /// Unique display name.
    pub name: String,
    /// Reserved for out-of-domain evaluation: its facts are in the corpus like any
    /// other, but no training task (instruction tuning, preferences) may use it.
    pub holdout: bool,
    /// Relative prominence in (0, 1]; prominent entities are mentioned more often.
    pub popularity: f64,
}

/// One fact: subject, relation, object, and where it shows up in the corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fact {
    /// Dense id, equal to the fact's index in the world.
    pub id: u32,
    /// Subject entity id.
    pub subject: u32,
    /// The relation.
    pub relation: Relation,
    /// The object.
    pub object: Object,
    /// The object as it is written in text (an entity's name, a number, a phrase).
    pub object_text: String,
    /// For derived (multi-hop) facts, the ids of the two facts they compose; empty otherwise.
    pub derived_from: Vec<u32>,
    /// How many times the corpus states this fact (0 for derived facts and unstated ones).
    pub mentions: u32,
}

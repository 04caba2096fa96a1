//! Generating the world's truth: entities, their attributes, and the fact table.
//!
//! Attributes are drawn so that facts agree with one another (an organisation is
//! founded after its founder turns twenty, a product is released after its maker
//! exists, a country's capital is its most populous city), because a model is
//! later asked to reason across them.

use crate::lexicon::{CATEGORIES, CONTINENTS, INDUSTRIES, LANGUAGE_SUFFIXES, OCCUPATIONS, PRESENT_YEAR};
use crate::names::{NameGen, COUNTRY_SUFFIXES};
use crate::schema::{Entity, Fact, Kind, Object, Relation};
use crate::Scale;
use std::collections::BTreeMap;
use tsukuru_core::Rng;

/// Share of each kind's entities held out for out-of-domain evaluation.
const HOLDOUT_FRACTION: f64 = 0.1;

/// Entities and direct + derived facts for `seed` at `scale`.
pub fn build(seed: u64, scale: Scale) -> (Vec<Entity>, Vec<Fact>) {
    let counts = scale.counts();
    let mut names = NameGen::new(Rng::stream(seed, "names"));
    let mut entities = Vec::new();
    let mut ids: BTreeMap<Kind, Vec<u32>> = BTreeMap::new();
    for (kind, n) in Kind::ALL.into_iter().zip(counts) {
        for _ in 0..n {
            let id = entities.len() as u32;
            entities.push(Entity { id, kind, name: names.unique(kind), holdout: false, popularity: 0.0 });
            ids.entry(kind).or_default().push(id);
        }
    }
    mark_popularity_and_holdout(seed, &mut entities, &ids);

    let mut rng = Rng::stream(seed, "attributes");
    let mut direct: Vec<(u32, Relation, Object)> = Vec::new();
    // libm, not the platform's math library: the same seed must give the same bytes on every platform.
    let log_uniform = |rng: &mut Rng, lo: f64, hi: f64| {
        libm::round(libm::exp(libm::log(lo) + rng.f64() * (libm::log(hi) - libm::log(lo)))) as i64
    };

    // Countries.
    let countries = &ids[&Kind::Country];
    for &c in countries {
        let stem = strip_suffix(&entities[c as usize].name);
        direct.push((c, Relation::Continent, Object::Text(rng.pick(CONTINENTS).to_string())));
        direct.push((c, Relation::Language, Object::Text(format!("{stem}{}", rng.pick(LANGUAGE_SUFFIXES)))));
    }
    // Cities: every country gets at least one.
    let cities = &ids[&Kind::City];
    let mut city_country = BTreeMap::new();
    let mut population = BTreeMap::new();
    for (i, &city) in cities.iter().enumerate() {
        let country = if i < countries.len() { countries[i] } else { rng.pick(countries) };
        let pop = log_uniform(&mut rng, 2_000.0, 3_000_000.0);
        city_country.insert(city, country);
        population.insert(city, pop);
        direct.push((city, Relation::LocatedIn, Object::Entity(country)));
        direct.push((city, Relation::Population, Object::Number(pop)));
        direct.push((city, Relation::CityFounded, Object::Number(rng.range(800, 1950))));
    }
    for &c in countries {
        let capital = cities
            .iter()
            .filter(|city| city_country[*city] == c)
            .max_by_key(|city| (population[*city], std::cmp::Reverse(**city)))
            .expect("every country has a city");
        direct.push((c, Relation::Capital, Object::Entity(*capital)));
    }
    // Bigger cities are more often someone's birthplace or an organisation's home.
    let city_weights: Vec<f64> = cities.iter().map(|c| (population[c] as f64).sqrt()).collect();

    // People (employers assigned after organisations exist).
    let people = &ids[&Kind::Person];
    let mut birth_year = BTreeMap::new();
    for &p in people {
        let year = rng.range(1930, 2004);
        birth_year.insert(p, year);
        direct.push((p, Relation::BornIn, Object::Entity(cities[rng.weighted(&city_weights)])));
        direct.push((p, Relation::BirthYear, Object::Number(year)));
        direct.push((p, Relation::Occupation, Object::Text(rng.pick(OCCUPATIONS).to_string())));
    }

    // Organisations: founded by someone at least twenty years old at the time.
    let orgs = &ids[&Kind::Organisation];
    let mut org_founded = BTreeMap::new();
    let mut founder_of = BTreeMap::new();
    for &o in orgs {
        let founder = rng.pick(people);
        let year = (birth_year[&founder] + rng.range(20, 45)).min(PRESENT_YEAR - 1);
        org_founded.insert(o, year);
        founder_of.insert(founder, o);
        direct.push((o, Relation::HeadquarteredIn, Object::Entity(cities[rng.weighted(&city_weights)])));
        direct.push((o, Relation::FoundedBy, Object::Entity(founder)));
        direct.push((o, Relation::OrgFounded, Object::Number(year)));
        direct.push((o, Relation::Industry, Object::Text(rng.pick(INDUSTRIES).to_string())));
        direct.push((o, Relation::Employees, Object::Number(log_uniform(&mut rng, 5.0, 200_000.0))));
    }
    for &p in people {
        // Founders often still work at what they founded.
        let employer = match founder_of.get(&p) {
            Some(&o) if rng.chance(0.5) => o,
            _ => rng.pick(orgs),
        };
        direct.push((p, Relation::WorksFor, Object::Entity(employer)));
    }
    for &product in &ids[&Kind::Product] {
        let maker = rng.pick(orgs);
        direct.push((product, Relation::MadeBy, Object::Entity(maker)));
        direct.push((product, Relation::Released, Object::Number(rng.range(org_founded[&maker], PRESENT_YEAR))));
        direct.push((product, Relation::Category, Object::Text(rng.pick(CATEGORIES).to_string())));
        direct.push((product, Relation::Price, Object::Number(log_uniform(&mut rng, 5.0, 5_000.0))));
    }
    for &event in &ids[&Kind::Event] {
        let organiser = rng.pick(orgs);
        let first = org_founded[&organiser].max(1950);
        direct.push((event, Relation::HeldIn, Object::Entity(cities[rng.weighted(&city_weights)])));
        direct.push((event, Relation::EventYear, Object::Number(rng.range(first, PRESENT_YEAR))));
        direct.push((event, Relation::OrganisedBy, Object::Entity(organiser)));
    }

    // Fact table: by subject, then in the schema's relation order.
    let order = |r: Relation| Relation::ALL.iter().position(|x| *x == r).expect("relation listed");
    direct.sort_by_key(|(s, r, _)| (*s, order(*r)));
    let mut facts: Vec<Fact> = direct
        .into_iter()
        .enumerate()
        .map(|(i, (subject, relation, object))| Fact {
            id: i as u32,
            subject,
            relation,
            object_text: object_text(&entities, &object),
            object,
            derived_from: Vec::new(),
            mentions: 0,
        })
        .collect();

    // Derived (multi-hop) facts: never stated, only inferable from two stated ones.
    let index: BTreeMap<(u32, Relation), u32> = facts.iter().map(|f| ((f.subject, f.relation), f.id)).collect();
    let mut derived = Vec::new();
    for rel in Relation::ALL.into_iter().filter(|r| r.composition().is_some()) {
        let (a, b) = rel.composition().expect("filtered");
        for &subject in &ids[&rel.subject()] {
            let first = &facts[index[&(subject, a)] as usize];
            let Object::Entity(mid) = first.object else { continue };
            let second = &facts[index[&(mid, b)] as usize];
            derived.push((subject, rel, second.object.clone(), vec![first.id, second.id]));
        }
    }
    derived.sort_by_key(|(s, r, _, _)| (*s, order(*r)));
    for (subject, relation, object, from) in derived {
        let id = facts.len() as u32;
        let text = object_text(&entities, &object);
        facts.push(Fact { id, subject, relation, object, object_text: text, derived_from: from, mentions: 0 });
    }
    (entities, facts)
}

fn object_text(entities: &[Entity], object: &Object) -> String {
    match object {
        Object::Entity(id) => entities[*id as usize].name.clone(),
        Object::Number(n) => n.to_string(),
        Object::Text(t) => t.clone(),
    }
}

fn strip_suffix(country: &str) -> &str {
    COUNTRY_SUFFIXES.iter().find_map(|s| country.strip_suffix(s)).unwrap_or(country)
}

/// Zipf-like popularity within each kind (rank r → 1/(r+1)^0.8), and a held-out tenth.
fn mark_popularity_and_holdout(seed: u64, entities: &mut [Entity], ids: &BTreeMap<Kind, Vec<u32>>) {
    let mut rng = Rng::stream(seed, "popularity");
    for members in ids.values() {
        let mut ranked = members.clone();
        rng.shuffle(&mut ranked);
        for (rank, id) in ranked.iter().enumerate() {
            entities[*id as usize].popularity = 1.0 / libm::pow((rank + 1) as f64, 0.8);
        }
        let mut pool = members.clone();
        rng.shuffle(&mut pool);
        let n = ((members.len() as f64 * HOLDOUT_FRACTION).round() as usize).max(1);
        for id in pool.into_iter().take(n) {
            entities[id as usize].holdout = true;
        }
    }
}

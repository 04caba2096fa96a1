//! Pronounceable, unique invented names built from syllables.
//!
//! Names are invented so that a model can only know the world's facts from the
//! corpus, never from pretraining elsewhere. The same generator yields "phantom"
//! names that exist nowhere in the world, for questions whose right answer is
//! "I don't know".

use crate::questions::capitalise;
use crate::schema::Kind;
use std::collections::BTreeSet;
use tsukuru_core::Rng;

const ONSETS: &[&str] = &[
    "b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "kl", "l", "m", "n", "p", "pr", "r", "s", "st", "t",
    "tr", "v", "w", "z", "th", "sh",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "io", "y"];
const CODAS: &[&str] = &["", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk", "st"];
const PLACE_SUFFIXES: &[&str] = &["ford", "holm", "mouth", "vik", "burg", "dale", "stead", "port", "wick", "ton"];
/// Endings of country names (a language name replaces them).
pub const COUNTRY_SUFFIXES: &[&str] = &["ia", "land", "mark", "stan", "ora", "essa"];
const ORG_SUFFIXES: &[&str] = &["Works", "Systems", "Holdings", "Labs", "Guild", "Company", "Foundry", "Collective"];
const PRODUCT_SERIES: &[&str] = &["Mk", "Pro", "Lite", "One", "Max", "S"];
const EVENT_KINDS: &[&str] = &["Festival", "Summit", "Fair", "Regatta", "Marathon", "Congress", "Expo", "Games"];

/// Makes unique names for each kind of entity.
#[derive(Debug)]
pub struct NameGen {
    rng: Rng,
    used: BTreeSet<String>,
}

impl NameGen {
    /// A generator drawing from `rng`.
    pub fn new(rng: Rng) -> Self {
        Self { rng, used: BTreeSet::new() }
    }

    fn word(&mut self, syllables: u64) -> String {
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(self.rng.pick(ONSETS));
            w.push_str(self.rng.pick(VOWELS));
        }
        w.push_str(self.rng.pick(CODAS));
        capitalise(&w)
    }

    fn candidate(&mut self, kind: Kind) -> String {
        let n = 1 + self.rng.below(2);
        match kind {
            Kind::Person => {
                let first = self.word(n);
                let syllables = 1 + self.rng.below(2);
                let last = self.word(syllables);
                format!("{first} {last}")
            }
            Kind::City => format!("{}{}", self.word(n), self.rng.pick(PLACE_SUFFIXES)),
            Kind::Country => format!("{}{}", self.word(n), self.rng.pick(COUNTRY_SUFFIXES)),
            Kind::Organisation => format!("{} {}", self.word(n), self.rng.pick(ORG_SUFFIXES)),
            Kind::Product => {
                let stem = self.word(n);
                format!("{stem} {} {}", self.rng.pick(PRODUCT_SERIES), 2 + self.rng.below(98))
            }
            Kind::Event => format!("{} {}", self.word(n), self.rng.pick(EVENT_KINDS)),
        }
    }

    /// A fresh name for `kind`, never returned before by this generator.
    pub fn unique(&mut self, kind: Kind) -> String {
        loop {
            let name = self.candidate(kind);
            if self.used.insert(name.clone()) {
                return name;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_deterministic() {
        let make = || {
            let mut g = NameGen::new(Rng::new(3));
            (0..2000).map(|i| g.unique(Kind::ALL[i % 6])).collect::<Vec<_>>()
        };
        let a = make();
        assert_eq!(a, make());
        let set: BTreeSet<_> = a.iter().collect();
        assert_eq!(set.len(), a.len());
        assert!(a.iter().all(|n| n.chars().next().unwrap().is_uppercase()));
    }
}

//! The world's promises: determinism, consistent truth, and honest ground truth about the text.

use std::collections::{BTreeMap, BTreeSet};
use tsukuru_world::render::DocKind;
use tsukuru_world::schema::{Kind, Object, Relation};
use tsukuru_world::{Scale, World};

fn tiny() -> World {
    World::generate(7, Scale::Tiny)
}

#[test]
fn same_seed_same_bytes_other_seed_other_world() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let files = tiny().write(a.path()).unwrap();
    tiny().write(b.path()).unwrap();
    for f in &files {
        let (x, y) = (std::fs::read(a.path().join(f)).unwrap(), std::fs::read(b.path().join(f)).unwrap());
        assert!(!x.is_empty(), "{f} is empty");
        assert_eq!(x, y, "{f} differs between two generations with the same seed");
    }
    assert_ne!(World::generate(8, Scale::Tiny).corpus, tiny().corpus);
}

#[test]
fn scales_have_the_promised_sizes() {
    let n: usize = Scale::Tiny.counts().iter().sum();
    assert!((300..1000).contains(&n), "tiny has {n} entities");
    let n: usize = Scale::Medium.counts().iter().sum();
    assert!((10_000..100_000).contains(&n), "medium has {n} entities");
}

#[test]
fn facts_are_consistent() {
    let w = tiny();
    let one = |s: u32, r: Relation| -> &Object {
        &w.facts.iter().find(|f| f.subject == s && f.relation == r).unwrap().object
    };
    let year = |s: u32, r: Relation| match one(s, r) {
        Object::Number(n) => *n,
        o => panic!("{o:?}"),
    };
    for e in &w.entities {
        match e.kind {
            Kind::Country => {
                let Object::Entity(capital) = one(e.id, Relation::Capital) else { panic!() };
                assert_eq!(one(*capital, Relation::LocatedIn), &Object::Entity(e.id), "capital outside its country");
            }
            Kind::Organisation => {
                let Object::Entity(founder) = one(e.id, Relation::FoundedBy) else { panic!() };
                assert!(year(e.id, Relation::OrgFounded) >= year(*founder, Relation::BirthYear) + 20);
            }
            Kind::Product => {
                let Object::Entity(maker) = one(e.id, Relation::MadeBy) else { panic!() };
                assert!(year(e.id, Relation::Released) >= year(*maker, Relation::OrgFounded));
            }
            _ => {}
        }
    }
    // Every derived fact is exactly the composition of the two facts it names.
    let derived: Vec<_> = w.facts.iter().filter(|f| !f.derived_from.is_empty()).collect();
    assert!(derived.len() > 300);
    for f in derived {
        let (a, b) = f.relation.composition().unwrap();
        let (fa, fb) = (&w.facts[f.derived_from[0] as usize], &w.facts[f.derived_from[1] as usize]);
        assert_eq!((fa.subject, fa.relation, fb.relation), (f.subject, a, b));
        assert_eq!(fa.object, Object::Entity(fb.subject));
        assert_eq!(fb.object, f.object);
        assert_eq!(f.mentions, 0, "derived facts are never stated");
    }
    let names: BTreeSet<_> = w.entities.iter().map(|e| &e.name).collect();
    assert_eq!(names.len(), w.entities.len(), "entity names are unique");
    assert!(w.phantoms().iter().all(|p| !names.contains(&p.name)));
}

#[test]
fn mention_counts_match_the_text_and_vary() {
    let w = tiny();
    let mut counted: BTreeMap<u32, u32> = BTreeMap::new();
    for d in &w.corpus {
        for f in &d.facts {
            *counted.entry(*f).or_default() += 1;
            let fact = &w.facts[*f as usize];
            assert!(d.text.contains(&fact.object_text), "doc {} states fact {f} without its object", d.id);
            assert!(d.text.contains(&w.entities[fact.subject as usize].name));
        }
    }
    // A document may state a fact twice; a fact counted in a doc is stated at least once there.
    for f in &w.facts {
        assert!(f.mentions >= counted.get(&f.id).copied().unwrap_or(0));
    }
    let direct = w.facts.iter().filter(|f| f.derived_from.is_empty());
    let (mut never, mut once, mut many) = (0, 0, 0);
    for f in direct {
        match f.mentions {
            0 => never += 1,
            1 => once += 1,
            m if m >= 5 => many += 1,
            _ => {}
        }
    }
    assert!(never > 0 && once > 50 && many > 20, "never {never}, once {once}, many {many}");
}

#[test]
fn heldout_templates_never_reach_the_corpus() {
    let w = tiny();
    let corpus: String = w.corpus.iter().map(|d| d.text.as_str()).collect::<Vec<_>>().join("\n");
    let heldout = tsukuru_world::templates::all().into_iter().filter(|t| t.holdout).collect::<Vec<_>>();
    // The fixed words of each held-out template (between placeholders) never appear in training text.
    for t in heldout.iter().filter(|t| t.relation.composition().is_none()) {
        let longest = t.text.split(['{', '}']).filter(|p| *p != "s" && *p != "o").max_by_key(|p| p.len()).unwrap();
        assert!(!corpus.contains(longest.trim()), "held-out template {} leaks: {longest:?}", t.id);
    }
    assert!(w.heldout.iter().all(|d| d.kind == DocKind::Heldout && !d.text.is_empty()));
    let held: Vec<_> = w.entities.iter().filter(|e| e.holdout).collect();
    for kind in Kind::ALL {
        assert!(held.iter().any(|e| e.kind == kind), "no held-out {kind:?}");
    }
}

#[test]
fn generator_output_is_pinned() {
    // Checksums (XXH3-64, cross-checked with Python's `xxhash`) of the tiny world for seed 0.
    // A change here changes every run's data: bump FORMAT_VERSION and update the pins on purpose.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("w");
    let o = tsukuru_world::generate_into(&out, 0, Scale::Tiny, false, &tsukuru_core::NoProgress).unwrap();
    let sums: BTreeMap<&str, &str> = o.manifest.files.iter().map(|f| (f.path.as_str(), f.xxh3.as_str())).collect();
    assert_eq!(sums["corpus.jsonl"], "e23f524e3884e70b");
    assert_eq!(sums["facts.jsonl"], "a4a8864c206cd924");
    assert_eq!(sums["entities.jsonl"], "d9cd5e0086e20350");
    assert_eq!(sums["tasks.jsonl"], "f59eaf7cbd33be4a");
    assert_eq!(sums["pairs.jsonl"], "1f60ac39ae1fcd16");
}

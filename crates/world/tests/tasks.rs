//! The instruction tasks and preference pairs agree with the world's truth, and what is held out
//! stays out of the in-domain examples.

use std::collections::BTreeSet;
use tsukuru_world::pairs::Flaw;
use tsukuru_world::schema::{Object, Relation};
use tsukuru_world::tasks::{Example, HeldOut, Split, TaskKind};
use tsukuru_world::{Scale, World};

fn tiny() -> World {
    World::generate(3, Scale::Tiny)
}

/// Whole-word containment, so "12" is not found in "112".
fn contains_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

#[test]
fn answers_follow_from_the_facts() {
    let w = tiny();
    let value = |id: u32| &w.facts[id as usize];
    for e in &w.tasks {
        match e.task {
            TaskKind::Fact => {
                let f = value(e.facts[0]);
                assert_eq!(e.answer, f.object_text, "{}", e.id);
                assert_eq!(e.relation, Some(f.relation));
                assert!(contains_word(&e.response, &e.answer), "{}", e.id);
                assert!(e.prompt.contains(e.subject.as_deref().unwrap()), "{}", e.id);
            }
            TaskKind::MultiHop => {
                let (a, b) = (value(e.facts[0]), value(e.facts[1]));
                assert_eq!(a.object, Object::Entity(b.subject), "{}", e.id);
                assert_eq!(e.answer, b.object_text, "{}", e.id);
                assert!(e.response.ends_with(&format!("{}.", e.answer)) || e.response.contains(&e.answer), "{}", e.id);
            }
            TaskKind::Compare => {
                let (a, b) = (value(e.facts[0]), value(e.facts[1]));
                let (Object::Number(va), Object::Number(vb)) = (&a.object, &b.object) else { panic!("{}", e.id) };
                let larger_wins =
                    matches!(e.relation, Some(Relation::Population | Relation::Employees | Relation::Price));
                let winner = if (va > vb) == larger_wins { a.subject } else { b.subject };
                assert_eq!(e.answer, w.entities[winner as usize].name, "{}", e.id);
            }
            TaskKind::Count => {
                let question = e.prompt.lines().last().unwrap();
                let n = e.facts.iter().filter(|&&f| contains_word(question, &value(f).object_text)).count();
                assert_eq!(e.answer, n.to_string(), "{}: {}", e.id, e.prompt);
            }
            TaskKind::Summary => {
                for &f in &e.facts {
                    assert!(e.prompt.contains(&w.entities[value(f).subject as usize].name), "{}", e.id);
                    assert!(e.response.contains(&value(f).object_text), "{}", e.id);
                }
            }
            TaskKind::Unknown => {
                let name = e.subject.as_deref().unwrap();
                assert!(w.entities.iter().all(|x| x.name != name), "{name} exists");
                assert!(e.prompt.contains(name) && e.response.starts_with("I don't know"), "{}", e.id);
            }
            _ => {}
        }
    }
}

#[test]
fn held_out_entities_frames_and_task_types_stay_out_of_domain() {
    let w = tiny();
    let held: Vec<&str> = w.entities.iter().filter(|e| e.holdout).map(|e| e.name.as_str()).collect();
    let in_domain: Vec<&Example> = w.tasks.iter().filter(|e| e.in_domain()).collect();
    for e in &in_domain {
        assert!(e.entities.iter().all(|&id| !w.entities[id as usize].holdout), "{}", e.id);
        assert!(!e.prompt.starts_with("Quick question about"), "{}", e.id);
        assert!(!e.prompt.starts_with("Give a one-sentence summary"), "{}", e.id);
        assert_ne!(e.task, TaskKind::Reverse, "{}", e.id);
        assert!(!e.prompt.contains("times") && !e.prompt.starts_with("Multiply"), "{}", e.id);
        if matches!(e.task, TaskKind::Fact | TaskKind::MultiHop | TaskKind::Compare) {
            assert!(held.iter().all(|h| !contains_word(&e.prompt, h)), "{} names a held-out entity", e.id);
        }
    }
    // Every task has in-domain examples (but reversal) and out-of-domain ones, for every reason.
    for task in TaskKind::ALL {
        let of = |ind: bool| w.tasks.iter().filter(|e| e.task == task && e.in_domain() == ind).count();
        assert_eq!(of(true) == 0, task == TaskKind::Reverse, "{task:?}");
        assert!(of(false) > 0, "{task:?}");
    }
    for reason in [HeldOut::Entity, HeldOut::Template, HeldOut::Task] {
        assert!(w.tasks.iter().any(|e| e.held_out == vec![reason]), "{reason:?}");
    }
    // Training sees in-domain examples only; every split gets some.
    assert!(w.tasks.iter().filter(|e| e.split == Split::Train).all(Example::in_domain));
    for split in [Split::Train, Split::Validation, Split::Test] {
        assert!(in_domain.iter().any(|e| e.split == split), "{split:?}");
    }
    let ids: BTreeSet<&str> = w.tasks.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), w.tasks.len(), "ids are unique");
}

#[test]
fn pairs_reject_one_flaw_and_keep_the_example_split() {
    let w = tiny();
    let by_id: std::collections::BTreeMap<&str, &Example> = w.tasks.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut flaws = BTreeSet::new();
    for p in &w.pairs {
        let source = p.id.rsplit_once('/').map(|(s, _)| s).unwrap();
        let e = by_id[source];
        assert_eq!((p.split, &p.held_out, &p.prompt, &p.chosen), (e.split, &e.held_out, &e.prompt, &e.response));
        assert_ne!(p.chosen, p.rejected);
        match p.flaw {
            Flaw::WrongFact => {
                assert!(!contains_word(&p.rejected, &e.answer) || e.task == TaskKind::MultiHop, "{}", p.id)
            }
            Flaw::Hallucination => {
                assert_eq!(e.task, TaskKind::Unknown);
                assert!(!p.rejected.contains("don't know"));
            }
            Flaw::FalseRefusal => {
                assert!(p.rejected.starts_with("I don't know") && e.task != TaskKind::Unknown);
                assert!(w.entities.iter().any(|x| Some(&x.name) == e.subject.as_ref()), "{} exists", p.id);
            }
            Flaw::Verbose => assert!(p.rejected.len() > p.chosen.len() + 40 && p.rejected.contains(&p.chosen)),
            Flaw::Rude => assert!(p.rejected.ends_with(&p.chosen)),
        }
        flaws.insert(p.flaw);
    }
    assert_eq!(flaws.len(), 5);
    assert!(w.pairs.iter().any(|p| p.split == Split::Train) && w.pairs.iter().any(|p| p.split == Split::Test));
}

#[test]
fn same_seed_same_tasks() {
    assert_eq!(tiny().tasks, tiny().tasks);
    assert_ne!(World::generate(4, Scale::Tiny).tasks, tiny().tasks);
}

#[test]
fn example_and_pair_ids_are_unique() {
    let w = tiny();
    let ids: std::collections::BTreeSet<&str> = w.tasks.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), w.tasks.len(), "two examples share an id");
    let pairs: std::collections::BTreeSet<&str> = w.pairs.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(pairs.len(), w.pairs.len(), "two pairs share an id");
}

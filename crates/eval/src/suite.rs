//! A task suite: the evaluation items a `--tasks` SPEC names, gathered from users' files and the
//! built-in sources.
//!
//! SPEC is a comma-separated list of entries:
//!
//! - `FILE.jsonl`: users' items ([`crate::items`]), reported under the file's stem unless an item
//!   names its task.
//! - `world:DIR` (the test split) or `world-val:DIR` (the validation split, for choosing
//!   checkpoints and settings) on a generated world:
//!   - `world/<task>` for each instruction task (`fact`, `multi_hop`, …, `unknown`): the question
//!     asked through the chat template, scored by the task's rule, in-domain unless the example is
//!     held out; up to `per_group` per task and domain, a seeded sample. Few-shot examples come
//!     from the other splits, never from test (for `world`: train and validation; for
//!     `world-val`: train).
//!   - `world/facts`: fact completion as multiple choice ("X was born in" and four cities), on
//!     facts the corpus states (in-domain) and facts it never states (out-of-domain); facts with
//!     even ids belong to the validation split, odd ids to test.
//! - `docs:DIR` on prepared text (`tsukuru data prepare`): up to `per_group` documents of its
//!   training split and as many of its validation split, scored by bits per byte. Half of this
//!   task was trained on by construction: a contamination check against the same data finds
//!   those documents, and the scores of the two subsets show what memorisation is worth.
//!
//! Items are identified by (task, id), which must be unique across the suite.

use crate::items::{read_jsonl, Domain, Item, ItemSplit};
use crate::probe::{fact_questions, ProbeConfig};
use crate::{EvalError, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tsukuru_core::Rng;
use tsukuru_world::tasks::{Example, Scoring, Split};

/// Settings of the built-in sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteOptions {
    /// Items per task and domain (world), or per split (docs), at most.
    pub per_group: usize,
    /// Few-shot candidates kept per world task.
    pub fewshot_pool: usize,
    /// Seed of the samples.
    pub seed: u64,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self { per_group: 40, fewshot_pool: 16, seed: 0 }
    }
}

/// One entry of a SPEC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A JSONL file of items.
    File(PathBuf),
    /// A generated world's built-in tasks on one split.
    World(PathBuf, Split),
    /// Documents of prepared text.
    Docs(PathBuf),
}

/// The sources of `spec`, or an error naming the bad entry.
pub fn parse_spec(spec: &str) -> Result<Vec<Source>> {
    let entries: Vec<&str> = spec.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if entries.is_empty() {
        return Err(EvalError::Config(
            "--tasks is empty; give FILE.jsonl, world:DIR, world-val:DIR or docs:DIR (comma-separated)".into(),
        ));
    }
    entries
        .into_iter()
        .map(|e| {
            let source = match e.split_once(':') {
                Some(("world", dir)) => Source::World(dir.into(), Split::Test),
                Some(("world-val", dir)) => Source::World(dir.into(), Split::Validation),
                Some(("docs", dir)) => Source::Docs(dir.into()),
                _ if e.ends_with(".jsonl") => Source::File(e.into()),
                _ => {
                    return Err(EvalError::Config(format!(
                        "--tasks entry `{e}` is neither a .jsonl file nor world:DIR, world-val:DIR or docs:DIR"
                    )))
                }
            };
            Ok(source)
        })
        .collect()
}

/// Items of one task, test items and few-shot examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Its name.
    pub name: String,
    /// Scored items.
    pub items: Vec<Item>,
    /// Examples shown before them.
    pub fewshot: Vec<Item>,
}

/// Every task of a SPEC, in the order first named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suite {
    /// The tasks.
    pub tasks: Vec<Task>,
}

impl Suite {
    /// Reads every source of `spec`.
    pub fn load(spec: &str, opts: &SuiteOptions) -> Result<Self> {
        let mut items = Vec::new();
        for source in parse_spec(spec)? {
            match source {
                Source::File(path) => {
                    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    let mut file = read_jsonl(&path)?;
                    file.iter_mut().for_each(|i| i.default_task(&stem));
                    items.extend(file);
                }
                Source::World(dir, split) => items.extend(world_items(&dir, split, opts)?),
                Source::Docs(dir) => items.extend(doc_items(&dir, opts)?),
            }
        }
        Self::from_items(items)
    }

    /// Groups items (each naming its task) into tasks; (task, id) must be unique.
    pub fn from_items(items: Vec<Item>) -> Result<Self> {
        let mut seen = BTreeSet::new();
        let mut tasks: Vec<Task> = Vec::new();
        for item in items {
            let name = item.task().unwrap_or("tasks").to_string();
            if !seen.insert((name.clone(), item.id().to_string())) {
                return Err(EvalError::Config(format!(
                    "task `{name}` has two items with id `{}`; ids must be unique within a task",
                    item.id()
                )));
            }
            let task = match tasks.iter().position(|t| t.name == name) {
                Some(i) => &mut tasks[i],
                None => {
                    tasks.push(Task { name, items: Vec::new(), fewshot: Vec::new() });
                    tasks.last_mut().expect("just pushed")
                }
            };
            match item.split() {
                ItemSplit::Test => task.items.push(item),
                ItemSplit::Fewshot => task.fewshot.push(item),
            }
        }
        if let Some(t) = tasks.iter().find(|t| t.items.is_empty()) {
            return Err(EvalError::Config(format!("task `{}` has few-shot examples but no test items", t.name)));
        }
        Ok(Self { tasks })
    }

    /// Scored items in all.
    pub fn len(&self) -> usize {
        self.tasks.iter().map(|t| t.items.len()).sum()
    }

    /// True when nothing is scored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The generation items only (tasks left without any are dropped; few-shot examples stay).
    pub fn generation_only(self) -> Self {
        let tasks = self
            .tasks
            .into_iter()
            .map(|t| Task { items: t.items.into_iter().filter(|i| matches!(i, Item::Generate { .. })).collect(), ..t })
            .filter(|t| !t.items.is_empty())
            .collect();
        Self { tasks }
    }

    /// A hash of every item and example: equal suites, equal fingerprints.
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).expect("items serialise");
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    }
}

/// The world's instruction tasks and fact questions for `split` (see the module header).
fn world_items(dir: &Path, split: Split, opts: &SuiteOptions) -> Result<Vec<Item>> {
    if split == Split::Train {
        return Err(EvalError::Config("the world's training split is never evaluated on".into()));
    }
    let (_, entities, facts) = tsukuru_world::World::load_truth(dir)?;
    let examples: Vec<Example> = tsukuru_world::read_jsonl(&dir.join("tasks.jsonl"))?;
    let mut items = Vec::new();
    let mut groups: BTreeMap<(&'static str, bool), Vec<&Example>> = BTreeMap::new();
    let mut pools: BTreeMap<&'static str, Vec<&Example>> = BTreeMap::new();
    for e in &examples {
        if e.split == split {
            groups.entry((e.task.name(), e.in_domain())).or_default().push(e);
        } else if e.split == Split::Train || split == Split::Test {
            pools.entry(e.task.name()).or_default().push(e);
        }
    }
    let as_item = |e: &Example, task: &str, item_split: ItemSplit| Item::Generate {
        id: e.id.clone(),
        task: Some(format!("world/{task}")),
        prompt: e.prompt.clone(),
        answer: if e.scoring == Scoring::Rouge { e.response.clone() } else { e.answer.clone() },
        reference: Some(e.response.clone()),
        scoring: e.scoring,
        chat: true,
        until: Vec::new(),
        domain: if e.in_domain() { Domain::In } else { Domain::Out },
        split: item_split,
    };
    for ((task, in_domain), mut group) in groups {
        Rng::stream(opts.seed, &format!("suite/world/{task}/{in_domain}")).shuffle(&mut group);
        items.extend(group.into_iter().take(opts.per_group).map(|e| as_item(e, task, ItemSplit::Test)));
    }
    for (task, mut pool) in pools {
        Rng::stream(opts.seed, &format!("suite/world-fewshot/{task}")).shuffle(&mut pool);
        items.extend(pool.into_iter().take(opts.fewshot_pool).map(|e| as_item(e, task, ItemSplit::Fewshot)));
    }
    // Facts: split by id parity, so validation and test never share a fact.
    let parity = u32::from(split == Split::Test);
    let probe = ProbeConfig { facts: usize::MAX, choices: 4, seed: opts.seed };
    for (group, domain) in fact_questions(&entities, &facts, &probe).into_iter().zip([Domain::In, Domain::Out]) {
        for q in group.into_iter().filter(|q| q.fact.id % 2 == parity).take(opts.per_group) {
            let gold = q.options.iter().position(|o| *o == q.answer).expect("the answer is an option");
            items.push(Item::Choice {
                id: format!("fact/{}", q.fact.id),
                task: Some("world/facts".into()),
                context: q.prompt,
                choices: q.options.iter().map(|o| o.trim_start().to_string()).collect(),
                gold,
                delimiter: " ".into(),
                domain,
                split: ItemSplit::Test,
            });
        }
    }
    Ok(items)
}

/// Up to `per_group` documents of each split of prepared text, a seeded sample of each.
fn doc_items(dir: &Path, opts: &SuiteOptions) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for split in ["train", "val"] {
        // Reservoir sampling: one pass, memory for the sample only, however large the split.
        let mut rng = Rng::stream(opts.seed, &format!("suite/docs/{split}"));
        let mut sample: Vec<(u64, String)> = Vec::new();
        for (i, record) in tsukuru_data::shards::SplitReader::open(dir, split)?.enumerate() {
            let record = record?;
            if sample.len() < opts.per_group {
                sample.push((i as u64, record.text));
            } else {
                let j = rng.below(i as u64 + 1) as usize;
                if j < opts.per_group {
                    sample[j] = (i as u64, record.text);
                }
            }
        }
        sample.sort();
        items.extend(sample.into_iter().map(|(i, text)| Item::Text {
            id: format!("{split}/{i}"),
            task: Some("docs".into()),
            text,
            domain: Domain::In,
        }));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_their_sources_and_bad_entries_are_refused() {
        let s = parse_spec("a/b.jsonl, world:runs/x/world,world-val:w ,docs:runs/x/data").unwrap();
        assert_eq!(
            s,
            vec![
                Source::File("a/b.jsonl".into()),
                Source::World("runs/x/world".into(), Split::Test),
                Source::World("w".into(), Split::Validation),
                Source::Docs("runs/x/data".into()),
            ]
        );
        assert!(parse_spec("mmlu").unwrap_err().to_string().contains("`mmlu`"));
        assert!(parse_spec(" , ").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn world_tasks_keep_splits_apart_and_tag_domains() {
        let dir = tempfile::tempdir().unwrap();
        tsukuru_world::generate_into(
            dir.path(),
            1,
            tsukuru_world::Scale::Tiny,
            false,
            &tsukuru_core::progress::NoProgress,
        )
        .unwrap();
        let opts = SuiteOptions { per_group: 5, fewshot_pool: 3, seed: 0 };
        let world = dir.path().display().to_string();
        let test = Suite::load(&format!("world:{world}"), &opts).unwrap();
        let val = Suite::load(&format!("world-val:{world}"), &opts).unwrap();
        let examples: Vec<Example> = tsukuru_world::read_jsonl(&dir.path().join("tasks.jsonl")).unwrap();
        let split_of: BTreeMap<&str, Split> = examples.iter().map(|e| (e.id.as_str(), e.split)).collect();
        let ids = |s: &Suite, fewshot: bool| -> BTreeSet<String> {
            s.tasks
                .iter()
                .flat_map(|t| if fewshot { &t.fewshot } else { &t.items })
                .map(|i| i.id().to_string())
                .collect()
        };
        assert!(ids(&test, false).is_disjoint(&ids(&val, false)), "validation and test items overlap");
        for id in ids(&val, true) {
            assert_eq!(split_of[id.as_str()], Split::Train, "validation few-shot example {id} is not training data");
        }
        for id in ids(&test, true) {
            assert_ne!(split_of[id.as_str()], Split::Test, "a test item is shown as an example: {id}");
        }
        let facts = test.tasks.iter().find(|t| t.name == "world/facts").unwrap();
        let domains: BTreeSet<_> = facts.items.iter().map(|i| i.domain()).collect();
        assert_eq!(domains, BTreeSet::from([Domain::In, Domain::Out]));
        let reverse = test.tasks.iter().find(|t| t.name == "world/reverse").unwrap();
        assert!(reverse.items.iter().all(|i| i.domain() == Domain::Out), "reversal is a held-out task");
        assert_eq!(test.fingerprint(), Suite::load(&format!("world:{world}"), &opts).unwrap().fingerprint());
    }

    #[test]
    fn duplicate_ids_within_a_task_are_refused() {
        let text = |id: &str, task: &str| Item::Text {
            id: id.into(),
            task: Some(task.into()),
            text: "words".into(),
            domain: Domain::In,
        };
        assert!(Suite::from_items(vec![text("a", "x"), text("a", "y")]).is_ok());
        let err = Suite::from_items(vec![text("a", "x"), text("a", "x")]).unwrap_err().to_string();
        assert!(err.contains("task `x`") && err.contains("`a`"), "{err}");
    }
}

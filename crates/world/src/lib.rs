//! tsukuru-world: the built-in synthetic world, the default data of every stage.
//!
//! A seeded generator invents entities (people, cities, countries, organisations,
//! products, events) and facts about them, then renders an encyclopedia-style
//! corpus and short narratives in which each fact is stated in paraphrased
//! templates: some facts many times, some once, some never, and multi-hop facts
//! only through their parts. The truth is written beside the text, so later
//! stages derive questions, preference pairs, updates and tool tasks from it and
//! can tell what a model could have learned. A tenth of each kind of entity and
//! one template per relation are held out for out-of-domain evaluation. Instruction
//! tasks ([`tasks`]) and preference pairs ([`pairs`]) are drawn from the same truth.
//!
//! Same seed and scale → byte-identical files (see [`World::write`]).

mod build;
pub mod lexicon;
mod names;
pub mod pairs;
pub mod questions;
pub mod render;
pub mod schema;
mod skills;
pub mod tasks;
pub mod templates;

use render::{Doc, Renderer, Weights};
use schema::{Entity, Fact};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use tsukuru_core::atomic::AtomicFile;
use tsukuru_core::error::IoContext;
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::progress::Unit;
use tsukuru_core::{Manifest, Outcome, OutputDir, Prepared, Progress, Rng};

/// On-disk format version of a world directory (docs/ARTIFACTS.md).
pub const FORMAT_VERSION: u32 = 4;
/// Artifact name in the manifest.
pub const ARTIFACT: &str = "world";

/// Files of a world directory besides its manifest.
pub const FILES: [&str; 8] = [
    "entities.jsonl",
    "facts.jsonl",
    "corpus.jsonl",
    "heldout.jsonl",
    "templates.jsonl",
    "phantoms.jsonl",
    "tasks.jsonl",
    "pairs.jsonl",
];

/// How big a world to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// ~400 entities, ~0.3 MB of text: seconds to train on.
    #[default]
    Tiny,
    /// ~4,000 entities.
    Small,
    /// ~40,000 entities.
    Medium,
}

impl Scale {
    /// Entity counts in [`schema::Kind::ALL`] order: countries, cities, people, organisations, products, events.
    pub fn counts(self) -> [usize; 6] {
        let base = [8, 40, 200, 60, 60, 40];
        let factor = match self {
            Scale::Tiny => 1,
            Scale::Small => 10,
            Scale::Medium => 100,
        };
        base.map(|n| n * factor)
    }

    /// Parses `tiny`, `small` or `medium`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tiny" => Some(Scale::Tiny),
            "small" => Some(Scale::Small),
            "medium" => Some(Scale::Medium),
            _ => None,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Scale::Tiny => "tiny",
            Scale::Small => "small",
            Scale::Medium => "medium",
        }
    }
}

/// Errors reading a world back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// File system or manifest problem.
    #[error(transparent)]
    Core(#[from] tsukuru_core::Error),
    /// A line of a world file did not parse.
    #[error("{path}:{line}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// The whole world: truth and text.
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    /// Seed it was generated from.
    pub seed: u64,
    /// Scale it was generated at.
    pub scale: Scale,
    /// Entities, indexed by id.
    pub entities: Vec<Entity>,
    /// Facts, indexed by id: direct ones first, then derived ones.
    pub facts: Vec<Fact>,
    /// Training corpus: articles then narratives.
    pub corpus: Vec<Doc>,
    /// Held-out phrasings for out-of-domain evaluation (never in the corpus).
    pub heldout: Vec<Doc>,
    /// Instruction examples with their answers, splits and held-out reasons.
    pub tasks: Vec<tasks::Example>,
    /// Preference pairs drawn from the examples.
    pub pairs: Vec<pairs::PreferencePair>,
}

impl World {
    /// Generates the world for `seed` at `scale`. Pure and deterministic.
    pub fn generate(seed: u64, scale: Scale) -> Self {
        let (entities, mut facts) = build::build(seed, scale);
        let templates = templates::all();
        let mut renderer = Renderer::new(&entities, &mut facts, &templates);
        let mut rng = Rng::stream(seed, "corpus");
        let mut corpus = Vec::new();
        for e in &entities {
            let id = corpus.len() as u32;
            corpus.push(renderer.article(&mut rng, id, e.id));
        }
        let weights = Weights::new(&entities);
        for _ in 0..entities.len() {
            let id = corpus.len() as u32;
            corpus.push(renderer.narrative(&mut rng, id, &weights));
        }
        let mut heldout = Vec::new();
        for e in &entities {
            if let Some(doc) = renderer.heldout(heldout.len() as u32, e.id) {
                heldout.push(doc);
            }
        }
        let mut world = World { seed, scale, entities, facts, corpus, heldout, tasks: Vec::new(), pairs: Vec::new() };
        world.tasks = tasks::generate(&world);
        world.pairs = pairs::generate(&world, &world.tasks);
        world
    }

    /// Writes the world's files into `dir` (which must exist). The caller writes the manifest.
    ///
    /// Files: `entities.jsonl`, `facts.jsonl`, `corpus.jsonl`, `heldout.jsonl`,
    /// `templates.jsonl`, `phantoms.jsonl` (names of entities that do not exist), `tasks.jsonl`
    /// (instruction examples) and `pairs.jsonl` (preference pairs).
    pub fn write(&self, dir: &Path) -> Result<Vec<String>, Error> {
        write_jsonl(dir, "entities.jsonl", &self.entities)?;
        write_jsonl(dir, "facts.jsonl", &self.facts)?;
        write_jsonl(dir, "corpus.jsonl", &self.corpus)?;
        write_jsonl(dir, "heldout.jsonl", &self.heldout)?;
        write_jsonl(dir, "templates.jsonl", &templates::all())?;
        write_jsonl(dir, "phantoms.jsonl", &self.phantoms())?;
        write_jsonl(dir, "tasks.jsonl", &self.tasks)?;
        write_jsonl(dir, "pairs.jsonl", &self.pairs)?;
        Ok(FILES.iter().map(|s| s.to_string()).collect())
    }

    /// Names, one per kind and several per kind, that no entity of this world has.
    pub fn phantoms(&self) -> Vec<Phantom> {
        let mut gen = names::NameGen::new(Rng::stream(self.seed, "phantoms"));
        let taken: std::collections::BTreeSet<&str> = self.entities.iter().map(|e| e.name.as_str()).collect();
        let per_kind = (self.entities.len() / 20).max(10);
        let mut out = Vec::new();
        for kind in schema::Kind::ALL {
            while out.iter().filter(|p: &&Phantom| p.kind == kind).count() < per_kind {
                let name = gen.unique(kind);
                if !taken.contains(name.as_str()) {
                    out.push(Phantom { kind, name });
                }
            }
        }
        out
    }

    /// Counts for the manifest and the command's summary.
    pub fn stats(&self) -> serde_json::Value {
        let direct: Vec<&Fact> = self.facts.iter().filter(|f| f.derived_from.is_empty()).collect();
        let mentioned = |pred: &dyn Fn(u32) -> bool| direct.iter().filter(|f| pred(f.mentions)).count();
        serde_json::json!({
            "entities": self.entities.len(),
            "holdout_entities": self.entities.iter().filter(|e| e.holdout).count(),
            "facts": self.facts.len(),
            "direct_facts": direct.len(),
            "derived_facts": self.facts.len() - direct.len(),
            "facts_never_stated": mentioned(&|m| m == 0),
            "facts_stated_once": mentioned(&|m| m == 1),
            "facts_stated_5_or_more": mentioned(&|m| m >= 5),
            "corpus_docs": self.corpus.len(),
            "corpus_bytes": self.corpus.iter().map(|d| d.text.len()).sum::<usize>(),
            "heldout_docs": self.heldout.len(),
            "tasks": self.tasks.len(),
            "tasks_train": self.tasks.iter().filter(|t| t.split == tasks::Split::Train).count(),
            "tasks_out_of_domain": self.tasks.iter().filter(|t| !t.in_domain()).count(),
            "pairs": self.pairs.len(),
        })
    }

    /// Reads the truth (entities and facts) of a generated world directory.
    pub fn load_truth(dir: &Path) -> Result<(Manifest, Vec<Entity>, Vec<Fact>), Error> {
        let manifest = Manifest::expect(dir, ARTIFACT, "run `tsukuru world generate --out DIR` first")?;
        Ok((manifest, read_jsonl(&dir.join("entities.jsonl"))?, read_jsonl(&dir.join("facts.jsonl"))?))
    }
}

/// Generates the world for `seed` at `scale` into `out` with its manifest, unless the same
/// world is already complete there (`--force` replaces a different tsukuru output).
pub fn generate_into(
    out: &Path,
    seed: u64,
    scale: Scale,
    force: bool,
    progress: &dyn Progress,
) -> Result<Outcome, Error> {
    let params = serde_json::json!({ "seed": seed, "scale": scale, "generator": FORMAT_VERSION });
    let mut manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match OutputDir::prepare(out, ARTIFACT, &manifest.fingerprint, force)? {
        Prepared::Done(manifest) => return Ok(Outcome { manifest, skipped: true }),
        Prepared::Fresh(dir) | Prepared::Resume(dir) => dir,
    };
    progress.phase("world", None, Unit::Items);
    let world = World::generate(seed, scale);
    let files = world.write(dir.path())?;
    manifest.files = files.iter().map(|f| FileEntry::of(dir.path(), f)).collect::<Result<_, _>>()?;
    manifest.stats = world.stats();
    progress.finish(&format!("{} entities, {} facts", world.entities.len(), world.facts.len()));
    dir.finish(&manifest)?;
    Ok(Outcome { manifest, skipped: false })
}

/// A name that no entity of the world has, for "I don't know" questions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phantom {
    /// The kind of entity the name looks like.
    pub kind: schema::Kind,
    /// The invented name.
    pub name: String,
}

/// Reads a JSONL file of `T`, naming the line of any error.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, Error> {
    let f = fs::File::open(path).at("opening", path)?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.at("reading", path)?;
        out.push(serde_json::from_str(&line).map_err(|source| Error::Parse {
            path: path.display().to_string(),
            line: i + 1,
            source,
        })?);
    }
    Ok(out)
}

fn write_jsonl<T: Serialize>(dir: &Path, name: &str, rows: &[T]) -> Result<(), Error> {
    let path = dir.join(name);
    let mut f = AtomicFile::create(&path)?;
    for row in rows {
        serde_json::to_writer(&mut f, row).map_err(std::io::Error::from).at("writing", &path)?;
        f.write_all(b"\n").at("writing", &path)?;
    }
    Ok(f.commit()?)
}

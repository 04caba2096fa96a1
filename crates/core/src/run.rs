//! The run directory: one folder per run, one subfolder per stage.
//!
//! ```text
//! runs/NAME/config.resolved.toml  world/  data/  tokenizer/tokenizer.json  tokens/  base/step-NNNNNNN/
//!           sft/step-NNNNNNN/  align/step-NNNNNNN/  eval/  tasks-eval/  selection/  contamination.json
//!           final-eval/  report.md  plots/*.svg
//! ```

use std::path::{Path, PathBuf};

/// Paths of one run's stages.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// A run rooted at `root` (usually `runs/NAME`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The run's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The resolved config the run was started with.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.resolved.toml")
    }
    /// Output of `world generate`.
    pub fn world(&self) -> PathBuf {
        self.root.join("world")
    }
    /// Output of `data prepare` (text shards).
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    /// Output of `tokenizer train`.
    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer")
    }
    /// Output of `data tokenize` (token shards).
    pub fn tokens(&self) -> PathBuf {
        self.root.join("tokens")
    }
    /// Output of `pretrain` (checkpoints, metrics.jsonl).
    pub fn base(&self) -> PathBuf {
        self.root.join("base")
    }
    /// Output of `sft` (instruction-tuned checkpoints, metrics.jsonl).
    pub fn sft(&self) -> PathBuf {
        self.root.join("sft")
    }
    /// Output of `align` (preference-optimised checkpoints, metrics.jsonl, reference.json).
    pub fn align(&self) -> PathBuf {
        self.root.join("align")
    }
    /// Evaluation of the base model.
    pub fn eval(&self) -> PathBuf {
        self.root.join("eval")
    }
    /// The world's instruction tasks asked of each stage's model (base, sft, …).
    pub fn tasks_eval(&self) -> PathBuf {
        self.root.join("tasks-eval")
    }
    /// The checkpoint chosen on validation items, and why (`tsukuru select`).
    pub fn selection(&self) -> PathBuf {
        self.root.join("selection")
    }
    /// Which test items occur in the training data (`tsukuru eval contamination`).
    pub fn contamination(&self) -> PathBuf {
        self.root.join("contamination.json")
    }
    /// The final model on the test tasks, with clean and contaminated columns.
    pub fn final_eval(&self) -> PathBuf {
        self.root.join("final-eval")
    }
    /// Phase 0's view of the run's pretraining budget (a report-card section in Markdown).
    pub fn plan(&self) -> PathBuf {
        self.root.join("plan.md")
    }
    /// The run's report card.
    pub fn report(&self) -> PathBuf {
        self.root.join("report.md")
    }
    /// The report card's SVG plots.
    pub fn plots(&self) -> PathBuf {
        self.root.join("plots")
    }
}

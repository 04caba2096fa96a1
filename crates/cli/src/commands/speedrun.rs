//! `tsukuru speedrun`: every stage that exists, in order, into one run directory.
//!
//! world → data prepare → tokenizer train → data tokenize → the compute plan (phase 0: the
//! pretraining budget and the split Epoch AI's law would make of it) → pretrain → evaluate (bits per byte
//! against a unigram baseline, the world's fact probe, samples) → sft (on the world's instruction
//! tasks unless the config lists sources) → align (DPO on the world's preference pairs) → the
//! instruction tasks asked of base, sft and align → the checkpoint chosen among sft's and align's
//! on validation items → that model on the test tasks, each item checked for contamination → the
//! report card (`report.md`, `plots/`). Each stage skips
//! when its output is complete with the same settings, and pretraining resumes from its latest
//! checkpoint, so a rerun after a kill picks up where it stopped.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tsukuru_core::run::RunDir;
use tsukuru_core::Progress;
use tsukuru_data::PrepareConfig;
use tsukuru_eval::base::{evaluate_base, BaseEvalConfig, BaseEvalInputs, BaseEvalSummary};
use tsukuru_eval::chat_tasks::{evaluate_stages, TaskEvalConfig};
use tsukuru_eval::harness::HarnessConfig;
use tsukuru_eval::suite::{Suite, SuiteOptions};
use tsukuru_tokenizer::TokenizerConfig;
use tsukuru_train::align::AlignConfig;
use tsukuru_train::pretrain::PretrainConfig;
use tsukuru_train::sft::{SftConfig, SourceConfig};
use tsukuru_world::Scale;

/// The built-in speedrun config.
pub const TINY: &str = include_str!("../../../../configs/tiny.toml");

/// Arguments of `speedrun`.
#[derive(Args, Debug)]
pub struct SpeedrunArgs {
    /// Run name: output goes to RUNS_DIR/NAME.
    #[arg(long, default_value = "speedrun")]
    pub run: String,
    /// Directory holding runs.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Config file (default: the built-in configs/tiny.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set world.seed=3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Replace earlier outputs of this run made with other settings.
    #[arg(long)]
    pub force: bool,
    /// A smoke run: 20 pretraining steps with small evaluations (the run is named NAME-quick).
    #[arg(long)]
    pub quick: bool,
    /// Device for pretraining: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The whole speedrun config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedrunConfig {
    /// World generation.
    pub world: WorldSection,
    /// Data preparation.
    #[serde(default)]
    pub data: PrepareConfig,
    /// Tokenizer training.
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    /// Tokenization.
    pub tokens: TokensSection,
    /// Pretraining.
    pub pretrain: PretrainConfig,
    /// Evaluation of the base model.
    #[serde(default)]
    pub eval: BaseEvalConfig,
    /// Instruction tuning (with no sources given, the run's own world tasks).
    #[serde(default)]
    pub sft: SftConfig,
    /// Alignment on the world's preference pairs.
    #[serde(default)]
    pub align: AlignConfig,
    /// The instruction tasks asked of each stage's model.
    #[serde(default)]
    pub task_eval: TaskEvalConfig,
    /// The final model on the test tasks, with contamination.
    #[serde(default)]
    pub final_eval: FinalEvalSection,
}

/// `[final_eval]` of a speedrun config: the checkpoint chosen on validation items, evaluated on test.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinalEvalSection {
    /// The metric the checkpoint is chosen by (see `tsukuru select`).
    pub select_metric: String,
    /// Items per task and domain (documents per split), at most.
    pub per_group: usize,
    /// Few-shot examples per item.
    pub num_fewshot: usize,
    /// N-gram length of the contamination check.
    pub n: usize,
}

impl Default for FinalEvalSection {
    fn default() -> Self {
        Self { select_metric: "in_domain".into(), per_group: 40, num_fewshot: 0, n: 13 }
    }
}

/// `[world]` of a speedrun config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldSection {
    /// Seed of the world.
    pub seed: u64,
    /// Scale of the world.
    pub scale: Scale,
}

/// `[tokens]` of a speedrun config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// Tokens per shard.
    pub shard_tokens: u64,
}

/// Runs the speedrun.
pub fn run(a: SpeedrunArgs, progress: &dyn Progress) -> Result<()> {
    if a.run.is_empty() || a.run.contains(['/', '\\']) || a.run.starts_with('.') {
        bail!("--run '{}' must be a plain directory name", a.run);
    }
    let mut sets = a.sets.clone();
    if a.quick {
        // Put first, so that explicit --set values still win.
        let quick = [
            "pretrain.steps=20",
            "pretrain.eval_every=10",
            "pretrain.eval_batches=2",
            "pretrain.checkpoint_every=10",
            "eval.probe_facts=20",
            "eval.samples=1",
            "sft.steps=10",
            "sft.eval_every=5",
            "sft.eval_examples=16",
            "sft.checkpoint_every=5",
            "align.steps=6",
            "align.eval_every=3",
            "align.eval_pairs=16",
            "align.max_train_pairs=64",
            "align.checkpoint_every=3",
            "task_eval.per_group=3",
            "final_eval.per_group=3",
        ];
        sets.splice(0..0, quick.iter().map(|s| s.to_string()));
    }
    let cfg: SpeedrunConfig = tsukuru_core::config::load(a.config.as_deref(), TINY, &sets)?;
    let name = if a.quick { format!("{}-quick", a.run) } else { a.run.clone() };
    cfg.data.validate()?;
    cfg.tokenizer.validate()?;
    let run = RunDir::new(a.runs_dir.join(&name));
    std::fs::create_dir_all(run.root()).with_context(|| format!("creating {}", run.root().display()))?;
    let resolved = toml::to_string(&cfg).context("serialising the resolved config")?;
    if let Ok(old) = std::fs::read_to_string(run.config()) {
        if old != resolved && !a.force {
            bail!(
                "{} was made with a different config; pass --force to redo the run with this one, or choose another --run",
                run.config().display()
            );
        }
    }
    tsukuru_core::atomic::write_atomic(run.config(), resolved.as_bytes())?;

    world_tokens(&run, &cfg, a.force, progress)?;
    plan(&run, &cfg.pretrain)?;
    let device = super::pretrain::device(&a.device)?;
    super::pretrain::pretrain(&run.tokens(), &run.base(), &cfg.pretrain, &device, true, a.force, progress)?;
    let inputs = BaseEvalInputs { model: &run.base(), tokens: &run.tokens(), world: Some(&run.world()) };
    let eval = evaluate_base(inputs, &run.eval(), &cfg.eval, &device, a.force, progress)
        .with_context(|| format!("evaluating into {}", run.eval().display()))?;
    // The manifest's stats are the evaluation's summary (also in eval/summary.json).
    let summary: BaseEvalSummary = serde_json::from_value(eval.manifest.stats.clone())
        .with_context(|| format!("reading the summary in {}", run.eval().join("manifest.json").display()))?;
    let stated = summary.probe_stated;
    let detail = format!(
        "{:.3} bits/byte vs unigram {:.3}; stated facts {:.0}% (chance {:.0}%)",
        summary.model.bits_per_byte,
        summary.unigram.bits_per_byte,
        100.0 * stated.map_or(f64::NAN, |g| g.choice_accuracy),
        100.0 * stated.map_or(f64::NAN, |g| g.chance),
    );
    super::report("evaluate", &run.eval(), eval.skipped, &detail);
    let mut sft = cfg.sft.clone();
    if sft.sources.is_empty() {
        let world = SourceConfig {
            name: "world".into(),
            world: Some(run.world()),
            tasks: None,
            jsonl: None,
            ratio: 1.0,
            epochs: None,
        };
        sft.sources.push(world);
    }
    super::sft::sft(&run.base(), &run.sft(), &sft, &device, true, a.force, progress)?;
    let pairs = run.world().join("pairs.jsonl");
    super::align::align(&run.sft(), &pairs, &run.align(), &cfg.align, &device, true, a.force, progress)?;
    let stages = [("base", run.base()), ("sft", run.sft()), ("align", run.align())];
    let stages: Vec<(&str, &std::path::Path)> = stages.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let tasks = evaluate_stages(&stages, &run.world(), &run.tasks_eval(), &cfg.task_eval, a.force, progress)
        .with_context(|| format!("evaluating the instruction tasks into {}", run.tasks_eval().display()))?;
    super::report("tasks-eval", &run.tasks_eval(), tasks.skipped, &task_detail(&tasks.manifest.stats));
    let metric = tsukuru_eval::select::Metric::parse(&cfg.final_eval.select_metric)?;
    let spec = format!("world-val:{}", run.world().display());
    let (stages, per_group) = (["sft", "align"], cfg.final_eval.per_group);
    let chosen = super::select::select(&run, &stages, &spec, &metric, per_group, &run.selection(), a.force, progress)?;
    final_eval(&run, chosen.chosen_path(), &cfg.final_eval, a.force, progress)?;
    super::report::report(&run, &name)?;
    println!("speedrun: done; report card in {}", run.report().display());
    Ok(())
}

/// The built-in world's token shards in `run`: world → data prepare → tokenizer train → data tokenize.
pub fn world_tokens(run: &RunDir, cfg: &SpeedrunConfig, force: bool, progress: &dyn Progress) -> Result<()> {
    super::world::generate(&run.world(), cfg.world.seed, cfg.world.scale, force, progress)?;
    let corpus = run.world().join("corpus.jsonl");
    super::data::prepare(&[corpus], &run.data(), &cfg.data, None, force, progress)?;
    super::tokenizer::train(&run.data(), &run.tokenizer(), &cfg.tokenizer, force, progress)?;
    super::data::tokenize(&run.data(), &run.tokenizer(), &run.tokens(), cfg.tokens.shard_tokens, force, progress)?;
    Ok(())
}

/// Phase 0 for the run's own budget: the compute its pretraining spends and the split of it that
/// Epoch AI's law would choose with the run's data, as `plan.md` for the report card.
fn plan(run: &RunDir, cfg: &PretrainConfig) -> Result<()> {
    use tsukuru_plan::{output::Actual, Budget, Cluster, PlanRequest, Rule, EPOCH};
    let train = tsukuru_tokens::TokenDataset::open(&run.tokens(), "train")?;
    let model = cfg.model_config(train.vocab_size() as usize)?;
    let tokens = (cfg.steps as usize * cfg.batch_size * cfg.grad_accum * cfg.seq_len) as f64;
    let flops = tokens * model.flops_per_token(cfg.seq_len);
    let actual = Actual { depth: model.n_layers, params: model.param_count() as f64, tokens, flops };
    let req = PlanRequest {
        budget: Budget::Flops(flops),
        // The section speaks of compute and data only; no device enters it.
        cluster: Cluster::parse("H100", None, None)?,
        mfu: 0.4,
        rule: Rule::Law(EPOCH),
        predict: EPOCH,
        vocab_size: model.vocab_size,
        seq_len: cfg.seq_len,
        unique_tokens: Some(train.n_tokens() as f64),
        max_epochs: 4.0,
        max_params: None,
        batch_tokens: Some((cfg.batch_size * cfg.grad_accum * cfg.seq_len) as f64),
        lr: Some(cfg.lr),
    };
    let section = req.plan()?.compute_section(&req, &actual);
    tsukuru_core::atomic::write_atomic(run.plan(), section.as_bytes())?;
    Ok(())
}

/// The chosen model on the world's test tasks and the prepared documents (half of which were
/// trained on: the deliberately contaminated task), with each item checked against the training data.
fn final_eval(run: &RunDir, model: &Path, cfg: &FinalEvalSection, force: bool, progress: &dyn Progress) -> Result<()> {
    let spec = format!("world:{},docs:{}", run.world().display(), run.data().display());
    let opts = SuiteOptions { per_group: cfg.per_group, ..SuiteOptions::default() };
    let suite = Suite::load(&spec, &opts).with_context(|| format!("reading the tasks {spec}"))?;
    let report = super::eval::contamination(&run.data(), &suite, cfg.n, 1024, &run.contamination(), progress)?;
    let hc = HarnessConfig { num_fewshot: cfg.num_fewshot, ..HarnessConfig::default() };
    super::eval::eval(model, &suite, Some(&report), &run.final_eval(), &hc, force, progress)?;
    Ok(())
}

/// One line per stage: in-domain / out-of-domain accuracy and hallucination rate.
fn task_detail(summary: &serde_json::Value) -> String {
    let pct = |v: &serde_json::Value| v.as_f64().map_or("n/a".into(), |x| format!("{:.0}%", 100.0 * x));
    let stages = summary["stages"].as_array().cloned().unwrap_or_default();
    let parts: Vec<String> = stages
        .iter()
        .map(|s| {
            let sc = &s["scores"];
            format!(
                "{}: in-domain {}, out-of-domain {}, hallucination {}",
                s["name"].as_str().unwrap_or("?"),
                pct(&sc["in_domain"]),
                pct(&sc["out_of_domain"]),
                pct(&sc["hallucination_rate"])
            )
        })
        .collect();
    parts.join("; ")
}

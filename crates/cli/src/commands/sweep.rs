//! `tsukuru sweep`: an isoFLOP grid of small pretraining runs, the law L(N, D) fitted to their
//! losses (Chinchilla's Approach 3, bootstrap intervals), the isoFLOP chart, and a larger
//! held-out run whose loss the fit predicts before it is trained.
//!
//! Everything goes under `--out`: the data (`world/`, `data/`, `tokenizer/`, `tokens/`, unless
//! `--tokens` is given), one pretraining directory per run under `runs/`, `results.jsonl`,
//! `fit.json` (what `tsukuru plan --law` reads), `prediction.json` (the held-out run's predicted
//! loss, written before that run starts), `isoflop.svg` and `report.md`. Finished runs are
//! skipped and an interrupted one resumes from its checkpoint, so a rerun continues the sweep.

use super::plan::quantity;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tsukuru_core::Progress;
use tsukuru_plan::fit::{fit, Fit, Interval, Point};
use tsukuru_plan::plot::{isoflop_chart, Curve, Held};
use tsukuru_plan::sweep::{grid, RunSpec, Shape, LADDER};
use tsukuru_train::pretrain::PretrainConfig;

/// The built-in sweep config.
pub const SWEEP: &str = include_str!("../../../../configs/sweep.toml");

/// Arguments of `sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Compute budgets of the isoFLOP curves, comma-separated, e.g. 3e11,1e12,3e12.
    #[arg(long, value_delimiter = ',', value_parser = quantity, required = true)]
    pub flops: Vec<f64>,
    /// Model sizes, comma-separated: LAYERSxWIDTH (2x64) or preset depths (3) [default: for each
    /// budget, up to --per-budget sizes of a built-in ladder with 2–500 tokens per parameter].
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<String>,
    /// Sizes per budget chosen automatically.
    #[arg(long, default_value_t = 5)]
    pub per_budget: usize,
    /// Budget of the held-out run the fit predicts, then trains [default: 3 × the largest budget;
    /// 0 skips it].
    #[arg(long, value_parser = quantity)]
    pub holdout_flops: Option<f64>,
    /// Bootstrap resamples for the intervals.
    #[arg(long, default_value_t = 200)]
    pub bootstrap: usize,
    /// Coverage of the intervals.
    #[arg(long, default_value_t = 0.9)]
    pub level: f64,
    /// Train on these token shards (then only the config's [pretrain] table is used) instead of
    /// making the built-in world's.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Config: world, data, tokenizer, tokens and the [pretrain] table every run starts from
    /// (default: the built-in configs/sweep.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set pretrain.lr=0.002 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "runs/sweep")]
    pub out: PathBuf,
    /// Device: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Replace earlier outputs made with other settings.
    #[arg(long)]
    pub force: bool,
}

/// The config tables a sweep on given token shards reads.
#[derive(Deserialize)]
struct PretrainOnly {
    pretrain: PretrainConfig,
}

/// One finished run, a line of results.jsonl.
#[derive(Debug, Clone, serde::Serialize)]
struct Finished {
    name: String,
    budget: f64,
    shape: String,
    params: f64,
    tokens: f64,
    flops: f64,
    steps: u64,
    batch_size: usize,
    val_loss: f64,
    seconds: f64,
}

/// Runs `sweep`.
pub fn run(a: SweepArgs, progress: &dyn Progress) -> Result<()> {
    if !(a.level > 0.0 && a.level < 1.0) {
        bail!("--level {} must be between 0 and 1 (e.g. 0.9)", a.level);
    }
    if let Some(c) = a.flops.iter().enumerate().find_map(|(i, c)| a.flops[..i].contains(c).then_some(c)) {
        bail!("--flops gives the budget {c:e} twice; each isoFLOP curve needs its own budget");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (tokens, base) = match &a.tokens {
        Some(t) => {
            let cfg: PretrainOnly = tsukuru_core::config::load(a.config.as_deref(), SWEEP, &a.sets)?;
            (t.clone(), cfg.pretrain)
        }
        None => {
            let cfg: super::speedrun::SpeedrunConfig = tsukuru_core::config::load(a.config.as_deref(), SWEEP, &a.sets)?;
            cfg.data.validate()?;
            cfg.tokenizer.validate()?;
            let run = tsukuru_core::run::RunDir::new(&a.out);
            super::speedrun::world_tokens(&run, &cfg, a.force, progress)?;
            (run.tokens(), cfg.pretrain)
        }
    };
    let split = tsukuru_tokens::TokenDataset::open(&tokens, "train")
        .with_context(|| format!("reading the token shards in {}", tokens.display()))?;
    let (vocab, unique) = (split.vocab_size() as usize, split.n_tokens() as f64);
    let shapes: Vec<Shape> = a.sizes.iter().map(|s| Shape::parse(s)).collect::<Result<_, _>>()?;
    let given = (!shapes.is_empty()).then_some(shapes.as_slice());
    let runs = grid(&base, vocab, &a.flops, given, a.per_budget, Some(unique))?;
    let device = super::pretrain::device(&a.device)?;
    println!("sweep: {} runs over {} budgets into {}", runs.len(), a.flops.len(), a.out.display());
    let mut finished = Vec::new();
    for (i, spec) in runs.iter().enumerate() {
        println!(
            "sweep: run {}/{} {}: {:.3} M parameters, {:.2} M tokens, {} steps of {}",
            i + 1,
            runs.len(),
            spec.name,
            spec.params / 1e6,
            spec.tokens / 1e6,
            spec.config.steps,
            spec.config.batch_size
        );
        if spec.tokens > unique {
            println!(
                "sweep: note: {} repeats the training tokens {:.1} times; the law assumes fresh data",
                spec.name,
                spec.tokens / unique
            );
        }
        finished.push(train(&a.out, &tokens, spec, &device, a.force, progress)?);
        write_results(&a.out, &finished)?;
    }
    let points: Vec<Point> = runs.iter().zip(&finished).map(|(s, f)| s.point(f.val_loss)).collect();
    let fitted = fit(&points, a.bootstrap, a.level, 0).context("fitting L(N, D) to the sweep")?;
    fitted.write(&a.out.join("fit.json"))?;
    let curves = curves(&runs, &finished, &a.flops);
    let holdout_flops = a.holdout_flops.unwrap_or(3.0 * a.flops.iter().fold(0.0f64, |m, &c| m.max(c)));
    let held = if holdout_flops > 0.0 {
        let spec = holdout(&base, vocab, holdout_flops, &fitted, &shapes, unique)?;
        let (predicted, spread) = fitted.predict(spec.params, spec.tokens);
        // Written before the run starts, so the prediction on record is the one made without it.
        let record = serde_json::json!({
            "run": spec.name, "flops": spec.budget, "params": spec.params, "tokens": spec.tokens,
            "predicted_loss": predicted, "interval": spread.map(|i| [i.lo, i.hi]), "level": a.level,
        });
        let text = serde_json::to_string_pretty(&record).expect("plain data");
        tsukuru_core::atomic::write_atomic(a.out.join("prediction.json"), text.as_bytes())?;
        println!(
            "sweep: held-out run {}: predicted loss {predicted:.4}{}; training it",
            spec.name,
            spread.map_or(String::new(), |s| format!(" ({:.0}% interval {:.4}–{:.4})", 100.0 * a.level, s.lo, s.hi))
        );
        let done = train(&a.out, &tokens, &spec, &device, a.force, progress)?;
        Some((spec, predicted, spread, done))
    } else {
        None
    };
    let held_mark = held.as_ref().map(|(s, p, _, d)| Held { params: s.params, predicted: *p, measured: d.val_loss });
    isoflop_chart(&a.out.join("isoflop.svg"), &fitted, &curves, held_mark)?;
    let report = report(&fitted, &finished, held.as_ref().map(|(s, p, i, d)| (s, *p, *i, d)), a.level);
    tsukuru_core::atomic::write_atomic(a.out.join("report.md"), report.as_bytes())?;
    let l = fitted.law;
    println!(
        "sweep: fitted L(N, D) = {:.3} + {:.4}/N^{:.3} + {:.4}/D^{:.3}; relative RMS error {:.2}%",
        l.e,
        l.a,
        l.alpha,
        l.b,
        l.beta,
        100.0 * fitted.rms_relative_error
    );
    if let Some((_, p, _, d)) = &held {
        println!(
            "sweep: held-out prediction error {:+.4} nats ({:+.2}%): predicted {p:.4}, measured {:.4}",
            d.val_loss - p,
            100.0 * (d.val_loss - p) / d.val_loss,
            d.val_loss
        );
    }
    println!(
        "sweep: wrote {} (fit.json, isoflop.svg, report.md); plan with it: tsukuru plan --law {}",
        a.out.display(),
        a.out.join("fit.json").display()
    );
    Ok(())
}

/// Trains one run (or finds it finished) and reads its final validation loss.
fn train(
    out: &Path,
    tokens: &Path,
    spec: &RunSpec,
    device: &candle_core::Device,
    force: bool,
    progress: &dyn Progress,
) -> Result<Finished> {
    let dir = out.join("runs").join(&spec.name);
    let started = std::time::Instant::now();
    super::pretrain::pretrain(tokens, &dir, &spec.config, device, true, force, progress)?;
    let manifest = tsukuru_core::Manifest::read(&dir)?;
    let val_loss = manifest.stats["val_loss"]
        .as_f64()
        .filter(|v| v.is_finite())
        .with_context(|| format!("{}: the run has no finite validation loss", dir.display()))?;
    let seconds = manifest.stats["train_seconds"].as_f64().unwrap_or(started.elapsed().as_secs_f64());
    Ok(Finished {
        name: spec.name.clone(),
        budget: spec.budget,
        shape: spec.shape.to_string(),
        params: spec.params,
        tokens: spec.tokens,
        flops: spec.tokens * spec.flops_per_token,
        steps: spec.config.steps,
        batch_size: spec.config.batch_size,
        val_loss,
        seconds,
    })
}

fn write_results(out: &Path, finished: &[Finished]) -> Result<()> {
    let lines: String = finished.iter().map(|f| serde_json::to_string(f).expect("plain data") + "\n").collect();
    Ok(tsukuru_core::atomic::write_atomic(out.join("results.jsonl"), lines.as_bytes())?)
}

/// Each budget's measured runs for the chart.
fn curves(runs: &[RunSpec], finished: &[Finished], budgets: &[f64]) -> Vec<Curve> {
    budgets
        .iter()
        .map(|&budget| {
            let mine: Vec<(&RunSpec, &Finished)> =
                runs.iter().zip(finished).filter(|(s, _)| s.budget == budget).collect();
            let mut overheads: Vec<f64> = mine.iter().map(|(s, _)| s.flops_per_token / (6.0 * s.params)).collect();
            overheads.sort_by(f64::total_cmp);
            Curve {
                budget,
                runs: mine.iter().map(|(s, f)| (s.params, f.val_loss)).collect(),
                overhead: overheads.get(overheads.len() / 2).copied().unwrap_or(1.0),
            }
        })
        .collect()
}

/// The held-out run: the size the fit predicts best at `budget` among the ladder and the given
/// sizes, within one epoch of the `unique` training tokens when any size is.
fn holdout(
    base: &PretrainConfig,
    vocab: usize,
    budget: f64,
    fitted: &Fit,
    shapes: &[Shape],
    unique: f64,
) -> Result<RunSpec> {
    let mut best: Option<(bool, f64, RunSpec)> = None;
    for &shape in LADDER.iter().chain(shapes) {
        if let Some(spec) = RunSpec::new(base, vocab, budget, shape)? {
            let (repeats, loss) = (spec.tokens > unique, fitted.law.loss(spec.params, spec.tokens));
            if best.as_ref().is_none_or(|(r, b, _)| (repeats, loss) < (*r, *b)) {
                best = Some((repeats, loss, spec));
            }
        }
    }
    let best = best.map(|(_, l, s)| (l, s));
    let (_, mut spec) = best.with_context(|| format!("no model size fits the held-out budget {budget:e}"))?;
    spec.name = format!("holdout-{}", spec.name);
    Ok(spec)
}

/// report.md: the runs, the fit with its intervals, the held-out prediction against the measurement.
fn report(
    fitted: &Fit,
    finished: &[Finished],
    held: Option<(&RunSpec, f64, Option<Interval>, &Finished)>,
    level: f64,
) -> String {
    let mut s = String::from("# IsoFLOP sweep\n\n![IsoFLOP curves](isoflop.svg)\n\n## Runs\n\n");
    s += "| run | budget (FLOPs) | shape | params | tokens | tokens/param | steps × batch | val loss | seconds |\n";
    s += "|---|---|---|---|---|---|---|---|---|\n";
    for f in finished {
        s += &format!(
            "| {} | {:.0e} | {} | {:.0} | {:.0} | {:.1} | {} × {} | {:.4} | {:.0} |\n",
            f.name,
            f.budget,
            f.shape,
            f.params,
            f.tokens,
            f.tokens / f.params,
            f.steps,
            f.batch_size,
            f.val_loss,
            f.seconds
        );
    }
    let l = fitted.law;
    s += &format!(
        "\n## Fit (Approach 3: Huber δ = 10⁻³ on log-loss, L-BFGS from Chinchilla's grid)\n\n\
         L(N, D) = {:.4} + {:.4} / N^{:.4} + {:.4} / D^{:.4}; relative RMS error {:.2}% over {} runs; \
         compute-optimal N ∝ C^{:.3}, D ∝ C^{:.3}.\n\n",
        l.e,
        l.a,
        l.alpha,
        l.b,
        l.beta,
        100.0 * fitted.rms_relative_error,
        fitted.points.len(),
        l.beta / (l.alpha + l.beta),
        l.alpha / (l.alpha + l.beta)
    );
    if let Some(iv) = fitted.intervals {
        s += &format!(
            "{:.0}% bootstrap intervals ({} resamples): E {:.3}–{:.3}, A {:.3e}–{:.3e}, B {:.3e}–{:.3e}, \
             α {:.3}–{:.3}, β {:.3}–{:.3}, N exponent {:.3}–{:.3}.\n",
            100.0 * level,
            iv.resamples,
            iv.e.lo,
            iv.e.hi,
            iv.a.lo,
            iv.a.hi,
            iv.b.lo,
            iv.b.hi,
            iv.alpha.lo,
            iv.alpha.hi,
            iv.beta.lo,
            iv.beta.hi,
            iv.n_exponent.lo,
            iv.n_exponent.hi
        );
    }
    if let Some((spec, predicted, spread, done)) = held {
        s += &format!(
            "\n## Held-out run\n\n{} ({:.0e} FLOPs, {} = {:.0} parameters on {:.0} tokens), chosen as the fit's best \
             size for its budget and predicted before training: **predicted {predicted:.4}**{}, **measured {:.4}**: \
             error {:+.4} nats ({:+.2}%){}.\n",
            spec.name,
            spec.budget,
            spec.shape,
            spec.params,
            spec.tokens,
            spread.map_or(String::new(), |i| format!(" ({:.0}% interval {:.4}–{:.4})", 100.0 * level, i.lo, i.hi)),
            done.val_loss,
            done.val_loss - predicted,
            100.0 * (done.val_loss - predicted) / done.val_loss,
            spread.map_or("", |i| if (i.lo..=i.hi).contains(&done.val_loss) {
                ", inside the interval"
            } else {
                ", outside the interval"
            })
        );
    }
    s
}

//! `tsukuru report --run DIR`: the run's report card, `report.md` with SVG plots in `plots/`.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use tsukuru_core::run::RunDir;

/// Arguments of `report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The run directory (e.g. runs/speedrun).
    #[arg(long)]
    pub run: PathBuf,
}

/// Runs `report`.
pub fn run(a: ReportArgs) -> Result<()> {
    if !a.run.is_dir() {
        bail!("--run {} is not a directory; give a run such as runs/speedrun", a.run.display());
    }
    let name = a.run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    report(&RunDir::new(&a.run), &name)?;
    println!("report: wrote {} and {}", RunDir::new(&a.run).report().display(), RunDir::new(&a.run).plots().display());
    Ok(())
}

/// Writes the report card of `run`.
pub fn report(run: &RunDir, name: &str) -> Result<()> {
    tsukuru_eval::card::write_card(run, &format!("Report card: {name}"))
        .with_context(|| format!("writing the report card of {}", run.root().display()))?;
    Ok(())
}

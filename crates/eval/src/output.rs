//! An evaluation's output directory: claimed for a manifest (a complete identical output is reused
//! with its summary), then written file by file and finished with the summary as the stats.

use crate::{EvalError, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use tsukuru_core::manifest::FileEntry;
use tsukuru_core::{Manifest, Outcome, OutputDir, Prepared};

/// What claiming found.
pub(crate) enum Claim<T> {
    /// The same output is complete: its outcome and summary.
    Done(Outcome, T),
    /// The directory to write.
    Write(OutputDir),
}

/// Claims `out` for `manifest` (see [`OutputDir::prepare`]).
pub(crate) fn claim<T: DeserializeOwned>(out: &Path, manifest: &Manifest, force: bool) -> Result<Claim<T>> {
    Ok(match OutputDir::prepare(out, &manifest.artifact, &manifest.fingerprint, force)? {
        Prepared::Done(manifest) => {
            let summary = serde_json::from_value(manifest.stats.clone())
                .map_err(|e| EvalError::Config(format!("reading the summary in {}: {e}", out.display())))?;
            Claim::Done(Outcome { manifest, skipped: true }, summary)
        }
        Prepared::Fresh(dir) | Prepared::Resume(dir) => Claim::Write(dir),
    })
}

/// One JSON line per row.
pub(crate) fn jsonl<T: Serialize>(rows: &[T]) -> Vec<u8> {
    rows.iter().map(|r| serde_json::to_string(r).expect("rows serialise") + "\n").collect::<String>().into_bytes()
}

/// Writes `files` (name, bytes) atomically into `dir`, then the manifest with them and `summary`
/// as its stats.
pub(crate) fn finish<N: AsRef<str>, T: Serialize>(
    dir: OutputDir,
    mut manifest: Manifest,
    files: &[(N, Vec<u8>)],
    summary: &T,
) -> Result<Outcome> {
    for (name, bytes) in files {
        tsukuru_core::atomic::write_atomic(dir.path().join(name.as_ref()), bytes)?;
    }
    manifest.files =
        files.iter().map(|(f, _)| FileEntry::of(dir.path(), f.as_ref())).collect::<std::result::Result<_, _>>()?;
    manifest.stats = serde_json::to_value(summary).expect("summaries serialise");
    dir.finish(&manifest)?;
    Ok(Outcome { manifest, skipped: false })
}

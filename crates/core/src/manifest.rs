//! Stage manifests: the last file a stage writes, and the proof that its output is complete.
//!
//! Every stage writes into an [`OutputDir`]. While it works, the directory holds a
//! `.tsukuru-incomplete` marker naming the artifact; when it is done, `manifest.json`
//! is written atomically and the marker removed. So a killed stage never leaves
//! output that looks complete, a rerun with the same parameters skips, and a
//! directory holding something else is refused unless the caller passes `--force`.

use crate::atomic::write_atomic;
use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// File name of the manifest inside an output directory.
pub const MANIFEST: &str = "manifest.json";
/// File name of the marker present while a stage is writing.
pub const INCOMPLETE: &str = ".tsukuru-incomplete";

/// One output file, relative to its directory, with size and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the output directory, with `/` separators.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// XXH3-64 of the contents, lowercase hex.
    pub xxh3: String,
}

impl FileEntry {
    /// Measures and checksums `dir/rel` by streaming it.
    pub fn of(dir: &Path, rel: &str) -> Result<Self> {
        let path = dir.join(rel);
        let mut f = fs::File::open(&path).at("opening", &path)?;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = f.read(&mut buf).at("reading", &path)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            bytes += n as u64;
        }
        Ok(Self { path: rel.to_string(), bytes, xxh3: format!("{:016x}", h.digest()) })
    }

    /// [`FileEntry::of`] an input file given by its path, recorded under its file name.
    pub fn of_path(path: &Path) -> Result<Self> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self::of(path.parent().unwrap_or(Path::new(".")), &name)
    }
}

/// What a finished stage says about its output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Artifact kind, e.g. `world`, `text-shards`, `tokenizer`, `token-shards`.
    pub artifact: String,
    /// Version of that artifact's on-disk format (docs/ARTIFACTS.md).
    pub format_version: u32,
    /// Version of tsukuru that wrote it.
    pub tsukuru_version: String,
    /// Hash of `params`: equal fingerprints mean a rerun would produce the same output.
    pub fingerprint: String,
    /// Everything that determines the output: options and input identities.
    pub params: serde_json::Value,
    /// Files written, with sizes and checksums.
    pub files: Vec<FileEntry>,
    /// Counts and measurements of the run (kind-specific).
    pub stats: serde_json::Value,
}

impl Manifest {
    /// Starts a manifest for `artifact` whose output is determined by `params`.
    pub fn new(artifact: &str, format_version: u32, params: serde_json::Value) -> Self {
        Self {
            artifact: artifact.to_string(),
            format_version,
            tsukuru_version: env!("CARGO_PKG_VERSION").to_string(),
            fingerprint: fingerprint(&params),
            params,
            files: Vec::new(),
            stats: serde_json::Value::Null,
        }
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).at("reading", &path)?;
        serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
    }

    /// Reads the manifest of `dir` and checks that it holds `artifact`, naming the fix if not.
    pub fn expect(dir: &Path, artifact: &str, hint: &str) -> Result<Self> {
        if !dir.join(MANIFEST).exists() {
            let what = if dir.join(INCOMPLETE).exists() {
                "holds an incomplete output (the command that wrote it did not finish)"
            } else if dir.exists() {
                "has no manifest.json, so it is not a finished tsukuru output"
            } else {
                "does not exist"
            };
            return Err(Error::OutputExists {
                path: dir.to_path_buf(),
                message: format!("expected a {artifact} artifact but the directory {what}; {hint}"),
            });
        }
        let m = Self::read(dir)?;
        if m.artifact != artifact {
            return Err(Error::OutputExists {
                path: dir.to_path_buf(),
                message: format!("expected a {artifact} artifact, found a {} artifact; {hint}", m.artifact),
            });
        }
        Ok(m)
    }
}

/// Stable hash of a JSON value (serde_json keeps map keys sorted), as hex.
pub fn fingerprint(params: &serde_json::Value) -> String {
    let canonical = serde_json::to_vec(params).expect("JSON values always serialise");
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&canonical))
}

/// What a stage did: the manifest of its output, and whether a complete identical output was reused.
#[derive(Debug)]
pub struct Outcome {
    /// The output's manifest (new, or the one found).
    pub manifest: Manifest,
    /// True when nothing was redone because the same output was already complete.
    pub skipped: bool,
}

/// Result of [`OutputDir::prepare`].
#[derive(Debug)]
pub enum Prepared {
    /// The directory is ready and empty; write, then call [`OutputDir::finish`].
    Fresh(OutputDir),
    /// The same artifact with the same fingerprint is already complete here.
    Done(Manifest),
    /// An interrupted run of the same artifact and settings left partial work to continue
    /// (only from [`OutputDir::prepare_resumable`]).
    Resume(OutputDir),
}

/// An output directory claimed by one stage.
#[derive(Debug)]
pub struct OutputDir {
    path: PathBuf,
}

impl OutputDir {
    /// Claims `path` for `artifact` with parameters hashing to `fingerprint`.
    ///
    /// * absent or empty → created, marked incomplete, [`Prepared::Fresh`];
    /// * complete with the same artifact and fingerprint → [`Prepared::Done`];
    /// * left incomplete by an interrupted run of the same artifact → cleared and reused;
    /// * anything else tsukuru wrote → an error, unless `force`, which clears it;
    /// * a non-empty directory tsukuru did not write → always an error: it is never deleted.
    pub fn prepare(path: &Path, artifact: &str, fingerprint: &str, force: bool) -> Result<Prepared> {
        Self::claim(path, artifact, fingerprint, force, false)
    }

    /// Like [`OutputDir::prepare`], for stages that resume (training): an incomplete output of the
    /// same artifact and fingerprint is kept and returned as [`Prepared::Resume`]; one made with
    /// other settings is refused unless `force` (it may hold hours of work).
    pub fn prepare_resumable(path: &Path, artifact: &str, fingerprint: &str, force: bool) -> Result<Prepared> {
        Self::claim(path, artifact, fingerprint, force, true)
    }

    fn claim(path: &Path, artifact: &str, fingerprint: &str, force: bool, resumable: bool) -> Result<Prepared> {
        let refuse = |message: String| Err(Error::OutputExists { path: path.to_path_buf(), message });
        if path.exists() && !path.is_dir() {
            return refuse("exists and is not a directory; choose another output path".into());
        }
        if path.is_dir() && !is_empty(path)? {
            let manifest = path.join(MANIFEST);
            let marker = path.join(INCOMPLETE);
            if manifest.exists() {
                let m = Manifest::read(path)?;
                // The same output is never redone: --force only permits replacing a different one.
                if m.artifact == artifact && m.fingerprint == fingerprint {
                    return Ok(Prepared::Done(m));
                }
                if !force {
                    let what = if m.artifact == artifact {
                        format!("a {artifact} artifact made with different parameters or inputs")
                    } else {
                        format!("a different artifact ({})", m.artifact)
                    };
                    return refuse(format!(
                        "already holds {what}; pass --force to replace it or choose another output directory"
                    ));
                }
            } else if marker.exists() {
                let was = fs::read_to_string(&marker).at("reading", &marker)?;
                let mut lines = was.lines();
                let (was_artifact, was_fingerprint) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
                if resumable && was_artifact == artifact && was_fingerprint == fingerprint {
                    return Ok(Prepared::Resume(OutputDir { path: path.to_path_buf() }));
                }
                if (was_artifact != artifact || resumable) && !force {
                    return refuse(format!(
                        "holds an incomplete {was_artifact} output{}; pass --force to replace it or choose another directory",
                        if was_artifact == artifact { " made with other settings" } else { "" }
                    ));
                }
            } else {
                return refuse(
                    "is not empty and was not written by tsukuru; it is never overwritten, choose an empty or new directory"
                        .into(),
                );
            }
            clear(path)?;
        }
        fs::create_dir_all(path).at("creating", path)?;
        write_atomic(path.join(INCOMPLETE), format!("{artifact}\n{fingerprint}\n").as_bytes())?;
        Ok(Prepared::Fresh(OutputDir { path: path.to_path_buf() }))
    }

    /// The directory being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the manifest (atomically, last) and removes the incomplete marker.
    pub fn finish(self, manifest: &Manifest) -> Result<()> {
        let path = self.path.join(MANIFEST);
        let json = serde_json::to_vec_pretty(manifest).map_err(|source| Error::Json { path: path.clone(), source })?;
        write_atomic(&path, &json)?;
        let marker = self.path.join(INCOMPLETE);
        fs::remove_file(&marker).at("removing", &marker)?;
        crate::atomic::sync_dir(&self.path)
    }
}

fn is_empty(dir: &Path) -> Result<bool> {
    Ok(fs::read_dir(dir).at("listing", dir)?.next().is_none())
}

/// Removes everything inside `dir` (which tsukuru wrote), keeping `dir` itself.
fn clear(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).at("listing", dir)? {
        let p = entry.at("listing", dir)?.path();
        if p.is_dir() {
            fs::remove_dir_all(&p).at("removing", &p)?;
        } else {
            fs::remove_file(&p).at("removing", &p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn finish(dir: &Path, artifact: &str, params: serde_json::Value) {
        let m = Manifest::new(artifact, 1, params);
        match OutputDir::prepare(dir, artifact, &m.fingerprint, false).unwrap() {
            Prepared::Fresh(out) => {
                fs::write(out.path().join("data.txt"), "x").unwrap();
                out.finish(&m).unwrap();
            }
            Prepared::Done(_) | Prepared::Resume(_) => panic!("expected a fresh directory"),
        }
    }

    #[test]
    fn same_params_skip_and_different_params_refuse() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        finish(&dir, "world", json!({"seed": 1}));
        let same = fingerprint(&json!({"seed": 1}));
        assert!(matches!(OutputDir::prepare(&dir, "world", &same, false).unwrap(), Prepared::Done(_)));
        let other = fingerprint(&json!({"seed": 2}));
        let err = OutputDir::prepare(&dir, "world", &other, false).unwrap_err().to_string();
        assert!(err.contains("different parameters") && err.contains("--force"), "{err}");
        let err = OutputDir::prepare(&dir, "tokenizer", &other, false).unwrap_err().to_string();
        assert!(err.contains("different artifact (world)"), "{err}");
        // --force clears the old output before the new one is written.
        assert!(matches!(OutputDir::prepare(&dir, "tokenizer", &other, true).unwrap(), Prepared::Fresh(_)));
        assert!(!dir.join("data.txt").exists() && !dir.join(MANIFEST).exists());
    }

    #[test]
    fn fingerprints_are_pinned_and_key_order_free() {
        // serde_json sorts object keys (no `preserve_order`); if that ever changes, every
        // fingerprint changes and every stage reruns. This pin catches it.
        assert_eq!(fingerprint(&json!({"b": 1, "a": [1, 2]})), fingerprint(&json!({"a": [1, 2], "b": 1})));
        // Reference: the Python `xxhash` package's xxh3_64 of the bytes {"seed":1}.
        assert_eq!(fingerprint(&json!({"seed": 1})), "da0dfbf32679ca1e");
    }

    #[test]
    fn foreign_directories_are_never_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("precious.txt"), "keep me").unwrap();
        let err = OutputDir::prepare(tmp.path(), "world", "0", true).unwrap_err().to_string();
        assert!(err.contains("not written by tsukuru"), "{err}");
        assert!(tmp.path().join("precious.txt").exists());
    }

    #[test]
    fn interrupted_output_is_not_complete_and_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let Prepared::Fresh(out) = OutputDir::prepare(&dir, "world", "1", false).unwrap() else { panic!() };
        fs::write(out.path().join("half.txt"), "partial").unwrap();
        drop(out); // killed before finish()
        let err = Manifest::expect(&dir, "world", "rerun the command").unwrap_err().to_string();
        assert!(err.contains("incomplete"), "{err}");
        assert!(matches!(OutputDir::prepare(&dir, "world", "1", false).unwrap(), Prepared::Fresh(_)));
        assert!(!dir.join("half.txt").exists());
    }

    #[test]
    fn resumable_stages_keep_their_partial_work() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("base");
        let Prepared::Fresh(out) = OutputDir::prepare_resumable(&dir, "base-model", "f1", false).unwrap() else {
            panic!()
        };
        fs::write(out.path().join("step-1"), "work").unwrap();
        drop(out); // killed
        assert!(matches!(OutputDir::prepare_resumable(&dir, "base-model", "f1", false).unwrap(), Prepared::Resume(_)));
        assert!(dir.join("step-1").exists(), "resuming keeps the partial work");
        let err = OutputDir::prepare_resumable(&dir, "base-model", "f2", false).unwrap_err().to_string();
        assert!(err.contains("made with other settings") && err.contains("--force"), "{err}");
        assert!(matches!(OutputDir::prepare_resumable(&dir, "base-model", "f2", true).unwrap(), Prepared::Fresh(_)));
    }
}

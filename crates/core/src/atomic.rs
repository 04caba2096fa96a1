//! Crash-safe file replacement: write to a temporary file in the same directory,
//! fsync it, rename it over the target, then fsync the directory.
//!
//! A reader therefore sees either the old complete file or the new complete file,
//! never a torn one, even if the process is killed or the machine loses power.

use crate::error::{IoContext, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written that only appears under its final name on [`AtomicFile::commit`].
///
/// Dropping it without committing removes the temporary file.
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing `target` through a hidden temporary file beside it.
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).at("creating", &tmp)?;
        Ok(Self { target, tmp, writer: Some(BufWriter::with_capacity(1 << 20, file)) })
    }

    /// Overwrites `bytes` at `offset` (e.g. a header whose counts are known only at the end),
    /// then continues appending at the end.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let w = self.writer.as_mut().expect("writer present until commit");
        w.flush().at("writing", &self.tmp)?;
        let f = w.get_mut();
        f.seek(SeekFrom::Start(offset)).at("seeking in", &self.tmp)?;
        f.write_all(bytes).at("writing", &self.tmp)?;
        f.seek(SeekFrom::End(0)).at("seeking in", &self.tmp)?;
        Ok(())
    }

    /// Flushes, fsyncs and renames the file into place, then fsyncs its directory.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer.into_inner().map_err(|e| e.into_error()).at("writing", &self.tmp)?;
        file.sync_all().at("syncing", &self.tmp)?;
        drop(file);
        fs::rename(&self.tmp, &self.target).at("renaming into place", &self.target)?;
        let parent = self.target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.as_mut().expect("writer present until commit").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().expect("writer present until commit").flush()
    }
}

// Writers of formats with back-patched headers (GGUF) ask for their position.
impl std::io::Seek for AtomicFile {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.writer.as_mut().expect("writer present until commit").seek(pos)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Replaces `path` with `bytes` atomically.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path.as_ref())?;
    f.write_all(bytes).at("writing", path.as_ref())?;
    f.commit()
}

/// Fsyncs a directory so that a rename inside it survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    // Opening a directory for fsync works on Unix; elsewhere it is a no-op.
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).at("syncing directory", dir)?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"three, never committed").unwrap();
        }
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "temporary file left behind: {names:?}");
    }
}

//! Text shards: zstd-compressed JSON lines, `{"text": …, "source": N}` per document.
//!
//! `source` indexes the manifest's input list, so every kept document can be
//! traced to the file it came from. Shards rotate at a size bound so that later
//! stages can read them in parallel.

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use tsukuru_core::atomic::AtomicFile;
use tsukuru_core::error::IoContext;

/// One record of a text shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Normalised document text.
    pub text: String,
    /// Index of the input file in the manifest's `params.inputs`.
    pub source: u32,
}

/// A finished shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Path relative to the output directory (`train/00000.jsonl.zst`).
    pub path: String,
    /// Documents in the shard.
    pub docs: u64,
    /// Uncompressed UTF-8 bytes of text in the shard.
    pub text_bytes: u64,
}

/// Writes one split's shards, rotating when a shard's text passes `max_bytes`.
pub struct ShardWriter {
    root: PathBuf,
    split: String,
    max_bytes: u64,
    current: Option<zstd::Encoder<'static, AtomicFile>>,
    info: Option<ShardInfo>,
    done: Vec<ShardInfo>,
}

impl ShardWriter {
    /// A writer for `root/split/NNNNN.jsonl.zst`.
    pub fn new(root: &Path, split: &str, max_bytes: u64) -> Self {
        Self {
            root: root.to_path_buf(),
            split: split.to_string(),
            max_bytes: max_bytes.max(1),
            current: None,
            info: None,
            done: Vec::new(),
        }
    }

    /// Appends one document.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        if self.current.is_none() {
            let rel = format!("{}/{:05}.jsonl.zst", self.split, self.done.len());
            let path = self.root.join(&rel);
            std::fs::create_dir_all(path.parent().expect("shard has a parent")).at("creating", &path)?;
            let enc = zstd::Encoder::new(AtomicFile::create(&path)?, 3).at("starting zstd for", &path)?;
            self.current = Some(enc);
            self.info = Some(ShardInfo { path: rel, docs: 0, text_bytes: 0 });
        }
        let enc = self.current.as_mut().expect("opened above");
        let info = self.info.as_mut().expect("opened above");
        let path = self.root.join(&info.path);
        serde_json::to_writer(&mut *enc, record).map_err(std::io::Error::from).at("writing", &path)?;
        enc.write_all(b"\n").at("writing", &path)?;
        info.docs += 1;
        info.text_bytes += record.text.len() as u64;
        if info.text_bytes >= self.max_bytes {
            self.close()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let (Some(enc), Some(info)) = (self.current.take(), self.info.take()) {
            let path = self.root.join(&info.path);
            enc.finish().at("finishing zstd stream of", &path)?.commit()?;
            self.done.push(info);
        }
        Ok(())
    }

    /// Closes the last shard and returns all shards written.
    pub fn finish(mut self) -> Result<Vec<ShardInfo>> {
        self.close()?;
        Ok(std::mem::take(&mut self.done))
    }
}

type Lines = std::io::Lines<BufReader<zstd::Decoder<'static, BufReader<std::fs::File>>>>;

fn open_lines(path: &Path) -> Result<Lines> {
    let file = std::fs::File::open(path).at("opening", path)?;
    let dec = zstd::Decoder::new(file).at("opening zstd stream", path)?;
    Ok(BufReader::with_capacity(1 << 20, dec).lines())
}

fn parse(path: &Path, line_no: u64, line: std::io::Result<String>) -> Result<Record> {
    let line = line.at("reading", path)?;
    serde_json::from_str(&line).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        line: line_no,
        message: format!("corrupt text shard record: {e}"),
    })
}

/// Streams every record of one split (`train` or `val`) of a text-shards directory, shard after
/// shard, holding one decompression buffer at a time.
pub struct SplitReader {
    root: PathBuf,
    pending: std::vec::IntoIter<ShardInfo>,
    current: Option<(PathBuf, u64, Lines)>,
}

impl SplitReader {
    /// Opens `split` of the prepared text in `dir` (checks its manifest).
    pub fn open(dir: &Path, split: &str) -> Result<Self> {
        let manifest =
            tsukuru_core::Manifest::expect(dir, crate::prepare::ARTIFACT, "prepare it with `tsukuru data prepare`")?;
        let shards = crate::prepare::shards(&manifest, split)?;
        Ok(Self { root: dir.to_path_buf(), pending: shards.into_iter(), current: None })
    }
}

impl Iterator for SplitReader {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if let Some((path, line_no, lines)) = &mut self.current {
                if let Some(line) = lines.next() {
                    *line_no += 1;
                    return Some(parse(path, *line_no, line));
                }
                self.current = None;
            }
            let shard = self.pending.next()?;
            let path = self.root.join(&shard.path);
            match open_lines(&path) {
                Ok(lines) => self.current = Some((path, 0, lines)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Streams the records of one shard into `f`; stops early if `f` returns `false`.
pub fn for_each_record(path: &Path, f: &mut dyn FnMut(Record) -> bool) -> Result<()> {
    for (i, line) in open_lines(path)?.enumerate() {
        if !f(parse(path, i as u64 + 1, line)?) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(dir.path(), "train", 100);
        let texts: Vec<String> = (0..10).map(|i| format!("document number {i} with some words 日本")).collect();
        for (i, t) in texts.iter().enumerate() {
            w.write(&Record { text: t.clone(), source: i as u32 % 2 }).unwrap();
        }
        let shards = w.finish().unwrap();
        assert!(shards.len() > 1, "expected rotation, got {shards:?}");
        assert_eq!(shards.iter().map(|s| s.docs).sum::<u64>(), 10);
        let mut back = Vec::new();
        for s in &shards {
            for_each_record(&dir.path().join(&s.path), &mut |r| {
                back.push(r.text);
                true
            })
            .unwrap();
        }
        assert_eq!(back, texts);
    }
}

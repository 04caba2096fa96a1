//! The token shard format (version 1): a fixed header, the token stream, a document index.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "TSKTOKNS"
//!      8     4  format version (u32 = 1)
//!     12     4  token width in bytes (u32: 2 if vocab ≤ 65,536, else 4)
//!     16     4  vocabulary size (u32)
//!     20     4  BOS id (u32)
//!     24     8  number of tokens N (u64)
//!     32     8  number of documents D (u64)
//!     40     8  byte offset of the index (u64)
//!     48    16  reserved, zero
//!     64   N·w  tokens, little-endian; every document starts with BOS
//!    idx (D+1)·8 document start offsets in tokens (u64 LE); the last equals N
//! ```
//! All integers are little-endian. The index is 8-byte aligned. A reader checks
//! the magic, version, width, that the file is exactly as long as the header
//! says, and that the index is non-decreasing from 0 to N.

use crate::{Result, TokensError};
use memmap2::Mmap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tsukuru_core::atomic::AtomicFile;
use tsukuru_core::error::IoContext;

/// File magic.
pub const MAGIC: &[u8; 8] = b"TSKTOKNS";
/// Format version written and read.
pub const VERSION: u32 = 1;
/// Header length in bytes.
pub const HEADER: usize = 64;

/// Token width for a vocabulary: 2 bytes up to 65,536 ids, else 4.
pub fn width_for(vocab_size: usize) -> u32 {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

/// Streams documents into one shard file; the header and index are written on `finish`.
pub struct ShardWriter {
    file: AtomicFile,
    path: PathBuf,
    width: u32,
    vocab_size: u32,
    bos: u32,
    starts: Vec<u64>,
    tokens: u64,
}

impl ShardWriter {
    /// Starts `path` for a vocabulary of `vocab_size` with document marker `bos`.
    pub fn create(path: &Path, vocab_size: usize, bos: u32) -> Result<Self> {
        let mut file = AtomicFile::create(path)?;
        file.write_all(&[0u8; HEADER]).at("writing", path)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            width: width_for(vocab_size),
            vocab_size: vocab_size as u32,
            bos,
            starts: Vec::new(),
            tokens: 0,
        })
    }

    /// Appends one document: BOS then `ids`.
    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        let mut buf = Vec::with_capacity((ids.len() + 1) * self.width as usize);
        for &id in std::iter::once(&self.bos).chain(ids) {
            if id >= self.vocab_size {
                return Err(TokensError::Format(format!(
                    "{}: token id {id} is outside the vocabulary of {}",
                    self.path.display(),
                    self.vocab_size
                )));
            }
            match self.width {
                2 => buf.extend_from_slice(&(id as u16).to_le_bytes()),
                _ => buf.extend_from_slice(&id.to_le_bytes()),
            }
        }
        self.file.write_all(&buf).at("writing", &self.path)?;
        self.starts.push(self.tokens);
        self.tokens += ids.len() as u64 + 1;
        Ok(())
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Documents written so far.
    pub fn docs(&self) -> u64 {
        self.starts.len() as u64
    }

    /// Writes the index and header, then commits the file atomically.
    pub fn finish(mut self) -> Result<(u64, u64)> {
        let data_end = HEADER as u64 + self.tokens * self.width as u64;
        let pad = (8 - data_end % 8) % 8;
        self.file.write_all(&vec![0u8; pad as usize]).at("writing", &self.path)?;
        let index_offset = data_end + pad;
        let mut index = Vec::with_capacity((self.starts.len() + 1) * 8);
        for s in self.starts.iter().chain(std::iter::once(&self.tokens)) {
            index.extend_from_slice(&s.to_le_bytes());
        }
        self.file.write_all(&index).at("writing", &self.path)?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&self.width.to_le_bytes());
        header.extend_from_slice(&self.vocab_size.to_le_bytes());
        header.extend_from_slice(&self.bos.to_le_bytes());
        header.extend_from_slice(&self.tokens.to_le_bytes());
        header.extend_from_slice(&(self.starts.len() as u64).to_le_bytes());
        header.extend_from_slice(&index_offset.to_le_bytes());
        header.resize(HEADER, 0);
        self.file.write_at(0, &header)?;
        let counts = (self.tokens, self.starts.len() as u64);
        self.file.commit()?;
        Ok(counts)
    }
}

/// A memory-mapped, validated token shard.
#[derive(Debug)]
pub struct TokenShard {
    map: Mmap,
    path: PathBuf,
    width: usize,
    vocab_size: u32,
    bos: u32,
    tokens: u64,
    docs: u64,
    index_offset: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl TokenShard {
    /// Opens and validates `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).at("opening", path)?;
        // SAFETY: shards are written once through an atomic rename and never modified in place;
        // a file truncated by someone else would make reads fault, which validation below cannot rule out.
        let map = unsafe { Mmap::map(&file) }.at("mapping", path)?;
        let bad = |what: String| TokensError::Format(format!("{}: {what}", path.display()));
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(bad("not a tsukuru token shard (bad magic)".into()));
        }
        let version = u32_at(&map, 8);
        if version != VERSION {
            return Err(bad(format!("format version {version}, this build reads version {VERSION}")));
        }
        let width = u32_at(&map, 12) as usize;
        if width != 2 && width != 4 {
            return Err(bad(format!("token width {width} (expected 2 or 4)")));
        }
        let (vocab_size, bos, tokens, docs) = (u32_at(&map, 16), u32_at(&map, 20), u64_at(&map, 24), u64_at(&map, 32));
        let index_offset = u64_at(&map, 40);
        if bos >= vocab_size {
            return Err(bad(format!("BOS id {bos} is outside the vocabulary of {vocab_size}")));
        }
        // Header values come from the file: check every size with overflow-safe arithmetic.
        let data_end = tokens.checked_mul(width as u64).and_then(|n| n.checked_add(HEADER as u64));
        let expected_len = docs.checked_add(1).and_then(|n| n.checked_mul(8)).and_then(|n| n.checked_add(index_offset));
        match (data_end, expected_len) {
            (Some(end), Some(len))
                if index_offset >= end && index_offset.is_multiple_of(8) && map.len() as u64 == len => {}
            _ => {
                return Err(bad(format!(
                    "truncated or corrupt: {} bytes do not match a header of {tokens} tokens and {docs} documents",
                    map.len()
                )))
            }
        }
        let index_offset = index_offset as usize;
        let shard = Self { map, path: path.to_path_buf(), width, vocab_size, bos, tokens, docs, index_offset };
        // Starts rise strictly from 0 to N (every document holds at least its BOS), and each starts with BOS.
        let mut prev = None;
        for d in 0..=docs {
            let s = shard.start(d);
            let ok = match prev {
                None => s == 0,
                Some(p) => s > p && (d < docs || s == tokens) && s <= tokens,
            };
            let starts_with_bos = d == docs || (s < tokens && shard.token(s) == bos);
            if !ok || !starts_with_bos {
                return Err(bad(format!("document index is corrupt at entry {d}")));
            }
            prev = Some(s);
        }
        Ok(shard)
    }

    fn start(&self, doc: u64) -> u64 {
        u64_at(&self.map, self.index_offset + doc as usize * 8)
    }

    /// Tokens in the shard.
    pub fn n_tokens(&self) -> u64 {
        self.tokens
    }
    /// Documents in the shard.
    pub fn n_docs(&self) -> u64 {
        self.docs
    }
    /// Vocabulary size recorded in the header.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }
    /// BOS id recorded in the header.
    pub fn bos(&self) -> u32 {
        self.bos
    }
    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn token(&self, at: u64) -> u32 {
        let mut one = Vec::with_capacity(1);
        self.read_into(at, at + 1, &mut one);
        one[0]
    }

    /// Token range `[start, end)` of document `doc` (starting with BOS).
    ///
    /// # Panics
    /// If `doc >= n_docs()`.
    pub fn doc_range(&self, doc: u64) -> (u64, u64) {
        (self.start(doc), self.start(doc + 1))
    }

    /// Appends tokens `[start, end)` to `out` as u32.
    ///
    /// # Panics
    /// If the range is not within `0..=n_tokens()`.
    pub fn read_into(&self, start: u64, end: u64, out: &mut Vec<u32>) {
        let bytes = &self.map[HEADER + start as usize * self.width..HEADER + end as usize * self.width];
        match self.width {
            2 => out.extend(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)),
            _ => out.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        }
    }
}

//! Finding input files and streaming documents out of them.
//!
//! Formats: `.txt` / `.md` (a whole file, its paragraphs, or its lines as documents),
//! `.jsonl` / `.ndjson` / `.jsonl.zst` / `.json.zst` (one JSON object per line, text in a
//! named field) and
//! `.parquet` (text in a named string column, read batch by batch). Files are
//! streamed: memory holds one batch, never a whole input.

use crate::error::{DataError, Result};
use arrow_array::{Array, BinaryArray, LargeBinaryArray, LargeStringArray, StringArray, StringViewArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use tsukuru_core::error::IoContext;

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Plain UTF-8 text.
    Txt,
    /// JSON lines.
    Jsonl,
    /// JSON lines compressed with zstd.
    JsonlZst,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The format of `path` by its extension, if supported.
    pub fn of(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        if name.ends_with(".jsonl.zst") || name.ends_with(".json.zst") {
            Some(Format::JsonlZst)
        } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Some(Format::Jsonl)
        } else if name.ends_with(".parquet") {
            Some(Format::Parquet)
        } else if name.ends_with(".txt") || name.ends_with(".md") {
            Some(Format::Txt)
        } else {
            None
        }
    }
}

/// How a `.txt` file is cut into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TxtSplit {
    /// The whole file is one document.
    #[default]
    File,
    /// Documents are separated by blank lines.
    Paragraph,
    /// Every line is a document.
    Line,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Path as found.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time in nanoseconds since the epoch (part of the stage fingerprint).
    pub modified_ns: u128,
}

/// Lists input files under `paths` (files, or directories searched recursively), sorted.
///
/// Explicit files must have a supported extension; inside directories, other files
/// and hidden entries are skipped. Fails if a path is missing or nothing is found.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<InputFile>> {
    if paths.is_empty() {
        return Err(DataError::EmptyInput("no --input given".into()));
    }
    let mut found = Vec::new();
    for p in paths {
        if !p.exists() {
            return Err(DataError::MissingInput(p.clone()));
        }
        if p.is_dir() {
            walk(p, &mut found)?;
        } else {
            Format::of(p).ok_or_else(|| DataError::UnsupportedFormat { path: p.clone() })?;
            found.push(p.clone());
        }
    }
    found.sort();
    found.dedup();
    if found.is_empty() {
        return Err(DataError::EmptyInput(format!(
            "no .txt, .md, .jsonl, .ndjson, .jsonl.zst or .parquet files under {}",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let files: Vec<InputFile> = found
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).at("reading metadata of", &path)?;
            let modified_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let format = Format::of(&path).expect("filtered by format");
            Ok(InputFile { path, format, bytes: meta.len(), modified_ns })
        })
        .collect::<Result<_>>()?;
    if files.iter().all(|f| f.bytes == 0) {
        return Err(DataError::EmptyInput(format!("all {} input files are empty", files.len())));
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).at("listing", dir)? {
        let entry = entry.at("listing", dir)?;
        let path = entry.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        // Symlinked directories are not followed (a link cycle would never end); linked files are read.
        let real_dir = entry.file_type().at("reading the type of", &path)?.is_dir();
        if hidden || (path.is_dir() && !real_dir) {
            continue;
        }
        if real_dir {
            walk(&path, out)?;
        } else if Format::of(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// Options for reading documents.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// JSONL field / parquet column holding the text.
    pub text_field: String,
    /// How `.txt` files are cut.
    pub txt_split: TxtSplit,
    /// Skip documents with invalid UTF-8 instead of failing.
    pub skip_invalid: bool,
    /// Whole-file `.txt` documents larger than this are counted too long without being read.
    pub max_doc_bytes: u64,
}

/// What one document of the input holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Text as read (not yet normalised).
    Text(String),
    /// A null value in the text field or column.
    Null,
    /// Invalid UTF-8, skipped by `--skip-invalid`.
    InvalidUtf8,
    /// Too large to read whole.
    TooLong,
}

/// Streams documents from `file` into `sink`, with the input bytes each consumed (for progress).
pub fn read_docs(file: &InputFile, opts: &ReadOptions, sink: &mut dyn FnMut(Content, u64) -> Result<()>) -> Result<()> {
    let path = &file.path;
    match file.format {
        Format::Txt => read_txt(file, opts, sink),
        Format::Jsonl => {
            let f = File::open(path).at("opening", path)?;
            read_jsonl(path, BufReader::with_capacity(1 << 20, f), opts, 1.0, sink)
        }
        Format::JsonlZst => {
            let f = File::open(path).at("opening", path)?;
            let dec = zstd::Decoder::new(f).at("opening zstd stream", path)?;
            // Progress counts compressed bytes: scale decompressed offsets by a running guess.
            read_jsonl(path, BufReader::with_capacity(1 << 20, dec), opts, 0.25, sink)
        }
        Format::Parquet => read_parquet(file, opts, sink),
    }
}

fn utf8_or(path: &Path, bytes: Vec<u8>, offset: u64, where_: String, skip: bool) -> Result<Option<String>> {
    match String::from_utf8(bytes) {
        Ok(s) => Ok(Some(s)),
        Err(_) if skip => Ok(None),
        Err(e) => Err(DataError::InvalidUtf8 {
            path: path.to_path_buf(),
            offset: offset + e.utf8_error().valid_up_to() as u64,
            where_,
        }),
    }
}

fn read_txt(file: &InputFile, opts: &ReadOptions, sink: &mut dyn FnMut(Content, u64) -> Result<()>) -> Result<()> {
    let path = &file.path;
    if opts.txt_split == TxtSplit::File {
        if file.bytes > opts.max_doc_bytes {
            return sink(Content::TooLong, file.bytes);
        }
        let bytes = std::fs::read(path).at("reading", path)?;
        return match utf8_or(path, bytes, 0, String::new(), opts.skip_invalid)? {
            Some(text) => sink(Content::Text(text), file.bytes),
            None => sink(Content::InvalidUtf8, file.bytes),
        };
    }
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).at("opening", path)?);
    let (mut offset, mut line_no) = (0u64, 0u64);
    let mut doc: Vec<u8> = Vec::new();
    let (mut doc_start, mut doc_line) = (0u64, 0u64);
    let mut line = Vec::new();
    let flush = |doc: &mut Vec<u8>, start: u64, line_no: u64, sink: &mut dyn FnMut(Content, u64) -> Result<()>| {
        if doc.is_empty() {
            return Ok(());
        }
        let consumed = doc.len() as u64;
        let where_ = format!(", in the document starting on line {line_no}");
        match utf8_or(path, std::mem::take(doc), start, where_, opts.skip_invalid)? {
            Some(text) => sink(Content::Text(text), consumed),
            None => sink(Content::InvalidUtf8, consumed),
        }
    };
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).at("reading", path)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let blank = line.iter().all(|b| b.is_ascii_whitespace());
        match opts.txt_split {
            TxtSplit::Line => {
                if !blank {
                    doc.extend_from_slice(&line);
                    flush(&mut doc, offset, line_no, sink)?;
                }
            }
            _ => {
                if blank {
                    flush(&mut doc, doc_start, doc_line, sink)?;
                } else {
                    if doc.is_empty() {
                        (doc_start, doc_line) = (offset, line_no);
                    }
                    doc.extend_from_slice(&line);
                }
            }
        }
        offset += n as u64;
    }
    flush(&mut doc, doc_start, doc_line, sink)
}

fn read_jsonl(
    path: &Path,
    mut reader: impl BufRead,
    opts: &ReadOptions,
    progress_scale: f64,
    sink: &mut dyn FnMut(Content, u64) -> Result<()>,
) -> Result<()> {
    let (mut offset, mut line_no) = (0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).at("reading", path)?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        let consumed = (n as f64 * progress_scale) as u64;
        let start = offset;
        offset += n as u64;
        if buf.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let Some(line) =
            utf8_or(path, std::mem::take(&mut buf), start, format!(", line {line_no}"), opts.skip_invalid)?
        else {
            sink(Content::InvalidUtf8, consumed)?;
            continue;
        };
        let json_err = |message: String| DataError::Json { path: path.to_path_buf(), line: line_no, message };
        // Editors on some systems start UTF-8 files with a byte-order mark.
        let line = if line_no == 1 { line.strip_prefix('\u{FEFF}').unwrap_or(&line) } else { &line };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| json_err(format!("invalid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| json_err("expected a JSON object per line".into()))?;
        let content = match obj.get(&opts.text_field) {
            None => {
                return Err(DataError::MissingField {
                    path: path.to_path_buf(),
                    where_: format!(":{line_no}"),
                    field: opts.text_field.clone(),
                    available: obj.keys().cloned().collect::<Vec<_>>().join(", "),
                })
            }
            Some(serde_json::Value::Null) => Content::Null,
            Some(serde_json::Value::String(s)) => Content::Text(s.clone()),
            Some(other) => {
                return Err(json_err(format!("field '{}' is {}, expected a string", opts.text_field, json_kind(other))))
            }
        };
        sink(content, consumed)?;
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn read_parquet(file: &InputFile, opts: &ReadOptions, sink: &mut dyn FnMut(Content, u64) -> Result<()>) -> Result<()> {
    let path = &file.path;
    let pq_err = |e: &dyn std::fmt::Display| DataError::Parquet { path: path.clone(), message: e.to_string() };
    let f = File::open(path).at("opening", path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| pq_err(&e))?;
    let schema = builder.schema().clone();
    let Some((index, field)) = schema.column_with_name(&opts.text_field) else {
        return Err(DataError::MissingField {
            path: path.clone(),
            where_: String::new(),
            field: opts.text_field.clone(),
            available: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
        });
    };
    let total_rows = builder.metadata().file_metadata().num_rows().max(1) as u64;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader = builder.with_projection(mask).with_batch_size(1024).build().map_err(|e| pq_err(&e))?;
    let field_type = field.data_type().clone();
    let mut row = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| pq_err(&e))?;
        let col = batch.column(0);
        let per_row = file.bytes as f64 / total_rows as f64;
        for i in 0..col.len() {
            row += 1;
            let consumed = per_row as u64;
            if col.is_null(i) {
                sink(Content::Null, consumed)?;
                continue;
            }
            let content = if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                Content::Text(a.value(i).to_string())
            } else if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
                Content::Text(a.value(i).to_string())
            } else if let Some(a) = col.as_any().downcast_ref::<StringViewArray>() {
                Content::Text(a.value(i).to_string())
            } else {
                let bytes = if let Some(a) = col.as_any().downcast_ref::<BinaryArray>() {
                    a.value(i).to_vec()
                } else if let Some(a) = col.as_any().downcast_ref::<LargeBinaryArray>() {
                    a.value(i).to_vec()
                } else {
                    return Err(pq_err(&format!(
                        "column '{}' has type {field_type}, expected a string column",
                        opts.text_field
                    )));
                };
                let where_ = format!(" of the value in row {row}");
                match utf8_or(path, bytes, 0, where_, opts.skip_invalid)? {
                    Some(s) => Content::Text(s),
                    None => Content::InvalidUtf8,
                }
            };
            sink(content, consumed)?;
        }
    }
    Ok(())
}

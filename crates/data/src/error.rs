//! Errors of data preparation: each names the file, and the line, row or byte where it applies.

use std::path::PathBuf;

/// Data preparation errors.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Run-directory, manifest or I/O problem.
    #[error(transparent)]
    Core(#[from] tsukuru_core::Error),
    /// An input path does not exist.
    #[error("input {0} does not exist")]
    MissingInput(PathBuf),
    /// No input files (or only empty ones) were found.
    #[error("no input data: {0}")]
    EmptyInput(String),
    /// A file's extension is not a supported format.
    #[error("{path}: unsupported input format; use .txt, .md, .jsonl, .ndjson, .jsonl.zst or .parquet")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
    },
    /// Bytes that are not valid UTF-8.
    #[error("{path}: invalid UTF-8 at byte offset {offset}{where_}; fix the file or pass --skip-invalid to skip such documents")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid byte (in the decompressed stream for .zst).
        offset: u64,
        /// Line or row, when known (", line 3").
        where_: String,
    },
    /// A JSONL line is not a JSON object, or the field is not a string.
    #[error("{path}:{line}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The text field or column is missing.
    #[error("{path}{where_}: no field '{field}' (found: {available}); pass --text-field NAME")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// Where (":LINE" for JSONL, empty for parquet schemas).
        where_: String,
        /// The field that was asked for.
        field: String,
        /// Fields that exist, comma-separated.
        available: String,
    },
    /// A parquet file could not be read.
    #[error("{path}: cannot read parquet: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// A config value is out of range.
    #[error("invalid config: {0}")]
    Config(String),
}

/// Result alias for tsukuru-data.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

//! The error type of tsukuru-core: every variant names the file or key it is about.

use std::path::{Path, PathBuf};

/// Errors raised by run-directory, manifest, config and file helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed on a named path.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("reading", "creating", …).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON document could not be parsed or written.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A TOML config could not be parsed, or a value did not fit its field.
    #[error("config {origin}: {message}")]
    Config {
        /// Where the config came from (a path, `--set`, or "built-in").
        origin: String,
        /// What is wrong and, where possible, how to fix it.
        message: String,
    },
    /// An output directory holds something this command must not overwrite.
    #[error("{path}: {message}")]
    OutputExists {
        /// The output directory.
        path: PathBuf,
        /// What was found and how to proceed.
        message: String,
    },
}

/// Result alias for tsukuru-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the operation and path it happened on.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.as_ref().to_path_buf(), source }
    }
}

/// Extension to attach a path to `std::io::Result`s in one call.
pub trait IoContext<T> {
    /// Maps an I/O error into [`Error::Io`] naming `op` and `path`.
    fn at(self, op: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

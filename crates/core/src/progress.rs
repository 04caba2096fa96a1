//! Progress reporting as a trait, so libraries report and only the binary draws bars.

/// What a progress counter counts; decides how rates are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes (printed as KiB/MiB, rate as MiB/s).
    Bytes,
    /// Documents.
    Docs,
    /// Tokens.
    Tokens,
    /// Anything else.
    Items,
}

impl Unit {
    /// Short plural name of the unit.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Docs => "docs",
            Unit::Tokens => "tokens",
            Unit::Items => "items",
        }
    }
}

/// A sink for progress of long work. Implementations must be cheap to call often
/// and safe to share across threads (`advance` is called from rayon workers).
pub trait Progress: Send + Sync {
    /// Starts a new phase named `name` with an optional known total.
    fn phase(&self, name: &str, total: Option<u64>, unit: Unit);
    /// Adds `n` units of work done in the current phase.
    fn advance(&self, n: u64);
    /// Ends the current phase, with a one-line summary.
    fn finish(&self, summary: &str);
    /// A short live status of the current phase (e.g. the latest loss), shown beside the counts.
    fn status(&self, _status: &str) {}
    /// Something the user should read (a setting adjusted, data dropped), shown even off a terminal.
    fn note(&self, _message: &str) {}
}

/// Progress that reports nothing (tests, libraries used quietly).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: Option<u64>, _: Unit) {}
    fn advance(&self, _: u64) {}
    fn finish(&self, _: &str) {}
}

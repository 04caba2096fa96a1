//! tsukuru-core: what every stage shares and nothing that does ML.
//!
//! The run directory and its layout ([`run`]), stage manifests that make a stage
//! skip when its output is already complete and refuse to overwrite a different
//! artifact ([`manifest`]), crash-safe file replacement ([`atomic`]), a portable
//! seeded random generator whose streams never change between releases ([`rng`]),
//! TOML configs with `--set key=value` overrides ([`config`]), a cooperative stop flag that
//! signal handlers set ([`interrupt`]), the
//! [`progress::Progress`] trait that libraries report through, and [`IGNORE_TARGET`], the one
//! value both the batch loaders and the losses use for an unscored target; [`PALETTE`], the charts'
//! colours.

pub mod atomic;
pub mod config;
pub mod error;
pub mod interrupt;
pub mod manifest;
pub mod progress;
pub mod rng;
pub mod run;

pub use error::{Error, Result};

/// The target of a position that is not scored (prompt tokens in instruction tuning, padding): the
/// loaders write it, and every loss skips it and averages over the other targets. One value for
/// both sides of the batch format.
pub const IGNORE_TARGET: u32 = u32::MAX;

/// Colours (RGB) of successive series in every chart tsukuru draws: the Okabe–Ito set, readable
/// on white and distinct for the common forms of colour blindness.
pub const PALETTE: [(u8, u8, u8); 6] =
    [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233)];
pub use interrupt::Interrupt;
pub use manifest::{Manifest, Outcome, OutputDir, Prepared};
pub use progress::{NoProgress, Progress};
pub use rng::Rng;

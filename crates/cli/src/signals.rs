//! SIGINT and SIGTERM during long jobs: the first asks the job to save and stop at its next safe
//! point; a second one ends the process at once (for a job stuck where it cannot stop). Outside
//! such jobs the signals keep their default effect.

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tsukuru_core::Interrupt;

/// Exit status after a stop by signal (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// The process-wide handler state: the stop flag, and whether signals act as if unhandled.
struct Handlers {
    interrupt: Interrupt,
    passthrough: Arc<AtomicBool>,
}

static HANDLERS: OnceLock<Handlers> = OnceLock::new();

fn handlers() -> Result<&'static Handlers> {
    if let Some(h) = HANDLERS.get() {
        return Ok(h);
    }
    let h = Handlers { interrupt: Interrupt::new(), passthrough: Arc::new(AtomicBool::new(true)) };
    for sig in [SIGINT, SIGTERM] {
        // Actions run in registration order: outside a job, the default action; inside, exit at once
        // if a stop was already asked for (a second signal); otherwise ask for one.
        flag::register_conditional_default(sig, Arc::clone(&h.passthrough)).context("installing a signal handler")?;
        flag::register_conditional_shutdown(sig, EXIT_INTERRUPTED as i32, h.interrupt.flag())
            .context("installing a signal handler")?;
        flag::register(sig, h.interrupt.flag()).context("installing a signal handler")?;
    }
    Ok(HANDLERS.get_or_init(|| h))
}

/// While alive, SIGINT/SIGTERM set [`StopOnSignal::interrupt`] instead of ending the process.
pub struct StopOnSignal {
    handlers: &'static Handlers,
}

impl StopOnSignal {
    /// Starts catching the signals.
    pub fn install() -> Result<Self> {
        let handlers = handlers()?;
        handlers.interrupt.flag().store(false, Ordering::SeqCst);
        handlers.passthrough.store(false, Ordering::SeqCst);
        Ok(Self { handlers })
    }

    /// The flag the handlers set.
    pub fn interrupt(&self) -> &Interrupt {
        &self.handlers.interrupt
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        self.handlers.passthrough.store(true, Ordering::SeqCst);
    }
}

//! Progress for people and for logs: a live bar on a terminal, sparse JSON lines elsewhere.
//!
//! On a TTY, stderr shows a bar with rate and ETA. Off a TTY (CI, pipes), the
//! command stays quiet except one JSON line when a phase starts and ends, and
//! one every 30 seconds for long phases (with the phase's latest status, such as the loss), so logs
//! stay short and parseable.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tsukuru_core::progress::{Progress, Unit};

/// The progress sink chosen for this process.
pub enum Reporter {
    /// Live bars on a terminal.
    Terminal(Mutex<Option<ProgressBar>>),
    /// JSON lines on stderr.
    Lines(Mutex<LineState>),
    /// Nothing at all (`--quiet`).
    Quiet,
}

/// State of the JSON-lines reporter.
pub struct LineState {
    phase: String,
    unit: Unit,
    total: Option<u64>,
    started: Instant,
    last: Instant,
    done: AtomicU64,
    status: String,
}

impl Reporter {
    /// Bars when stderr is a terminal, JSON lines otherwise, nothing when `quiet`.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Reporter::Quiet
        } else if std::io::stderr().is_terminal() {
            Reporter::Terminal(Mutex::new(None))
        } else {
            let now = Instant::now();
            Reporter::Lines(Mutex::new(LineState {
                phase: String::new(),
                unit: Unit::Items,
                total: None,
                started: now,
                last: now,
                done: AtomicU64::new(0),
                status: String::new(),
            }))
        }
    }
}

fn line(event: serde_json::Value) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{event}");
}

impl Progress for Reporter {
    fn phase(&self, name: &str, total: Option<u64>, unit: Unit) {
        match self {
            Reporter::Terminal(bar) => {
                let pb = match total {
                    Some(t) => ProgressBar::new(t),
                    None => ProgressBar::new_spinner(),
                };
                let counts = match (total, unit) {
                    (None, _) => "{spinner} {msg}".to_string(),
                    (Some(_), Unit::Bytes) => {
                        "{wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, ETA {eta}) {msg}"
                            .into()
                    }
                    (Some(_), _) => format!(
                        "{{wide_bar}} {{human_pos}}/{{human_len}} {} ({{per_sec}}, ETA {{eta}}) {{msg}}",
                        unit.name()
                    ),
                };
                let style = ProgressStyle::with_template(&format!("{{prefix:>24}} [{{elapsed_precise}}] {counts}"))
                    .expect("valid template");
                pb.set_style(style);
                pb.set_prefix(name.to_string());
                pb.enable_steady_tick(Duration::from_millis(200));
                if let Some(old) = bar.lock().expect("not poisoned").replace(pb) {
                    old.finish_and_clear();
                }
            }
            Reporter::Lines(state) => {
                let mut s = state.lock().expect("not poisoned");
                let now = Instant::now();
                *s = LineState {
                    phase: name.into(),
                    unit,
                    total,
                    started: now,
                    last: now,
                    done: AtomicU64::new(0),
                    status: String::new(),
                };
                line(serde_json::json!({"event": "start", "phase": name, "total": total, "unit": unit.name()}));
            }
            Reporter::Quiet => {}
        }
    }

    fn advance(&self, n: u64) {
        match self {
            Reporter::Terminal(bar) => {
                if let Some(pb) = bar.lock().expect("not poisoned").as_ref() {
                    pb.inc(n);
                }
            }
            Reporter::Lines(state) => {
                let mut s = state.lock().expect("not poisoned");
                let done = s.done.fetch_add(n, Ordering::Relaxed) + n;
                if s.last.elapsed() >= Duration::from_secs(30) {
                    s.last = Instant::now();
                    let secs = s.started.elapsed().as_secs_f64();
                    line(serde_json::json!({
                        "event": "progress", "phase": s.phase, "done": done, "total": s.total,
                        "unit": s.unit.name(), "per_second": done as f64 / secs.max(1e-9), "status": s.status,
                    }));
                }
            }
            Reporter::Quiet => {}
        }
    }

    fn status(&self, status: &str) {
        match self {
            Reporter::Terminal(bar) => {
                if let Some(pb) = bar.lock().expect("not poisoned").as_ref() {
                    pb.set_message(status.to_string());
                }
            }
            Reporter::Lines(state) => state.lock().expect("not poisoned").status = status.to_string(),
            Reporter::Quiet => {}
        }
    }

    fn note(&self, message: &str) {
        match self {
            Reporter::Terminal(bar) => match bar.lock().expect("not poisoned").as_ref() {
                Some(pb) => pb.println(format!("note: {message}")),
                None => eprintln!("note: {message}"),
            },
            Reporter::Lines(state) => {
                let phase = state.lock().expect("not poisoned").phase.clone();
                line(serde_json::json!({ "event": "note", "phase": phase, "message": message }));
            }
            Reporter::Quiet => {}
        }
    }

    fn finish(&self, summary: &str) {
        match self {
            Reporter::Terminal(bar) => {
                if let Some(pb) = bar.lock().expect("not poisoned").take() {
                    pb.finish_and_clear();
                    eprintln!("{:>24} {summary}", pb.prefix());
                }
            }
            Reporter::Lines(state) => {
                let s = state.lock().expect("not poisoned");
                line(serde_json::json!({
                    "event": "finish", "phase": s.phase, "seconds": s.started.elapsed().as_secs_f64(), "summary": summary,
                }));
            }
            Reporter::Quiet => {}
        }
    }
}

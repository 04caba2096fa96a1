//! `GET /metrics` in Prometheus' text format: requests by route and outcome, tokens, queue depth,
//! running requests, KV-cache use, and histograms of the time to the first token and between
//! tokens (measured where the server receives the engine's events, so queueing is included).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tsukuru_infer::engine::EngineStats;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, &b) in BUCKETS.iter().enumerate() {
            if seconds <= b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    ttft: Histogram,
    itl: Histogram,
}

/// The server's measurements.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Times one request's tokens as their events arrive.
#[derive(Debug, Clone, Copy)]
pub struct TokenClock {
    start: Instant,
    last: Option<Instant>,
}

impl TokenClock {
    /// A clock started at submission.
    pub fn start() -> Self {
        Self { start: Instant::now(), last: None }
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Counts a finished request of `route` with its HTTP status.
    pub fn request(&self, route: &str, status: u16) {
        self.with(|m| *m.requests.entry((route.to_string(), status)).or_default() += 1);
    }

    /// Records a token's arrival: the first against submission, the others against the previous.
    pub fn token(&self, clock: &mut TokenClock) {
        let now = Instant::now();
        let gap: Duration = now - clock.last.unwrap_or(clock.start);
        self.with(|m| {
            if clock.last.is_none() {
                m.ttft.observe(gap.as_secs_f64())
            } else {
                m.itl.observe(gap.as_secs_f64())
            }
        });
        clock.last = Some(now);
    }

    /// The text exposition, with the engine's current counts.
    pub fn render(&self, engine: EngineStats) -> String {
        let mut out = String::new();
        self.with(|m| {
            let _ = writeln!(out, "# HELP tsukuru_requests_total Requests answered, by route and HTTP status.");
            let _ = writeln!(out, "# TYPE tsukuru_requests_total counter");
            for ((route, status), n) in &m.requests {
                let _ = writeln!(out, "tsukuru_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
            m.ttft.render(&mut out, "tsukuru_time_to_first_token_seconds", "From submission to the first token.");
            m.itl.render(&mut out, "tsukuru_inter_token_latency_seconds", "Between consecutive tokens of a request.");
        });
        let gauges = [
            ("tsukuru_prompt_tokens_total", "counter", "Prompt tokens prefilled.", engine.prompt_tokens as f64),
            ("tsukuru_generation_tokens_total", "counter", "Tokens generated.", engine.generated_tokens as f64),
            ("tsukuru_queue_depth", "gauge", "Requests waiting for a slot.", engine.queued as f64),
            ("tsukuru_running_requests", "gauge", "Requests being generated.", engine.running as f64),
            ("tsukuru_kv_cache_tokens", "gauge", "Tokens held for the running requests.", engine.cached_tokens as f64),
            ("tsukuru_kv_cache_blocks", "gauge", "Blocks of the key-value cache.", engine.cache_blocks as f64),
            (
                "tsukuru_kv_cache_blocks_used",
                "gauge",
                "Blocks held by running requests.",
                engine.cache_blocks_used as f64,
            ),
            (
                "tsukuru_kv_cache_usage_ratio",
                "gauge",
                "Blocks held by running requests over all blocks.",
                engine.cache_blocks_used as f64 / engine.cache_blocks.max(1) as f64,
            ),
            (
                "tsukuru_prefix_cache_hit_tokens_total",
                "counter",
                "Prompt tokens taken from the prefix cache instead of computed.",
                engine.prefix_hit_tokens as f64,
            ),
            (
                "tsukuru_preemptions_total",
                "counter",
                "Requests preempted for lack of cache blocks, to be recomputed.",
                engine.preemptions as f64,
            ),
        ];
        let rss = resident_bytes().map(|b| ("process_resident_memory_bytes", "gauge", "Resident memory.", b as f64));
        for (name, kind, help, v) in gauges.into_iter().chain(rss) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        out
    }
}

/// This process's resident memory (Linux: from /proc), or `None` where that is not available.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_the_text_parses_line_by_line() {
        let m = Metrics::default();
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 429);
        m.with(|i| {
            i.ttft.observe(0.003);
            i.ttft.observe(0.2);
        });
        let stats = EngineStats {
            queued: 2,
            running: 1,
            cached_tokens: 30,
            cache_blocks: 12,
            cache_blocks_used: 3,
            generated_tokens: 7,
            prompt_tokens: 9,
            prefix_hit_tokens: 16,
            preemptions: 1,
        };
        let text = m.render(stats);
        assert!(text.contains("tsukuru_requests_total{route=\"/v1/completions\",status=\"200\"} 2"));
        assert!(text.contains("tsukuru_time_to_first_token_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("tsukuru_time_to_first_token_seconds_bucket{le=\"0.25\"} 2"));
        assert!(text.contains("tsukuru_time_to_first_token_seconds_count 2"));
        assert!(text.contains("tsukuru_kv_cache_usage_ratio 0.25") && text.contains("tsukuru_queue_depth 2"));
        assert!(text.contains("tsukuru_prefix_cache_hit_tokens_total 16"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

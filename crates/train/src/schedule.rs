//! Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay.

use serde::{Deserialize, Serialize};

/// Shape of the learning rate over training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Linear warmup to the peak, then cosine decay to `min_ratio` × peak at the last step.
    Cosine {
        /// Warmup steps.
        warmup: u64,
        /// Final learning rate as a fraction of the peak.
        min_ratio: f64,
    },
    /// Warmup-stable-decay: warmup, constant at the peak, then linear decay over the last
    /// `decay_fraction` of training to `min_ratio` × peak (MiniCPM; nanochat's default shape).
    Wsd {
        /// Warmup steps.
        warmup: u64,
        /// Share of all steps spent decaying at the end.
        decay_fraction: f64,
        /// Final learning rate as a fraction of the peak.
        min_ratio: f64,
    },
}

impl Schedule {
    /// Learning-rate multiplier in [0, 1] at `step` (0-based) of `total` steps.
    pub fn factor(&self, step: u64, total: u64) -> f64 {
        let total = total.max(1);
        let warm = |w: u64| if w > 0 && step < w { Some((step + 1) as f64 / w as f64) } else { None };
        match *self {
            Schedule::Cosine { warmup, min_ratio } => {
                if let Some(f) = warm(warmup) {
                    return f;
                }
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
                min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Schedule::Wsd { warmup, decay_fraction, min_ratio } => {
                if let Some(f) = warm(warmup) {
                    return f;
                }
                let decay_steps = ((total as f64) * decay_fraction).round() as u64;
                let decay_start = total.saturating_sub(decay_steps);
                if step < decay_start || decay_steps == 0 {
                    1.0
                } else {
                    let progress = ((step - decay_start) as f64 / decay_steps as f64).min(1.0);
                    1.0 - (1.0 - min_ratio) * progress
                }
            }
        }
    }

    /// Checks the fields, naming the bad one.
    pub fn validate(&self) -> Result<(), String> {
        let (min_ratio, fraction) = match *self {
            Schedule::Cosine { min_ratio, .. } => (min_ratio, 0.0),
            Schedule::Wsd { min_ratio, decay_fraction, .. } => (min_ratio, decay_fraction),
        };
        if !(0.0..=1.0).contains(&min_ratio) {
            return Err(format!("schedule.min_ratio must be within [0, 1], got {min_ratio}"));
        }
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!("schedule.decay_fraction must be within [0, 1], got {fraction}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warms_up_peaks_and_decays() {
        let s = Schedule::Cosine { warmup: 10, min_ratio: 0.1 };
        assert!((s.factor(0, 100) - 0.1).abs() < 1e-12);
        assert!((s.factor(9, 100) - 1.0).abs() < 1e-12);
        assert!((s.factor(10, 100) - 1.0).abs() < 1e-12);
        assert!((s.factor(55, 100) - 0.55).abs() < 1e-12, "{}", s.factor(55, 100));
        assert!((s.factor(100, 100) - 0.1).abs() < 1e-12);
        assert!((1..100).all(|i| s.factor(i + 10, 100) <= s.factor(i + 9, 100) + 1e-12));
    }

    #[test]
    fn wsd_is_flat_then_decays_linearly() {
        let s = Schedule::Wsd { warmup: 0, decay_fraction: 0.2, min_ratio: 0.0 };
        assert_eq!(s.factor(0, 100), 1.0);
        assert_eq!(s.factor(79, 100), 1.0);
        assert!((s.factor(90, 100) - 0.5).abs() < 1e-12);
        assert!(Schedule::Wsd { warmup: 0, decay_fraction: 1.5, min_ratio: 0.0 }
            .validate()
            .unwrap_err()
            .contains("decay_fraction"));
    }
}

//! A training budget in one of three forms, turned into FLOPs: devices × hours, money at an
//! hourly price per device, or FLOPs directly. Devices run at a fraction of their peak, the model
//! FLOPs utilisation (MFU), given or read from a run's `metrics.jsonl`.

use crate::hardware::Cluster;
use crate::PlanError;
use std::path::Path;

/// How the budget was given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Training FLOPs.
    Flops(f64),
    /// Wall-clock hours on the whole cluster.
    Hours(f64),
    /// Money, at a price per device-hour.
    Usd {
        /// Total spend.
        usd: f64,
        /// Price of one device for one hour.
        per_device_hour: f64,
    },
}

impl Budget {
    /// Checks that every figure is finite and positive, naming the flag.
    pub fn validate(&self) -> Result<(), PlanError> {
        let figures: &[(&'static str, f64)] = match self {
            Budget::Flops(f) => &[("--flops", *f)],
            Budget::Hours(h) => &[("--hours", *h)],
            Budget::Usd { usd, per_device_hour } => &[("--usd", *usd), ("--usd-per-gpu-hour", *per_device_hour)],
        };
        for &(field, v) in figures {
            if !(v.is_finite() && v > 0.0) {
                return Err(PlanError::Input {
                    field,
                    value: v.to_string(),
                    reason: "must be a positive number".into(),
                });
            }
        }
        Ok(())
    }

    /// Wall-clock hours the cluster runs for (FLOPs: at the given MFU).
    pub fn hours(&self, cluster: &Cluster, mfu: f64) -> f64 {
        match *self {
            Budget::Flops(f) => f / (cluster.total_peak_flops() * mfu) / 3600.0,
            Budget::Hours(h) => h,
            Budget::Usd { usd, per_device_hour } => usd / per_device_hour / cluster.count as f64,
        }
    }

    /// Training FLOPs the budget buys on `cluster` at `mfu`.
    pub fn flops(&self, cluster: &Cluster, mfu: f64) -> f64 {
        match *self {
            Budget::Flops(f) => f,
            _ => self.hours(cluster, mfu) * 3600.0 * cluster.total_peak_flops() * mfu,
        }
    }
}

/// Checks an MFU given by the user: a fraction in (0, 1].
pub fn check_mfu(mfu: f64) -> Result<f64, PlanError> {
    if mfu.is_finite() && mfu > 0.0 && mfu <= 1.0 {
        Ok(mfu)
    } else {
        Err(PlanError::Input {
            field: "--mfu",
            value: mfu.to_string(),
            reason: "must be a fraction of the peak in (0, 1]; 0.3–0.5 is typical of well-tuned training".into(),
        })
    }
}

/// The median MFU of a pretraining run's steps, from its `metrics.jsonl` (the first tenth of the
/// steps skipped: warm-up and first-call costs are not the run's pace).
pub fn mfu_from_metrics(path: &Path) -> Result<f64, PlanError> {
    let file = |reason: String| PlanError::File { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file(format!("cannot read it: {e}")))?;
    let mut values = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| file(format!("line {}: not JSON: {e}", i + 1)))?;
        if let Some(m) = v.get("mfu").and_then(|m| m.as_f64()) {
            values.push(m);
        }
    }
    if values.is_empty() {
        return Err(file(
            "no step has an MFU: the run was trained without pretrain.peak_flops; give --mfu instead, or retrain \
             with --set pretrain.peak_flops=<device peak FLOP/s>"
                .into(),
        ));
    }
    let mut kept = values.split_off(values.len() / 10);
    kept.sort_by(f64::total_cmp);
    check_mfu(kept[kept.len() / 2]).map_err(|e| file(format!("its median MFU is unusable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_forms_of_budget_agree() {
        let h100 = Cluster::parse("8xH100", None, None).unwrap();
        let hours = Budget::Hours(4.0).flops(&h100, 0.4);
        assert!((hours / (8.0 * 989e12 * 0.4 * 4.0 * 3600.0) - 1.0).abs() < 1e-12);
        // $80 at $2.50 per device-hour is 32 device-hours: 4 hours on 8 devices.
        let usd = Budget::Usd { usd: 80.0, per_device_hour: 2.5 };
        assert!((usd.flops(&h100, 0.4) / hours - 1.0).abs() < 1e-12);
        assert!((Budget::Flops(hours).hours(&h100, 0.4) - 4.0).abs() < 1e-9);
    }

    #[test]
    fn bad_budgets_and_mfus_name_their_flag() {
        let e = Budget::Flops(-1e20).validate().unwrap_err().to_string();
        assert!(e.contains("--flops = -100000000000000000000") && e.contains("positive"), "{e}");
        let e = Budget::Usd { usd: 10.0, per_device_hour: 0.0 }.validate().unwrap_err().to_string();
        assert!(e.contains("--usd-per-gpu-hour"), "{e}");
        assert!(Budget::Hours(f64::NAN).validate().is_err());
        let e = check_mfu(1.3).unwrap_err().to_string();
        assert!(e.contains("--mfu = 1.3") && e.contains("(0, 1]"), "{e}");
        assert_eq!(check_mfu(0.45).unwrap(), 0.45);
    }

    #[test]
    fn mfu_is_the_median_of_a_runs_steps_after_warm_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut lines: Vec<String> = (0..20)
            .map(|i| {
                format!("{{\"step\":{i},\"loss\":3.0,\"mfu\":{}}}", if i < 2 { 0.01 } else { 0.3 + 0.001 * i as f64 })
            })
            .collect();
        lines.push("{\"step\":20,\"val_loss\":2.5}".into());
        std::fs::write(&path, lines.join("\n")).unwrap();
        let m = mfu_from_metrics(&path).unwrap();
        assert!((m - 0.311).abs() < 1e-9, "{m}");
        std::fs::write(&path, "{\"step\":1,\"mfu\":null}\n").unwrap();
        let e = mfu_from_metrics(&path).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("peak_flops"), "{e}");
    }
}

//! Accelerators and their dense bf16 peaks: what a budget in GPU-hours buys in FLOPs.
//!
//! Peaks are the vendors' dense (not 2:4 sparse) bf16 tensor-core figures with f32 accumulation,
//! per device; memory is the device's HBM. Real training reaches a fraction of the peak (the model
//! FLOPs utilisation, MFU), which the planner takes as a separate number.

use crate::PlanError;

/// One accelerator model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accelerator {
    /// Canonical name, as accepted by `--gpus`.
    pub name: &'static str,
    /// Dense bf16 peak, FLOP/s.
    pub peak_flops: f64,
    /// Device memory, bytes.
    pub memory_bytes: f64,
}

const GB: f64 = 1e9;

/// The known accelerators (names matched without regard to case).
pub const ACCELERATORS: &[Accelerator] = &[
    Accelerator { name: "B200", peak_flops: 2.25e15, memory_bytes: 180.0 * GB },
    Accelerator { name: "H200", peak_flops: 989e12, memory_bytes: 141.0 * GB },
    Accelerator { name: "H100", peak_flops: 989e12, memory_bytes: 80.0 * GB },
    Accelerator { name: "H100-PCIe", peak_flops: 756e12, memory_bytes: 80.0 * GB },
    Accelerator { name: "GH200", peak_flops: 989e12, memory_bytes: 96.0 * GB },
    Accelerator { name: "A100", peak_flops: 312e12, memory_bytes: 80.0 * GB },
    Accelerator { name: "A100-40GB", peak_flops: 312e12, memory_bytes: 40.0 * GB },
    Accelerator { name: "L40S", peak_flops: 362e12 / 2.0, memory_bytes: 48.0 * GB },
    Accelerator { name: "A10", peak_flops: 125e12, memory_bytes: 24.0 * GB },
    Accelerator { name: "RTX4090", peak_flops: 165e12, memory_bytes: 24.0 * GB },
    Accelerator { name: "MI300X", peak_flops: 1307e12, memory_bytes: 192.0 * GB },
    Accelerator { name: "MI250X", peak_flops: 383e12, memory_bytes: 128.0 * GB },
    Accelerator { name: "TPUv5p", peak_flops: 459e12, memory_bytes: 95.0 * GB },
    Accelerator { name: "TPUv5e", peak_flops: 197e12, memory_bytes: 16.0 * GB },
    Accelerator { name: "TPUv4", peak_flops: 275e12, memory_bytes: 32.0 * GB },
];

/// A number of identical accelerators, e.g. `8xH100`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// How many.
    pub count: u32,
    /// Which (a table name, or the user's own name with its peak given).
    pub name: String,
    /// Dense bf16 peak of one device, FLOP/s.
    pub peak_flops: f64,
    /// Memory of one device, bytes.
    pub memory_bytes: f64,
}

impl Cluster {
    /// Parses `COUNTxNAME` (`8xH100`, `8×H100`) or `NAME` (one device). `peak_tflops` and
    /// `memory_gb` replace the table's figures, and make any name acceptable (one's own hardware).
    pub fn parse(spec: &str, peak_tflops: Option<f64>, memory_gb: Option<f64>) -> Result<Self, PlanError> {
        let bad = |reason: String| PlanError::Input { field: "--gpus", value: spec.to_string(), reason };
        let spec_trim = spec.trim();
        let (count, name) = match spec_trim.split_once(['x', 'X', '×']) {
            Some((n, name)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => {
                let count: u32 = n.parse().map_err(|_| bad(format!("'{n}' is not a device count")))?;
                (count, name)
            }
            _ => (1, spec_trim),
        };
        if count == 0 {
            return Err(bad("the device count must be at least 1".into()));
        }
        if name.is_empty() {
            return Err(bad("no accelerator named: write COUNTxNAME, e.g. 8xH100".into()));
        }
        for (field, v) in [("--peak-tflops", peak_tflops), ("--gpu-memory-gb", memory_gb)] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(PlanError::Input { field, value: v.to_string(), reason: "must be positive".into() });
            }
        }
        let known = ACCELERATORS.iter().find(|a| a.name.eq_ignore_ascii_case(name));
        let (name, peak, memory) = match (known, peak_tflops) {
            (Some(a), _) => (a.name.to_string(), a.peak_flops, a.memory_bytes),
            (None, Some(p)) => (name.to_string(), p * 1e12, 80.0 * GB),
            (None, None) => {
                let known: Vec<&str> = ACCELERATORS.iter().map(|a| a.name).collect();
                return Err(bad(format!(
                    "unknown accelerator '{name}'; known: {} (or give its peak with --peak-tflops)",
                    known.join(", ")
                )));
            }
        };
        Ok(Self {
            count,
            name,
            peak_flops: peak_tflops.map_or(peak, |p| p * 1e12),
            memory_bytes: memory_gb.map_or(memory, |m| m * GB),
        })
    }

    /// Peak FLOP/s of all devices together.
    pub fn total_peak_flops(&self) -> f64 {
        self.count as f64 * self.peak_flops
    }
}

impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}", self.count, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_parse_with_and_without_a_count() {
        let c = Cluster::parse("8xH100", None, None).unwrap();
        assert_eq!((c.count, c.name.as_str()), (8, "H100"));
        assert_eq!(c.total_peak_flops(), 8.0 * 989e12);
        assert_eq!(Cluster::parse("a100-40gb", None, None).unwrap().memory_bytes, 40e9);
        assert_eq!(Cluster::parse("2×MI300X", None, None).unwrap().count, 2);
        assert_eq!(Cluster::parse("RTX4090", None, None).unwrap().count, 1);
        let e = Cluster::parse("8xH1000", None, None).unwrap_err().to_string();
        assert!(e.contains("--gpus") && e.contains("unknown accelerator 'H1000'") && e.contains("H200"), "{e}");
        assert!(Cluster::parse("0xH100", None, None).unwrap_err().to_string().contains("at least 1"));
        // One's own hardware: any name with its peak.
        let own = Cluster::parse("4xlab-card", Some(100.0), Some(48.0)).unwrap();
        assert_eq!((own.count, own.peak_flops, own.memory_bytes), (4, 1e14, 48e9));
        assert!(Cluster::parse("H100", Some(-1.0), None).unwrap_err().to_string().contains("--peak-tflops"));
    }
}

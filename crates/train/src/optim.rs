//! AdamW with parameter groups and global-norm gradient clipping, updating weights in place.
//!
//! Matrices get decoupled weight decay; norm gains and the embedding table do not (decaying a gain
//! toward zero or a rarely seen token's row toward nothing only hurts). Moments are kept in f32
//! whatever the parameters' dtype, so they can be checkpointed and resumed exactly.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use tsukuru_model::kernels::{self, adamw::adamw_step, adamw::AdamWStep};

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// First-moment decay (default 0.9).
    pub beta1: f64,
    /// Second-moment decay (default 0.95).
    pub beta2: f64,
    /// Denominator epsilon (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay for matrices (default 0.1).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// One trainable tensor and its optimiser state.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

/// The optimiser.
pub struct AdamW {
    slots: Vec<Slot>,
    cfg: AdamWConfig,
    step: u64,
}

/// Whether a parameter is decayed: matrices yes, except the embedding table; vectors (norms) never.
pub fn decays(name: &str, rank: usize) -> bool {
    rank >= 2 && !name.contains("embed_tokens")
}

impl AdamW {
    /// An optimiser over named variables (sorted by name, so state order is stable).
    pub fn new(mut vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let t = var.as_tensor();
                // Separate buffers: the fused update writes both moments in place.
                let m = Tensor::zeros(t.shape(), DType::F32, t.device())?;
                let v = Tensor::zeros(t.shape(), DType::F32, t.device())?;
                Ok(Slot { decay: decays(&name, t.rank()), name, var, m, v })
            })
            .collect::<Result<_>>()?;
        Ok(Self { slots, cfg, step: 0 })
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Global L2 norm of all gradients.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        #[cfg(feature = "cuda")]
        {
            // On the GPU: every gradient's sum of squares on the device, one read back (the
            // kernel takes one dtype for all; mixed ones take the general path below).
            let gs: Vec<&Tensor> = self.slots.iter().filter_map(|s| grads.get(s.var.as_tensor())).collect();
            let one_dtype = gs.windows(2).all(|w| w[0].dtype() == w[1].dtype());
            if !gs.is_empty() && one_dtype && tsukuru_model::gpu::supported(&gs) {
                return Ok(tsukuru_model::gpu::adamw::sum_squares(&gs)?.sqrt());
            }
        }
        let mut total = 0.0;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                total += if g.is_contiguous() && kernels::supported(g) {
                    kernels::adamw::sum_squares(g)?
                } else {
                    g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?
                };
            }
        }
        Ok(total.sqrt())
    }

    /// One update at learning rate `lr`, with gradients multiplied by `grad_scale`
    /// (gradient accumulation and clipping fold into it).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        let shared = AdamWStep { lr, weight_decay, beta1, beta2, eps, bias_corrections: (bc1, bc2), grad_scale };
        #[cfg(feature = "cuda")]
        if self.gpu_step(grads, &shared)? {
            return Ok(());
        }
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            let w = s.var.as_tensor();
            let step = AdamWStep { weight_decay: if s.decay { weight_decay } else { 0.0 }, ..shared };
            let fusable = [w, &s.m, &s.v, g].iter().all(|t| t.is_contiguous() && kernels::supported(t));
            if fusable && tsukuru_model::ops::fused_enabled() {
                adamw_step(w, &s.m, &s.v, g, &step)?;
                continue;
            }
            let g = (g.to_dtype(DType::F32)? * grad_scale)?;
            s.m = ((&s.m * beta1)? + (&g * (1.0 - beta1))?)?;
            s.v = ((&s.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let update = ((&s.m / bc1)? / ((&s.v / bc2)?.sqrt()? + eps)?)?;
            let w = s.var.as_tensor().to_dtype(DType::F32)?;
            let decayed = if s.decay { (&w * (1.0 - lr * weight_decay))? } else { w };
            let new = (decayed - (update * lr)?)?;
            s.var.set(&new.to_dtype(s.var.dtype())?)?;
        }
        Ok(())
    }

    /// On the GPU: every parameter with a gradient in one launch, when all of them can take it
    /// (f32 weights, one gradient dtype); false to leave the step to the other paths.
    #[cfg(feature = "cuda")]
    fn gpu_step(&self, grads: &GradStore, shared: &AdamWStep) -> Result<bool> {
        use tsukuru_model::gpu::adamw::{adamw_step, Param};
        let params: Vec<Param> = self
            .slots
            .iter()
            .filter_map(|s| {
                let g = grads.get(s.var.as_tensor())?;
                let weight_decay = if s.decay { shared.weight_decay } else { 0.0 };
                Some(Param { w: s.var.as_tensor(), m: &s.m, v: &s.v, g, weight_decay })
            })
            .collect();
        let Some(first) = params.first() else { return Ok(false) };
        let takes = |p: &Param| {
            tsukuru_model::gpu::supported(&[p.w, p.g]) && p.w.dtype() == DType::F32 && p.g.dtype() == first.g.dtype()
        };
        if !params.iter().all(takes) {
            return Ok(false);
        }
        adamw_step(&params, shared)?;
        Ok(true)
    }

    /// Optimiser state for a checkpoint: `m.NAME` and `v.NAME` moments, plus the update count.
    pub fn state(&self) -> (u64, Vec<(String, Tensor)>) {
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for s in &self.slots {
            out.push((format!("m.{}", s.name), s.m.clone()));
            out.push((format!("v.{}", s.name), s.v.clone()));
        }
        (self.step, out)
    }

    /// Restores [`AdamW::state`]; every moment must be present with the parameter's shape.
    pub fn load_state(&mut self, step: u64, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for s in &mut self.slots {
            for (key, slot) in [(format!("m.{}", s.name), &mut s.m), (format!("v.{}", s.name), &mut s.v)] {
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("missing optimiser state {key}")))?;
                if t.shape() != slot.shape() {
                    candle_core::bail!("optimiser state {key} has shape {:?}, expected {:?}", t.shape(), slot.shape());
                }
                *slot = t.to_dtype(DType::F32)?;
            }
        }
        self.step = step;
        Ok(())
    }

    /// Names of the decayed and undecayed groups (for logs and tests).
    pub fn groups(&self) -> (Vec<&str>, Vec<&str>) {
        let (d, n): (Vec<&Slot>, Vec<&Slot>) = self.slots.iter().partition(|s| s.decay);
        (d.iter().map(|s| s.name.as_str()).collect(), n.iter().map(|s| s.name.as_str()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_step_matches_the_formula() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.5f32], &dev).unwrap()).unwrap();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.5 };
        let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("norm".into(), b.clone())], cfg).unwrap();
        // loss = sum(w) * 3 + b²  →  dL/dw = 3, dL/db = 2b = 1
        let loss = ((w.as_tensor().sum_all().unwrap() * 3.0).unwrap()
            + b.as_tensor().sqr().unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        assert!((opt.grad_norm(&grads).unwrap() - (9.0f64 + 9.0 + 1.0).sqrt()).abs() < 1e-6);
        opt.step(&grads, 0.1, 1.0).unwrap();
        // First step: m̂ = g, v̂ = g², update = g / (|g| + eps) ≈ sign(g).
        // w ← w·(1 − 0.1·0.5) − 0.1·1 ;  b has no decay: b ← 0.5 − 0.1.
        let w_new: Vec<f32> = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!((w_new[0] - (1.0 * 0.95 - 0.1)).abs() < 1e-6 && (w_new[1] - (-2.0 * 0.95 - 0.1)).abs() < 1e-6);
        let b_new: Vec<f32> = b.as_tensor().to_vec1().unwrap();
        assert!((b_new[0] - 0.4).abs() < 1e-6, "{b_new:?}");
        assert_eq!(opt.groups(), (vec!["w"], vec!["norm"]));
    }
}

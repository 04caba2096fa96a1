//! Low-rank adapters (LoRA, Hu et al. 2021) on the model's projections.
//!
//! A projection `y = x · Wᵀ` becomes `y = x · Wᵀ + s · (x · Aᵀ) · Bᵀ` with `A (r × in)`, `B (out × r)`
//! and `s = alpha / r`; `W` stays frozen and only `A` and `B` train, so the optimiser holds two
//! moments for `r · (in + out)` numbers per projection instead of `in · out`. `B` starts at zero,
//! so an adapted model starts exactly where its base is. Merging writes `W + s · B · A` back
//! into a plain weight, so a checkpoint saved after tuning is an ordinary model.
//!
//! Adapters wrap the layers ([`Proj`]); the model code is the same with or without them.

use crate::ops::linear;
use candle_core::{Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use tsukuru_core::Rng;

/// The adapters' shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// Rank `r` of every adapter.
    pub rank: usize,
    /// Scale numerator: updates are multiplied by `alpha / rank`.
    pub alpha: f64,
}

impl LoraSpec {
    /// An error unless the rank is positive and alpha finite and positive.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 || !(self.alpha > 0.0 && self.alpha.is_finite()) {
            candle_core::bail!("LoRA needs rank ≥ 1 and alpha > 0, got rank {} and alpha {}", self.rank, self.alpha);
        }
        Ok(())
    }
}

/// The builder's prefix with a trailing dot (empty at the root).
fn prefix(vb: &VarBuilder) -> String {
    let p = vb.prefix();
    if p.is_empty() {
        p
    } else {
        format!("{p}.")
    }
}

/// One adapter: `A (r × in)`, `B (out × r)` and the scale `alpha / r`.
#[derive(Debug, Clone)]
pub struct Lora {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

/// A projection without bias, with an optional adapter.
#[derive(Debug, Clone)]
pub struct Proj {
    /// Its weight's name without `.weight` (`model.layers.0.self_attn.q_proj`).
    name: String,
    weight: Tensor,
    lora: Option<Lora>,
}

impl Proj {
    /// The projection `name` (its weight `name.weight`, `(out, in)`) from `vb`.
    pub fn new(vb: &VarBuilder, out_dim: usize, in_dim: usize, name: &str) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), &format!("{name}.weight"))?;
        Ok(Self { name: format!("{}{name}", prefix(vb)), weight, lora: None })
    }

    /// Its name without `.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The (frozen) base weight `(out, in)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// True when an adapter is attached.
    pub fn adapted(&self) -> bool {
        self.lora.is_some()
    }

    /// `x · Wᵀ`, plus the adapter's low-rank update when attached.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = linear(x, &self.weight)?;
        match &self.lora {
            None => Ok(y),
            Some(l) => y + (linear(&linear(x, &l.a)?, &l.b)? * l.scale)?,
        }
    }

    /// Attaches an adapter, its `A` and `B` created as variables in `vars` under
    /// `NAME.lora_A.weight` and `NAME.lora_B.weight` (the names Hugging Face PEFT uses): `A` drawn
    /// uniformly in ±1/√in from a generator keyed by `seed` and the name, `B` zero.
    pub fn attach(&mut self, spec: LoraSpec, vars: &VarMap, seed: u64) -> Result<()> {
        spec.validate()?;
        let (out, inp) = self.weight.dims2()?;
        let (dtype, dev) = (self.weight.dtype(), self.weight.device());
        let bound = 1.0 / (inp as f64).sqrt();
        let mut rng = Rng::stream(seed, &format!("lora/{}", self.name));
        let a: Vec<f32> = (0..spec.rank * inp).map(|_| ((2.0 * rng.f64() - 1.0) * bound) as f32).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (spec.rank, inp), dev)?.to_dtype(dtype)?)?;
        let b = Var::zeros((out, spec.rank), dtype, dev)?;
        let mut data = vars.data().lock().expect("not poisoned");
        data.insert(format!("{}.lora_A.weight", self.name), a.clone());
        data.insert(format!("{}.lora_B.weight", self.name), b.clone());
        self.lora =
            Some(Lora { a: a.as_tensor().clone(), b: b.as_tensor().clone(), scale: spec.alpha / spec.rank as f64 });
        Ok(())
    }

    /// The same projection with every tensor (weight and adapter) passed through `f`.
    pub(crate) fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let lora = match &self.lora {
            None => None,
            Some(l) => Some(Lora { a: f(&l.a)?, b: f(&l.b)?, scale: l.scale }),
        };
        Ok(Self { name: self.name.clone(), weight: f(&self.weight)?, lora })
    }

    /// The weight with the adapter folded in, `W + s · B · A` (the base weight when none).
    pub fn merged(&self) -> Result<Tensor> {
        match &self.lora {
            None => Ok(self.weight.clone()),
            Some(l) => {
                (&self.weight + (l.b.matmul(&l.a)? * l.scale)?.to_dtype(self.weight.dtype())?)?.detach().contiguous()
            }
        }
    }
}

//! The model a post-training job tunes: every parameter trainable, or the base frozen with LoRA
//! adapters ([`tsukuru_model::lora`]) as the only trained variables.
//!
//! Either way the checkpoints are plain models: with adapters, `model.safetensors` holds the base
//! weights with the adapters merged in (so `generate`, `chat` and the next stage load it like any
//! other), and `adapter.safetensors` the adapters themselves, from which a run resumes.

use crate::checkpoint::{self, Loaded, Meta, ADAPTER_FILE};
use crate::TrainError;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tsukuru_model::{LoraSpec, ModelConfig, Transformer};

/// A model being tuned and its trained variables.
pub struct Tunable {
    /// The model (with adapters attached when tuning with LoRA).
    pub model: Transformer,
    /// What the optimiser updates: every parameter, or the adapters.
    vars: VarMap,
    /// The frozen base weights, when adapters are trained.
    base: Option<HashMap<String, Tensor>>,
    config: ModelConfig,
}

impl Tunable {
    /// Loads the model in `dir` (a checkpoint directory) to tune, with `lora` adapters if given.
    pub fn load(
        dir: &Path,
        config: &ModelConfig,
        lora: Option<LoraSpec>,
        seed: u64,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let Some(spec) = lora else {
            let vars = checkpoint::read_params(dir, config, device)?;
            let model = Transformer::new(config, VarBuilder::from_varmap(&vars, DType::F32, device))?;
            return Ok(Self { model, vars, base: None, config: config.clone() });
        };
        spec.validate()?;
        let base = checkpoint::read_tensors(dir, "model.safetensors", device)?;
        let mut model = Transformer::new(config, VarBuilder::from_tensors(base.clone(), DType::F32, device))?;
        let vars = VarMap::new();
        model.attach_lora(spec, &vars, seed)?;
        Ok(Self { model, vars, base: Some(base), config: config.clone() })
    }

    /// The trained variables by name, for the optimiser.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.vars.data().lock().expect("not poisoned").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Number of trained values.
    pub fn trained_values(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Continues from checkpoint `dir`: the trained variables and the loop's state.
    pub fn restore(&self, dir: &Path, device: &Device) -> Result<Loaded, TrainError> {
        let file = if self.base.is_some() { ADAPTER_FILE } else { "model.safetensors" };
        checkpoint::load_from(dir, file, &self.vars, &self.config, device)
    }

    /// Writes a checkpoint under `root`: the plain (merged) model, the adapters when any.
    pub fn save(
        &self,
        root: &Path,
        opt_state: &[(String, Tensor)],
        meta: &Meta,
        tokenizer: &Path,
    ) -> Result<PathBuf, TrainError> {
        let trained: HashMap<String, Tensor> =
            self.named_vars().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
        match &self.base {
            None => checkpoint::save_weights(root, &trained, None, opt_state, meta, Some(tokenizer)),
            Some(base) => {
                let mut weights = base.clone();
                weights.extend(self.model.merged_weights()?);
                checkpoint::save_weights(root, &weights, Some(&trained), opt_state, meta, Some(tokenizer))
            }
        }
    }
}

//! Checkpoints: weights, optimiser moments, loader position and step, written atomically.
//!
//! A checkpoint is a directory `step-NNNNNNN/` holding `model.safetensors` (Hugging Face names),
//! `config.json` (the model config), `state.safetensors` (AdamW moments) and `meta.json` (step,
//! optimiser step, loader state, model config). It is written into a hidden temporary directory,
//! every file fsynced, then renamed into place, so a crash leaves either the whole checkpoint or
//! none. Loading checks every file and refuses a different model config, naming the fields.

use crate::TrainError;
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tsukuru_core::error::IoContext;
use tsukuru_model::ModelConfig;

/// The trained LoRA adapters of a checkpoint whose `model.safetensors` holds merged weights.
pub const ADAPTER_FILE: &str = "adapter.safetensors";

/// What `meta.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Optimiser steps taken by the loop (skipped ones included).
    pub step: u64,
    /// Updates applied by AdamW (bias correction depends on it).
    pub opt_step: u64,
    /// Where the training data was: the job's own loader state (pretraining's
    /// `tsukuru_tokens::LoaderState`, instruction tuning's `MixtureState`).
    pub loader: serde_json::Value,
    /// The model's shape.
    pub model: ModelConfig,
    /// Validation loss at this step, if measured.
    pub val_loss: Option<f64>,
}

/// A loaded checkpoint.
pub struct Loaded {
    /// Its metadata.
    pub meta: Meta,
    /// Optimiser moments.
    pub opt_state: HashMap<String, Tensor>,
}

/// Directory name of the checkpoint at `step`.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:07}")
}

fn ckpt_err(dir: &Path, what: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint(format!("{}: {what}", dir.display()))
}

fn fsync(path: &Path) -> Result<(), TrainError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).at("syncing", path)?;
    Ok(())
}

/// Writes a checkpoint of `params` and `opt_state` under `root/step-NNNNNNN`, atomically, with a
/// copy of `tokenizer` (a `tokenizer.json`) when given, so the checkpoint is usable on its own.
pub fn save(
    root: &Path,
    params: &VarMap,
    opt_state: &[(String, Tensor)],
    meta: &Meta,
    tokenizer: Option<&Path>,
) -> Result<PathBuf, TrainError> {
    let weights: HashMap<String, Tensor> =
        params.data().lock().expect("not poisoned").iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    save_weights(root, &weights, None, opt_state, meta, tokenizer)
}

/// [`save`] from the model's weights by name, plus the trained adapters (`adapter.safetensors`)
/// when the weights are a base with LoRA adapters merged in.
pub fn save_weights(
    root: &Path,
    weights: &HashMap<String, Tensor>,
    adapter: Option<&HashMap<String, Tensor>>,
    opt_state: &[(String, Tensor)],
    meta: &Meta,
    tokenizer: Option<&Path>,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(root).at("creating", root)?;
    let final_dir = root.join(dir_name(meta.step));
    let tmp = root.join(format!(".{}.tmp-{}", dir_name(meta.step), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at("removing", &tmp)?;
    }
    std::fs::create_dir_all(&tmp).at("creating", &tmp)?;
    candle_core::safetensors::save(weights, tmp.join("model.safetensors"))?;
    let state: HashMap<String, Tensor> = opt_state.iter().cloned().collect();
    candle_core::safetensors::save(&state, tmp.join("state.safetensors"))?;
    write_json(&tmp.join("config.json"), &meta.model)?;
    write_json(&tmp.join("meta.json"), meta)?;
    let mut files = vec!["model.safetensors", "state.safetensors", "config.json", "meta.json"];
    if let Some(adapter) = adapter {
        candle_core::safetensors::save(adapter, tmp.join(ADAPTER_FILE))?;
        files.push(ADAPTER_FILE);
    }
    if let Some(src) = tokenizer {
        std::fs::copy(src, tmp.join("tokenizer.json")).at("copying", src)?;
        files.push("tokenizer.json");
    }
    for f in files {
        fsync(&tmp.join(f))?;
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).at("replacing", &final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).at("renaming into place", &final_dir)?;
    tsukuru_core::atomic::sync_dir(root)?;
    Ok(final_dir)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).expect("checkpoint metadata serialises");
    std::fs::write(path, text).at("writing", path)?;
    Ok(())
}

/// Checkpoint directories under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(root).at("listing", root)? {
        let path = entry.at("listing", root)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes all but the newest `keep` checkpoints, and never the one named `protect` (the best),
/// plus temporary directories left by a process killed while writing a checkpoint.
pub fn prune(root: &Path, keep: usize, protect: Option<&Path>) -> Result<(), TrainError> {
    for entry in std::fs::read_dir(root).at("listing", root)? {
        let path = entry.at("listing", root)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with(".step-") && name.contains(".tmp-") && path.is_dir() {
            std::fs::remove_dir_all(&path).at("removing", &path)?;
        }
    }
    let all = list(root)?;
    let excess = all.len().saturating_sub(keep);
    for (_, path) in all.into_iter().take(excess) {
        if Some(path.as_path()) != protect {
            std::fs::remove_dir_all(&path).at("removing", &path)?;
        }
    }
    Ok(())
}

/// Loads the checkpoint in `dir` into `params`, refusing one made for another model config.
pub fn load(dir: &Path, params: &VarMap, expected: &ModelConfig, device: &Device) -> Result<Loaded, TrainError> {
    load_from(dir, "model.safetensors", params, expected, device)
}

/// [`load`] with the trained values read from `file` of the checkpoint (`adapter.safetensors`
/// for LoRA runs, whose `model.safetensors` holds merged weights).
pub fn load_from(
    dir: &Path,
    file: &str,
    params: &VarMap,
    expected: &ModelConfig,
    device: &Device,
) -> Result<Loaded, TrainError> {
    let meta_path = dir.join("meta.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| ckpt_err(dir, format!("cannot read meta.json: {e}")))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| ckpt_err(dir, format!("meta.json is corrupt: {e}")))?;
    let differing = differing_fields(&meta.model, expected);
    if !differing.is_empty() {
        return Err(ckpt_err(
            dir,
            format!("was made for a different model; differing fields: {}", differing.join(", ")),
        ));
    }
    load_weights_from(dir, file, params, device)?;
    let opt_state = read_tensors(dir, "state.safetensors", device)?;
    Ok(Loaded { meta, opt_state })
}

/// Sets every parameter in `params` from `dir/model.safetensors` (any model directory: a
/// checkpoint, or the base model a later stage starts from), naming what is missing or misshapen.
pub fn load_weights(dir: &Path, params: &VarMap, device: &Device) -> Result<(), TrainError> {
    load_weights_from(dir, "model.safetensors", params, device)
}

fn load_weights_from(dir: &Path, file: &str, params: &VarMap, device: &Device) -> Result<(), TrainError> {
    let weights = read_tensors(dir, file, device)?;
    for (name, var) in params.data().lock().expect("not poisoned").iter() {
        var.set(&stored(dir, file, &weights, name, var.dims())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Trainable f32 parameters for `config` made straight from `dir/model.safetensors` (no values
/// drawn first only to be overwritten), checked like [`load_weights`].
pub fn read_params(dir: &Path, config: &ModelConfig, device: &Device) -> Result<VarMap, TrainError> {
    let file = "model.safetensors";
    let weights = read_tensors(dir, file, device)?;
    let params = VarMap::new();
    {
        let mut data = params.data().lock().expect("fresh map is not poisoned");
        for (name, shape, _) in tsukuru_model::init::param_specs(config) {
            let t = stored(dir, file, &weights, &name, &shape)?.to_dtype(candle_core::DType::F32)?;
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    Ok(params)
}

/// The tensor `name` of `file`, which must have `shape`; errors name what is missing or misshapen.
fn stored<'w>(
    dir: &Path,
    file: &str,
    weights: &'w HashMap<String, Tensor>,
    name: &str,
    shape: &[usize],
) -> Result<&'w Tensor, TrainError> {
    let t = weights.get(name).ok_or_else(|| ckpt_err(dir, format!("{file} lacks {name}")))?;
    if t.dims() != shape {
        return Err(ckpt_err(dir, format!("{name} has shape {:?}, expected {:?}", t.shape(), shape)));
    }
    Ok(t)
}

/// Every tensor of `dir/file`, or an error naming the file.
pub fn read_tensors(dir: &Path, file: &str, device: &Device) -> Result<HashMap<String, Tensor>, TrainError> {
    candle_core::safetensors::load(dir.join(file), device)
        .map_err(|e| ckpt_err(dir, format!("{file} is unreadable (truncated or corrupt?): {e}")))
}

/// Names and values of the config fields that differ, e.g. `d_model: 64 ≠ 128`.
fn differing_fields(saved: &ModelConfig, now: &ModelConfig) -> Vec<String> {
    let (a, b) = (serde_json::to_value(saved).expect("serialises"), serde_json::to_value(now).expect("serialises"));
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return vec![] };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: checkpoint {v} ≠ config {}", b.get(k).cloned().unwrap_or_default()))
        .collect()
}

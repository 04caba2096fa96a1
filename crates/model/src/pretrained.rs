//! Loading a saved model: a directory with `config.json` and `model.safetensors` (the Hugging Face
//! layout every checkpoint uses), or a training directory whose newest checkpoint is taken.

use crate::{ModelConfig, Transformer};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};

/// Why a model could not be loaded; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No model files where one was expected.
    #[error(
        "{0}: no model here; expected config.json and model.safetensors, or a training directory \
         with step-NNNNNNN checkpoints"
    )]
    NotFound(PathBuf),
    /// A file exists but cannot be read or parsed.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The directory holding the model's files: `dir` itself when it has `config.json`, otherwise its
/// newest `step-NNNNNNN` checkpoint (a training output such as `runs/NAME/base`).
pub fn resolve(dir: &Path) -> Result<PathBuf, LoadError> {
    if dir.join("config.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let newest = std::fs::read_dir(dir)
        .map_err(|_| LoadError::NotFound(dir.to_path_buf()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let step = p.file_name()?.to_str()?.strip_prefix("step-")?.parse::<u64>().ok()?;
            p.join("config.json").is_file().then_some((step, p))
        })
        .max();
    newest.map(|(_, p)| p).ok_or_else(|| LoadError::NotFound(dir.to_path_buf()))
}

/// Reads `config.json` of a model directory.
pub fn load_config(dir: &Path) -> Result<ModelConfig, LoadError> {
    let path = dir.join("config.json");
    let corrupt = |reason: String| LoadError::Corrupt { path: path.clone(), reason };
    let text = std::fs::read_to_string(&path).map_err(|e| corrupt(e.to_string()))?;
    let cfg: ModelConfig = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    cfg.validate().map_err(|e| corrupt(e.to_string()))?;
    Ok(cfg)
}

/// Loads the model in `dir` (see [`resolve`]) in `dtype` on `device`.
pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Transformer, LoadError> {
    let dir = resolve(dir)?;
    let cfg = load_config(&dir)?;
    let path = dir.join("model.safetensors");
    let corrupt = |reason: String| LoadError::Corrupt { path: path.clone(), reason };
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| corrupt(format!("unreadable (truncated or corrupt?): {e}")))?;
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    Transformer::new(&cfg, vb).map_err(|e| corrupt(format!("does not match config.json: {e}")))
}

//! Export to GGUF, the single-file format of llama.cpp and the tools built on it, through
//! candle-core's GGUF writer and quantizers.
//!
//! A model without QK-norm is written as llama.cpp's `llama` architecture, one with QK-norm as
//! `qwen3`. The two differ in their rotary convention: `qwen3` rotates the two halves of each head
//! like this crate does, `llama` rotates adjacent pairs, so for `llama` the rows of the query and
//! key projections are reordered within each head (half-split order → interleaved order), which
//! leaves every attention score unchanged. The tokenizer (`tokenizer.json` beside the weights) goes
//! in as llama.cpp's byte-level BPE (`gpt2`) vocabulary with its merges and special tokens.

use crate::pretrained::{load_config, resolve, LoadError};
use crate::{Activation, ModelConfig};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tsukuru_core::atomic::AtomicFile;

/// Precision of the exported weight matrices (norm weights always stay f32, as llama.cpp expects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufDtype {
    /// 32-bit floats: the exact weights.
    F32,
    /// 16-bit floats.
    F16,
    /// llama.cpp's 8-bit blocks (32 weights share one f16 scale).
    Q8_0,
}

impl GgufDtype {
    fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` code (`LLAMA_FTYPE_ALL_F32`, `MOSTLY_F16`, `MOSTLY_Q8_0`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }
}

impl FromStr for GgufDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            other => Err(format!("unknown GGUF dtype {other:?}; use f32, f16 or q8_0")),
        }
    }
}

/// Why an export failed; every message names the file or the config field.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The model directory could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The model uses something llama.cpp has no architecture for.
    #[error("cannot export to GGUF: {0}")]
    Unsupported(String),
    /// The output exists already.
    #[error("{0} exists; choose another --out or pass --force to replace it")]
    Exists(PathBuf),
    /// Reading, converting or writing failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufSummary {
    /// llama.cpp architecture name (`llama` or `qwen3`).
    pub architecture: &'static str,
    /// Tensors written.
    pub tensors: usize,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Matrices kept in f16 because their rows do not split into whole quantization blocks.
    pub kept_f16: Vec<String>,
}

/// Writes the model in `model_dir` (a checkpoint, or a training directory whose newest checkpoint
/// is taken) to `out` as GGUF with weight matrices in `dtype`. The file appears only when complete;
/// an existing `out` is replaced only with `force`.
pub fn export_gguf(model_dir: &Path, out: &Path, dtype: GgufDtype, force: bool) -> Result<GgufSummary, ExportError> {
    if out.exists() && !force {
        return Err(ExportError::Exists(out.to_path_buf()));
    }
    let dir = resolve(model_dir)?;
    let cfg = load_config(&dir)?;
    let arch = architecture(&cfg)?;
    let weights_path = dir.join("model.safetensors");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: &dyn std::fmt::Display| ExportError::Io { path: path.clone(), reason: e.to_string() }
    };
    let weights = candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| io(&weights_path)(&e))?;
    let tokenizer_path = dir.join("tokenizer.json");
    let vocab = Vocabulary::read(&tokenizer_path, cfg.vocab_size)?;

    let mut kept_f16 = Vec::new();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (gguf_name, hf_name, permute_heads) in tensor_names(&cfg, arch) {
        let t = weights.get(&hf_name).ok_or_else(|| ExportError::Io {
            path: weights_path.clone(),
            reason: format!("tensor {hf_name} missing (config.json and the weights disagree)"),
        })?;
        let mut t = t.to_dtype(DType::F32).map_err(|e| io(&weights_path)(&e))?;
        if let Some(heads) = permute_heads {
            t = interleave_rotary_rows(&t, heads).map_err(|e| io(&weights_path)(&e))?;
        }
        let q = quantize(&t, dtype, &gguf_name, &mut kept_f16).map_err(|e| io(&weights_path)(&e))?;
        tensors.push((gguf_name, q));
    }

    let metadata = metadata(&cfg, arch, dtype, &vocab, dir.file_name().and_then(|n| n.to_str()).unwrap_or("tsukuru"));
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = AtomicFile::create(out).map_err(|e| io(out)(&e))?;
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).map_err(|e| io(out)(&e))?;
    file.commit().map_err(|e| io(out)(&e))?;
    let bytes = std::fs::metadata(out).map_err(|e| io(out)(&e))?.len();
    Ok(GgufSummary { architecture: arch, tensors: tensors.len(), bytes, kept_f16 })
}

/// The llama.cpp architecture that computes exactly what `cfg` describes.
fn architecture(cfg: &ModelConfig) -> Result<&'static str, ExportError> {
    if cfg.activation != Activation::Swiglu {
        return Err(ExportError::Unsupported(format!(
            "activation = {:?}; llama.cpp's llama and qwen3 architectures need SwiGLU",
            cfg.activation
        )));
    }
    Ok(if cfg.qk_norm { "qwen3" } else { "llama" })
}

/// (GGUF name, safetensors name, heads whose rotary rows are reordered) for every tensor.
fn tensor_names(cfg: &ModelConfig, arch: &str) -> Vec<(String, String, Option<usize>)> {
    let permute = |heads| (arch == "llama").then_some(heads);
    let mut names = vec![("token_embd.weight".to_string(), "model.embed_tokens.weight".to_string(), None)];
    for i in 0..cfg.n_layers {
        let l = format!("model.layers.{i}");
        let mut add =
            |gguf: &str, hf: &str, p: Option<usize>| names.push((format!("blk.{i}.{gguf}"), format!("{l}.{hf}"), p));
        add("attn_norm.weight", "input_layernorm.weight", None);
        add("attn_q.weight", "self_attn.q_proj.weight", permute(cfg.n_heads));
        add("attn_k.weight", "self_attn.k_proj.weight", permute(cfg.n_kv_heads));
        add("attn_v.weight", "self_attn.v_proj.weight", None);
        add("attn_output.weight", "self_attn.o_proj.weight", None);
        if cfg.qk_norm {
            add("attn_q_norm.weight", "self_attn.q_norm.weight", None);
            add("attn_k_norm.weight", "self_attn.k_norm.weight", None);
        }
        add("ffn_norm.weight", "post_attention_layernorm.weight", None);
        add("ffn_gate.weight", "mlp.gate_proj.weight", None);
        add("ffn_up.weight", "mlp.up_proj.weight", None);
        add("ffn_down.weight", "mlp.down_proj.weight", None);
    }
    names.push(("output_norm.weight".into(), "model.norm.weight".into(), None));
    if !cfg.tie_embeddings {
        // Without an output tensor llama.cpp reuses token_embd, which is what tying means.
        names.push(("output.weight".into(), "lm_head.weight".into(), None));
    }
    names
}

/// Reorders the rows of a `(heads · head_dim, in)` projection so that rotating adjacent pairs
/// (llama.cpp's `llama` convention) acts like rotating halves (this crate's): within each head,
/// output row `2i + j` takes input row `j · head_dim/2 + i`.
pub fn interleave_rotary_rows(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / heads;
    w.reshape((heads, 2, hd / 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))
}

fn quantize(t: &Tensor, dtype: GgufDtype, name: &str, kept_f16: &mut Vec<String>) -> candle_core::Result<QTensor> {
    if t.rank() == 1 {
        return QTensor::quantize(t, GgmlDType::F32);
    }
    let ggml = dtype.ggml();
    let row = t.dims()[t.rank() - 1];
    if !row.is_multiple_of(ggml.block_size()) {
        // llama.cpp's converter does the same with rows that do not fill whole blocks.
        kept_f16.push(name.to_string());
        return QTensor::quantize(t, GgmlDType::F16);
    }
    QTensor::quantize(t, ggml)
}

/// Byte-level BPE vocabulary from a Hugging Face `tokenizer.json`, padded to the model's size.
struct Vocabulary {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
}

/// llama.cpp's token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_UNUSED: i32 = 5;

impl Vocabulary {
    fn read(path: &Path, vocab_size: usize) -> Result<Self, ExportError> {
        let bad = |reason: String| ExportError::Io { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("{e}; GGUF needs the tokenizer beside the weights (checkpoints carry it)")))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return Err(bad(format!("tokenizer model {} is not BPE", model["type"])));
        }
        let vocab: HashMap<String, usize> =
            serde_json::from_value(model["vocab"].clone()).map_err(|e| bad(format!("model.vocab: {e}")))?;
        let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
        let mut types = vec![TOKEN_NORMAL; vocab_size];
        for (token, id) in vocab {
            let slot = tokens.get_mut(id).ok_or_else(|| {
                bad(format!("token {token:?} has id {id}, outside the model's vocab_size {vocab_size}"))
            })?;
            *slot = Some(token);
        }
        for added in json["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
                return Err(bad(format!("added token without id or content: {added}")));
            };
            let id = id as usize;
            if id >= vocab_size {
                return Err(bad(format!("added token {content:?} has id {id}, outside vocab_size {vocab_size}")));
            }
            tokens[id] = Some(content.to_string());
            if added["special"].as_bool() == Some(true) {
                types[id] = TOKEN_CONTROL;
            }
        }
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| {
                t.unwrap_or_else(|| {
                    types[id] = TOKEN_UNUSED;
                    format!("[PAD{id}]")
                })
            })
            .collect();
        // Merges are "a b" strings in older files and ["a", "b"] pairs in newer ones.
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| bad("model.merges missing".into()))?
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Array(p) if p.len() == 2 => {
                    Ok(format!("{} {}", p[0].as_str().unwrap_or_default(), p[1].as_str().unwrap_or_default()))
                }
                other => Err(bad(format!("unreadable merge {other}"))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { tokens, types, merges })
    }
}

fn metadata(cfg: &ModelConfig, arch: &str, dtype: GgufDtype, vocab: &Vocabulary, name: &str) -> Vec<(String, Value)> {
    let u32v = |v: usize| Value::U32(v as u32);
    let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    let key = |k: &str| format!("{arch}.{k}");
    let mut m = vec![
        ("general.architecture".to_string(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(dtype.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (key("vocab_size"), u32v(cfg.vocab_size)),
        (key("context_length"), u32v(cfg.max_seq_len)),
        (key("embedding_length"), u32v(cfg.d_model)),
        (key("block_count"), u32v(cfg.n_layers)),
        (key("feed_forward_length"), u32v(cfg.ffn_dim)),
        (key("attention.head_count"), u32v(cfg.n_heads)),
        (key("attention.head_count_kv"), u32v(cfg.n_kv_heads)),
        (key("attention.key_length"), u32v(cfg.head_dim())),
        (key("attention.value_length"), u32v(cfg.head_dim())),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(cfg.norm_eps as f32)),
        (key("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (key("rope.dimension_count"), u32v(cfg.head_dim())),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        // The closest of llama.cpp's pre-tokenizers: the same split as ours except that it keeps
        // runs of up to three digits together where ours keeps two (ids given directly are unaffected).
        ("tokenizer.ggml.pre".into(), Value::String("llama-bpe".into())),
        ("tokenizer.ggml.tokens".into(), strings(&vocab.tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(vocab.types.iter().map(|&t| Value::I32(t)).collect())),
        ("tokenizer.ggml.merges".into(), strings(&vocab.merges)),
        // Every document in training starts with BOS, so prompts should too.
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
    ];
    for (key, token) in [("bos", "<|bos|>"), ("eos", "<|eos|>"), ("padding", "<|pad|>")] {
        if let Some(id) = vocab.tokens.iter().position(|t| t == token) {
            m.push((format!("tokenizer.ggml.{key}_token_id"), u32v(id)));
        }
    }
    m
}

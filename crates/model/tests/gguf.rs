//! GGUF export: the file reads back with the metadata llama.cpp needs, exact f32 weights, the
//! rotary row order that keeps attention scores unchanged, and bounded quantization error.

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use tsukuru_model::gguf::{export_gguf, interleave_rotary_rows, ExportError, GgufDtype};
use tsukuru_model::init::init_params;
use tsukuru_model::{Activation, ModelConfig};

/// A model directory as checkpoints write it: config.json, model.safetensors, tokenizer.json.
fn model_dir(dir: &Path, cfg: &ModelConfig, tokenizer_tokens: usize) {
    let map = init_params(cfg, 7, DType::F32, &Device::Cpu).unwrap();
    map.save(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string(cfg).unwrap()).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> =
        (3..tokenizer_tokens).map(|i| (format!("t{i}"), serde_json::json!(i))).collect();
    let special = |id: usize, content: &str| serde_json::json!({"id": id, "content": content, "special": true});
    let tokenizer = serde_json::json!({
        "added_tokens": [special(0, "<|bos|>"), special(1, "<|eos|>"), special(2, "<|pad|>")],
        "model": {"type": "BPE", "vocab": vocab, "merges": [["t", "3"], "t 4"]},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

fn read(path: &Path) -> (Content, std::fs::File) {
    let mut f = std::fs::File::open(path).unwrap();
    (Content::read(&mut f).unwrap(), f)
}

fn tensor(content: &Content, f: &mut std::fs::File, name: &str) -> Tensor {
    content.tensor(f, name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap()
}

fn weights(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn f32_export_reads_back_exactly_with_llama_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig { n_kv_heads: 1, ..ModelConfig::from_depth(2, 300, 64) };
    model_dir(dir.path(), &cfg, 290);
    let out = dir.path().join("m.gguf");
    let s = export_gguf(dir.path(), &out, GgufDtype::F32, false).unwrap();
    assert_eq!(s.architecture, "llama");
    // Embedding, 9 per layer, final norm, output.
    assert_eq!(s.tensors, 1 + 9 * 2 + 2);

    let (content, mut f) = read(&out);
    let md = &content.metadata;
    let u32_of = |k: &str| md[k].to_u32().unwrap_or_else(|_| panic!("{k} is not u32"));
    assert_eq!(md["general.architecture"].to_string().unwrap(), "llama");
    assert_eq!(u32_of("llama.block_count"), 2);
    assert_eq!(u32_of("llama.embedding_length"), 128);
    assert_eq!(u32_of("llama.attention.head_count"), 2);
    assert_eq!(u32_of("llama.attention.head_count_kv"), 1);
    assert_eq!(u32_of("llama.feed_forward_length"), cfg.ffn_dim as u32);
    assert_eq!(u32_of("llama.context_length"), 64);
    assert_eq!(u32_of("tokenizer.ggml.bos_token_id"), 0);
    assert_eq!(u32_of("tokenizer.ggml.eos_token_id"), 1);
    let Value::Array(tokens) = &md["tokenizer.ggml.tokens"] else { panic!("tokens not an array") };
    assert_eq!(tokens.len(), 300, "the vocabulary is padded to the model's size");
    assert_eq!(tokens[5].to_string().unwrap(), "t5");
    assert_eq!(tokens[295].to_string().unwrap(), "[PAD295]");
    let Value::Array(types) = &md["tokenizer.ggml.token_type"] else { panic!("types not an array") };
    let type_of = |i: usize| types[i].to_i32().unwrap();
    assert_eq!((type_of(0), type_of(5), type_of(295)), (3, 1, 5), "control, normal, unused");
    let Value::Array(merges) = &md["tokenizer.ggml.merges"] else { panic!("merges not an array") };
    let merges: Vec<_> = merges.iter().map(|m| m.to_string().unwrap().clone()).collect();
    assert_eq!(merges, ["t 3", "t 4"]);

    // GGUF lists dimensions innermost first; llama.cpp's attn_q is (d_model, heads · head_dim).
    assert_eq!(content.tensor_infos["blk.0.attn_q.weight"].shape.dims(), [128, 128]);
    let w = weights(dir.path());
    for (gguf, hf) in [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output.weight", "lm_head.weight"),
        ("blk.1.attn_v.weight", "model.layers.1.self_attn.v_proj.weight"),
        ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ] {
        assert_eq!(max_diff(&tensor(&content, &mut f, gguf), &w[hf]), 0.0, "{gguf} differs from {hf}");
    }
    let q = &w["model.layers.0.self_attn.q_proj.weight"];
    let k = &w["model.layers.0.self_attn.k_proj.weight"];
    assert_eq!(max_diff(&tensor(&content, &mut f, "blk.0.attn_q.weight"), &interleave_rotary_rows(q, 2).unwrap()), 0.0);
    assert_eq!(max_diff(&tensor(&content, &mut f, "blk.0.attn_k.weight"), &interleave_rotary_rows(k, 1).unwrap()), 0.0);
    assert!(max_diff(&tensor(&content, &mut f, "blk.0.attn_q.weight"), q) > 0.0, "q must be reordered");
}

/// Rotating halves (this crate) of `W·x` and rotating adjacent pairs (llama.cpp) of the reordered
/// `W'·x` give the same vectors up to the same reordering, so every q·k score is unchanged.
#[test]
fn reordered_rows_with_pair_rotation_give_the_same_scores() {
    let (heads, hd, cols) = (2usize, 8usize, 5usize);
    let wq: Vec<f32> = (0..heads * hd * cols).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
    let wk: Vec<f32> = (0..heads * hd * cols).map(|i| ((i * 53 % 29) as f32 - 14.0) / 9.0).collect();
    let x: Vec<f32> = (0..cols).map(|i| i as f32 * 0.3 - 0.5).collect();
    let y: Vec<f32> = (0..cols).map(|i| 0.7 - i as f32 * 0.2).collect();
    let project = |w: &[f32], v: &[f32]| -> Vec<f32> {
        (0..heads * hd).map(|r| (0..cols).map(|c| w[r * cols + c] * v[c]).sum()).collect()
    };
    let reorder = |w: &[f32]| -> Vec<f32> {
        let t = Tensor::from_slice(w, (heads * hd, cols), &Device::Cpu).unwrap();
        interleave_rotary_rows(&t, heads).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let angle = |pos: usize, i: usize| pos as f32 / 10_000f32.powf(2.0 * i as f32 / hd as f32);
    let rotate_halves = |v: &mut [f32], pos: usize| {
        for h in v.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let (c, s) = (angle(pos, i).cos(), angle(pos, i).sin());
                let (a, b) = (h[i], h[i + hd / 2]);
                (h[i], h[i + hd / 2]) = (a * c - b * s, a * s + b * c);
            }
        }
    };
    let rotate_pairs = |v: &mut [f32], pos: usize| {
        for h in v.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let (c, s) = (angle(pos, i).cos(), angle(pos, i).sin());
                let (a, b) = (h[2 * i], h[2 * i + 1]);
                (h[2 * i], h[2 * i + 1]) = (a * c - b * s, a * s + b * c);
            }
        }
    };
    let dot = |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(a, b)| a * b).sum() };
    for (qpos, kpos) in [(3, 1), (7, 7), (12, 0)] {
        let (mut q, mut k) = (project(&wq, &x), project(&wk, &y));
        rotate_halves(&mut q, qpos);
        rotate_halves(&mut k, kpos);
        let (mut q2, mut k2) = (project(&reorder(&wq), &x), project(&reorder(&wk), &y));
        rotate_pairs(&mut q2, qpos);
        rotate_pairs(&mut k2, kpos);
        for h in 0..heads {
            let r = h * hd..(h + 1) * hd;
            let (a, b) = (dot(&q[r.clone()], &k[r.clone()]), dot(&q2[r.clone()], &k2[r]));
            assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "head {h}: score {a} became {b}");
        }
    }
}

#[test]
fn quantized_exports_stay_close_and_qk_norm_models_become_qwen3() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig { qk_norm: true, tie_embeddings: true, ..ModelConfig::from_depth(1, 300, 64) };
    model_dir(dir.path(), &cfg, 300);
    let w = weights(dir.path());
    let hf = "model.layers.0.mlp.up_proj.weight";
    for (dtype, name) in [(GgufDtype::F16, "f16"), (GgufDtype::Q8_0, "q8_0")] {
        let out = dir.path().join(format!("m-{name}.gguf"));
        let s = export_gguf(dir.path(), &out, dtype, false).unwrap();
        assert_eq!(s.architecture, "qwen3");
        assert!(s.kept_f16.is_empty());
        let (content, mut f) = read(&out);
        assert!(content.tensor_infos.contains_key("blk.0.attn_q_norm.weight"));
        assert!(!content.tensor_infos.contains_key("output.weight"), "tied models reuse token_embd");
        // qwen3 rotates halves like this crate: q is copied without reordering.
        let q = tensor(&content, &mut f, "blk.0.attn_q.weight");
        let scale = w[hf].abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let bound = if dtype == GgufDtype::F16 { scale * 1e-3 } else { scale / 127.0 };
        let up = tensor(&content, &mut f, "blk.0.ffn_up.weight");
        let err = max_diff(&up, &w[hf]);
        assert!(err > 0.0 && err <= bound, "{name}: error {err}, bound {bound}");
        assert!(max_diff(&q, &w["model.layers.0.self_attn.q_proj.weight"]) <= bound);
        // Norm weights stay f32 whatever the matrices use.
        assert_eq!(content.tensor_infos["blk.0.attn_norm.weight"].ggml_dtype, candle_core::quantized::GgmlDType::F32);
    }
}

#[test]
fn bad_requests_are_named_and_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig { activation: Activation::Relu2, ..ModelConfig::from_depth(1, 300, 64) };
    model_dir(dir.path(), &cfg, 300);
    let out = dir.path().join("m.gguf");
    let err = export_gguf(dir.path(), &out, GgufDtype::F32, false).unwrap_err();
    assert!(matches!(err, ExportError::Unsupported(_)) && err.to_string().contains("activation"), "{err}");
    assert!(!out.exists());

    std::fs::write(&out, b"earlier result").unwrap();
    let cfg = ModelConfig::from_depth(1, 300, 64);
    model_dir(dir.path(), &cfg, 300);
    let err = export_gguf(dir.path(), &out, GgufDtype::F32, false).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier result");
    export_gguf(dir.path(), &out, GgufDtype::F32, true).unwrap();
    assert_ne!(std::fs::read(&out).unwrap(), b"earlier result");

    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = export_gguf(dir.path(), &dir.path().join("n.gguf"), GgufDtype::F32, false).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    assert!("q4".parse::<GgufDtype>().unwrap_err().contains("q8_0"));
}

//! `tsukuru bench train|generate`: the Llama-style model on random tokens, timed like
//! `torch_ref.py` (same flags, same JSON keys, median of the timed repetitions after warm-up).

use super::median_time;
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use clap::Args;
use tsukuru_core::Rng;
use tsukuru_model::init::init_params;
use tsukuru_model::{Activation, KvCache, ModelConfig, Transformer};
use tsukuru_tokens::Batch;
use tsukuru_train::{AdamW, AdamWConfig, LoopConfig, NextToken, Precision, Schedule, Trainer};

/// Model shape and measurement settings (the flags of the PyTorch reference).
#[derive(Args, Debug)]
pub struct ModelBenchArgs {
    /// Vocabulary size.
    #[arg(long, default_value_t = 8192)]
    pub vocab: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 384)]
    pub d_model: usize,
    /// Query heads.
    #[arg(long, default_value_t = 6)]
    pub heads: usize,
    /// Key/value heads (0: as many as --heads).
    #[arg(long, default_value_t = 0)]
    pub kv_heads: usize,
    /// Feed-forward width (0: 8/3 × d_model rounded up to a multiple of 64).
    #[arg(long, default_value_t = 0)]
    pub ffn: usize,
    /// Training sequence length.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Rows per step (training) or sequences decoded together (generation).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Prompt tokens (generation).
    #[arg(long, default_value_t = 16)]
    pub prompt: usize,
    /// New tokens (generation).
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// RoPE base.
    #[arg(long, default_value_t = 10_000.0)]
    pub rope_theta: f64,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Device: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Data type of the arithmetic. Training in bfloat16 keeps f32 master weights and optimiser state
    /// (mixed precision, as autocast); float16 is for generation only.
    #[arg(long, default_value = "float32", value_parser = ["float32", "bfloat16", "float16"])]
    pub dtype: String,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Generation only: a trained model directory to load instead of random weights of the shape
    /// above (the shape flags are then ignored); its greedy tokens are printed for comparison.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// The hardware's dense matrix rate in TFLOP/s, for the MFU figure (0: not reported).
    #[arg(long, default_value_t = 0.0)]
    pub peak_tflops: f64,
}

impl ModelBenchArgs {
    fn config(&self, max_seq_len: usize) -> Result<ModelConfig> {
        let cfg = ModelConfig {
            vocab_size: self.vocab,
            d_model: self.d_model,
            n_layers: self.layers,
            n_heads: self.heads,
            n_kv_heads: if self.kv_heads == 0 { self.heads } else { self.kv_heads },
            ffn_dim: if self.ffn == 0 { (self.d_model * 8).div_ceil(3 * 64) * 64 } else { self.ffn },
            activation: Activation::Swiglu,
            norm_eps: 1e-5,
            rope_theta: self.rope_theta,
            qk_norm: false,
            tie_embeddings: false,
            max_seq_len,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn dtype(&self) -> DType {
        match self.dtype.as_str() {
            "bfloat16" => DType::BF16,
            "float16" => DType::F16,
            _ => DType::F32,
        }
    }

    /// Sets the worker count before any parallel work starts; returns the count in use.
    fn threads(&self) -> Result<usize> {
        if self.threads > 0 {
            // candle's CPU kernels size their pools from this variable; rayon's global pool is ours.
            std::env::set_var("RAYON_NUM_THREADS", self.threads.to_string());
            rayon::ThreadPoolBuilder::new()
                .num_threads(self.threads)
                .build_global()
                .context("sizing the thread pool")?;
        }
        Ok(rayon::current_num_threads())
    }
}

fn random_ids(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// `bench train`: AdamW steps with clipping through the same loop as pretraining.
pub fn train(a: &ModelBenchArgs) -> Result<()> {
    let threads = a.threads()?;
    let device = super::super::pretrain::device(&a.device)?;
    let cfg = a.config(a.seq)?;
    // As the reference does under autocast: f32 master weights, half-precision arithmetic.
    let precision = match a.dtype() {
        DType::F32 => Precision::Float32,
        DType::BF16 => Precision::Bfloat16,
        _ => anyhow::bail!(
            "bench train: --dtype {} needs loss scaling, which tsukuru does not do; use bfloat16",
            a.dtype
        ),
    };
    let map = init_params(&cfg, 0, DType::F32, &device)?;
    let model = Transformer::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &device))?;
    let named: Vec<_> = map.data().lock().expect("not poisoned").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let adamw = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let opt = AdamW::new(named.clone(), adamw)?;
    let steps = (a.warmup + a.steps.max(1)) as u64;
    let schedule = Schedule::Cosine { warmup: 0, min_ratio: 1.0 };
    let loop_cfg = LoopConfig { steps, lr: 3e-4, schedule, grad_accum: 1, clip: 1.0, max_bad_steps: 3, precision };
    let mut trainer = Trainer::new(named.into_iter().map(|(_, v)| v).collect(), opt, loop_cfg)?;
    // One fixed random batch, as the reference does: the measurement is compute, not data loading.
    let mut rng = Rng::stream(0, "bench");
    let ids = random_ids(&mut rng, a.batch * (a.seq + 1), a.vocab);
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for row in ids.chunks(a.seq + 1) {
        inputs.extend_from_slice(&row[..a.seq]);
        targets.extend_from_slice(&row[1..]);
    }
    let batch = Batch { inputs, targets, batch: a.batch, seq: a.seq, epoch: 0, lengths: None, reference: None };
    let step0 = model.cast(precision.compute_dtype())?;
    let first = tsukuru_train::Objective::loss(&NextToken, &step0, &batch, &device)?.to_dtype(DType::F32)?;
    let first = first.to_scalar::<f32>()?;
    let mut last = f64::NAN;
    let mut phases = Vec::new();
    let step_s = median_time(a.warmup, a.steps, || {
        let report = trainer.step(&model, &NextToken, &device, &mut || batch.clone())?;
        // As the reference times a step: to the end of its work on the device.
        device.synchronize()?;
        last = report.loss;
        phases.push((report.forward_s, report.backward_s));
        Ok(())
    })?;
    // Where a step's time goes (the optimiser's update is the rest), medians of the timed steps.
    let timed = &phases[a.warmup.min(phases.len())..];
    let median = |pick: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = timed.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let tokens = a.batch * a.seq;
    let nonemb = cfg.param_count() - cfg.vocab_size * cfg.d_model;
    let mut out = serde_json::json!({
        "mode": "train", "impl": "tsukuru", "device": a.device, "dtype": a.dtype, "compile": false,
        "params": cfg.param_count(), "params_nonemb": nonemb, "tokens_per_step": tokens,
        "step_s": round(step_s, 5), "tokens_per_s": round(tokens as f64 / step_s, 1),
        "forward_s": round(median(|p| p.0), 5), "backward_s": round(median(|p| p.1), 5),
        "loss_step0": round(f64::from(first), 4), "loss_last": round(last, 4), "threads": threads,
        "peak_rss_mib": peak_rss_mib(),
    });
    if let Some(gib) = peak_gpu_gib(&device) {
        out["peak_mem_gib"] = round(gib, 2).into();
        // Products cuBLASLt refused and candle ran instead (0 is the fast path throughout).
        #[cfg(feature = "cuda")]
        {
            out["matmul_fallbacks"] = tsukuru_model::gpu::matmul::fallbacks().into();
        }
    }
    if a.peak_tflops > 0.0 {
        // The reference's count: 6 FLOPs per non-embedding weight plus the attention term.
        let flops = 6.0 * nonemb as f64 + 12.0 * (cfg.n_layers * cfg.d_model * a.seq) as f64;
        out["mfu"] = round(flops * tokens as f64 / step_s / (a.peak_tflops * 1e12), 4).into();
    }
    println!("{out}");
    Ok(())
}

/// `bench generate`: prefill the prompt, then greedy decoding one token at a time over the cache.
pub fn generate(a: &ModelBenchArgs) -> Result<()> {
    let threads = a.threads()?;
    let device = super::super::pretrain::device(&a.device)?;
    let dtype = a.dtype();
    let model = match &a.model {
        Some(dir) => tsukuru_model::pretrained::load(dir, dtype, &device)?,
        None => {
            let cfg = a.config(a.prompt + a.new_tokens)?;
            let map = init_params(&cfg, 0, dtype, &device)?;
            // Plain tensors, as loaded weights are: decoding takes no gradient (the reference runs
            // under no_grad), and variables would have every op record itself for a backward pass
            // and the block ops keep what that pass reads.
            let data = map.data().lock().expect("not poisoned");
            let weights = data.iter().map(|(name, v)| (name.clone(), v.as_tensor().detach())).collect();
            Transformer::new(&cfg, VarBuilder::from_tensors(weights, dtype, &device))?
        }
    };
    let cfg = model.config().clone();
    anyhow::ensure!(
        a.prompt + a.new_tokens <= cfg.max_seq_len,
        "bench generate: --prompt {} + --new-tokens {} exceeds the model's max_seq_len {}",
        a.prompt,
        a.new_tokens,
        cfg.max_seq_len
    );
    let mut rng = Rng::stream(0, "bench");
    let prompt_ids = random_ids(&mut rng, a.batch * a.prompt, cfg.vocab_size);
    let prompt = Tensor::from_vec(prompt_ids.clone(), (a.batch, a.prompt), &device)?;
    let mut generated = Vec::new();
    let run_s = median_time(1, a.steps, || {
        let mut cache = KvCache::new(cfg.n_layers);
        let mut next = model.forward_last(&prompt, Some(&mut cache))?.argmax_keepdim(1)?;
        let mut steps = vec![next.clone()];
        for _ in 1..a.new_tokens {
            next = model.forward_last(&next, Some(&mut cache))?.argmax_keepdim(1)?;
            steps.push(next.clone());
        }
        generated = Tensor::cat(&steps, 1)?.to_vec2::<u32>()?;
        Ok(())
    })?;
    let mut out = serde_json::json!({
        "mode": "generate", "impl": "tsukuru", "device": a.device, "dtype": a.dtype, "batch": a.batch,
        "prompt": a.prompt, "new_tokens": a.new_tokens, "run_s": round(run_s, 4),
        "tokens_per_s": round((a.batch * a.new_tokens) as f64 / run_s, 1), "threads": threads,
        "peak_rss_mib": peak_rss_mib(),
    });
    if a.batch == 1 {
        // For checking another implementation on the same weights: same prompt, same greedy tokens.
        out["prompt_ids"] = prompt_ids.into();
        out["generated"] = generated.concat().into();
    }
    println!("{out}");
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Peak GiB in use from the GPU's memory pool (see `gpu::device::peak_bytes`); None off the GPU.
fn peak_gpu_gib(device: &candle_core::Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    return tsukuru_model::gpu::device::peak_bytes(device).map(|b| b as f64 / f64::from(1u32 << 30));
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        None
    }
}

/// Peak resident memory of this process (Linux's VmHWM), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(round(kib / 1024.0, 1))
}

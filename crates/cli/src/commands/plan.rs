//! `tsukuru plan`: a compute budget (devices × hours, money, or FLOPs) becomes a model, a token
//! count, a batch, a learning rate, a wall time and a pretraining config, by scaling laws.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use tsukuru_plan::budget::{check_mfu, mfu_from_metrics};
use tsukuru_plan::{Budget, Cluster, PlanRequest, Rule, EPOCH, HOFFMANN};

/// How the model size is chosen.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum RuleName {
    /// A fixed ratio of tokens per parameter (--tokens-per-param, Chinchilla's 20).
    Chinchilla,
    /// Lowest loss under Hoffmann et al. (2022)'s law: E 1.69, A 406.4, B 410.7, α 0.34, β 0.28.
    Hoffmann,
    /// Lowest loss under Epoch AI's refit (2024): E 1.8172, A 482.01, B 2085.43, α 0.3478, β 0.3658.
    Epoch,
    /// Lowest loss under your own law (--law FILE, e.g. a sweep's fit.json).
    Fit,
}

/// Arguments of `plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Budget as training FLOPs, e.g. 1e20.
    #[arg(long, value_parser = quantity, allow_negative_numbers = true)]
    pub flops: Option<f64>,
    /// Budget as wall-clock hours on --gpus.
    #[arg(long, value_parser = quantity, allow_negative_numbers = true)]
    pub hours: Option<f64>,
    /// Budget as money (with --usd-per-gpu-hour).
    #[arg(long, value_parser = quantity, allow_negative_numbers = true, requires = "usd_per_gpu_hour")]
    pub usd: Option<f64>,
    /// Price of one device for one hour.
    #[arg(long, value_parser = quantity, allow_negative_numbers = true, requires = "usd")]
    pub usd_per_gpu_hour: Option<f64>,
    /// Devices: COUNTxNAME, e.g. 8xH100 (known: B200, H200, H100, H100-PCIe, GH200, A100, A100-40GB,
    /// L40S, A10, RTX4090, MI300X, MI250X, TPUv5p, TPUv5e, TPUv4).
    #[arg(long, default_value = "1xH100")]
    pub gpus: String,
    /// Dense bf16 peak of one device in TFLOP/s (replaces the table's; any name then accepted).
    #[arg(long, value_parser = quantity, allow_negative_numbers = true)]
    pub peak_tflops: Option<f64>,
    /// Memory of one device in GB (replaces the table's).
    #[arg(long, value_parser = quantity, allow_negative_numbers = true)]
    pub gpu_memory_gb: Option<f64>,
    /// Model FLOPs utilisation expected: the share of the peak training reaches [default: 0.4].
    #[arg(long, value_parser = quantity, allow_negative_numbers = true, conflicts_with = "mfu_from")]
    pub mfu: Option<f64>,
    /// Take the MFU from a run's metrics.jsonl (median over its steps; the run needs pretrain.peak_flops).
    #[arg(long)]
    pub mfu_from: Option<PathBuf>,
    /// How the model size is chosen (fit needs --law; --law alone implies fit).
    #[arg(long, value_enum)]
    pub rule: Option<RuleName>,
    /// Tokens per parameter of the chinchilla rule.
    #[arg(long, default_value_t = 20.0, value_parser = quantity)]
    pub tokens_per_param: f64,
    /// Your own law: a sweep's fit.json, or {"e","a","b","alpha","beta"} as JSON.
    #[arg(long)]
    pub law: Option<PathBuf>,
    /// Distinct training tokens available (a count such as 5e9 or 300B, or a `data tokenize` output
    /// directory); repeated epochs count for less (Muennighoff et al., 2023).
    #[arg(long)]
    pub unique_tokens: Option<String>,
    /// Most passes over the unique tokens.
    #[arg(long, default_value_t = 4.0, value_parser = quantity)]
    pub max_epochs: f64,
    /// Largest model allowed (what you can afford to serve), e.g. 3e9 or 3B.
    #[arg(long, value_parser = quantity, allow_negative_numbers = true)]
    pub max_params: Option<f64>,
    /// Tokenizer vocabulary [default: the config's tokenizer.vocab_size with --config, else 32768].
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Training context [default: the config's pretrain.seq_len with --config, else 2048].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Tokens per optimiser step [default: DeepSeek LLM's fit, 0.292·C^0.3271].
    #[arg(long, value_parser = quantity, allow_negative_numbers = true)]
    pub batch_tokens: Option<f64>,
    /// Peak learning rate [default: DeepSeek LLM's fit, 0.3118·C^−0.125].
    #[arg(long, value_parser = quantity, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Config the plan is written into (its [pretrain] table is replaced; default: the built-in configs/tiny.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a key of --config first, e.g. --set pretrain.seq_len=1024 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Write the planned config here (for `tsukuru pretrain --config` or `tsukuru speedrun --config`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace a different file at --out.
    #[arg(long)]
    pub force: bool,
}

/// Parses a positive-or-not number with an optional k/M/B/T suffix (1e9, 7B, 500M, 1.5T).
pub fn quantity(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if "kKmMbBgGtT".contains(c) && !t.ends_with(['e', 'E']) => {
            let mul = match c.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'B' | 'G' => 1e9,
                _ => 1e12,
            };
            (&t[..i], mul)
        }
        _ => (t, 1.0),
    };
    num.parse::<f64>().map(|v| v * mul).map_err(|_| format!("'{s}' is not a number (e.g. 1e20, 7B, 500M)"))
}

/// Distinct tokens: a number, or the train split of a token-shard directory.
fn unique_tokens(spec: &str) -> Result<f64> {
    let path = Path::new(spec);
    if path.is_dir() {
        let train = tsukuru_tokens::TokenDataset::open(path, "train")
            .with_context(|| format!("--unique-tokens {spec}: reading the token shards"))?;
        return Ok(train.n_tokens() as f64);
    }
    quantity(spec).map_err(|e| anyhow::anyhow!("--unique-tokens: {e}, or a `tsukuru data tokenize` directory"))
}

/// Runs `plan`.
pub fn run(a: PlanArgs) -> Result<()> {
    let budget = match (a.flops, a.hours, a.usd, a.usd_per_gpu_hour) {
        (Some(f), None, None, _) => Budget::Flops(f),
        (None, Some(h), None, _) => Budget::Hours(h),
        (None, None, Some(usd), Some(per_device_hour)) => Budget::Usd { usd, per_device_hour },
        _ => bail!(
            "give exactly one budget: --flops 1e20, or --gpus 8xH100 --hours 4, or --usd 100 --usd-per-gpu-hour 2.5"
        ),
    };
    let cluster = Cluster::parse(&a.gpus, a.peak_tflops, a.gpu_memory_gb)?;
    let mfu = match (&a.mfu_from, a.mfu) {
        (Some(path), _) => mfu_from_metrics(path)?,
        (None, m) => check_mfu(m.unwrap_or(0.4))?,
    };
    let own = a.law.as_deref().map(tsukuru_plan::fit::read_law).transpose()?;
    let rule = match (a.rule, own) {
        (Some(RuleName::Chinchilla), _) => Rule::TokensPerParam(a.tokens_per_param),
        (Some(RuleName::Hoffmann), _) => Rule::Law(HOFFMANN),
        (Some(RuleName::Epoch), _) | (None, None) => Rule::Law(EPOCH),
        (Some(RuleName::Fit) | None, Some(l)) => Rule::Law(l),
        (Some(RuleName::Fit), None) => bail!("--rule fit needs --law FILE (a sweep's fit.json)"),
    };
    // Losses are predicted by the rule's law; the ratio rule borrows --law or Epoch AI's refit.
    let predict = match rule {
        Rule::Law(l) => l,
        Rule::TokensPerParam(_) => own.unwrap_or(EPOCH),
    };
    let origin = a.config.as_ref().map_or("built-in configs/tiny.toml".to_string(), |p| p.display().to_string());
    let base: toml::Table = tsukuru_core::config::load(a.config.as_deref(), super::speedrun::TINY, &a.sets)?;
    let from_config = |table: &str, key: &str| {
        a.config.as_ref().and_then(|_| base.get(table)?.get(key)?.as_integer()).map(|v| v as usize)
    };
    let req = PlanRequest {
        budget,
        cluster,
        mfu,
        rule,
        predict,
        vocab_size: a.vocab_size.or(from_config("tokenizer", "vocab_size")).unwrap_or(32768),
        seq_len: a.seq_len.or(from_config("pretrain", "seq_len")).unwrap_or(2048),
        unique_tokens: a.unique_tokens.as_deref().map(unique_tokens).transpose()?,
        max_epochs: a.max_epochs,
        max_params: a.max_params,
        batch_tokens: a.batch_tokens,
        lr: a.lr,
    };
    let plan = req.plan()?;
    print!("{}", plan.render(&req));
    if let Some(out) = &a.out {
        let base_text = toml::to_string(&base).context("re-serialising the config")?;
        let text = plan.pretrain_toml(&req, &base_text, &origin)?;
        if let Ok(old) = std::fs::read_to_string(out) {
            if old != text && !a.force {
                bail!(
                    "{} exists with other contents; pass --force to replace it, or choose another --out",
                    out.display()
                );
            }
        }
        tsukuru_core::atomic::write_atomic(out, text.as_bytes())?;
        println!("plan: wrote {} (train with `tsukuru pretrain --config {0} …`)", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities_take_scientific_notation_and_suffixes() {
        assert_eq!(quantity("1e20"), Ok(1e20));
        assert_eq!(quantity("7B"), Ok(7e9));
        assert_eq!(quantity("500m"), Ok(5e8));
        assert_eq!(quantity("1.5T"), Ok(1.5e12));
        assert_eq!(quantity("0.4"), Ok(0.4));
        assert!(quantity("lots").unwrap_err().contains("'lots' is not a number"));
    }
}

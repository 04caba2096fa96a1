//! `tsukuru serve`: the OpenAI-compatible HTTP API over a trained model.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tsukuru_infer::engine::{Engine, EngineConfig};
use tsukuru_serve::{AppState, ServeConfig};

/// Arguments of `serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The model: a checkpoint or a training directory (its final checkpoint).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes it to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// An accepted API key (repeatable); with any set, every route but /health needs one.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// Name the model is served under (default: the model directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Requests generated together.
    #[arg(long, default_value_t = 8)]
    pub max_running: usize,
    /// Requests waiting for a slot; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queued: usize,
    /// Prompt tokens prefilled per round over all requests, besides each request's next token (a
    /// long prompt never stalls the others longer than this).
    #[arg(long, default_value_t = 64)]
    pub prefill_chunk: usize,
    /// Positions per block of the key-value cache.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Tokens the key-value cache holds over all requests (0: --max-running full contexts); its
    /// memory is the bound on what serving uses beyond the weights.
    #[arg(long, default_value_t = 0)]
    pub cache_tokens: usize,
    /// A request still running after this many seconds ends with what it has.
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
}

/// Runs `serve` until SIGINT or SIGTERM, then lets requests in flight finish.
pub fn run(a: ServeArgs) -> Result<()> {
    if a.max_running == 0 || a.max_queued == 0 || a.prefill_chunk == 0 || a.block_size == 0 {
        bail!("--max-running, --max-queued, --prefill-chunk and --block-size must be at least 1");
    }
    let ckpt =
        tsukuru_model::pretrained::resolve(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let model = tsukuru_model::pretrained::load(&ckpt, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let tok = tsukuru_tokenizer::Tok::from_file(&ckpt.join("tokenizer.json"))?;
    let name = a.name.clone().unwrap_or_else(|| {
        a.model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tsukuru".into())
    });
    let engine_cfg = EngineConfig {
        max_running: a.max_running,
        max_queued: a.max_queued,
        prefill_chunk: a.prefill_chunk,
        block_size: a.block_size,
        cache_tokens: a.cache_tokens,
    };
    let engine = Engine::start(model, tok.clone(), engine_cfg).context("starting the engine")?;
    let cfg = ServeConfig {
        model_name: name.clone(),
        api_keys: a.api_keys.clone(),
        request_timeout: Duration::from_secs(a.request_timeout),
    };
    let state = Arc::new(AppState::new(engine, tok, cfg));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        println!("serving {name} on http://{addr} (OpenAI API under /v1; Ctrl-C or SIGTERM stops)");
        tsukuru_serve::serve(listener, state, shutdown()).await.context("serving")?;
        println!("serve: stopped after the requests in flight finished");
        Ok(())
    })
}

/// Resolves at the first SIGINT or SIGTERM.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

//! The serving engine: one thread owns the model and runs every admitted request in one batched
//! step per round (continuous batching), so requests join and leave at token boundaries and a long
//! prompt is prefilled in chunks alongside other requests' tokens instead of stalling them.
//!
//! A request waits in a bounded queue (full: [`SubmitError::Busy`], for a 429) and is admitted
//! when fewer than `max_running` run and the paged key–value cache has blocks for its prompt. Each
//! round every running request brings its next token, and prompts still being prefilled share
//! `prefill_chunk` more tokens; one forward pass over the paged cache ([`tsukuru_model::paged`])
//! serves them all, and new tokens stream as [`Event`]s over each request's channel. A request
//! ends at a stop token, a stop sequence (held back until it is certain, never sent),
//! `max_tokens`, the context's end, its deadline, or when its receiver is dropped (the client went
//! away): its blocks are freed at once. Full blocks of prompt are kept in a prefix cache per tenant
//! ([`crate::blocks`]). When the cache runs out of blocks, the newest request is preempted: its
//! blocks are freed and it is recomputed later from its tokens, so memory stays bounded.
//!
//! Each sequence keeps its own sampler, and the batched pass computes every token the same way
//! whatever else is in the batch, so outputs never depend on what else runs (tests hold
//! concurrent greedy outputs equal to sequential ones, token for token).

mod scheduler;
mod seq;

use crate::sampler::SamplingParams;
use crate::InferError;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;
use tsukuru_model::{KvBlocks, Transformer};
use tsukuru_tokenizer::Tok;

/// Limits of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Requests advanced together.
    pub max_running: usize,
    /// Requests waiting for a slot; more are refused.
    pub max_queued: usize,
    /// Prompt tokens prefilled per round, over all requests, besides each request's next token.
    pub prefill_chunk: usize,
    /// Positions per block of the key–value cache.
    pub block_size: usize,
    /// Tokens the key–value cache holds over all requests (0: `max_running` full contexts); at
    /// least one full context.
    pub cache_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { max_running: 8, max_queued: 64, prefill_chunk: 64, block_size: 16, cache_tokens: 0 }
    }
}

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Prompt tokens (with BOS or the chat template already applied).
    pub prompt: Vec<u32>,
    /// Temperature, top-k, top-p, seed.
    pub sampling: SamplingParams,
    /// Most new tokens (0: only score the prompt).
    pub max_tokens: usize,
    /// Text that ends generation (not sent).
    pub stop: Vec<String>,
    /// Tokens that end generation (not sent).
    pub stop_tokens: Vec<u32>,
    /// Subtracted from the logit of every token already generated (OpenAI's presence penalty).
    pub presence_penalty: f32,
    /// Subtracted once per earlier occurrence (OpenAI's frequency penalty).
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens at every step (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// Alternatives reported with each token's log-probability (0: only the chosen one's).
    pub top_logprobs: usize,
    /// Report the log-probability of every prompt token (for `echo` with `logprobs`).
    pub prompt_logprobs: bool,
    /// Give up at this instant.
    pub deadline: Option<Instant>,
    /// Whose cached prompt blocks this request may share: only requests of the same tenant share
    /// them (the server passes the API key).
    pub tenant: Arc<str>,
}

/// A token's log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token.
    pub id: u32,
    /// Its natural-log probability.
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens there, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// A stop token or stop sequence.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
    /// The deadline passed.
    Deadline,
}

/// What a request's channel carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Log-probabilities of the prompt's tokens (none for the first), when asked for.
    Prompt(Vec<Option<TokenLogprob>>),
    /// A new token and the text it releases (empty while a character or a possible stop sequence
    /// is incomplete).
    Token {
        /// The token and its log-probability.
        logprob: TokenLogprob,
        /// Text released.
        text: String,
    },
    /// The end: the last held text, why, and the token counts.
    Done {
        /// Text still held at the end.
        text: String,
        /// Why it ended.
        finish: Finish,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
    },
    /// The request failed inside the engine.
    Failed(String),
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full; retry later.
    #[error("the server is busy: {0} requests are waiting; retry shortly")]
    Busy(usize),
    /// The request cannot be run.
    #[error("{0}")]
    Invalid(String),
    /// The engine has stopped.
    #[error("the engine has stopped")]
    Stopped,
}

/// Counts for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EngineStats {
    /// Requests waiting.
    pub queued: usize,
    /// Requests running.
    pub running: usize,
    /// Tokens held in running requests' KV caches.
    pub cached_tokens: usize,
    /// Blocks of the key–value cache.
    pub cache_blocks: usize,
    /// Blocks held by running requests.
    pub cache_blocks_used: usize,
    /// Prompt tokens taken from the prefix cache instead of being computed, since the start.
    pub prefix_hit_tokens: usize,
    /// Requests preempted for lack of cache blocks (to be recomputed), since the start.
    pub preemptions: usize,
    /// Tokens generated since the start.
    pub generated_tokens: usize,
    /// Prompt tokens of the requests taken from the queue since the start.
    pub prompt_tokens: usize,
}

/// Counters the engine thread updates and handles read.
#[derive(Default)]
struct Shared {
    queued: AtomicUsize,
    running: AtomicUsize,
    cached_tokens: AtomicUsize,
    cache_blocks_used: AtomicUsize,
    generated_tokens: AtomicUsize,
    prompt_tokens: AtomicUsize,
    prefix_hit_tokens: AtomicUsize,
    preemptions: AtomicUsize,
}

/// A handle to the engine thread; cloning shares it. The thread ends when every handle is dropped
/// and the running requests are done.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<(Request, Sender<Event>)>,
    shared: Arc<Shared>,
    context: usize,
    vocab: usize,
    max_queued: usize,
    cache_blocks: usize,
}

impl Engine {
    /// Starts the engine thread over `model` and `tok`. Fails when the model cannot run on the
    /// paged cache (it needs f32 weights on the CPU) or the cache cannot hold one full context.
    pub fn start(model: Transformer, tok: Tok, cfg: EngineConfig) -> Result<Self, InferError> {
        let (context, vocab) = (model.config().max_seq_len, model.config().vocab_size);
        if !model.supports_paged() {
            return Err(InferError::Request("serving needs a model with f32 weights on the CPU".into()));
        }
        let block_size = cfg.block_size.max(1);
        let tokens = if cfg.cache_tokens == 0 { cfg.max_running.max(1) * context } else { cfg.cache_tokens };
        if tokens < context {
            return Err(InferError::Request(format!(
                "a key-value cache of {tokens} tokens cannot hold one full context of {context}; give at least {context}"
            )));
        }
        let cache_blocks = tokens.div_ceil(block_size);
        let (tx, rx) = mpsc::sync_channel(cfg.max_queued.max(1));
        let shared = Arc::new(Shared::default());
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("tsukuru-engine".into())
            .spawn(move || {
                let kv = KvBlocks::new(model.config(), block_size, cache_blocks);
                scheduler::Scheduler::new(&model, &tok, cfg, kv, &worker).run(&rx)
            })
            .map_err(|e| InferError::Request(format!("cannot start the engine thread: {e}")))?;
        Ok(Self { tx, shared, context, vocab, max_queued: cfg.max_queued, cache_blocks })
    }

    /// The model's context in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Queues `req`; its events arrive on the returned channel. Dropping the receiver cancels it.
    pub fn submit(&self, req: Request) -> std::result::Result<Receiver<Event>, SubmitError> {
        if req.prompt.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if req.prompt.len() >= self.context {
            return Err(SubmitError::Invalid(format!(
                "the prompt has {} tokens but the model's context is {}; shorten it",
                req.prompt.len(),
                self.context
            )));
        }
        if let Some(bad) =
            req.prompt.iter().chain(req.logit_bias.iter().map(|(t, _)| t)).find(|&&t| t as usize >= self.vocab)
        {
            return Err(SubmitError::Invalid(format!("token id {bad} is outside the vocabulary of {}", self.vocab)));
        }
        req.sampling.validate().map_err(|e| SubmitError::Invalid(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send((req, tx)) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Busy(self.max_queued),
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    /// Current counts.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            queued: self.shared.queued.load(Ordering::SeqCst),
            running: self.shared.running.load(Ordering::SeqCst),
            cached_tokens: self.shared.cached_tokens.load(Ordering::SeqCst),
            cache_blocks: self.cache_blocks,
            cache_blocks_used: self.shared.cache_blocks_used.load(Ordering::SeqCst),
            generated_tokens: self.shared.generated_tokens.load(Ordering::SeqCst),
            prompt_tokens: self.shared.prompt_tokens.load(Ordering::SeqCst),
            prefix_hit_tokens: self.shared.prefix_hit_tokens.load(Ordering::SeqCst),
            preemptions: self.shared.preemptions.load(Ordering::SeqCst),
        }
    }
}

/// Runs `req` alone to the end and collects its events (for tests and one-off use).
pub fn collect(engine: &Engine, req: Request) -> std::result::Result<Vec<Event>, InferError> {
    let rx = engine.submit(req).map_err(|e| InferError::Request(e.to_string()))?;
    let mut out = Vec::new();
    for event in rx {
        let last = matches!(event, Event::Done { .. } | Event::Failed(_));
        out.push(event);
        if last {
            break;
        }
    }
    Ok(out)
}

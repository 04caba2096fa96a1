//! The serving engine: one thread owns the model and advances every running request by one step
//! per round, so requests join and leave at token boundaries and a long prompt is prefilled in
//! chunks between other requests' tokens instead of stalling them.
//!
//! A request waits in a bounded queue (full: [`SubmitError::Busy`], for a 429), is admitted when
//! fewer than `max_running` run, then alternates: prompt chunks of `prefill_chunk` tokens into its
//! KV cache, then one sampled token per round, streamed as [`Event`]s over its own channel. It ends
//! at a stop token, a stop sequence (held back until it is certain, never sent), `max_tokens`, the
//! context's end, its deadline, or when its receiver is dropped (the client went away): the slot is
//! freed at once. Each sequence keeps its own cache and sampler, so its tokens never depend on what
//! else runs (tests hold concurrent greedy outputs equal to sequential ones).

use crate::sampler::{Sampler, SamplingParams};
use crate::stop::{Released, StopText};
use crate::stream::TextStream;
use crate::{InferError, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;
use tsukuru_model::{KvCache, Transformer};
use tsukuru_tokenizer::Tok;

/// Limits of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Requests advanced together.
    pub max_running: usize,
    /// Requests waiting for a slot; more are refused.
    pub max_queued: usize,
    /// Prompt tokens prefilled per round.
    pub prefill_chunk: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { max_running: 8, max_queued: 64, prefill_chunk: 64 }
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
    /// Tokens generated since the start.
    pub generated_tokens: usize,
    /// Prompt tokens prefilled since the start.
    pub prompt_tokens: usize,
}

#[derive(Default)]
struct Shared {
    queued: AtomicUsize,
    running: AtomicUsize,
    cached_tokens: AtomicUsize,
    generated_tokens: AtomicUsize,
    prompt_tokens: AtomicUsize,
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
    max_running: usize,
}

impl Engine {
    /// Starts the engine thread over `model` and `tok`.
    pub fn start(model: Transformer, tok: Tok, cfg: EngineConfig) -> Self {
        let (tx, rx) = mpsc::sync_channel(cfg.max_queued.max(1));
        let shared = Arc::new(Shared::default());
        let (context, vocab) = (model.config().max_seq_len, model.config().vocab_size);
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("tsukuru-engine".into())
            .spawn(move || run(&model, &tok, cfg, &rx, &worker))
            .expect("the engine thread starts");
        Self { tx, shared, context, vocab, max_queued: cfg.max_queued, max_running: cfg.max_running }
    }

    /// The model's context in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Tokens the running requests' caches can hold at most (running slots × context).
    pub fn cache_capacity(&self) -> usize {
        self.max_running * self.context
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
            generated_tokens: self.shared.generated_tokens.load(Ordering::SeqCst),
            prompt_tokens: self.shared.prompt_tokens.load(Ordering::SeqCst),
        }
    }
}

/// One running request.
struct Seq<'t> {
    req: Request,
    events: Sender<Event>,
    cache: KvCache,
    sampler: Sampler,
    stream: TextStream<'t>,
    stop: StopText,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Log-probabilities of the prompt's tokens so far (when asked for), sent once it is all in.
    scored: Vec<Option<TokenLogprob>>,
    /// Logits for the next token, once the prompt is in.
    next: Option<Vec<f32>>,
    generated: usize,
    /// Occurrences of each generated token, for the penalties.
    counts: std::collections::BTreeMap<u32, u32>,
    /// Set when finished or abandoned.
    done: bool,
}

impl<'t> Seq<'t> {
    fn new(req: Request, events: Sender<Event>, model: &Transformer, tok: &'t Tok) -> Result<Self> {
        let sampler = Sampler::new(req.sampling)?;
        let stop = StopText::new(&req.stop);
        let cache = KvCache::new(model.config().n_layers);
        Ok(Self {
            req,
            events,
            cache,
            sampler,
            stream: TextStream::new(tok),
            stop,
            prefilled: 0,
            scored: Vec::new(),
            next: None,
            generated: 0,
            counts: Default::default(),
            done: false,
        })
    }

    /// Sends `event`; a dropped receiver abandons the request.
    fn send(&mut self, event: Event) {
        if self.events.send(event).is_err() {
            self.done = true;
        }
    }

    fn finish(&mut self, finish: Finish) -> Result<()> {
        let tail = self.stream.finish()?;
        let text = match self.stop.push(&tail) {
            Released::Text(t) => t + &self.stop.finish(),
            Released::Stopped(t) => t,
        };
        self.end(text, finish);
        Ok(())
    }

    /// Sends the last event and marks the request finished.
    fn end(&mut self, text: String, finish: Finish) {
        let (prompt_tokens, completion_tokens) = (self.req.prompt.len(), self.generated);
        self.send(Event::Done { text, finish, prompt_tokens, completion_tokens });
        self.done = true;
    }

    /// One round: a prompt chunk, or one new token.
    fn step(&mut self, model: &Transformer, chunk: usize, shared: &Shared) -> Result<()> {
        if self.req.deadline.is_some_and(|d| Instant::now() >= d) {
            return self.finish(Finish::Deadline);
        }
        let device = model.device();
        if self.next.is_none() {
            let end = (self.prefilled + chunk.max(1)).min(self.req.prompt.len());
            let ids = Tensor::new(&self.req.prompt[self.prefilled..end], device)?.unsqueeze(0)?;
            // Every position's logits: the last one predicts the first new token, the others
            // score the prompt's own next tokens when those are asked for.
            let logits = model.forward(&ids, Some(&mut self.cache))?.squeeze(0)?.to_dtype(DType::F32)?;
            if self.req.prompt_logprobs {
                if self.prefilled == 0 {
                    self.scored.push(None);
                }
                for (j, row) in logits.to_vec2::<f32>()?.iter().enumerate() {
                    if let Some(&next) = self.req.prompt.get(self.prefilled + j + 1) {
                        self.scored.push(Some(describe(row, next, self.req.top_logprobs)));
                    }
                }
            }
            shared.prompt_tokens.fetch_add(end - self.prefilled, Ordering::SeqCst);
            let last = logits.get(end - self.prefilled - 1)?.to_vec1()?;
            self.prefilled = end;
            if end < self.req.prompt.len() {
                return Ok(());
            }
            self.next = Some(last);
            if self.req.prompt_logprobs {
                let scored = std::mem::take(&mut self.scored);
                self.send(Event::Prompt(scored));
            }
            if self.req.max_tokens == 0 {
                return self.finish(Finish::Length);
            }
            // The first token comes in the next round, like every other.
            return Ok(());
        }
        let mut logits = self.next.take().expect("checked above");
        for (&t, &n) in &self.counts {
            logits[t as usize] -= self.req.presence_penalty + self.req.frequency_penalty * n as f32;
        }
        for &(t, bias) in &self.req.logit_bias {
            logits[t as usize] += bias;
        }
        let id = self.sampler.sample(&logits);
        *self.counts.entry(id).or_default() += 1;
        if self.req.stop_tokens.contains(&id) {
            return self.finish(Finish::Stop);
        }
        self.generated += 1;
        shared.generated_tokens.fetch_add(1, Ordering::SeqCst);
        let logprob = describe(&logits, id, self.req.top_logprobs);
        let piece = self.stream.push(id)?;
        match self.stop.push(&piece) {
            Released::Stopped(text) => {
                self.send(Event::Token { logprob, text });
                self.end(String::new(), Finish::Stop);
                return Ok(());
            }
            Released::Text(text) => self.send(Event::Token { logprob, text }),
        }
        if self.done {
            return Ok(());
        }
        if self.generated >= self.req.max_tokens || self.cache.len() + 1 >= model.config().max_seq_len {
            return self.finish(Finish::Length);
        }
        let ids = Tensor::new(&[id], device)?.unsqueeze(0)?;
        self.next = Some(model.forward_last(&ids, Some(&mut self.cache))?.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?);
        Ok(())
    }
}

/// Natural-log softmax of `logits` at `id`, with the `top` most likely alternatives.
fn describe(logits: &[f32], id: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let k = top.min(order.len());
        order.select_nth_unstable_by(k - 1, |a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
        order.truncate(k);
        order.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b)));
        best = order.into_iter().map(|t| (t, logits[t as usize] - log_z)).collect();
    }
    TokenLogprob { id, logprob: logits[id as usize] - log_z, top: best }
}

fn run(model: &Transformer, tok: &Tok, cfg: EngineConfig, rx: &Receiver<(Request, Sender<Event>)>, shared: &Shared) {
    let mut running: Vec<Seq> = Vec::new();
    let mut open = true;
    while open || !running.is_empty() {
        // Admit waiting requests at this token boundary; block only when there is nothing to do.
        while open && running.len() < cfg.max_running.max(1) {
            let next =
                if running.is_empty() { rx.recv().map_err(|_| TryRecvError::Disconnected) } else { rx.try_recv() };
            match next {
                Ok((req, events)) => {
                    shared.queued.fetch_sub(1, Ordering::SeqCst);
                    match Seq::new(req, events.clone(), model, tok) {
                        Ok(seq) => running.push(seq),
                        Err(e) => {
                            let _ = events.send(Event::Failed(e.to_string()));
                        }
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        for seq in running.iter_mut() {
            if let Err(e) = seq.step(model, cfg.prefill_chunk, shared) {
                seq.send(Event::Failed(format!("generation failed: {e}")));
                seq.done = true;
            }
        }
        running.retain(|s| !s.done);
        shared.running.store(running.len(), Ordering::SeqCst);
        shared.cached_tokens.store(running.iter().map(|s| s.cache.len()).sum(), Ordering::SeqCst);
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

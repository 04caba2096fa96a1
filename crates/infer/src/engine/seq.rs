//! One request inside the engine: its tokens and blocks, its sampler, and turning the logits of
//! each step into streamed events.

use super::{Event, Finish, Request, Shared, TokenLogprob};
use crate::sampler::Sampler;
use crate::stop::{Released, StopText};
use crate::stream::TextStream;
use crate::Result;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use tsukuru_tokenizer::Tok;

/// A request being served (running, or waiting to be admitted again after a preemption).
pub(super) struct Seq<'t> {
    pub(super) req: Request,
    events: Sender<Event>,
    sampler: Sampler,
    stream: TextStream<'t>,
    stop: StopText,
    /// The prompt, then every token generated so far.
    pub(super) tokens: Vec<u32>,
    /// Leading tokens whose keys and values are in `blocks`.
    pub(super) cached: usize,
    /// The block table.
    pub(super) blocks: Vec<u32>,
    /// Leading blocks registered in (or taken from) the prefix cache.
    pub(super) keyed: usize,
    /// Whether the prompt's log-probabilities are still to be computed and sent.
    pub(super) want_prompt: bool,
    scored: Vec<Option<TokenLogprob>>,
    generated: usize,
    /// Occurrences of each generated token, for the penalties.
    counts: BTreeMap<u32, u32>,
    /// Set when finished or abandoned.
    pub(super) done: bool,
}

impl<'t> Seq<'t> {
    pub(super) fn new(req: Request, events: Sender<Event>, tok: &'t Tok) -> Result<Self> {
        Ok(Self {
            sampler: Sampler::new(req.sampling)?,
            stop: StopText::new(&req.stop),
            stream: TextStream::new(tok),
            tokens: req.prompt.clone(),
            cached: 0,
            blocks: Vec::new(),
            keyed: 0,
            want_prompt: req.prompt_logprobs,
            scored: Vec::new(),
            generated: 0,
            counts: BTreeMap::new(),
            done: false,
            req,
            events,
        })
    }

    /// Forgets the cache (its blocks were freed): the tokens will be fed again from the start.
    pub(super) fn reset(&mut self) {
        (self.cached, self.keyed) = (0, 0);
        self.scored.clear();
    }

    /// Whether the request's deadline has passed.
    pub(super) fn expired(&self) -> bool {
        self.req.deadline.is_some_and(|d| std::time::Instant::now() >= d)
    }

    /// Tokens still to be fed through the model (one when decoding).
    pub(super) fn pending(&self) -> usize {
        self.tokens.len() - self.cached
    }

    /// Sends `event`; a dropped receiver abandons the request.
    pub(super) fn send(&mut self, event: Event) {
        if self.events.send(event).is_err() {
            self.done = true;
        }
    }

    /// Ends the request, releasing the text still held.
    pub(super) fn finish(&mut self, finish: Finish) -> Result<()> {
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

    /// Takes the logits of the `n` tokens just fed (every row when the prompt is being scored,
    /// else the last): scores prompt tokens, and once everything is in, samples the next token.
    pub(super) fn absorb(
        &mut self,
        n: usize,
        logits: &[f32],
        vocab: usize,
        context: usize,
        shared: &Shared,
    ) -> Result<()> {
        let prompt_len = self.req.prompt.len();
        if self.want_prompt {
            if self.cached == 0 {
                self.scored.push(None);
            }
            for (j, row) in logits.chunks_exact(vocab).enumerate() {
                let next = self.cached + j + 1;
                if next < prompt_len {
                    self.scored.push(Some(describe(row, self.tokens[next], self.req.top_logprobs)));
                }
            }
        }
        self.cached += n;
        if self.cached < self.tokens.len() {
            return Ok(());
        }
        if self.want_prompt {
            self.want_prompt = false;
            let scored = std::mem::take(&mut self.scored);
            self.send(Event::Prompt(scored));
        }
        if self.req.max_tokens == 0 {
            return self.finish(Finish::Length);
        }
        let last = logits[logits.len() - vocab..].to_vec();
        self.sample(last, context, shared)
    }

    /// Picks the next token from `logits`, streams it, and either ends the request or queues the
    /// token to be fed next round.
    fn sample(&mut self, mut logits: Vec<f32>, context: usize, shared: &Shared) -> Result<()> {
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
        self.tokens.push(id);
        if self.generated >= self.req.max_tokens || self.tokens.len() >= context {
            return self.finish(Finish::Length);
        }
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

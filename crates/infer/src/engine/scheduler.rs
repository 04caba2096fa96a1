//! The engine thread's loop: admission, the plan of each round, blocks and preemption.
//!
//! Each round, every running request feeds its next token (its first prompt chunk, or the token
//! it just sampled), and requests still prefilling share `prefill_chunk` more prompt tokens, oldest
//! first; the blocks those tokens need are allocated before the pass. When the pool has no block
//! left, the newest running request is preempted (its blocks freed, its tokens kept) and waits at
//! the front of the queue to be recomputed, so the oldest requests always make progress and memory
//! never grows past the pool.

use super::seq::Seq;
use super::{EngineConfig, Event, Finish, Request, Shared};
use crate::blocks::BlockManager;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use tsukuru_model::{Chunk, KvBlocks, Transformer};
use tsukuru_tokenizer::Tok;

/// The engine thread's state.
pub(super) struct Scheduler<'a> {
    model: &'a Transformer,
    tok: &'a Tok,
    cfg: EngineConfig,
    shared: &'a Shared,
    kv: KvBlocks,
    blocks: BlockManager,
    /// Admitted requests, oldest first.
    running: Vec<Seq<'a>>,
    /// Requests taken from the channel but not admitted, and preempted ones (first in line).
    waiting: VecDeque<Seq<'a>>,
}

impl<'a> Scheduler<'a> {
    pub(super) fn new(
        model: &'a Transformer,
        tok: &'a Tok,
        cfg: EngineConfig,
        kv: KvBlocks,
        shared: &'a Shared,
    ) -> Self {
        let blocks = BlockManager::new(kv.n_blocks(), kv.block_size());
        Self { model, tok, cfg, shared, kv, blocks, running: Vec::new(), waiting: VecDeque::new() }
    }

    /// Serves until every handle is dropped and the admitted requests are done.
    pub(super) fn run(mut self, rx: &Receiver<(Request, Sender<Event>)>) {
        let mut open = true;
        while open || !self.running.is_empty() || !self.waiting.is_empty() {
            self.admit(rx, &mut open);
            if !self.running.is_empty() {
                self.round();
            }
        }
    }

    /// Admits waiting requests while slots and blocks allow; blocks for the next request only when
    /// nothing else is to be done.
    fn admit(&mut self, rx: &Receiver<(Request, Sender<Event>)>, open: &mut bool) {
        while self.running.len() < self.cfg.max_running.max(1) {
            let mut seq = match self.waiting.pop_front() {
                Some(seq) => seq,
                None if !*open => return,
                None => {
                    let next = if self.running.is_empty() {
                        rx.recv().map_err(|_| TryRecvError::Disconnected)
                    } else {
                        rx.try_recv()
                    };
                    match next {
                        Ok((req, events)) => match Seq::new(req, events.clone(), self.tok) {
                            Ok(seq) => {
                                self.shared.prompt_tokens.fetch_add(seq.tokens.len(), Ordering::SeqCst);
                                seq
                            }
                            Err(e) => {
                                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                                let _ = events.send(Event::Failed(e.to_string()));
                                continue;
                            }
                        },
                        Err(TryRecvError::Empty) => return,
                        Err(TryRecvError::Disconnected) => {
                            *open = false;
                            return;
                        }
                    }
                }
            };
            if seq.expired() {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                let _ = seq.finish(Finish::Deadline);
                continue;
            }
            let bs = self.blocks.block_size();
            // Cached blocks of the prompt's start (never its last token, whose logits are needed;
            // never when every prompt token must be scored).
            if !seq.want_prompt {
                let before_last = seq.tokens.len() - 1;
                seq.blocks = self.blocks.take_prefix(&seq.req.tenant, &seq.tokens[..before_last]);
                seq.keyed = seq.blocks.len();
                seq.cached = seq.keyed * bs;
            }
            let need = seq.tokens.len().div_ceil(bs) - seq.blocks.len();
            if need > self.blocks.available() {
                self.blocks.release_all(&mut seq.blocks);
                seq.reset();
                self.waiting.push_front(seq);
                return;
            }
            self.shared.prefix_hit_tokens.fetch_add(seq.cached, Ordering::SeqCst);
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            self.running.push(seq);
        }
    }

    /// One batched step over every running request.
    fn round(&mut self) {
        for seq in self.running.iter_mut() {
            if seq.expired() {
                if let Err(e) = seq.finish(Finish::Deadline) {
                    seq.send(Event::Failed(format!("generation failed: {e}")));
                }
                seq.done = true;
            }
        }
        self.retire();
        // Each request's next token, plus the shared budget of prompt tokens, oldest first.
        let mut budget = self.cfg.prefill_chunk.max(1);
        let mut plan: Vec<usize> = self
            .running
            .iter()
            .map(|seq| {
                let n = seq.pending().min(budget.max(1));
                budget = budget.saturating_sub(n);
                n
            })
            .collect();
        self.allocate(&mut plan);
        if self.running.is_empty() {
            self.publish();
            return;
        }
        let chunks: Vec<Chunk> = self
            .running
            .iter()
            .zip(&plan)
            .map(|(s, &n)| Chunk {
                tokens: &s.tokens[s.cached..s.cached + n],
                start: s.cached,
                blocks: &s.blocks,
                all_logits: s.want_prompt,
            })
            .collect();
        let (vocab, context) = (self.model.config().vocab_size, self.model.config().max_seq_len);
        match self.model.forward_paged(&mut self.kv, &chunks) {
            Ok(outputs) => {
                let bs = self.blocks.block_size();
                for ((seq, n), logits) in self.running.iter_mut().zip(plan).zip(outputs) {
                    if let Err(e) = seq.absorb(n, &logits, vocab, context, self.shared) {
                        seq.send(Event::Failed(format!("generation failed: {e}")));
                        seq.done = true;
                    }
                    // Blocks filled by this step join the prefix cache.
                    for i in seq.keyed..seq.cached / bs {
                        self.blocks.register(&seq.req.tenant, &seq.blocks, i, &seq.tokens[i * bs..(i + 1) * bs]);
                    }
                    seq.keyed = seq.keyed.max(seq.cached / bs);
                }
            }
            Err(e) => {
                for seq in self.running.iter_mut() {
                    seq.send(Event::Failed(format!("generation failed: {e}")));
                    seq.done = true;
                }
            }
        }
        self.retire();
    }

    /// Gives every planned request the blocks its tokens need, preempting the newest requests
    /// when the pool runs out (they leave `running` and `plan`).
    fn allocate(&mut self, plan: &mut Vec<usize>) {
        let bs = self.blocks.block_size();
        let mut i = 0;
        while i < self.running.len() {
            let need = (self.running[i].cached + plan[i]).div_ceil(bs);
            while self.running[i].blocks.len() < need {
                match self.blocks.allocate() {
                    Some(b) => self.running[i].blocks.push(b),
                    None => {
                        plan.pop();
                        let mut victim = self.running.pop().expect("the request being served is running");
                        self.blocks.release_all(&mut victim.blocks);
                        victim.reset();
                        self.waiting.push_front(victim);
                        self.shared.queued.fetch_add(1, Ordering::SeqCst);
                        self.shared.preemptions.fetch_add(1, Ordering::SeqCst);
                        if i == self.running.len() {
                            // The request itself was the newest: it waits with the others.
                            return;
                        }
                    }
                }
            }
            i += 1;
        }
    }

    /// Drops finished requests, freeing their blocks.
    fn retire(&mut self) {
        for seq in self.running.iter_mut().filter(|s| s.done) {
            self.blocks.release_all(&mut seq.blocks);
        }
        self.running.retain(|s| !s.done);
        self.publish();
    }

    /// Updates the counters handles read.
    fn publish(&self) {
        self.shared.running.store(self.running.len(), Ordering::SeqCst);
        self.shared.cached_tokens.store(self.running.iter().map(|s| s.cached).sum(), Ordering::SeqCst);
        self.shared.cache_blocks_used.store(self.blocks.used(), Ordering::SeqCst);
    }
}

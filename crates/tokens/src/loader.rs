//! The pretraining batch loader: `(B, T)` windows, BOS-aligned, seeded, exactly resumable.
//!
//! Each row holds `T + 1` tokens (inputs are the first `T`, targets the last
//! `T`) and starts at a document's BOS. Rows are packed best-fit: from a small
//! buffer of upcoming documents, the longest one that still fits goes in next;
//! when none fits, the shortest is cropped to fill the row exactly (its tail is
//! dropped, so a row never starts mid-document). A document that has waited in
//! the buffer for twice the buffer's size in draws starts the next row, so
//! documents longer than a row are used too and none waits forever. Documents come in a seeded
//! permutation per epoch. The whole position is `(epoch, cursor, buffer)`:
//! [`Loader::state`] returns it and [`Loader::resume`] continues with exactly
//! the batches an unbroken run would have produced.

use crate::dataset::TokenDataset;
use crate::{Result, TokensError};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use tsukuru_core::Rng;

/// Loader settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Rows per batch (B).
    pub batch_size: usize,
    /// Tokens per row (T).
    pub seq_len: usize,
    /// Seed of the document order.
    pub seed: u64,
    /// Shuffle documents each epoch (training) or read them in order (evaluation).
    pub shuffle: bool,
    /// Documents considered at once for best-fit packing (≥ 1).
    pub buffer: usize,
}

impl LoaderConfig {
    /// A shuffled training loader with a 64-document packing buffer.
    pub fn train(batch_size: usize, seq_len: usize, seed: u64) -> Self {
        Self { batch_size, seq_len, seed, shuffle: true, buffer: 64 }
    }

    /// An evaluation loader: documents in stored order, no packing reorder (buffer of one).
    pub fn eval(batch_size: usize, seq_len: usize) -> Self {
        Self { batch_size, seq_len, seed: 0, shuffle: false, buffer: 1 }
    }
}

/// Where a loader is: enough to continue exactly. Serialise it into a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Next position in the epoch's document order.
    pub cursor: u64,
    /// Documents drawn so far, over all epochs.
    pub drawn: u64,
    /// Documents drawn but not yet placed, in draw order, each with its draw number.
    pub buffer: Vec<(u64, u64)>,
    /// Settings the state was saved with; [`Loader::resume`] refuses other settings.
    pub config: LoaderConfig,
}

/// One batch, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Input ids, `batch × seq` (row-major).
    pub inputs: Vec<u32>,
    /// Target ids (inputs shifted by one), `batch × seq`.
    pub targets: Vec<u32>,
    /// B.
    pub batch: usize,
    /// T.
    pub seq: usize,
    /// Epoch of the loader when the batch was finished (of the last document drawn into its buffer).
    pub epoch: u64,
    /// For packed batches ([`crate::sft`]): the lengths of the sequences in each row, which
    /// attention keeps apart; `None` when each row is one stream of text.
    pub lengths: Option<Vec<Vec<usize>>>,
    /// For preference batches ([`crate::preferences`]): the reference model's log-probability of
    /// each row's reply, row by row.
    pub reference: Option<Vec<f32>>,
}

/// Yields batches from a [`TokenDataset`].
pub struct Loader<'d> {
    data: &'d TokenDataset,
    cfg: LoaderConfig,
    order: Vec<u64>,
    state: LoaderState,
    /// Tokens placed in rows and tokens read from documents (their ratio is packing efficiency).
    placed: u64,
    cropped: u64,
}

impl<'d> Loader<'d> {
    /// A loader at the start of epoch 0.
    pub fn new(data: &'d TokenDataset, cfg: LoaderConfig) -> Result<Self> {
        let state = LoaderState { epoch: 0, cursor: 0, drawn: 0, buffer: Vec::new(), config: cfg };
        Self::resume(data, cfg, state)
    }

    /// A loader with settings `cfg` continuing from `state`, which must have been saved with `cfg`.
    pub fn resume(data: &'d TokenDataset, cfg: LoaderConfig, state: LoaderState) -> Result<Self> {
        if state.config != cfg {
            return Err(TokensError::Format(format!(
                "loader state was saved with {:?}, but the loader is configured with {cfg:?}",
                state.config
            )));
        }
        if cfg.batch_size == 0 || cfg.seq_len == 0 || cfg.buffer == 0 {
            return Err(TokensError::Format("batch_size, seq_len and buffer must be at least 1".into()));
        }
        let inconsistent = state.buffer.iter().any(|(_, drawn)| *drawn >= state.drawn);
        if inconsistent || state.cursor > data.n_docs() || state.buffer.iter().any(|(d, _)| *d >= data.n_docs()) {
            return Err(TokensError::Format(format!(
                "loader state (cursor {}) does not fit a dataset of {} documents; was it saved for other data?",
                state.cursor,
                data.n_docs()
            )));
        }
        let order = epoch_order(data.n_docs(), cfg, state.epoch);
        Ok(Self { data, cfg, order, state, placed: 0, cropped: 0 })
    }

    /// The position to save; `resume` from it continues identically.
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Share of read tokens that landed in rows (the rest were cropped tails).
    pub fn efficiency(&self) -> f64 {
        self.placed as f64 / (self.placed + self.cropped).max(1) as f64
    }

    fn refill(&mut self) {
        while self.state.buffer.len() < self.cfg.buffer {
            if self.state.cursor == self.data.n_docs() {
                self.state.epoch += 1;
                self.state.cursor = 0;
                self.order = epoch_order(self.data.n_docs(), self.cfg, self.state.epoch);
            }
            self.state.buffer.push((self.order[self.state.cursor as usize], self.state.drawn));
            self.state.cursor += 1;
            self.state.drawn += 1;
        }
    }

    /// Fills one row of `T + 1` tokens.
    fn row(&mut self, out: &mut Vec<u32>) {
        let full = self.cfg.seq_len as u64 + 1;
        let mut room = full;
        while room > 0 {
            self.refill();
            let lens: Vec<u64> = self.state.buffer.iter().map(|(d, _)| self.data.doc_len(*d)).collect();
            let waited = self.state.drawn - self.state.buffer[0].1;
            let pick = if room == full && waited >= 2 * self.cfg.buffer as u64 {
                0
            } else if let Some(fit) =
                (0..lens.len()).filter(|i| lens[*i] <= room).max_by_key(|i| (lens[*i], Reverse(*i)))
            {
                fit
            } else {
                (0..lens.len()).min_by_key(|i| (lens[*i], *i)).expect("buffer holds at least one document")
            };
            let (doc, _) = self.state.buffer.remove(pick);
            let take = lens[pick].min(room);
            self.data.read_doc(doc, take, out);
            self.placed += take;
            self.cropped += lens[pick] - take;
            room -= take;
        }
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Batch {
        let (b, t) = (self.cfg.batch_size, self.cfg.seq_len);
        let (mut inputs, mut targets) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        let mut row = Vec::with_capacity(t + 1);
        for _ in 0..b {
            row.clear();
            self.row(&mut row);
            inputs.extend_from_slice(&row[..t]);
            targets.extend_from_slice(&row[1..]);
        }
        Batch { inputs, targets, batch: b, seq: t, epoch: self.state.epoch, lengths: None, reference: None }
    }
}

/// Document order of an epoch: a seeded permutation, or the identity without shuffling.
fn epoch_order(n: u64, cfg: LoaderConfig, epoch: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n).collect();
    if cfg.shuffle {
        Rng::stream(cfg.seed, &format!("loader-epoch-{epoch}")).shuffle(&mut order);
    }
    order
}

//! Instruction-tuning batches: rendered conversations from several sources, mixed by ratio,
//! packed into rows, exactly resumable.
//!
//! Mixing: each conversation placed in a batch is drawn from source `i` with probability
//! `ratio_i / Σ ratio` over the sources not yet exhausted; a source with `epochs = E` is exhausted
//! after `E` passes over its examples (each pass in its own seeded order) and its share goes to the
//! others; without `epochs` a source cycles. Draw `k` is a pure function of the seed and `k`, so
//! the position is just the number of draws and the count taken from each source
//! ([`MixtureState`]).
//!
//! Packing: conversations go into a row in draw order while they fit in its `T` tokens; the first
//! one that does not fit starts the next row. Targets are the next token where that token is a
//! trained one of the same conversation, [`IGNORE`] elsewhere (prompts, markers, the first token of
//! the next conversation, padding); the batch's `lengths` tell attention where conversations start.
//! Conversations longer than `T` are cut to fit by [`fit`] before they get here.

use crate::loader::Batch;
use crate::{Result, TokensError};
use serde::{Deserialize, Serialize};
use tsukuru_core::Rng;
use tsukuru_tokenizer::chat::Rendered;
use tsukuru_tokenizer::special::PAD;

/// A target that is not scored (the value every loss skips).
pub use tsukuru_core::IGNORE_TARGET as IGNORE;

/// What [`fit`] did to a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// It fits as it is.
    Whole,
    /// It was cut to the context length; some trained tokens remain.
    Truncated,
    /// Nothing trained would remain after cutting: it is dropped.
    Dropped,
}

/// The truncation policy: a conversation longer than `seq` tokens keeps its first `seq` tokens
/// (the reply is cut where the context ends, as it would be at inference); if no trained token
/// is left, it is dropped. Returns what happened.
pub fn fit(r: &mut Rendered, seq: usize) -> Fit {
    if r.len() <= seq {
        return Fit::Whole;
    }
    r.ids.truncate(seq);
    r.trained.truncate(seq);
    // The first token is never a target, so a trained token must come after it.
    if r.trained.iter().skip(1).any(|&t| t) {
        Fit::Truncated
    } else {
        Fit::Dropped
    }
}

/// One source of a mixture.
#[derive(Debug, Clone)]
pub struct MixSource {
    /// Its name (for reports).
    pub name: String,
    /// Relative share of the draws.
    pub ratio: f64,
    /// Passes after which it is exhausted (`None`: cycles forever).
    pub epochs: Option<u32>,
    /// Its conversations, each at most `T` tokens (see [`fit`]).
    pub examples: Vec<Rendered>,
}

/// Where a mixture is: enough to continue exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixtureState {
    /// Draws made so far.
    pub draws: u64,
    /// Examples taken from each source so far.
    pub taken: Vec<u64>,
}

/// Yields packed `(B, T)` batches from a mixture of sources.
pub struct MixtureLoader<'s> {
    sources: &'s [MixSource],
    batch: usize,
    seq: usize,
    seed: u64,
    state: MixtureState,
    /// A drawn example that did not fit its row, with the state from before it was drawn.
    pending: Option<((usize, usize), MixtureState)>,
    /// The shuffled order of each source's current epoch: (epoch, permutation).
    orders: Vec<(u64, Vec<usize>)>,
}

impl<'s> MixtureLoader<'s> {
    /// A loader at the start. Sources need a positive ratio and at least one example each, and
    /// every example must fit in `seq` tokens.
    pub fn new(sources: &'s [MixSource], batch: usize, seq: usize, seed: u64) -> Result<Self> {
        Self::resume(sources, batch, seq, seed, MixtureState { draws: 0, taken: vec![0; sources.len()] })
    }

    /// A loader continuing from `state` (same sources, settings and seed as when it was saved).
    pub fn resume(sources: &'s [MixSource], batch: usize, seq: usize, seed: u64, state: MixtureState) -> Result<Self> {
        let bad = |m: String| Err(TokensError::Format(m));
        if sources.is_empty() || batch == 0 || seq < 2 {
            return bad(format!(
                "a mixture needs sources, batch ≥ 1 and seq ≥ 2 (got {} sources, {batch}, {seq})",
                sources.len()
            ));
        }
        for s in sources {
            if !(s.ratio > 0.0 && s.ratio.is_finite()) || s.examples.is_empty() {
                return bad(format!("source `{}`: needs a positive ratio and at least one example", s.name));
            }
            if let Some(long) = s.examples.iter().find(|e| e.len() > seq) {
                return bad(format!("source `{}`: an example of {} tokens is longer than {seq}", s.name, long.len()));
            }
        }
        if state.taken.len() != sources.len() {
            return bad(format!("the saved mixture had {} sources, this one {}", state.taken.len(), sources.len()));
        }
        Ok(Self {
            sources,
            batch,
            seq,
            seed,
            state,
            pending: None,
            orders: vec![(u64::MAX, Vec::new()); sources.len()],
        })
    }

    /// The position to save: continuing from it yields exactly the batches that follow.
    pub fn state(&self) -> MixtureState {
        self.pending.as_ref().map_or_else(|| self.state.clone(), |(_, before)| before.clone())
    }

    fn exhausted(&self, i: usize) -> bool {
        let s = &self.sources[i];
        s.epochs.is_some_and(|e| self.state.taken[i] >= u64::from(e) * s.examples.len() as u64)
    }

    /// The next example: (source, index), or `None` when every source is exhausted.
    fn draw(&mut self) -> Option<(usize, usize)> {
        let active: Vec<usize> = (0..self.sources.len()).filter(|&i| !self.exhausted(i)).collect();
        if active.is_empty() {
            return None;
        }
        let total: f64 = active.iter().map(|&i| self.sources[i].ratio).sum();
        let mut u = Rng::stream(self.seed, &format!("sft-draw/{}", self.state.draws)).f64() * total;
        let mut pick = *active.last().expect("not empty");
        for &i in &active {
            if u < self.sources[i].ratio {
                pick = i;
                break;
            }
            u -= self.sources[i].ratio;
        }
        let n = self.sources[pick].examples.len();
        let taken = self.state.taken[pick];
        let epoch = taken / n as u64;
        if self.orders[pick].0 != epoch {
            let mut order: Vec<usize> = (0..n).collect();
            Rng::stream(self.seed, &format!("sft-order/{pick}/{epoch}")).shuffle(&mut order);
            self.orders[pick] = (epoch, order);
        }
        let index = self.orders[pick].1[(taken % n as u64) as usize];
        self.state.draws += 1;
        self.state.taken[pick] += 1;
        Some((pick, index))
    }

    /// The next batch, or `None` once every source is exhausted. The last batch may have empty
    /// rows (all targets ignored).
    pub fn next_batch(&mut self) -> Option<Batch> {
        let mut rows: Vec<Vec<&Rendered>> = Vec::with_capacity(self.batch);
        let mut done = false;
        for _ in 0..self.batch {
            let mut row: Vec<&Rendered> = Vec::new();
            let mut used = 0;
            while !done {
                let (next, before) = match self.pending.take() {
                    Some(p) => p,
                    None => {
                        let before = self.state.clone();
                        match self.draw() {
                            Some(next) => (next, before),
                            None => {
                                done = true;
                                break;
                            }
                        }
                    }
                };
                let example = &self.sources[next.0].examples[next.1];
                if used + example.len() > self.seq {
                    self.pending = Some((next, before));
                    break;
                }
                used += example.len();
                row.push(example);
            }
            rows.push(row);
        }
        if rows.iter().all(Vec::is_empty) {
            return None;
        }
        Some(pack_rows(&rows, self.seq))
    }
}

/// `examples` in order, packed into batches of `batch` rows of `seq` tokens (evaluation). Every
/// example must fit in `seq` tokens.
pub fn pack_in_order(examples: &[Rendered], batch: usize, seq: usize) -> Vec<Batch> {
    let mut rows: Vec<Vec<&Rendered>> = vec![Vec::new()];
    let mut used = 0;
    for e in examples {
        if used + e.len() > seq {
            rows.push(Vec::new());
            used = 0;
        }
        used += e.len();
        rows.last_mut().expect("one row at least").push(e);
    }
    rows.chunks(batch.max(1))
        .map(|chunk| {
            let mut chunk = chunk.to_vec();
            chunk.resize(batch.max(1), Vec::new());
            pack_rows(&chunk, seq)
        })
        .collect()
}

/// Rows of conversations → inputs, masked targets and the conversations' lengths.
fn pack_rows(rows: &[Vec<&Rendered>], seq: usize) -> Batch {
    let mut inputs = Vec::with_capacity(rows.len() * seq);
    let mut targets = Vec::with_capacity(rows.len() * seq);
    let mut lengths = Vec::with_capacity(rows.len());
    for row in rows {
        let start = inputs.len();
        for r in row {
            let n = r.len();
            inputs.extend_from_slice(&r.ids);
            for j in 0..n {
                targets.push(if j + 1 < n && r.trained[j + 1] { r.ids[j + 1] } else { IGNORE });
            }
        }
        inputs.resize(start + seq, PAD);
        targets.resize(start + seq, IGNORE);
        lengths.push(row.iter().map(|r| r.len()).collect());
    }
    Batch { inputs, targets, batch: rows.len(), seq, epoch: 0, lengths: Some(lengths), reference: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A conversation of `n` tokens whose second half is trained, ids tagged by `tag`.
    fn conv(tag: u32, n: usize) -> Rendered {
        Rendered { ids: (0..n as u32).map(|i| tag * 100 + i).collect(), trained: (0..n).map(|i| i >= n / 2).collect() }
    }

    fn source(name: &str, ratio: f64, epochs: Option<u32>, tag: u32, sizes: &[usize]) -> MixSource {
        MixSource { name: name.into(), ratio, epochs, examples: sizes.iter().map(|&n| conv(tag, n)).collect() }
    }

    #[test]
    fn targets_are_the_trained_next_tokens_of_the_same_conversation() {
        let b = pack_in_order(&[conv(1, 4), conv(2, 5)], 1, 12).remove(0);
        assert_eq!(b.lengths, Some(vec![vec![4, 5]]));
        assert_eq!(&b.inputs[..9], &[100, 101, 102, 103, 200, 201, 202, 203, 204]);
        assert!(b.inputs[9..].iter().all(|&t| t == PAD));
        // conv 1 trains ids 102, 103; conv 2 trains 202, 203, 204; nothing crosses a boundary.
        let i = IGNORE;
        assert_eq!(b.targets, vec![i, 102, 103, i, i, 202, 203, 204, i, i, i, i]);
    }

    #[test]
    fn ratios_are_followed_epochs_exhaust_and_resuming_is_exact() {
        let sources = [source("a", 3.0, None, 1, &[3, 4, 5]), source("b", 1.0, Some(2), 2, &[6, 2])];
        let mut loader = MixtureLoader::new(&sources, 2, 16, 7).unwrap();
        let mut batches = Vec::new();
        let mut states = Vec::new();
        for _ in 0..40 {
            states.push(loader.state());
            batches.push(loader.next_batch().unwrap());
        }
        // Source b is exhausted after two passes (4 examples); a then fills every row.
        let s = loader.state();
        assert_eq!(s.taken[1], 4);
        let share_a = s.taken[0] as f64 / s.draws as f64;
        assert!(share_a > 0.9, "a's share {share_a}");
        // Early on, the 3:1 ratio shows.
        let mut early = MixtureLoader::new(&sources, 2, 16, 7).unwrap();
        for _ in 0..2 {
            early.next_batch();
        }
        let e = early.state();
        assert!(e.taken[0] > e.taken[1], "{e:?}");
        // Resuming from any saved state continues with the same batches.
        for at in [0, 1, 5, 17] {
            let mut resumed = MixtureLoader::resume(&sources, 2, 16, 7, states[at].clone()).unwrap();
            for b in &batches[at..at + 5] {
                assert_eq!(&resumed.next_batch().unwrap(), b, "resumed at {at}");
            }
        }
        // When every source has epochs, the loader ends.
        let finite = [source("a", 1.0, Some(1), 1, &[3, 4]), source("b", 1.0, Some(1), 2, &[5])];
        let mut l = MixtureLoader::new(&finite, 1, 8, 1).unwrap();
        let mut seen = 0;
        while let Some(b) = l.next_batch() {
            seen += b.lengths.unwrap()[0].len();
        }
        assert_eq!(seen, 3);
    }

    #[test]
    fn long_conversations_are_cut_or_dropped_and_bad_sources_refused() {
        let mut long = conv(1, 10);
        assert_eq!(fit(&mut long, 8), Fit::Truncated);
        assert_eq!(long.len(), 8);
        let mut prompt_only = conv(1, 10);
        assert_eq!(fit(&mut prompt_only, 4), Fit::Dropped);
        assert_eq!(fit(&mut conv(1, 4), 4), Fit::Whole);
        let too_long = [source("a", 1.0, None, 1, &[9])];
        assert!(MixtureLoader::new(&too_long, 1, 8, 0).err().unwrap().to_string().contains("longer than 8"));
        let zero = [source("z", 0.0, None, 1, &[3])];
        assert!(MixtureLoader::new(&zero, 1, 8, 0).err().unwrap().to_string().contains("`z`"));
    }
}

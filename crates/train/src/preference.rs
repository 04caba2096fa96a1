//! Preference optimisation as an objective of the one loop: DPO (Rafailov et al. 2023) and IPO
//! (Azar et al. 2023) on batches of pairs ([`tsukuru_tokens::preferences::pair_batch`]).
//!
//! For a pair, `h = (log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))`,
//! each log-probability summed over the reply's tokens. DPO minimises `−log σ(β · h)`; IPO
//! minimises `(h − 1 / (2β))²`, which stops pushing once the margin is reached instead of driving
//! the rejected reply's probability toward zero. The reference log-probabilities come with the
//! batch (computed once by the job with the frozen starting model). The implicit reward of a reply
//! is `β · (log π − log π_ref)`; a pair is ranked right when the chosen reply's reward is higher.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use tsukuru_model::Transformer;
use tsukuru_tokens::Batch;

use crate::trainer::Objective;

/// Which preference loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceLoss {
    /// Direct preference optimisation: `−log σ(β h)`.
    Dpo,
    /// Identity preference optimisation: `(h − 1/(2β))²`.
    Ipo,
}

/// How a set of pairs is ranked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    /// Pairs measured.
    pub n: usize,
    /// Share whose chosen reply has the higher implicit reward.
    pub accuracy: f64,
    /// Mean reward margin `β · h`.
    pub margin: f64,
    /// Mean implicit reward of the chosen replies.
    pub chosen_reward: f64,
    /// Mean implicit reward of the rejected replies.
    pub rejected_reward: f64,
}

impl PairStats {
    /// Statistics of pairs from their log-ratios `(chosen, rejected)` (policy minus reference).
    pub fn of(log_ratios: &[(f64, f64)], beta: f64) -> Self {
        let n = log_ratios.len();
        let mean = |f: &dyn Fn(&(f64, f64)) -> f64| log_ratios.iter().map(f).sum::<f64>() / n.max(1) as f64;
        Self {
            n,
            accuracy: mean(&|(c, r)| if c > r { 1.0 } else { 0.0 }),
            margin: mean(&|(c, r)| beta * (c - r)),
            chosen_reward: mean(&|(c, _)| beta * c),
            rejected_reward: mean(&|(_, r)| beta * r),
        }
    }
}

/// The reply log-probability of every row of `batch`: `(B)`, differentiable.
pub fn sequence_logprobs(model: &Transformer, batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
    let inputs = Tensor::from_slice(&batch.inputs, (batch.batch, batch.seq), device)?;
    let targets = Tensor::from_slice(&batch.targets, batch.batch * batch.seq, device)?;
    model.token_logprobs(&inputs, &targets, None)?.reshape((batch.batch, batch.seq))?.sum(1)
}

/// The preference objective; it remembers the last batch's [`PairStats`] for the job's log.
pub struct Preference {
    /// Strength of the pull toward the reference model (β).
    pub beta: f64,
    /// DPO or IPO.
    pub loss: PreferenceLoss,
    last: Mutex<Option<PairStats>>,
}

impl Preference {
    /// The objective with `beta` and `loss`.
    pub fn new(beta: f64, loss: PreferenceLoss) -> Self {
        Self { beta, loss, last: Mutex::new(None) }
    }

    /// Statistics of the last batch the loss was computed on.
    pub fn last_stats(&self) -> Option<PairStats> {
        *self.last.lock().expect("not poisoned")
    }
}

impl Objective for Preference {
    fn loss(&self, model: &Transformer, batch: &Batch, device: &Device) -> candle_core::Result<Tensor> {
        let Some(reference) = &batch.reference else {
            candle_core::bail!("a preference batch needs the reference model's log-probabilities");
        };
        if !batch.batch.is_multiple_of(2) || reference.len() != batch.batch {
            candle_core::bail!("a preference batch has chosen rows then as many rejected rows, each with a reference");
        }
        let k = batch.batch / 2;
        let reference = Tensor::from_slice(reference, batch.batch, device)?;
        let ratios = (sequence_logprobs(model, batch, device)?.to_dtype(DType::F32)? - reference)?;
        let h = (ratios.narrow(0, 0, k)? - ratios.narrow(0, k, k)?)?;
        let loss = match self.loss {
            // −log σ(βh) = softplus(−βh), computed as max(x, 0) + log(1 + e^{−|x|}).
            PreferenceLoss::Dpo => {
                let x = (h.clone() * -self.beta)?;
                (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?.mean_all()?
            }
            PreferenceLoss::Ipo => (h.clone() - 1.0 / (2.0 * self.beta))?.sqr()?.mean_all()?,
        };
        let r = ratios.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let pairs: Vec<(f64, f64)> = (0..k).map(|i| (r[i], r[k + i])).collect();
        *self.last.lock().expect("not poisoned") = Some(PairStats::of(&pairs, self.beta));
        Ok(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_rank_and_average_the_pairs() {
        let s = PairStats::of(&[(1.0, -1.0), (0.0, 0.5), (2.0, 2.0)], 0.1);
        assert_eq!(s.n, 3);
        assert!((s.accuracy - 1.0 / 3.0).abs() < 1e-12, "ties do not count as right");
        assert!((s.margin - 0.1 * (2.0 - 0.5 + 0.0) / 3.0).abs() < 1e-12);
        assert!((s.chosen_reward - 0.1).abs() < 1e-12);
    }
}

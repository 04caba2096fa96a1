//! Log-likelihood requests, as lm-evaluation-harness defines them: the summed log-probability of a
//! continuation after a context, and whether greedy decoding would have produced it token by
//! token; and multiple choice scored by them, with `acc` (the most likely choice) and `acc_norm`
//! (the most likely per character of the choice, which removes the bias toward short answers).
//!
//! Tokens: the context and the continuation are encoded together and the continuation's tokens are
//! the tail past the context's (so a merge across the boundary is handled the way the text would
//! be encoded); when the context's tokens are not a prefix of the whole, the continuation is
//! encoded on its own. Contexts start with `<|bos|>`, as in training. All continuations of one
//! context run as one padded batch; padding sits after the scored positions, which causal
//! attention never lets earlier positions see.

use crate::Result;
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use tsukuru_model::Transformer;
use tsukuru_tokenizer::{special, Tok};

/// One continuation's score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogLikelihood {
    /// Summed natural-log probability of its tokens.
    pub logprob: f64,
    /// Every one of its tokens was the most likely at its position.
    pub greedy: bool,
}

/// Scores of each continuation after `context`. The text may not exceed the model's context: the
/// continuation's tokens past it are not scored.
pub fn loglikelihood(
    model: &Transformer,
    tok: &Tok,
    context: &str,
    continuations: &[String],
) -> Result<Vec<LogLikelihood>> {
    let mut ctx = vec![special::BOS];
    ctx.extend(tok.encode_text(context)?);
    let conts: Vec<Vec<u32>> = continuations.iter().map(|c| tail(tok, context, c, &ctx[1..])).collect::<Result<_>>()?;
    score(model, &ctx, &conts)
}

/// Tokens of `continuation` as it follows `context` (whose tokens are `context_ids`).
pub(crate) fn tail(tok: &Tok, context: &str, continuation: &str, context_ids: &[u32]) -> Result<Vec<u32>> {
    let whole = tok.encode_text(&format!("{context}{continuation}"))?;
    Ok(match whole.strip_prefix(context_ids) {
        Some(rest) => rest.to_vec(),
        None => tok.encode_text(continuation)?,
    })
}

/// Scores token continuations `conts` of the token context `ctx`, in one batch.
pub(crate) fn score(model: &Transformer, ctx: &[u32], conts: &[Vec<u32>]) -> Result<Vec<LogLikelihood>> {
    let max_len = model.config().max_seq_len;
    let len = conts.iter().map(|c| ctx.len() + c.len()).max().unwrap_or(ctx.len()).min(max_len);
    let mut ids = Vec::with_capacity(conts.len() * len);
    for c in conts {
        let mut row: Vec<u32> = ctx.iter().chain(c).copied().take(len).collect();
        row.resize(len, special::PAD);
        ids.extend(row);
    }
    let logits = model.forward(&Tensor::from_vec(ids.clone(), (conts.len(), len), model.device())?, None)?;
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?.to_vec3::<f32>()?;
    Ok(conts
        .iter()
        .enumerate()
        .map(|(b, c)| {
            let positions = (0..c.len()).map(|j| ctx.len() + j).filter(|&pos| pos < len);
            let (mut logprob, mut greedy) = (0.0, true);
            for pos in positions {
                let row = &logp[b][pos - 1];
                let want = ids[b * len + pos] as usize;
                logprob += f64::from(row[want]);
                greedy &= row.iter().all(|&x| x <= row[want]);
            }
            LogLikelihood { logprob, greedy }
        })
        .collect())
}

/// A multiple-choice item scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceScore {
    /// Each choice's summed log-probability.
    pub logprobs: Vec<f64>,
    /// The most likely choice.
    pub pred: usize,
    /// The most likely choice per character of its text.
    pub pred_norm: usize,
    /// `pred` is the gold choice.
    pub acc: bool,
    /// `pred_norm` is the gold choice.
    pub acc_norm: bool,
}

/// `acc` and `acc_norm` from the choices' log-probabilities: the argmax of the log-probability, and
/// of the log-probability divided by the choice's length in characters (lm-evaluation-harness's
/// definitions; ties go to the first).
pub fn pick(logprobs: &[f64], choices: &[String], gold: usize) -> ChoiceScore {
    let argmax =
        |key: &dyn Fn(usize) -> f64| (0..logprobs.len()).fold(0, |best, i| if key(i) > key(best) { i } else { best });
    let pred = argmax(&|i| logprobs[i]);
    let pred_norm = argmax(&|i| logprobs[i] / choices[i].chars().count().max(1) as f64);
    ChoiceScore { logprobs: logprobs.to_vec(), pred, pred_norm, acc: pred == gold, acc_norm: pred_norm == gold }
}

/// Scores `choices` as continuations of `context` (each joined by `delimiter`, lm-evaluation-
/// harness's `target_delimiter`, usually a space).
pub fn multiple_choice(
    model: &Transformer,
    tok: &Tok,
    context: &str,
    choices: &[String],
    gold: usize,
    delimiter: &str,
) -> Result<ChoiceScore> {
    let conts: Vec<String> = choices.iter().map(|c| format!("{delimiter}{c}")).collect();
    let lls = loglikelihood(model, tok, context, &conts)?;
    let logprobs: Vec<f64> = lls.iter().map(|l| l.logprob).collect();
    Ok(pick(&logprobs, choices, gold))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use tsukuru_infer::{generate, Sampler, SamplingParams};

    #[test]
    fn greedy_continuations_are_marked_and_score_highest() {
        let cfg = tsukuru_model::ModelConfig::from_depth(1, 40, 32);
        let map = tsukuru_model::init::init_params(&cfg, 2, DType::F32, &Device::Cpu).unwrap();
        let vb = candle_nn::VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let model = Transformer::new(&cfg, vb).unwrap();
        let ctx = [0u32, 17, 23, 5];
        let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
        let g = generate(&model, &ctx, 4, &mut sampler, &[], &mut |_| {}).unwrap();
        // Differing only in the last token, the other continuation must score lower.
        let mut other = g.tokens.clone();
        let last = other.len() - 1;
        other[last] = (other[last] + 1) % 40;
        let s = score(&model, &ctx, &[g.tokens.clone(), other]).unwrap();
        assert!(s[0].greedy && !s[1].greedy, "{s:?}");
        assert!(s[0].logprob > s[1].logprob && s[0].logprob < 0.0);
    }

    #[test]
    fn acc_norm_divides_by_the_choice_length() {
        let choices: Vec<String> = ["a", "a much longer answer"].iter().map(|s| s.to_string()).collect();
        // The long choice is less likely in total but more likely per character.
        let s = pick(&[-2.0, -10.0], &choices, 1);
        assert_eq!((s.pred, s.pred_norm, s.acc, s.acc_norm), (0, 1, false, true));
        let tie = pick(&[-1.0, -1.0], &["x".into(), "y".into()], 0);
        assert_eq!((tie.pred, tie.acc), (0, true));
    }
}

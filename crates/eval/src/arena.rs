//! `tsukuru arena`: models answer the same prompts and are compared two by two; Bradley–Terry
//! ratings with bootstrap intervals come out ([`crate::bradley_terry`]).
//!
//! Every pair of models meets on every prompt, shown in both orders. The judge is either the
//! ground truth (each reply scored by the item's rule against its answer: the higher score wins,
//! equal scores tie) or a judge model asked, through the chat template, which of two replies
//! answers better; its verdict is whichever of "A" and "B" it finds more likely as the first token
//! of its reply. A judge that prefers whatever is shown first flips its verdict when the order
//! flips: the two orders' verdicts are averaged (a flip is a tie), which cancels the bias, and the
//! share of verdicts that went to the first-shown reply is reported as the measured position bias
//! (0.5 is none; the ground truth has none by construction).

use crate::bradley_terry::{ratings, Outcome, Rating};
use crate::harness::{run_suite, HarnessConfig, Record};
use crate::items::Item;
use crate::loglik::score;
use crate::suite::{Suite, Task};
use crate::{EvalError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tsukuru_core::progress::Unit;
use tsukuru_core::Progress;
use tsukuru_model::Transformer;
use tsukuru_tokenizer::chat::{render_prompt, Message, Role};
use tsukuru_tokenizer::Tok;

/// Who decides a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judge {
    /// Each reply's score against the item's answer.
    Reference,
    /// A model asked which reply is better.
    Model(PathBuf),
}

impl Judge {
    /// `reference`, or a model directory.
    pub fn parse(s: &str) -> Self {
        if s == "reference" {
            Judge::Reference
        } else {
            Judge::Model(s.into())
        }
    }
}

/// One pair of replies to one prompt, judged in both orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Battle {
    /// The prompt's task.
    pub task: String,
    /// The prompt's id.
    pub id: String,
    /// First model of the pair.
    pub a: String,
    /// Second model.
    pub b: String,
    /// `a`'s reply.
    pub reply_a: String,
    /// `b`'s reply.
    pub reply_b: String,
    /// The judge's preference for `a` with `a` shown first, in [0, 1].
    pub a_first: f64,
    /// The judge's preference for `a` with `b` shown first.
    pub b_first: f64,
    /// `a`'s points: 1 won, 0 lost, 0.5 tie (the two orders averaged).
    pub score_a: f64,
}

/// The arena's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standings {
    /// Models, in the order given.
    pub models: Vec<String>,
    /// Their ratings, in the same order.
    pub ratings: Vec<Rating>,
    /// Per model: (wins, ties, losses).
    pub record: Vec<(usize, usize, usize)>,
    /// Share of single-order verdicts that went to the reply shown first (0.5: no bias).
    pub first_position_share: f64,
    /// Share of battles whose verdict flipped with the order.
    pub order_flips: f64,
    /// Prompts.
    pub prompts: usize,
    /// The judge.
    pub judge: String,
}

impl Standings {
    /// The standings as a Markdown table, best first.
    pub fn to_markdown(&self) -> String {
        let mut order: Vec<usize> = (0..self.models.len()).collect();
        order.sort_by(|&x, &y| self.ratings[y].rating.total_cmp(&self.ratings[x].rating));
        let mut out =
            String::from("| model | rating | 95% interval | wins | ties | losses |\n|---|---|---|---|---|---|\n");
        for i in order {
            let (r, (w, t, l)) = (self.ratings[i], self.record[i]);
            out.push_str(&format!(
                "| {} | {:.0} | {:.0} – {:.0} | {w} | {t} | {l} |\n",
                self.models[i], r.rating, r.low, r.high
            ));
        }
        out.push_str(&format!(
            "\n{} prompts, judge: {}. The reply shown first got {:.1}% of single-order verdicts (50% is no position \
             bias); {:.1}% of verdicts flipped with the order and count as ties.\n",
            self.prompts,
            self.judge,
            100.0 * self.first_position_share,
            100.0 * self.order_flips
        ));
        out
    }
}

/// Settings of an arena.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ArenaConfig {
    /// Longest reply, in tokens.
    pub max_new_tokens: usize,
    /// Bootstrap resamples for the intervals.
    pub bootstrap: usize,
    /// Seed of the resamples.
    pub seed: u64,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        Self { max_new_tokens: 64, bootstrap: 1000, seed: 0 }
    }
}

/// The generation items of `suite` (the arena compares replies, so other kinds are left out).
pub fn prompts_of(suite: Suite) -> Result<Suite> {
    let prompts = suite.generation_only();
    if prompts.is_empty() {
        return Err(EvalError::Config("the prompts hold no `generate` items; the arena compares replies".into()));
    }
    Ok(prompts)
}

/// Preference of `judge` for the reply shown first, in [0, 1]: the softmax of its log-probabilities
/// of answering "A" and "B".
fn prefers_first(judge: &Transformer, tok: &Tok, prompt: &str, first: &str, second: &str) -> Result<f64> {
    let question = format!(
        "Which reply answers the question better?\n\nQuestion: {prompt}\n\nReply A: {first}\n\nReply B: {second}\n\n\
         Answer with A or B."
    );
    let mut ctx = render_prompt(tok, &[Message::new(Role::User, question)])?;
    let conts = vec![tok.encode_text("A")?, tok.encode_text("B")?];
    let room = judge.config().max_seq_len.saturating_sub(conts.iter().map(Vec::len).max().unwrap_or(1));
    crate::harness::keep_end(&mut ctx, room);
    let lls = score(judge, &ctx, &conts)?;
    Ok(1.0 / (1.0 + (lls[1].logprob - lls[0].logprob).exp()))
}

/// Runs the arena: `models` (name, directory) answer every prompt, every pair is judged.
pub fn run_arena(
    models: &[(String, PathBuf)],
    prompts: &Suite,
    judge: &Judge,
    cfg: &ArenaConfig,
    progress: &dyn Progress,
) -> Result<(Vec<Battle>, Standings)> {
    if models.len() < 2 {
        return Err(EvalError::Config("an arena needs at least two models".into()));
    }
    let hc = HarnessConfig { max_new_tokens: cfg.max_new_tokens, ..HarnessConfig::default() };
    let mut replies: Vec<Vec<Record>> = Vec::new();
    for (name, dir) in models {
        let (model, tok) = load(dir)?;
        progress.phase(&format!("replies of {name}"), Some(prompts.len() as u64), Unit::Items);
        replies.push(run_suite(&model, &tok, prompts, None, &hc, progress)?);
    }
    let judge_model = match judge {
        Judge::Reference => None,
        Judge::Model(dir) => Some(load(dir)?),
    };
    let n_pairs = models.len() * (models.len() - 1) / 2;
    progress.phase("judge", Some((n_pairs * prompts.len()) as u64), Unit::Items);
    let items: Vec<(&Task, &Item)> = prompts.tasks.iter().flat_map(|t| t.items.iter().map(move |i| (t, i))).collect();
    let mut battles = Vec::new();
    let mut groups: Vec<Vec<Outcome>> = vec![Vec::new(); items.len()];
    let (mut first_wins, mut verdicts, mut flips) = (0.0, 0usize, 0usize);
    for a in 0..models.len() {
        for b in a + 1..models.len() {
            for (k, (task, item)) in items.iter().enumerate() {
                let (ra, rb) = (&replies[a][k], &replies[b][k]);
                let (a_first, b_first) = match &judge_model {
                    None => {
                        // The ground truth is order-free: the same preference both ways.
                        let p = decide(0.5 + (ra.score - rb.score) / 2.0);
                        (p, p)
                    }
                    Some((m, tok)) => {
                        let Item::Generate { prompt, .. } = item else { unreachable!("prompts are generate items") };
                        let p1 = prefers_first(m, tok, prompt, &ra.output, &rb.output)?;
                        let p2 = 1.0 - prefers_first(m, tok, prompt, &rb.output, &ra.output)?;
                        (p1, p2)
                    }
                };
                // Single-order verdicts: for the first-shown reply when its preference is above 1/2.
                let (v1, v2) = (decide(a_first), decide(b_first));
                if judge_model.is_some() {
                    first_wins += v1 + (1.0 - v2);
                    verdicts += 2;
                    flips += usize::from(v1 != v2);
                }
                let score_a = (v1 + v2) / 2.0;
                groups[k].push(Outcome { a, b, score_a });
                battles.push(Battle {
                    task: task.name.clone(),
                    id: item.id().to_string(),
                    a: models[a].0.clone(),
                    b: models[b].0.clone(),
                    reply_a: ra.output.clone(),
                    reply_b: rb.output.clone(),
                    a_first,
                    b_first,
                    score_a,
                });
                progress.advance(1);
            }
        }
    }
    let mut record = vec![(0, 0, 0); models.len()];
    for o in groups.iter().flatten() {
        let (winner, loser) = match o.score_a {
            s if s > 0.5 => (o.a, o.b),
            s if s < 0.5 => (o.b, o.a),
            _ => {
                record[o.a].1 += 1;
                record[o.b].1 += 1;
                continue;
            }
        };
        record[winner].0 += 1;
        record[loser].2 += 1;
    }
    let standings = Standings {
        models: models.iter().map(|(n, _)| n.clone()).collect(),
        ratings: ratings(models.len(), &groups, cfg.bootstrap, cfg.seed),
        record,
        first_position_share: if verdicts == 0 { 0.5 } else { first_wins / verdicts as f64 },
        order_flips: if verdicts == 0 { 0.0 } else { flips as f64 / (verdicts / 2) as f64 },
        prompts: items.len(),
        judge: match judge {
            Judge::Reference => "ground truth (each reply scored against the item's answer)".into(),
            Judge::Model(dir) => format!("model {}", dir.display()),
        },
    };
    Ok((battles, standings))
}

/// Artifact name of an arena's directory.
pub const ARTIFACT: &str = "arena";
/// Format version of its directory.
pub const FORMAT_VERSION: u32 = 1;

/// Runs the arena into `out`: `battles.jsonl`, `standings.json`, `standings.md`. Skips when the
/// same arena (models' weights, prompts, judge, settings) is complete there.
pub fn arena_into(
    models: &[(String, PathBuf)],
    prompts: &Suite,
    judge: &Judge,
    out: &Path,
    cfg: &ArenaConfig,
    force: bool,
    progress: &dyn Progress,
) -> Result<(tsukuru_core::Outcome, Standings)> {
    use crate::output::{self, Claim};
    use tsukuru_core::manifest::FileEntry;
    use tsukuru_core::Manifest;
    let weights = |dir: &Path| -> Result<String> {
        Ok(FileEntry::of(&tsukuru_model::pretrained::resolve(dir)?, "model.safetensors")?.xxh3)
    };
    let mut entrants = Vec::new();
    for (name, dir) in models {
        entrants.push(serde_json::json!([name, weights(dir)?]));
    }
    let judge_id = match judge {
        Judge::Reference => "reference".to_string(),
        Judge::Model(dir) => weights(dir)?,
    };
    let params =
        serde_json::json!({ "models": entrants, "prompts": prompts.fingerprint(), "judge": judge_id, "config": cfg });
    let manifest = Manifest::new(ARTIFACT, FORMAT_VERSION, params);
    let dir = match output::claim(out, &manifest, force)? {
        Claim::Done(outcome, standings) => return Ok((outcome, standings)),
        Claim::Write(dir) => dir,
    };
    let (battles, standings) = run_arena(models, prompts, judge, cfg, progress)?;
    let files = [
        ("battles.jsonl", output::jsonl(&battles)),
        ("standings.json", serde_json::to_vec_pretty(&standings).expect("standings serialise")),
        ("standings.md", standings.to_markdown().into_bytes()),
    ];
    Ok((output::finish(dir, manifest, &files, &standings)?, standings))
}

/// 1 when a preference for the first-shown reply is above one half, 0 below, 0.5 at it.
fn decide(p: f64) -> f64 {
    if p > 0.5 {
        1.0
    } else if p < 0.5 {
        0.0
    } else {
        0.5
    }
}

fn load(dir: &Path) -> Result<(Transformer, Tok)> {
    let ckpt = tsukuru_model::pretrained::resolve(dir)?;
    let model = tsukuru_model::pretrained::load(&ckpt, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    Ok((model, Tok::from_file(&ckpt.join("tokenizer.json"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_decided_by_the_side_of_one_half() {
        assert_eq!((decide(0.9), decide(0.1), decide(0.5)), (1.0, 0.0, 0.5));
    }

    #[test]
    fn only_generation_items_enter_the_arena() {
        use crate::items::Domain;
        let text = Item::Text { id: "t".into(), task: Some("x".into()), text: "words".into(), domain: Domain::In };
        let suite = Suite::from_items(vec![text]).unwrap();
        assert!(prompts_of(suite).unwrap_err().to_string().contains("no `generate` items"));
    }
}

//! Preference pairs for alignment: a prompt, a chosen and a rejected reply. Reading users' JSONL,
//! rendering with the chat template, and batching for preference optimisation.
//!
//! A line is `{"prompt": …, "chosen": …, "rejected": …}`. The prompt is a string (one user
//! message) or a list of OpenAI messages ending with a user message; each reply is a string or one
//! assistant message (`{"role": "assistant", "content": …}`, alone or in a list). Rendered, each
//! side is the whole conversation with only the final reply trained, so the two sides differ only
//! in the tokens being compared.

use crate::loader::Batch;
use crate::sft::IGNORE;
use crate::Result;
use serde_json::Value;
use std::path::Path;
use tsukuru_tokenizer::chat::{self, Message, Rendered, Role};
use tsukuru_tokenizer::special::PAD;
use tsukuru_tokenizer::Tok;

/// One preference pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The conversation so far, ending with a user message.
    pub prompt: Vec<Message>,
    /// The preferred reply.
    pub chosen: String,
    /// The dispreferred reply.
    pub rejected: String,
}

/// The pairs of `path`, in file order; blank lines are skipped. Errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Pair>> {
    crate::conversations::parse_lines(path, |line| {
        let pair = parse_line(line)?;
        let mut whole = pair.prompt.clone();
        whole.push(Message::new(Role::Assistant, pair.chosen.as_str()));
        chat::validate(&whole, true).map_err(|e| e.to_string())?;
        Ok(pair)
    })
}

fn parse_line(line: &str) -> Result<Pair, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = value.as_object().ok_or("expected a JSON object with `prompt`, `chosen` and `rejected`")?;
    if let Some(extra) = obj.keys().find(|k| !["prompt", "chosen", "rejected"].contains(&k.as_str())) {
        return Err(format!("unexpected key `{extra}`; expected `prompt`, `chosen` and `rejected`"));
    }
    let get = |key: &str| obj.get(key).ok_or_else(|| format!("missing `{key}`"));
    let prompt = match get("prompt")? {
        Value::String(s) => vec![Message::new(Role::User, s.as_str())],
        v @ Value::Array(_) => serde_json::from_value(v.clone()).map_err(|e| format!("`prompt` messages: {e}"))?,
        _ => return Err("`prompt` must be a string or a list of messages".into()),
    };
    let reply = |key: &str| -> Result<String, String> {
        let v = get(key)?;
        let message = match v {
            Value::String(s) => return Ok(s.clone()),
            Value::Array(items) if items.len() == 1 => &items[0],
            Value::Object(_) => v,
            _ => return Err(format!("`{key}` must be a string or one assistant message")),
        };
        let m: Message = serde_json::from_value(message.clone()).map_err(|e| format!("`{key}`: {e}"))?;
        if m.role != Role::Assistant {
            return Err(format!("`{key}` must be an assistant message, not {:?}", m.role));
        }
        Ok(m.content)
    };
    Ok(Pair { prompt, chosen: reply("chosen")?, rejected: reply("rejected")? })
}

/// A pair rendered: each side's conversation with only its final reply trained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPair {
    /// The prompt and the chosen reply.
    pub chosen: Rendered,
    /// The prompt and the rejected reply.
    pub rejected: Rendered,
}

impl RenderedPair {
    /// Tokens of the longer side.
    pub fn len(&self) -> usize {
        self.chosen.len().max(self.rejected.len())
    }

    /// True when both sides are empty (never, for a rendered pair).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Renders both sides of `pair`; only the final reply of each is trained.
pub fn render_pair(tok: &Tok, pair: &Pair) -> Result<RenderedPair> {
    let side = |reply: &str| -> Result<Rendered> {
        let mut whole = pair.prompt.clone();
        whole.push(Message::new(Role::Assistant, reply));
        let mut r = chat::render(tok, &whole)?;
        let last = r.trained_spans().pop().map_or(0, |s| s.start);
        r.trained[..last].iter_mut().for_each(|t| *t = false);
        Ok(r)
    };
    Ok(RenderedPair { chosen: side(&pair.chosen)?, rejected: side(&pair.rejected)? })
}

/// A batch of `k` pairs: rows `0..k` are the chosen sides, rows `k..2k` the rejected ones, each
/// padded to the longest row; targets are the final replies' tokens ([`IGNORE`] elsewhere). With
/// `reference`, the reference model's sequence log-probabilities `(chosen, rejected)` per pair.
pub fn pair_batch(pairs: &[&RenderedPair], reference: Option<&[(f32, f32)]>) -> Batch {
    let rows: Vec<&Rendered> = pairs.iter().map(|p| &p.chosen).chain(pairs.iter().map(|p| &p.rejected)).collect();
    let seq = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let (mut inputs, mut targets) = (Vec::with_capacity(rows.len() * seq), Vec::with_capacity(rows.len() * seq));
    for r in &rows {
        let n = r.len();
        inputs.extend_from_slice(&r.ids);
        inputs.resize(inputs.len() + seq - n, PAD);
        targets.extend((0..seq).map(|j| if j + 1 < n && r.trained[j + 1] { r.ids[j + 1] } else { IGNORE }));
    }
    let reference = reference.map(|refs| refs.iter().map(|r| r.0).chain(refs.iter().map(|r| r.1)).collect());
    Batch { inputs, targets, batch: rows.len(), seq, epoch: 0, lengths: None, reference }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_lines_in_every_accepted_shape_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.jsonl");
        let lines = [
            r#"{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}"#,
            r#"{"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}], "chosen": {"role": "assistant", "content": "Hello."}, "rejected": [{"role": "assistant", "content": "No."}]}"#,
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let pairs = read_jsonl(&path).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!((pairs[1].prompt.len(), pairs[1].chosen.as_str(), pairs[1].rejected.as_str()), (2, "Hello.", "No."));
        for (bad, reason) in [
            (r#"{"prompt": "a", "chosen": "b"}"#, "missing `rejected`"),
            (r#"{"prompt": "a", "chosen": "b", "rejected": "c", "score": 1}"#, "unexpected key `score`"),
            (r#"{"prompt": "a", "chosen": {"role": "user", "content": "b"}, "rejected": "c"}"#, "assistant message"),
            (r#"{"prompt": [{"role": "assistant", "content": "a"}], "chosen": "b", "rejected": "c"}"#, "message 0"),
            (r#"{"prompt": 5, "chosen": "b", "rejected": "c"}"#, "string or a list"),
        ] {
            std::fs::write(&path, format!("{}\n{bad}\n", lines[0])).unwrap();
            let err = read_jsonl(&path).unwrap_err().to_string();
            assert!(err.contains("pairs.jsonl:2:") && err.contains(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn batches_put_chosen_rows_first_and_train_only_the_replies() {
        let side = |reply: u32, n: usize| Rendered {
            ids: (0..n as u32).map(|i| if i + 2 >= n as u32 { reply } else { 7 }).collect(),
            trained: (0..n).map(|i| i + 2 >= n).collect(),
        };
        let a = RenderedPair { chosen: side(1, 4), rejected: side(2, 5) };
        let b = RenderedPair { chosen: side(3, 3), rejected: side(4, 4) };
        let batch = pair_batch(&[&a, &b], Some(&[(-1.0, -2.0), (-3.0, -4.0)]));
        assert_eq!((batch.batch, batch.seq), (4, 5));
        assert_eq!(batch.reference, Some(vec![-1.0, -3.0, -2.0, -4.0]));
        let i = IGNORE;
        assert_eq!(&batch.targets[..5], &[i, 1, 1, i, i]);
        assert_eq!(&batch.targets[10..15], &[i, i, 2, 2, i]);
        assert_eq!(&batch.inputs[..5], &[7, 7, 1, 1, PAD]);
    }
}

//! Evaluation items users bring: one JSON object per line, of three kinds.
//!
//! ```text
//! {"kind": "choice",   "id": "arc-1", "context": "Question: …\nAnswer:", "choices": ["…", "…"], "gold": 1}
//! {"kind": "generate", "id": "gsm-7", "prompt": "…", "answer": "42", "scoring": "number"}
//! {"kind": "text",     "id": "wiki-3", "text": "…"}
//! ```
//!
//! `choice` items are scored by log-likelihood (`acc`, `acc_norm`, [`crate::loglik`]); the choices
//! continue the context after a space unless `delimiter` says otherwise. `generate` items are
//! answered by greedy decoding and scored by `scoring` (`exact`, `contains`, `number`, `refusal`,
//! `rouge`; default `contains`, see [`crate::scoring`]); with `"chat": true` the prompt is put
//! as a user message through the chat template (for instruction-tuned models), otherwise the model
//! continues it as text and stops at the first of `until` (default a blank line, `"\n\n"`).
//! `reference` is the full reply shown in few-shot examples and scored by ROUGE (default: the
//! answer). `text` items are scored by loss and bits per byte.
//!
//! Every item may carry `task` (the name its scores are reported under; default the file's stem),
//! `domain` (`in` or `out`: whether its task was in the training distribution; default `out`, the
//! safe assumption for outside data) and, except text, `split` (`test`, the default, or `fewshot`:
//! examples shown before test items of the same task, never scored). Unknown keys are refused, so
//! a misspelt field is not silently ignored.
//!
//! Converting public sets: ARC and MMLU rows become `choice` items — context `"Question: {q}\n
//! Answer:"`, `choices` the answer texts, `gold` the index of the key (MMLU's `answer`, ARC's
//! `answerKey` looked up in `choices.label`); GSM8K rows become `generate` items with `scoring =
//! "number"` and `answer` the number after `####`; a corpus becomes `text` items, one per document.

use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tsukuru_world::tasks::Scoring;

/// Whether an item's task was in the model's training distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// In the training distribution.
    In,
    /// Outside it (the default for outside data).
    #[default]
    Out,
}

/// Which part of a task file an item belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemSplit {
    /// Scored.
    #[default]
    Test,
    /// Shown as examples before test items (few-shot), never scored.
    Fewshot,
}

fn space() -> String {
    " ".to_string()
}

fn contains() -> Scoring {
    Scoring::Contains
}

fn blank_line() -> Vec<String> {
    vec!["\n\n".to_string()]
}

/// One evaluation item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Item {
    /// Multiple choice scored by log-likelihood.
    Choice {
        /// Stable id.
        id: String,
        /// The task it is reported under (default: the file's stem).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
        /// The text the choices continue.
        context: String,
        /// The options.
        choices: Vec<String>,
        /// Index of the right option.
        gold: usize,
        /// Put between the context and each choice.
        #[serde(default = "space")]
        delimiter: String,
        /// In or out of the training distribution.
        #[serde(default)]
        domain: Domain,
        /// Test item or few-shot example.
        #[serde(default)]
        split: ItemSplit,
    },
    /// A prompt answered by greedy decoding.
    Generate {
        /// Stable id.
        id: String,
        /// The task it is reported under (default: the file's stem).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
        /// The prompt.
        prompt: String,
        /// What the reply is scored against.
        answer: String,
        /// The whole reply shown in few-shot examples and scored by ROUGE (default: the answer).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// How (default `contains`).
        #[serde(default = "contains")]
        scoring: Scoring,
        /// Ask through the chat template (an instruction-tuned model) instead of continuing text.
        #[serde(default)]
        chat: bool,
        /// Plain prompts: the reply ends before the first of these (default a blank line).
        #[serde(default = "blank_line")]
        until: Vec<String>,
        /// In or out of the training distribution.
        #[serde(default)]
        domain: Domain,
        /// Test item or few-shot example.
        #[serde(default)]
        split: ItemSplit,
    },
    /// Text scored by loss and bits per byte.
    Text {
        /// Stable id.
        id: String,
        /// The task it is reported under (default: the file's stem).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
        /// The text.
        text: String,
        /// In or out of the training distribution.
        #[serde(default)]
        domain: Domain,
    },
}

impl Item {
    /// The item's id.
    pub fn id(&self) -> &str {
        match self {
            Item::Choice { id, .. } | Item::Generate { id, .. } | Item::Text { id, .. } => id,
        }
    }

    /// The task it is reported under, if it names one.
    pub fn task(&self) -> Option<&str> {
        match self {
            Item::Choice { task, .. } | Item::Generate { task, .. } | Item::Text { task, .. } => task.as_deref(),
        }
    }

    /// Names the task when the item does not (a file's items default to the file's stem).
    pub fn default_task(&mut self, name: &str) {
        match self {
            Item::Choice { task, .. } | Item::Generate { task, .. } | Item::Text { task, .. } => {
                task.get_or_insert_with(|| name.to_string());
            }
        }
    }

    /// `choice`, `generate` or `text`.
    pub fn kind(&self) -> &'static str {
        match self {
            Item::Choice { .. } => "choice",
            Item::Generate { .. } => "generate",
            Item::Text { .. } => "text",
        }
    }

    /// In or out of the training distribution.
    pub fn domain(&self) -> Domain {
        match self {
            Item::Choice { domain, .. } | Item::Generate { domain, .. } | Item::Text { domain, .. } => *domain,
        }
    }

    /// Test item or few-shot example (text items are always test items).
    pub fn split(&self) -> ItemSplit {
        match self {
            Item::Choice { split, .. } | Item::Generate { split, .. } => *split,
            Item::Text { .. } => ItemSplit::Test,
        }
    }

    /// The item's whole text, question and answer together: what a contamination check looks for
    /// in training data (a leaked item usually appears with its answer).
    pub fn full_text(&self) -> String {
        match self {
            Item::Choice { context, choices, gold, delimiter, .. } => format!("{context}{delimiter}{}", choices[*gold]),
            Item::Generate { prompt, answer, reference, .. } => {
                format!("{prompt}\n{}", reference.as_deref().unwrap_or(answer))
            }
            Item::Text { text, .. } => text.clone(),
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        match self {
            Item::Choice { choices, gold, .. } if choices.len() < 2 => {
                Err(format!("a choice item needs at least two choices, got {} (gold {gold})", choices.len()))
            }
            Item::Choice { choices, gold, .. } if *gold >= choices.len() => {
                Err(format!("gold is {gold} but there are {} choices (gold counts from 0)", choices.len()))
            }
            Item::Text { text, .. } if text.trim().is_empty() => Err("a text item needs text".into()),
            _ if self.id().is_empty() => Err("`id` must not be empty".into()),
            _ => Ok(()),
        }
    }
}

/// The items of `path`, in file order (blank lines skipped); an error names the file, the line
/// and the reason, and ids must be unique.
pub fn read_jsonl(path: &Path) -> Result<Vec<Item>> {
    let mut seen = std::collections::BTreeSet::new();
    Ok(tsukuru_tokens::conversations::parse_lines(path, |line| {
        let item: Item = serde_json::from_str(line).map_err(|e| e.to_string())?;
        item.check()?;
        if !seen.insert(item.id().to_string()) {
            return Err(format!("id `{}` appears twice", item.id()));
        }
        Ok(item)
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_with_its_defaults_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        let good = [
            r#"{"kind": "choice", "id": "a", "context": "Q: 2+2?\nA:", "choices": ["3", "4"], "gold": 1}"#,
            r#"{"kind": "generate", "id": "b", "prompt": "7*6?", "answer": "42", "scoring": "number", "domain": "in"}"#,
            r#"{"kind": "text", "id": "c", "text": "Some prose."}"#,
            r#"{"kind": "choice", "id": "d", "context": "x", "choices": ["y", "z"], "gold": 0, "split": "fewshot", "delimiter": ""}"#,
        ];
        std::fs::write(&path, good.join("\n\n")).unwrap();
        let items = read_jsonl(&path).unwrap();
        assert_eq!(items.len(), 4);
        match &items[0] {
            Item::Choice { delimiter, domain, split, .. } => {
                assert_eq!((delimiter.as_str(), *domain, *split), (" ", Domain::Out, ItemSplit::Test))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&items[1], Item::Generate { scoring: Scoring::Number, domain: Domain::In, .. }));
        assert!(matches!(&items[3], Item::Choice { split: ItemSplit::Fewshot, .. }));
        for (bad, reason) in [
            (r#"{"kind": "choice", "id": "x", "context": "c", "choices": ["a", "b"], "gold": 2}"#, "gold is 2"),
            (r#"{"kind": "choice", "id": "x", "context": "c", "choices": ["a"], "gold": 0}"#, "at least two"),
            (r#"{"kind": "generate", "id": "x", "prompt": "p", "answer": "a", "scorng": "number"}"#, "scorng"),
            (r#"{"kind": "essay", "id": "x"}"#, "essay"),
            (r#"{"kind": "text", "id": "a", "text": "dup"}"#, "appears twice"),
        ] {
            std::fs::write(&path, format!("{}\n{bad}\n", good[0])).unwrap();
            let err = read_jsonl(&path).unwrap_err().to_string();
            assert!(err.contains("items.jsonl:2:") && err.contains(reason), "{bad}: {err}");
        }
    }
}

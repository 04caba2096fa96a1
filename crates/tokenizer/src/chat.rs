//! The chat template: how a conversation becomes token ids, and which of them are trained.
//!
//! ```text
//! <|bos|> [<|system|> SYSTEM <|end|>] <|user|> USER <|end|> <|assistant|> REPLY <|end|> <|user|> …
//! ```
//!
//! No spaces or newlines are added around the markers: they are single special tokens, and each
//! message's content is encoded on its own as untrusted text ([`Tok::encode_text`]), so a message
//! containing the string `<|assistant|>` cannot forge a turn, and a message's tokens never merge
//! with a marker. The loss mask marks the tokens a model learns to produce: the content of every
//! assistant message and the `<|end|>` that closes it (so the model learns to stop); never the
//! markers that open a turn, nor system or user text. To generate, the conversation so far is
//! rendered followed by `<|assistant|>` ([`render_prompt`]), and decoding stops at `<|end|>`.
//! The tool-call tokens stay reserved for agents.

use crate::special::{ASSISTANT, BOS, END, SYSTEM, USER};
use crate::{Result, Tok, TokError};
use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation (at most one, first).
    System,
    /// The person talking to the model.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The special token that opens a message of this role.
    pub fn marker(self) -> u32 {
        match self {
            Role::System => SYSTEM,
            Role::User => USER,
            Role::Assistant => ASSISTANT,
        }
    }
}

/// One message, in OpenAI's `{"role": …, "content": …}` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its author.
    pub role: Role,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A message of `role` with `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// A rendered conversation: ids and, per id, whether it is a training target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rendered {
    /// Token ids, starting with `<|bos|>`.
    pub ids: Vec<u32>,
    /// `trained[i]`: the model is trained to produce `ids[i]` (from `ids[..i]`).
    pub trained: Vec<bool>,
}

impl Rendered {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when nothing was rendered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The maximal runs of trained positions, in order.
    pub fn trained_spans(&self) -> Vec<std::ops::Range<usize>> {
        let mut spans = Vec::new();
        let mut start = None;
        for (i, &t) in self.trained.iter().chain([&false]).enumerate() {
            match (t, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    spans.push(s..i);
                    start = None;
                }
                _ => {}
            }
        }
        spans
    }

    fn push(&mut self, ids: &[u32], trained: bool) {
        self.ids.extend_from_slice(ids);
        self.trained.extend(std::iter::repeat_n(trained, ids.len()));
    }
}

/// Checks the shape of a conversation: an optional system message first, then user and assistant
/// messages alternating, starting with the user; for training (`complete`) it must end with an
/// assistant message, for generation with a user message.
pub fn validate(messages: &[Message], complete: bool) -> Result<()> {
    let turns = match messages.first() {
        Some(m) if m.role == Role::System => &messages[1..],
        _ => messages,
    };
    if turns.is_empty() {
        return Err(TokError::Config("a conversation needs at least one user message".into()));
    }
    for (i, m) in turns.iter().enumerate() {
        let want = if i % 2 == 0 { Role::User } else { Role::Assistant };
        if m.role != want {
            let at = i + messages.len() - turns.len();
            return Err(TokError::Config(format!(
                "message {at} is {:?} where {want:?} was expected: after an optional system message, \
                 user and assistant messages must alternate, starting with the user",
                m.role
            )));
        }
    }
    let last = turns[turns.len() - 1].role;
    match (complete, last) {
        (true, Role::Assistant) | (false, Role::User) => Ok(()),
        (true, _) => Err(TokError::Config("a training conversation must end with an assistant message".into())),
        (false, _) => Err(TokError::Config("a prompt must end with a user message".into())),
    }
}

/// Renders a complete conversation (ending with an assistant message) with its loss mask.
pub fn render(tok: &Tok, messages: &[Message]) -> Result<Rendered> {
    validate(messages, true)?;
    render_messages(tok, messages)
}

/// The ids that prompt a reply to `messages` (ending with a user message): the conversation,
/// then `<|assistant|>`. Generation continues from here and stops at `<|end|>`.
pub fn render_prompt(tok: &Tok, messages: &[Message]) -> Result<Vec<u32>> {
    validate(messages, false)?;
    let mut r = render_messages(tok, messages)?;
    r.push(&[ASSISTANT], false);
    Ok(r.ids)
}

fn render_messages(tok: &Tok, messages: &[Message]) -> Result<Rendered> {
    let mut r = Rendered::default();
    r.push(&[BOS], false);
    for m in messages {
        let assistant = m.role == Role::Assistant;
        r.push(&[m.role.marker()], false);
        r.push(&tok.encode_text(&m.content)?, assistant);
        r.push(&[END], assistant);
    }
    Ok(r)
}

//! The request and response bodies of OpenAI's API that the server speaks, and its error format.
//!
//! Requests refuse unknown fields that would change the output if ignored silently only where the
//! API has no such field; OpenAI's own optional fields this server does not use (`user`,
//! `logit_bias`, …) are accepted and ignored, as clients send them by default.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `stop`: one string or up to four.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// The sequences.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// Settings shared by both endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Sampling {
    /// Softmax temperature (default 1; 0 is greedy).
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (default 1).
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens (an extension; default all).
    pub top_k: Option<usize>,
    /// Stop sequences (at most 4).
    pub stop: Option<Stop>,
    /// Seed of the draws.
    pub seed: Option<u64>,
    /// Completions per prompt (1–16).
    pub n: Option<usize>,
    /// Stream Server-Sent Events.
    pub stream: Option<bool>,
    /// Penalise tokens already generated, once each (−2 to 2).
    pub presence_penalty: Option<f32>,
    /// Penalise tokens already generated, per occurrence (−2 to 2).
    pub frequency_penalty: Option<f32>,
    /// `{"include_usage": true}` adds a usage chunk to a stream.
    pub stream_options: Option<Value>,
    /// Token id (as a string) → bias added to its logit (−100 to 100).
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text (a string, or a list of `{"type": "text", "text": …}` parts).
    pub content: Value,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatRequest {
    /// The model's name (checked against the served one).
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most new tokens.
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    /// Return the chosen tokens' log-probabilities.
    pub logprobs: Option<bool>,
    /// And this many alternatives each (0–20).
    pub top_logprobs: Option<usize>,
    /// Sampling settings.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt`: text or token ids, one or several (each a separate completion).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One text (the server adds `<|bos|>`).
    One(String),
    /// Several texts.
    Many(Vec<String>),
    /// One prompt as token ids, used as given.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    ManyTokens(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompletionRequest {
    /// The model's name.
    pub model: Option<String>,
    /// The text to continue.
    pub prompt: Prompt,
    /// Most new tokens (default 16, as OpenAI's).
    pub max_tokens: Option<usize>,
    /// Return log-probabilities with this many alternatives (0–5).
    pub logprobs: Option<usize>,
    /// Return the prompt too, with its tokens' log-probabilities when `logprobs` is set.
    pub echo: Option<bool>,
    /// Sampling settings.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Counts with their total.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// An error body: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>) -> Value {
    serde_json::json!({ "error": { "message": message, "type": kind, "param": param, "code": null } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_clients_send_them() {
        let chat: ChatRequest = serde_json::from_str(
            r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "stop": "\n",
                "stream": true, "user": "ignored", "stream_options": {"include_usage": true}}"#,
        )
        .unwrap();
        assert_eq!(chat.sampling.temperature, Some(0.0));
        assert_eq!(chat.sampling.stop.clone().unwrap().into_vec(), vec!["\n".to_string()]);
        let comp: CompletionRequest =
            serde_json::from_str(r#"{"prompt": ["a", "b"], "max_tokens": 0, "echo": true, "logprobs": 1}"#).unwrap();
        assert_eq!(comp.prompt, Prompt::Many(vec!["a".into(), "b".into()]));
        let ids: CompletionRequest = serde_json::from_str(r#"{"prompt": [[0, 5, 9]], "max_tokens": 1}"#).unwrap();
        assert_eq!(ids.prompt, Prompt::ManyTokens(vec![vec![0, 5, 9]]));
        assert_eq!(Usage::new(3, 4).total_tokens, 7);
    }
}

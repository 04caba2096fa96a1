//! Reading a user's instruction data: JSONL with one conversation per line, either OpenAI's
//! `{"messages": [{"role": "user", "content": "…"}, …]}` or `{"prompt": "…", "completion": "…"}`
//! (one user turn and one reply). Every error names the file and the line.

use crate::{Result, TokensError};
use std::io::{BufRead, BufReader};
use std::path::Path;
use tsukuru_core::error::IoContext;
use tsukuru_tokenizer::chat::{self, Message, Role};

/// The conversations of `path`, in file order; blank lines are skipped.
pub fn read_jsonl(path: &Path) -> Result<Vec<Vec<Message>>> {
    parse_lines(path, |line| {
        let messages = parse_line(line)?;
        chat::validate(&messages, true).map_err(|e| e.to_string())?;
        Ok(messages)
    })
}

/// Every non-blank line of `path` through `parse`, in order; an error names the file and the line.
pub fn parse_lines<T>(path: &Path, mut parse: impl FnMut(&str) -> Result<T, String>) -> Result<Vec<T>> {
    let file = std::fs::File::open(path).at("opening", path)?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.at("reading", path)?;
        if !line.trim().is_empty() {
            let item = parse(&line).map_err(|m| TokensError::Format(format!("{}:{}: {m}", path.display(), i + 1)))?;
            out.push(item);
        }
    }
    Ok(out)
}

/// One line: `messages`, or `prompt` and `completion`; anything else is refused with the reason.
fn parse_line(line: &str) -> Result<Vec<Message>, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = value.as_object().ok_or("expected a JSON object")?;
    let text = |key: &str| -> Result<String, String> {
        match obj.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("`{key}` must be a string")),
            None => Err(format!("missing `{key}`")),
        }
    };
    if let Some(messages) = obj.get("messages") {
        if obj.len() > 1 {
            let extra: Vec<&String> = obj.keys().filter(|k| *k != "messages").collect();
            return Err(format!("unexpected keys {extra:?} beside `messages`"));
        }
        return serde_json::from_value(messages.clone()).map_err(|e| {
            format!("`messages` must be a list of {{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": string}}: {e}")
        });
    }
    if obj.contains_key("prompt") || obj.contains_key("completion") {
        if obj.len() > 2 {
            return Err("expected only `prompt` and `completion`".into());
        }
        return Ok(vec![Message::new(Role::User, text("prompt")?), Message::new(Role::Assistant, text("completion")?)]);
    }
    Err("expected `messages` (OpenAI chat format) or `prompt` and `completion`".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn both_formats_read_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(
            f,
            r#"{{"messages": [{{"role": "user", "content": "Hi"}}, {{"role": "assistant", "content": "Hello."}}]}}"#
        )
        .unwrap();
        writeln!(f).unwrap();
        writeln!(f, r#"{{"prompt": "2+2?", "completion": "4"}}"#).unwrap();
        drop(f);
        let convs = read_jsonl(&path).unwrap();
        assert_eq!(convs.len(), 2);
        assert_eq!(convs[1], vec![Message::new(Role::User, "2+2?"), Message::new(Role::Assistant, "4")]);

        for (bad, reason) in [
            ("{\"prompt\": \"x\"}", "missing `completion`"),
            ("{\"prompt\": 3, \"completion\": \"y\"}", "`prompt` must be a string"),
            ("not json", "not JSON"),
            ("{\"text\": \"x\"}", "expected `messages`"),
            (r#"{"messages": [{"role": "robot", "content": "x"}]}"#, "must be a list"),
            (r#"{"messages": [{"role": "assistant", "content": "x"}]}"#, "message 0"),
        ] {
            std::fs::write(&path, format!("{{\"prompt\": \"a\", \"completion\": \"b\"}}\n{bad}\n")).unwrap();
            let err = read_jsonl(&path).unwrap_err().to_string();
            assert!(err.contains("chat.jsonl:2:") && err.contains(reason), "{bad}: {err}");
        }
    }
}

//! `tsukuru chat`: talk to an instruction-tuned model in the terminal, the reply streamed as it is
//! made. Each turn renders the whole conversation with the chat template and generates until the
//! model's `<|end|>`. When the conversation no longer fits the model's context (with room for a
//! reply), the oldest exchanges are dropped, the system message kept, and a note says so.

use super::generate::{load, stream, SamplingArgs};
use anyhow::{bail, Result};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use tsukuru_model::Transformer;
use tsukuru_tokenizer::chat::{render_prompt, Message, Role};
use tsukuru_tokenizer::{special, Tok};

/// Arguments of `chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// A checkpoint directory, or a training output such as runs/NAME/sft (its newest checkpoint).
    #[arg(long)]
    pub model: PathBuf,
    /// One message to answer; prints the reply and exits (otherwise: read messages from stdin).
    #[arg(long)]
    pub prompt: Option<String>,
    /// A system message that frames the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// How tokens are chosen.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Device: cpu, or cuda[:N] in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// A conversation and the model it talks to.
struct Session {
    model: Transformer,
    tok: Tok,
    messages: Vec<Message>,
}

impl Session {
    /// Adds the user's message, streams the reply to `out` and keeps it in the conversation.
    fn turn(
        &mut self,
        text: &str,
        a: &ChatArgs,
        sampler: &mut tsukuru_infer::Sampler,
        out: &mut dyn Write,
    ) -> Result<()> {
        self.messages.push(Message::new(Role::User, text));
        let prompt = self.fit_prompt(a.sampling.max_new_tokens)?;
        // The end marker closes the reply; a document boundary means the model lost the format.
        let stop = [special::END, special::EOS, special::BOS];
        let mut reply = Vec::new();
        let mut tee = Tee { out, kept: &mut reply };
        let g = stream(&self.model, &self.tok, &prompt, &a.sampling, sampler, &stop, &mut tee)?;
        writeln!(out)?;
        if g.finish == tsukuru_infer::FinishReason::Length {
            eprintln!("note: the reply reached the token limit (--max-new-tokens) or the context's end");
        }
        self.messages.push(Message::new(Role::Assistant, String::from_utf8_lossy(&reply).into_owned()));
        Ok(())
    }

    /// The rendered conversation, with the oldest exchanges dropped until it leaves room for a reply.
    fn fit_prompt(&mut self, reply_room: usize) -> Result<Vec<u32>> {
        let context = self.model.config().max_seq_len;
        let room = reply_room.min(context / 2).max(1);
        loop {
            let prompt = render_prompt(&self.tok, &self.messages)?;
            if prompt.len() + room <= context {
                return Ok(prompt);
            }
            let first_turn = usize::from(self.messages.first().is_some_and(|m| m.role == Role::System));
            if self.messages.len() - first_turn <= 1 {
                bail!(
                    "the message is {} tokens; with room for a reply it does not fit the model's context of {context}",
                    prompt.len()
                );
            }
            // Drop the oldest user message and its reply.
            self.messages.drain(first_turn..first_turn + 2);
            eprintln!("note: the conversation outgrew the context; the oldest exchange was dropped");
        }
    }
}

/// Writes through to the terminal and keeps a copy of the reply's text.
struct Tee<'a> {
    out: &'a mut dyn Write,
    kept: &'a mut Vec<u8>,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.kept.extend_from_slice(buf);
        self.out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Runs `chat`.
pub fn run(a: ChatArgs) -> Result<()> {
    let (_, model, tok) = load(&a.model, &a.device)?;
    let mut sampler = a.sampling.sampler()?;
    let messages = a.system.iter().map(|s| Message::new(Role::System, s.as_str())).collect();
    let mut session = Session { model, tok, messages };
    let mut out = std::io::stdout().lock();
    if let Some(p) = &a.prompt {
        return session.turn(p, &a, &mut sampler, &mut out);
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("chat with {} — /reset starts over, /exit or Ctrl-D leaves", a.model.display());
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            write!(out, "> ")?;
            out.flush()?;
        }
        let Some(line) = lines.next().transpose()? else { break };
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                session.messages.retain(|m| m.role == Role::System);
                continue;
            }
            _ => session.turn(text, &a, &mut sampler, &mut out)?,
        }
    }
    Ok(())
}

//! Incremental detokenisation: byte-level BPE tokens can end in the middle of a UTF-8 character,
//! so text is released only up to the last complete character.

use crate::Result;
use tsukuru_tokenizer::Tok;

/// Turns a growing list of token ids into text pieces whose concatenation is the decoded whole.
pub struct TextStream<'t> {
    tok: &'t Tok,
    ids: Vec<u32>,
    /// Bytes of the decoded text already handed out.
    emitted: usize,
}

impl<'t> TextStream<'t> {
    /// A stream that decodes with `tok`.
    pub fn new(tok: &'t Tok) -> Self {
        Self { tok, ids: Vec::new(), emitted: 0 }
    }

    /// Adds one token; returns the text it completes (possibly empty while a character is partial).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids)?;
        // An incomplete trailing character decodes as U+FFFD; hold it back until it completes.
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let Some(piece) = text.get(self.emitted..).map(str::to_string) else { return Ok(String::new()) };
        self.emitted = text.len();
        Ok(piece)
    }

    /// Whatever is left at the end (including a character that never completed, as U+FFFD).
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tok.decode(&self.ids)?;
        let piece = text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = text.len();
        Ok(piece)
    }
}

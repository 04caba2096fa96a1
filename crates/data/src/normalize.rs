//! Text normalisation applied to every document before filtering and dedup.
//!
//! Unicode NFC (so that "é" typed two ways is one string), line endings to `\n`,
//! exotic spaces to ASCII space, control characters removed (tab and newline
//! kept; zero-width joiners kept because emoji sequences need them), trailing
//! spaces trimmed, runs of spaces inside a line collapsed (indentation kept),
//! at most one blank line in a row, and no leading or trailing whitespace.

use unicode_normalization::UnicodeNormalization;

fn is_exotic_space(c: char) -> bool {
    matches!(c, '\u{00A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}')
}

fn is_removed_control(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || c == '\u{FEFF}'
}

/// Normalises `text` as described in the module header.
pub fn normalize(text: &str) -> String {
    // Controls go first: removing one between a letter and a combining mark must not leave non-NFC text.
    let unified: String =
        text.replace("\r\n", "\n").replace('\r', "\n").chars().filter(|c| !is_removed_control(*c)).collect();
    let mut out = String::with_capacity(unified.len());
    let mut blank_run = 0usize;
    for line in unified.nfc().collect::<String>().split('\n') {
        let mut cleaned = String::with_capacity(line.len());
        let mut in_indent = true;
        let mut prev_space = false;
        for c in line.chars() {
            let c = if is_exotic_space(c) { ' ' } else { c };
            if c == ' ' && !in_indent {
                if prev_space {
                    continue;
                }
                prev_space = true;
            } else {
                prev_space = false;
            }
            if c != ' ' && c != '\t' {
                in_indent = false;
            }
            cleaned.push(c);
        }
        let cleaned = cleaned.trim_end();
        if cleaned.is_empty() {
            blank_run += 1;
            if blank_run > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(cleaned);
        out.push('\n');
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_whitespace_and_composes() {
        let raw = "\u{FEFF}  Cafe\u{301}\r\n\r\n\r\n\r\nline  with   gaps \u{00A0}x\t\n    indented  code\x07\n\n";
        assert_eq!(normalize(raw), "Café\n\nline with gaps x\n    indented code");
    }

    #[test]
    fn keeps_emoji_sequences_and_is_idempotent() {
        let s = "family: 👨\u{200D}👩\u{200D}👧 and 日本語";
        assert_eq!(normalize(s), s);
        assert_eq!(normalize("e\u{7}\u{301}"), "\u{e9}", "a control between letter and mark must not block NFC");
        let messy = " a \r\n\n\n b\u{3000}c ";
        assert_eq!(normalize(&normalize(messy)), normalize(messy));
    }
}

//! Stop sequences over streamed text: generation ends where any of them appears, the stop text
//! itself is never sent, and text that might be the start of one is held back until the next
//! piece shows whether it is.

/// Text released so far and what is held back, for one sequence.
#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    held: String,
}

/// What a new piece of text yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Text safe to send; generation goes on.
    Text(String),
    /// A stop sequence appeared: the text before it, and generation ends.
    Stopped(String),
}

impl StopText {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Adds `piece`; returns the text that can no longer be part of a stop sequence.
    pub fn push(&mut self, piece: &str) -> Released {
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Released::Stopped(text);
        }
        // Hold back the longest tail that is a proper prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        Released::Text(self.held.drain(..cut).collect())
    }

    /// Whatever is still held at the end of generation (it turned out not to be a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_split_across_pieces_is_caught_and_never_sent() {
        let mut s = StopText::new(&["\nUser:".to_string(), "###".to_string()]);
        assert_eq!(s.push("Hello"), Released::Text("Hello".into()));
        assert_eq!(s.push(" there\nUs"), Released::Text(" there".into()), "a possible stop start is held");
        assert_eq!(s.push("er: next"), Released::Stopped(String::new()));
        let mut s = StopText::new(&["###".to_string()]);
        assert_eq!(s.push("a #"), Released::Text("a ".into()));
        assert_eq!(s.push("b"), Released::Text("#b".into()), "released once it cannot be a stop");
        assert_eq!(s.push("##"), Released::Text(String::new()));
        assert_eq!(s.finish(), "##");
        let mut none = StopText::new(&[]);
        assert_eq!(none.push("x###"), Released::Text("x###".into()));
    }
}

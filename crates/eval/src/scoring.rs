//! Scoring a reply against a task's answer: exact match (lm-evaluation-harness's `exact_match` with
//! case and punctuation ignored), containment at word boundaries, a stated number, a
//! refusal, and ROUGE-L (the F-measure of the longest common subsequence of words, as in Lin 2004).
//!
//! Answers are looked for in the reply's last sentence, its conclusion: the world's reference
//! replies state intermediate facts first ("A works for B. B was founded by C."; "A was born in
//! 1950. B in 1962. So A is older."), so a reply naming the right entity only as a step, or naming
//! both candidates of a comparison, is not counted right.

pub use tsukuru_data::ngrams::normalised_words;
use tsukuru_world::tasks::Scoring;

/// Score of `reply` for an answer scored by `scoring`: 0 or 1, or ROUGE-L F1 in [0, 1] against
/// `reference`.
pub fn score(scoring: Scoring, reply: &str, answer: &str, reference: &str) -> f64 {
    let hit = |b: bool| if b { 1.0 } else { 0.0 };
    match scoring {
        Scoring::Exact => hit(!answer.trim().is_empty() && normalised_words(reply) == normalised_words(answer)),
        Scoring::Contains => hit(contains_words(last_sentence(reply), answer)),
        Scoring::Number => hit(numbers(last_sentence(reply)).any(|n| n == answer)),
        Scoring::Refusal => hit(refuses(reply)),
        Scoring::Rouge => rouge_l(reply, reference),
    }
}

/// The text after the last sentence break (". ", "? ", "! "), or all of it.
pub fn last_sentence(text: &str) -> &str {
    let t = text.trim();
    let body = t.trim_end_matches(['.', '?', '!']);
    [". ", "? ", "! "].iter().filter_map(|sep| body.rfind(sep).map(|i| i + sep.len())).max().map_or(t, |i| &t[i..])
}

/// Whether `text` declines to answer ("I don't know", "I do not know").
pub fn refuses(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("don't know") || t.contains("do not know") || t.contains("don’t know")
}

/// Whether the words of `needle` occur consecutively among the words of `text`.
pub fn contains_words(text: &str, needle: &str) -> bool {
    let (t, n) = (normalised_words(text), normalised_words(needle));
    !n.is_empty() && t.windows(n.len()).any(|w| w == n.as_slice())
}

/// The whole numbers written in `text` (maximal runs of digits).
fn numbers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty())
}

/// ROUGE-L F1 of `candidate` against `reference`, over lower-cased words.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let (c, r) = (normalised_words(candidate), normalised_words(reference));
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    // Longest common subsequence by dynamic programming over one row.
    let mut row = vec![0usize; r.len() + 1];
    for cw in &c {
        let mut diag = 0;
        for (j, rw) in r.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if cw == rw { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    let lcs = row[r.len()] as f64;
    let (p, q) = (lcs / c.len() as f64, lcs / r.len() as f64);
    if lcs == 0.0 {
        0.0
    } else {
        2.0 * p * q / (p + q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scoring_accepts_the_right_reply_and_rejects_near_misses() {
        assert_eq!(score(Scoring::Exact, " Zio  systems. ", "Zio Systems", ""), 1.0);
        assert_eq!(score(Scoring::Exact, "By Zio Systems", "Zio Systems", ""), 0.0);
        assert_eq!(score(Scoring::Contains, "It is made by Zio Systems.", "Zio Systems", ""), 1.0);
        assert_eq!(score(Scoring::Contains, "It is made by Zion Systems.", "Zio Systems", ""), 0.0);
        assert_eq!(score(Scoring::Number, "79 + 28 = 107.", "107", ""), 1.0);
        assert_eq!(score(Scoring::Number, "It has 1107 staff.", "107", ""), 0.0);
        assert_eq!(score(Scoring::Refusal, "I don't know of any person called X.", "", ""), 1.0);
        assert_eq!(score(Scoring::Refusal, "X was born in Bramford.", "", ""), 0.0);
        // Only the conclusion counts.
        let compare = "Ana was born in 1937. Bo was born in 1985. So Ana is older.";
        assert_eq!(score(Scoring::Contains, compare, "Ana", ""), 1.0);
        assert_eq!(score(Scoring::Contains, compare, "Bo", ""), 0.0);
        assert_eq!(score(Scoring::Number, "A has 5 staff. B has 7 staff.", "5", ""), 0.0);
        assert_eq!(last_sentence("One. Two? Three!"), "Three!");
        assert_eq!(last_sentence("Only one."), "Only one.");
    }

    #[test]
    fn rouge_l_matches_hand_computed_values() {
        // LCS of "the cat sat on the mat" and "the cat on the mat" is 5 words: P 5/6, R 5/5.
        let f = rouge_l("the cat sat on the mat", "the cat on the mat");
        assert!((f - 2.0 * (5.0 / 6.0) / (5.0 / 6.0 + 1.0)).abs() < 1e-12);
        assert_eq!(rouge_l("A b c", "a B C"), 1.0);
        assert_eq!(rouge_l("x y", "a b"), 0.0);
        assert_eq!(rouge_l("", "a b"), 0.0);
    }
}

//! Tasks that need no world knowledge: adding and subtracting numbers below 100, spelling a word,
//! counting its letters; multiplying and writing a word backwards are held out as task types.
//! Each has in-domain phrasings and one held-out phrasing.

use crate::tasks::{Draft, Example, HeldOut, Scoring, TaskKind};
use tsukuru_core::Rng;

/// Phrasings of each skill; the last is held out.
const ADD: [&str; 4] =
    ["What is {a} plus {b}?", "What is {a} + {b}?", "Add {a} and {b}.", "Find the sum of {a} and {b}."];
const SUBTRACT: [&str; 4] =
    ["What is {a} minus {b}?", "What is {a} - {b}?", "Subtract {b} from {a}.", "Find the difference of {a} and {b}."];
const MULTIPLY: [&str; 2] = ["What is {a} times {b}?", "Multiply {a} by {b}."];
const SPELL: [&str; 3] = ["How do you spell {w}?", "Spell {w} letter by letter.", "Spell out the word {w}."];
const COUNT_LETTERS: [&str; 3] =
    ["How many letters are in {w}?", "Count the letters in {w}.", "What is the length of the word {w}?"];
const REVERSE: [&str; 2] = ["Write {w} backwards.", "Reverse the letters of {w}."];

/// A phrasing from `frames` for a task variant that may be held out whole; returns the text with
/// its held-out reasons.
fn phrase(rng: &mut Rng, frames: &[&str], task_held_out: bool) -> (String, Vec<HeldOut>) {
    if task_held_out {
        return (rng.pick(frames).to_string(), vec![HeldOut::Task]);
    }
    let i = rng.below(frames.len() as u64) as usize;
    let held = (i + 1 == frames.len()).then_some(HeldOut::Template);
    (frames[i].to_string(), held.into_iter().collect())
}

/// Appends `n` arithmetic examples and one spelling, letter-count and reversal example per word.
pub(crate) fn generate(seed: u64, words: &[String], n: usize, out: &mut Vec<Example>) {
    let mut rng = Rng::stream(seed, "tasks/arithmetic");
    for i in 0..n.max(100) {
        let op = rng.below(5);
        let (frames, a, b, c, sign, held) = match op {
            0 | 1 => {
                let (a, b) = (rng.range(0, 99), rng.range(0, 99));
                (&ADD[..], a, b, a + b, "+", false)
            }
            2 | 3 => {
                let (a, b) = (rng.range(0, 99), rng.range(0, 99));
                let (a, b) = (a.max(b), a.min(b));
                (&SUBTRACT[..], a, b, a - b, "-", false)
            }
            _ => {
                let (a, b) = (rng.range(2, 9), rng.range(2, 12));
                (&MULTIPLY[..], a, b, a * b, "×", true)
            }
        };
        let (frame, held_out) = phrase(&mut rng, frames, held);
        let draft = Draft {
            task: TaskKind::Arithmetic,
            relation: None,
            subject: None,
            held_out,
            prompt: frame.replace("{a}", &a.to_string()).replace("{b}", &b.to_string()),
            response: format!("{a} {sign} {b} = {c}."),
            answer: c.to_string(),
            scoring: Scoring::Number,
            facts: Vec::new(),
            entities: Vec::new(),
        };
        out.push(draft.finish(seed, &i.to_string()));
    }
    let mut rng = Rng::stream(seed, "tasks/words");
    for w in words {
        let letters: Vec<String> = w.chars().map(String::from).collect();
        let reversed: String = w.chars().rev().collect();
        let n = letters.len();
        let tasks = [
            (TaskKind::Spell, &SPELL[..], letters.join("-"), letters.join("-"), Scoring::Contains),
            (
                TaskKind::CountLetters,
                &COUNT_LETTERS[..],
                format!("{w} has {n} letters."),
                n.to_string(),
                Scoring::Number,
            ),
            (TaskKind::Reverse, &REVERSE[..], reversed.clone(), reversed, Scoring::Contains),
        ];
        for (task, frames, response, answer, scoring) in tasks {
            let (frame, held_out) = phrase(&mut rng, frames, task == TaskKind::Reverse);
            let draft = Draft {
                task,
                relation: None,
                subject: None,
                held_out,
                prompt: frame.replace("{w}", w),
                response,
                answer,
                scoring,
                facts: Vec::new(),
                entities: Vec::new(),
            };
            out.push(draft.finish(seed, w));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_right_and_multiplication_and_reversal_are_held_out() {
        let mut out = Vec::new();
        generate(7, &["Bramford".to_string()], 200, &mut out);
        for e in &out {
            match e.task {
                TaskKind::Arithmetic => {
                    let nums: Vec<i64> =
                        e.prompt.split(|c: char| !c.is_ascii_digit()).filter_map(|t| t.parse().ok()).collect();
                    let want = if e.prompt.contains("times") || e.prompt.contains("Multiply") {
                        assert_eq!(e.held_out, vec![HeldOut::Task]);
                        nums[0] * nums[1]
                    } else if e.prompt.contains("plus")
                        || e.prompt.contains('+')
                        || e.prompt.contains("sum")
                        || e.prompt.starts_with("Add")
                    {
                        nums[0] + nums[1]
                    } else if e.prompt.starts_with("Subtract") {
                        nums[1] - nums[0]
                    } else {
                        nums[0] - nums[1]
                    };
                    assert_eq!(e.answer, want.to_string(), "{}", e.prompt);
                    assert!(want >= 0, "{}", e.prompt);
                }
                TaskKind::Spell => assert_eq!(e.answer, "B-r-a-m-f-o-r-d"),
                TaskKind::CountLetters => assert_eq!(e.answer, "8"),
                TaskKind::Reverse => {
                    assert_eq!(e.answer, "drofmarB");
                    assert_eq!(e.held_out, vec![HeldOut::Task]);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let arithmetic: Vec<&Example> = out.iter().filter(|e| e.task == TaskKind::Arithmetic).collect();
        assert_eq!(arithmetic.len(), 200);
        assert!(arithmetic.iter().any(|e| e.held_out == vec![HeldOut::Template]));
        assert!(arithmetic.iter().any(|e| e.held_out.is_empty()));
    }
}

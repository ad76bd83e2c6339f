//! Task families with exact, rule-based checkers, for verified self-distillation: problems are
//! generated from a seed (train and held-out sets drawn from separate streams, the train set
//! never repeating a held-out question), posed with a fixed two-example prompt that asks for a
//! last line `Answer: …`, and a completion is correct only when that line parses to exactly the
//! expected answer. A completion without such a line, or whose answer does not parse, is
//! malformed: rejected, never guessed at.

use serde::{Deserialize, Serialize};

use crate::data::rng::SplitMix64;
use crate::{Error, Result};

/// A family of generated problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Two two-digit numbers added.
    Add,
    /// A two-digit number subtracted from a three-digit one.
    Sub,
    /// A two-digit number times a one-digit one.
    Mul,
    /// Metres → centimetres, hours → minutes, kilograms → grams, feet → inches, days → hours.
    Units,
    /// How many items a comma-separated list of 3–8 words has.
    Count,
    /// Four two-digit numbers sorted ascending.
    Sort,
}

const WORDS: &[&str] = &[
    "apple", "chair", "river", "lamp", "stone", "cloud", "horse", "bread", "glass", "paper", "tiger", "spoon", "train",
    "candle", "forest", "violin", "garden", "pencil", "window", "rocket", "button", "mirror", "carpet", "island",
    "basket", "ladder", "helmet", "orange", "jacket", "bottle",
];

const UNITS: &[(&str, &str, i64)] = &[
    ("meters", "centimeters", 100),
    ("hours", "minutes", 60),
    ("kilograms", "grams", 1000),
    ("feet", "inches", 12),
    ("days", "hours", 24),
];

impl Family {
    pub const ALL: [Family; 6] = [Family::Add, Family::Sub, Family::Mul, Family::Units, Family::Count, Family::Sort];

    pub fn name(self) -> &'static str {
        match self {
            Family::Add => "add",
            Family::Sub => "sub",
            Family::Mul => "mul",
            Family::Units => "units",
            Family::Count => "count",
            Family::Sort => "sort",
        }
    }

    /// The family called `name`; the error lists the known ones.
    pub fn parse(name: &str) -> Result<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
            Error::Invalid(format!("unknown task family `{name}` (known: {})", known.join(", ")))
        })
    }

    fn index(self) -> u64 {
        Family::ALL.iter().position(|&f| f == self).unwrap_or(0) as u64
    }

    /// One problem from `rng`.
    fn make(self, rng: &mut SplitMix64) -> Problem {
        let mut int = |lo: i64, hi: i64| lo + rng.below((hi - lo + 1) as u64) as i64;
        let (question, answer) = match self {
            Family::Add => {
                let (a, b) = (int(10, 99), int(10, 99));
                (format!("What is {a} + {b}?"), vec![a + b])
            }
            Family::Sub => {
                let (a, b) = (int(100, 999), int(10, 99));
                (format!("What is {a} - {b}?"), vec![a - b])
            }
            Family::Mul => {
                let (a, b) = (int(11, 99), int(2, 9));
                (format!("What is {a} * {b}?"), vec![a * b])
            }
            Family::Units => {
                let (from, to, k) = UNITS[int(0, UNITS.len() as i64 - 1) as usize];
                let n = int(2, 99);
                (format!("How many {to} are in {n} {from}?"), vec![n * k])
            }
            Family::Count => {
                let n = int(3, 8) as usize;
                let items: Vec<&str> = (0..n).map(|_| WORDS[int(0, WORDS.len() as i64 - 1) as usize]).collect();
                (format!("How many items are in this list: {}?", items.join(", ")), vec![n as i64])
            }
            Family::Sort => {
                let xs: Vec<i64> = (0..4).map(|_| int(10, 99)).collect();
                let mut sorted = xs.clone();
                sorted.sort_unstable();
                let list: Vec<String> = xs.iter().map(i64::to_string).collect();
                (format!("Sort these numbers from smallest to largest: {}.", list.join(", ")), sorted)
            }
        };
        Problem { family: self, question, answer }
    }

    /// The two worked examples every prompt of the family starts with (question, solution, answer).
    fn shots(self) -> [(&'static str, &'static str, &'static str); 2] {
        match self {
            Family::Add => [("What is 12 + 25?", "12 + 25 = 37.", "37"), ("What is 48 + 36?", "48 + 36 = 84.", "84")],
            Family::Sub => {
                [("What is 457 - 23?", "457 - 23 = 434.", "434"), ("What is 310 - 45?", "310 - 45 = 265.", "265")]
            }
            Family::Mul => [("What is 14 * 3?", "14 * 3 = 42.", "42"), ("What is 27 * 5?", "27 * 5 = 135.", "135")],
            Family::Units => [
                (
                    "How many centimeters are in 3 meters?",
                    "1 meter is 100 centimeters, so 3 meters is 3 * 100 = 300 centimeters.",
                    "300",
                ),
                (
                    "How many minutes are in 4 hours?",
                    "1 hour is 60 minutes, so 4 hours is 4 * 60 = 240 minutes.",
                    "240",
                ),
            ],
            Family::Count => [
                (
                    "How many items are in this list: cup, tree, bird?",
                    "The items are cup (1), tree (2), bird (3).",
                    "3",
                ),
                (
                    "How many items are in this list: door, fish, moon, sand, leaf?",
                    "The items are door (1), fish (2), moon (3), sand (4), leaf (5).",
                    "5",
                ),
            ],
            Family::Sort => [
                (
                    "Sort these numbers from smallest to largest: 52, 17, 86, 33.",
                    "The smallest is 17, then 33, then 52, then 86.",
                    "17, 33, 52, 86",
                ),
                (
                    "Sort these numbers from smallest to largest: 71, 64, 12, 95.",
                    "The smallest is 12, then 64, then 71, then 95.",
                    "12, 64, 71, 95",
                ),
            ],
        }
    }

    fn answer_form(self) -> &'static str {
        match self {
            Family::Sort => "Answer: <numbers separated by commas>",
            _ => "Answer: <number>",
        }
    }

    /// The prompt's fixed part (instruction and worked examples), shared by every problem of the
    /// family.
    pub fn preamble(self) -> String {
        let mut s = format!("Solve the problem. End with the line \"{}\".\n\n", self.answer_form());
        for (q, sol, a) in self.shots() {
            s += &format!("Problem: {q}\nSolution: {sol}\nAnswer: {a}\n\n");
        }
        s
    }
}

/// A generated problem and its exact answer (one number, or a list for `sort`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub family: Family,
    pub question: String,
    pub answer: Vec<i64>,
}

impl Problem {
    /// The part of the prompt after [`Family::preamble`]; the completion follows it.
    pub fn query(&self) -> String {
        format!("Problem: {}\nSolution:", self.question)
    }

    /// The whole prompt.
    pub fn prompt(&self) -> String {
        self.family.preamble() + &self.query()
    }
}

/// Where a set of problems is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    HeldOut,
}

/// `n` distinct problems of `family` from `seed`. Held-out and train sets come from separate
/// random streams, and a train set skips every question of the held-out set of the same size
/// `n_heldout`, so the two never share a problem.
pub fn problems(family: Family, split: Split, n: usize, n_heldout: usize, seed: u64) -> Vec<Problem> {
    let draw = |stream: u64, n: usize, skip: &std::collections::HashSet<String>| {
        let mut rng = SplitMix64::derive(seed, 100 + 2 * family.index() + stream, 0);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(n);
        // Small families (counts 3–8 over 30 words are plentiful, but keep a bound) stop early.
        for _ in 0..n.saturating_mul(50) {
            if out.len() == n {
                break;
            }
            let p = family.make(&mut rng);
            if !skip.contains(&p.question) && seen.insert(p.question.clone()) {
                out.push(p);
            }
        }
        out
    };
    let heldout = draw(1, n_heldout, &Default::default());
    match split {
        Split::HeldOut => heldout,
        Split::Train => {
            let skip = heldout.into_iter().map(|p| p.question).collect();
            draw(0, n, &skip)
        }
    }
}

/// What the checker made of a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Correct,
    Wrong,
    /// No `Answer:` line, or one that is not the answer's form.
    Malformed,
}

/// An integer as written in an answer: digits with an optional leading minus, thousands commas
/// allowed only in a number on its own (`1,000`).
fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Checks `completion` (the text after the prompt) against the problem: its first `Answer:` line
/// decides (the model is asked to end with it; what follows is ignored).
pub fn check(p: &Problem, completion: &str) -> Verdict {
    let Some(line) = completion.lines().find_map(|l| l.trim().strip_prefix("Answer:")) else {
        return Verdict::Malformed;
    };
    let line = line.trim().trim_end_matches('.');
    let got: Option<Vec<i64>> = if p.family == Family::Sort {
        line.split(',').map(parse_int).collect()
    } else {
        let one =
            if line.contains(',') && !line.contains(' ') { parse_int(&line.replace(',', "")) } else { parse_int(line) };
        one.map(|x| vec![x])
    };
    match got {
        None => Verdict::Malformed,
        Some(v) if v == p.answer => Verdict::Correct,
        Some(_) => Verdict::Wrong,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_seeded_distinct_and_split() {
        for f in Family::ALL {
            let held = problems(f, Split::HeldOut, 40, 40, 7);
            let train = problems(f, Split::Train, 60, 40, 7);
            assert_eq!(held, problems(f, Split::HeldOut, 40, 40, 7), "{f:?} is seeded");
            assert_ne!(held, problems(f, Split::HeldOut, 40, 40, 8), "{f:?} depends on the seed");
            assert_eq!((held.len(), train.len()), (40, 60), "{f:?}");
            let hq: std::collections::HashSet<_> = held.iter().map(|p| &p.question).collect();
            assert!(train.iter().all(|p| !hq.contains(&p.question)), "{f:?}: a held-out problem in train");
            for p in held.iter().chain(&train) {
                assert_eq!(check(p, &format!(" …\nAnswer: {}", join(&p.answer))), Verdict::Correct, "{p:?}");
            }
        }
        let p = &problems(Family::Add, Split::HeldOut, 1, 1, 0)[0];
        assert!(p
            .prompt()
            .starts_with("Solve the problem. End with the line \"Answer: <number>\".\n\nProblem: What is 12 + 25?"));
        assert!(p.prompt().ends_with(&format!("Answer: 84\n\nProblem: {}\nSolution:", p.question)));
    }

    fn join(v: &[i64]) -> String {
        v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
    }

    #[test]
    fn checker_takes_the_answer_line_and_rejects_what_does_not_parse() {
        let add = Problem { family: Family::Add, question: "What is 47 + 38?".into(), answer: vec![85] };
        let cases = [
            (" 47 + 38 = 85.\nAnswer: 85", Verdict::Correct),
            (" 47 + 38 = 85.\nAnswer: 85.\n\nProblem: next", Verdict::Correct),
            ("\nAnswer:85", Verdict::Correct),
            (" 47 + 38 = 84.\nAnswer: 84", Verdict::Wrong),
            (" 47 + 38 = 85.", Verdict::Malformed),
            (" The answer is 85.", Verdict::Malformed),
            ("\nAnswer: 85 apples", Verdict::Malformed),
            ("\nAnswer: eighty-five", Verdict::Malformed),
            ("\nAnswer: 8 5", Verdict::Malformed),
            ("\nAnswer:", Verdict::Malformed),
            ("\nAnswer: 84\nAnswer: 85", Verdict::Wrong),
        ];
        for (c, want) in cases {
            assert_eq!(check(&add, c), want, "{c:?}");
        }
        let big = Problem { family: Family::Units, question: "q".into(), answer: vec![19000] };
        assert_eq!(check(&big, "\nAnswer: 19,000"), Verdict::Correct);
        assert_eq!(check(&big, "\nAnswer: 19000"), Verdict::Correct);
        let neg = Problem { family: Family::Sub, question: "q".into(), answer: vec![-5] };
        assert_eq!(check(&neg, "\nAnswer: -5"), Verdict::Correct);
        let sort = Problem { family: Family::Sort, question: "q".into(), answer: vec![12, 64, 71, 95] };
        assert_eq!(check(&sort, " …\nAnswer: 12, 64, 71, 95"), Verdict::Correct);
        assert_eq!(check(&sort, "\nAnswer: 12,64,71,95."), Verdict::Correct);
        assert_eq!(check(&sort, "\nAnswer: 12, 71, 64, 95"), Verdict::Wrong);
        assert_eq!(check(&sort, "\nAnswer: 12, 64, 71"), Verdict::Wrong);
        assert_eq!(check(&sort, "\nAnswer: 12, 64, and 71, 95"), Verdict::Malformed);
        assert!(Family::parse("mult").unwrap_err().to_string().contains("known: add, sub, mul, units, count, sort"));
    }
}

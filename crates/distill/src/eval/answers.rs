//! Exact, rule-based checking of a free-form response against a short expected answer, for the
//! instruction data sets (`data/instruct/`): every record of an answer-carrying kind has an
//! `answer`, and a response is right only when the rule of its kind says so — nothing is guessed.
//!
//! The rules, by kind:
//!
//! - `arithmetic`, `unit`: the response's **first number** decides; it must be an integer equal to
//!   the expected one (`expected` is an integer: optional `-`, ASCII digits, surrounding whitespace
//!   ignored; anything else never matches). A number starts at an ASCII digit that does not follow
//!   a letter or digit (so `H2O`, `CO2` and `mp3` hold no number and the scan goes on); a `-` or
//!   `−` (U+2212) right before it, itself not after a letter or digit, makes it negative (`-3` and
//!   `is -3`, but not `3-4`'s `4`, which is not first anyway). After a first run of one to three
//!   digits, each comma followed by exactly three digits (and no fourth) is a thousands separator:
//!   `1,000` is 1000, `1,000,000` is 1000000, while `1,00` and `12,3456` read as 1 and 12. A `.`
//!   followed by a digit makes the first number a decimal (`2.5`), which matches no integer; a
//!   sentence's full stop (`12.`) does not. Letters may follow the digits (`12kg`, `5th` read as
//!   12 and 5). A response with no number is wrong. So `"7 + 5 = 12"` is *wrong* for 12: the first
//!   number is 7.
//! - `fact`: `expected` is one answer or several separated by `|` (`"carbon dioxide|CO2"`); the
//!   response is right when any non-empty alternative (trimmed) occurs in it, compared in
//!   lowercase, on word boundaries: the characters just before and after the occurrence, where
//!   there are any, are not letters or digits (Unicode). `Paris` matches `"It is PARIS."` and
//!   `"Parisian, Paris"` but not `"Parisian"`; `12` does not match `"120"`. An occurrence anywhere
//!   counts, negated or not (`"not Paris"` matches).
//! - any other kind: no rule, never right.

/// Whether `response` answers a record of `kind` whose expected answer is `expected` (the rules
/// are in the module's documentation).
pub fn check(kind: &str, expected: &str, response: &str) -> bool {
    match kind {
        "arithmetic" | "unit" => match (parse_expected(expected), first_number(response)) {
            (Some(want), Some(Number::Integer(got))) => want == got,
            _ => false,
        },
        "fact" => {
            let hay = response.to_lowercase();
            expected.split('|').map(|a| a.trim().to_lowercase()).any(|a| !a.is_empty() && contains_word(&hay, &a))
        }
        _ => false,
    }
}

/// The first number of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    Integer(i128),
    /// A decimal fraction, or an integer too long for `i128`: equal to no expected answer.
    Other,
}

/// `expected` as an integer: optional `-`, ASCII digits, surrounding whitespace ignored.
fn parse_expected(expected: &str) -> Option<i128> {
    let s = expected.trim();
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric()
}

/// The first number of `s` by the module's rule, or `None` when there is none.
fn first_number(s: &str) -> Option<Number> {
    let chars: Vec<char> = s.chars().collect();
    let digit = |i: usize| chars.get(i).is_some_and(|c| c.is_ascii_digit());
    let start = (0..chars.len()).find(|&i| digit(i) && (i == 0 || !is_word(chars[i - 1])))?;
    let negative =
        start > 0 && matches!(chars[start - 1], '-' | '\u{2212}') && (start < 2 || !is_word(chars[start - 2]));
    let mut end = start;
    while digit(end) {
        end += 1;
    }
    let mut digits: String = chars[start..end].iter().collect();
    if digits.len() <= 3 {
        while chars.get(end) == Some(&',') && (end + 1..end + 4).all(digit) && !digit(end + 4) {
            digits.extend(&chars[end + 1..end + 4]);
            end += 4;
        }
    }
    if chars.get(end) == Some(&'.') && digit(end + 1) {
        return Some(Number::Other);
    }
    Some(match digits.parse::<i128>() {
        Ok(v) if negative => Number::Integer(-v),
        Ok(v) => Number::Integer(v),
        Err(_) => Number::Other,
    })
}

/// Whether `needle` occurs in `hay` with no letter or digit right before or right after it.
fn contains_word(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(at, m)| {
        let before = hay[..at].chars().next_back();
        let after = hay[at + m.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_take_the_first_number() {
        assert!(check("arithmetic", "12", "12"));
        assert!(check("arithmetic", "12", "The answer is 12."));
        assert!(check("arithmetic", " 12 ", "It is 12, of course."));
        assert!(check("unit", "60", "An hour has 60 minutes, and a day has 1440."));
        // The first number decides, even when the right one comes later.
        assert!(!check("arithmetic", "12", "7 + 5 = 12"));
        assert!(!check("arithmetic", "12", "The answer is 11, not 12."));
        // Whole numbers only: 12 is not 120 or 112, and 120 is not 12.
        assert!(!check("arithmetic", "12", "The answer is 120."));
        assert!(!check("arithmetic", "12", "112"));
        assert!(!check("arithmetic", "120", "12"));
        // Units and ordinals may follow the digits.
        assert!(check("unit", "500", "That is 500g."));
        assert!(check("unit", "5", "the 5th"));
    }

    #[test]
    fn integers_skip_digits_inside_words() {
        assert!(check("unit", "100", "H2O boils at 100 degrees."));
        assert!(check("unit", "3", "mp3 files: 3"));
        assert!(!check("unit", "2", "CO2"));
    }

    #[test]
    fn integers_read_signs_and_thousands_separators() {
        assert!(check("arithmetic", "-2", "It is -2."));
        assert!(check("arithmetic", "-2", "(-2)"));
        assert!(check("arithmetic", "-2", "It is \u{2212}2."));
        assert!(!check("arithmetic", "2", "It is -2."));
        assert!(!check("arithmetic", "-2", "It is 2."));
        // A hyphen after a letter or digit is not a sign.
        assert!(check("arithmetic", "3", "3-4"));
        assert!(check("arithmetic", "4", "x-4 is 5"));
        assert!(check("unit", "1000", "There are 1,000 grams."));
        assert!(check("unit", "1000000", "1,000,000"));
        assert!(check("unit", "-1000", "-1,000"));
        assert!(check("unit", "1000", "1000"));
        // Malformed groups: the number ends before them.
        assert!(check("unit", "1", "1,00"));
        assert!(check("unit", "12", "12,3456"));
        assert!(check("unit", "1", "1, 000"));
        assert!(check("unit", "1000", "1,000,00"));
        assert!(!check("unit", "1000", "1,0000"));
        // Four digits before a comma are not grouped.
        assert!(check("unit", "1000", "1000,000"));
    }

    #[test]
    fn integers_reject_decimals_and_malformed_input() {
        assert!(!check("arithmetic", "2", "It is 2.5."));
        assert!(!check("arithmetic", "2", "2.0"));
        assert!(check("arithmetic", "2", "It is 2."));
        assert!(check("arithmetic", "2", "2. Done."));
        assert!(!check("arithmetic", "12", "twelve"));
        assert!(!check("arithmetic", "12", ""));
        assert!(!check("arithmetic", "12", "no number here"));
        // An expected answer that is not an integer matches nothing.
        assert!(!check("arithmetic", "twelve", "twelve"));
        assert!(!check("arithmetic", "", "12"));
        assert!(!check("arithmetic", "1,000", "1,000"));
        assert!(!check("arithmetic", "2.5", "2.5"));
        assert!(!check("arithmetic", "-", "-"));
        // Too long for an integer: no match rather than a wrap-around.
        let huge = "9".repeat(60);
        assert!(!check("arithmetic", &huge, &huge));
    }

    #[test]
    fn facts_match_whole_words_case_insensitively() {
        assert!(check("fact", "Paris", "The capital of France is Paris."));
        assert!(check("fact", "Paris", "paris"));
        assert!(check("fact", "paris", "PARIS!"));
        assert!(!check("fact", "Paris", "Parisian food is good."));
        assert!(!check("fact", "Paris", "Montparis"));
        assert!(check("fact", "Paris", "Parisian food, from Paris."));
        assert!(!check("fact", "Paris", "Lyon"));
        assert!(!check("fact", "Paris", ""));
        // Punctuation and the text's ends are boundaries; letters and digits are not.
        assert!(check("fact", "cold", "\"cold\""));
        assert!(check("fact", "cold", "(cold)"));
        assert!(!check("fact", "cold", "colder"));
        assert!(!check("fact", "men", "women"));
        assert!(!check("fact", "12", "120"));
        assert!(check("fact", "12", "12."));
        assert!(!check("fact", "0", "10 degrees"));
        assert!(check("fact", "0", "0°C"));
        // Non-ASCII letters are letters.
        assert!(!check("fact", "caf", "café"));
        assert!(check("fact", "café", "Un CAFÉ."));
    }

    #[test]
    fn facts_take_alternatives_and_phrases() {
        assert!(check("fact", "carbon dioxide|CO2", "Plants take in CO2."));
        assert!(check("fact", "carbon dioxide|CO2", "They absorb Carbon Dioxide from the air."));
        assert!(!check("fact", "carbon dioxide|CO2", "They absorb carbon."));
        assert!(check("fact", "autumn | fall", "After summer comes fall."));
        assert!(check("fact", "Buenos Aires", "It is Buenos Aires."));
        assert!(!check("fact", "Buenos Aires", "Buenos  Aires"));
        // Empty alternatives match nothing.
        assert!(!check("fact", "", "anything"));
        assert!(!check("fact", "|", "anything"));
        assert!(check("fact", "|moo|", "Cows say moo."));
        // Negation is not understood: an occurrence is an occurrence.
        assert!(check("fact", "Paris", "It is not Paris."));
    }

    #[test]
    fn unknown_kinds_are_never_right() {
        assert!(!check("explain", "Paris", "Paris"));
        assert!(!check("list", "", ""));
        assert!(!check("Fact", "Paris", "Paris"));
        assert!(!check("", "12", "12"));
    }
}

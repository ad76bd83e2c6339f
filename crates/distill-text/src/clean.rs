//! Cleaning: header lines, whitespace, empty and short documents.
//!
//! WikiText-2 taught the lesson: 56 % of its "examples" were empty lines or `= Header =` lines.
//! Here such lines never reach the tokenizer, and every drop is counted.

use serde::{Deserialize, Serialize};

use crate::config::CleanConfig;
use crate::error::{Result, TextError};
use crate::source::Document;

/// What cleaning did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CleanStats {
    /// Documents that came out of the sources.
    pub docs_read: usize,
    /// Documents with no non-whitespace text left after cleaning.
    pub dropped_empty: usize,
    /// Non-empty documents shorter than `min_chars` after cleaning.
    pub dropped_short: usize,
    /// Documents kept.
    pub kept: usize,
    /// Characters (Unicode scalar values) in the kept documents.
    pub chars: usize,
    /// Header lines removed (from all documents, kept or not).
    pub header_lines_dropped: usize,
}

/// Whether a line is a WikiText-style header: its trimmed form starts and ends with `=`
/// (` = Title = `, ` = = Sub = = `, `====`).
pub fn is_header_line(line: &str) -> bool {
    let t = line.trim();
    t.starts_with('=') && t.ends_with('=')
}

/// Cleans one text; returns it and the number of header lines removed.
///
/// With `strip_whitespace`, lines are trimmed, leading and trailing blank lines dropped and runs
/// of blank lines (or removed headers) collapsed into one blank line, so paragraphs stay
/// separated by exactly `\n\n`. Without it, only header lines are removed.
pub fn clean_text(text: &str, config: &CleanConfig) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut headers = 0;
    let mut pending_break = false;
    let mut first = true;
    for line in text.lines() {
        if config.drop_headers && is_header_line(line) {
            headers += 1;
            pending_break = true;
            continue;
        }
        if !config.strip_whitespace {
            if !first {
                out.push('\n');
            }
            out.push_str(line);
            first = false;
            continue;
        }
        let t = line.trim();
        if t.is_empty() {
            pending_break = true;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if pending_break { "\n\n" } else { "\n" });
        }
        out.push_str(t);
        pending_break = false;
    }
    (out, headers)
}

/// Cleans documents and drops the empty and short ones, keeping order.
///
/// Fails with [`TextError::EmptyCorpus`] when nothing is left.
pub fn clean_documents(docs: Vec<Document>, config: &CleanConfig) -> Result<(Vec<Document>, CleanStats)> {
    let mut stats = CleanStats { docs_read: docs.len(), ..CleanStats::default() };
    let mut kept = Vec::with_capacity(docs.len());
    for mut doc in docs {
        // A conversation is taken as written: its turns are rendered by the chat template.
        if let Some(turns) = &doc.conversation {
            stats.chars += turns.iter().map(|m| m.content.chars().count()).sum::<usize>();
            kept.push(doc);
            continue;
        }
        let (text, headers) = clean_text(&doc.text, config);
        stats.header_lines_dropped += headers;
        if text.trim().is_empty() {
            stats.dropped_empty += 1;
            continue;
        }
        let chars = text.chars().count();
        if chars < config.min_chars {
            stats.dropped_short += 1;
            continue;
        }
        stats.chars += chars;
        doc.text = text;
        kept.push(doc);
    }
    stats.kept = kept.len();
    if kept.is_empty() {
        return Err(TextError::EmptyCorpus {
            read: stats.docs_read,
            empty: stats.dropped_empty,
            short: stats.dropped_short,
            min_chars: config.min_chars,
        });
    }
    Ok((kept, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_blank_runs() {
        let text =
            " = Valkyria = \n \n Senjo no Valkyria 3 . \n = = Gameplay = = \n\n\n As with previous games . \nmore\n";
        let (out, headers) = clean_text(text, &CleanConfig::default());
        assert_eq!(headers, 2);
        assert_eq!(out, "Senjo no Valkyria 3 .\n\nAs with previous games .\nmore");
    }

    #[test]
    fn no_strip_keeps_lines_verbatim() {
        let config = CleanConfig { strip_whitespace: false, ..CleanConfig::default() };
        let (out, headers) = clean_text(" = T = \n  a  \n\n b", &config);
        assert_eq!(headers, 1);
        assert_eq!(out, "  a  \n\n b");
    }
}

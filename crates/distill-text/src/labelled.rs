//! Labelled documents for downstream evaluation (a probe on frozen embeddings): JSONL files with
//! `text` and `label` fields, or directories of JSON records in the SpamAssassin package's layout
//! (`{"id", "group", "text"}` per file, the group naming the class: `spam-1`, `easy-ham-2`,
//! `hard-ham-1` …). Raw emails are reduced to their subject and body ([`email_text`]).
//!
//! The train/test split is by document: a hash of the document's text decides its side, so
//! duplicates (SpamAssassin has some across groups) never straddle the split, and the split does
//! not depend on file order or location.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Result, TextError};
use crate::source::read_utf8;

/// One labelled document.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledDoc {
    /// The record's `id` (or `file:line`).
    pub id: String,
    /// The text (for emails: subject and body).
    pub text: String,
    /// Class name.
    pub label: String,
}

impl LabelledDoc {
    /// Whether the document is in the test split (`test_fraction` of documents, by text hash).
    pub fn is_test(&self, test_fraction: f64, seed: u64) -> bool {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(self.text.as_bytes());
        let d = h.finalize();
        let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
        (x as f64 / u64::MAX as f64) < test_fraction
    }
}

/// The distinct labels of `docs`, sorted: a document's class is its label's index here.
pub fn classes(docs: &[LabelledDoc]) -> Vec<String> {
    let mut classes: Vec<String> = docs.iter().map(|d| d.label.clone()).collect();
    classes.sort();
    classes.dedup();
    classes
}

/// The class of a SpamAssassin group: `spam` for spam groups, `ham` for ham groups, else the
/// group with a trailing `-N` removed.
pub fn group_label(group: &str) -> String {
    let g = group.to_ascii_lowercase();
    if g.contains("spam") {
        "spam".into()
    } else if g.contains("ham") {
        "ham".into()
    } else {
        g.trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches('-').to_string()
    }
}

/// Subject and body of a raw email (headers dropped, HTML tags and entities removed, whitespace
/// collapsed). Text that does not start with header lines is only cleaned.
pub fn email_text(raw: &str) -> String {
    let raw = raw.replace("\r\n", "\n");
    let looks_like_email =
        raw.lines().next().is_some_and(|l| l.starts_with("From ") || (l.contains(':') && !l.starts_with(' ')));
    let (subject, body) = match raw.split_once("\n\n") {
        Some((head, body)) if looks_like_email => {
            let subject = head
                .lines()
                .find_map(|l| l.strip_prefix("Subject:").or_else(|| l.strip_prefix("subject:")))
                .unwrap_or("")
                .trim()
                .to_string();
            (subject, body.to_string())
        }
        _ => (String::new(), raw.to_string()),
    };
    let mut out = String::with_capacity(subject.len() + body.len());
    if !subject.is_empty() {
        out.push_str(&subject);
        out.push_str(". ");
    }
    out.push_str(&strip_html(&body));
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn strip_html(s: &str) -> String {
    if !s.contains('<') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"")
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |e| TextError::Io { path: dir.to_path_buf(), error: e };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).map_err(io)?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            files_under(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "json" || e == "jsonl") {
            out.push(p);
        }
    }
    Ok(())
}

fn record(path: &Path, line: usize, v: &Value) -> Result<LabelledDoc> {
    let field = |f: &str| v.get(f).and_then(Value::as_str);
    let missing = |f: &str| TextError::JsonlMissingField { path: path.to_path_buf(), line, field: f.into() };
    let text = field("text").ok_or_else(|| missing("text"))?;
    let label = match (v.get("label"), field("group")) {
        (Some(Value::String(s)), _) => s.clone(),
        (Some(Value::Number(n)), _) => n.to_string(),
        (Some(Value::Bool(b)), _) => b.to_string(),
        (_, Some(g)) => group_label(g),
        _ => return Err(missing("label")),
    };
    let id = field("id").map(str::to_string).unwrap_or_else(|| format!("{}:{line}", path.display()));
    let text = if v.get("group").is_some() { email_text(text) } else { text.to_string() };
    Ok(LabelledDoc { id, text, label })
}

/// Reads labelled documents from a `.jsonl` / `.json` file or a directory of them (recursively,
/// in name order; in a directory, a `.json` file that is not an object — an index — is
/// skipped). Each record needs `text` and `label` (or a SpamAssassin `group`).
pub fn read_labelled(path: &Path) -> Result<Vec<LabelledDoc>> {
    if !path.exists() {
        return Err(TextError::MissingPath { path: path.to_path_buf() });
    }
    let mut files = Vec::new();
    if path.is_dir() {
        files_under(path, &mut files)?;
        if files.is_empty() {
            return Err(TextError::EmptyDirectory { path: path.to_path_buf() });
        }
    } else {
        files.push(path.to_path_buf());
    }
    let mut out = Vec::new();
    let in_dir = path.is_dir();
    for f in files {
        let text = read_utf8(&f)?;
        let whole = serde_json::from_str::<Value>(&text);
        match whole {
            Ok(v @ Value::Object(_)) => out.push(record(&f, 1, &v)?),
            // A directory's index files (SpamAssassin's `file_list.json`) are not records.
            Ok(_) if in_dir && f.extension().is_some_and(|e| e == "json") => {}
            _ => {
                for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let v: Value = serde_json::from_str(l).map_err(|e| TextError::JsonlParse {
                        path: f.clone(),
                        line: i + 1,
                        message: e.to_string(),
                    })?;
                    out.push(record(&f, i + 1, &v)?);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_to_spam_and_ham() {
        assert_eq!(group_label("spam-2"), "spam");
        assert_eq!(group_label("easy-ham-1"), "ham");
        assert_eq!(group_label("hard-ham-1"), "ham");
        assert_eq!(group_label("news-3"), "news");
    }

    #[test]
    fn an_email_keeps_subject_and_body() {
        let raw = "From a@b.c Mon\nSubject: Win  big\nTo: x\n\n<html><b>Click</b> here&nbsp;now</html>\n";
        assert_eq!(email_text(raw), "Win big. Click here now");
        assert_eq!(email_text("just some text\n\nmore"), "just some text more");
    }

    #[test]
    fn the_split_is_by_text_and_deterministic() {
        let d = |t: &str| LabelledDoc { id: "x".into(), text: t.into(), label: "a".into() };
        let n = (0..1000).filter(|i| d(&format!("doc {i}")).is_test(0.2, 7)).count();
        assert!((150..250).contains(&n), "{n}");
        assert_eq!(d("same").is_test(0.2, 7), LabelledDoc { id: "y".into(), ..d("same") }.is_test(0.2, 7));
    }
}

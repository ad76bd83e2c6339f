//! Reading [`TextSource`]s into [`Document`]s.
//!
//! Files are listed in a deterministic order (sorted paths per source, sources in recipe order)
//! and parsed in parallel; the result keeps that order whatever the thread count.

use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use crate::brown;
use crate::chat::{record_from_object, Message, Record};
use crate::config::{DocBoundary, RecordFields, TextFormat, TextSource};
use crate::error::{Result, TextError};

/// One document: a unit that is cleaned, split and packed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The file it came from.
    pub path: PathBuf,
    /// The file's path relative to its source's root (`/`-separated), e.g. `ca01` or
    /// `wiki/train.txt`. Together with `index` it decides the split, so moving a corpus to
    /// another directory does not change which documents are validation.
    pub key: String,
    /// Position of the document in its file: 0 for whole files, the paragraph number for
    /// paragraph documents, the 0-based line number for JSONL records. Counted before cleaning,
    /// so changing the cleaning rules does not renumber documents.
    pub index: usize,
    /// The text (empty for a conversation).
    pub text: String,
    /// The turns, when the record is a conversation (rendered by the chat template when
    /// tokenized).
    pub conversation: Option<Vec<Message>>,
}

/// Expands a leading `~/` to `$HOME`.
pub fn expand_home(path: &str) -> PathBuf {
    if let Some(rest) = path.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    PathBuf::from(path)
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn relative_key(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    } else {
        parts.join("/")
    }
}

fn io_error(path: &Path, error: std::io::Error) -> TextError {
    TextError::Io { path: path.to_path_buf(), error }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Every non-hidden file below `dir`, recursively, sorted by path.
fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| io_error(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        if is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            walk_dir(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The files of a source with their keys, in a deterministic order.
///
/// An existing path is taken literally (file or directory); otherwise a path with `*`, `?` or
/// `[` is a glob pattern whose key root is the directory before the first wildcard component.
pub fn resolve_files(source: &TextSource) -> Result<Vec<(PathBuf, String)>> {
    let path = expand_home(&source.path);
    if path.is_file() {
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let key = relative_key(&path, &root);
        return Ok(vec![(path, key)]);
    }
    if path.is_dir() {
        let mut files = Vec::new();
        walk_dir(&path, &mut files)?;
        if files.is_empty() {
            return Err(TextError::EmptyDirectory { path });
        }
        return Ok(files
            .into_iter()
            .map(|f| {
                let key = relative_key(&f, &path);
                (f, key)
            })
            .collect());
    }
    let pattern = path.to_string_lossy().into_owned();
    if !has_glob_chars(&pattern) {
        return Err(TextError::MissingPath { path });
    }
    let root: PathBuf = path.components().take_while(|c| !has_glob_chars(&c.as_os_str().to_string_lossy())).collect();
    let paths =
        glob::glob(&pattern).map_err(|e| TextError::BadGlob { pattern: pattern.clone(), message: e.to_string() })?;
    let mut files = Vec::new();
    for entry in paths {
        let p = entry.map_err(|e| {
            let p = e.path().to_path_buf();
            io_error(&p, e.into())
        })?;
        if is_hidden(&p) {
            continue;
        }
        if p.is_dir() {
            walk_dir(&p, &mut files)?;
        } else {
            files.push(p);
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(TextError::GlobNoMatch { pattern });
    }
    Ok(files
        .into_iter()
        .map(|f| {
            let key = relative_key(&f, &root);
            (f, key)
        })
        .collect())
}

/// Reads a file as UTF-8 (a leading byte-order mark is dropped).
pub fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| TextError::InvalidUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// The concrete format of one file under `format` (resolves [`TextFormat::Auto`]).
pub fn detect_format(path: &Path, text: &str, format: &TextFormat) -> TextFormat {
    match format {
        TextFormat::Auto => {
            let ext = |x: &str| path.extension().is_some_and(|e| e.eq_ignore_ascii_case(x));
            if ext("jsonl") {
                TextFormat::jsonl()
            } else if ext("parquet") {
                TextFormat::Parquet(RecordFields::default())
            } else if brown::looks_like_brown(text) {
                TextFormat::Brown
            } else {
                TextFormat::Plain
            }
        }
        other => other.clone(),
    }
}

/// Blank-line-separated blocks of `text` (lines that are empty or whitespace only separate
/// blocks), each with its lines joined by `\n`.
pub fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(current.join("\n"));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        out.push(current.join("\n"));
    }
    out
}

/// Parses the text of one file into documents.
pub fn parse_text(
    path: &Path,
    key: &str,
    text: &str,
    format: &TextFormat,
    documents: Option<DocBoundary>,
) -> Result<Vec<Document>> {
    let doc = |index: usize, text: String| Document {
        path: path.to_path_buf(),
        key: key.to_string(),
        index,
        text,
        conversation: None,
    };
    let format = detect_format(path, text, format);
    let docs = match format {
        TextFormat::Auto | TextFormat::Plain => match documents.unwrap_or(DocBoundary::Paragraph) {
            DocBoundary::File => vec![doc(0, text.to_string())],
            DocBoundary::Paragraph => paragraphs(text).into_iter().enumerate().map(|(i, p)| doc(i, p)).collect(),
        },
        TextFormat::Brown => match documents.unwrap_or(DocBoundary::File) {
            DocBoundary::File => vec![doc(0, brown::brown_document(text))],
            DocBoundary::Paragraph => {
                brown::brown_paragraphs(text).into_iter().enumerate().map(|(i, p)| doc(i, p)).collect()
            }
        },
        TextFormat::Jsonl(fields) => {
            let mut docs = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_str(line).map_err(|e| TextError::JsonlParse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: e.to_string(),
                })?;
                let serde_json::Value::Object(object) = value else {
                    return Err(TextError::JsonlParse {
                        path: path.to_path_buf(),
                        line: i + 1,
                        message: "the line is JSON but not an object".to_string(),
                    });
                };
                docs.push(record_doc(path, key, i, &object, &fields, "line", i + 1)?);
            }
            docs
        }
        TextFormat::Parquet(_) => {
            return Err(TextError::InvalidConfig {
                field: path.display().to_string(),
                message: "a Parquet file is binary: read it with read_parquet_documents".to_string(),
            })
        }
    };
    Ok(docs)
}

/// The document of one record (a JSONL line, a Parquet row): its text or its turns; an error
/// names the file, the line or row (`unit` `n`) and the field.
fn record_doc(
    path: &Path,
    key: &str,
    index: usize,
    object: &serde_json::Map<String, serde_json::Value>,
    fields: &RecordFields,
    unit: &'static str,
    n: usize,
) -> Result<Document> {
    let record = record_from_object(object, fields).map_err(|message| TextError::BadRecord {
        path: path.to_path_buf(),
        unit,
        n,
        message,
    })?;
    let (text, conversation) = match record {
        Record::Text(t) => (t, None),
        Record::Conversation(turns) => (String::new(), Some(turns)),
    };
    Ok(Document { path: path.to_path_buf(), key: key.to_string(), index, text, conversation })
}

/// The documents of a Parquet file: every row a record (see [`RecordFields`]).
pub fn read_parquet_documents(path: &Path, key: &str, fields: &RecordFields) -> Result<Vec<Document>> {
    let names = [&fields.messages_field, &fields.field, &fields.prompt_field, &fields.completion_field];
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let rows = crate::parquet::read_parquet_any(path, &names)?;
    rows.iter().enumerate().map(|(i, row)| record_doc(path, key, i, row, fields, "row", i)).collect()
}

/// Reads every source into documents, in source order and sorted file order; files are read and
/// parsed in parallel. When several files fail, the error of the first one in that order is
/// returned.
pub fn read_sources(sources: &[TextSource]) -> Result<Vec<Document>> {
    let mut jobs = Vec::new();
    for source in sources {
        for (path, key) in resolve_files(source)? {
            jobs.push((path, key, source));
        }
    }
    let parsed: Vec<Result<Vec<Document>>> = jobs
        .par_iter()
        .map(|(path, key, source)| {
            if let TextFormat::Parquet(fields) = detect_format(path, "", &source.format) {
                return read_parquet_documents(path, key, &fields);
            }
            let text = read_utf8(path)?;
            parse_text(path, key, &text, &source.format, source.documents)
        })
        .collect();
    let mut docs = Vec::new();
    for file_docs in parsed {
        docs.extend(file_docs?);
    }
    Ok(docs)
}

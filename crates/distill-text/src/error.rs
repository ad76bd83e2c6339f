//! The one error type of the text pipeline.
//!
//! Every message is a single line that names the offending path, line or field, so the
//! binary can print it once and the user knows what to fix.

use std::path::PathBuf;

/// `Result` with [`TextError`] as the error type.
pub type Result<T, E = TextError> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, cleaning, splitting, tokenizing or packing text.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A source path (file or directory) does not exist.
    #[error("text source not found: {}", path.display())]
    MissingPath {
        /// The path as given in the recipe.
        path: PathBuf,
    },

    /// A glob pattern is malformed.
    #[error("invalid glob pattern `{pattern}`: {message}")]
    BadGlob {
        /// The pattern as given.
        pattern: String,
        /// What the glob parser said.
        message: String,
    },

    /// A glob pattern matched no file.
    #[error("glob pattern `{pattern}` matched no files")]
    GlobNoMatch {
        /// The pattern as given.
        pattern: String,
    },

    /// A directory source contains no (non-hidden) file.
    #[error("directory {} contains no files", path.display())]
    EmptyDirectory {
        /// The directory.
        path: PathBuf,
    },

    /// Reading a file or directory failed.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error (its message is part of this one).
        error: std::io::Error,
    },

    /// A text file is not valid UTF-8.
    #[error("{}: invalid UTF-8 at byte offset {offset}", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Offset of the first byte that is not part of a valid UTF-8 sequence.
        offset: usize,
    },

    /// A JSONL line is not valid JSON (or not a JSON object).
    #[error("{}:{line}: not a JSON object: {message}", path.display())]
    JsonlParse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What the JSON parser said.
        message: String,
    },

    /// A JSONL record lacks the text field, or the field is not a string.
    #[error("{}:{line}: missing string field `{field}`", path.display())]
    JsonlMissingField {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The configured text field.
        field: String,
    },

    /// A JSONL or Parquet record is neither a text nor a well-formed conversation.
    #[error("{}: {unit} {n}: {message}", path.display())]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// `line` (JSONL, 1-based) or `row` (Parquet, 0-based).
        unit: &'static str,
        /// Its number.
        n: usize,
        /// What is wrong, naming the field.
        message: String,
    },

    /// Conversation records, but no chat template to render them with.
    #[error("{}: conversation records need a chat template, and the model has none", path.display())]
    NoChatTemplate {
        /// The first file with a conversation.
        path: PathBuf,
    },

    /// The chat template failed on a conversation.
    #[error("{}: record {index}: {message}", path.display())]
    ChatRender {
        /// The file.
        path: PathBuf,
        /// The record's position in its file.
        index: usize,
        /// The template's error.
        message: String,
    },

    /// Cleaning removed every document.
    #[error("no documents left after cleaning: {read} read, {empty} empty, {short} shorter than {min_chars} chars")]
    EmptyCorpus {
        /// Documents read from the sources.
        read: usize,
        /// Documents that were empty after cleaning.
        empty: usize,
        /// Documents shorter than `min_chars` after cleaning.
        short: usize,
        /// The configured `clean.min_chars`.
        min_chars: usize,
    },

    /// `pack.seq_len` is 0.
    #[error("pack.seq_len must be at least 1, got 0")]
    ZeroSeqLen,

    /// `split.val_fraction` is outside `[0, 1)` or not finite.
    #[error("split.val_fraction must be in [0, 1), got {value}")]
    BadValFraction {
        /// The configured value.
        value: f64,
    },

    /// The validation split took every document, leaving nothing to train on.
    #[error(
        "validation split left the training set empty: all {n_docs} documents went to validation (split.val_fraction = {val_fraction}, split.seed = {seed})"
    )]
    EmptyTrainSplit {
        /// Documents that were split.
        n_docs: usize,
        /// The configured fraction.
        val_fraction: f64,
        /// The configured seed.
        seed: u64,
    },

    /// No source was given.
    #[error("no text sources given: `sources` is empty")]
    NoSources,

    /// A configuration field has a value that cannot be used.
    #[error("invalid value for `{field}`: {message}")]
    InvalidConfig {
        /// Dotted name of the field.
        field: String,
        /// Why the value is rejected.
        message: String,
    },

    /// A Parquet file cannot be read, lacks a requested column, or holds a value with no JSON
    /// form.
    #[error("{}: {message}", crate::parquet::describe_place(path, column.as_deref(), *row))]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The column (`messages[2].content` inside lists and structs), where one is concerned.
        column: Option<String>,
        /// The row, counted from 0 (as `dataset[i]`), where one is concerned.
        row: Option<usize>,
        /// What is wrong.
        message: String,
    },

    /// The tokenizer lacks a special token the packer needs.
    #[error("tokenizer has no {role} token{}", describe_candidates(candidates))]
    MissingSpecialToken {
        /// `bos`, `eos` or `pad`.
        role: &'static str,
        /// Token strings that were looked up.
        candidates: Vec<String>,
    },

    /// The tokenizer failed on a document.
    #[error("tokenizing document {index} of {key}: {message}")]
    Tokenize {
        /// Source key of the document.
        key: String,
        /// Index of the document in its file.
        index: usize,
        /// What the tokenizer said.
        message: String,
    },

    /// The training data does not fill a single row.
    #[error(
        "training data packs into no rows: {n_tokens} tokens with pack.seq_len = {seq_len} (add text, lower seq_len or set pack.keep_partial)"
    )]
    NoTrainingRows {
        /// Tokens in the training stream, BOS/EOS included.
        n_tokens: usize,
        /// The configured `pack.seq_len`.
        seq_len: usize,
    },
}

fn describe_candidates(candidates: &[String]) -> String {
    if candidates.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
        format!(" (looked for {})", quoted.join(", "))
    }
}

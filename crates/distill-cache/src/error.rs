//! The one error type of the teacher cache.
//!
//! Every message is a single line that names the cache directory, the manifest or the shard file
//! it is about and says what is wrong, so the binary can print it once and the user knows what
//! to fix.

use std::path::PathBuf;

/// `Result` with [`CacheError`] as the error type.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// One field whose value differs between the cache and what the caller expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMismatch {
    /// Name of the field as it appears in `manifest.json` (`seq_len`, `data_fingerprint`, …).
    pub field: &'static str,
    /// The value recorded in the cache.
    pub cache: String,
    /// The value the caller asked for.
    pub expected: String,
}

/// Everything that can go wrong creating, resuming, reading or inspecting a teacher cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The operating system refused to create, open, map, read, write, rename or remove a file.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What we were doing (`open shard`, `write`, `fsync`, …).
        action: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A [`CacheSpec`](crate::CacheSpec) field has a value that cannot be stored.
    #[error("invalid teacher cache spec: `{field}` {message}")]
    InvalidSpec {
        /// The field.
        field: &'static str,
        /// Why the value is rejected.
        message: String,
    },

    /// The directory has no `manifest.json`.
    #[error("{}: no teacher cache here (manifest.json is missing)", dir.display())]
    MissingManifest {
        /// The cache directory.
        dir: PathBuf,
    },

    /// `manifest.json` is not valid JSON, not a manifest of this format, or inconsistent.
    #[error("{}: invalid teacher cache manifest: {message}", path.display())]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The directory holds one part of a capture split over machines.
    #[error("cache {} is part {index} of {count} of a capture: join the parts with `distill cache merge`", dir.display())]
    Partial {
        /// The cache directory.
        dir: PathBuf,
        /// Which part (1-based).
        index: usize,
        /// Parts of the capture.
        count: usize,
    },
    /// The parts given to [`merge`](crate::merge) do not make one capture.
    #[error("cache merge: {0}")]
    Merge(String),
    /// The cache has not been written to the end (the capture was interrupted).
    #[error("cache {} is incomplete ({rows} of {n_rows} rows): run the capture again to resume", dir.display())]
    Incomplete {
        /// The cache directory.
        dir: PathBuf,
        /// Rows stored in complete shards.
        rows: usize,
        /// Rows the capture covers.
        n_rows: usize,
    },

    /// Resuming with a spec that differs from the one the cache was created with.
    #[error(
        "cache {} was created with a different {field} (cache: {cache}, requested: {requested}): use another directory or delete this one",
        dir.display()
    )]
    SpecMismatch {
        /// The cache directory.
        dir: PathBuf,
        /// The first differing field, as named in `manifest.json`.
        field: &'static str,
        /// Its value in the cache.
        cache: String,
        /// Its value in the requested spec.
        requested: String,
    },

    /// [`CacheReader::check_compatible`](crate::CacheReader::check_compatible) found differences.
    #[error("cache {} does not match this run: {}", dir.display(), describe_mismatches(fields))]
    Incompatible {
        /// The cache directory.
        dir: PathBuf,
        /// Every differing field.
        fields: Vec<FieldMismatch>,
    },

    /// A shard file is truncated, has the wrong size, or its header does not match the manifest.
    #[error("{}: corrupt teacher cache shard: {message}", path.display())]
    BadShard {
        /// The shard file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A shard's content does not hash to the sha256 recorded in the manifest.
    #[error("{}: sha256 mismatch (manifest {expected}, file {actual}): the shard is corrupt", path.display())]
    ChecksumMismatch {
        /// The shard file.
        path: PathBuf,
        /// The digest recorded in the manifest.
        expected: String,
        /// The digest of the file.
        actual: String,
    },

    /// The rows given to [`CacheWriter::push_rows`](crate::CacheWriter::push_rows) are malformed.
    #[error("cache {}: invalid teacher rows: {message}", dir.display())]
    BadRows {
        /// The cache directory.
        dir: PathBuf,
        /// What is wrong, with the row, position and rank of the first offending value.
        message: String,
    },

    /// More rows were pushed than the cache covers.
    #[error("cache {}: {pushed} rows pushed at row {next_row}, but the cache covers only {n_rows} rows", dir.display())]
    TooManyRows {
        /// The cache directory.
        dir: PathBuf,
        /// The next row the writer expected.
        next_row: usize,
        /// Rows in the rejected call.
        pushed: usize,
        /// Rows the cache covers.
        n_rows: usize,
    },

    /// [`CacheWriter::finish`](crate::CacheWriter::finish) was called before every row was pushed.
    #[error("cannot finish cache {}: only {rows} of {n_rows} rows were pushed", dir.display())]
    NotFinished {
        /// The cache directory.
        dir: PathBuf,
        /// Rows pushed so far.
        rows: usize,
        /// Rows the cache covers.
        n_rows: usize,
    },

    /// The writer hit an I/O error earlier and its state is no longer trustworthy.
    #[error("cache {}: the writer failed earlier; open it again with CacheWriter::create_or_resume", dir.display())]
    Poisoned {
        /// The cache directory.
        dir: PathBuf,
    },

    /// A row index past the end of the cache was asked for.
    #[error("cache {}: row {row} out of range (the cache has {n_rows} rows)", dir.display())]
    RowOutOfRange {
        /// The cache directory.
        dir: PathBuf,
        /// The requested row.
        row: usize,
        /// Rows in the cache.
        n_rows: usize,
    },
}

fn describe_mismatches(fields: &[FieldMismatch]) -> String {
    let parts: Vec<String> =
        fields.iter().map(|m| format!("{} differs (cache: {}, run: {})", m.field, m.cache, m.expected)).collect();
    parts.join("; ")
}

/// A closure that wraps an `io::Error` into [`CacheError::Io`] for `path`.
pub(crate) fn io(path: &std::path::Path, action: &'static str) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io { path, action, source }
}

impl From<distill_base::AtomicWriteError> for CacheError {
    fn from(e: distill_base::AtomicWriteError) -> Self {
        CacheError::Io { path: e.path, action: e.action, source: e.source }
    }
}

//! The library's one error type. Every variant names the file, key or value at fault so the CLI
//! can print a single line that tells the user what to fix.

use std::path::PathBuf;

/// Errors returned by the distill library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its contents are malformed (bad magic, truncated, wrong shape…).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// The recipe is invalid: unknown key, value out of range, missing file…
    #[error("recipe: {0}")]
    Recipe(String),
    /// Input that is well-formed but unusable (empty data, vocabulary mismatch…).
    #[error("{0}")]
    Invalid(String),
    /// Ctrl-C or SIGTERM stopped training after a step; a checkpoint at that step is written.
    #[error("interrupted at step {step} of {total} (phase {phase}); its checkpoint is written")]
    Interrupted { phase: String, step: u64, total: u64 },
    /// Training diverged.
    #[error("loss is {value} at step {step} (phase {phase}); lower the learning rate or enable clipping")]
    NonFinite { phase: String, step: u64, value: f64 },
    /// Fetching an asset from a package registry failed.
    #[error("fetch {asset}: {msg}")]
    Fetch { asset: String, msg: String },
    /// A data-parallel job failed: a peer gone, a timeout, a bad torchrun environment (the
    /// message names this rank and, where known, the lost one).
    #[error("distributed: {0}")]
    Dist(String),
    /// An error raised inside libtorch.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// A GGUF file could not be read, viewed or written (the message names the file).
    #[error(transparent)]
    Gguf(#[from] distill_gguf::GgufError),
    /// A teacher cache could not be written, opened or read (the message names the file).
    #[error(transparent)]
    Cache(#[from] distill_cache::CacheError),
    /// Text data could not be read, cleaned, tokenized or packed (the message names the source).
    #[error(transparent)]
    Text(#[from] distill_text::TextError),
}

impl From<distill_base::AtomicWriteError> for Error {
    fn from(e: distill_base::AtomicWriteError) -> Self {
        Error::Io { path: e.path, source: e.source }
    }
}

impl Error {
    /// Wraps an `std::io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// A malformed-file error for `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

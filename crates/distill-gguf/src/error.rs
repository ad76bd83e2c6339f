//! The one error type of this crate. Every variant names the file it is about, so a message
//! printed once at the top (`{:#}`) says which file is broken and how.

use std::path::PathBuf;

use crate::types::GgmlType;

/// Result alias used throughout the crate.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// Everything that can go wrong reading, dequantizing, viewing or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The operating system refused to open, map, write or rename a file.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What we were doing (`open`, `mmap`, `write`, …).
        action: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("{path}: not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")")]
    BadMagic {
        /// The file concerned.
        path: PathBuf,
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A version other than 2 or 3 (or a big-endian file).
    #[error("{path}: unsupported GGUF version {version} (supported: 2 and 3, little-endian)")]
    UnsupportedVersion {
        /// The file concerned.
        path: PathBuf,
        /// The version field as read little-endian.
        version: u32,
    },
    /// The file ends inside the header, the metadata or the tensor infos.
    #[error("{path}: truncated: needed {needed} bytes at offset {offset} while reading {what}, file has {len}")]
    Truncated {
        /// The file concerned.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Where the read started.
        offset: u64,
        /// How many bytes it needed.
        needed: u64,
        /// The length of the file.
        len: u64,
    },
    /// Malformed content that is not a truncation (bad UTF-8, bad value type, absurd sizes…).
    #[error("{path}: malformed GGUF: {message}")]
    Malformed {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor info names a ggml type id this crate does not know.
    #[error("{path}: tensor `{tensor}` has unknown ggml type id {type_id}")]
    UnknownGgmlType {
        /// The file concerned.
        path: PathBuf,
        /// The tensor concerned.
        tensor: String,
        /// The raw type id.
        type_id: u32,
    },
    /// Tensor data offset not a multiple of the file's alignment.
    #[error("{path}: tensor `{tensor}` data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        /// The file concerned.
        path: PathBuf,
        /// The tensor concerned.
        tensor: String,
        /// The offset relative to the start of the data section.
        offset: u64,
        /// `general.alignment` (32 by default).
        alignment: u64,
    },
    /// A tensor's bytes run past the end of the file.
    #[error("{path}: tensor `{tensor}` data [{start}, {end}) lies past the end of the file ({len} bytes)")]
    TensorOutOfBounds {
        /// The file concerned.
        path: PathBuf,
        /// The tensor concerned.
        tensor: String,
        /// Absolute start offset.
        start: u64,
        /// Absolute end offset (exclusive).
        end: u64,
        /// The length of the file.
        len: u64,
    },
    /// Two tensor infos carry the same name.
    #[error("{path}: duplicate tensor name `{tensor}`")]
    DuplicateTensor {
        /// The file concerned.
        path: PathBuf,
        /// The repeated name.
        tensor: String,
    },
    /// Two metadata entries carry the same key.
    #[error("{path}: duplicate metadata key `{key}`")]
    DuplicateKey {
        /// The file concerned.
        path: PathBuf,
        /// The repeated key.
        key: String,
    },
    /// A tensor looked up by name is not in the file.
    #[error("{path}: no tensor named `{tensor}`")]
    MissingTensor {
        /// The file concerned.
        path: PathBuf,
        /// The name looked up.
        tensor: String,
    },
    /// A metadata key looked up is not in the file.
    #[error("{path}: metadata key `{key}` is missing")]
    MissingKey {
        /// The file concerned.
        path: PathBuf,
        /// The key looked up.
        key: String,
    },
    /// A metadata key holds a value of another type than asked for.
    #[error("{path}: metadata key `{key}` is {found}, expected {expected}")]
    WrongType {
        /// The file concerned.
        path: PathBuf,
        /// The key looked up.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
    /// Dequantization of this ggml type is not implemented.
    #[error("{path}: tensor `{tensor}`: dequantizing {ty} is not supported")]
    UnsupportedType {
        /// The file concerned.
        path: PathBuf,
        /// The tensor concerned.
        tensor: String,
        /// Its type.
        ty: GgmlType,
    },
    /// The model described by the file is not one this crate can view (architecture, shapes, names).
    #[error("{path}: {message}")]
    Model {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer described by the metadata cannot be built.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor handed to the writer is inconsistent (shape/data length, block size, name).
    #[error("{path}: cannot write tensor `{tensor}`: {message}")]
    InvalidWrite {
        /// The file being written.
        path: PathBuf,
        /// The tensor concerned.
        tensor: String,
        /// What is wrong.
        message: String,
    },
}

impl From<distill_base::AtomicWriteError> for GgufError {
    fn from(e: distill_base::AtomicWriteError) -> Self {
        GgufError::Io { path: e.path, action: e.action, source: e.source }
    }
}

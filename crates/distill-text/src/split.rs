//! Deterministic train/validation split by document.
//!
//! A document goes to validation iff `u < val_fraction`, where `u ∈ [0, 1)` is the top 53 bits
//! of `sha256("distill-text/split/v1" ‖ seed (u64 LE) ‖ key ‖ 0x00 ‖ index (u64 LE))`. The
//! decision depends on nothing else (not the thread count, not the order or number of the other
//! documents, not the platform), so the same document always lands in the same split.

use sha2::{Digest, Sha256};

use crate::config::{validate_val_fraction, SplitConfig};
use crate::error::{Result, TextError};
use crate::source::Document;

/// The 64-bit split hash of a document (`key`, `index`) under `seed`.
pub fn split_hash(seed: u64, key: &str, index: usize) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"distill-text/split/v1");
    hasher.update(seed.to_le_bytes());
    hasher.update(key.as_bytes());
    hasher.update([0u8]);
    hasher.update((index as u64).to_le_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Maps a hash to a uniform number in `[0, 1)` (its top 53 bits).
pub fn unit_interval(hash: u64) -> f64 {
    (hash >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Whether the document (`key`, `index`) belongs to validation.
pub fn is_validation(seed: u64, key: &str, index: usize, val_fraction: f64) -> bool {
    unit_interval(split_hash(seed, key, index)) < val_fraction
}

/// Documents divided into training and validation sets, each in input order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// Training documents.
    pub train: Vec<Document>,
    /// Validation documents.
    pub validation: Vec<Document>,
}

/// Splits documents by [`is_validation`].
///
/// Fails when `val_fraction` is out of range or when the split leaves no training document.
pub fn split_documents(docs: Vec<Document>, config: &SplitConfig) -> Result<Split> {
    validate_val_fraction(config.val_fraction)?;
    let n_docs = docs.len();
    let (validation, train): (Vec<Document>, Vec<Document>) =
        docs.into_iter().partition(|d| is_validation(config.seed, &d.key, d.index, config.val_fraction));
    if train.is_empty() {
        return Err(TextError::EmptyTrainSplit { n_docs, val_fraction: config.val_fraction, seed: config.seed });
    }
    Ok(Split { train, validation })
}

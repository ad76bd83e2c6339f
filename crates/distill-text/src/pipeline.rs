//! The whole pipeline: sources → cleaning → split → tokenizing → packing.

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::blocks::TokenBlocks;
use crate::clean::{clean_documents, CleanStats};
use crate::config::TextDataConfig;
use crate::error::{Result, TextError};
use crate::pack::{pack, tokenize_documents, PackStats, SpecialTokens};
use crate::source::{read_sources, Document};
use crate::split::{split_documents, Split};

/// Cleaned documents divided into training and validation sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedText {
    /// Training and validation documents.
    pub split: Split,
    /// Cleaning counts of `sources`.
    pub clean: CleanStats,
    /// Cleaning counts of `val_sources`, when given.
    pub val_clean: Option<CleanStats>,
}

/// Reads, cleans and splits the documents of `config` (no tokenizer needed).
///
/// With `val_sources`, every document of `sources` trains and `val_sources` validates;
/// otherwise documents are split by [`crate::split::is_validation`].
///
/// With `train_sources`, their documents replace the training part (cleaned by the same rules;
/// `clean` then counts them) and the validation part stays as above.
pub fn prepare_text(config: &TextDataConfig) -> Result<PreparedText> {
    config.validate()?;
    let docs = read_sources(&config.sources)?;
    let (docs, clean) = clean_documents(docs, &config.clean)?;
    let mut prepared = if config.val_sources.is_empty() {
        let split = split_documents(docs, &config.split)?;
        PreparedText { split, clean, val_clean: None }
    } else {
        let val_docs = read_sources(&config.val_sources)?;
        let (validation, val_clean) = clean_documents(val_docs, &config.clean)?;
        PreparedText { split: Split { train: docs, validation }, clean, val_clean: Some(val_clean) }
    };
    if !config.train_sources.is_empty() {
        let (train, clean) = clean_documents(read_sources(&config.train_sources)?, &config.clean)?;
        prepared.split.train = train;
        prepared.clean = clean;
    }
    Ok(prepared)
}

/// Counts of every stage of [`build_dataset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Cleaning counts of `sources`.
    pub clean: CleanStats,
    /// Cleaning counts of `val_sources`, when given.
    pub val_clean: Option<CleanStats>,
    /// Training documents.
    pub train_docs: usize,
    /// Validation documents.
    pub val_docs: usize,
    /// Packing counts of the training set.
    pub train_pack: PackStats,
    /// Packing counts of the validation set.
    pub val_pack: PackStats,
    /// The special tokens used.
    pub specials: SpecialTokens,
}

/// Packed training and validation rows with their statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextDataset {
    /// Training rows.
    pub train: TokenBlocks,
    /// Validation rows (may be empty when the validation documents do not fill a row).
    pub validation: TokenBlocks,
    /// Counts of every stage.
    pub stats: DatasetStats,
}

/// Tokenizes and packs one set of documents.
pub fn tokenize_and_pack(
    docs: &[Document],
    tokenizer: &Tokenizer,
    config: &crate::config::PackConfig,
    specials: &SpecialTokens,
) -> Result<(TokenBlocks, PackStats)> {
    let tokens = tokenize_documents(docs, tokenizer)?;
    pack(&tokens, config, specials)
}

/// Runs the whole pipeline. The config and the special tokens are checked before any file is
/// read; fails when the training set packs into no row.
pub fn build_dataset(config: &TextDataConfig, tokenizer: &Tokenizer) -> Result<TextDataset> {
    config.validate()?;
    let specials = SpecialTokens::resolve(tokenizer, &config.pack)?;
    let prepared = prepare_text(config)?;
    let (train, train_pack) = tokenize_and_pack(&prepared.split.train, tokenizer, &config.pack, &specials)?;
    if train.is_empty() {
        return Err(TextError::NoTrainingRows { n_tokens: train_pack.n_stream_tokens, seq_len: config.pack.seq_len });
    }
    let (validation, val_pack) = tokenize_and_pack(&prepared.split.validation, tokenizer, &config.pack, &specials)?;
    Ok(TextDataset {
        train,
        validation,
        stats: DatasetStats {
            clean: prepared.clean,
            val_clean: prepared.val_clean,
            train_docs: prepared.split.train.len(),
            val_docs: prepared.split.validation.len(),
            train_pack,
            val_pack,
            specials,
        },
    })
}

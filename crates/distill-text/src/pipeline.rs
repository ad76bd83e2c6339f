//! The whole pipeline: sources → cleaning → split → tokenizing → packing.

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::blocks::TokenBlocks;
use crate::chat::ChatTemplate;
use crate::clean::{clean_documents, CleanStats};
use crate::config::TextDataConfig;
use crate::error::{Result, TextError};
use crate::pack::{
    concat_blocks, pack, pack_conversations, tokenize_conversations, tokenize_documents, PackStats, SpecialTokens,
};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// Tokenizes and packs a set of documents that may hold conversations: texts as `pack` says,
/// then one conversation per row (rendered by `chat`, learned where [`TextDataConfig::assistant_only`]
/// says). Fails on a conversation without a template.
pub fn pack_documents(
    docs: &[Document],
    tokenizer: &Tokenizer,
    config: &TextDataConfig,
    specials: &SpecialTokens,
    chat: Option<&dyn ChatTemplate>,
) -> Result<(TokenBlocks, PackStats)> {
    let (convs, texts): (Vec<&Document>, Vec<&Document>) = docs.iter().partition(|d| d.conversation.is_some());
    if convs.is_empty() {
        return tokenize_and_pack(docs, tokenizer, &config.pack, specials);
    }
    let texts: Vec<Document> = texts.into_iter().cloned().collect();
    let (text_blocks, text_stats) = tokenize_and_pack(&texts, tokenizer, &config.pack, specials)?;
    let template = chat.ok_or_else(|| TextError::NoChatTemplate { path: convs[0].path.clone() })?;
    let tokens = tokenize_conversations(&convs, tokenizer, template, config.assistant_only)?;
    let (conv_blocks, conv_stats) = pack_conversations(&tokens, config.pack.seq_len, specials.pad)?;
    let blocks = concat_blocks(text_blocks, conv_blocks);
    let stats = PackStats {
        n_docs: text_stats.n_docs + conv_stats.n_docs,
        n_doc_tokens: text_stats.n_doc_tokens + conv_stats.n_doc_tokens,
        n_stream_tokens: text_stats.n_stream_tokens + conv_stats.n_stream_tokens,
        n_tokens_real: blocks.n_tokens_real,
        n_tokens_dropped: text_stats.n_tokens_dropped + conv_stats.n_tokens_dropped,
        n_pad: text_stats.n_pad + conv_stats.n_pad,
        n_truncated_docs: text_stats.n_truncated_docs + conv_stats.n_truncated_docs,
        n_blocks: blocks.n_blocks(),
        n_targets_dropped: conv_stats.n_targets_dropped,
    };
    Ok((blocks, stats))
}

/// Runs the whole pipeline on texts (conversation records fail: see [`build_dataset_chat`]).
pub fn build_dataset(config: &TextDataConfig, tokenizer: &Tokenizer) -> Result<TextDataset> {
    build_dataset_chat(config, tokenizer, None)
}

/// Runs the whole pipeline, conversations rendered by `chat`. The config and the special
/// tokens are checked before any file is read; fails when the training set packs into no row.
pub fn build_dataset_chat(
    config: &TextDataConfig,
    tokenizer: &Tokenizer,
    chat: Option<&dyn ChatTemplate>,
) -> Result<TextDataset> {
    config.validate()?;
    let specials = SpecialTokens::resolve(tokenizer, &config.pack)?;
    let prepared = prepare_text(config)?;
    let (train, train_pack) = pack_documents(&prepared.split.train, tokenizer, config, &specials, chat)?;
    if train.is_empty() {
        return Err(TextError::NoTrainingRows { n_tokens: train_pack.n_stream_tokens, seq_len: config.pack.seq_len });
    }
    let (validation, val_pack) = pack_documents(&prepared.split.validation, tokenizer, config, &specials, chat)?;
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

//! Text data pipeline for LLM distillation, in pure Rust (no libtorch).
//!
//! Sources (plain text, JSONL, the tagged Brown corpus) → cleaning (header lines, whitespace,
//! empty and short documents, every drop counted) → a deterministic train/validation split by
//! document → parallel tokenizing with a `tokenizers::Tokenizer` → packing into fixed-length
//! rows (concatenated or padded) → a fingerprint an offline teacher cache can check. Parquet
//! files (what dataset hubs store) are read as rows of JSON objects by [`read_parquet`].
//!
//! ```no_run
//! use distill_text::{build_dataset, TextDataConfig, TextSource};
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let tokenizer = tokenizers::Tokenizer::from_file("tokenizer.json")?;
//! let config = TextDataConfig::new(vec![TextSource::brown("brown/package")]);
//! let data = build_dataset(&config, &tokenizer)?;
//! println!("{} train rows, fingerprint {}", data.train.n_blocks(), data.train.fingerprint());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod blocks;
pub mod brown;
pub mod chat;
pub mod clean;
pub mod config;
pub mod error;
pub mod labelled;
pub mod pack;
pub mod parquet;
pub mod pipeline;
pub mod source;
pub mod split;

pub use blocks::{fingerprint, Batch, TokenBlocks};
pub use chat::{ChatTemplate, Message, Record};
pub use clean::{clean_documents, clean_text, CleanStats};
pub use config::{
    CleanConfig, DocBoundary, PackConfig, PackMode, RecordFields, SplitConfig, TextDataConfig, TextFormat, TextSource,
};
pub use error::{Result, TextError};
pub use labelled::{classes, read_labelled, LabelledDoc};
pub use pack::{pack, pack_conversations, tokenize_conversations, tokenize_documents, PackStats, SpecialTokens};
pub use parquet::{parse_parquet, read_parquet, JsonRow};
pub use pipeline::{
    build_dataset, build_dataset_chat, pack_documents, prepare_text, tokenize_and_pack, DatasetStats, PreparedText,
    TextDataset,
};
pub use source::{read_sources, Document};
pub use split::{split_documents, Split};

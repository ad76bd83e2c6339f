//! A summary of a cache directory, complete or not, for humans and scripts.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::format::IdDtype;
use crate::manifest::Manifest;

/// What [`inspect`] reports; serializes to JSON, and `Display` prints a short summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InspectReport {
    /// The cache directory.
    pub dir: PathBuf,
    /// Whether the capture was finished.
    pub complete: bool,
    /// Rows the capture covers.
    pub n_rows: usize,
    /// Rows stored in complete shards.
    pub rows: usize,
    /// Tokens stored (`rows × seq_len`).
    pub tokens: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Top-k entries per position.
    pub top_k: usize,
    /// Tail samples per position.
    pub tail_samples: usize,
    /// Teacher vocabulary size.
    pub vocab_size: usize,
    /// `u16` or `u32`.
    pub id_dtype: IdDtype,
    /// `u8` or `f16`.
    pub logprob_encoding: &'static str,
    /// Quantization step of the `u8` encoding.
    pub logprob_step: Option<f32>,
    /// Bytes of one token record.
    pub bytes_per_token: usize,
    /// Complete shard files.
    pub shards: usize,
    /// Bytes of all complete shard files, headers included.
    pub total_bytes: u64,
    /// Opaque teacher identity.
    pub teacher_fingerprint: String,
    /// Opaque tokenizer identity.
    pub tokenizer_fingerprint: String,
    /// Opaque data identity.
    pub data_fingerprint: String,
    /// Free-form teacher description.
    pub teacher: String,
    /// Which part of a capture split over machines this is, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<crate::Part>,
}

/// Reads `dir/manifest.json` (without touching the shards) and summarizes it.
pub fn inspect(dir: impl AsRef<Path>) -> Result<InspectReport> {
    let dir = dir.as_ref();
    let m = Manifest::load(dir)?;
    let rows = m.rows_stored();
    Ok(InspectReport {
        dir: dir.to_path_buf(),
        complete: m.complete,
        n_rows: m.n_rows,
        rows,
        tokens: m.tokens,
        seq_len: m.seq_len,
        top_k: m.top_k,
        tail_samples: m.tail_samples,
        vocab_size: m.vocab_size,
        id_dtype: m.id_dtype,
        logprob_encoding: m.logprob_encoding.name(),
        logprob_step: m.logprob_encoding.step(),
        bytes_per_token: m.bytes_per_token,
        shards: m.shards.len(),
        total_bytes: m.total_bytes(),
        teacher_fingerprint: m.teacher_fingerprint,
        tokenizer_fingerprint: m.tokenizer_fingerprint,
        data_fingerprint: m.data_fingerprint,
        teacher: m.teacher,
        part: m.part,
    })
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut state = if self.complete {
            "complete".to_owned()
        } else {
            format!("INCOMPLETE ({} of {} rows)", self.rows, self.n_rows)
        };
        if let Some(p) = self.part {
            state = format!("part {} of {} (shards {}..{}), {state}", p.index + 1, p.count, p.first_shard, p.end_shard);
        }
        writeln!(f, "teacher cache {}: {state}", self.dir.display())?;
        writeln!(f, "  teacher      {} ({})", self.teacher, self.teacher_fingerprint)?;
        writeln!(f, "  tokenizer    {}", self.tokenizer_fingerprint)?;
        writeln!(f, "  data         {}", self.data_fingerprint)?;
        writeln!(
            f,
            "  rows         {} × seq_len {} = {} tokens, top-{}{} of vocab {}",
            self.rows,
            self.seq_len,
            self.tokens,
            self.top_k,
            if self.tail_samples > 0 { format!(" + {} tail samples", self.tail_samples) } else { String::new() },
            self.vocab_size
        )?;
        let encoding = match self.logprob_step {
            Some(step) => format!("{} (step {step} nat)", self.logprob_encoding),
            None => self.logprob_encoding.to_owned(),
        };
        writeln!(f, "  encoding     ids {}, logprobs {encoding}, {} bytes/token", self.id_dtype, self.bytes_per_token)?;
        write!(f, "  shards       {} files, {} bytes", self.shards, self.total_bytes)
    }
}

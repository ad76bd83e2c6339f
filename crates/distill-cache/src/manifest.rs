//! `manifest.json`: what a cache holds ([`CacheSpec`]), which shards are complete, and the
//! atomic file writes shared by the writer.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io, CacheError, Result};
use crate::format::{bytes_per_token, IdDtype, LogprobEncoding, HEADER_BYTES, SHARD_VERSION};

/// Value of the manifest's `format` field.
pub const FORMAT_NAME: &str = "distill-teacher-cache";
/// Name of the manifest file inside a cache directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What a cache stores: the shape of the records and the identity of teacher, tokenizer and data.
///
/// Resuming a capture requires an identical spec, except for the free-form `teacher`
/// description, which is kept from the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSpec {
    /// Entries kept per position, `K ≥ 1`, `K ≤ vocab_size`.
    pub top_k: usize,
    /// Tail samples per position, `S ≤ 65,535` (0: none): ids drawn with replacement from the
    /// teacher's distribution outside its top-k (needs `K < vocab_size`).
    pub tail_samples: usize,
    /// Teacher vocabulary size `V` (ids are `< V`); at most `u32::MAX`.
    pub vocab_size: usize,
    /// Tokens per packed row.
    pub seq_len: usize,
    /// Rows per shard file (the last shard may hold fewer).
    pub rows_per_shard: usize,
    /// Rows the capture will cover (row `r` = training block `r`).
    pub n_rows: usize,
    /// How log-probabilities below the top-1 are stored.
    pub logprob_encoding: LogprobEncoding,
    /// Opaque identity of the teacher (weights, quantization, …), supplied by the caller.
    pub teacher_fingerprint: String,
    /// Opaque identity of the tokenizer.
    pub tokenizer_fingerprint: String,
    /// Opaque identity of the packed data (e.g. `distill_text::fingerprint`).
    pub data_fingerprint: String,
    /// Free-form description of the teacher, for humans.
    pub teacher: String,
}

impl CacheSpec {
    /// Bytes of one token record; see [`bytes_per_token`].
    pub fn bytes_per_token(&self) -> usize {
        bytes_per_token(self.top_k, self.tail_samples, self.vocab_size, self.logprob_encoding)
    }

    /// How ids are stored.
    pub fn id_dtype(&self) -> IdDtype {
        IdDtype::for_vocab(self.vocab_size)
    }

    /// Checks that every field can be stored.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, message: String| Err(CacheError::InvalidSpec { field, message });
        let max = u32::MAX as usize;
        if self.vocab_size == 0 || self.vocab_size > max {
            return bad("vocab_size", format!("must be in 1..={max}, got {}", self.vocab_size));
        }
        if self.top_k == 0 || self.top_k > self.vocab_size {
            return bad("top_k", format!("must be in 1..=vocab_size ({}), got {}", self.vocab_size, self.top_k));
        }
        if self.tail_samples > usize::from(u16::MAX) {
            return bad("tail_samples", format!("must be at most {}, got {}", u16::MAX, self.tail_samples));
        }
        if self.tail_samples > 0 && self.top_k == self.vocab_size {
            return bad("tail_samples", "there is no tail to sample when top_k = vocab_size".to_owned());
        }
        if self.seq_len == 0 || self.seq_len > max {
            return bad("seq_len", format!("must be in 1..={max}, got {}", self.seq_len));
        }
        if self.rows_per_shard == 0 || self.rows_per_shard > max {
            return bad("rows_per_shard", format!("must be in 1..={max}, got {}", self.rows_per_shard));
        }
        if self.n_rows == 0 {
            return bad("n_rows", "must be at least 1, got 0".to_owned());
        }
        let shard_bytes = (self.rows_per_shard as u128) * (self.seq_len as u128) * (self.bytes_per_token() as u128);
        if shard_bytes > isize::MAX as u128 {
            return bad("rows_per_shard", format!("{} rows make a shard of {shard_bytes} bytes", self.rows_per_shard));
        }
        if let LogprobEncoding::U8 { step } = self.logprob_encoding {
            if !(step.is_finite() && step > 0.0) {
                return bad("logprob_step", format!("must be a positive finite number of nats, got {step}"));
            }
        }
        Ok(())
    }
}

/// One machine's share of a capture split over `count` machines (`distill cache --shard i/N`):
/// the contiguous shards `first_shard..end_shard` of the whole cache. A cache with a part is
/// partial: it is read only through [`merge`](crate::merge), which joins the parts into the cache
/// one machine would have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// This part, `0..count`.
    pub index: usize,
    /// Parts of the capture.
    pub count: usize,
    /// Its first shard.
    pub first_shard: usize,
    /// One past its last shard.
    pub end_shard: usize,
}

impl Part {
    /// Part `index` of `count` of a capture of `n_shards` shards: shards split into contiguous
    /// runs whose lengths differ by at most one.
    pub fn new(index: usize, count: usize, n_shards: usize) -> Part {
        Part { index, count, first_shard: index * n_shards / count, end_shard: (index + 1) * n_shards / count }
    }
}

/// One complete shard file, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the cache directory (`shard-00000.bin`, …).
    pub file: String,
    /// Global index of the shard's first row.
    pub first_row: usize,
    /// Rows in the shard.
    pub rows: usize,
    /// File size in bytes, header included.
    pub bytes: u64,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: String,
}

/// The content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Format version ([`SHARD_VERSION`]).
    pub version: u32,
    /// Entries per position.
    pub top_k: usize,
    /// Tail samples per position after the top-k (absent = 0).
    #[serde(default)]
    pub tail_samples: usize,
    /// Teacher vocabulary size.
    pub vocab_size: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Rows per shard (the last may hold fewer).
    pub rows_per_shard: usize,
    /// Rows the capture covers.
    pub n_rows: usize,
    /// `u16` or `u32`.
    pub id_dtype: IdDtype,
    /// Serialized as `logprob_encoding` (+ `logprob_step` for `u8`).
    #[serde(flatten)]
    pub logprob_encoding: LogprobEncoding,
    /// Temperature the log-probabilities are taken at; always 1.
    pub temperature_stored: f32,
    /// Opaque teacher identity.
    pub teacher_fingerprint: String,
    /// Opaque tokenizer identity.
    pub tokenizer_fingerprint: String,
    /// Opaque data identity.
    pub data_fingerprint: String,
    /// Free-form teacher description.
    pub teacher: String,
    /// Bytes of one token record.
    pub bytes_per_token: usize,
    /// Bytes of each shard's header.
    pub header_bytes: usize,
    /// Whether every row was written and the capture was finished.
    pub complete: bool,
    /// Tokens stored in the listed shards (`rows × seq_len`).
    pub tokens: usize,
    /// The complete shards, in row order.
    pub shards: Vec<ShardEntry>,
    /// Set in one part of a capture split over machines; absent in a whole cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
}

impl Manifest {
    /// An empty, incomplete manifest for `spec`.
    pub(crate) fn new(spec: &CacheSpec) -> Self {
        Manifest {
            format: FORMAT_NAME.to_owned(),
            version: SHARD_VERSION,
            top_k: spec.top_k,
            tail_samples: spec.tail_samples,
            vocab_size: spec.vocab_size,
            seq_len: spec.seq_len,
            rows_per_shard: spec.rows_per_shard,
            n_rows: spec.n_rows,
            id_dtype: spec.id_dtype(),
            logprob_encoding: spec.logprob_encoding,
            temperature_stored: 1.0,
            teacher_fingerprint: spec.teacher_fingerprint.clone(),
            tokenizer_fingerprint: spec.tokenizer_fingerprint.clone(),
            data_fingerprint: spec.data_fingerprint.clone(),
            teacher: spec.teacher.clone(),
            bytes_per_token: spec.bytes_per_token(),
            header_bytes: HEADER_BYTES,
            complete: false,
            tokens: 0,
            shards: Vec::new(),
            part: None,
        }
    }

    /// Shards of the whole capture.
    pub fn n_shards(&self) -> usize {
        self.n_rows.div_ceil(self.rows_per_shard.max(1))
    }

    /// The shards this directory holds when complete: all, or its part's.
    pub fn shard_range(&self) -> std::ops::Range<usize> {
        match self.part {
            Some(p) => p.first_shard..p.end_shard,
            None => 0..self.n_shards(),
        }
    }

    /// The rows this directory holds when complete.
    pub fn row_range(&self) -> std::ops::Range<usize> {
        let r = self.shard_range();
        (r.start * self.rows_per_shard).min(self.n_rows)..(r.end * self.rows_per_shard).min(self.n_rows)
    }

    /// The spec this cache was created with.
    pub fn spec(&self) -> CacheSpec {
        CacheSpec {
            top_k: self.top_k,
            tail_samples: self.tail_samples,
            vocab_size: self.vocab_size,
            seq_len: self.seq_len,
            rows_per_shard: self.rows_per_shard,
            n_rows: self.n_rows,
            logprob_encoding: self.logprob_encoding,
            teacher_fingerprint: self.teacher_fingerprint.clone(),
            tokenizer_fingerprint: self.tokenizer_fingerprint.clone(),
            data_fingerprint: self.data_fingerprint.clone(),
            teacher: self.teacher.clone(),
        }
    }

    /// Rows stored in the listed shards.
    pub fn rows_stored(&self) -> usize {
        self.shards.iter().fold(0usize, |acc, s| acc.saturating_add(s.rows))
    }

    /// Bytes of all listed shard files, headers included.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().fold(0u64, |acc, s| acc.saturating_add(s.bytes))
    }

    /// Rows in shard `index` (the last shard holds the remainder).
    pub(crate) fn rows_in_shard(&self, index: usize) -> usize {
        let first = index * self.rows_per_shard;
        self.rows_per_shard.min(self.n_rows.saturating_sub(first))
    }

    /// File size of a shard of `rows` rows.
    pub(crate) fn shard_bytes(&self, rows: usize) -> u64 {
        (HEADER_BYTES + rows * self.seq_len * self.bytes_per_token) as u64
    }

    /// Checks the manifest is of this format and self-consistent; the error says what is wrong.
    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT_NAME {
            return Err(format!("format is \"{}\", expected \"{FORMAT_NAME}\"", self.format));
        }
        if self.version != SHARD_VERSION {
            return Err(format!("format version {}, this build reads version {SHARD_VERSION}", self.version));
        }
        self.spec().validate().map_err(|e| e.to_string())?;
        let expect = |name: &str, found: String, want: String| {
            if found == want {
                Ok(())
            } else {
                Err(format!("{name} is {found}, expected {want}"))
            }
        };
        expect("id_dtype", self.id_dtype.to_string(), IdDtype::for_vocab(self.vocab_size).to_string())?;
        expect("bytes_per_token", self.bytes_per_token.to_string(), self.spec().bytes_per_token().to_string())?;
        expect("header_bytes", self.header_bytes.to_string(), HEADER_BYTES.to_string())?;
        expect("temperature_stored", self.temperature_stored.to_string(), "1".to_owned())?;
        if let Some(p) = self.part {
            if p.count == 0 || p.index >= p.count || p != Part::new(p.index, p.count, self.n_shards()) {
                return Err(format!(
                    "part {:?} is not part {} of {} of a capture of {} shards",
                    p,
                    p.index,
                    p.count,
                    self.n_shards()
                ));
            }
        }
        let first = self.shard_range().start;
        for (j, s) in self.shards.iter().enumerate() {
            let i = first + j;
            let rows = self.rows_in_shard(i);
            if s.file != shard_file_name(i)
                || s.first_row != i * self.rows_per_shard
                || s.rows != rows
                || rows == 0
                || s.bytes != self.shard_bytes(rows)
            {
                return Err(format!(
                    "shard entry {i} ({}, first_row {}, {} rows, {} bytes) is not shard {} of rows {}..{}",
                    s.file,
                    s.first_row,
                    s.rows,
                    s.bytes,
                    shard_file_name(i),
                    i * self.rows_per_shard,
                    i * self.rows_per_shard + rows
                ));
            }
            if s.sha256.len() != 64 || !s.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("shard entry {i} ({}) has no valid sha256", s.file));
            }
        }
        let stored = self.shards.iter().try_fold(0usize, |acc, s| acc.checked_add(s.rows));
        let tokens = stored.and_then(|n| n.checked_mul(self.seq_len));
        let (Some(stored), Some(tokens)) = (stored, tokens) else {
            return Err("its shard row counts overflow".into());
        };
        expect("tokens", self.tokens.to_string(), tokens.to_string())?;
        if self.complete && stored != self.row_range().len() {
            return Err(format!("marked complete but its shards hold {stored} of {} rows", self.row_range().len()));
        }
        Ok(())
    }

    /// Reads and checks `dir/manifest.json`.
    pub(crate) fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CacheError::MissingManifest { dir: dir.to_path_buf() })
            }
            Err(e) => return Err(io(&path, "read manifest")(e)),
        };
        let bad = |message: String| CacheError::BadManifest { path: path.clone(), message };
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        manifest.check().map_err(bad)?;
        Ok(manifest)
    }

    /// Writes `dir/manifest.json` atomically.
    pub(crate) fn store(&self, dir: &Path) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        text.push(b'\n');
        write_atomic(&dir.join(MANIFEST_FILE), &text)
    }
}

/// `shard-00000.bin`, `shard-00001.bin`, …
pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.bin")
}

/// Whether `name` is a shard file name (`shard-` + digits + `.bin`).
pub(crate) fn is_shard_file_name(name: &str) -> bool {
    name.strip_prefix("shard-")
        .and_then(|rest| rest.strip_suffix(".bin"))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `name` is a temporary file left by an interrupted write of a shard or the manifest.
pub(crate) fn is_temp_file_name(name: &str) -> bool {
    let base = name.trim_start_matches('.');
    (base.starts_with("shard-") || base.starts_with(MANIFEST_FILE)) && base.contains(".tmp")
}

/// Lower-case hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) use distill_base::atomic::{sync_dir, temp_path};

/// Writes `bytes` to `path` atomically: temp file in the same directory + fsync + rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(distill_base::write_atomic(path, bytes)?)
}

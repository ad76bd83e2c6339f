//! The binary layout: shard header, per-token record and the two log-probability encodings.
//!
//! # Shard file
//! `shard-NNNNN.bin` = a [`HEADER_BYTES`]-byte header followed by `rows × seq_len` token records
//! of [`bytes_per_token`] bytes each, row-major. Everything is little-endian.
//!
//! | offset | type    | field                                             |
//! |-------:|---------|---------------------------------------------------|
//! | 0      | `[u8;4]`| magic `DSTC`                                      |
//! | 4      | u32     | shard format version ([`SHARD_VERSION`])          |
//! | 8      | u32     | shard index (`NNNNN` of the file name)            |
//! | 12     | u32     | rows in this shard                                |
//! | 16     | u64     | first row (global row index of the shard's row 0) |
//! | 24     | u32     | top-k `K`                                         |
//! | 28     | u32     | `seq_len`                                         |
//! | 32     | u32     | `vocab_size`                                      |
//! | 36     | u32     | bytes per token record                            |
//! | 40     | u8      | log-prob encoding: 0 = `u8`, 1 = `f16`            |
//! | 41     | u8      | bytes per id: 2 (`u16`) or 4 (`u32`)              |
//! | 42     | u16     | tail samples `S` (0 in caches without them)       |
//! | 44     | f32     | `logprob_step` (`u8` encoding; 0 for `f16`)       |
//!
//! # Token record
//! | type                 | field                                                           |
//! |----------------------|-----------------------------------------------------------------|
//! | f32                  | `logp_0`, the top-1 log-probability, exact                      |
//! | f32                  | `log_tail`, exact (may be `-inf`)                               |
//! | `(K+S) ×` u16 or u32 | the top-k ids by descending probability, then `S` tail samples  |
//! | `(K+S) ×` u8  (`u8`) | `c_i = round((logp_0 − logp_i) / step)` clamped to `[0, 255]`   |
//! | `(K+S) ×` f16 (`f16`)| `d_i = logp_0 − logp_i` rounded to the nearest f16              |
//!
//! Decoding gives `logp_i = logp_0 − c_i · step` (`u8`) or `logp_0 − d_i` (`f16`). Entry 0's
//! code is always 0 and is stored anyway, so every array has `K + S` entries. The `S` tail
//! samples are ids drawn with replacement from the teacher's distribution restricted to the
//! tokens outside its top-k, with their own log-probabilities (see the crate doc).

use std::fmt;

use half::f16;
use serde::{Deserialize, Serialize};

/// The first four bytes of every shard file.
pub const MAGIC: [u8; 4] = *b"DSTC";
/// Version of the shard layout (and of `manifest.json`).
pub const SHARD_VERSION: u32 = 1;
/// Size of the shard header in bytes.
pub const HEADER_BYTES: usize = 48;
/// Default quantization step of the `u8` encoding, in nats.
pub const DEFAULT_LOGPROB_STEP: f32 = 1.0 / 16.0;
/// Largest `u8` code: entries more than `MAX_CODE · step` below the top-1 saturate.
pub const MAX_CODE: u8 = 255;

/// How token ids are stored: `u16` when the vocabulary has at most 65,536 entries, else `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdDtype {
    /// 2 bytes per id.
    U16,
    /// 4 bytes per id.
    U32,
}

impl IdDtype {
    /// The narrowest type that holds every id of a vocabulary of `vocab_size` tokens.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            IdDtype::U16
        } else {
            IdDtype::U32
        }
    }

    /// Bytes per id.
    pub fn bytes(self) -> usize {
        match self {
            IdDtype::U16 => 2,
            IdDtype::U32 => 4,
        }
    }
}

impl fmt::Display for IdDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdDtype::U16 => "u16",
            IdDtype::U32 => "u32",
        })
    }
}

/// How the top-k log-probabilities below the top-1 are stored.
///
/// In `manifest.json` this is the pair `"logprob_encoding": "u8", "logprob_step": 0.0625`, or
/// `"logprob_encoding": "f16"` alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "logprob_encoding")]
pub enum LogprobEncoding {
    /// One byte per entry: the distance below the top-1 in units of `step` nats, saturating at
    /// [`MAX_CODE`]. Error ≤ `step / 2` for entries within `255 · step` of the top-1.
    #[serde(rename = "u8")]
    U8 {
        /// Quantization step in nats (default [`DEFAULT_LOGPROB_STEP`]).
        #[serde(rename = "logprob_step")]
        step: f32,
    },
    /// Two bytes per entry: the distance below the top-1 as an IEEE half float (relative error
    /// ≤ 2⁻¹¹, no saturation, `-inf` kept).
    #[serde(rename = "f16")]
    F16,
}

impl Default for LogprobEncoding {
    fn default() -> Self {
        LogprobEncoding::U8 { step: DEFAULT_LOGPROB_STEP }
    }
}

impl LogprobEncoding {
    /// Bytes per stored log-probability.
    pub fn bytes(self) -> usize {
        match self {
            LogprobEncoding::U8 { .. } => 1,
            LogprobEncoding::F16 => 2,
        }
    }

    /// The quantization step of the `u8` encoding, `None` for `f16`.
    pub fn step(self) -> Option<f32> {
        match self {
            LogprobEncoding::U8 { step } => Some(step),
            LogprobEncoding::F16 => None,
        }
    }

    /// `"u8"` or `"f16"`, as in `manifest.json`.
    pub fn name(self) -> &'static str {
        match self {
            LogprobEncoding::U8 { .. } => "u8",
            LogprobEncoding::F16 => "f16",
        }
    }

    fn tag(self) -> u8 {
        match self {
            LogprobEncoding::U8 { .. } => 0,
            LogprobEncoding::F16 => 1,
        }
    }
}

impl fmt::Display for LogprobEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogprobEncoding::U8 { step } => write!(f, "u8 (step {step})"),
            LogprobEncoding::F16 => f.write_str("f16"),
        }
    }
}

/// Bytes of one token record: `8 + (K + S) · (id bytes + log-prob bytes)`, where `S` is the
/// number of tail samples, id bytes is 2 for `vocab_size ≤ 65,536` and 4 above, and log-prob
/// bytes is 1 (`u8`) or 2 (`f16`).
///
/// At `K = 64`, `S = 0`, `V = 49,152`, `u8`: `8 + 64 · (2 + 1) = 200`.
pub fn bytes_per_token(top_k: usize, tail_samples: usize, vocab_size: usize, encoding: LogprobEncoding) -> usize {
    8 + (top_k + tail_samples) * (IdDtype::for_vocab(vocab_size).bytes() + encoding.bytes())
}

/// The `u8` code of `logp` below the top-1 `logp0`: `round((logp0 − logp) / step)` clamped to
/// `[0, 255]`. `-inf` (and anything further than `255 · step` below) saturates to 255.
pub fn quantize(logp0: f32, logp: f32, step: f32) -> u8 {
    let code = ((f64::from(logp0) - f64::from(logp)) / f64::from(step)).round();
    if code.is_nan() || code <= 0.0 {
        0
    } else if code >= f64::from(MAX_CODE) {
        MAX_CODE
    } else {
        code as u8
    }
}

/// Decodes a `u8` code: `logp0 − code · step`.
pub fn dequantize(logp0: f32, code: u8, step: f32) -> f32 {
    logp0 - f32::from(code) * step
}

/// The largest relative mass (`p_i / p_0`) an entry saturated by the `u8` encoding can carry:
/// `exp(−255 · step)` (about `1.2e-7` at the default step of 1/16 nat).
pub fn saturation_mass_bound(step: f32) -> f64 {
    (-(f64::from(MAX_CODE)) * f64::from(step)).exp()
}

/// The record layout of one cache: which id type, how many entries, which encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub top_k: usize,
    pub tail_samples: usize,
    pub id_dtype: IdDtype,
    pub encoding: LogprobEncoding,
}

impl Layout {
    pub fn new(top_k: usize, tail_samples: usize, vocab_size: usize, encoding: LogprobEncoding) -> Self {
        Layout { top_k, tail_samples, id_dtype: IdDtype::for_vocab(vocab_size), encoding }
    }

    /// Entries per token: `K + S`.
    pub fn entries(&self) -> usize {
        self.top_k + self.tail_samples
    }

    pub fn bytes_per_token(&self) -> usize {
        8 + self.entries() * (self.id_dtype.bytes() + self.encoding.bytes())
    }

    /// Appends the record of one token. `ids` must already be in range; `logp` has `K + S`
    /// entries, the first `K` sorted descending, `logp[0]` finite and the largest.
    pub fn encode(&self, ids: impl Iterator<Item = u32>, logp: &[f32], log_tail: f32, out: &mut Vec<u8>) {
        let logp0 = logp[0];
        out.extend_from_slice(&logp0.to_le_bytes());
        out.extend_from_slice(&log_tail.to_le_bytes());
        match self.id_dtype {
            IdDtype::U16 => ids.for_each(|id| out.extend_from_slice(&(id as u16).to_le_bytes())),
            IdDtype::U32 => ids.for_each(|id| out.extend_from_slice(&id.to_le_bytes())),
        }
        match self.encoding {
            LogprobEncoding::U8 { step } => out.extend(logp.iter().map(|&l| quantize(logp0, l, step))),
            LogprobEncoding::F16 => {
                for &l in logp {
                    // `logp0 - l` is ≥ 0 (sorted input) and may be +inf, which f16 keeps.
                    out.extend_from_slice(&f16::from_f32(logp0 - l).to_bits().to_le_bytes());
                }
            }
        }
    }

    /// Decodes one record into `ids[K + S]` and `logp[K + S]`; returns `log_tail`.
    pub fn decode(&self, rec: &[u8], ids: &mut [i64], logp: &mut [f32]) -> f32 {
        let k = self.entries();
        let logp0 = f32::from_le_bytes(rec[0..4].try_into().expect("4 bytes"));
        let log_tail = f32::from_le_bytes(rec[4..8].try_into().expect("4 bytes"));
        let id_end = 8 + k * self.id_dtype.bytes();
        let id_bytes = &rec[8..id_end];
        match self.id_dtype {
            IdDtype::U16 => {
                for (dst, b) in ids.iter_mut().zip(id_bytes.chunks_exact(2)) {
                    *dst = i64::from(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            IdDtype::U32 => {
                for (dst, b) in ids.iter_mut().zip(id_bytes.chunks_exact(4)) {
                    *dst = i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
        }
        let lp = &rec[id_end..];
        match self.encoding {
            LogprobEncoding::U8 { step } => {
                for (dst, &c) in logp.iter_mut().zip(lp) {
                    *dst = dequantize(logp0, c, step);
                }
            }
            LogprobEncoding::F16 => {
                for (dst, b) in logp.iter_mut().zip(lp.chunks_exact(2)) {
                    *dst = logp0 - f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
        }
        log_tail
    }
}

/// The fixed-size header at the start of every shard file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ShardHeader {
    pub index: u32,
    pub rows: u32,
    pub first_row: u64,
    pub top_k: u32,
    pub seq_len: u32,
    pub vocab_size: u32,
    pub bytes_per_token: u32,
    pub encoding_tag: u8,
    pub id_bytes: u8,
    pub tail_samples: u16,
    pub step: f32,
}

impl ShardHeader {
    /// The header a shard of this layout must carry. Sizes were validated to fit by the spec.
    pub fn expected(
        layout: &Layout,
        vocab_size: usize,
        seq_len: usize,
        index: usize,
        first_row: usize,
        rows: usize,
    ) -> Self {
        ShardHeader {
            index: index as u32,
            rows: rows as u32,
            first_row: first_row as u64,
            top_k: layout.top_k as u32,
            seq_len: seq_len as u32,
            vocab_size: vocab_size as u32,
            bytes_per_token: layout.bytes_per_token() as u32,
            encoding_tag: layout.encoding.tag(),
            id_bytes: layout.id_dtype.bytes() as u8,
            tail_samples: layout.tail_samples as u16,
            step: layout.encoding.step().unwrap_or(0.0),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&SHARD_VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.index.to_le_bytes());
        b[12..16].copy_from_slice(&self.rows.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_row.to_le_bytes());
        b[24..28].copy_from_slice(&self.top_k.to_le_bytes());
        b[28..32].copy_from_slice(&self.seq_len.to_le_bytes());
        b[32..36].copy_from_slice(&self.vocab_size.to_le_bytes());
        b[36..40].copy_from_slice(&self.bytes_per_token.to_le_bytes());
        b[40] = self.encoding_tag;
        b[41] = self.id_bytes;
        b[42..44].copy_from_slice(&self.tail_samples.to_le_bytes());
        b[44..48].copy_from_slice(&self.step.to_le_bytes());
        b
    }

    /// Parses a header; the error says what is wrong (the caller adds the file name).
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < HEADER_BYTES {
            return Err(format!("truncated: {} bytes, shorter than the {HEADER_BYTES}-byte header", b.len()));
        }
        if b[0..4] != MAGIC {
            return Err(format!("not a teacher cache shard (magic {:02x?}, expected \"DSTC\")", &b[0..4]));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let version = u32_at(4);
        if version != SHARD_VERSION {
            return Err(format!("shard format version {version}, this build reads version {SHARD_VERSION}"));
        }
        Ok(ShardHeader {
            index: u32_at(8),
            rows: u32_at(12),
            first_row: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            top_k: u32_at(24),
            seq_len: u32_at(28),
            vocab_size: u32_at(32),
            bytes_per_token: u32_at(36),
            encoding_tag: b[40],
            id_bytes: b[41],
            tail_samples: u16::from_le_bytes([b[42], b[43]]),
            step: f32::from_le_bytes(b[44..48].try_into().expect("4 bytes")),
        })
    }

    /// Describes the first field in which `self` (found) differs from `expected`.
    pub fn mismatch(&self, expected: &ShardHeader) -> Option<String> {
        let fields: [(&str, String, String); 11] = [
            ("shard index", self.index.to_string(), expected.index.to_string()),
            ("first_row", self.first_row.to_string(), expected.first_row.to_string()),
            ("rows", self.rows.to_string(), expected.rows.to_string()),
            ("top_k", self.top_k.to_string(), expected.top_k.to_string()),
            ("seq_len", self.seq_len.to_string(), expected.seq_len.to_string()),
            ("vocab_size", self.vocab_size.to_string(), expected.vocab_size.to_string()),
            ("bytes_per_token", self.bytes_per_token.to_string(), expected.bytes_per_token.to_string()),
            ("logprob encoding", self.encoding_tag.to_string(), expected.encoding_tag.to_string()),
            ("id bytes", self.id_bytes.to_string(), expected.id_bytes.to_string()),
            ("tail_samples", self.tail_samples.to_string(), expected.tail_samples.to_string()),
            ("logprob_step", self.step.to_string(), expected.step.to_string()),
        ];
        fields
            .into_iter()
            .find(|(_, found, want)| found != want)
            .map(|(name, found, want)| format!("header says {name} {found}, the manifest expects {want}"))
    }
}

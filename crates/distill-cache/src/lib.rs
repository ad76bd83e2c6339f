//! Storage format of an offline LLM teacher cache, in pure Rust (no libtorch).
//!
//! A teacher model run once over the packed training rows (`seq_len` tokens each; row `r` =
//! training block `r`) produces, at every position, its top-k next-token ids and
//! log-probabilities. This crate stores them compactly in checksummed shard files, lets an
//! interrupted capture resume at the last complete shard, and reads rows back decoded.
//!
//! # What is stored per token
//! - `ids[K]`: the teacher's top-k token ids, by descending probability;
//! - `logp[K]`: their log-probabilities at temperature 1 over the **full** vocabulary,
//!   `logp_i = z_i − logsumexp(z)`;
//! - `log_tail`: log of the probability mass outside the top-k at T = 1 (`-inf` when it is 0);
//! - optionally (`tail_samples = S > 0`), `S` more ids drawn with replacement from the teacher's
//!   distribution restricted to the tokens outside the top-k, with their log-probabilities, stored
//!   after the top-k entries in the same arrays. Giving each the mass `exp(log_tail) / S` makes the
//!   stored distribution an unbiased estimate of the full one at T = 1 (the trainer's
//!   `TailSamples` documents how it is used at other temperatures).
//!
//! # Reconstructing a temperature
//! With `p_i = exp(logp_i)`, tail mass `m = exp(log_tail)` and vocabulary size `V`, the loss
//! uses `K + 1` bins with log-weights
//!
//! ```text
//! a_i    = logp_i / T                                    (i < K)
//! a_tail = ln(V − K) + (log_tail − ln(V − K)) / T        (the V − K tail tokens modelled as equal)
//! q̂_T    = softmax(a_0, …, a_{K−1}, a_tail)              (drop the tail bin when K = V)
//! ```
//!
//! The teacher's true distribution at temperature `T` is `q_T(v) ∝ p_v^{1/T}`, so:
//! - at `T = 1` the `K + 1` bins are exact (`a_tail = log_tail`, the bins are `p_i` and `m`);
//! - at `T ≠ 1` the top-k bins are exact up to the tail bin's mass, which assumes a uniform tail:
//!   it uses `(V−K)^{1−1/T} m^{1/T}` for `Σ_tail p_v^{1/T}`, an overestimate for `T > 1` and an
//!   underestimate for `T < 1` (Jensen), exact only when the tail is uniform;
//! - spreading the tail uniformly over the `V − K` tokens to get a full-vocabulary distribution
//!   `p̂` costs `KL(p ‖ p̂) = m · KL(p_tail / m ‖ uniform(V − K)) ≤ m · ln(V − K)`.
//!
//! # Encoding and its error
//! Each token is a fixed-size little-endian record (see [`format`](mod@format)): `logp_0` (f32),
//! `log_tail` (f32), `K` ids (`u16` when `V ≤ 65,536`, else `u32`), then `K` log-prob entries:
//!
//! - `u8` (default, [`LogprobEncoding::U8`]): `c_i = round((logp_0 − logp_i) / step)` clamped to
//!   `[0, 255]`, decoded `logp_0 − c_i · step`; `step` is set at creation (default 1/16 nat).
//!   Entries within `255.5 · step` of the top-1 decode within `step / 2` (1/32 nat by default).
//!   Entries further below saturate at `logp_0 − 255 · step` (15.9 nats by default); each carries
//!   less than `e^{−255·step} ≈ 1.2e-7` of the top-1's probability
//!   ([`saturation_mass_bound`]), so saturation adds at most `(K − 1) · 1.2e-7` of probability.
//! - `f16` ([`LogprobEncoding::F16`]): `logp_0 − logp_i` as an IEEE half, relative error
//!   ≤ 2⁻¹¹ (about 0.01 nat at 20 nats below the top-1), no saturation, `-inf` kept.
//!
//! Entry 0's code is always 0 and is stored anyway, so all arrays have `K` entries. `logp_0` and
//! `log_tail` are exact. The decoded bins need not sum exactly to 1: renormalize (log-softmax
//! over the `K + 1` bins) before use. If each decoded log-weight is off by `δ_i ∈ [lo, hi]`, the
//! renormalized distribution is within `KL ≤ (hi − lo)² / 8` of the exact one (Hoeffding's
//! lemma): `step² / 8 ≈ 4.9e-4` nat for `u8` at the default step, apart from saturation.
//!
//! Bytes per token: `8 + K · (id bytes + log-prob bytes)` ([`bytes_per_token`]); at `K = 64`,
//! `V = 49,152`: 200 bytes with `u8`, 264 with `f16`.
//!
//! # Files
//! - `DIR/manifest.json` ([`Manifest`]): format name and version, the [`CacheSpec`] fields,
//!   `id_dtype`, `logprob_encoding` (+ `logprob_step`), `temperature_stored` = 1,
//!   `bytes_per_token`, `header_bytes`, the complete shards (`file`, `first_row`, `rows`,
//!   `bytes`, `sha256`), `tokens` stored and `complete`. Rewritten atomically (temporary file in
//!   the same directory, fsync, rename) after every shard.
//! - `DIR/shard-00000.bin`, …: a 48-byte header (magic `DSTC`, version, shard index,
//!   `first_row`, rows, `K`, `seq_len`, `V`, record size, encoding, step) then `rows_per_shard`
//!   rows of records (the last shard holds the rest). Written atomically, then listed.
//!
//! ```
//! use distill_cache::{CacheReader, CacheSpec, CacheWriter, LogprobEncoding};
//! # fn main() -> Result<(), distill_cache::CacheError> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path().join("teacher-cache");
//! let spec = CacheSpec {
//!     top_k: 2,
//!     tail_samples: 0,
//!     vocab_size: 100,
//!     seq_len: 3,
//!     rows_per_shard: 1,
//!     n_rows: 2,
//!     logprob_encoding: LogprobEncoding::default(),
//!     teacher_fingerprint: "teacher-sha256".into(),
//!     tokenizer_fingerprint: "tokenizer-sha256".into(),
//!     data_fingerprint: "data-sha256".into(),
//!     teacher: "SmolLM2-360M Q8_0".into(),
//! };
//! let mut writer = CacheWriter::create_or_resume(&dir, spec)?;
//! assert_eq!(writer.bytes_per_token(), 8 + 2 * (2 + 1));
//! // Two rows of 3 positions, top-2 each: p = 0.5, 0.25, tail 0.25.
//! let (half, quarter) = (0.5f32.ln(), 0.25f32.ln());
//! let ids: Vec<u32> = (0..12).collect();
//! let logp: Vec<f32> = [half, quarter].repeat(6);
//! let log_tail = vec![quarter; 6];
//! writer.push_rows(&ids, &logp, &log_tail)?;
//! let manifest = writer.finish()?;
//! assert!(manifest.complete);
//!
//! let reader = CacheReader::open(&dir)?;
//! reader.check_compatible("tokenizer-sha256", "data-sha256", 3, 100)?;
//! let (mut ids, mut logp, mut log_tail) = (Vec::new(), Vec::new(), Vec::new());
//! reader.read_rows(&[1], &mut ids, &mut logp, &mut log_tail)?;
//! assert_eq!(ids, [6, 7, 8, 9, 10, 11]);
//! assert!((logp[1] - quarter).abs() <= 1.0 / 32.0);
//! assert_eq!(log_tail, [quarter; 3]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod compare;
pub mod error;
pub mod format;
pub mod inspect;
pub mod manifest;
mod merge;
pub mod reader;
mod shard;
pub mod writer;

pub use compare::{compare, Comparison, CONFIDENT_LEAD};
pub use error::{CacheError, FieldMismatch, Result};
pub use format::{
    bytes_per_token, dequantize, quantize, saturation_mass_bound, IdDtype, LogprobEncoding, DEFAULT_LOGPROB_STEP,
    HEADER_BYTES,
};
pub use inspect::{inspect, InspectReport};
pub use manifest::{shard_file_name, CacheSpec, Manifest, Part, ShardEntry, FORMAT_NAME, MANIFEST_FILE};
pub use merge::merge;
pub use reader::CacheReader;
pub use writer::{CacheWriter, TokenId, NORMALIZATION_TOLERANCE};

//! Writing a cache: create or resume, push whole rows, finish.
//!
//! Rows are streamed into a temporary shard file (`.shard-NNNNN.bin.tmp-…`) while being hashed;
//! when the shard holds its rows it is fsynced and renamed into place, then the manifest is
//! rewritten (atomically) to list it. A crash therefore leaves at worst a temporary file or a
//! shard the manifest does not list; both are deleted on resume and those rows are captured
//! again. Only one writer may use a directory at a time.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io, CacheError, Result};
use crate::format::{Layout, ShardHeader};
use crate::manifest::{
    hex, is_shard_file_name, is_temp_file_name, shard_file_name, sync_dir, temp_path, CacheSpec, Manifest, Part,
    ShardEntry,
};
use crate::shard;

/// How far above 0 the log-sum-exp of a token's top-k log-probabilities and `log_tail` may be
/// (in nats) before [`CacheWriter::push_rows`] rejects it as not normalized at T = 1. Also the
/// largest top-1 log-probability accepted.
pub const NORMALIZATION_TOLERANCE: f32 = 0.05;

/// An integer token id type accepted by [`CacheWriter::push_rows`] (`u16`, `u32`, `u64`,
/// `usize`, `i32`, `i64`).
pub trait TokenId: Copy + fmt::Display {
    /// The id as an index, `None` when negative.
    fn as_index(self) -> Option<u64>;
}

macro_rules! token_id {
    ($($t:ty),*) => {$(
        impl TokenId for $t {
            fn as_index(self) -> Option<u64> {
                u64::try_from(self).ok()
            }
        }
    )*};
}
token_id!(u16, u32, u64, usize, i32, i64);

/// A shard being written to its temporary file.
struct OpenShard {
    index: usize,
    rows: usize,
    rows_written: usize,
    tmp: PathBuf,
    file: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl OpenShard {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        self.file.write_all(bytes)
    }
}

/// Writes a teacher cache shard by shard; see the [crate documentation](crate) for the format.
pub struct CacheWriter {
    dir: PathBuf,
    manifest: Manifest,
    layout: Layout,
    next_row: usize,
    current: Option<OpenShard>,
    scratch: Vec<u8>,
    poisoned: bool,
}

impl CacheWriter {
    /// Starts a capture in `dir` (created if needed), or resumes the one there.
    ///
    /// - No `manifest.json`: stray shard and temporary files are deleted and an empty,
    ///   incomplete manifest is written; [`next_row`](Self::next_row) is 0.
    /// - A manifest with the same spec (the `teacher` description aside, which is kept from the
    ///   cache): every listed shard's size, header and sha256 are verified (the error names the
    ///   shard), temporary files and unlisted shards are deleted, and the capture resumes at the
    ///   first row not in a listed shard (a multiple of `rows_per_shard`).
    /// - A complete cache with the same spec: nothing to do ([`is_complete`](Self::is_complete),
    ///   [`finish`](Self::finish) returns its manifest).
    /// - A different spec: [`CacheError::SpecMismatch`] naming the first differing field.
    pub fn create_or_resume(dir: impl AsRef<Path>, spec: CacheSpec) -> Result<Self> {
        Self::create_or_resume_part(dir, spec, None)
    }

    /// As [`create_or_resume`](Self::create_or_resume), for part `index` of `count` of a capture
    /// split over machines (`Some((index, count))`): the writer takes rows
    /// [`Part::new`]`(index, count, shards).first_shard × rows_per_shard` onwards, up to its last
    /// shard's end. Resuming requires the same part.
    pub fn create_or_resume_part(dir: impl AsRef<Path>, spec: CacheSpec, part: Option<(usize, usize)>) -> Result<Self> {
        spec.validate()?;
        let part = match part {
            None => None,
            Some((index, count)) => {
                let n_shards = spec.n_rows.div_ceil(spec.rows_per_shard);
                if count == 0 || index >= count || count > n_shards {
                    return Err(CacheError::InvalidSpec {
                        field: "part",
                        message: format!(
                            "part {} of {count}: needs 1 <= part <= count <= the {n_shards} shards of the capture",
                            index + 1
                        ),
                    });
                }
                Some(Part::new(index, count, n_shards))
            }
        };
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io(&dir, "create cache directory"))?;
        let manifest = match Manifest::load(&dir) {
            Ok(manifest) => {
                compare_spec(&dir, &manifest, &spec)?;
                if manifest.part != part {
                    let name = |p: Option<Part>| {
                        p.map_or("the whole capture".to_owned(), |p| format!("part {} of {}", p.index + 1, p.count))
                    };
                    return Err(CacheError::SpecMismatch {
                        dir: dir.clone(),
                        field: "part",
                        cache: name(manifest.part),
                        requested: name(part),
                    });
                }
                let first = manifest.shard_range().start;
                for (j, entry) in manifest.shards.iter().enumerate() {
                    shard::verify_file(&dir.join(&entry.file), &manifest, first + j, entry)?;
                }
                remove_strays(&dir, &manifest)?;
                manifest
            }
            Err(CacheError::MissingManifest { .. }) => {
                let mut manifest = Manifest::new(&spec);
                manifest.part = part;
                remove_strays(&dir, &manifest)?;
                manifest.store(&dir)?;
                manifest
            }
            Err(e) => return Err(e),
        };
        let layout = Layout::new(manifest.top_k, manifest.tail_samples, manifest.vocab_size, manifest.logprob_encoding);
        let next_row = manifest.row_range().start + manifest.rows_stored();
        Ok(CacheWriter { dir, manifest, layout, next_row, current: None, scratch: Vec::new(), poisoned: false })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest as last written (lists complete shards only).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// One past the last row this writer takes (`n_rows`, or its part's end).
    pub fn end_row(&self) -> usize {
        self.manifest.row_range().end
    }

    /// The next row [`push_rows`](Self::push_rows) expects (rows before it are stored or
    /// buffered in the open shard).
    pub fn next_row(&self) -> usize {
        self.next_row
    }

    /// Rows the capture covers.
    pub fn n_rows(&self) -> usize {
        self.manifest.n_rows
    }

    /// Whether the cache was already finished (a resume found nothing to do).
    pub fn is_complete(&self) -> bool {
        self.manifest.complete
    }

    /// Bytes of one token record.
    pub fn bytes_per_token(&self) -> usize {
        self.manifest.bytes_per_token
    }

    /// Appends whole rows, starting at [`next_row`](Self::next_row).
    ///
    /// # Shapes
    /// - `ids`: `[rows, seq_len, top_k + tail_samples]`, each position's top-k ids by descending
    ///   probability, then its tail samples, all `< vocab_size`
    /// - `logp`: `[rows, seq_len, top_k + tail_samples]`, log-probabilities at T = 1 over the full
    ///   vocabulary, non-increasing over the top-k
    /// - `log_tail`: `[rows, seq_len]`, log of the mass outside the top-k (may be `-inf`)
    ///
    /// The whole call is checked before anything is written: NaN, unsorted or positive
    /// log-probabilities, ids out of range, and positions whose top-k and tail mass do not sum
    /// to 1 (log-sum-exp off by more than [`NORMALIZATION_TOLERANCE`]) are rejected with the row,
    /// position and rank. A shard is written (atomically) and listed in the manifest each time
    /// one fills, the last one when row `n_rows − 1` arrives. After an I/O error the writer
    /// refuses further calls; open the directory again to resume.
    pub fn push_rows<I: TokenId>(&mut self, ids: &[I], logp: &[f32], log_tail: &[f32]) -> Result<()> {
        if self.poisoned {
            return Err(CacheError::Poisoned { dir: self.dir.clone() });
        }
        let rows = self.validate(ids, logp, log_tail)?;
        let result = self.write_rows(rows, ids, logp, log_tail);
        if result.is_err() {
            self.poisoned = true;
            self.discard_open_shard();
        }
        result
    }

    /// Marks the cache complete and returns the final manifest. Fails with
    /// [`CacheError::NotFinished`] unless all `n_rows` rows were pushed (the shards written so
    /// far stay, so the capture can be resumed).
    pub fn finish(mut self) -> Result<Manifest> {
        if self.poisoned {
            return Err(CacheError::Poisoned { dir: self.dir.clone() });
        }
        if !self.manifest.complete {
            if self.next_row < self.manifest.row_range().end || self.current.is_some() {
                return Err(CacheError::NotFinished {
                    dir: self.dir.clone(),
                    rows: self.next_row,
                    n_rows: self.manifest.n_rows,
                });
            }
            self.manifest.complete = true;
            self.manifest.store(&self.dir)?;
        }
        Ok(self.manifest.clone())
    }

    fn bad_rows(&self, message: String) -> CacheError {
        CacheError::BadRows { dir: self.dir.clone(), message }
    }

    /// Checks shapes and values; returns the number of rows.
    fn validate<I: TokenId>(&self, ids: &[I], logp: &[f32], log_tail: &[f32]) -> Result<usize> {
        let (k, s, vocab) = (self.layout.entries(), self.manifest.seq_len, self.manifest.vocab_size as u64);
        let top = self.manifest.top_k;
        if log_tail.len() % s != 0 {
            return Err(self.bad_rows(format!(
                "log_tail has {} values, not a whole number of rows of seq_len {s}",
                log_tail.len()
            )));
        }
        let rows = log_tail.len() / s;
        let tokens = rows * s;
        for (name, len) in [("ids", ids.len()), ("logp", logp.len())] {
            if len != tokens * k {
                return Err(self.bad_rows(format!(
                    "{name} has {len} values, expected rows × seq_len × (top_k + tail_samples) = {rows} × {s} × {k} = {}",
                    tokens * k
                )));
            }
        }
        if self.next_row + rows > self.manifest.row_range().end {
            return Err(CacheError::TooManyRows {
                dir: self.dir.clone(),
                next_row: self.next_row,
                pushed: rows,
                n_rows: self.manifest.n_rows,
            });
        }
        for t in 0..tokens {
            let at = |rank: usize| format!("row {}, position {}, rank {rank}", self.next_row + t / s, t % s);
            for (j, &id) in ids[t * k..(t + 1) * k].iter().enumerate() {
                if id.as_index().is_none_or(|v| v >= vocab) {
                    return Err(self.bad_rows(format!("id {id} at {} is not in 0..{vocab}", at(j))));
                }
            }
            let lp = &logp[t * k..(t + 1) * k];
            if !lp[0].is_finite() || lp[0] > NORMALIZATION_TOLERANCE {
                return Err(self.bad_rows(format!(
                    "top-1 log-probability {} at {} must be finite and ≤ 0 (log-probabilities z − logsumexp(z), not logits)",
                    lp[0],
                    at(0)
                )));
            }
            for j in 1..k {
                if lp[j].is_nan() {
                    return Err(self.bad_rows(format!("log-probability at {} is NaN", at(j))));
                }
                if j >= top {
                    // A tail sample: a log-probability, not above the top-1.
                    if lp[j] > lp[0] {
                        return Err(self.bad_rows(format!(
                            "tail sample log-probability {} at {} is above the top-1's {}",
                            lp[j],
                            at(j),
                            lp[0]
                        )));
                    }
                } else if lp[j] > lp[j - 1] {
                    return Err(self.bad_rows(format!(
                        "log-probabilities not sorted: {} at {} is above {} at rank {}",
                        lp[j],
                        at(j),
                        lp[j - 1],
                        j - 1
                    )));
                }
            }
            let tail = log_tail[t];
            if tail.is_nan() || tail > NORMALIZATION_TOLERANCE {
                return Err(self.bad_rows(format!(
                    "log_tail {tail} at row {}, position {} must be ≤ 0 or -inf",
                    self.next_row + t / s,
                    t % s
                )));
            }
            let m = lp[0].max(tail);
            let sum: f32 = lp[..top].iter().map(|&l| (l - m).exp()).sum::<f32>() + (tail - m).exp();
            let lse = m + sum.ln();
            if lse.abs() > NORMALIZATION_TOLERANCE {
                return Err(self.bad_rows(format!(
                    "top-k and tail probabilities sum to {:.4} at row {}, position {}: logp and log_tail must be log-probabilities at T = 1 over the full vocabulary",
                    lse.exp(),
                    self.next_row + t / s,
                    t % s
                )));
            }
        }
        Ok(rows)
    }

    fn write_rows<I: TokenId>(&mut self, rows: usize, ids: &[I], logp: &[f32], log_tail: &[f32]) -> Result<()> {
        let (k, s) = (self.layout.entries(), self.manifest.seq_len);
        for r in 0..rows {
            if self.current.is_none() {
                self.open_shard()?;
            }
            self.scratch.clear();
            for t in r * s..(r + 1) * s {
                // Ids were checked to be in 0..vocab_size ≤ u32::MAX.
                let row_ids = ids[t * k..(t + 1) * k].iter().map(|&id| id.as_index().unwrap_or(0) as u32);
                self.layout.encode(row_ids, &logp[t * k..(t + 1) * k], log_tail[t], &mut self.scratch);
            }
            let shard = self.current.as_mut().expect("a shard is open");
            shard.write(&self.scratch).map_err(io(&shard.tmp, "write shard"))?;
            shard.rows_written += 1;
            self.next_row += 1;
            if shard.rows_written == shard.rows {
                self.close_shard()?;
            }
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<()> {
        let index = self.manifest.shard_range().start + self.manifest.shards.len();
        let first_row = index * self.manifest.rows_per_shard;
        debug_assert_eq!(first_row, self.next_row);
        let rows = self.manifest.rows_in_shard(index);
        let tmp = temp_path(&self.dir.join(shard_file_name(index)));
        let file =
            OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io(&tmp, "create temporary shard"))?;
        let mut shard = OpenShard {
            index,
            rows,
            rows_written: 0,
            tmp,
            file: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let header = ShardHeader::expected(
            &self.layout,
            self.manifest.vocab_size,
            self.manifest.seq_len,
            index,
            first_row,
            rows,
        );
        let result = shard.write(&header.to_bytes()).map_err(io(&shard.tmp, "write shard"));
        self.current = Some(shard);
        result
    }

    /// Fsyncs and renames the full shard into place, then lists it in the manifest.
    fn close_shard(&mut self) -> Result<()> {
        let shard = self.current.take().expect("a shard is open");
        let OpenShard { index, rows, tmp, file, hasher, bytes, .. } = shard;
        let result = (|| {
            let file = file.into_inner().map_err(|e| io(&tmp, "flush shard")(e.into_error()))?;
            file.sync_all().map_err(io(&tmp, "fsync shard"))?;
            drop(file);
            let name = shard_file_name(index);
            let path = self.dir.join(&name);
            fs::rename(&tmp, &path).map_err(io(&path, "rename temporary shard"))?;
            sync_dir(&self.dir);
            self.manifest.shards.push(ShardEntry {
                file: name,
                first_row: index * self.manifest.rows_per_shard,
                rows,
                bytes,
                sha256: hex(&hasher.finalize()),
            });
            self.manifest.tokens = self.manifest.rows_stored() * self.manifest.seq_len;
            self.manifest.store(&self.dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn discard_open_shard(&mut self) {
        if let Some(shard) = self.current.take() {
            drop(shard.file);
            let _ = fs::remove_file(&shard.tmp);
        }
    }
}

impl Drop for CacheWriter {
    /// Removes the temporary file of a partly written shard (its rows are captured again on
    /// resume). Complete shards and the manifest stay.
    fn drop(&mut self) {
        self.discard_open_shard();
    }
}

impl fmt::Debug for CacheWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheWriter")
            .field("dir", &self.dir)
            .field("next_row", &self.next_row)
            .field("n_rows", &self.manifest.n_rows)
            .field("shards", &self.manifest.shards.len())
            .finish()
    }
}

/// The first field in which the cache's spec differs from the requested one (`teacher` aside).
pub(crate) fn compare_spec(dir: &Path, manifest: &Manifest, spec: &CacheSpec) -> Result<()> {
    let cache = manifest.spec();
    let step = |s: &CacheSpec| s.logprob_encoding.step().map_or_else(|| "none".to_owned(), |v| v.to_string());
    let fields: [(&'static str, String, String); 11] = [
        ("top_k", cache.top_k.to_string(), spec.top_k.to_string()),
        ("tail_samples", cache.tail_samples.to_string(), spec.tail_samples.to_string()),
        ("vocab_size", cache.vocab_size.to_string(), spec.vocab_size.to_string()),
        ("seq_len", cache.seq_len.to_string(), spec.seq_len.to_string()),
        ("rows_per_shard", cache.rows_per_shard.to_string(), spec.rows_per_shard.to_string()),
        ("n_rows", cache.n_rows.to_string(), spec.n_rows.to_string()),
        ("logprob_encoding", cache.logprob_encoding.name().to_owned(), spec.logprob_encoding.name().to_owned()),
        ("logprob_step", step(&cache), step(spec)),
        ("teacher_fingerprint", cache.teacher_fingerprint.clone(), spec.teacher_fingerprint.clone()),
        ("tokenizer_fingerprint", cache.tokenizer_fingerprint.clone(), spec.tokenizer_fingerprint.clone()),
        ("data_fingerprint", cache.data_fingerprint.clone(), spec.data_fingerprint.clone()),
    ];
    match fields.into_iter().find(|(_, c, r)| c != r) {
        Some((field, cache, requested)) => {
            Err(CacheError::SpecMismatch { dir: dir.to_path_buf(), field, cache, requested })
        }
        None => Ok(()),
    }
}

/// Deletes temporary files of interrupted writes and shard files the manifest does not list.
fn remove_strays(dir: &Path, manifest: &Manifest) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(io(dir, "list cache directory"))?;
    for entry in entries {
        let entry = entry.map_err(io(dir, "list cache directory"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let listed = manifest.shards.iter().any(|s| s.file == name);
        if is_temp_file_name(name) || (is_shard_file_name(name) && !listed) {
            let path = entry.path();
            if path.is_file() {
                fs::remove_file(&path).map_err(io(&path, "remove stray file"))?;
            }
        }
    }
    Ok(())
}

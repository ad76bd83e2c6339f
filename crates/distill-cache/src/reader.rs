//! Reading a complete cache: memory-mapped shards, lazily verified checksums, decoded rows.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::error::{io, CacheError, FieldMismatch, Result};
use crate::format::{Layout, HEADER_BYTES};
use crate::manifest::{sha256_hex, Manifest, ShardEntry};
use crate::shard;

struct Shard {
    path: PathBuf,
    map: Mmap,
    entry: ShardEntry,
    /// Set once the sha256 has been computed: `None` when it matches, else the actual digest.
    verified: OnceLock<Option<String>>,
}

/// Reads a complete teacher cache. `Send + Sync`: rows can be read from several threads.
///
/// Opening parses the manifest and maps every shard, checking its size and header; the sha256
/// of a shard is verified the first time one of its rows is read (once per reader, thread-safe),
/// or for all shards by [`verify_all`](Self::verify_all).
///
/// Shard files are mapped read-only; the writer never modifies a finished shard in place, but
/// another process truncating one while it is mapped would crash this one (the usual mmap caveat).
pub struct CacheReader {
    dir: PathBuf,
    manifest: Manifest,
    layout: Layout,
    shards: Vec<Shard>,
}

impl CacheReader {
    /// Opens the cache in `dir`.
    ///
    /// Errors: [`CacheError::MissingManifest`], [`CacheError::BadManifest`] (invalid JSON, other
    /// format, inconsistent), [`CacheError::Incomplete`] (capture not finished),
    /// [`CacheError::Io`] (a shard missing), [`CacheError::BadShard`] (wrong size or header).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::load(&dir)?;
        if let Some(p) = manifest.part {
            return Err(CacheError::Partial { dir, index: p.index + 1, count: p.count });
        }
        if !manifest.complete {
            return Err(CacheError::Incomplete { dir, rows: manifest.rows_stored(), n_rows: manifest.n_rows });
        }
        let mut shards = Vec::with_capacity(manifest.shards.len());
        for (index, entry) in manifest.shards.iter().enumerate() {
            let path = dir.join(&entry.file);
            let file = File::open(&path).map_err(io(&path, "open shard"))?;
            let len = file.metadata().map_err(io(&path, "stat shard"))?.len();
            if len != entry.bytes {
                // Reports the truncation before mapping (an empty file cannot be mapped).
                shard::check_size_and_header(&path, len, &[], &manifest, index, entry)?;
            }
            // SAFETY: the map is read-only and private to this reader; see the caveat on the type.
            let map = unsafe { Mmap::map(&file) }.map_err(io(&path, "mmap shard"))?;
            // The file may have shrunk since the stat: a short map is a size error, not a panic.
            let header = map.get(..HEADER_BYTES).unwrap_or(&[]);
            shard::check_size_and_header(&path, map.len() as u64, header, &manifest, index, entry)?;
            shards.push(Shard { path, map, entry: entry.clone(), verified: OnceLock::new() });
        }
        let layout = Layout::new(manifest.top_k, manifest.tail_samples, manifest.vocab_size, manifest.logprob_encoding);
        Ok(CacheReader { dir, manifest, layout, shards })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Rows in the cache.
    pub fn n_rows(&self) -> usize {
        self.manifest.n_rows
    }

    /// Tokens per row.
    pub fn seq_len(&self) -> usize {
        self.manifest.seq_len
    }

    /// Top-k entries per position.
    pub fn top_k(&self) -> usize {
        self.manifest.top_k
    }

    /// Tail samples per position (after the top-k entries).
    pub fn tail_samples(&self) -> usize {
        self.manifest.tail_samples
    }

    /// Entries per position in decoded rows: top-k plus tail samples.
    pub fn entries(&self) -> usize {
        self.manifest.top_k + self.manifest.tail_samples
    }

    /// Bytes of one token record.
    pub fn bytes_per_token(&self) -> usize {
        self.manifest.bytes_per_token
    }

    /// Decodes rows `rows` (any order, repeats allowed) into the three buffers, which are cleared
    /// and resized (their capacity is reused).
    ///
    /// # Shapes
    /// - `ids`: `[rows.len(), seq_len, top_k + tail_samples]`, row-major: the top-k ids, then
    ///   the tail samples
    /// - `logp`: `[rows.len(), seq_len, top_k + tail_samples]`, decoded log-probabilities at T = 1
    /// - `log_tail`: `[rows.len(), seq_len]`
    ///
    /// The first read of a shard verifies its sha256 ([`CacheError::ChecksumMismatch`] names it).
    pub fn read_rows(
        &self,
        rows: &[usize],
        ids: &mut Vec<i64>,
        logp: &mut Vec<f32>,
        log_tail: &mut Vec<f32>,
    ) -> Result<()> {
        let (k, s, rps) = (self.layout.entries(), self.manifest.seq_len, self.manifest.rows_per_shard);
        if let Some(&row) = rows.iter().find(|&&r| r >= self.manifest.n_rows) {
            return Err(CacheError::RowOutOfRange { dir: self.dir.clone(), row, n_rows: self.manifest.n_rows });
        }
        ids.clear();
        ids.resize(rows.len() * s * k, 0);
        logp.clear();
        logp.resize(rows.len() * s * k, 0.0);
        log_tail.clear();
        log_tail.resize(rows.len() * s, 0.0);
        let bpt = self.layout.bytes_per_token();
        for (j, &row) in rows.iter().enumerate() {
            let index = row / rps;
            self.verify(index)?;
            let shard = &self.shards[index];
            let start = HEADER_BYTES + (row - index * rps) * s * bpt;
            let records = &shard.map[start..start + s * bpt];
            for (t, rec) in records.chunks_exact(bpt).enumerate() {
                let at = (j * s + t) * k;
                log_tail[j * s + t] = self.layout.decode(rec, &mut ids[at..at + k], &mut logp[at..at + k]);
                // The sha256 proves only that the shard is the one the manifest lists: an id past
                // the vocabulary would index out of bounds in the loss.
                let v = self.manifest.vocab_size as i64;
                if let Some(&bad) = ids[at..at + k].iter().find(|&&id| id >= v) {
                    return Err(CacheError::BadShard {
                        path: shard.path.clone(),
                        message: format!("row {row}, position {t}: token id {bad} is past the vocabulary ({v})"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Verifies the sha256 of every shard not verified yet (in parallel); the error names the
    /// first corrupt shard.
    pub fn verify_all(&self) -> Result<()> {
        let results: Vec<Result<()>> = (0..self.shards.len()).into_par_iter().map(|i| self.verify(i)).collect();
        results.into_iter().collect()
    }

    /// Checks that the cache was made for this run: same tokenizer and data fingerprints, same
    /// `seq_len` and vocabulary size. One error lists every difference.
    pub fn check_compatible(
        &self,
        tokenizer_fingerprint: &str,
        data_fingerprint: &str,
        seq_len: usize,
        vocab_size: usize,
    ) -> Result<()> {
        let m = &self.manifest;
        let candidates = [
            ("tokenizer_fingerprint", m.tokenizer_fingerprint.clone(), tokenizer_fingerprint.to_owned()),
            ("data_fingerprint", m.data_fingerprint.clone(), data_fingerprint.to_owned()),
            ("seq_len", m.seq_len.to_string(), seq_len.to_string()),
            ("vocab_size", m.vocab_size.to_string(), vocab_size.to_string()),
        ];
        let fields: Vec<FieldMismatch> = candidates
            .into_iter()
            .filter(|(_, cache, expected)| cache != expected)
            .map(|(field, cache, expected)| FieldMismatch { field, cache, expected })
            .collect();
        if fields.is_empty() {
            Ok(())
        } else {
            Err(CacheError::Incompatible { dir: self.dir.clone(), fields })
        }
    }

    /// Verifies shard `index` once; later calls return the remembered outcome.
    fn verify(&self, index: usize) -> Result<()> {
        let shard = &self.shards[index];
        let mismatch = shard.verified.get_or_init(|| {
            let actual = sha256_hex(&shard.map);
            (actual != shard.entry.sha256).then_some(actual)
        });
        match mismatch {
            None => Ok(()),
            Some(actual) => Err(CacheError::ChecksumMismatch {
                path: shard.path.clone(),
                expected: shard.entry.sha256.clone(),
                actual: actual.clone(),
            }),
        }
    }
}

impl fmt::Debug for CacheReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheReader")
            .field("dir", &self.dir)
            .field("n_rows", &self.manifest.n_rows)
            .field("shards", &self.shards.len())
            .finish()
    }
}

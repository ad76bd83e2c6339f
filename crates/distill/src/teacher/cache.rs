//! The offline teacher: run the teacher once over the packed training rows and keep its top-k
//! next-token log-probabilities ([`capture`]), then train students from that cache instead of
//! the model ([`CachedTeacher`]). Storage format, encoding and the exact reconstruction of a
//! temperature are documented in the `distill_cache` crate.
//!
//! With `tail_samples = S > 0` each position also stores `S` ids drawn with replacement from the
//! teacher's distribution restricted to the tokens outside its top-k (and their log-probs).
//! Giving each draw the mass `m/S` (`m` the tail mass) makes the stored sparse distribution an
//! unbiased estimate of the full one at T = 1 — `E[p̂] = p` — so forward-KL training from the
//! cache gets an unbiased gradient instead of knowing only the tail's total (see
//! [`TailSamples`](crate::losses::TailSamples)). Draws use a counter-based generator keyed by
//! (row, position), so a resumed capture draws the same samples as an uninterrupted one.
//!
//! A cache is tied to what produced it: the teacher's fingerprint, its tokenizer's, the packed
//! data's ([`distill_text::fingerprint`]) and `seq_len`. Training checks all of them before the
//! first step. Capture is deterministic (fixed batches aligned to shards), so a capture killed
//! midway and run again resumes at the last complete shard and ends with the same shard
//! checksums as an uninterrupted one.

use std::io::Read;
use std::path::Path;

use distill_cache::{CacheReader, CacheSpec, CacheWriter, LogprobEncoding, Manifest};
use distill_text::TokenBlocks;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::data::rng::SplitMix64;
use crate::data::text::lm_batch;
use crate::io::lm::{tokenizer_fingerprint, LoadedLm};
use crate::losses::divergence::SparseTeacher;
use crate::losses::sampled::TailSamples;
use crate::models::lm::ForwardOptions;
use crate::{Error, Result};

/// How [`capture`] runs.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Entries kept per token.
    pub top_k: usize,
    /// Tail samples per token (0: none; must be 0 when `top_k` is the whole vocabulary).
    pub tail_samples: usize,
    /// Rows per shard file (a multiple of `batch_rows`).
    pub rows_per_shard: usize,
    /// Rows per teacher forward.
    pub batch_rows: usize,
    pub encoding: LogprobEncoding,
    pub progress: bool,
    /// Capture only part `index` of `count` (0-based) of the rows: whole shards, for
    /// [`distill_cache::merge`].
    pub part: Option<(usize, usize)>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            top_k: 64,
            tail_samples: 64,
            rows_per_shard: 256,
            batch_rows: 8,
            encoding: LogprobEncoding::default(),
            progress: false,
            part: None,
        }
    }
}

/// A teacher's identity for cache checks: sha256 over the size and the first and last MiB of
/// each weight file, and the config when there is one. Cheap on multi-GB files; it is a
/// fingerprint, not a checksum.
pub fn model_fingerprint(source: &Path) -> Result<String> {
    let files: Vec<std::path::PathBuf> = if source.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(source)
            .map_err(|e| Error::io(source, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                n == "config.json" || n.ends_with(".safetensors")
            })
            .collect();
        v.sort();
        v
    } else {
        vec![source.to_path_buf()]
    };
    let mut h = Sha256::new();
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
        let len = file.metadata().map_err(|e| Error::io(&f, e))?.len();
        h.update(len.to_le_bytes());
        let mut buf = vec![0u8; (1 << 20).min(len as usize)];
        file.read_exact(&mut buf).map_err(|e| Error::io(&f, e))?;
        h.update(&buf);
        if len > 2 << 20 {
            use std::io::{Seek, SeekFrom};
            file.seek(SeekFrom::End(-(1 << 20))).map_err(|e| Error::io(&f, e))?;
            file.read_exact(&mut buf).map_err(|e| Error::io(&f, e))?;
            h.update(&buf);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The teacher's top-k at every position of `rows`, computed under no-grad: ids and log-probs at
/// T = 1, each `[B, T, K + S]` — the top-k by descending probability, then `s` [`sample_tail`]
/// draws (none when `s = 0`) — and the log tail mass `[B, T]`.
pub fn teacher_top_k(
    teacher: &LoadedLm,
    blocks: &TokenBlocks,
    rows: &[usize],
    k: usize,
    s: usize,
) -> Result<[Tensor; 3]> {
    tch::no_grad(|| {
        let b = lm_batch(blocks, rows, teacher.model.device());
        let logits = teacher.model.forward(&b.ids, b.mask.as_ref(), ForwardOptions::default())?.logits; // [B, T, V]
        let lp = logits.log_softmax(-1, Kind::Float); // [B, T, V]
        let (vals, ids) = lp.topk(k as i64, -1, true, true); // [B, T, K] each
        let tail_lp = lp.scatter_value(-1, &ids, f64::NEG_INFINITY); // [B, T, V], top-k at −∞
        let log_tail = tail_lp.logsumexp([-1i64].as_slice(), false); // [B, T]
        if s == 0 {
            return Ok([ids, vals, log_tail]);
        }
        let (sid, slp) = draw_tail(&tail_lp, &ids, rows, s); // [B, T, S] each
        Ok([Tensor::cat(&[ids, sid], 2), Tensor::cat(&[vals, slp], 2), log_tail])
    })
}

/// `S` draws per position, with replacement, from the teacher's T = 1 distribution outside its
/// top-k: ids `[B, T, S]` and their log-probs `[B, T, S]`. Row `rows[b]`, position `t` draws
/// from `SplitMix64::derive(0x7a11, row, t)`, so the samples depend only on the row and position.
/// Positions whose tail mass is 0 get the top-1 id with log-prob −∞ (weight 0).
///
/// # Shapes
/// `log_probs: [B, T, V]`, `top_ids: [B, T, K]` → `([B, T, S], [B, T, S])`.
pub fn sample_tail(log_probs: &Tensor, top_ids: &Tensor, rows: &[usize], s: usize) -> (Tensor, Tensor) {
    tch::no_grad(|| draw_tail(&log_probs.scatter_value(-1, top_ids, f64::NEG_INFINITY), top_ids, rows, s))
}

/// [`sample_tail`] from the log-probs with the top-k already set to −∞ (`tail_lp: [B, T, V]`).
fn draw_tail(tail_lp: &Tensor, top_ids: &Tensor, rows: &[usize], s: usize) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let (b, t, v) = (tail_lp.size()[0], tail_lp.size()[1], tail_lp.size()[2]);
        let n = b * t;
        let tail_lp = tail_lp.reshape([n, v]); // [N, V]
        let cdf = tail_lp.to_kind(Kind::Double).exp().cumsum(1, Kind::Double); // [N, V]
        let mass = cdf.select(1, v - 1); // [N]
        let mut mass_v = vec![0f64; n as usize];
        mass.copy_data(&mut mass_v, n as usize);
        let mut u = Vec::with_capacity(n as usize * s);
        for (i, &m) in mass_v.iter().enumerate() {
            let (row, pos) = (rows[i / t as usize] as u64, (i % t as usize) as u64);
            let mut g = SplitMix64::derive(0x7a11, row, pos);
            // 53 random bits → [0, 1), scaled to the tail mass.
            u.extend((0..s).map(|_| (g.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * m));
        }
        let u = Tensor::from_slice(&u).view([n, s as i64]).to_device(tail_lp.device()); // [N, S]
                                                                                        // First index whose CDF exceeds u: never a top-k id (their CDF step is 0).
        let ids = u.searchsorted(&cdf, false, true, "right", None::<Tensor>).clamp_max(v - 1); // [N, S]
        let top1 = top_ids.reshape([n, -1]).narrow(1, 0, 1).expand([n, s as i64], false); // [N, S]
        let empty = mass.le(0.0).unsqueeze(1).expand([n, s as i64], false); // [N, S]
        let ids = ids.where_self(&empty.logical_not(), &top1);
        let slp = tail_lp.gather(1, &ids, false).masked_fill(&empty, f64::NEG_INFINITY); // [N, S]
        (ids.view([b, t, s as i64]), slp.view([b, t, s as i64]))
    })
}

/// Runs `teacher` over every row of `blocks` and stores its top-k in `dir`, resuming a capture
/// that was interrupted there. Returns the final manifest.
pub fn capture(teacher: &LoadedLm, blocks: &TokenBlocks, dir: &Path, opts: &CaptureOptions) -> Result<Manifest> {
    let n_rows = blocks.n_blocks();
    if n_rows == 0 {
        return Err(Error::Invalid("no rows to capture (the text is shorter than one sequence)".into()));
    }
    let batch = opts.batch_rows.max(1);
    if opts.rows_per_shard == 0 || opts.rows_per_shard % batch != 0 {
        return Err(Error::Invalid(format!(
            "rows per shard ({}) must be a positive multiple of the batch ({batch})",
            opts.rows_per_shard
        )));
    }
    let cfg = teacher.model.config();
    let spec = CacheSpec {
        top_k: opts.top_k,
        tail_samples: opts.tail_samples,
        vocab_size: cfg.vocab_size as usize,
        seq_len: blocks.seq_len,
        rows_per_shard: opts.rows_per_shard,
        n_rows,
        logprob_encoding: opts.encoding,
        teacher_fingerprint: model_fingerprint(&teacher.source)?,
        tokenizer_fingerprint: tokenizer_fingerprint(&teacher.tokenizer),
        data_fingerprint: blocks.fingerprint(),
        teacher: teacher.source.display().to_string(),
    };
    let mut w = CacheWriter::create_or_resume_part(dir, spec, opts.part)?;
    let (start, end) = (w.next_row(), w.end_row());
    let bar = rows_bar(opts.progress, n_rows, start);
    let (mut ids, mut lps, mut tails) = (Vec::<i64>::new(), Vec::<f32>::new(), Vec::<f32>::new());
    for first in (start..end).step_by(batch) {
        let rows: Vec<usize> = (first..(first + batch).min(end)).collect();
        let [i, v, t] = teacher_top_k(teacher, blocks, &rows, opts.top_k, opts.tail_samples)?;
        ids.resize(i.numel(), 0);
        lps.resize(v.numel(), 0.0);
        tails.resize(t.numel(), 0.0);
        i.view([-1]).copy_data(&mut ids, i.numel());
        v.view([-1]).copy_data(&mut lps, v.numel());
        t.view([-1]).copy_data(&mut tails, t.numel());
        w.push_rows(&ids, &lps, &tails)?;
        bar.inc(rows.len() as u64);
    }
    bar.finish_and_clear();
    Ok(w.finish()?)
}

/// A capture's progress over `n_rows` rows from `start` (hidden without `progress`).
pub(crate) fn rows_bar(progress: bool, n_rows: usize, start: usize) -> ProgressBar {
    let bar = if progress { ProgressBar::new(n_rows as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:28}] {pos}/{len} rows ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("cache");
    bar.set_position(start as u64);
    bar
}

/// `distill cache`: packs `data` with the teacher's tokenizer and captures the teacher's top-k
/// (+ tail samples, none when the top-k is the whole vocabulary) over every training row into
/// `out`, resuming an interrupted capture there. Says what it caches on stderr when
/// `opts.progress`. Returns the final manifest.
pub fn capture_text(
    teacher: &LoadedLm,
    data: &distill_text::TextDataConfig,
    opts: &CaptureOptions,
    out: &Path,
) -> Result<Manifest> {
    data.validate().map_err(|e| Error::Invalid(format!("data: {e}")))?;
    let chat = teacher.chat();
    let ds = distill_text::build_dataset_chat(data, &teacher.tokenizer, chat.as_ref().map(|c| c as _))?;
    let vocab = teacher.model.config().vocab_size as usize;
    let mut opts = opts.clone();
    if opts.top_k >= vocab {
        opts.tail_samples = 0;
    }
    if opts.progress {
        let samples = match opts.tail_samples {
            0 => String::new(),
            s => format!(" + {s} tail samples"),
        };
        eprintln!(
            "caching the teacher's top-{}{samples} over {} rows of {} tokens into {}",
            opts.top_k,
            ds.train.n_blocks(),
            ds.train.seq_len,
            out.display()
        );
    }
    capture(teacher, &ds.train, out, &opts)
}

/// Teacher distributions read from a cache, for training.
pub struct CachedTeacher {
    reader: CacheReader,
    vocab_size: usize,
}

impl CachedTeacher {
    /// Opens the cache in `dir` and checks that it was captured from this teacher on these rows.
    pub fn open(dir: &Path, teacher: &LoadedLm, blocks: &TokenBlocks) -> Result<Self> {
        let reader = CacheReader::open(dir)?;
        let vocab = teacher.model.config().vocab_size as usize;
        reader.check_compatible(
            &tokenizer_fingerprint(&teacher.tokenizer),
            &blocks.fingerprint(),
            blocks.seq_len,
            vocab,
        )?;
        let fp = model_fingerprint(&teacher.source)?;
        let captured = &reader.manifest().teacher_fingerprint;
        if captured.starts_with("server:") {
            // Captured from a server (`distill cache --server`): its weights are not here to
            // compare; the tokenizer and rows were checked above, every token at capture.
            eprintln!(
                "teacher cache {}: captured from {}; the local teacher {} is used for evaluation only",
                dir.display(),
                reader.manifest().teacher,
                teacher.source.display()
            );
        } else if *captured != fp {
            return Err(Error::Invalid(format!(
                "cache {} was captured from another teacher ({}), not {}",
                dir.display(),
                reader.manifest().teacher,
                teacher.source.display()
            )));
        }
        if reader.n_rows() != blocks.n_blocks() {
            return Err(Error::Invalid(format!(
                "cache {} holds {} rows, the data has {}",
                dir.display(),
                reader.n_rows(),
                blocks.n_blocks()
            )));
        }
        Ok(CachedTeacher { reader, vocab_size: vocab })
    }

    /// Wraps an opened cache without checking it against a teacher or data (benchmarks).
    pub fn from_reader(reader: CacheReader) -> Self {
        let vocab_size = reader.manifest().vocab_size;
        CachedTeacher { reader, vocab_size }
    }

    /// Vocabulary size of the teacher.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The reader.
    pub fn reader(&self) -> &CacheReader {
        &self.reader
    }

    /// `rows` decoded, one row per position (`B·T`): the top-k and, when the cache has them,
    /// the tail samples.
    pub fn rows(&self, rows: &[usize], device: Device) -> Result<CachedRows> {
        let (mut ids, mut lp, mut tail) = (Vec::new(), Vec::new(), Vec::new());
        self.reader.read_rows(rows, &mut ids, &mut lp, &mut tail)?;
        let e = self.reader.entries() as i64;
        let (k, s) = (self.reader.top_k() as i64, self.reader.tail_samples() as i64);
        let ids = Tensor::from_slice(&ids).view([-1, e]).to_device(device); // [B·T, K+S]
        let logp = Tensor::from_slice(&lp).view([-1, e]).to_device(device); // [B·T, K+S]
        let log_tail = Tensor::from_slice(&tail).to_device(device); // [B·T]
        let top = SparseTeacher { ids: ids.narrow(1, 0, k), logp: logp.narrow(1, 0, k), log_tail };
        let samples = (s > 0).then(|| TailSamples { ids: ids.narrow(1, k, s), logp: logp.narrow(1, k, s) });
        Ok(CachedRows { top, samples })
    }
}

/// A typed view of cached teacher rows: the top-k (ids, log-probs at T = 1, log tail mass) and
/// the tail samples when the cache stores them.
#[derive(Debug)]
pub struct CachedRows {
    /// `[N, K]` ids and log-probs, `[N]` log tail mass.
    pub top: SparseTeacher,
    /// `[N, S]` ids and log-probs drawn from the tail.
    pub samples: Option<TailSamples>,
}

impl CachedRows {
    /// The rows at `idx` `[M]` (e.g. the positions with a real next token).
    pub fn select(&self, idx: &Tensor) -> CachedRows {
        let top = SparseTeacher {
            ids: self.top.ids.index_select(0, idx),
            logp: self.top.logp.index_select(0, idx),
            log_tail: self.top.log_tail.index_select(0, idx),
        };
        let samples = self
            .samples
            .as_ref()
            .map(|t| TailSamples { ids: t.ids.index_select(0, idx), logp: t.logp.index_select(0, idx) });
        CachedRows { top, samples }
    }
}

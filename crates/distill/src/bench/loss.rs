//! Benchmarks of the loss side of distillation, behind `distill bench loss`, `distill bench
//! cache-kl`, `distill bench cache-dump` and `distill bench step --config c --cache DIR`;
//! `bench/run.py` sets them next to their PyTorch twins (`bench/twin.py`).
//!
//! * [`bench_loss`]: forward + backward of `α·T²·KL(p_t ‖ p_s) + (1−α)·CE` from a student's
//!   final hidden states and output projection, either chunked ([`ChunkedKd`], an online teacher
//!   given as its hidden states and projection) or the naive way (full `[N, V]` logits for both,
//!   [`KdLoss`]). Time is the median of `reps` passes after `warmup`; memory is the **peak extra
//!   resident set** over the passes, `VmHWM − VmRSS` before them, with the kernel's peak reset
//!   through `/proc/self/clear_refs` ([`reset_peak_rss`]).
//! * [`cache_frontier`]: what a top-k cache loses, for each k: bytes per token and the KL from
//!   the teacher's full distribution to its reconstruction from the (quantized) top-k.
//! * [`open_step_cache`]: the offline cache of `bench/configs.json` configuration `c`, whose KD
//!   step [`bench_step`](crate::bench::bench_step) then reads the teacher's distributions from
//!   it instead of running a teacher forward.

use std::path::Path;
use std::time::Instant;

use distill_cache::{bytes_per_token, dequantize, quantize, CacheReader, LogprobEncoding};
use distill_text::TokenBlocks;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::bench::StepBenchSpec;
use crate::data::text::lm_batch;
use crate::losses::divergence::coarsen;
use crate::losses::response::KdLoss;
use crate::losses::{ChunkTeacher, ChunkedKd, Divergence, SparseTeacher};
use crate::models::lm::{CausalLm, ForwardOptions};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Peak resident set

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`, …).
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A field of `/proc/meminfo` in KiB (`MemAvailable`, …).
pub fn proc_meminfo_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the kernel's peak resident set of this process (`VmHWM`) to the current one by writing
/// `5` to `/proc/self/clear_refs` (Linux ≥ 4.0), checks that it took effect, and returns the
/// current resident set in KiB.
pub fn reset_peak_rss() -> Result<u64> {
    let path = Path::new("/proc/self/clear_refs");
    std::fs::write(path, b"5").map_err(|e| Error::io(path, e))?;
    let (hwm, rss) = match (proc_status_kib("VmHWM"), proc_status_kib("VmRSS")) {
        (Some(h), Some(r)) => (h, r),
        _ => return Err(Error::Invalid("/proc/self/status has no VmHWM/VmRSS: cannot measure peak memory".into())),
    };
    // A few pages may be touched between the reset and the read.
    if hwm > rss + 4096 {
        return Err(Error::Invalid(format!(
            "writing 5 to /proc/self/clear_refs did not reset the peak resident set (VmHWM {hwm} KiB, VmRSS {rss} KiB)"
        )));
    }
    Ok(rss)
}

// ---------------------------------------------------------------------------------------------
// Loss benchmark

/// What [`bench_loss`] runs.
#[derive(Debug, Clone)]
pub struct LossBenchOpts {
    /// Vocabulary size V.
    pub vocab: i64,
    /// Rows (tokens) N.
    pub tokens: i64,
    /// Hidden size H of student and teacher.
    pub hidden: i64,
    /// Rows per chunk of the chunked loss.
    pub chunk_rows: i64,
    /// Full `[N, V]` logits instead of chunks.
    pub naive: bool,
    pub warmup: usize,
    pub reps: usize,
    pub temperature: f64,
    pub alpha: f64,
}

impl Default for LossBenchOpts {
    fn default() -> Self {
        LossBenchOpts {
            vocab: 151_936,
            tokens: 2048,
            hidden: 896,
            chunk_rows: 256,
            naive: false,
            warmup: 1,
            reps: 3,
            temperature: 2.0,
            alpha: 0.5,
        }
    }
}

impl LossBenchOpts {
    /// Checks the sizes; the error names the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.vocab < 2 {
            return bad(format!("--vocab must be at least 2, got {}", self.vocab));
        }
        if self.tokens < 1 {
            return bad(format!("--tokens must be at least 1, got {}", self.tokens));
        }
        if self.hidden < 1 {
            return bad(format!("--hidden must be at least 1, got {}", self.hidden));
        }
        if self.chunk_rows < 1 {
            return bad(format!("--chunk-rows must be at least 1, got {}", self.chunk_rows));
        }
        if self.reps < 1 {
            return bad("--reps must be at least 1".into());
        }
        Ok(())
    }

    /// A rough estimate of the bytes one pass needs beyond its inputs (f32), from measurements
    /// under distill's `mallopt` (V 151,936, N 2,048): the naive loss peaks at about fourteen
    /// `[N, V]` tensors (PyTorch's glibc default at about seven), the chunked one at about a
    /// dozen `[C, V]` plus three `[V, H]`.
    pub fn estimated_extra_bytes(&self) -> u64 {
        let (n, v, h) = (self.tokens as u64, self.vocab as u64, self.hidden as u64);
        if self.naive {
            4 * (14 * n * v + 2 * v * h)
        } else {
            4 * (12 * (self.chunk_rows as u64).min(n) * v + 3 * v * h)
        }
    }
}

/// What [`bench_loss`] measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossBenchResult {
    /// `chunked` or `naive`.
    pub mode: String,
    pub vocab: i64,
    pub tokens: i64,
    pub hidden: i64,
    /// Rows per chunk (chunked only).
    pub chunk_rows: Option<i64>,
    pub threads: i32,
    /// Median milliseconds of one forward + backward over the timed passes.
    pub ms_per_pass: f64,
    /// Every timed pass, in order.
    pub ms_passes: Vec<f64>,
    /// Resident set before the first pass (inputs and parameters allocated), MiB.
    pub rss_before_mib: f64,
    /// Peak resident set over all passes (warm-up included) minus `rss_before_mib`: the memory
    /// the loss needs, allocator caching included. The headline number.
    pub extra_peak_mib: f64,
    /// Peak over the timed passes only minus the resident set just before them. With an
    /// allocator that keeps freed memory (distill's `mallopt`, jemalloc) this is about 0: the
    /// warm-up's peak is already resident.
    pub extra_peak_timed_mib: f64,
    /// Loss value of the first pass (identical inputs give the PyTorch twin the same value).
    pub loss: f64,
}

/// Times forward + backward of the KD loss from hidden states (see the module doc). Inputs come
/// from `manual_seed(0)` in the same order as `bench/twin.py loss`: student input `x [N, H]`,
/// upstream layer `A [H, H]` (trainable; the student's hidden states are `x·Aᵀ`), output weight
/// `W [V, H]` (trainable), teacher hidden states `[N, H]`, teacher weight `[V, H]`, labels `[N]`.
pub fn bench_loss(o: &LossBenchOpts) -> Result<LossBenchResult> {
    o.validate()?;
    let opts = (Kind::Float, Device::Cpu);
    // Initialise libtorch's thread pools and kernels on tiny shapes first, so that their one-off
    // allocations are not counted.
    let tiny = LossBenchOpts { vocab: 64, tokens: 16, hidden: 8, chunk_rows: 8, ..o.clone() };
    let t = make_inputs(&tiny, opts);
    loss_pass(&tiny, &t)?;
    drop(t);

    let inputs = make_inputs(o, opts);
    let rss0 = reset_peak_rss()?;
    let mut ms = Vec::new();
    let mut loss = f64::NAN;
    let mut hwm_warm = rss0;
    let mut rss_timed = rss0;
    for i in 0..o.warmup + o.reps {
        if i == o.warmup {
            hwm_warm = proc_status_kib("VmHWM").unwrap_or(0);
            rss_timed = reset_peak_rss()?;
        }
        let t0 = Instant::now();
        let l = loss_pass(o, &inputs)?;
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        if i == 0 {
            loss = l;
        }
        if i >= o.warmup {
            ms.push(dt);
        }
    }
    let hwm_timed = proc_status_kib("VmHWM").unwrap_or(0);
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(LossBenchResult {
        mode: if o.naive { "naive" } else { "chunked" }.into(),
        vocab: o.vocab,
        tokens: o.tokens,
        hidden: o.hidden,
        chunk_rows: (!o.naive).then_some(o.chunk_rows),
        threads: tch::get_num_threads(),
        ms_per_pass: sorted[sorted.len() / 2],
        ms_passes: ms,
        rss_before_mib: mib(rss0),
        extra_peak_mib: mib(hwm_warm.max(hwm_timed).saturating_sub(rss0)),
        extra_peak_timed_mib: mib(hwm_timed.saturating_sub(rss_timed)),
        loss,
    })
}

struct LossInputs {
    x: Tensor,
    a: Tensor,
    w: Tensor,
    th: Tensor,
    tw: Tensor,
    y: Tensor,
}

fn make_inputs(o: &LossBenchOpts, opts: (Kind, Device)) -> LossInputs {
    tch::manual_seed(0);
    let (n, v, h) = (o.tokens, o.vocab, o.hidden);
    let s = 1.0 / (h as f64).sqrt();
    // Scaled in place: a temporary `[V, H]` freed here would stay in the heap under distill's
    // `mallopt` and be counted in the baseline instead of the extra memory.
    let scaled = |size: [i64; 2]| {
        let mut t = Tensor::randn(size, opts);
        t *= s;
        t
    };
    let x = Tensor::randn([n, h], opts);
    let a = scaled([h, h]).set_requires_grad(true);
    let w = scaled([v, h]).set_requires_grad(true);
    let th = Tensor::randn([n, h], opts);
    let tw = scaled([v, h]);
    let y = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
    LossInputs { x, a, w, th, tw, y }
}

/// One forward + backward; returns the loss. Gradients accumulate into `A` and `W` (as
/// PyTorch's do without `zero_grad`).
fn loss_pass(o: &LossBenchOpts, i: &LossInputs) -> Result<f64> {
    let hidden = i.x.linear::<Tensor>(&i.a, None); // [N, H], has an upstream graph
    let total = if o.naive {
        let zs = hidden.linear::<Tensor>(&i.w, None); // [N, V]
        let zt = tch::no_grad(|| i.th.linear::<Tensor>(&i.tw, None)); // [N, V]
        KdLoss { temperature: o.temperature, alpha: o.alpha }.forward(&zs, &zt, Some(&i.y)).total
    } else {
        let kd = ChunkedKd {
            divergence: Divergence::ForwardKl,
            temperature: o.temperature,
            alpha: o.alpha,
            chunk_rows: o.chunk_rows,
        };
        let teacher = ChunkTeacher::DenseHidden { hidden: &i.th, weight: &i.tw, softcap: None };
        kd.forward(&hidden, &i.w, Some(teacher), Some(&i.y)).total
    };
    let value = total.double_value(&[]);
    total.backward();
    if !value.is_finite() {
        return Err(Error::Invalid(format!("loss benchmark: the loss is {value}")));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Cache frontier

/// What [`cache_frontier`] measures.
#[derive(Debug, Clone)]
pub struct FrontierOpts {
    /// Rows of `blocks` to run the teacher over (the first ones).
    pub rows: usize,
    /// The k values.
    pub ks: Vec<usize>,
    /// Quantization step of the `u8` encoding, nats.
    pub step: f32,
    /// Rows per teacher forward.
    pub batch_rows: usize,
}

/// One k of [`cache_frontier`]; every KL is in nats per token, averaged over tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrontierRow {
    pub k: usize,
    /// Bytes per token with the `u8` encoding (at the given step) and with `f16`.
    pub bytes_u8: usize,
    pub bytes_f16: usize,
    /// `KL(p ‖ p̂)` at T = 1, `p̂` = the full-vocabulary reconstruction (uniform tail) from the
    /// top-k after a `u8` round trip.
    pub kl_u8: f64,
    /// The same after an `f16` round trip.
    pub kl_f16: f64,
    /// The same from the exact top-k log-probabilities: truncation alone.
    pub kl_trunc: f64,
    /// KL between the exact K + 1 bins and the `u8`-decoded ones (renormalised): quantization
    /// alone.
    pub coarse_kl_u8: f64,
    /// The same for `f16`.
    pub coarse_kl_f16: f64,
    /// Mean probability mass outside the top k (T = 1).
    pub tail_mass: f64,
    /// At T = 2: KL from the true `softmax(z/2)` coarsened onto the K + 1 bins to the cache's
    /// K + 1-bin distribution at T = 2 (`u8`-decoded), i.e. what the uniform-tail assumption
    /// and quantization cost the soft targets.
    pub kl_t2_u8: f64,
    /// The same from the exact top-k (the uniform-tail assumption alone).
    pub kl_t2_exact: f64,
}

/// What [`cache_frontier`] measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrontierResult {
    pub vocab: i64,
    pub rows: usize,
    pub seq: usize,
    /// Tokens the means are over.
    pub tokens: usize,
    /// `u8` step, nats.
    pub step: f32,
    pub ks: Vec<FrontierRow>,
}

/// Runs `teacher` over the first `o.rows` rows of `blocks` and measures, for each k, what a
/// top-k cache of its distributions loses (see [`FrontierRow`]). Padded positions are skipped.
pub fn cache_frontier(teacher: &CausalLm, blocks: &TokenBlocks, o: &FrontierOpts) -> Result<FrontierResult> {
    let v = teacher.config().vocab_size;
    if o.ks.is_empty() {
        return Err(Error::Invalid("--k: give at least one k".into()));
    }
    if let Some(&k) = o.ks.iter().find(|&&k| k == 0 || k as i64 >= v) {
        return Err(Error::Invalid(format!("--k: every k must be in 1..{v} (the teacher's vocabulary), got {k}")));
    }
    if !(o.step.is_finite() && o.step > 0.0) {
        return Err(Error::Invalid(format!("--step must be a positive number of nats, got {}", o.step)));
    }
    if o.rows == 0 {
        return Err(Error::Invalid("--rows must be at least 1".into()));
    }
    if blocks.n_blocks() < o.rows {
        return Err(Error::Invalid(format!(
            "the data has {} rows of {} tokens, fewer than --rows {}",
            blocks.n_blocks(),
            blocks.seq_len,
            o.rows
        )));
    }
    let u8_enc = LogprobEncoding::U8 { step: o.step };
    let mut sums = vec![[0f64; 8]; o.ks.len()];
    let mut tokens = 0usize;
    let batch = o.batch_rows.max(1);
    for first in (0..o.rows).step_by(batch) {
        let rows: Vec<usize> = (first..(first + batch).min(o.rows)).collect();
        let b = lm_batch(blocks, &rows, teacher.device());
        tch::no_grad(|| -> Result<()> {
            let logits = teacher.forward(&b.ids, b.mask.as_ref(), ForwardOptions::default())?.logits; // [B, T, V]
            let mut lp = logits.view([-1, v]).log_softmax(-1, Kind::Float); // [M, V]
            if let Some(m) = &b.mask {
                lp = lp.index_select(0, &m.view([-1]).gt(0).nonzero().squeeze_dim(1));
            }
            tokens += lp.size()[0] as usize;
            let lp2 = (&lp / 2.0).log_softmax(-1, Kind::Float); // [M, V], softmax(z/2)
            let p = lp.exp(); // [M, V]
            for (ki, &k) in o.ks.iter().enumerate() {
                let (vals, ids) = lp.topk(k as i64, -1, true, true); // [M, K] each
                let log_tail = lp.scatter_value(1, &ids, f64::NEG_INFINITY).logsumexp(-1, false); // [M]
                let exact = SparseTeacher { ids: ids.shallow_clone(), logp: vals.shallow_clone(), log_tail };
                let q8 = round_trip(&vals, |l0, l| dequantize(l0, quantize(l0, l, o.step), o.step));
                let q16 = round_trip(&vals, |l0, l| l0 - half::f16::from_f32(l0 - l).to_f32());
                let with = |logp: Tensor| SparseTeacher {
                    ids: ids.shallow_clone(),
                    logp,
                    log_tail: exact.log_tail.shallow_clone(),
                };
                let (s8, s16) = (with(q8), with(q16));
                let kl_full = |s: &SparseTeacher| (&p * (&lp - s.reconstruct(1.0, v))).sum(Kind::Double);
                let fwd = |a: &Tensor, b: &Tensor| Divergence::ForwardKl.rows(a, b).sum(Kind::Double);
                let bins = exact.log_probs(1.0, v); // [M, K+1]
                let true2 = coarsen(&lp2, &ids); // [M, K+1]
                let vals = [
                    kl_full(&s8),
                    kl_full(&s16),
                    kl_full(&exact),
                    fwd(&bins, &s8.log_probs(1.0, v)),
                    fwd(&bins, &s16.log_probs(1.0, v)),
                    exact.log_tail.exp().sum(Kind::Double),
                    fwd(&true2, &s8.log_probs(2.0, v)),
                    fwd(&true2, &exact.log_probs(2.0, v)),
                ];
                for (acc, t) in sums[ki].iter_mut().zip(vals) {
                    *acc += t.double_value(&[]);
                }
            }
            Ok(())
        })?;
    }
    let n = tokens.max(1) as f64;
    let ks =
        o.ks.iter()
            .zip(&sums)
            .map(|(&k, s)| FrontierRow {
                k,
                bytes_u8: bytes_per_token(k, 0, v as usize, u8_enc),
                bytes_f16: bytes_per_token(k, 0, v as usize, LogprobEncoding::F16),
                kl_u8: s[0] / n,
                kl_f16: s[1] / n,
                kl_trunc: s[2] / n,
                coarse_kl_u8: s[3] / n,
                coarse_kl_f16: s[4] / n,
                tail_mass: s[5] / n,
                kl_t2_u8: s[6] / n,
                kl_t2_exact: s[7] / n,
            })
            .collect();
    Ok(FrontierResult { vocab: v, rows: o.rows, seq: blocks.seq_len, tokens, step: o.step, ks })
}

/// Applies `f(logp_0, logp_i)` to every entry of each row of sorted top-k log-probabilities
/// `[M, K]` (as the cache encodes them against the row's top-1).
fn round_trip(vals: &Tensor, f: impl Fn(f32, f32) -> f32) -> Tensor {
    let (m, k) = (vals.size()[0], vals.size()[1]);
    let mut buf = vec![0f32; (m * k) as usize];
    vals.contiguous().view([-1]).copy_data(&mut buf, (m * k) as usize);
    for row in buf.chunks_exact_mut(k as usize) {
        let l0 = row[0];
        for x in row.iter_mut() {
            *x = f(l0, *x);
        }
    }
    Tensor::from_slice(&buf).view([m, k])
}

/// The frontier as a table.
pub fn frontier_table(r: &FrontierResult) -> String {
    let mut s = format!(
        "top-k cache frontier: V = {}, {} tokens ({} rows x {}), u8 step {} nats; KL in nats/token\n",
        r.vocab, r.tokens, r.rows, r.seq, r.step
    );
    s += &format!(
        "{:>5} {:>8} {:>8} {:>10} {:>10} {:>10} {:>11} {:>11} {:>9} {:>10} {:>10}\n",
        "k",
        "B/tok u8",
        "B/tok f16",
        "KL u8",
        "KL f16",
        "KL trunc",
        "bins KL u8",
        "bins KL f16",
        "tail",
        "T2 KL u8",
        "T2 KL ex"
    );
    for k in &r.ks {
        s += &format!(
            "{:>5} {:>8} {:>8} {:>10.3e} {:>10.3e} {:>10.3e} {:>11.3e} {:>11.3e} {:>9.4} {:>10.3e} {:>10.3e}\n",
            k.k,
            k.bytes_u8,
            k.bytes_f16,
            k.kl_u8,
            k.kl_f16,
            k.kl_trunc,
            k.coarse_kl_u8,
            k.coarse_kl_f16,
            k.tail_mass,
            k.kl_t2_u8,
            k.kl_t2_exact
        );
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Cache dump (for bench/check_cache_format.py)

/// Decoded records of `rows` of a cache, as [`CacheReader::read_rows`] gives them.
#[derive(Debug, Clone, Serialize)]
pub struct CacheDump {
    pub rows: Vec<usize>,
    pub seq_len: usize,
    pub top_k: usize,
    pub vocab_size: usize,
    /// `[rows, seq_len, top_k]` flattened.
    pub ids: Vec<i64>,
    /// `[rows, seq_len, top_k]` flattened, f32 as f64; non-finite values as the strings
    /// `"-inf"`, `"inf"`, `"nan"`.
    pub logp: Vec<serde_json::Value>,
    /// `[rows, seq_len]`, same convention.
    pub log_tail: Vec<serde_json::Value>,
}

fn json_f32(x: f32) -> serde_json::Value {
    if x.is_finite() {
        serde_json::Value::from(f64::from(x))
    } else if x.is_nan() {
        "nan".into()
    } else if x > 0.0 {
        "inf".into()
    } else {
        "-inf".into()
    }
}

/// Opens the cache in `dir` (checking manifest, sizes and headers; the rows' shards' sha256 is
/// verified on read) and decodes `rows`.
pub fn cache_dump(dir: &Path, rows: &[usize]) -> Result<CacheDump> {
    let reader = CacheReader::open(dir).map_err(|e| Error::Invalid(e.to_string()))?;
    let (mut ids, mut logp, mut tail) = (Vec::new(), Vec::new(), Vec::new());
    reader.read_rows(rows, &mut ids, &mut logp, &mut tail).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(CacheDump {
        rows: rows.to_vec(),
        seq_len: reader.seq_len(),
        top_k: reader.entries(),
        vocab_size: reader.manifest().vocab_size,
        ids,
        logp: logp.into_iter().map(json_f32).collect(),
        log_tail: tail.into_iter().map(json_f32).collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// Step benchmark from an offline cache (configuration `c`)

/// Whether configuration `name` of a `configs.json` reads its teacher from a cache
/// (`"teacher_cache": true`).
pub fn spec_uses_cache(path: &Path, name: &str) -> Result<bool> {
    #[derive(Deserialize)]
    struct Flag {
        #[serde(default)]
        teacher_cache: bool,
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let all: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
    let one = all.get(name).ok_or_else(|| Error::format(path, format!("no configuration `{name}`")))?;
    let f: Flag =
        serde_json::from_value(one.clone()).map_err(|e| Error::format(path, format!("configuration `{name}`: {e}")))?;
    Ok(f.teacher_cache)
}

/// Opens the cache for configuration `spec` and checks it fits: vocabulary of `student_vocab`,
/// `spec.seq` tokens per row, at least `spec.batch` rows.
pub fn open_step_cache(dir: &Path, spec: &StepBenchSpec, student_vocab: i64) -> Result<CacheReader> {
    let r = CacheReader::open(dir).map_err(|e| Error::Invalid(e.to_string()))?;
    let m = r.manifest();
    if m.vocab_size as i64 != student_vocab {
        return Err(Error::Invalid(format!(
            "cache {}: vocabulary {}, the student's is {student_vocab}",
            dir.display(),
            m.vocab_size
        )));
    }
    if m.seq_len != spec.seq {
        return Err(Error::Invalid(format!(
            "cache {}: {} tokens per row, the configuration needs {} (distill cache --seq-len {})",
            dir.display(),
            m.seq_len,
            spec.seq,
            spec.seq
        )));
    }
    if m.n_rows < spec.batch {
        return Err(Error::Invalid(format!(
            "cache {}: {} rows, the configuration's batch needs {}",
            dir.display(),
            m.n_rows,
            spec.batch
        )));
    }
    Ok(r)
}

//! Benchmarks of the work distill does, behind `distill bench`; `bench/run.py` runs each next to
//! its PyTorch twin in one invocation and prints the ratios.
//!
//! * [`bench_step`]: one KD training step — the same [`LmKdTask`] and [`train_step`] that
//!   `distill run` trains with — on a fixed batch of random token ids (timing does not depend on
//!   the values), median over `steps` after `warmup`.
//! * [`bench_forward`]: a model's full-sequence forward (logits at every position) under
//!   no-grad, in tokens/s.
//!
//! * [`loss`]: the KD loss alone, chunked vs full logits, and the teacher-cache frontier.
//!
//! Peak memory is the process's peak resident set (`VmHWM`), as the twin reports `ru_maxrss`.

pub mod loss;

use std::path::Path;
use std::time::Instant;

use distill_text::TokenBlocks;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::data::rng::SplitMix64;
use crate::losses::chunked::ChunkedKd;
use crate::losses::divergence::Divergence;
use crate::models::lm::{CausalLm, ForwardOptions};
use crate::models::lm::{HfLmConfig, LmConfig};
use crate::tasks::LmKdTask;
use crate::teacher::{Teacher, TeacherDtype};
use crate::train::optim::Optimizer;
use crate::train::{train_step, TrainCfg};
use crate::{Error, Result};

/// One configuration of `bench/configs.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct StepBenchSpec {
    /// HF config dict of a randomly initialised teacher (exclusive with `teacher_path`).
    #[serde(default)]
    pub teacher: Option<serde_json::Value>,
    /// A real teacher (GGUF file or HF directory, `asset:` allowed).
    #[serde(default)]
    pub teacher_path: Option<String>,
    /// HF config dict of the (randomly initialised) student.
    pub student: serde_json::Value,
    pub batch: usize,
    pub seq: usize,
    pub temperature: f64,
    pub alpha: f64,
    pub lr: f64,
    /// Tokens per loss chunk (default 256, the recipe default).
    #[serde(default)]
    pub chunk_tokens: Option<usize>,
    /// The online teacher's precision: "f32" (default) or "bf16" (a recipe's `teacher.dtype`).
    #[serde(default)]
    pub teacher_dtype: Option<TeacherDtype>,
}

/// Reads configuration `name` of a `configs.json`.
pub fn load_spec(path: &Path, name: &str) -> Result<StepBenchSpec> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let all: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
    let one = all.get(name).ok_or_else(|| Error::format(path, format!("no configuration `{name}`")))?;
    serde_json::from_value(one.clone()).map_err(|e| Error::format(path, format!("configuration `{name}`: {e}")))
}

/// An HF config dict as a runtime config.
pub fn config_from_json(v: &serde_json::Value, what: &str) -> Result<LmConfig> {
    let bytes = serde_json::to_vec(v).map_err(|e| Error::Invalid(e.to_string()))?;
    HfLmConfig::from_slice(&bytes).map_err(|m| Error::Invalid(format!("{what}: {m}")))?.into_config(what)
}

/// What [`bench_step`] measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepBenchResult {
    pub threads: i32,
    pub batch: usize,
    pub seq: usize,
    /// Median milliseconds per optimizer step.
    pub ms_per_step: f64,
    /// Every timed step, in order.
    pub ms_steps: Vec<f64>,
    /// Predicted tokens per second (batch × seq / median step time).
    pub tokens_per_s: f64,
    /// Peak resident set of the process, MiB.
    pub peak_rss_mib: f64,
    pub student_params: i64,
    pub teacher_params: i64,
    /// Loss of the first and last timed step (the batch is fixed, so it should fall).
    pub loss_first: f64,
    pub loss_last: f64,
    /// In a data-parallel step (under torchrun): the ranks, and the median milliseconds per step
    /// spent in collectives (the loss and gradient all-reduce, waiting for peers included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_ms_per_step: Option<f64>,
}

/// Peak resident set size of this process in MiB (`VmHWM` of `/proc/self/status`; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `rows` × `seq` random ids in `[0, vocab)` from `seed`, as packed rows with no padding.
pub fn random_blocks(rows: usize, seq: usize, vocab: i64, seed: u64) -> TokenBlocks {
    let mut rng = SplitMix64::new(seed);
    let input_ids = (0..rows * seq).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
    TokenBlocks { seq_len: seq, input_ids, attention_mask: None, n_tokens_real: rows * seq, target_mask: None }
}

/// Times `warmup + steps` KD steps of `student` (variables in `vs`) against `teacher` — a model
/// run online, or a cache read at rows `0..batch` — on one fixed random batch.
pub fn bench_step(
    vs: &nn::VarStore,
    student: &CausalLm,
    teacher: Teacher<'_>,
    spec: &StepBenchSpec,
    warmup: usize,
    steps: usize,
) -> Result<StepBenchResult> {
    let blocks = random_blocks(spec.batch, spec.seq, student.config().vocab_size, 0);
    let batch: Vec<usize> = (0..spec.batch).collect();
    let loss = ChunkedKd {
        divergence: Divergence::ForwardKl,
        temperature: spec.temperature,
        alpha: spec.alpha,
        chunk_rows: spec.chunk_tokens.unwrap_or(256) as i64,
    };
    let teacher_params = match &teacher {
        Teacher::Lm(t) => t.param_count(),
        _ => 0,
    };
    let mut task = LmKdTask {
        student,
        teacher: Some(teacher),
        blocks: &blocks,
        loss,
        terms: Vec::new(),
        quant: None,
        memo: None,
        on_policy: None,
    };
    let cfg: TrainCfg = serde_json::from_value(serde_json::json!({
        "steps": (warmup + steps) as u64, "lr": spec.lr, "weight_decay": 0.01, "clip_grad_norm": 1.0,
    }))
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut opt = Optimizer::new(&cfg, params);
    let mut rng = SplitMix64::new(0);
    let mut ms = Vec::new();
    let mut losses = Vec::new();
    let mut comm = Vec::new();
    let pg = crate::train::dist::group();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let c0 = pg.map_or(0.0, |g| g.comm_seconds());
        let (_, loss, _) = train_step(&mut task, &mut opt, &batch, &mut rng, cfg.clip_grad_norm, spec.lr)?;
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        if i >= warmup {
            ms.push(dt);
            losses.push(loss);
            comm.push(pg.map_or(0.0, |g| g.comm_seconds()) - c0);
        }
    }
    let median = upper_median(&ms);
    Ok(StepBenchResult {
        threads: tch::get_num_threads(),
        batch: spec.batch,
        seq: spec.seq,
        ms_per_step: median,
        ms_steps: ms,
        tokens_per_s: (spec.batch * spec.seq) as f64 / (median / 1e3),
        peak_rss_mib: peak_rss_mib(),
        student_params: student.param_count(),
        teacher_params,
        loss_first: losses.first().copied().unwrap_or(f64::NAN),
        loss_last: losses.last().copied().unwrap_or(f64::NAN),
        ranks: pg.map(|g| g.size),
        comm_ms_per_step: pg.map(|_| upper_median(&comm) * 1e3),
    })
}

/// The upper median of `v` (NaN when empty).
fn upper_median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median wall time in ms of `reps` runs of `run` after one warm-up run.
fn median_ms(reps: usize, mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut ms = Vec::with_capacity(reps);
    for i in 0..=reps {
        let t0 = Instant::now();
        run()?;
        if i > 0 {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// What [`bench_forward`] measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardBenchResult {
    pub threads: i32,
    pub rows: i64,
    pub seq: i64,
    pub ms_per_forward: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mib: f64,
}

/// Full-sequence forward of `model` on `rows` × `seq` random ids under no-grad: median of
/// `reps` after one warm-up.
pub fn bench_forward(model: &CausalLm, rows: i64, seq: i64, reps: usize) -> Result<ForwardBenchResult> {
    let v = model.config().vocab_size;
    let ids = Tensor::randint(v, [rows, seq], (Kind::Int64, model.device()));
    let median = median_ms(reps, || {
        let l = tch::no_grad(|| model.forward(&ids, None, ForwardOptions::default()))?.logits; // [rows, seq, V]
        let _ = l.get(0).get(0).get(0).double_value(&[]);
        Ok(())
    })?;
    Ok(ForwardBenchResult {
        threads: tch::get_num_threads(),
        rows,
        seq,
        ms_per_forward: median,
        tokens_per_s: (rows * seq) as f64 / (median / 1e3),
        peak_rss_mib: peak_rss_mib(),
    })
}

/// What [`bench_generate`] measured for one batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateBenchResult {
    pub threads: i32,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Wall time of one whole generation (prompt + every decoding step), median of the reps.
    pub ms_per_generation: f64,
    /// Generated tokens per second over all rows.
    pub tokens_per_s: f64,
}

/// Greedy generation of `new_tokens` after `batch` random prompts of `prompt_tokens` tokens,
/// all rows in one batch with the KV cache ([`crate::eval::generate::generate_batch`]; batch 1 is
/// `distill generate`): median of `reps` after one warm-up.
pub fn bench_generate(
    model: &CausalLm,
    batch: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    reps: usize,
) -> Result<GenerateBenchResult> {
    if batch == 0 || prompt_tokens == 0 || new_tokens == 0 {
        return Err(Error::Invalid("bench generate: batch, prompt and new tokens must be > 0".into()));
    }
    let v = model.config().vocab_size as u64;
    let mut rng = SplitMix64::new(batch as u64);
    let prompts: Vec<Vec<i64>> =
        (0..batch).map(|_| (0..prompt_tokens).map(|_| (rng.next_u64() % v) as i64).collect()).collect();
    let opts = crate::eval::generate::GenerateOptions { max_new_tokens: new_tokens, ..Default::default() };
    // As `generate-data` and `self-distill` decode: several rows on weights packed once for
    // that row count.
    let packed = crate::eval::generate::decoding_weights(model, batch)?;
    let model = packed.as_ref().unwrap_or(model);
    let median = median_ms(reps.max(1), || {
        let out = crate::eval::generate::generate_batch(model, &prompts, &opts)?;
        debug_assert!(out.iter().all(|r| r.len() == new_tokens));
        Ok(())
    })?;
    Ok(GenerateBenchResult {
        threads: tch::get_num_threads(),
        batch,
        prompt_tokens,
        new_tokens,
        ms_per_generation: median,
        tokens_per_s: (batch * new_tokens) as f64 / (median / 1e3),
    })
}

/// A randomly initialised model of `cfg` on the CPU.
pub fn random_model(cfg: &LmConfig, seed: i64) -> Result<(nn::VarStore, CausalLm)> {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = CausalLm::new(vs.root(), cfg)?;
    Ok((vs, m))
}

/// The words of [`bench_texts`] (the same list as `bench/twin.py`).
const BENCH_WORDS: [&str; 20] = [
    "the", "model", "student", "teacher", "learns", "from", "soft", "targets", "and", "hidden", "states", "of", "a",
    "larger", "network", "while", "keeping", "most", "quality", "today",
];

/// `n` deterministic texts of 16 to 255 words (text `i`: `16 + 37·i mod 240` words, word `j`
/// = `BENCH_WORDS[(7·i + j) mod 20]`), as `bench/twin.py embed` builds them.
pub fn bench_texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let len = 16 + (i * 37) % 240;
            (0..len).map(|j| BENCH_WORDS[(i * 7 + j) % BENCH_WORDS.len()]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// What `distill bench embed` measures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedBenchResult {
    pub texts: usize,
    pub batch: usize,
    pub threads: i32,
    /// Best of three passes, tokenization included.
    pub embeddings_per_s: f64,
    pub peak_rss_mib: f64,
}

/// Embeddings/s of a sentence encoder over [`bench_texts`] at `batch`.
pub fn bench_embed(
    model: &dyn crate::models::sentence::Embedder,
    texts: usize,
    batch: usize,
) -> Result<EmbedBenchResult> {
    let t = bench_texts(texts);
    let eps = crate::eval::embed::throughput(model, &t, batch)?;
    Ok(EmbedBenchResult {
        texts,
        batch,
        threads: tch::get_num_threads(),
        embeddings_per_s: eps,
        peak_rss_mib: peak_rss_mib(),
    })
}

//! The one Trainer: batches, optimizer step, warmup + schedule, gradient clipping, NaN guard,
//! `metrics.jsonl`, atomic checkpoints and exact resume.
//!
//! Determinism: the batch order of epoch `e` is a permutation drawn from `(seed, e)`, and every
//! step reseeds libtorch (dropout) and the augmentation RNG from `(seed, step)`. A checkpoint
//! holds parameters, optimizer moments and the step; so a run killed at any point and resumed
//! from its last checkpoint replays exactly the steps an uninterrupted run takes (on the same
//! machine and thread count).

pub mod checkpoint;
pub mod config;
pub mod dist;
pub mod interrupt;
pub mod optim;
pub mod tensorboard;

pub use config::{CheckpointCfg, LogCfg, TrainCfg};

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tch::{nn, Tensor};

use crate::data::rng::SplitMix64;
use crate::{Error, Result};
use checkpoint::{load_tensors, save_tensors};
use optim::{lr_at, Optimizer};

/// A training objective the Trainer can drive.
pub trait TrainTask {
    /// Number of training examples; batches are drawn from `0..num_examples()`.
    fn num_examples(&self) -> usize;
    /// Computes the loss of a batch (example indices). `rng` is seeded from (seed, step) for
    /// augmentation.
    fn loss(&mut self, batch: &[usize], rng: &mut SplitMix64) -> Result<StepLoss>;
}

/// A step's loss: `total` is backpropagated; `parts` are logged.
#[derive(Debug)]
pub struct StepLoss {
    pub total: Tensor,
    pub parts: Vec<(&'static str, Tensor)>,
    /// What `total` is a mean over (examples, or the tokens scored): data-parallel ranks weight
    /// their slices' losses by it, so the step's loss is the one-process mean.
    pub weight: f64,
}

impl StepLoss {
    /// A loss averaged over the `n` examples of a batch.
    pub fn per_example(total: Tensor, parts: Vec<(&'static str, Tensor)>, n: usize) -> Self {
        StepLoss { total, parts, weight: n as f64 }
    }
}

/// Gradients are summed over ranks in flat buckets of this size (DDP's default is 25 MiB).
const BUCKET_BYTES: usize = 25 << 20;

/// How a phase trains.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Phase name, shown in the progress bar and metrics.
    pub phase: String,
    pub seed: u64,
    pub cfg: TrainCfg,
    /// Directory for `ckpt.safetensors` and `metrics.jsonl`.
    pub dir: PathBuf,
    pub checkpoint_every: u64,
    /// Write a metrics line every N steps.
    pub log_every: u64,
    /// Show progress on stderr: a bar on a terminal; otherwise a line every
    /// `progress_seconds` (step, loss, throughput, ETA).
    pub progress: bool,
    /// Seconds between progress lines off a terminal.
    pub progress_seconds: f64,
    /// Tokens in one example (an LM row's length), for tokens/s in progress lines.
    pub tokens_per_example: Option<usize>,
    /// Also write each metrics line to a TensorBoard event file in `dir`.
    pub tensorboard: bool,
    /// Time the phase instead of training it: stop after this many steps (no final checkpoint)
    /// and report the mean seconds of the steps after the first (`distill check --estimate`).
    pub stop_after: Option<u64>,
}

/// What a finished phase reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    pub steps: u64,
    pub final_loss: f64,
    pub seconds: f64,
    pub resumed_from: Option<u64>,
    /// Data-parallel ranks it trained on (absent: one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
    /// Parameters the optimizer updated (a LoRA student: its adapters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_params: Option<i64>,
    /// The process's peak resident memory while this phase trained (MB; Linux, from the
    /// high-water mark reset at the phase's start; absent elsewhere). It includes what the
    /// process still holds from earlier phases (the allocator keeps freed memory), so compare
    /// phases run in separate processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// Mean seconds per step after the first, in a phase timed with `stop_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_seconds: Option<f64>,
}

impl TrainReport {
    /// A phase that did not train.
    pub fn untrained() -> Self {
        TrainReport {
            steps: 0,
            final_loss: 0.0,
            seconds: 0.0,
            resumed_from: None,
            ranks: None,
            trainable_params: None,
            peak_rss_mb: None,
            step_seconds: None,
        }
    }
}

/// Resets the process's peak-RSS mark (`/proc/self/clear_refs`, Linux ≥ 4.0); false elsewhere.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident memory in MB since the last reset (`VmHWM`).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

const CKPT: &str = "ckpt.safetensors";

fn mix(seed: u64, step: u64) -> i64 {
    (SplitMix64::derive(seed, 0xd15_7111, step).next_u64() >> 1) as i64
}

/// Trains the trainable variables of `vs` on `task`.
pub fn fit(vs: &nn::VarStore, task: &mut dyn TrainTask, opts: &TrainOptions) -> Result<TrainReport> {
    let n = task.num_examples();
    if n == 0 {
        return Err(Error::Invalid(format!("{}: no training examples", opts.phase)));
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| Error::io(&opts.dir, e))?;
    let cfg = &opts.cfg;
    let bs = cfg.batch_size.min(n);
    let per_epoch = n.div_ceil(bs) as u64;
    let pg = crate::train::dist::group();
    let total = cfg.total_steps(n);
    let measured_rss = reset_peak_rss();
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let trainable_params: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut opt = Optimizer::new(cfg, params.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect());

    let ckpt = opts.dir.join(CKPT);
    let mut start = 0u64;
    let mut resumed_from = None;
    if ckpt.is_file() {
        start = load_checkpoint(&ckpt, &params, &mut opt)?;
        resumed_from = Some(start);
        if opts.progress && start < total {
            eprintln!("{}: resumed from step {start} of {total}", opts.phase);
        }
    }
    if let Some(g) = pg {
        // Rank 0's parameters, optimizer state and step on every rank: the same start whether
        // fresh (each rank initialised its own copy) or resumed (rank 0's checkpoint).
        let step = Tensor::from_slice(&[start as i64]);
        g.broadcast(&[&step], 0, "the start of training")?;
        start = step.int64_value(&[0]) as u64;
        let mut state: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
        state.extend(opt.state().into_iter().map(|(_, t)| t));
        g.broadcast_bucketed(&state, BUCKET_BYTES, "the start of training")?;
        opt.steps = start;
    }
    let mut metrics = MetricsLog::open(&opts.dir, resumed_from, opts.tensorboard)?;

    let bar = progress_bar(opts, start, total);

    let t0 = Instant::now();
    let comm0 = pg.map_or(0.0, |g| g.comm_seconds());
    let mut order: Option<(u64, Vec<usize>)> = None;
    let mut last_loss = f64::NAN;
    // Off a terminal the bar draws nothing: a line every `progress_seconds` instead.
    let lines = opts.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = Instant::now();
    let _training = interrupt::Training::start();
    let end = opts.stop_after.map_or(total, |k| total.min(start + k));
    let mut after_first: Option<Instant> = None;
    for step in start..end {
        let epoch = step / per_epoch;
        let within = (step % per_epoch) as usize;
        if order.as_ref().map(|o| o.0) != Some(epoch) {
            order = Some((epoch, SplitMix64::derive(opts.seed, 1, epoch).permutation(n)));
        }
        let perm = order.as_ref().map(|o| &o.1[..]).unwrap_or(&[]);
        let batch = &perm[within * bs..((within + 1) * bs).min(n)];
        tch::manual_seed(mix(opts.seed, step));
        let mut rng = SplitMix64::derive(opts.seed, 2, step);
        let lr = lr_at(cfg, step, total);
        let (out, loss, gnorm) =
            train_step(task, &mut opt, batch, &mut rng, cfg.clip_grad_norm, lr).map_err(|e| match e {
                Error::NonFinite { value, .. } => Error::NonFinite { phase: opts.phase.clone(), step, value },
                e => e,
            })?;
        last_loss = loss;
        let done = step + 1;
        if done % opts.log_every.max(1) == 0 || done == total {
            let secs = t0.elapsed().as_secs_f64();
            let sps = ((done - start) as f64 * bs as f64) / secs.max(1e-9);
            let mut line = serde_json::json!({
                "phase": opts.phase, "step": done, "epoch": done as f64 / per_epoch as f64,
                "loss": loss, "lr": lr, "grad_norm": gnorm, "samples_per_s": sps,
            });
            for (k, v) in &out.parts {
                line[*k] = serde_json::json!(v.double_value(&[]));
            }
            if let Some(g) = pg {
                // Time in collectives per step so far (waiting for slower ranks included).
                let ms = (g.comm_seconds() - comm0) * 1e3 / (done - start) as f64;
                line["ranks"] = serde_json::json!(g.size);
                line["comm_ms_per_step"] = serde_json::json!(ms);
            }
            metrics.write(&line)?;
            bar.set_message(match opts.tokens_per_example {
                Some(t) => format!("loss {loss:.4} | {:.0} tokens/s", sps * t as f64),
                None => format!("loss {loss:.4} | {sps:.0} samples/s"),
            });
        }
        if lines && (last_line.elapsed().as_secs_f64() >= opts.progress_seconds || done == total) {
            last_line = Instant::now();
            eprintln!("{}", progress_line(opts, (start, done, total), loss, bs, t0.elapsed().as_secs_f64()));
        }
        if done < total && stop_here(pg)? {
            save_checkpoint(&ckpt, &params, &opt, done, &opts.phase)?;
            bar.finish_and_clear();
            return Err(Error::Interrupted { phase: opts.phase.clone(), step: done, total });
        }
        if done % opts.checkpoint_every == 0 && done < total {
            save_checkpoint(&ckpt, &params, &opt, done, &opts.phase)?;
        }
        bar.inc(1);
        after_first.get_or_insert_with(Instant::now);
    }
    bar.finish_and_clear();
    let step_seconds =
        after_first.filter(|_| end - start > 1).map(|t| t.elapsed().as_secs_f64() / (end - start - 1) as f64);
    if end < total {
        // A timed phase (`stop_after`): nothing to keep.
        return Ok(TrainReport { steps: total, final_loss: last_loss, step_seconds, ..TrainReport::untrained() });
    }
    save_checkpoint(&ckpt, &params, &opt, total, &opts.phase)?;
    let ranks = pg.map(|g| g.size);
    Ok(TrainReport {
        steps: total,
        final_loss: last_loss,
        seconds: t0.elapsed().as_secs_f64(),
        resumed_from,
        ranks,
        trainable_params: Some(trainable_params),
        peak_rss_mb: if measured_rss { peak_rss_mb() } else { None },
        step_seconds,
    })
}

/// The terminal's progress bar for a phase (hidden when `opts.progress` is off; indicatif draws
/// nothing off a terminal).
fn progress_bar(opts: &TrainOptions, start: u64, total: u64) -> ProgressBar {
    let bar = if opts.progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>18} [{bar:28}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(opts.phase.clone());
    bar.set_position(start);
    bar
}

/// Whether to stop after this step: a Ctrl-C / SIGTERM here, or on any rank of a data-parallel
/// job (the flag is summed over the group, so every rank stops at the same step).
fn stop_here(pg: Option<&dist::ProcessGroup>) -> Result<bool> {
    let here = interrupt::requested();
    match pg {
        None => Ok(here),
        Some(g) => {
            let flag = Tensor::from_slice(&[if here { 1f32 } else { 0.0 }]);
            g.all_reduce_sum(&[&flag], "the stop flag")?;
            Ok(flag.double_value(&[0]) > 0.0)
        }
    }
}

/// One progress line: `phase: step 40/200 (20%) | loss 2.3170 | 1,234 tokens/s | ETA 2m10s`.
fn progress_line(
    opts: &TrainOptions,
    (start, done, total): (u64, u64, u64),
    loss: f64,
    bs: usize,
    secs: f64,
) -> String {
    let per_step = secs / (done - start).max(1) as f64;
    let rate = match opts.tokens_per_example {
        Some(t) => format!("{:.0} tokens/s", (bs * t) as f64 / per_step.max(1e-9)),
        None => format!("{:.0} samples/s", bs as f64 / per_step.max(1e-9)),
    };
    let eta = (per_step * (total - done) as f64).round() as u64;
    format!(
        "{}: step {done}/{total} ({:.0}%) | loss {loss:.4} | {rate} | ETA {}m{:02}s",
        opts.phase,
        100.0 * done as f64 / total.max(1) as f64,
        eta / 60,
        eta % 60
    )
}

/// One optimizer step on `batch`: loss, backward, global-norm clipping, update with `lr`.
/// Returns the step's loss parts, the loss value and the gradient norm before clipping. A
/// non-finite loss is an error (nothing is updated).
///
/// In a data-parallel job each rank computes the loss of its slice of `batch`
/// ([`dist::slice`](crate::train::dist::slice)), weighted by its share of the batch's
/// [`StepLoss::weight`]; the gradients are summed over the ranks in buckets before clipping and
/// the update, so every rank applies the one-process step (up to summation order).
pub fn train_step(
    task: &mut dyn TrainTask,
    opt: &mut Optimizer,
    batch: &[usize],
    rng: &mut SplitMix64,
    clip_grad_norm: Option<f64>,
    lr: f64,
) -> Result<(StepLoss, f64, f64)> {
    let pg = crate::train::dist::group();
    let local = match pg {
        Some(g) => &batch[crate::train::dist::slice(batch.len(), g.rank, g.size)],
        None => batch,
    };
    // A batch smaller than the world (an epoch's last): a rank without examples runs the first
    // one with weight 0, so it takes part in every collective and adds nothing.
    let idle = local.is_empty();
    let local = if idle { &batch[..1] } else { local };
    let mut out = task.loss(local, rng)?;
    if idle {
        out.weight = 0.0;
    }
    let mut loss = out.total.double_value(&[]);
    // The step's loss over the whole batch: each rank's mean weighted by what it averages over.
    let mut share = 1.0;
    if let Some(g) = pg {
        let w = out.weight;
        let mut stats = vec![w, loss * w];
        stats.extend(out.parts.iter().map(|(_, t)| t.double_value(&[]) * w));
        let stats = Tensor::from_slice(&stats);
        g.all_reduce_sum(&[&stats], "the loss all-reduce")?;
        let total_w = stats.double_value(&[0]);
        share = w / total_w;
        loss = stats.double_value(&[1]) / total_w;
        for (i, (_, t)) in out.parts.iter_mut().enumerate() {
            *t = Tensor::from(stats.double_value(&[2 + i as i64]) / total_w);
        }
    }
    if !loss.is_finite() {
        return Err(Error::NonFinite { phase: String::new(), step: 0, value: loss });
    }
    opt.zero_grad();
    if share == 1.0 {
        out.total.backward();
    } else {
        (&out.total * share).backward();
    }
    if let Some(g) = pg {
        g.all_reduce_bucketed(&opt.grads_defined(), BUCKET_BYTES, "the gradient all-reduce")?;
    }
    let gnorm = opt.clip_grad_norm(clip_grad_norm);
    opt.step(lr);
    Ok((out, loss, gnorm))
}

fn save_checkpoint(path: &Path, params: &[(String, Tensor)], opt: &Optimizer, step: u64, phase: &str) -> Result<()> {
    let mut all: Vec<(String, Tensor)> =
        params.iter().map(|(k, t)| (format!("param.{k}"), t.shallow_clone())).collect();
    all.extend(opt.state().into_iter().map(|(k, t)| (format!("opt.{k}"), t)));
    let meta = BTreeMap::from([
        ("format".to_string(), "distill-checkpoint-v1".to_string()),
        ("step".to_string(), step.to_string()),
        ("phase".to_string(), phase.to_string()),
    ]);
    save_tensors(path, &all, meta)
}

fn load_checkpoint(path: &Path, params: &[(String, Tensor)], opt: &mut Optimizer) -> Result<u64> {
    let l = load_tensors(path)?;
    let step: u64 = l
        .metadata
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::format(path, "checkpoint has no step in its metadata"))?;
    tch::no_grad(|| -> Result<()> {
        for (k, t) in params {
            let src = l
                .tensors
                .get(&format!("param.{k}"))
                .ok_or_else(|| Error::format(path, format!("checkpoint lacks parameter `{k}`")))?;
            if src.size() != t.size() {
                return Err(Error::format(
                    path,
                    format!("parameter `{k}` has shape {:?}, model expects {:?}", src.size(), t.size()),
                ));
            }
            t.shallow_clone().copy_(src);
        }
        Ok(())
    })?;
    let missing = opt.load_state(&|k| l.tensors.get(&format!("opt.{k}")).map(|t| t.shallow_clone()), step);
    if let Some(m) = missing.first() {
        return Err(Error::format(path, format!("checkpoint lacks optimizer state `{m}`")));
    }
    Ok(step)
}

const METRICS: &str = "metrics.jsonl";

/// A phase's `metrics.jsonl`, appended to, and with `log.tensorboard` its event file (started
/// afresh with the lines the log keeps: a resumed phase's).
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    events: Option<tensorboard::EventWriter>,
}

impl MetricsLog {
    /// The log of a fresh phase (`resumed_at` none: an old log is removed) or of one resumed at
    /// a step (lines past it dropped: work the checkpoint does not hold).
    fn open(dir: &Path, resumed_at: Option<u64>, tensorboard: bool) -> Result<Self> {
        let path = dir.join(METRICS);
        match resumed_at {
            Some(step) => truncate_metrics(&path, step)?,
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let events = match tensorboard {
            true => {
                let mut w = tensorboard::EventWriter::create(dir)?;
                let kept = std::fs::read_to_string(&path).unwrap_or_default();
                for line in kept.lines().filter_map(|l| serde_json::from_str(l).ok()) {
                    w.metrics_line(&line)?;
                }
                Some(w)
            }
            false => None,
        };
        Ok(MetricsLog { path, file, events })
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))?;
        match self.events.as_mut() {
            Some(ev) => ev.metrics_line(line),
            None => Ok(()),
        }
    }
}

/// Drops metrics lines past `step` (they belong to work the checkpoint does not include).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::train::checkpoint::write_atomic(path, kept.as_bytes())
}

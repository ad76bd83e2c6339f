//! `[train]` and `[checkpoint]`: how one model is trained, read by the Trainer and the optimizers.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How one model is trained. `lr` is required in a recipe; a key left out takes its value from
/// [`TrainCfg::default`], except `epochs` and `steps`, of which a recipe sets one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainCfg {
    /// Passes over the training set (exclusive with `steps`).
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Optimizer steps (exclusive with `epochs`).
    #[serde(default)]
    pub steps: Option<u64>,
    /// Examples per optimizer step (default 128).
    #[serde(default = "field_default::batch_size")]
    pub batch_size: usize,
    /// `adamw` (default) or `sgd`.
    #[serde(default = "field_default::optimizer")]
    pub optimizer: OptimizerKind,
    /// The learning rate after warmup, before the schedule's decay (required in a recipe).
    pub lr: f64,
    /// Weight decay (default 0).
    #[serde(default = "field_default::weight_decay")]
    pub weight_decay: f64,
    /// SGD momentum (default 0.9).
    #[serde(default = "field_default::momentum")]
    pub momentum: f64,
    /// SGD Nesterov momentum (default false).
    #[serde(default = "field_default::nesterov")]
    pub nesterov: bool,
    /// AdamW betas (default `[0.9, 0.999]`).
    #[serde(default = "field_default::betas")]
    pub betas: [f64; 2],
    /// AdamW epsilon (default 1e-8).
    #[serde(default = "field_default::eps")]
    pub eps: f64,
    /// Learning-rate schedule after warmup (default `cosine`).
    #[serde(default = "field_default::schedule")]
    pub schedule: Schedule,
    /// Linear warmup steps from 0 to `lr` (default 0).
    #[serde(default = "field_default::warmup_steps")]
    pub warmup_steps: u64,
    /// Where `cosine` and `linear` end, as a fraction of `lr` (default 0).
    #[serde(default = "field_default::min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// Clip the global gradient L2 norm to this value (default: no clipping).
    #[serde(default = "field_default::clip_grad_norm")]
    pub clip_grad_norm: Option<f64>,
}

/// The defaults of a recipe's `[train]` keys. `lr` 1e-3 and `epochs = 1` are for programmatic
/// use only (`TrainCfg { lr, ..TrainCfg::default() }`): a recipe must set `lr`, and `epochs` or
/// `steps`.
impl Default for TrainCfg {
    fn default() -> Self {
        TrainCfg {
            epochs: Some(1.0),
            steps: None,
            batch_size: 128,
            optimizer: OptimizerKind::Adamw,
            lr: 1e-3,
            weight_decay: 0.0,
            momentum: 0.9,
            nesterov: false,
            betas: [0.9, 0.999],
            eps: 1e-8,
            schedule: Schedule::Cosine,
            warmup_steps: 0,
            min_lr_ratio: 0.0,
            clip_grad_norm: None,
        }
    }
}

/// Serde's value for each `[train]` key a recipe leaves out: [`TrainCfg::default`]'s.
mod field_default {
    use super::{OptimizerKind, Schedule, TrainCfg};

    macro_rules! from_default {
        ($($field:ident: $ty:ty),* $(,)?) => {
            $(pub(super) fn $field() -> $ty {
                TrainCfg::default().$field
            })*
        };
    }

    from_default! {
        batch_size: usize,
        optimizer: OptimizerKind,
        weight_decay: f64,
        momentum: f64,
        nesterov: bool,
        betas: [f64; 2],
        eps: f64,
        schedule: Schedule,
        warmup_steps: u64,
        min_lr_ratio: f64,
        clip_grad_norm: Option<f64>,
    }
}

impl TrainCfg {
    /// Checks the values; `what` names the section in the error (`student.train`).
    pub fn validate(&self, what: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Recipe(format!("{what}: {m}")));
        match (self.epochs, self.steps) {
            (Some(_), Some(_)) => return bad("set either `epochs` or `steps`, not both".into()),
            (None, None) => return bad("set `epochs` or `steps`".into()),
            (Some(e), None) if !(e > 0.0 && e.is_finite()) => return bad(format!("epochs must be > 0, got {e}")),
            (None, Some(0)) => return bad("steps must be > 0".into()),
            _ => {}
        }
        if self.batch_size == 0 {
            return bad("batch_size must be > 0".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr must be > 0, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad(format!("betas must be in [0, 1), got {:?}", self.betas));
        }
        if self.weight_decay < 0.0 {
            return bad("weight_decay must be >= 0".into());
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("min_lr_ratio must be in [0, 1]".into());
        }
        if let Some(c) = self.clip_grad_norm {
            if c <= 0.0 {
                return bad("clip_grad_norm must be > 0".into());
            }
        }
        Ok(())
    }

    /// Total optimizer steps for a training set of `n` examples.
    pub fn total_steps(&self, n: usize) -> u64 {
        let per_epoch = n.div_ceil(self.batch_size.max(1)) as u64;
        match (self.steps, self.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => ((per_epoch as f64) * e).ceil().max(1.0) as u64,
            (None, None) => per_epoch,
        }
    }
}

/// Checkpointing.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointCfg {
    /// Save a checkpoint every N optimizer steps (and at the end); default 200.
    pub every_steps: u64,
}

impl Default for CheckpointCfg {
    fn default() -> Self {
        CheckpointCfg { every_steps: 200 }
    }
}

/// Logging: `metrics.jsonl` and progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogCfg {
    /// Write a `metrics.jsonl` line every N optimizer steps (and at the end); default: the
    /// recipe kind's (10 for LMs and encoders, 20 for images).
    pub every_steps: Option<u64>,
    /// Off a terminal (a log file, a CI job), print a progress line — step, loss, tokens/s or
    /// samples/s, ETA — every this many seconds (default 10); on a terminal the bar shows it.
    pub progress_seconds: f64,
    /// Also write the metrics as TensorBoard event files, one per phase
    /// (`phases/<id>/events.out.tfevents.*`): `tensorboard --logdir RUN_DIR` shows every phase
    /// as a run. Default false.
    pub tensorboard: bool,
}

impl Default for LogCfg {
    fn default() -> Self {
        LogCfg { every_steps: None, progress_seconds: 10.0, tensorboard: false }
    }
}

impl LogCfg {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.every_steps == Some(0) {
            return Err("log.every_steps must be ≥ 1".into());
        }
        if !(self.progress_seconds > 0.0 && self.progress_seconds.is_finite()) {
            return Err(format!("log.progress_seconds must be positive, got {}", self.progress_seconds));
        }
        Ok(())
    }
}

/// Optimizer family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// AdamW (Loshchilov & Hutter 2019), decoupled weight decay on matrices only.
    Adamw,
    /// SGD with (optionally Nesterov) momentum, PyTorch convention.
    Sgd,
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// Cosine decay from `lr` to `lr·min_lr_ratio` at the last step.
    Cosine,
    Linear,
}

//! `[train]` and `[checkpoint]`: how one model is trained, read by the Trainer and the optimizers.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How one model is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainCfg {
    /// Passes over the training set (exclusive with `steps`).
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Optimizer steps (exclusive with `epochs`).
    #[serde(default)]
    pub steps: Option<u64>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerKind,
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// SGD momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// AdamW betas.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Linear warmup steps from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Clip the global gradient L2 norm to this value.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
}

fn default_batch() -> usize {
    128
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adamw
}
fn default_momentum() -> f64 {
    0.9
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_schedule() -> Schedule {
    Schedule::Cosine
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointCfg {
    /// Save a checkpoint every N optimizer steps (and at the end).
    #[serde(default = "default_every")]
    pub every_steps: u64,
}

fn default_every() -> u64 {
    200
}

impl Default for CheckpointCfg {
    fn default() -> Self {
        CheckpointCfg { every_steps: default_every() }
    }
}

/// Optimizer family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// AdamW (Loshchilov & Hutter 2019), decoupled weight decay on matrices only.
    Adamw,
    /// SGD with (optionally Nesterov) momentum, PyTorch convention.
    Sgd,
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// Cosine decay from `lr` to `lr·min_lr_ratio` at the last step.
    Cosine,
    Linear,
}

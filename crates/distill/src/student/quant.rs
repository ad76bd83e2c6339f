//! Fake quantization on the exact grids of GGUF's Q8_0 and Q4_0 — the building block of
//! quantization-aware distillation. Each row is cut into blocks of 32 values with one scale per
//! block, computed by llama.cpp's rules (as gguf-py implements them bit for bit) and stored as
//! f16:
//!
//! ```text
//! Q8_0   d = max|x| / 127        q = roundf(x / d)  (half away from zero)   x̂ = q · f16(d)
//! Q4_0   d = x[argmax|x|] / −8   q = min(trunc(x / d + 8.5), 15) − 8          x̂ = q · f16(d)
//! ```
//!
//! (`x / d` is computed as `x · (1/d)`, and a block of zeros gets `1/d = 0`, as the reference
//! does.) [`fake_quant`] returns `x̂`, what llama.cpp computes with after loading such a file;
//! [`fake_quant_ste`] is the straight-through estimator (Bengio et al. 2013): `x̂` in the
//! forward pass, the identity in the backward pass, so a student trains in full precision while
//! its forward sees the quantized weights.
//!
//! Which tensor gets which grid is the GGUF export's own rule ([`GgufType::tensor_type`]): for
//! `q4_0`, the projections Q4_0, the token embedding (the output matrix when tied) Q8_0, norms
//! f32. [`quantized_view`] applies it to a whole model (with the STE, for quantization-aware
//! distillation) and [`quantize_weights`] in place (post-training quantization, and the end of
//! QAD), so the model distill evaluates is the one the GGUF file holds: quantizing those
//! weights again gives the same blocks.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::io::export::GgufType;
use crate::models::lm::CausalLm;
use crate::train::TrainCfg;
use crate::{Error, Result};

/// The GGUF format a quantized student is trained for and exported to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuantFormat {
    /// 4-bit projections, 8-bit embedding (`llama_ftype` MOSTLY_Q4_0).
    Q4_0,
    /// 8-bit everything.
    Q8_0,
}

impl QuantFormat {
    /// The export type that writes this format.
    pub fn export_type(self) -> GgufType {
        match self {
            QuantFormat::Q4_0 => GgufType::Q4_0,
            QuantFormat::Q8_0 => GgufType::Q8_0,
        }
    }

    /// As file names and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q4_0 => "q4_0",
            QuantFormat::Q8_0 => "q8_0",
        }
    }
}

/// `[quantize]`: after the KD phase, its student quantized after training (PTQ) and, with
/// `steps > 0`, the same student trained on with fake-quantized weights against the
/// full-precision teacher (QAD); both leave as GGUF files of that format.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QuantCfg {
    /// `q4_0` (default) or `q8_0`.
    pub format: QuantFormat,
    /// QAD optimizer steps (0, the default: post-training quantization only).
    pub steps: u64,
    /// QAD learning rate (default: a tenth of `train.lr`; it starts from a trained student).
    pub lr: Option<f64>,
}

impl Default for QuantCfg {
    fn default() -> Self {
        QuantCfg { format: QuantFormat::Q4_0, steps: 0, lr: None }
    }
}

impl QuantCfg {
    /// Checks the section.
    pub fn validate(&self) -> Result<()> {
        if let Some(lr) = self.lr {
            if !(lr > 0.0 && lr.is_finite()) {
                return Err(Error::Recipe(format!("quantize.lr must be a positive number, got {lr}")));
            }
        }
        Ok(())
    }

    /// The QAD phase's training: the recipe's `[train]` with these steps and lr, a warmup of
    /// at most a tenth of the steps.
    pub fn train_cfg(&self, train: &TrainCfg) -> TrainCfg {
        let mut t = train.clone();
        t.epochs = None;
        t.steps = Some(self.steps);
        t.lr = self.lr.unwrap_or(train.lr / 10.0);
        t.warmup_steps = train.warmup_steps.min(self.steps / 10);
        t
    }
}

/// The parameter `hf_name` as a GGUF export of type `ty` stores it, read back as f32 (`None`:
/// stored as is, F32).
fn as_stored(ty: GgufType, hf_name: &str, w: &Tensor) -> Result<Option<Tensor>> {
    use distill_gguf::GgmlType as G;
    let shape: Vec<usize> = w.size().iter().map(|&d| d as usize).collect();
    let storage = distill_gguf::gguf_name(hf_name).map_or(G::F32, |g| ty.tensor_type(&g, &shape));
    Ok(match storage {
        G::Q4_0 => Some(fake_quant(w, QuantGrid::Q4_0)?),
        G::Q8_0 => Some(fake_quant(w, QuantGrid::Q8_0)?),
        G::F16 => Some(tch::no_grad(|| w.to_kind(Kind::Half).to_kind(Kind::Float))),
        _ => None,
    })
}

/// `q`'s value with `w`'s gradient: `w + (q − w)` with the difference detached.
fn straight_through(w: &Tensor, q: &Tensor) -> Tensor {
    w + (q.to_kind(w.kind()) - w).detach()
}

/// `model` with every weight as a GGUF export of type `ty` stores it, through the
/// straight-through estimator: the forward pass of quantization-aware training.
pub fn quantized_view(model: &CausalLm, ty: GgufType) -> Result<CausalLm> {
    model.map_weights(&|name, w| {
        Ok(match as_stored(ty, name, w)? {
            Some(q) => straight_through(w, &q),
            None => w.shallow_clone(),
        })
    })
}

/// Rounds `model`'s weights in place to what a GGUF export of type `ty` stores (post-training
/// quantization): evaluating the model afterwards evaluates the file.
pub fn quantize_weights(model: &CausalLm, ty: GgufType) -> Result<()> {
    for (name, w) in model.named_parameters() {
        if let Some(q) = as_stored(ty, &name, &w)? {
            tch::no_grad(|| w.shallow_clone().copy_(&q.to_kind(w.kind())));
        }
    }
    Ok(())
}

/// A GGUF block-quantization grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantGrid {
    Q8_0,
    Q4_0,
}

/// Values per block.
pub const BLOCK: i64 = 32;

/// `w` (any shape whose last dimension is a multiple of 32) quantized to `grid` and back, f32.
pub fn fake_quant(w: &Tensor, grid: QuantGrid) -> Result<Tensor> {
    let shape = w.size();
    let last = shape.last().copied().unwrap_or(0);
    if last % BLOCK != 0 {
        return Err(Error::Invalid(format!(
            "{grid:?} quantizes rows in blocks of {BLOCK}; a row of {last} values does not divide"
        )));
    }
    Ok(tch::no_grad(|| {
        let x = w.to_kind(Kind::Float).reshape([-1, BLOCK]); // [N, 32]
        let d = match grid {
            QuantGrid::Q8_0 => x.abs().amax([1i64].as_slice(), true) / 127.0, // [N, 1]
            QuantGrid::Q4_0 => {
                let imax = x.abs().argmax(1, true); // [N, 1], the first maximum
                x.gather(1, &imax, false) / -8.0 // [N, 1]
            }
        };
        let id = d.reciprocal().masked_fill(&d.eq(0.0), 0.0); // [N, 1]
        let y = &x * &id; // [N, 32]
        let q = match grid {
            QuantGrid::Q8_0 => {
                let a = y.abs();
                let floored = a.floor();
                // Round half away from zero; `+ 0.0` turns −0 into +0, as the reference's int8 does.
                (&floored + ((&a - &floored) * 2.0).floor()) * y.sign() + 0.0
            }
            QuantGrid::Q4_0 => (y + 8.5).trunc().clamp(0.0, 15.0) - 8.0,
        };
        let d16 = d.to_kind(Kind::Half).to_kind(Kind::Float); // [N, 1]
        (q * d16).reshape(shape.as_slice())
    }))
}

/// The straight-through estimator: `w + (fake_quant(w) − w)` with the difference detached, so
/// the value is the quantized weight and the gradient reaches `w` unchanged.
pub fn fake_quant_ste(w: &Tensor, grid: QuantGrid) -> Result<Tensor> {
    Ok(straight_through(w, &fake_quant(w, grid)?))
}

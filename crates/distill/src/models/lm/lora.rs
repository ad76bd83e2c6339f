//! LoRA adapters on the decoder's projections (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
//! Large Language Models"), as PEFT computes them.
//!
//! An adapted projection computes `x·Wᵀ + b + s · dropout(x)·Aᵀ·Bᵀ` with `A` `[r, in]`, `B`
//! `[out, r]` and `s = alpha / r`. `A` starts as PEFT's `kaiming_uniform_(a=√5)`, i.e.
//! U(−1/√in, 1/√in), and `B` at zero, so a fresh adapter leaves the model's outputs unchanged.
//! The dropout draws from torch's global generator, which the Trainer seeds per step (exact
//! resume); it is applied only when training and only to the adapter's input.
//!
//! The variables are `<module>.lora_A` and `<module>.lora_B` under the projection's path, e.g.
//! `model.layers.0.self_attn.q_proj.lora_A` ([`super::CausalLm::new_with_lora`],
//! [`super::CausalLm::add_lora`]).

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// The projections an adapter can target, by their HF module names, in the decoder's order.
pub const MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// `[student.lora]`: low-rank adapters on the student's projections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoraCfg {
    /// Rank `r` of each adapter.
    pub rank: usize,
    /// Scale numerator: the adapter's product is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training (the base product sees the whole input).
    pub dropout: f64,
    /// The adapted projections: `q k v o gate up down`, their HF names `q_proj … down_proj`, or
    /// `all` for the seven.
    pub targets: Vec<String>,
}

impl Default for LoraCfg {
    fn default() -> Self {
        LoraCfg { rank: 8, alpha: 16.0, dropout: 0.0, targets: ["q", "k", "v", "o"].map(String::from).to_vec() }
    }
}

/// The HF module names one spelling of a target stands for; None when it names none.
fn resolve(target: &str) -> Option<&'static [&'static str]> {
    if target == "all" {
        return Some(&MODULES);
    }
    let i = MODULES.iter().position(|m| *m == target || m.strip_suffix("_proj") == Some(target))?;
    Some(&MODULES[i..=i])
}

impl LoraCfg {
    /// Checks the settings without a tensor: rank positive, alpha finite and positive, dropout
    /// in [0, 1), every target naming a projection.
    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("`rank` must be positive, got 0".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("`alpha` must be finite and positive, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("`dropout` must be in [0, 1), got {}", self.dropout));
        }
        if self.targets.is_empty() {
            return Err("`targets` is empty: name at least one projection".into());
        }
        if let Some(bad) = self.targets.iter().find(|t| resolve(t).is_none()) {
            return Err(format!(
                "`targets`: `{bad}` names no projection (valid: q, k, v, o, gate, up, down, their HF names {}, or all)",
                MODULES.join(", ")
            ));
        }
        Ok(())
    }

    /// The multiplier of the adapter's product, `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The HF module names the targets select, each once, in [`MODULES`]' order (unknown
    /// spellings are skipped: [`LoraCfg::validate`] reports them).
    pub fn modules(&self) -> Vec<&'static str> {
        let picked: Vec<&str> = self.targets.iter().filter_map(|t| resolve(t)).flatten().copied().collect();
        MODULES.into_iter().filter(|m| picked.contains(m)).collect()
    }

    /// True when the projection named `module` (`q_proj` …) is adapted.
    pub fn targets_module(&self, module: &str) -> bool {
        self.modules().contains(&module)
    }
}

/// One projection's adapter: `s · dropout(x)·Aᵀ·Bᵀ`.
#[derive(Debug)]
pub(super) struct Adapter {
    pub(super) a: Tensor, // [r, in]
    pub(super) b: Tensor, // [out, r]
    scale: f64,
    dropout: f64,
}

impl Adapter {
    /// Creates `lora_A` (U(−1/√in, 1/√in), PEFT's init) and `lora_B` (zeros) under `p`, the
    /// projection's path.
    pub(super) fn new(p: &nn::Path, inp: i64, out: i64, cfg: &LoraCfg) -> Result<Adapter, tch::TchError> {
        let r = cfg.rank as i64;
        // kaiming_uniform_(a=√5): gain √(2/(1+a²)) = √(1/3), bound gain·√(3/fan_in) = 1/√fan_in.
        let bound = 1.0 / (inp as f64).sqrt();
        let a = p.f_var("lora_A", &[r, inp], nn::Init::Uniform { lo: -bound, up: bound })?;
        let b = p.f_var("lora_B", &[out, r], nn::Init::Const(0.0))?;
        Ok(Adapter { a, b, scale: cfg.scale(), dropout: cfg.dropout })
    }

    /// `s · dropout(x)·Aᵀ·Bᵀ` `[…, out]` for `x` `[…, in]`; dropout only when `train`.
    pub(super) fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let x = if train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        x.linear(&self.a, None::<Tensor>).linear(&self.b, None::<Tensor>) * self.scale
        // […, out]
    }

    /// `s · B·A` `[out, in]`: what merging adds to the weight.
    pub(super) fn delta(&self) -> Tensor {
        self.b.matmul(&self.a) * self.scale // [out, in]
    }
}

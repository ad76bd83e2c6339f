//! Attention transfer (`[distill.attention_transfer]`; Zagoruyko & Komodakis 2017, "Paying More
//! Attention to Attention"): the student's spatial attention maps — where its feature maps are
//! active, `Q = mean_c |F_c|^p`, L2-normalised — are pulled toward the teacher's at paired conv
//! blocks:
//!
//! ```text
//! + (β/2) · Σ_{(s,t)∈P} mean((Q_s/‖Q_s‖₂ − Q_t/‖Q_t‖₂)²)
//! ```
//!
//! with the paper's β = 1000 and p = 2 by default (formula and test in
//! [`crate::losses::feature_map`]). Channel counts may differ; spatial sizes are matched by
//! average pooling. It needs feature maps on both sides: a CNN student (`type = "cnn"`) and a
//! CNN teacher. No parameters of its own.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{BuildContext, Domain, Needs, StepStates, Term, TermConfig, TermContext};
use crate::losses::feature_map::attention_transfer;
use crate::{Error, Result};

/// `[distill.attention_transfer]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionTransferCfg {
    /// β (the term is `β/2 · Σ` over pairs); the paper's 1000 by default.
    pub weight: f64,
    /// The exponent p of `|F|^p` (default 2, the paper's).
    pub p: f64,
    /// `[[student_block, teacher_block], …]`, 0-based indices into the models' features, each a
    /// conv block's map; default: every conv block of the shallower model with the teacher's
    /// (student's) block at the same relative depth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<[usize; 2]>>,
}

impl Default for AttentionTransferCfg {
    fn default() -> Self {
        AttentionTransferCfg { weight: 1000.0, p: 2.0, layers: None }
    }
}

impl TermConfig for AttentionTransferCfg {
    fn key(&self) -> &'static str {
        "attention_transfer"
    }

    fn validate(&self, ctx: &TermContext) -> Result<()> {
        if ctx.domain == Domain::Lm {
            return Err(Error::Recipe(
                "distill.attention_transfer is for CNN students; LM students use distill.attention (MiniLM)".into(),
            ));
        }
        if !(self.weight >= 0.0 && self.weight.is_finite()) {
            return Err(Error::Recipe(format!("distill.attention_transfer.weight must be ≥ 0, got {}", self.weight)));
        }
        if !(self.p > 0.0 && self.p.is_finite()) {
            return Err(Error::Recipe(format!("distill.attention_transfer.p must be > 0, got {}", self.p)));
        }
        if matches!(&self.layers, Some(l) if l.is_empty()) {
            return Err(Error::Recipe(
                "distill.attention_transfer.layers is empty (leave it out to pair every conv block)".into(),
            ));
        }
        Ok(())
    }

    fn build(&self, ctx: BuildContext<'_>) -> Result<Box<dyn Term>> {
        let maps = |shapes: &[Vec<i64>]| shapes.iter().filter(|s| s.len() == 3).count();
        let (ms, mt) = (maps(&ctx.student_shapes), maps(&ctx.teacher_shapes));
        let pairs: Vec<(usize, usize)> = match &self.layers {
            Some(l) => l.iter().map(|&[s, t]| (s, t)).collect(),
            None if ms == 0 || mt == 0 => vec![],
            // The feature maps come first in a CNN's features.
            None if ms <= mt => (0..ms).map(|i| (i, (i + 1) * mt / ms - 1)).collect(),
            None => (0..mt).map(|i| ((i + 1) * ms / mt - 1, i)).collect(),
        };
        if pairs.is_empty() {
            return Err(Error::Recipe(format!(
                "distill.attention_transfer needs conv feature maps on both sides: the student has {ms}, the teacher {mt} (use a \"cnn\" model)"
            )));
        }
        for &(s, t) in &pairs {
            let ok = |shapes: &[Vec<i64>], i: usize| shapes.get(i).is_some_and(|x| x.len() == 3);
            if !ok(&ctx.student_shapes, s) || !ok(&ctx.teacher_shapes, t) {
                return Err(Error::Recipe(format!(
                    "distill.attention_transfer.layers: [{s}, {t}] is not a pair of conv feature maps (the student's maps are 0..{ms}, the teacher's 0..{mt})"
                )));
            }
        }
        Ok(Box::new(AttentionTransfer { pairs, weight: self.weight, p: self.p }))
    }
}

/// The built term.
pub struct AttentionTransfer {
    pairs: Vec<(usize, usize)>,
    weight: f64,
    p: f64,
}

impl Term for AttentionTransfer {
    fn name(&self) -> &'static str {
        "attention_transfer"
    }

    fn describe(&self) -> String {
        let shown: Vec<String> = self.pairs.iter().map(|(s, t)| format!("{s}→{t}")).collect();
        format!("attention transfer (β {}, p {}), student→teacher maps {}", self.weight, self.p, shown.join(" "))
    }

    fn needs(&self) -> Needs {
        Needs { states: true, ..Needs::default() }
    }

    /// # Shapes
    /// Feature maps `[B, C_s, H, W]`, `[B, C_t, H', W']` per pair → scalar.
    fn loss(&self, student: &StepStates<'_>, teacher: &StepStates<'_>) -> Result<Tensor> {
        let mut sum: Option<Tensor> = None;
        for &(s, t) in &self.pairs {
            let (Some(fs), Some(ft)) = (student.states.get(s), teacher.states.get(t)) else {
                return Err(Error::Invalid(format!("attention-transfer pair ({s}, {t}) is past the models' features")));
            };
            let l = attention_transfer(fs, ft, self.p);
            sum = Some(match sum {
                Some(a) => a + l,
                None => l,
            });
        }
        let sum = sum.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, tch::Device::Cpu)));
        Ok(sum * (self.weight / 2.0))
    }
}

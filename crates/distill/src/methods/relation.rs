//! Relational KD (`[distill.rkd]`; Park, Kim, Lu & Cho 2019, "Relational Knowledge
//! Distillation"): instead of matching each example's output, the student matches the
//! *structure* of the teacher's embedding space within a batch — pairwise distances (normalised
//! by their mean) and the angles of triplets:
//!
//! ```text
//! + w_d · RKD-distance(e_s, e_t) + w_a · RKD-angle(e_s, e_t)
//! ```
//!
//! with the paper's `w_d = 25`, `w_a = 50` (formulas and test in [`crate::losses::relation`]).
//! The embeddings are an image model's penultimate features (or the feature `layer` names), or an
//! LM's hidden state mean-pooled over each sequence's real tokens (the final one, or the
//! `layer` named: 1-based block outputs, 0 = embeddings). Only distances and angles are
//! compared, so the widths may differ and there is nothing to learn besides the student.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{BuildContext, Domain, Needs, StepStates, Term, TermConfig, TermContext};
use crate::losses::relation::{rkd_angle, rkd_distance};
use crate::{Error, Result};

/// `[distill.rkd]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RkdCfg {
    /// Weight of RKD-distance (≥ 0; default 25, the paper's).
    pub distance: f64,
    /// Weight of RKD-angle (≥ 0; default 50, the paper's).
    pub angle: f64,
    /// `[student, teacher]` state whose embeddings are compared; default: images the last
    /// feature of each (penultimate layer), LMs the final hidden state of each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<[usize; 2]>,
}

impl Default for RkdCfg {
    fn default() -> Self {
        RkdCfg { distance: 25.0, angle: 50.0, layer: None }
    }
}

impl TermConfig for RkdCfg {
    fn key(&self) -> &'static str {
        "rkd"
    }

    fn validate(&self, ctx: &TermContext) -> Result<()> {
        for (k, w) in [("distance", self.distance), ("angle", self.angle)] {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(Error::Recipe(format!("distill.rkd.{k} must be ≥ 0, got {w}")));
            }
        }
        if self.distance == 0.0 && self.angle == 0.0 {
            return Err(Error::Recipe("distill.rkd: distance and angle are both 0 (nothing to learn)".into()));
        }
        if ctx.domain == Domain::Lm && !ctx.online_teacher {
            return Err(Error::Recipe(
                "distill.rkd needs the online teacher: teacher.cache holds only its output distributions".into(),
            ));
        }
        if let (Some([s, _]), Domain::Lm) = (self.layer, ctx.domain) {
            if s > ctx.student_layers {
                return Err(Error::Recipe(format!(
                    "distill.rkd.layer: student layer {s} is past the student's {} layers (1-based; 0 = embeddings)",
                    ctx.student_layers
                )));
            }
        }
        Ok(())
    }

    fn build(&self, ctx: BuildContext<'_>) -> Result<Box<dyn Term>> {
        let lm = ctx.student_shapes.is_empty();
        // LMs: L+1 hidden states (the last is the final normed one); images: the features.
        let (ns, nt) = if lm {
            (ctx.student_layers + 1, ctx.teacher_layers + 1)
        } else {
            (ctx.student_shapes.len(), ctx.teacher_shapes.len())
        };
        let [s, t] = self.layer.unwrap_or([ns.saturating_sub(1), nt.saturating_sub(1)]);
        if s >= ns || t >= nt {
            return Err(Error::Recipe(format!(
                "distill.rkd.layer: [{s}, {t}] is past the student's {ns} or the teacher's {nt} states"
            )));
        }
        Ok(Box::new(Rkd { layer: (s, t), distance: self.distance, angle: self.angle, pooled: lm }))
    }
}

/// The built term.
pub struct Rkd {
    layer: (usize, usize),
    distance: f64,
    angle: f64,
    /// LM states `[B, T, H]`: mean over each sequence's real tokens first.
    pooled: bool,
}

/// `[B, T, H]` → `[B, H]`, the mean over real positions (`mask` `[B, T]`, 1 = real).
fn mean_pool(x: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let x = x.to_kind(Kind::Float);
    match mask {
        None => x.mean_dim(1, false, Kind::Float),
        Some(m) => {
            let w = m.to_kind(Kind::Float).unsqueeze(-1); // [B, T, 1]
            (x * &w).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                / w.sum_dim_intlist([1i64].as_slice(), false, Kind::Float).clamp_min(1.0)
        }
    }
}

impl Term for Rkd {
    fn name(&self) -> &'static str {
        "rkd"
    }

    fn describe(&self) -> String {
        let (s, t) = self.layer;
        let what = if self.pooled { "mean-pooled hidden states" } else { "features" };
        format!("relational KD (distance {}, angle {}) on {what} {s}→{t}", self.distance, self.angle)
    }

    fn needs(&self) -> Needs {
        Needs { states: true, ..Needs::default() }
    }

    /// # Shapes
    /// Image features `[B, …]` (flattened) or LM states `[B, T, H]` (pooled) → scalar.
    fn loss(&self, student: &StepStates<'_>, teacher: &StepStates<'_>) -> Result<Tensor> {
        let (s, t) = self.layer;
        let (Some(xs), Some(xt)) = (student.states.get(s), teacher.states.get(t)) else {
            return Err(Error::Invalid(format!("RKD state pair ({s}, {t}) is past the models' states")));
        };
        let (es, et) = if self.pooled {
            (mean_pool(xs, student.mask), mean_pool(xt, teacher.mask)) // [B, H_s], [B, H_t]
        } else {
            (xs.flatten(1, -1).to_kind(Kind::Float), xt.flatten(1, -1).to_kind(Kind::Float))
            // [B, F_s], [B, F_t]
        };
        if es.size()[0] < 2 {
            return Ok(Tensor::zeros([], (Kind::Float, es.device())));
        }
        let mut loss = Tensor::zeros([], (Kind::Float, es.device()));
        if self.distance > 0.0 {
            loss += rkd_distance(&es, &et) * self.distance;
        }
        if self.angle > 0.0 {
            loss += rkd_angle(&es, &et) * self.angle;
        }
        Ok(loss)
    }
}

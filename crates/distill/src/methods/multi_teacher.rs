//! `[distill.multi_teacher]`: the config of students taught by several teachers at once; the
//! weighted ensemble itself is [`crate::teacher::Teacher`]'s.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How a multi-teacher phase weighs its teachers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// The weights `distill.multi_teacher.weights` (equal when absent).
    Fixed,
    /// Per example, proportional to the inverse entropy of each teacher's distribution (at T = 1).
    Entropy,
    /// Per example, proportional to each teacher's probability of the true label (fixed
    /// weights for an example without a label).
    TrueLabel,
}

impl Weighting {
    pub fn name(self) -> &'static str {
        match self {
            Weighting::Fixed => "fixed",
            Weighting::Entropy => "entropy",
            Weighting::TrueLabel => "true-label",
        }
    }
}

/// `[distill.multi_teacher]`: students distilled from several teachers at once — `[teacher]`
/// and the `[[teachers]]` of other architectures or sizes — one student per weighting.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MultiTeacherCfg {
    /// Fixed weights, one per teacher (`[teacher]` first, then `[[teachers]]` in order), each
    /// ≥ 0, normalised to sum 1; default: equal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
    /// One student per weighting: `fixed` (the weights), `entropy` (per example ∝ 1/H(p_k)),
    /// `true-label` (per example ∝ p_k(y)). Default `["fixed"]`.
    pub weightings: Vec<Weighting>,
    /// `probabilities` (default): the soft targets are `Σ_k w_k softmax(z_k/T)`; `logits`: they
    /// are `softmax(Σ_k w_k z_k / T)`.
    pub combine: Combine,
}

impl Default for MultiTeacherCfg {
    fn default() -> Self {
        MultiTeacherCfg { weights: None, weightings: vec![Weighting::Fixed], combine: Combine::default() }
    }
}

/// How a multi-teacher phase combines its teachers' outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Combine {
    #[default]
    Probabilities,
    Logits,
}

impl MultiTeacherCfg {
    /// Checks the weights against the number of teachers (`[teacher]` + `[[teachers]]`).
    pub fn validate(&self, teachers: usize) -> Result<()> {
        let bad = |m: String| Err(Error::Recipe(m));
        if teachers < 2 {
            return bad(
                "distill.multi_teacher needs at least one more teacher: add a [[teachers]] entry (model, train) besides [teacher]"
                    .into(),
            );
        }
        if self.weightings.is_empty() {
            return bad("distill.multi_teacher.weightings is empty (fixed, entropy, true-label)".into());
        }
        if let Some(w) = &self.weights {
            if w.len() != teachers {
                return bad(format!(
                    "distill.multi_teacher.weights has {} entries for {teachers} teachers ([teacher] first, then [[teachers]])",
                    w.len()
                ));
            }
            if let Some(x) = w.iter().find(|x| !(**x >= 0.0 && x.is_finite())) {
                return bad(format!("distill.multi_teacher.weights: each weight must be ≥ 0, got {x}"));
            }
            if w.iter().sum::<f64>() <= 0.0 {
                return bad("distill.multi_teacher.weights are all 0".into());
            }
        }
        Ok(())
    }

    /// The fixed weights, normalised to sum 1.
    pub fn fixed_weights(&self, teachers: usize) -> Vec<f64> {
        match &self.weights {
            Some(w) => {
                let s: f64 = w.iter().sum();
                w.iter().map(|x| x / s).collect()
            }
            None => vec![1.0 / teachers.max(1) as f64; teachers],
        }
    }
}

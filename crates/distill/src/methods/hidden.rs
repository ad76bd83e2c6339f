//! Feature KD (`[distill.hidden]`): the student's intermediate states, carried into the
//! teacher's width by a learned projection `W` (`[H_t, H_s]`, trained with the student and
//! dropped at export), pulled toward the teacher's states at matched layers:
//!
//! ```text
//! + β · (1/|P|) Σ_{(s,t)∈P} L(h_s[s] Wᵀ, h_t[t])      at every position with a real next token
//! ```
//!
//! `L` is TinyBERT's MSE or DistilBERT's cosine loss ([`HiddenLoss`], formulas and tests in
//! [`crate::losses::hidden`]); `P` pairs student and teacher layers (1-based block outputs,
//! 0 = embeddings), by default TinyBERT's uniform map ([`uniform_layer_map`]). Needs the online
//! teacher: a cache holds only its output distributions.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::{BuildContext, Domain, Needs, StepStates, Term, TermConfig, TermContext};
use crate::losses::hidden::{uniform_layer_map, HiddenLoss};
use crate::{Error, Result};

/// `[distill.hidden]`: `+ weight · mean over layer pairs of L(h_s Wᵀ, h_t)` for the KD student
/// (never the scratch twin), `W` a learned projection to the teacher's width (see
/// `losses::hidden`). Needs the online teacher.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HiddenKdCfg {
    /// β, the weight of the hidden-state term (≥ 0).
    pub weight: f64,
    /// `cosine` (default, DistilBERT) or `mse` (TinyBERT).
    #[serde(default = "default_hidden_loss")]
    pub loss: HiddenLoss,
    /// `[[student_layer, teacher_layer], …]`, 1-based block outputs (0 = the embeddings);
    /// default: every student layer `i` with teacher layer `round(i·L_t/L_s)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<[usize; 2]>>,
}

fn default_hidden_loss() -> HiddenLoss {
    HiddenLoss::Cosine
}

impl HiddenKdCfg {
    /// The (student layer, teacher layer) pairs, checked against both depths.
    pub fn pairs(&self, student_layers: usize, teacher_layers: usize) -> Result<Vec<(usize, usize)>> {
        let pairs = match &self.layers {
            Some(l) => l.iter().map(|&[s, t]| (s, t)).collect(),
            None => uniform_layer_map(student_layers, teacher_layers),
        };
        for &(s, t) in &pairs {
            if s > student_layers || t > teacher_layers {
                return Err(Error::Recipe(format!(
                    "distill.hidden.layers: [{s}, {t}] is past the student's {student_layers} or the teacher's \
                     {teacher_layers} layers (1-based; 0 = embeddings)"
                )));
            }
        }
        Ok(pairs)
    }
}

impl TermConfig for HiddenKdCfg {
    fn key(&self) -> &'static str {
        "hidden"
    }

    fn validate(&self, ctx: &TermContext) -> Result<()> {
        if !(self.weight >= 0.0 && self.weight.is_finite()) {
            return Err(Error::Recipe(format!("distill.hidden.weight must be ≥ 0, got {}", self.weight)));
        }
        if ctx.domain == Domain::Image {
            return Err(Error::Recipe(
                "distill.hidden is for LM students; image students use distill.fitnets (hints through a learned regressor)"
                    .into(),
            ));
        }
        if matches!(&self.layers, Some(l) if l.is_empty()) {
            return Err(Error::Recipe("distill.hidden.layers is empty (leave it out for the uniform map)".into()));
        }
        if !ctx.online_teacher {
            return Err(Error::Recipe(
                "distill.hidden needs the online teacher: teacher.cache holds only its output distributions".into(),
            ));
        }
        // The teacher's depth is known once it loads; the student's is checked now.
        if let Some(&[s, t]) = self.layers.iter().flatten().find(|&&[s, _]| s > ctx.student_layers) {
            return Err(Error::Recipe(format!(
                "distill.hidden.layers: [{s}, {t}] is past the student's {} layers (1-based; 0 = embeddings)",
                ctx.student_layers
            )));
        }
        Ok(())
    }

    fn build(&self, ctx: BuildContext<'_>) -> Result<Box<dyn Term>> {
        let pairs = self.pairs(ctx.student_layers, ctx.teacher_layers)?;
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        let proj = nn::linear(ctx.vs / "distill_hidden_proj", ctx.student_width, ctx.teacher_width, no_bias);
        Ok(Box::new(HiddenKd { pairs, proj: proj.ws, loss: self.loss, weight: self.weight }))
    }
}

/// The built term: `+ weight · mean over pairs of L(h_s[s] Wᵀ, h_t[t])`.
pub struct HiddenKd {
    /// (student layer, teacher layer): indices into the `L+1` hidden states (0 = embeddings).
    pub pairs: Vec<(usize, usize)>,
    /// `W` `[H_t, H_s]`, trained with the student.
    pub proj: Tensor,
    pub loss: HiddenLoss,
    pub weight: f64,
}

impl Term for HiddenKd {
    fn name(&self) -> &'static str {
        "hidden"
    }

    fn describe(&self) -> String {
        let shown: Vec<String> = self.pairs.iter().map(|(s, t)| format!("{s}→{t}")).collect();
        format!("hidden-state KD ({}, weight {}), student→teacher layers {}", self.loss, self.weight, shown.join(" "))
    }

    fn needs(&self) -> Needs {
        Needs { states: true, ..Needs::default() }
    }

    /// # Shapes
    /// Student states `[N, H_s]` and teacher states `[N, H_t]` at the selected rows → scalar.
    fn loss(&self, student: &StepStates<'_>, teacher: &StepStates<'_>) -> Result<Tensor> {
        let mut sum = Tensor::zeros([], (Kind::Float, self.proj.device()));
        for &(s, l) in &self.pairs {
            let (hs, ht) = match (student.rows(s), teacher.rows(l)) {
                (Some(hs), Some(ht)) => (hs, ht), // [N, Hs], [N, Ht]
                _ => {
                    return Err(Error::Invalid(format!(
                        "hidden-state pair ({s}, {l}) is past the student's {} or the teacher's {} states",
                        student.len(),
                        teacher.len()
                    )))
                }
            };
            sum += self.loss.forward(&hs.linear(&self.proj, None::<Tensor>), &ht.to_kind(hs.kind()));
        }
        Ok((sum / self.pairs.len() as f64).g_mul_scalar(self.weight))
    }
}

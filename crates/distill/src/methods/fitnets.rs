//! FitNets hints (`[distill.fitnets]`; Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"):
//! a student layer (the *guided* layer), carried to the teacher's shape by a learned regressor
//! `r`, regresses a teacher layer (the *hint*):
//!
//! ```text
//! + β · (1/|P|) Σ_{(s,t)∈P} mean((r(F_s) − F_t)²)
//! ```
//!
//! `r` is a 1×1 convolution between feature maps `[B, C, H, W]` (spatial sizes matched by
//! average-pooling the larger map, [`crate::losses::feature_map::match_spatial`]) and a linear
//! map between flattened features otherwise (an MLP student guided by a CNN's map, or two
//! vectors); it trains with the student and is dropped afterwards. By default the hint is added
//! to the KD objective for the whole run (the one-stage form most toolkits use); with
//! `stage1 = true` a variant follows the paper: the student first trains on the hint alone (its
//! layers up to the guided one, and the regressor; phase `fitnets-hint-…`), then the KD phase
//! starts from those weights with the logit term only. LM students use [`super::hidden`], the
//! same idea on hidden states.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::{BuildContext, Domain, Needs, StepStates, Term, TermConfig, TermContext};
use crate::losses::feature_map::{hint_loss, match_spatial};
use crate::{Error, Result};

/// `[distill.fitnets]`: `+ weight · mean over pairs of mse(r(F_s), F_t)`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FitNetsCfg {
    /// β, the weight of the hint term (≥ 0; default 1).
    pub weight: f64,
    /// `[[student_feature, teacher_feature], …]`, 0-based indices into the models' features (a
    /// CNN's conv blocks, then its hidden layer; an MLP's hidden layers); default: the middle
    /// feature of each (FitNets' guided and hint layers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<[usize; 2]>>,
    /// FitNets' two stages (in a `[distill.variants.<name>]`): hint-only pre-training, then KD
    /// (default false).
    pub stage1: bool,
}

impl Default for FitNetsCfg {
    fn default() -> Self {
        FitNetsCfg { weight: 1.0, layers: None, stage1: false }
    }
}

impl TermConfig for FitNetsCfg {
    fn key(&self) -> &'static str {
        "fitnets"
    }

    fn validate(&self, ctx: &TermContext) -> Result<()> {
        if ctx.domain == Domain::Lm {
            return Err(Error::Recipe(
                "distill.fitnets is for image students; LM students use distill.hidden (hidden states through a learned projection)".into(),
            ));
        }
        if !(self.weight >= 0.0 && self.weight.is_finite()) {
            return Err(Error::Recipe(format!("distill.fitnets.weight must be ≥ 0, got {}", self.weight)));
        }
        if matches!(&self.layers, Some(l) if l.is_empty()) {
            return Err(Error::Recipe("distill.fitnets.layers is empty (leave it out for the middle layers)".into()));
        }
        Ok(())
    }

    fn build(&self, ctx: BuildContext<'_>) -> Result<Box<dyn Term>> {
        let (ns, nt) = (ctx.student_shapes.len(), ctx.teacher_shapes.len());
        let pairs: Vec<(usize, usize)> = match &self.layers {
            Some(l) => l.iter().map(|&[s, t]| (s, t)).collect(),
            None => vec![(ns.saturating_sub(1) / 2, nt.saturating_sub(1) / 2)],
        };
        let mut regressors = Vec::new();
        for (i, &(s, t)) in pairs.iter().enumerate() {
            let (Some(ss), Some(ts)) = (ctx.student_shapes.get(s), ctx.teacher_shapes.get(t)) else {
                return Err(Error::Recipe(format!(
                    "distill.fitnets.layers: [{s}, {t}] is past the student's {ns} or the teacher's {nt} features (0-based)"
                )));
            };
            let p = &ctx.vs / format!("distill_fitnets_{i}");
            let r = if ss.len() == 3 && ts.len() == 3 {
                Regressor::Conv(nn::conv2d(p, ss[0], ts[0], 1, Default::default()))
            } else {
                let (fs, ft) = (ss.iter().product::<i64>(), ts.iter().product::<i64>());
                Regressor::Linear(nn::linear(p, fs, ft, Default::default()))
            };
            regressors.push(r);
        }
        Ok(Box::new(FitNets { pairs, regressors, weight: self.weight }))
    }
}

/// A guided layer's regressor to the hint's shape.
#[derive(Debug)]
enum Regressor {
    /// 1×1 convolution `C_s → C_t` between feature maps.
    Conv(nn::Conv2D),
    /// Linear map between flattened features.
    Linear(nn::Linear),
}

/// The built term.
pub struct FitNets {
    /// (student feature, teacher feature), 0-based.
    pairs: Vec<(usize, usize)>,
    regressors: Vec<Regressor>,
    weight: f64,
}

impl Term for FitNets {
    fn name(&self) -> &'static str {
        "fitnets"
    }

    fn describe(&self) -> String {
        let shown: Vec<String> = self
            .pairs
            .iter()
            .zip(&self.regressors)
            .map(|((s, t), r)| {
                format!("{s}→{t} ({})", if matches!(r, Regressor::Conv(_)) { "1×1 conv" } else { "linear" })
            })
            .collect();
        format!("FitNets hints (weight {}), student→teacher features {}", self.weight, shown.join(" "))
    }

    fn needs(&self) -> Needs {
        Needs { states: true, ..Needs::default() }
    }

    /// # Shapes
    /// Features `[B, C, H, W]` or `[B, F]` per state → scalar.
    fn loss(&self, student: &StepStates<'_>, teacher: &StepStates<'_>) -> Result<Tensor> {
        let mut sum = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        for (&(s, t), r) in self.pairs.iter().zip(&self.regressors) {
            let (Some(fs), Some(ft)) = (student.states.get(s), teacher.states.get(t)) else {
                return Err(Error::Invalid(format!("FitNets pair ({s}, {t}) is past the models' features")));
            };
            let (reg, target) = match r {
                Regressor::Conv(c) => match_spatial(&fs.apply(c), ft), // [B, C_t, h, w] each
                Regressor::Linear(l) => (fs.flatten(1, -1).apply(l), ft.flatten(1, -1)), // [B, F_t] each
            };
            sum = sum.to_device(reg.device()) + hint_loss(&reg, &target);
        }
        Ok((sum / self.pairs.len() as f64) * self.weight)
    }
}

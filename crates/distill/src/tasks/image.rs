//! Image classification as a [`TrainTask`]: cross-entropy on the labels, or Hinton's
//! `α·T²·KL + (1−α)·CE` against a teacher, plus the extra terms of [`crate::methods`] over the
//! models' features.

use tch::Tensor;

use crate::data::images::jitter;
use crate::data::rng::SplitMix64;
use crate::losses::response::{cross_entropy, KdLoss};
use crate::methods::{StepStates, Term};
use crate::models::Classifier;
use crate::teacher::Teacher;
use crate::train::{StepLoss, TrainTask};
use crate::{Error, Result};

/// One classifier trained on a labelled image set, alone or from a teacher.
pub struct ClassifierTask<'a> {
    pub model: &'a dyn Classifier,
    /// Training images `[N, 1, H, W]`.
    pub x: &'a Tensor,
    /// Labels `[N]` (negative = the student may not see it).
    pub labels: &'a Tensor,
    /// The teacher, for KD: its logits computed once ([`Teacher::Logits`]), or a model or
    /// ensemble run on the same augmented batch as the student ("consistent teaching", Beyer
    /// et al. 2022).
    pub teacher: Option<Teacher<'a>>,
    /// The logit term; `None` trains on the labels alone.
    pub kd: Option<KdLoss>,
    /// Random translation of up to ±N pixels per training image.
    pub jitter: usize,
    /// Example index → row of `x` (a labeled subset for the scratch student).
    pub rows: Option<&'a [i64]>,
    /// Extra terms over the features (need a teacher that is a model).
    pub terms: Vec<Box<dyn Term>>,
    /// Train on the extra terms alone, without labels or soft targets (FitNets' stage 1).
    pub terms_only: bool,
    /// The teacher's features for every training image (`[N, …]` per state), computed once when
    /// the student sees the images unaugmented: the terms read these rows instead of running the
    /// teacher at every step.
    pub teacher_features: Option<&'a [Tensor]>,
}

impl TrainTask for ClassifierTask<'_> {
    fn num_examples(&self) -> usize {
        self.rows.map(|r| r.len()).unwrap_or(self.x.size()[0] as usize)
    }

    fn loss(&mut self, batch: &[usize], rng: &mut SplitMix64) -> Result<StepLoss> {
        let idx: Vec<i64> = match self.rows {
            Some(r) => batch.iter().map(|&i| r[i]).collect(),
            None => batch.iter().map(|&i| i as i64).collect(),
        };
        let idx = Tensor::from_slice(&idx);
        let x = jitter(&self.x.index_select(0, &idx), self.jitter, rng); // [B, 1, H, W]
        let y = self.labels.index_select(0, &idx); // [B]
        let out = self.model.forward_outputs(&x, true); // [B, C], features
        let teacher = match (&self.teacher, self.kd.is_some() || self.terms_only) {
            (Some(t), true) => t,
            _ => return Ok(StepLoss::per_example(cross_entropy(&out.logits, &y), vec![], batch.len())),
        };
        let (mut parts, mut total) = match self.kd.filter(|_| !self.terms_only) {
            Some(kd) => {
                let t = teacher.classifier_logits(&x, &idx)?; // [B, C]
                let p = kd.forward(&out.logits, &t, Some(&y));
                (vec![("soft", p.soft), ("hard", p.hard)], p.total)
            }
            None => (vec![], Tensor::zeros([], (tch::Kind::Float, out.logits.device()))),
        };
        if !self.terms.is_empty() {
            let t_states: Vec<Tensor> = match (self.teacher_features, teacher) {
                (Some(f), _) => f.iter().map(|t| t.index_select(0, &idx)).collect(), // [B, …] each
                (None, Teacher::Classifier(tm)) => tch::no_grad(|| tm.forward_outputs(&x, false)).features,
                (None, _) => {
                    return Err(Error::Invalid(format!("the {} term needs a teacher model", self.terms[0].name())))
                }
            };
            let s_view = StepStates { states: &out.features, attentions: &[], qkv: &[], rows: None, mask: None };
            let t_view = StepStates { states: &t_states, attentions: &[], qkv: &[], rows: None, mask: None };
            for term in &self.terms {
                let v = term.loss(&s_view, &t_view)?;
                parts.push((term.name(), v.detach()));
                total += v;
            }
        }
        Ok(StepLoss::per_example(total, parts, batch.len()))
    }
}

//! Sentence-encoder distillation as a [`TrainTask`]: the student's sentence embedding pulled to
//! the teacher's ([`embedding_loss`]) on unlabeled text, plus the extra terms of
//! [`crate::methods`] over both encoders' hidden states and attention maps at the real tokens.

use tch::{Kind, Tensor};

use crate::data::rng::SplitMix64;
use crate::losses::embedding::embedding_loss;
use crate::methods::{Needs, StepStates, Term};
use crate::models::sentence::Encoder;
use crate::train::{StepLoss, TrainTask};
use crate::Result;

/// One encoder student trained on tokenized texts from a frozen teacher.
pub struct EncoderKdTask<'a> {
    pub student: &'a Encoder,
    pub teacher: &'a Encoder,
    /// Token ids of every training text (special tokens included).
    pub rows: &'a [Vec<i64>],
    /// The teacher's embedding of every row `[N, D]`, computed once (exact: the teacher is
    /// frozen and runs without dropout).
    pub teacher_embeddings: &'a Tensor,
    /// Weights of the cosine and MSE parts.
    pub cosine: f64,
    pub mse: f64,
    pub terms: Vec<Box<dyn Term>>,
}

impl TrainTask for EncoderKdTask<'_> {
    fn num_examples(&self) -> usize {
        self.rows.len()
    }

    fn loss(&mut self, batch: &[usize], _rng: &mut SplitMix64) -> Result<StepLoss> {
        let rows: Vec<&[i64]> = batch.iter().map(|&i| self.rows[i].as_slice()).collect();
        let (ids, mask) = self.student.pad(&rows);
        let needs = Needs::of(&self.terms);
        let (s_out, s_emb) = self.student.forward(&ids, &mask, needs.attentions, true);
        let idx = Tensor::from_slice(&batch.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let t_emb = self.teacher_embeddings.index_select(0, &idx.to(self.teacher_embeddings.device()));
        let (mut total, cos, mse) = embedding_loss(&s_emb, &t_emb.to(s_emb.device()), self.cosine, self.mse);
        let mut parts = vec![("cosine", cos), ("mse", mse)];
        if !self.terms.is_empty() {
            let t_out = tch::no_grad(|| self.teacher.bert.forward(&ids, &mask, needs.attentions, false));
            let real = mask.view([-1]).nonzero().squeeze_dim(1); // flat indices of real tokens
            let s_view = StepStates {
                states: &s_out.hidden_states,
                attentions: &s_out.attentions,
                qkv: &[],
                rows: Some(&real),
                mask: Some(&mask),
            };
            let t_view = StepStates {
                states: &t_out.hidden_states,
                attentions: &t_out.attentions,
                qkv: &[],
                rows: Some(&real),
                mask: Some(&mask),
            };
            for term in &self.terms {
                let v = term.loss(&s_view, &t_view)?;
                total += &v;
                parts.push((term.name(), v.to_kind(Kind::Float)));
            }
        }
        Ok(StepLoss::per_example(total, parts, batch.len()))
    }
}

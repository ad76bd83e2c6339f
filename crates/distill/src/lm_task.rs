//! The causal-LM distillation objective as a [`TrainTask`]: the student's next-token
//! distributions against a teacher's, blended with cross-entropy on the real next tokens.
//! `distill run` trains with it and `distill bench step` times exactly this code.

use distill_text::TokenBlocks;
use tch::Tensor;

use crate::cache::CachedTeacher;
use crate::data::rng::SplitMix64;
use crate::eval::lm_batch;
use crate::losses::chunked::{ChunkTeacher, ChunkedKd};
use crate::losses::divergence::SparseTeacher;
use crate::losses::sampled::TailSamples;
use crate::models::llama::Llama;
use crate::train::{StepLoss, TrainTask};
use crate::{Error, Result};

/// Where the teacher's distributions come from.
pub enum TeacherSource<'a> {
    /// The model, run under no-grad on every batch (online).
    Model(&'a Llama),
    /// Its top-k, read from an offline cache of the same rows.
    Cache(&'a CachedTeacher),
}

/// KD of a causal LM on packed rows: `α·T²·D(p_t^T, p_s^T) + (1−α)·CE` over every position
/// with a real next token, computed in chunks of tokens from the student's final hidden states
/// (never the whole batch's `[tokens, vocab]` logits at once). `α = 0` never touches the
/// teacher (the scratch twin).
pub struct LmKdTask<'a> {
    pub student: &'a Llama,
    /// `None` only when `loss.alpha == 0`.
    pub teacher: Option<TeacherSource<'a>>,
    pub blocks: &'a TokenBlocks,
    pub loss: ChunkedKd,
}

impl TrainTask for LmKdTask<'_> {
    fn num_examples(&self) -> usize {
        self.blocks.n_blocks()
    }

    fn loss(&mut self, batch: &[usize], _rng: &mut SplitMix64) -> Result<StepLoss> {
        let b = lm_batch(self.blocks, batch, self.student.device());
        let idx = b.targets.ge(0).view([-1]).nonzero().squeeze_dim(1); // [N]
        let y = b.targets.view([-1]).index_select(0, &idx); // [N]
        let h = self.student.forward_hidden(&b.ids, b.mask.as_ref(), true)?; // [B, T, H]
        let h = h.view([-1, h.size()[2]]).index_select(0, &idx); // [N, H]
        let w = self.student.lm_head_weight(); // [V, H]
        let soft = self.loss.alpha > 0.0;
        let parts = match (&self.teacher, soft) {
            (_, false) => self.loss.forward(&h, &w, None, Some(&y)),
            (Some(TeacherSource::Model(t)), true) => {
                let th = tch::no_grad(|| t.forward_hidden(&b.ids, b.mask.as_ref(), false))?; // [B, T, Ht]
                let th = th.view([-1, th.size()[2]]).index_select(0, &idx); // [N, Ht]
                let tw = t.lm_head_weight().detach(); // [V, Ht]
                self.loss.forward(&h, &w, Some(ChunkTeacher::DenseHidden { hidden: &th, weight: &tw }), Some(&y))
            }
            (Some(TeacherSource::Cache(c)), true) => {
                let [ids, logp, log_tail] = c.rows(batch, self.student.device())?; // [B·T, K+S] ×2, [B·T]
                let (ids, logp) = (ids.index_select(0, &idx), logp.index_select(0, &idx)); // [N, K+S]
                let (k, s) = (c.reader().top_k() as i64, c.reader().tail_samples() as i64);
                let st = SparseTeacher {
                    ids: ids.narrow(1, 0, k),
                    logp: logp.narrow(1, 0, k),
                    log_tail: log_tail.index_select(0, &idx),
                };
                if s > 0 {
                    let samples = TailSamples { ids: ids.narrow(1, k, s), logp: logp.narrow(1, k, s) };
                    let teacher = ChunkTeacher::Sampled { top: &st, samples: &samples };
                    self.loss.forward(&h, &w, Some(teacher), Some(&y))
                } else {
                    self.loss.forward(&h, &w, Some(ChunkTeacher::Sparse(&st)), Some(&y))
                }
            }
            (None, true) => return Err(Error::Invalid("distillation with alpha > 0 needs a teacher".into())),
        };
        let parts_out: Vec<(&'static str, Tensor)> =
            if soft { vec![("soft", parts.soft), ("hard", parts.hard)] } else { vec![] };
        Ok(StepLoss { total: parts.total, parts: parts_out })
    }
}

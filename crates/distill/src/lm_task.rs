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
use crate::losses::hidden::HiddenLoss;
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
    /// `None` only when `loss.alpha == 0` and there is no `hidden` term.
    pub teacher: Option<TeacherSource<'a>>,
    pub blocks: &'a TokenBlocks,
    pub loss: ChunkedKd,
    /// Feature KD on intermediate states, added to the loss (online teacher only).
    pub hidden: Option<HiddenKd>,
}

/// `+ weight · mean over pairs of L(h_s[s] Wᵀ, h_t[t])` at every position with a real next
/// token; see [`crate::losses::hidden`].
pub struct HiddenKd {
    /// (student layer, teacher layer): indices into the `L+1` hidden states (0 = embeddings).
    pub pairs: Vec<(usize, usize)>,
    /// `W` `[H_t, H_s]`, trained with the student.
    pub proj: Tensor,
    pub loss: HiddenLoss,
    pub weight: f64,
}

impl TrainTask for LmKdTask<'_> {
    fn num_examples(&self) -> usize {
        self.blocks.n_blocks()
    }

    fn loss(&mut self, batch: &[usize], _rng: &mut SplitMix64) -> Result<StepLoss> {
        let b = lm_batch(self.blocks, batch, self.student.device());
        let idx = b.targets.ge(0).view([-1]).nonzero().squeeze_dim(1); // [N]
        let y = b.targets.view([-1]).index_select(0, &idx); // [N]

        // Rows of a [B, T, H] state at the positions with a real next token → [N, H].
        let rows = |x: &Tensor| x.view([-1, x.size()[2]]).index_select(0, &idx);
        let (h, states) = match &self.hidden {
            Some(_) => self.student.forward_hidden_states(&b.ids, b.mask.as_ref(), true)?, // [B, T, H], L+1 × [B, T, H]
            None => (self.student.forward_hidden(&b.ids, b.mask.as_ref(), true)?, Vec::new()),
        };
        let h = rows(&h); // [N, H]
        let w = self.student.lm_head_weight(); // [V, H]
        let soft = self.loss.alpha > 0.0;
        if self.hidden.is_some() && !matches!(self.teacher, Some(TeacherSource::Model(_))) {
            return Err(Error::Invalid("hidden-state KD needs the online teacher (a model, not a cache)".into()));
        }
        let mut hidden_term = None;
        let parts = match (&self.teacher, soft) {
            (_, false) if self.hidden.is_none() => self.loss.forward(&h, &w, None, Some(&y)),
            (Some(TeacherSource::Model(t)), _) => {
                let (th, t_states) = tch::no_grad(|| match &self.hidden {
                    Some(_) => t.forward_hidden_states(&b.ids, b.mask.as_ref(), false),
                    None => Ok((t.forward_hidden(&b.ids, b.mask.as_ref(), false)?, Vec::new())),
                })?; // [B, T, Ht], L_t+1 × [B, T, Ht]
                if let Some(hk) = &self.hidden {
                    let mut sum = Tensor::zeros([], (tch::Kind::Float, h.device()));
                    for &(s, l) in &hk.pairs {
                        let (hs, ht) = match (states.get(s), t_states.get(l)) {
                            (Some(hs), Some(ht)) => (rows(hs), rows(ht)), // [N, Hs], [N, Ht]
                            _ => {
                                return Err(Error::Invalid(format!(
                                    "hidden-state pair ({s}, {l}) is past the student's {} or the teacher's {} states",
                                    states.len(),
                                    t_states.len()
                                )))
                            }
                        };
                        sum += hk.loss.forward(&hs.linear(&hk.proj, None::<Tensor>), &ht.to_kind(hs.kind()));
                    }
                    hidden_term = Some((sum / hk.pairs.len() as f64).g_mul_scalar(hk.weight));
                }
                let th = rows(&th); // [N, Ht]
                let tw = t.lm_head_weight().detach(); // [V, Ht]
                let teacher = soft.then_some(ChunkTeacher::DenseHidden { hidden: &th, weight: &tw });
                self.loss.forward(&h, &w, teacher, Some(&y))
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
            (_, false) => unreachable!("checked above: hidden-state KD has an online teacher"),
        };
        let mut parts_out: Vec<(&'static str, Tensor)> =
            if soft { vec![("soft", parts.soft), ("hard", parts.hard)] } else { vec![] };
        let total = match hidden_term {
            Some(hterm) => {
                parts_out.push(("hidden", hterm.detach()));
                parts.total + hterm
            }
            None => parts.total,
        };
        Ok(StepLoss { total, parts: parts_out })
    }
}

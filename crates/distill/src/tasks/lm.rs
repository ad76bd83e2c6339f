//! The causal-LM distillation objective as a [`TrainTask`]: the student's next-token
//! distributions against a teacher's, blended with cross-entropy on the real next tokens, plus
//! the extra terms of [`crate::methods`]. `distill run` trains with it and `distill bench step`
//! times exactly this code.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use distill_text::TokenBlocks;
use tch::Tensor;

use crate::data::rng::SplitMix64;
use crate::data::text::lm_batch;
use crate::io::export::GgufType;
use crate::losses::chunked::{ChunkTeacher, ChunkedKd};
use crate::methods::on_policy::OnPolicyCfg;
use crate::methods::{Needs, StepStates, Term};
use crate::models::lm::{CausalLm, ForwardOptions};
use crate::student::quant::quantized_view;
use crate::teacher::Teacher;
use crate::train::{StepLoss, TrainTask};
use crate::{Error, Result};

/// KD of a causal LM on packed rows: `α·T²·D(p_t^T, p_s^T) + (1−α)·CE` over every position
/// with a real next token, computed in chunks of tokens from the student's final hidden states
/// (never the whole batch's `[tokens, vocab]` logits at once), plus each extra term. `α = 0`
/// without terms never touches the teacher (the scratch twin).
pub struct LmKdTask<'a> {
    pub student: &'a CausalLm,
    /// An LM ([`Teacher::Lm`]) or its cache ([`Teacher::Cache`]); `None` only when
    /// `loss.alpha == 0` and there are no terms.
    pub teacher: Option<Teacher<'a>>,
    pub blocks: &'a TokenBlocks,
    /// The logit term.
    pub loss: ChunkedKd,
    /// Extra terms added to the loss (feature KD, …), each logged under its name.
    pub terms: Vec<Box<dyn Term>>,
    /// Quantization-aware training: the student's forward sees its weights as a GGUF export of
    /// this type stores them (straight-through gradients to the full-precision weights).
    pub quant: Option<GgufType>,
    /// The online teacher's final hidden states shared with the other phases of the run that
    /// train on the same rows (see [`TeacherMemo`]).
    pub memo: Option<&'a TeacherMemo>,
    /// On-policy distillation (GKD): some steps train on the student's own continuations.
    pub on_policy: Option<OnPolicyCfg>,
}

/// An online teacher's final hidden states at the positions with a real next token, `[N, Ht]`,
/// kept per batch (keyed by its row indices) so that the phases of one run that train on the
/// same rows — the KD student, a twin from another init, QAD from the KD student — run the
/// teacher once per batch instead of once per phase. Exact: a later phase reads the very values
/// the teacher computed (its logits are `hidden · Wᵀ`, computed chunk by chunk as from a fresh forward); only
/// the logit term uses it (terms that read intermediate states run the teacher). Stops storing
/// at `limit_bytes`.
pub struct TeacherMemo {
    map: RefCell<HashMap<Vec<usize>, Tensor>>,
    bytes: Cell<usize>,
    limit_bytes: usize,
}

impl TeacherMemo {
    pub fn new(limit_bytes: usize) -> Self {
        Self { map: RefCell::new(HashMap::new()), bytes: Cell::new(0), limit_bytes }
    }

    /// The stored hidden states of `rows`, or `compute()`'s (stored while under the limit).
    fn get_or(&self, rows: &[usize], compute: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        if let Some(t) = self.map.borrow().get(rows) {
            return Ok(t.shallow_clone());
        }
        let t = compute()?;
        let size = t.numel() * t.kind().elt_size_in_bytes();
        if self.bytes.get() + size <= self.limit_bytes {
            self.bytes.set(self.bytes.get() + size);
            self.map.borrow_mut().insert(rows.to_vec(), t.shallow_clone());
        }
        Ok(t)
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TrainTask for LmKdTask<'_> {
    fn num_examples(&self) -> usize {
        self.blocks.n_blocks()
    }

    fn loss(&mut self, batch: &[usize], rng: &mut SplitMix64) -> Result<StepLoss> {
        let view;
        let student = match self.quant {
            Some(ty) => {
                view = quantized_view(self.student, ty)?;
                &view
            }
            None => self.student,
        };
        let mut b = lm_batch(self.blocks, batch, student.device());
        // An on-policy step: the rows hold the student's own text, so the memo (keyed by rows)
        // must not answer for them.
        let mut on_policy = false;
        if let Some(op) = &self.on_policy {
            if let Some(own) = op.rewrite(student, &b, rng)? {
                b = own;
                on_policy = true;
            }
        }
        let idx = b.targets.ge(0).view([-1]).nonzero().squeeze_dim(1); // [N]
        let y = b.targets.view([-1]).index_select(0, &idx); // [N]

        // Rows of a [B, T, H] state at the positions with a real next token → [N, H].
        let rows = |x: &Tensor| x.view([-1, x.size()[2]]).index_select(0, &idx);
        let needs = Needs::of(&self.terms);
        let opts = |train| ForwardOptions {
            train,
            hidden_states: needs.states,
            attentions: needs.attentions,
            internals: false,
            qkv: needs.qkv,
        };
        // [B, T, H], L+1 × [B, T, H] (when needed), L × [B, nh, T, T] (when needed)
        let st = student.forward_states(&b.ids, b.mask.as_ref(), opts(true))?;
        let (h, states, attns, qkv) = (st.last, st.hidden_states, st.attentions, st.qkv);
        let h = rows(&h); // [N, H]
        let w = student.head(); // [V, H] and the soft cap
        let soft = self.loss.alpha > 0.0;
        if !self.terms.is_empty() && !matches!(self.teacher, Some(Teacher::Lm(_))) {
            return Err(Error::Invalid(format!(
                "the {} term needs the online teacher (a model, not a cache)",
                self.terms[0].name()
            )));
        }
        let mut extra = Vec::with_capacity(self.terms.len());
        let parts = match (&self.teacher, soft) {
            (_, false) if self.terms.is_empty() => self.loss.forward(&h, &w, None, Some(&y)),
            (Some(Teacher::Lm(t)), _) => {
                let forward = || tch::no_grad(|| t.forward_states(&b.ids, b.mask.as_ref(), opts(false)));
                // [N, Ht]: from the memo when only the logit term reads the teacher; otherwise
                // the terms read its intermediate states too.
                let th = match self.memo.filter(|_| self.terms.is_empty() && !on_policy) {
                    Some(memo) => memo.get_or(batch, || Ok(rows(&forward()?.last)))?,
                    None => {
                        // [B, T, Ht], L_t+1 × [B, T, Ht], L_t × [B, nh_t, T, T]
                        let ts = forward()?;
                        let mask = b.mask.as_ref();
                        let s_view =
                            StepStates { states: &states, attentions: &attns, qkv: &qkv, rows: Some(&idx), mask };
                        let t_view = StepStates {
                            states: &ts.hidden_states,
                            attentions: &ts.attentions,
                            qkv: &ts.qkv,
                            rows: Some(&idx),
                            mask,
                        };
                        for term in &self.terms {
                            extra.push((term.name(), term.loss(&s_view, &t_view)?));
                        }
                        rows(&ts.last)
                    }
                };
                let tw = t.lm_head_weight().detach(); // [V, Ht]
                let cap = t.config().final_softcap;
                let teacher = soft.then_some(ChunkTeacher::DenseHidden { hidden: &th, weight: &tw, softcap: cap });
                self.loss.forward(&h, &w, teacher, Some(&y))
            }
            (Some(Teacher::Mixture(mx)), true) => {
                // Every member's final states at the predicted positions, [N, H_k] each.
                let hs: Vec<Tensor> = mx
                    .members
                    .iter()
                    .map(|m| Ok(rows(&tch::no_grad(|| m.forward_states(&b.ids, b.mask.as_ref(), opts(false)))?.last)))
                    .collect::<Result<_>>()?;
                let log_probs = |start: i64, len: i64, t: f64| mx.chunk_log_probs(&hs, &y, start, len, t);
                self.loss.forward(&h, &w, Some(ChunkTeacher::LogProbs(&log_probs)), Some(&y))
            }
            (Some(Teacher::Cache(c)), true) => {
                let cached = c.rows(batch, student.device())?.select(&idx); // [N, K], [N, S]
                let teacher = match &cached.samples {
                    Some(samples) => ChunkTeacher::Sampled { top: &cached.top, samples },
                    None => ChunkTeacher::Sparse(&cached.top),
                };
                self.loss.forward(&h, &w, Some(teacher), Some(&y))
            }
            (Some(_), true) => return Err(Error::Invalid("an LM student needs an LM teacher or its cache".into())),
            (None, true) => return Err(Error::Invalid("distillation with alpha > 0 needs a teacher".into())),
            (_, false) => unreachable!("checked above: extra terms have an online teacher"),
        };
        let mut parts_out: Vec<(&'static str, Tensor)> =
            if soft { vec![("soft", parts.soft), ("hard", parts.hard)] } else { vec![] };
        if self.on_policy.is_some() {
            parts_out.push(("on_policy", Tensor::from(if on_policy { 1.0f32 } else { 0.0 })));
        }
        let mut total = parts.total;
        for (name, term) in extra {
            parts_out.push((name, term.detach()));
            total += term;
        }
        Ok(StepLoss { total, parts: parts_out, weight: idx.size()[0] as f64 })
    }
}

//! The causal-LM distillation objective as a [`TrainTask`]: the student's next-token
//! distributions against a teacher's, blended with cross-entropy on the real next tokens.
//! `distill run` trains with it and `distill bench step` times exactly this code.

use distill_text::TokenBlocks;
use tch::Tensor;

use crate::data::rng::SplitMix64;
use crate::eval::lm_batch;
use crate::losses::response::{cross_entropy, KdLoss};
use crate::models::llama::{ForwardOptions, Llama};
use crate::train::{StepLoss, TrainTask};
use crate::Result;

/// KD of a causal LM on packed rows: `α·T²·KL(p_t^T ‖ p_s^T) + (1−α)·CE` over every position
/// with a real next token; `α = 0` never runs the teacher (the scratch twin).
pub struct LmKdTask<'a> {
    pub student: &'a Llama,
    pub teacher: &'a Llama,
    pub blocks: &'a TokenBlocks,
    pub kd: KdLoss,
}

impl TrainTask for LmKdTask<'_> {
    fn num_examples(&self) -> usize {
        self.blocks.n_blocks()
    }

    fn loss(&mut self, batch: &[usize], _rng: &mut SplitMix64) -> Result<StepLoss> {
        let b = lm_batch(self.blocks, batch, self.student.device());
        let idx = b.targets.ge(0).view([-1]).nonzero().squeeze_dim(1); // [N]
        let y = b.targets.view([-1]).index_select(0, &idx); // [N]
        let opts = ForwardOptions { train: true, ..Default::default() };
        let logits = self.student.forward(&b.ids, b.mask.as_ref(), opts)?.logits; // [B, T, V]
        let v = logits.size()[2];
        let s = logits.view([-1, v]).index_select(0, &idx); // [N, V]
        if self.kd.alpha == 0.0 {
            return Ok(StepLoss { total: cross_entropy(&s, &y), parts: vec![] });
        }
        let t = tch::no_grad(|| -> Result<Tensor> {
            let tl = self.teacher.forward(&b.ids, b.mask.as_ref(), ForwardOptions::default())?.logits; // [B, T, V]
            Ok(tl.view([-1, v]).index_select(0, &idx)) // [N, V]
        })?;
        let p = self.kd.forward(&s, &t, Some(&y));
        Ok(StepLoss { total: p.total, parts: vec![("soft", p.soft), ("hard", p.hard)] })
    }
}

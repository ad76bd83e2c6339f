//! On-policy distillation (GKD, Agarwal et al. 2024): with probability λ a step's rows keep only
//! their first `prompt_tokens` tokens and the student continues each one by sampling (no
//! gradient); the teacher then scores every token the student wrote, and the logit term — the
//! recipe's divergence, e.g. `jsd` with `beta` (β = 1 is per-token reverse KL) — covers only those
//! tokens. Otherwise (probability 1 − λ) the step is supervised KD on the fixed rows. λ = 0 is
//! plain KD; the student learns on the sequences it will itself produce, so its training and
//! test distributions agree (no exposure bias).
//!
//! `[distill.on_policy]` of an LM recipe. Needs an online teacher (a cache has no scores for new
//! text) and `distill.alpha = 1` (no cross-entropy on the student's own samples).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::data::rng::SplitMix64;
use crate::data::text::LmBatch;
use crate::eval::generate::{generate_batch_seeded, GenerateOptions};
use crate::models::lm::CausalLm;
use crate::{Error, Result};

/// `[distill.on_policy]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnPolicyCfg {
    /// Probability λ that a step trains on the student's own continuations.
    pub lambda: f64,
    /// Tokens of each row kept as the prompt; the student writes the rest of the row.
    #[serde(default = "default_prompt_tokens")]
    pub prompt_tokens: usize,
    /// Sampling temperature of the student (GKD samples at 1).
    #[serde(default = "one")]
    pub temperature: f64,
    /// Nucleus sampling of the student (1 = off).
    #[serde(default = "one")]
    pub top_p: f64,
}

fn default_prompt_tokens() -> usize {
    32
}
fn one() -> f64 {
    1.0
}

impl OnPolicyCfg {
    /// Checks the values against the row length, the teacher and α (no tensor).
    pub fn validate(&self, seq_len: usize, online_teacher: bool, alpha: f64) -> Result<()> {
        let bad = |m: String| Err(Error::Recipe(format!("distill.on_policy.{m}")));
        if !(0.0..=1.0).contains(&self.lambda) {
            return bad(format!("lambda must be in [0, 1], got {}", self.lambda));
        }
        if self.prompt_tokens == 0 || self.prompt_tokens + 1 >= seq_len {
            return bad(format!(
                "prompt_tokens must be in 1..{} (the rows are data.pack.seq_len = {seq_len} tokens and the student writes the rest), got {}",
                seq_len - 1,
                self.prompt_tokens
            ));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be > 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !online_teacher {
            return Err(Error::Recipe(
                "distill.on_policy needs an online teacher to score the student's text; drop teacher.cache".into(),
            ));
        }
        if alpha != 1.0 {
            return Err(Error::Recipe(format!(
                "distill.on_policy trains on the divergence alone (no cross-entropy on the student's own samples); set distill.alpha = 1, got {alpha}"
            )));
        }
        Ok(())
    }

    /// With probability λ (drawn from the step's `rng`), the batch with every row's tokens after
    /// the prompt replaced by the student's sample and the targets restricted to those tokens;
    /// `None` for a supervised step, or when a row has padding inside its prompt.
    pub fn rewrite(&self, student: &CausalLm, b: &LmBatch, rng: &mut SplitMix64) -> Result<Option<LmBatch>> {
        if rng.next_f64() >= self.lambda {
            return Ok(None);
        }
        let (n, t) = b.ids.size2()?;
        let p = self.prompt_tokens as i64;
        if let Some(m) = &b.mask {
            if m.narrow(1, 0, p).eq(0).any().int64_value(&[]) != 0 {
                return Ok(None);
            }
        }
        let prompt = b.ids.narrow(1, 0, p).to_device(tch::Device::Cpu).contiguous(); // [B, P]
        let flat = Vec::<i64>::try_from(&prompt.view([-1]))?;
        let prompts: Vec<Vec<i64>> = flat.chunks(p as usize).map(<[i64]>::to_vec).collect();
        let seeds: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
        let opts = GenerateOptions {
            max_new_tokens: (t - p) as usize,
            temperature: self.temperature,
            top_k: 0,
            top_p: self.top_p,
            seed: 0,
            eos_id: None,
            repetition_penalty: 1.0,
        };
        let outs = generate_batch_seeded(student, &prompts, &seeds, &opts, |_, _| false)?;
        let mut ids = Vec::with_capacity((n * t) as usize);
        for (pr, o) in prompts.iter().zip(&outs) {
            ids.extend_from_slice(pr);
            ids.extend_from_slice(o);
        }
        let dev = b.ids.device();
        let ids = Tensor::from_slice(&ids).view([n, t]).to_device(dev); // [B, T]
                                                                        // Position j predicts token j + 1: the student's tokens are P..T−1, so the targets are
                                                                        // positions P−1..T−2; the rest is −100.
        let pos = Tensor::arange(t, (tch::Kind::Int64, dev)).view([1, t]); // [1, T]
        let keep = pos.ge(p - 1).logical_and(&pos.lt(t - 1)); // [1, T]
        let next = Tensor::cat(&[ids.narrow(1, 1, t - 1), Tensor::full([n, 1], -100, (tch::Kind::Int64, dev))], 1); // [B, T]
        let targets = next.where_self(&keep, &Tensor::full([1, 1], -100i64, (tch::Kind::Int64, dev))); // [B, T]
        Ok(Some(LmBatch { ids, targets, mask: None }))
    }
}

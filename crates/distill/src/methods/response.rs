//! The logit term every task has: response KD (Hinton, Vinyals & Dean 2015) — the student's
//! temperature-softened distribution pulled toward the teacher's, blended with cross-entropy on
//! the hard labels:
//!
//! ```text
//! L = α · T² · D(p_t^T, p_s^T) + (1 − α) · CE(y, z_s)
//! ```
//!
//! For LMs `D` is any divergence of [`crate::losses::divergence`] (forward/reverse KL, JSD(β),
//! skew KL, TVD) and the term is computed chunk by chunk from the student's final hidden
//! states, so `[tokens, vocab]` never exists for a batch ([`ChunkedKd`]); the teacher may be a
//! model (dense) or an offline top-k cache (sparse, with tail samples). For classifiers it is
//! the dense [`KdLoss`] (`D` = forward KL, "batchmean"). `α = 0` is the scratch baseline
//! through the identical pipeline. The formulas, reductions and tests live with the kernels in
//! [`crate::losses`]; this file builds the term a phase trains with from the recipe's
//! `[distill]` section ([`LmDistill`](super::LmDistill), [`ImageDistill`](super::ImageDistill)).

use crate::losses::chunked::ChunkedKd;
use crate::losses::divergence::Divergence;
use crate::losses::response::KdLoss;

use super::{ImageDistill, LmDistill};

/// The LM logit term of a phase that trains with weight `alpha` on the soft term;
/// `divergence` is the recipe's, resolved once ([`LmDistill::divergence`]).
pub fn lm_term(d: &LmDistill, divergence: Divergence, alpha: f64) -> ChunkedKd {
    ChunkedKd { divergence, temperature: d.temperature, alpha, chunk_rows: d.chunk_tokens as i64 }
}

/// The classifier logit term at temperature `temperature` (the main one or a sweep's).
pub fn image_term(d: &ImageDistill, temperature: f64) -> KdLoss {
    KdLoss { temperature, alpha: d.alpha }
}

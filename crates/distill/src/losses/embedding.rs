//! The embedding loss of sentence-encoder distillation (sentence-transformers' `MSELoss`
//! distillation, plus a cosine term): for student and teacher sentence embeddings `s`, `t`
//! `[B, D]`,
//!
//! `L = w_cos · mean_b(1 − cos(s_b, t_b)) + w_mse · mean_{b,d}((s − t)²)`.
//!
//! The cosine term ignores scale (what retrieval reads); the MSE term (torch's `MSELoss`,
//! mean over batch and dimensions) also matches the length. Tested against PyTorch
//! (`tests/encoder.rs`).

use tch::{Kind, Tensor};

/// `(total, cosine part, mse part)`; parts are unweighted.
pub fn embedding_loss(s: &Tensor, t: &Tensor, w_cos: f64, w_mse: f64) -> (Tensor, Tensor, Tensor) {
    let s = s.to_kind(Kind::Float);
    let t = t.to_kind(Kind::Float);
    let c = Tensor::cosine_similarity(&s, &t, 1, 1e-8); // [B]
    let cos = (c.ones_like() - c).mean(Kind::Float);
    let mse = (&s - &t).square().mean(Kind::Float);
    let total = &cos * w_cos + &mse * w_mse;
    (total, cos, mse)
}

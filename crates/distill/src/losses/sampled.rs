//! A top-k teacher completed by samples of its tail: an unbiased sparse estimate of the full
//! teacher distribution, for forward-KL training from a cache.
//!
//! A top-k cache knows the teacher's top-k probabilities `p_i` and the tail's total mass `m`,
//! nothing about how `m` spreads over the `V − K` other tokens. With `S` ids `x_1 … x_S` drawn
//! with replacement from the tail distribution `p_v / m` (`v` outside the top-k), the sparse
//! distribution
//!
//! ```text
//! p̂ = Σ_{i<K} p_i·δ_{id_i} + Σ_j (m/S)·δ_{x_j}            E[p̂] = p   (exactly, at T = 1)
//! ```
//!
//! is an unbiased estimate of the teacher's (Anshumann et al. 2025, "Sparse Logit Sampling",
//! sample the teacher instead of truncating it; here only the tail is sampled and the top-k
//! kept exact). Forward KL is linear in the teacher distribution, so `KL(p̂ ‖ p_s)` has an
//! unbiased gradient `(p_s − p̂)/T` with respect to the student's logits — the top-k + tail-bin
//! loss only matches `p_s`'s tail *total* to `m`.
//!
//! At temperature T the teacher is `q_T(v) ∝ p_v^{1/T}`; the tail's share
//! `Σ_tail p_v^{1/T} = m·E[p_x^{1/T − 1}]` is estimated by self-normalised importance sampling:
//!
//! ```text
//! a_i = logp_i / T                                   (top-k)
//! a_j = log m − log S + (1/T − 1)·logp_{x_j}         (tail samples)
//! q̂_T = softmax(a)  over the K + S entries            (exact normalisation at T = 1)
//! ```
//!
//! `q̂_T` is consistent (exact as S → ∞) and unbiased at T = 1. Samples may repeat; the loss's
//! value merges repeated ids (`Σ_e q̂_e·(log M_e − log p_s(id_e))`, `M_e` the total weight of
//! `id_e`), so it is the KL between the merged sparse teacher and the student.

use tch::{Kind, Tensor};

use super::divergence::SparseTeacher;

/// `S` tail samples per row: ids drawn from the teacher's distribution outside its top-k, and
/// their T = 1 log-probabilities over the full vocabulary.
#[derive(Debug)]
pub struct TailSamples {
    /// `[N, S]` i64, none of them among the row's top-k ids (repeats allowed).
    pub ids: Tensor,
    /// `[N, S]` f32, `log p_{x_j}` (−∞ for a row without tail mass).
    pub logp: Tensor,
}

impl TailSamples {
    /// Rows `start..start+len` (views).
    pub fn narrow(&self, start: i64, len: i64) -> TailSamples {
        TailSamples { ids: self.ids.narrow(0, start, len), logp: self.logp.narrow(0, start, len) }
    }

    /// S.
    pub fn samples(&self) -> i64 {
        self.ids.size()[1]
    }

    /// The sparse teacher `q̂_T` over the K + S entries of `top` and these samples (module doc):
    /// `(ids, log q̂_T, log M)`, each `[N, K+S]`, where `M_e` is the total weight of entry `e`'s id
    /// (equal to `q̂_e` unless the id was drawn more than once).
    pub fn log_probs(&self, top: &SparseTeacher, temperature: f64) -> (Tensor, Tensor, Tensor) {
        tch::no_grad(|| {
            let t = temperature;
            let s = self.samples();
            let dev = top.logp.device();
            let a_top = top.logp.to_kind(Kind::Float) / t; // [N, K]
            let a_tail = top.log_tail.to_kind(Kind::Float).unsqueeze(1) - (s as f64).ln()
                + self.logp.to_kind(Kind::Float).to_device(dev) * (1.0 / t - 1.0); // [N, S]
                                                                                   // A row without tail mass has log_tail = −∞ and sample logp −∞: (−∞)·(1/T − 1) may be
                                                                                   // +∞ for T > 1, so its weights are forced to −∞.
            let a_tail = a_tail.masked_fill(&top.log_tail.to_device(dev).isneginf().unsqueeze(1), f64::NEG_INFINITY);
            let log_q = Tensor::cat(&[a_top, a_tail], 1).log_softmax(-1, Kind::Float); // [N, K+S]
            let k = top.k();
            let sid = self.ids.to_device(dev); // [N, S]
            let q_tail = log_q.narrow(1, k, s).exp(); // [N, S]
            let same = sid.unsqueeze(2).eq_tensor(&sid.unsqueeze(1)).to_kind(Kind::Float); // [N, S, S]
            let merged = same.matmul(&q_tail.unsqueeze(2)).squeeze_dim(2).log(); // [N, S]
            let log_m = Tensor::cat(&[log_q.narrow(1, 0, k), merged], 1); // [N, K+S]
            let ids = Tensor::cat(&[top.ids.to_device(dev), sid], 1); // [N, K+S]
            (ids, log_q, log_m)
        })
    }
}

/// `Σ_rows Σ_e q̂_e·(log M_e − log p_s(id_e))` for a chunk: the forward KL (summed over rows,
/// not scaled) between the merged sparse teacher and the student's log-probabilities
/// `log_ps: [C, V]` at T. Differentiable in `log_ps`.
pub fn sampled_forward_kl(ids: &Tensor, log_q: &Tensor, log_m: &Tensor, log_ps: &Tensor) -> Tensor {
    let diff = (log_m - log_ps.gather(1, ids, false)).nan_to_num(0.0, f64::INFINITY, 0.0); // [C, K+S]
    (log_q.exp() * diff).sum(Kind::Float)
}

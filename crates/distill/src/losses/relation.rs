//! Losses between the *relations* inside a batch or a sequence rather than single outputs:
//! relational KD and MiniLM's self-attention relations.
//!
//! - **RKD-distance** (Park et al. 2019, "Relational Knowledge Distillation", eq. 4–5): pairwise
//!   Euclidean distances of the `N` embeddings `[N, D]` of a batch, each divided by the mean of the
//!   off-diagonal distances, compared by Huber loss (`F.smooth_l1_loss`, δ = 1, mean over the
//!   `N²` entries): `L = mean ℓ_δ(ψ_D(s_i, s_j), ψ_D(t_i, t_j))`. Distances are
//!   `sqrt(clamp(‖e_i‖² + ‖e_j‖² − 2 e_i·e_j, 1e-12))` with the diagonal set to 0, as in the
//!   authors' code. Widths may differ: only distances are compared.
//! - **RKD-angle** (eq. 6–7): for every triplet (i, j, k), the cosine of the angle at `j`,
//!   `⟨(e_i − e_j)/‖e_i − e_j‖, (e_k − e_j)/‖e_k − e_j‖⟩` (`[N, N, N]`), compared by Huber loss
//!   (mean over `N³`). The paper weights distance 25 and angle 50.
//! - **Self-attention relation KD** (MiniLM, Wang et al. 2020; MiniLMv2, Wang et al. 2021):
//!   a layer's queries, keys or values `[B, T, D]` (heads concatenated) are split into `R`
//!   relation heads `[B, R, T, D/R]`; the relation is `softmax(X Xᵀ / sqrt(D/R))` over the keys
//!   a position may attend (causal, real tokens), and the loss is
//!   `KL(R_t ‖ R_s) = Σ_j R_t log(R_t / R_s)` averaged over relation heads and real query
//!   positions ([`relation_kl`]). Splitting both sides into the same `R` makes teachers and
//!   students with different head counts comparable (MiniLMv2 §3.2). For models with equal head
//!   counts the attention maps themselves can be compared ([`attention_kl`], MiniLM v1).
//!
//! Tested against PyTorch (`tests/fixtures/losses/make_method_fixtures.py`).

use tch::{Kind, Reduction, Tensor};

/// Pairwise Euclidean distances `[N, D]` → `[N, N]`, zero diagonal.
pub fn pairwise_distances(e: &Tensor) -> Tensor {
    let sq = e.pow_tensor_scalar(2).sum_dim_intlist([1i64].as_slice(), false, Kind::Float); // [N]
    let prod = e.matmul(&e.transpose(0, 1)); // [N, N]
    let d = (sq.unsqueeze(1) + sq.unsqueeze(0) - prod * 2.0).clamp_min(1e-12).sqrt(); // [N, N]
    let n = e.size()[0];
    let off = Tensor::eye(n, (Kind::Float, e.device())).neg() + 1.0; // [N, N]
    d * off
}

/// Distances divided by their mean over the positive entries.
fn normalised_distances(e: &Tensor) -> Tensor {
    let d = pairwise_distances(e); // [N, N]
    let pos = d.gt(0.0).to_kind(Kind::Float);
    let mean = (&d * &pos).sum(Kind::Float) / pos.sum(Kind::Float).clamp_min(1.0);
    d / mean
}

/// RKD-distance between student `[N, D_s]` and teacher `[N, D_t]` embeddings → scalar.
pub fn rkd_distance(s: &Tensor, t: &Tensor) -> Tensor {
    let td = tch::no_grad(|| normalised_distances(&t.to_kind(Kind::Float)));
    normalised_distances(s).smooth_l1_loss(&td, Reduction::Mean, 1.0)
}

/// Cosines of every triplet's angle `[N, D]` → `[N³]`.
fn angles(e: &Tensor) -> Tensor {
    let diff = e.unsqueeze(0) - e.unsqueeze(1); // [N, N, D]: diff[j, i] = e_i − e_j
    let norm = diff.norm_scalaropt_dim(2.0, [2i64].as_slice(), true).clamp_min(1e-12); // [N, N, 1]
    let u = diff / norm; // [N, N, D]
    u.bmm(&u.transpose(1, 2)).view([-1]) // [N·N·N]
}

/// RKD-angle between student `[N, D_s]` and teacher `[N, D_t]` embeddings → scalar.
pub fn rkd_angle(s: &Tensor, t: &Tensor) -> Tensor {
    let ta = tch::no_grad(|| angles(&t.to_kind(Kind::Float)));
    angles(s).smooth_l1_loss(&ta, Reduction::Mean, 1.0)
}

/// `[B, T, D]` → `[B, R, T, D/R]`.
fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, t, d) = x.size3().expect("[B, T, D]");
    x.view([b, t, heads, d / heads]).transpose(1, 2)
}

/// Log-relations `log softmax(X Xᵀ/sqrt(d))` over the allowed keys: `x` `[B, T, D]`,
/// `allowed` `[B, 1, T, T]` or `[T, T]` (true = may attend) → `[B, R, T, T]`.
fn log_relations(x: &Tensor, heads: i64, allowed: &Tensor) -> Tensor {
    let h = split_heads(&x.to_kind(Kind::Float), heads); // [B, R, T, d]
    let d = h.size()[3] as f64;
    let scores = h.matmul(&h.transpose(-2, -1)) / d.sqrt(); // [B, R, T, T]
    scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY).log_softmax(-1, Kind::Float)
}

/// The causal mask over real keys, `[B, 1, T, T]` (true = may attend); `mask` `[B, T]` (1 = real).
/// A padded query may attend itself only, so its row stays finite.
pub fn causal_allowed(b: i64, t: i64, mask: Option<&Tensor>, device: tch::Device) -> Tensor {
    let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0); // [T, T]
    match mask {
        None => causal.expand([b, 1, t, t], false),
        Some(m) => {
            let real = m.ne(0); // [B, T]
            let eye = Tensor::eye(t, (Kind::Bool, device));
            causal.unsqueeze(0).logical_and(&real.unsqueeze(1)).logical_or(&eye).unsqueeze(1)
            // [B, 1, T, T]
        }
    }
}

/// `Σ_j p_t (log p_t − log p_s)` over the last dim, averaged over heads and the real query
/// positions: `lt`, `ls` `[B, R, T, T]` log-probabilities, `mask` `[B, T]` (1 = real) or none.
fn kl_rows(lt: &Tensor, ls: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let pt = lt.exp();
    // Masked keys hold log 0 = −inf on both sides: 0 · (−inf − −inf) is taken as 0.
    let diff = (lt - ls).nan_to_num(0.0, 0.0, 0.0);
    let kl = (pt * diff).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float); // [B, R, T]
    mean_over_real_rows(&kl, mask)
}

/// `[B, R, T]` per-row values → their mean over heads and the real positions of `mask` `[B, T]`.
fn mean_over_real_rows(kl: &Tensor, mask: Option<&Tensor>) -> Tensor {
    match mask {
        None => kl.mean(Kind::Float),
        Some(m) => {
            let w = m.to_kind(Kind::Float).unsqueeze(1); // [B, 1, T]
            let heads = kl.size()[1] as f64;
            (kl * &w).sum(Kind::Float) / (w.sum(Kind::Float) * heads).clamp_min(1.0)
        }
    }
}

/// MiniLMv2's relation KD for one pair of tensors (queries, keys or values, heads
/// concatenated): student `[B, T, D_s]`, teacher `[B, T, D_t]`, both split into `heads` relation
/// heads (`heads` divides `D_s` and `D_t`); `mask` `[B, T]` (1 = real) → scalar.
pub fn relation_kl(s: &Tensor, t: &Tensor, heads: i64, mask: Option<&Tensor>) -> Tensor {
    let (b, tt, _) = s.size3().expect("[B, T, D]");
    let allowed = causal_allowed(b, tt, mask, s.device());
    let lt = tch::no_grad(|| log_relations(t, heads, &allowed));
    let ls = log_relations(s, heads, &allowed);
    kl_rows(&lt, &ls, mask)
}

/// MiniLM's attention-distribution KD: KL between the teacher's and the student's attention
/// probabilities `[B, nh, T, T]` (same head count), averaged over heads and real query
/// positions; `mask` `[B, T]` (1 = real) → scalar.
pub fn attention_kl(s_probs: &Tensor, t_probs: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let s = s_probs.to_kind(Kind::Float);
    let t = t_probs.to_kind(Kind::Float);
    // 0·log 0 = 0: the probabilities are clamped at 1e-30 inside the logs (masked keys), which
    // also keeps the gradient there 0 rather than 0/0.
    let log = |p: &Tensor| p.clamp_min(1e-30).log();
    let kl = (&t * (log(&t) - log(&s))).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float); // [B, nh, T]
    mean_over_real_rows(&kl, mask)
}

//! The student's whole distillation objective computed from its final hidden states, a chunk of
//! rows at a time, so that `[N, V]` logits (and their softmaxes and gradients) never exist for
//! all N rows at once — with V ≈ 50k–150k they dominate an LLM student's memory.
//!
//! ```text
//! z_s = h · Wᵀ                                     (h: [N, H] final hidden states, W: [V, H])
//! L   = α · D_T(teacher, student) + (1 − α) · CE(y, z_s)
//! D_T = T² · (1/N) Σ_n D(p_t[n], p_s[n])             (any [`Divergence`], dense or top-k sparse)
//! CE  = (1/|L|) Σ_{n∈L} −log softmax(z_s)[n, y_n]     (T = 1; L: rows with a label ≥ 0)
//! ```
//!
//! Each chunk's loss (already divided by the global N and |L|) is backpropagated at once into
//! detached leaves standing for the chunk of `h` and for `W`; their gradients are collected
//! (`∂L/∂h` into one `[N, H]` buffer, `∂L/∂W` accumulated), and the returned scalar
//! `L + (⟨h, ∂L/∂h⟩ + ⟨W, ∂L/∂W⟩ − the same, detached)` has exactly L's value while its backward
//! injects those gradients into the graph that produced `h` and into `W`. Peak memory is that of
//! one chunk's logits plus the `[N, H]` and `[V, H]` gradients. The result is the same loss and
//! the same gradients as [`Divergence::dense`] / [`Divergence::sparse`] plus
//! [`cross_entropy`](super::response::cross_entropy) on the full logits, up to summation order.

use tch::{Kind, Tensor};

use super::divergence::{coarsen, Divergence, SparseTeacher};
use super::response::KdParts;
use super::sampled::{sampled_forward_kl, TailSamples};

/// `c·tanh(z/c)`: Gemma 2's logit soft cap (`None`: `z`).
pub fn softcap(z: Tensor, cap: Option<f64>) -> Tensor {
    match cap {
        Some(c) => (z / c).tanh() * c,
        None => z,
    }
}

/// A model's output layer: logits are `softcap(h · Wᵀ)`. Every divergence, cross-entropy and
/// cache capture sees the capped logits, as the model's own forward computes them.
#[derive(Debug)]
pub struct LogitHead {
    /// `[V, H]`, no bias (the embedding when tied).
    pub weight: Tensor,
    /// Gemma 2's `final_logit_softcapping`.
    pub softcap: Option<f64>,
}

impl LogitHead {
    /// The logits `[N, V]` of hidden states `[N, H]`.
    pub fn logits(&self, h: &Tensor) -> Tensor {
        softcap(h.linear::<Tensor>(&self.weight, None), self.softcap)
    }
}

/// The same head, its tensor shared.
impl From<&LogitHead> for LogitHead {
    fn from(h: &LogitHead) -> Self {
        LogitHead { weight: h.weight.shallow_clone(), softcap: h.softcap }
    }
}

/// A plain projection (no cap); the tensor is shared, so gradients reach it.
impl From<&Tensor> for LogitHead {
    fn from(weight: &Tensor) -> Self {
        LogitHead { weight: weight.shallow_clone(), softcap: None }
    }
}

/// Where the teacher's distribution for each chunk of rows comes from.
#[derive(Clone, Copy)]
pub enum ChunkTeacher<'a> {
    /// Teacher logits `[N, V]`.
    Dense(&'a Tensor),
    /// The teacher's final hidden states `[N, Ht]` and output projection `[V, Ht]` (with its soft
    /// cap); a chunk's logits are computed under `no_grad` when needed, so an online teacher never
    /// holds `[N, V]` either.
    DenseHidden { hidden: &'a Tensor, weight: &'a Tensor, softcap: Option<f64> },
    /// A top-k cache with N rows.
    Sparse(&'a SparseTeacher),
    /// A top-k cache completed by tail samples (N rows each). Forward KL uses the unbiased
    /// sparse estimate of [`TailSamples`]; the other divergences use the K + 1 bins of `top`.
    Sampled { top: &'a SparseTeacher, samples: &'a TailSamples },
    /// A teacher that computes the log-probabilities at T of rows `start..start + len` itself,
    /// `(start, len, T) → [C, V]` (several teachers mixed, see `teacher::LmMixture`), under
    /// `no_grad`.
    LogProbs(&'a dyn Fn(i64, i64, f64) -> Tensor),
}

impl std::fmt::Debug for ChunkTeacher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkTeacher::Dense(_) => "ChunkTeacher::Dense",
            ChunkTeacher::DenseHidden { .. } => "ChunkTeacher::DenseHidden",
            ChunkTeacher::Sparse(_) => "ChunkTeacher::Sparse",
            ChunkTeacher::Sampled { .. } => "ChunkTeacher::Sampled",
            ChunkTeacher::LogProbs(_) => "ChunkTeacher::LogProbs",
        })
    }
}

/// `α·D_T(teacher, student) + (1−α)·CE` from the student's hidden states, `chunk_rows` rows at a
/// time (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkedKd {
    pub divergence: Divergence,
    /// Softmax temperature T (> 0) of the soft term; CE is at T = 1.
    pub temperature: f64,
    /// Weight α of the soft term, in [0, 1]. α = 0 never touches the teacher (the scratch
    /// baseline); α = 1 skips the cross-entropy.
    pub alpha: f64,
    /// Rows per chunk (e.g. 256).
    pub chunk_rows: i64,
}

impl ChunkedKd {
    /// Computes the loss and, when `hidden` or `weight` requires grad, its gradients chunk by
    /// chunk; the returned `total` backpropagates them into `hidden`'s graph and `weight`. Parts
    /// not computed (`soft` at α = 0, `hard` at α = 1 or without labels) are 0. A non-finite
    /// chunk makes the total non-finite (for the Trainer's NaN guard).
    ///
    /// # Shapes
    /// `hidden: [N, H]`, `head`: the student's output layer (`[V, H]` projection, no bias, and
    /// its soft cap; a plain `&Tensor` is a projection without one), the teacher with N rows (may
    /// be `None` only when α = 0), `labels: [N]` i64 (negative = unlabeled).
    pub fn forward(
        &self,
        hidden: &Tensor,
        head: impl Into<LogitHead>,
        teacher: Option<ChunkTeacher<'_>>,
        labels: Option<&Tensor>,
    ) -> KdParts {
        let head = head.into();
        let (weight, cap) = (&head.weight, head.softcap);
        let forward_kl = self.divergence == Divergence::ForwardKl || self.alpha == 0.0;
        if forward_kl && hidden.kind() == Kind::Float && weight.kind() == Kind::Float {
            return self.forward_kl_analytic(hidden, weight, cap, teacher, labels);
        }
        let (n, h_dim) = (hidden.size()[0], hidden.size()[1]);
        let v = weight.size()[0];
        let dev = hidden.device();
        let t = self.temperature;
        let use_soft = self.alpha > 0.0;
        let labels = labels.filter(|_| self.alpha < 1.0);
        let teacher =
            if use_soft { Some(teacher.expect("ChunkedKd: a teacher is required when alpha > 0")) } else { None };
        // Global normalisers: the soft term is a mean over all N rows, CE over labelled rows.
        let soft_scale = t * t / n.max(1) as f64;
        let count = labels.map(|y| y.ge(0).sum(Kind::Float).clamp_min(1.0)); // scalar

        let grad_h_on = hidden.requires_grad();
        let grad_w_on = weight.requires_grad();
        let need_grad = grad_h_on || grad_w_on;
        let w = weight.detach().set_requires_grad(grad_w_on); // [V, H], accumulates ∂L/∂W
        let grad_h = if grad_h_on { Some(Tensor::empty([n, h_dim], (hidden.kind(), dev))) } else { None }; // [N, H]
        let mut soft_sum = Tensor::zeros([], (Kind::Float, dev)); // scalar, Σ chunk soft
        let mut hard_sum = Tensor::zeros([], (Kind::Float, dev)); // scalar, Σ chunk hard

        let step = self.chunk_rows.max(1);
        let mut start = 0;
        while start < n {
            let len = step.min(n - start);
            let h = hidden.narrow(0, start, len).detach().set_requires_grad(grad_h_on); // [C, H]
            let (soft, hard) = tch::with_grad(|| -> (Option<Tensor>, Option<Tensor>) {
                let z = softcap(h.linear::<Tensor>(&w, None), cap); // [C, V]
                let log_ps = if use_soft || t == 1.0 {
                    Some(if t == 1.0 { z.log_softmax(-1, Kind::Float) } else { (&z / t).log_softmax(-1, Kind::Float) })
                } else {
                    None
                }; // [C, V] at T
                let soft = teacher.map(|teacher| {
                    let log_ps = log_ps.as_ref().expect("computed when use_soft");
                    if let (ChunkTeacher::Sampled { top, samples }, Divergence::ForwardKl) = (teacher, self.divergence)
                    {
                        let (ids, log_q, log_m) = samples.narrow(start, len).log_probs(&top.narrow(start, len), t);
                        let dev = log_ps.device();
                        return sampled_forward_kl(&ids, &log_q.to_device(dev), &log_m.to_device(dev), log_ps)
                            * soft_scale;
                    }
                    let (log_pt, log_ps) = teacher_chunk(teacher, start, len, t, v, log_ps); // [C, B] each
                    self.divergence.rows(&log_pt, &log_ps).sum(Kind::Float) * soft_scale
                });
                let hard = labels.map(|y| {
                    let y = y.narrow(0, start, len); // [C]
                    let valid = y.ge(0).to_kind(Kind::Float); // [C]
                    let safe = y.clamp_min(0).unsqueeze(1); // [C, 1]
                    let nll = match (&log_ps, t == 1.0) {
                        (Some(ls), true) => -ls.gather(1, &safe, false).squeeze_dim(1),
                        _ => {
                            let zf = z.to_kind(Kind::Float); // [C, V]
                            zf.logsumexp(-1, false) - zf.gather(1, &safe, false).squeeze_dim(1)
                        }
                    }; // [C]
                    (nll * valid).sum(Kind::Float) / count.as_ref().expect("labels given")
                });
                (soft, hard)
            });
            let loss = match (&soft, &hard) {
                (Some(s), Some(c)) => Some(s * self.alpha + c * (1.0 - self.alpha)),
                (Some(s), None) => Some(s * self.alpha),
                (None, Some(c)) => Some(c * (1.0 - self.alpha)),
                (None, None) => None,
            };
            if let (Some(loss), true) = (loss, need_grad) {
                tch::with_grad(|| loss.backward());
            }
            if let Some(s) = soft {
                soft_sum += s.detach();
            }
            if let Some(c) = hard {
                hard_sum += c.detach();
            }
            if let Some(gh) = &grad_h {
                let g = h.grad();
                let mut dst = gh.narrow(0, start, len);
                if g.defined() {
                    dst.copy_(&g);
                } else {
                    let _ = dst.zero_();
                }
            }
            start += len;
        }

        let value = &soft_sum * self.alpha + &hard_sum * (1.0 - self.alpha); // scalar
        let mut inject: Option<Tensor> = None; // ⟨h, ∂L/∂h⟩ + ⟨W, ∂L/∂W⟩
        if let Some(gh) = &grad_h {
            inject = Some(hidden.flatten(0, -1).dot(&gh.flatten(0, -1)));
        }
        let gw = w.grad();
        if grad_w_on && gw.defined() {
            let d = weight.flatten(0, -1).dot(&gw.flatten(0, -1));
            inject = Some(match inject {
                Some(i) => i + d,
                None => d,
            });
        }
        let total = match inject {
            Some(i) => &value + (&i - i.detach()).to_kind(Kind::Float),
            None => value,
        };
        KdParts { total, soft: soft_sum, hard: hard_sum }
    }
}

impl ChunkedKd {
    /// Forward KL against a dense or top-k teacher (and plain CE, α = 0) with the gradient written out
    /// instead of recorded: per chunk, with `p = softmax(z/T)`, `q = softmax(z)`,
    ///
    /// ```text
    /// ∂L/∂z = α·(T/N)·(p_s − p_t) + (1−α)·(1/|L|)·[y ≥ 0]·(q_s − onehot(y))
    /// ∂L/∂u = ∂L/∂z · (1 − (z/c)²)      (soft-capped logits z = c·tanh(u/c), u = h·Wᵀ; else ∂L/∂z)
    /// ∂L/∂h = ∂L/∂u · W          ∂L/∂W += (∂L/∂u)ᵀ · h
    /// ```
    ///
    /// Same value and gradients as the recorded path (tested); no autograd graph, fewer
    /// `[C, V]` temporaries, most updates in place.
    fn forward_kl_analytic(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        cap: Option<f64>,
        teacher: Option<ChunkTeacher<'_>>,
        labels: Option<&Tensor>,
    ) -> KdParts {
        let (n, h_dim) = (hidden.size()[0], hidden.size()[1]);
        let dev = hidden.device();
        let t = self.temperature;
        let alpha = self.alpha;
        let teacher =
            if alpha > 0.0 { Some(teacher.expect("ChunkedKd: a teacher is required when alpha > 0")) } else { None };
        let labels = labels.filter(|_| alpha < 1.0);
        let soft_scale = t * t / n.max(1) as f64; // T²/N
        let count = labels.map(|y| y.ge(0).sum(Kind::Float).clamp_min(1.0)); // scalar |L|
        let (grad_h_on, grad_w_on) = (hidden.requires_grad(), weight.requires_grad());
        let w = weight.detach(); // [V, H]
        let grad_h = grad_h_on.then(|| Tensor::empty([n, h_dim], (Kind::Float, dev))); // [N, H]
        let grad_w = grad_w_on.then(|| w.zeros_like()); // [V, H]
        let mut soft_sum = Tensor::zeros([], (Kind::Float, dev));
        let mut hard_sum = Tensor::zeros([], (Kind::Float, dev));
        let step = self.chunk_rows.max(1);
        tch::no_grad(|| {
            let mut start = 0;
            while start < n {
                let len = step.min(n - start);
                let h = hidden.narrow(0, start, len).detach(); // [C, H]
                let z = softcap(h.mm(&w.tr()), cap); // [C, V]
                let log_ps =
                    if t == 1.0 { z.log_softmax(-1, Kind::Float) } else { (&z / t).log_softmax(-1, Kind::Float) }; // [C, V]
                                                                                                                   // Gradient coefficients with respect to the logits: the soft term's, plus the
                                                                                                                   // hard term's.
                let mut g: Option<Tensor> = None; // [C, V]
                if let Some(teacher) = teacher {
                    let (kl, gs) = soft_chunk(teacher, start, len, t, alpha * soft_scale / t, &log_ps);
                    soft_sum += kl * soft_scale;
                    g = Some(gs);
                }
                if let (Some(y), Some(cnt)) = (labels, &count) {
                    let (nll, gh) = hard_chunk(&y.narrow(0, start, len), &z, &log_ps, t, alpha, cnt);
                    hard_sum += nll;
                    g = Some(match g {
                        Some(mut gs) => {
                            let _ = gs.g_add_(&gh);
                            gs
                        }
                        None => gh,
                    });
                }
                // Through the cap: ∂z/∂u = 1 − (z/c)².
                let g = match (g, cap) {
                    (Some(g), Some(c)) => Some(g * (&z / c).square().g_mul_scalar(-1.0).g_add_scalar(1.0)),
                    (g, _) => g,
                };
                if let Some(g) = g {
                    if let Some(gh) = &grad_h {
                        gh.narrow(0, start, len).copy_(&g.mm(&w)); // [C, H]
                    }
                    if let Some(gw) = &grad_w {
                        let _ = gw.shallow_clone().addmm_(&g.tr(), &h); // [V, H]
                    }
                } else if let Some(gh) = &grad_h {
                    let _ = gh.narrow(0, start, len).zero_();
                }
                start += len;
            }
        });
        let value = &soft_sum * alpha + &hard_sum * (1.0 - alpha); // scalar
        let mut inject: Option<Tensor> = None;
        if let Some(gh) = &grad_h {
            inject = Some(hidden.flatten(0, -1).dot(&gh.flatten(0, -1)));
        }
        if let Some(gw) = &grad_w {
            let d = weight.flatten(0, -1).dot(&gw.flatten(0, -1));
            inject = Some(match inject {
                Some(i) => i + d,
                None => d,
            });
        }
        let total = match inject {
            Some(i) => &value + (&i - i.detach()),
            None => value,
        };
        KdParts { total, soft: soft_sum, hard: hard_sum }
    }
}

/// The forward KL(p_t‖p_s) summed over a chunk's rows (before the T²/N scale) and its gradient
/// with respect to the student's logits, `c`·∂KL/∂z with `c` = α·T/N: `(p_s − p_t)·c` for dense
/// teachers, on the K + 1 bins for a sparse top-k, on the K + S entries of a sampled estimate.
///
/// # Shapes
/// `log_ps`: `[C, V]` (the chunk's student log-probabilities at T); returns a scalar and `[C, V]`.
fn soft_chunk(teacher: ChunkTeacher<'_>, start: i64, len: i64, t: f64, c: f64, log_ps: &Tensor) -> (Tensor, Tensor) {
    let dev = log_ps.device();
    match teacher {
        ChunkTeacher::Sampled { top, samples } => {
            // The sparse estimate q̂ over K + S entries: ∂KL/∂z = (p_s − Σ_e q̂_e·δ_{id_e})/T.
            let (ids, log_q, log_m) = samples.narrow(start, len).log_probs(&top.narrow(start, len), t);
            let (ids, log_q, log_m) = (ids.to_device(dev), log_q.to_device(dev), log_m.to_device(dev));
            let kl = sampled_forward_kl(&ids, &log_q, &log_m, log_ps);
            let mut gs = log_ps.exp(); // p_s, [C, V]
            let _ = gs.g_mul_scalar_(c);
            let _ = gs.scatter_add_(1, &ids, &(log_q.exp() * (-c)));
            (kl, gs)
        }
        ChunkTeacher::Sparse(st) => {
            // Both distributions on the K + 1 bins (top-k ids, then the tail):
            // ∂KL/∂z_j = (p_s[j]/T)·(1 − p_t[b(j)]/q_s[b(j)]); for a top-k id that is
            // (q_s[i] − p_t[i])/T, for a tail token p_s[j]·(1 − p_t,tail/q_s,tail)/T.
            let st = st.narrow(start, len);
            let ids = st.ids.to_device(dev); // [C, K]
            let k = ids.size()[1];
            let v = log_ps.size()[1];
            let log_pt = st.log_probs(t, v).to_device(dev); // [C, K+1]
            let log_qs_top = log_ps.gather(1, &ids, false); // [C, K]
            let log_qs_tail = log_ps.scatter_value(1, &ids, f64::NEG_INFINITY).logsumexp([-1i64].as_slice(), true); // [C, 1]
            let log_qs = Tensor::cat(&[&log_qs_top, &log_qs_tail], 1); // [C, K+1]
            let p_t = log_pt.exp(); // [C, K+1]
            let diff = (&log_pt - &log_qs).nan_to_num(0.0, f64::INFINITY, 0.0); // [C, K+1]
            let kl = p_t.flatten(0, -1).dot(&diff.flatten(0, -1));
            let ratio_tail = (log_pt.narrow(1, k, 1) - &log_qs_tail).exp(); // [C, 1]
            let mut gs = log_ps.exp(); // p_s, [C, V]
            let _ = gs.g_mul_(&(ratio_tail.g_mul_scalar(-1.0).g_add_scalar(1.0) * c));
            let top = (log_qs_top.exp() - p_t.narrow(1, 0, k)) * c; // [C, K]
            let _ = gs.scatter_(1, &ids, &top);
            (kl, gs)
        }
        ChunkTeacher::Dense(_) | ChunkTeacher::DenseHidden { .. } | ChunkTeacher::LogProbs(_) => {
            let dense = |zt: Tensor| {
                if t == 1.0 {
                    zt.log_softmax(-1, Kind::Float)
                } else {
                    (zt / t).log_softmax(-1, Kind::Float)
                }
            };
            let mut log_pt = match teacher {
                ChunkTeacher::Dense(zt) => dense(zt.narrow(0, start, len).to_device(dev)),
                ChunkTeacher::DenseHidden { hidden: th, weight: tw, softcap: c } => {
                    dense(softcap(th.narrow(0, start, len).mm(&tw.tr()), c))
                }
                ChunkTeacher::LogProbs(f) => f(start, len, t).to_device(dev),
                ChunkTeacher::Sparse(_) | ChunkTeacher::Sampled { .. } => unreachable!("matched above"),
            }; // [C, V]
            let p_t = log_pt.exp(); // [C, V]
            let _ = log_pt.g_sub_(log_ps); // log p_t − log p_s
                                           // Σ p_t (log p_t − log p_s), with 0·log 0 = 0 (p_t = 0 where log p_t = −inf).
            let kl = p_t.flatten(0, -1).dot(&log_pt.nan_to_num(0.0, f64::INFINITY, 0.0).flatten(0, -1)); // scalar
            let mut gs = log_ps.exp(); // p_s, [C, V]
            let _ = gs.g_sub_(&p_t).g_mul_scalar_(c);
            (kl, gs)
        }
    }
}

/// The hard term over a chunk: the NLL of its labelled rows divided by `cnt` (all labelled rows
/// of the batch), and its gradient with respect to the logits, `(1 − α)·(q_s − onehot(y))/cnt`.
/// Rows with a negative label are ignored.
///
/// # Shapes
/// `y`: `[C]`; `z`, `log_ps`: `[C, V]`; returns a scalar and `[C, V]`.
fn hard_chunk(y: &Tensor, z: &Tensor, log_ps: &Tensor, t: f64, alpha: f64, cnt: &Tensor) -> (Tensor, Tensor) {
    let valid = y.ge(0).to_kind(Kind::Float).unsqueeze(1); // [C, 1]
    let safe = y.clamp_min(0).unsqueeze(1); // [C, 1]
    let log_q = if t == 1.0 { log_ps.shallow_clone() } else { z.log_softmax(-1, Kind::Float) }; // [C, V]
    let nll = -log_q.gather(1, &safe, false); // [C, 1]
    let mean = (&nll * &valid).sum(Kind::Float) / cnt;
    let coef = &valid * ((1.0 - alpha) / cnt); // [C, 1]
    let mut gh = log_q.exp(); // q_s, [C, V]
    let _ = gh.g_mul_(&coef);
    let _ = gh.scatter_add_(1, &safe, &(-&coef));
    (mean, gh)
}

/// Teacher and student log-probabilities of one chunk over the teacher's bins (V for a dense
/// teacher, K + 1 for a sparse one). `log_ps: [C, V]` at T → `([C, B], [C, B])`.
fn teacher_chunk(teacher: ChunkTeacher<'_>, start: i64, len: i64, t: f64, v: i64, log_ps: &Tensor) -> (Tensor, Tensor) {
    let dense = |z: Tensor| -> Tensor {
        if t == 1.0 {
            z.log_softmax(-1, Kind::Float)
        } else {
            (z / t).log_softmax(-1, Kind::Float)
        }
    };
    match teacher {
        ChunkTeacher::Dense(z) => {
            let log_pt = tch::no_grad(|| dense(z.narrow(0, start, len).to_device(log_ps.device()))); // [C, V]
            (log_pt, log_ps.shallow_clone())
        }
        ChunkTeacher::DenseHidden { hidden, weight, softcap: c } => {
            let log_pt =
                tch::no_grad(|| dense(softcap(hidden.narrow(0, start, len).linear::<Tensor>(weight, None), c))); // [C, V]
            (log_pt, log_ps.shallow_clone())
        }
        ChunkTeacher::LogProbs(f) => {
            let log_pt = tch::no_grad(|| f(start, len, t)).to_device(log_ps.device()); // [C, V]
            (log_pt, log_ps.shallow_clone())
        }
        ChunkTeacher::Sparse(s) | ChunkTeacher::Sampled { top: s, .. } => {
            let s = s.narrow(start, len);
            let log_pt = s.log_probs(t, v).to_device(log_ps.device()); // [C, K+1]
            let log_ps = coarsen(log_ps, &s.ids.to_device(log_ps.device())); // [C, K+1]
            (log_pt, log_ps)
        }
    }
}

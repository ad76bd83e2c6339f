//! Divergences between the teacher's and the student's temperature-softened next-token (or class)
//! distributions, for a dense teacher (full logits) or a top-k sparse one (an offline cache).
//!
//! Every divergence is computed at temperature T on `p_t = softmax(z_t / T)` (teacher, a
//! constant) and `p_s = softmax(z_s / T)` (student), summed over the distribution, averaged over
//! the N rows given ("batchmean", PyTorch's `kl_div(..., reduction="batchmean")`) and multiplied
//! by T²:
//!
//! ```text
//! D_T = T² · (1/N) Σ_n D(p_t[n], p_s[n])
//! ```
//!
//! The T² is Hinton's: for smooth divergences (all but TVD) the gradient with respect to the
//! student's logits shrinks as 1/T² at high T (they all behave like `f''(1)/2 · χ²` there), so
//! multiplying by T² keeps the gradient scale independent of T and T can be tuned without
//! retuning α or the learning rate. TVD is not smooth at p_t = p_s: its gradient scales as 1/T,
//! so `T²·TVD` grows ∝ T — the factor is kept for uniformity; prefer T = 1 with TVD.
//!
//! | variant | D(p_t, p_s) | paper |
//! |---|---|---|
//! | [`Divergence::ForwardKl`] | `KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s)` (mean-covering) | Hinton, Vinyals & Dean 2015, arXiv:1503.02531 |
//! | [`Divergence::ReverseKl`] | `KL(p_s ‖ p_t) = Σ p_s (log p_s − log p_t)` (mode-seeking) | MiniLLM, Gu et al. 2024, arXiv:2306.08543 |
//! | [`Divergence::Jsd`] `{ beta }` | `β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m)`, `m = β·p_t + (1−β)·p_s` | GKD, Agarwal et al. 2024, arXiv:2306.13649 |
//! | [`Divergence::SkewKl`] `{ alpha }` | `KL(p_t ‖ α·p_t + (1−α)·p_s)` | DistiLLM, Ko et al. 2024, arXiv:2402.03898 |
//! | [`Divergence::SkewReverseKl`] `{ alpha }` | `KL(p_s ‖ α·p_s + (1−α)·p_t)` | DistiLLM, Ko et al. 2024 |
//! | [`Divergence::Tvd`] | `½ Σ |p_t − p_s|` | f-divergence KD, Wen et al. 2023, arXiv:2307.15190 |
//!
//! Conventions:
//! - **JSD(β)** follows GKD and its reference implementation (TRL's `generalized_jsd_loss`): β
//!   weighs the *teacher* in the mixture, β = 0.5 is the symmetric Jensen–Shannon divergence
//!   (bounded by ln 2). Taken literally JSD(0) = JSD(1) = 0, which is useless; as GKD/TRL do, the
//!   endpoints are defined by their normalised limits, `β = 0` ⇒ `KL(p_t ‖ p_s)` (forward) and
//!   `β = 1` ⇒ `KL(p_s ‖ p_t)` (reverse), since `JSD(β)/β → KL(p_t‖p_s)` as β → 0 and
//!   `JSD(β)/(1−β) → KL(p_s‖p_t)` as β → 1. Note the jump in scale: for small β > 0,
//!   JSD(β) ≈ β·KL(p_t‖p_s).
//! - **Skew KL(α)** / **skew reverse KL(α)** (DistiLLM, default α = 0.1) take α ∈ [0, 1):
//!   α = 0 is exactly forward / reverse KL; α = 1 (identically 0) is rejected. The mixture keeps
//!   the divergence finite where the other distribution has no mass.
//!
//! Numerics: everything is computed from log-probabilities. A mixture's log is
//! `logaddexp(log w + log p, log(1−w) + log q)`; `p·(log p − log q)` is taken as 0 wherever
//! `p = 0` (including `log p = −∞`, e.g. a masked logit or an empty sparse tail) without NaN in
//! the value or the gradient. A KL whose first argument has mass where the second has none is +∞,
//! as it should be (e.g. reverse KL against a teacher with a −∞ logit).
//!
//! ## Top-k sparse teacher
//!
//! An offline cache stores, per token, the teacher's top-k ids `[N, K]`, their log-probabilities
//! at T = 1 over the full vocabulary `logp = z_i − logsumexp(z)` and `log_tail`, the log of the
//! mass outside the top k at T = 1 (−∞ when there is none) — a [`SparseTeacher`]. At temperature
//! T it is expanded to K + 1 bins:
//!
//! ```text
//! w_i    = logp_i / T                                   (i < K, the top-k ids)
//! w_tail = log(V−K) + lt / T,   lt = log_tail − log(V−K) (the tail as V−K tokens of equal log-prob)
//! log p_t = w − logsumexp(w)                             (exact at T = 1)
//! ```
//!
//! The student is coarsened onto the same K + 1 bins: its full-vocabulary `log_softmax(z_s/T)`
//! gathered at the K ids, plus a tail bin holding its mass outside them, computed as the
//! logsumexp of that log-softmax with the K ids masked to −∞ (no `log(1 − Σ)` cancellation). The
//! divergence is then the same formula over the K + 1 bins. Both sides are thus normalised over
//! the same support (normalising the student over the full vocabulary and the teacher over the
//! top k only is a biased objective). With K = V this equals the dense divergence.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// A divergence `D(p_t, p_s)` between teacher and student distributions (see the module doc for
/// the formulas). Build it from a recipe through [`DivergenceCfg`]; it (de)serializes as one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "DivergenceCfg", into = "DivergenceCfg")]
pub enum Divergence {
    /// `KL(p_t ‖ p_s)`, Hinton et al. 2015.
    ForwardKl,
    /// `KL(p_s ‖ p_t)`, MiniLLM (Gu et al. 2024).
    ReverseKl,
    /// Generalized JSD, `β·KL(p_t‖m) + (1−β)·KL(p_s‖m)`, `m = β·p_t + (1−β)·p_s`, β ∈ [0, 1]
    /// (GKD, Agarwal et al. 2024); β = 0 / 1 mean forward / reverse KL.
    Jsd { beta: f64 },
    /// `KL(p_t ‖ α·p_t + (1−α)·p_s)`, α ∈ [0, 1) (DistiLLM, Ko et al. 2024).
    SkewKl { alpha: f64 },
    /// `KL(p_s ‖ α·p_s + (1−α)·p_t)`, α ∈ [0, 1) (DistiLLM, Ko et al. 2024).
    SkewReverseKl { alpha: f64 },
    /// Total variation distance `½ Σ |p_t − p_s|` (Wen et al. 2023).
    Tvd,
}

/// The name of a divergence in a recipe: `divergence = "forward-kl"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DivergenceKind {
    ForwardKl,
    ReverseKl,
    Jsd,
    SkewKl,
    SkewReverseKl,
    Tvd,
}

/// How a recipe names a divergence: `divergence = "jsd"` with `beta = 0.5`, or
/// `divergence = "skew-kl"` with `skew = 0.1`. Flat, so its three fields can sit in any
/// `deny_unknown_fields` section; [`DivergenceCfg::validate`] turns it into a [`Divergence`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DivergenceCfg {
    /// Which divergence (default `forward-kl`).
    pub divergence: DivergenceKind,
    /// JSD's teacher weight β in the mixture, in [0, 1] (`jsd` only, required there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// The skew α of `skew-kl` / `skew-reverse-kl`, in [0, 1) (required there; DistiLLM uses 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skew: Option<f64>,
}

impl Default for DivergenceCfg {
    fn default() -> Self {
        DivergenceCfg { divergence: DivergenceKind::ForwardKl, beta: None, skew: None }
    }
}

impl DivergenceCfg {
    /// Checks the parameters and builds the divergence. The error names the offending key.
    pub fn validate(&self) -> Result<Divergence, String> {
        use DivergenceKind as K;
        let name = match self.divergence {
            K::ForwardKl => "forward-kl",
            K::ReverseKl => "reverse-kl",
            K::Jsd => "jsd",
            K::SkewKl => "skew-kl",
            K::SkewReverseKl => "skew-reverse-kl",
            K::Tvd => "tvd",
        };
        if self.beta.is_some() && self.divergence != K::Jsd {
            return Err(format!("beta only applies to divergence = \"jsd\", not \"{name}\""));
        }
        if self.skew.is_some() && !matches!(self.divergence, K::SkewKl | K::SkewReverseKl) {
            return Err(format!(
                "skew only applies to divergence = \"skew-kl\" or \"skew-reverse-kl\", not \"{name}\""
            ));
        }
        let d = match self.divergence {
            K::ForwardKl => Divergence::ForwardKl,
            K::ReverseKl => Divergence::ReverseKl,
            K::Tvd => Divergence::Tvd,
            K::Jsd => match self.beta {
                Some(beta) => Divergence::Jsd { beta },
                None => {
                    return Err(
                        "divergence = \"jsd\" needs beta in [0, 1] (GKD: 0.5; 0 = forward KL, 1 = reverse KL)".into()
                    )
                }
            },
            K::SkewKl | K::SkewReverseKl => match self.skew {
                Some(alpha) if self.divergence == K::SkewKl => Divergence::SkewKl { alpha },
                Some(alpha) => Divergence::SkewReverseKl { alpha },
                None => return Err(format!("divergence = \"{name}\" needs skew in [0, 1) (DistiLLM: 0.1)")),
            },
        };
        d.validate()
    }
}

impl TryFrom<DivergenceCfg> for Divergence {
    type Error = String;
    fn try_from(c: DivergenceCfg) -> Result<Self, String> {
        c.validate()
    }
}

impl From<Divergence> for DivergenceCfg {
    fn from(d: Divergence) -> Self {
        let (divergence, beta, skew) = match d {
            Divergence::ForwardKl => (DivergenceKind::ForwardKl, None, None),
            Divergence::ReverseKl => (DivergenceKind::ReverseKl, None, None),
            Divergence::Jsd { beta } => (DivergenceKind::Jsd, Some(beta), None),
            Divergence::SkewKl { alpha } => (DivergenceKind::SkewKl, None, Some(alpha)),
            Divergence::SkewReverseKl { alpha } => (DivergenceKind::SkewReverseKl, None, Some(alpha)),
            Divergence::Tvd => (DivergenceKind::Tvd, None, None),
        };
        DivergenceCfg { divergence, beta, skew }
    }
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Divergence::ForwardKl => write!(f, "forward-kl"),
            Divergence::ReverseKl => write!(f, "reverse-kl"),
            Divergence::Jsd { beta } => write!(f, "jsd(beta={beta})"),
            Divergence::SkewKl { alpha } => write!(f, "skew-kl(skew={alpha})"),
            Divergence::SkewReverseKl { alpha } => write!(f, "skew-reverse-kl(skew={alpha})"),
            Divergence::Tvd => write!(f, "tvd"),
        }
    }
}

/// A finite stand-in for log 0 inside a log-mixture: far below any real log-probability, yet
/// `logaddexp` of two of them has a finite gradient (two −∞ would give NaN).
const LOG_ZERO: f64 = -1.0e30;

/// `Σ_c p·(log p − log q)` per row, with 0 wherever p = 0 (no NaN in value or gradient).
/// `log_p, log_q: [N, B]` → `[N]`.
fn kl_rows(log_p: &Tensor, log_q: &Tensor) -> Tensor {
    let p = log_p.exp(); // [N, B]
    let d = (log_p - log_q).where_scalarother(&p.gt(0.0), 0.0); // [N, B]
    (p * d).sum_dim_intlist(-1, false, Kind::Float)
}

/// `log(w·a + (1−w)·b)` from `log a, log b: [N, B]`, for w ∈ (0, 1).
fn log_mix(log_a: &Tensor, log_b: &Tensor, w: f64) -> Tensor {
    let x = log_a.clamp_min(LOG_ZERO) + w.ln(); // [N, B]
    let y = log_b.clamp_min(LOG_ZERO) + (1.0 - w).ln(); // [N, B]
    x.logaddexp(&y)
}

impl Divergence {
    /// Checks the parameter range (`jsd`: β ∈ [0, 1]; skews: α ∈ [0, 1)).
    pub fn validate(self) -> Result<Self, String> {
        match self {
            Divergence::Jsd { beta } if !(0.0..=1.0).contains(&beta) => {
                Err(format!("jsd: beta must be in [0, 1], got {beta}"))
            }
            Divergence::SkewKl { alpha } | Divergence::SkewReverseKl { alpha } if !(0.0..1.0).contains(&alpha) => {
                Err(format!("{self}: skew must be in [0, 1) (1 makes the divergence identically 0), got {alpha}"))
            }
            d => Ok(d),
        }
    }

    /// `D(p_t[n], p_s[n])` for each row, from log-probabilities over the same bins (no T², no
    /// mean). `log_pt` is treated as given (detach it yourself).
    ///
    /// # Shapes
    /// `log_pt: [N, B]`, `log_ps: [N, B]` → `[N]`.
    pub fn rows(&self, log_pt: &Tensor, log_ps: &Tensor) -> Tensor {
        match *self {
            Divergence::ForwardKl => kl_rows(log_pt, log_ps),
            Divergence::ReverseKl => kl_rows(log_ps, log_pt),
            Divergence::Jsd { beta } if beta <= 0.0 => kl_rows(log_pt, log_ps),
            Divergence::Jsd { beta } if beta >= 1.0 => kl_rows(log_ps, log_pt),
            Divergence::Jsd { beta } => {
                let log_m = log_mix(log_pt, log_ps, beta); // [N, B]
                kl_rows(log_pt, &log_m) * beta + kl_rows(log_ps, &log_m) * (1.0 - beta)
            }
            Divergence::SkewKl { alpha } if alpha <= 0.0 => kl_rows(log_pt, log_ps),
            Divergence::SkewKl { alpha } => kl_rows(log_pt, &log_mix(log_pt, log_ps, alpha)),
            Divergence::SkewReverseKl { alpha } if alpha <= 0.0 => kl_rows(log_ps, log_pt),
            Divergence::SkewReverseKl { alpha } => kl_rows(log_ps, &log_mix(log_ps, log_pt, alpha)),
            Divergence::Tvd => (log_pt.exp() - log_ps.exp()).abs().sum_dim_intlist(-1, false, Kind::Float) * 0.5,
        }
    }

    /// `T²·(1/N)·Σ_n D(p_t[n], p_s[n])` over the full vocabulary. `teacher` is detached.
    ///
    /// # Shapes
    /// `student: [N, V]`, `teacher: [N, V]` logits → scalar.
    pub fn dense(&self, student: &Tensor, teacher: &Tensor, temperature: f64) -> Tensor {
        let n = student.size()[0].max(1) as f64;
        let log_ps = (student / temperature).log_softmax(-1, Kind::Float); // [N, V]
        let log_pt = (teacher.detach() / temperature).log_softmax(-1, Kind::Float); // [N, V]
        self.rows(&log_pt, &log_ps).sum(Kind::Float) * (temperature * temperature / n)
    }

    /// The same against a top-k [`SparseTeacher`], both sides over its K + 1 bins.
    ///
    /// # Shapes
    /// `student: [N, V]` logits, `teacher` with N rows → scalar.
    pub fn sparse(&self, student: &Tensor, teacher: &SparseTeacher, temperature: f64) -> Tensor {
        let (n, v) = (student.size()[0], student.size()[1]);
        let log_ps = (student / temperature).log_softmax(-1, Kind::Float); // [N, V]
        let ids = teacher.ids.to_device(student.device()); // [N, K]
        let log_ps = coarsen(&log_ps, &ids); // [N, K+1]
        let log_pt = teacher.log_probs(temperature, v).to_device(student.device()); // [N, K+1]
        self.rows(&log_pt, &log_ps).sum(Kind::Float) * (temperature * temperature / n.max(1) as f64)
    }
}

/// The student's log-probabilities coarsened onto a sparse teacher's K + 1 bins: its
/// full-vocabulary log-softmax gathered at `ids`, plus the log of its mass outside them
/// (logsumexp with the ids masked to −∞; −∞ when K = V).
///
/// # Shapes
/// `log_softmax: [N, V]` (already normalised over V), `ids: [N, K]` i64 → `[N, K+1]`.
pub fn coarsen(log_softmax: &Tensor, ids: &Tensor) -> Tensor {
    let top = log_softmax.gather(1, ids, false); // [N, K]
    let tail = log_softmax.scatter_value(1, ids, f64::NEG_INFINITY).logsumexp(-1, true); // [N, 1]
    Tensor::cat(&[top, tail], 1)
}

/// A top-k teacher distribution as an offline cache stores it (see the module doc).
#[derive(Debug)]
pub struct SparseTeacher {
    /// Top-k token ids, `[N, K]` i64 (distinct within a row).
    pub ids: Tensor,
    /// Their log-probabilities at T = 1 over the full vocabulary, `z_i − logsumexp(z)`, `[N, K]` f32.
    pub logp: Tensor,
    /// Log of the T = 1 mass outside the top k, `[N]` f32 (−∞ when there is none).
    pub log_tail: Tensor,
}

impl SparseTeacher {
    /// The cache entry of dense teacher logits: top-k ids (sorted by probability), their T = 1
    /// log-probabilities and the log tail mass. No gradient.
    ///
    /// # Shapes
    /// `logits: [N, V]`, `k ≤ V` → ids/logp `[N, K]`, log_tail `[N]`.
    pub fn from_logits(logits: &Tensor, k: i64) -> SparseTeacher {
        tch::no_grad(|| {
            let z = logits.to_kind(Kind::Float); // [N, V]
            let (vals, ids) = z.topk(k, -1, true, true); // [N, K] each
            let lse = z.logsumexp(-1, true); // [N, 1]
            let logp = vals - &lse; // [N, K]
            let log_tail = (z.scatter_value(1, &ids, f64::NEG_INFINITY).logsumexp(-1, true) - lse).squeeze_dim(1); // [N]
            SparseTeacher { ids, logp, log_tail }
        })
    }

    /// Number of rows N.
    pub fn rows(&self) -> i64 {
        self.ids.size()[0]
    }

    /// K, the number of stored ids per row.
    pub fn k(&self) -> i64 {
        self.ids.size()[1]
    }

    /// Rows `start..start+len` (views, no copy).
    pub fn narrow(&self, start: i64, len: i64) -> SparseTeacher {
        SparseTeacher {
            ids: self.ids.narrow(0, start, len),
            logp: self.logp.narrow(0, start, len),
            log_tail: self.log_tail.narrow(0, start, len),
        }
    }

    /// Unnormalised bin log-weights at T: `[logp/T, log_tail/T + (1 − 1/T)·log(V−K)]`, `[N, K+1]`.
    fn weights(&self, temperature: f64, vocab: i64) -> Tensor {
        let k = self.k();
        assert!(vocab >= k, "sparse teacher: vocab {vocab} < k {k}");
        let top = self.logp.to_kind(Kind::Float) / temperature; // [N, K]
        let tail = if vocab > k {
            self.log_tail.to_kind(Kind::Float) / temperature + (1.0 - 1.0 / temperature) * ((vocab - k) as f64).ln()
        } else {
            Tensor::full([self.rows()], f64::NEG_INFINITY, (Kind::Float, top.device()))
        }; // [N]
        Tensor::cat(&[top, tail.unsqueeze(1)], 1)
    }

    /// The teacher's log-probabilities over the K + 1 bins (top k, then the tail) at temperature
    /// T, for a vocabulary of `vocab` tokens. Exact at T = 1.
    ///
    /// # Shapes
    /// → `[N, K+1]`.
    pub fn log_probs(&self, temperature: f64, vocab: i64) -> Tensor {
        tch::no_grad(|| self.weights(temperature, vocab).log_softmax(-1, Kind::Float))
    }

    /// The dense log-probabilities this entry stands for at temperature T: the top-k ids get
    /// their bin, each of the V − K other tokens `(lt/T) − logsumexp(w)` with
    /// `lt = log_tail − log(V−K)` (a uniform tail).
    ///
    /// # Shapes
    /// → `[N, V]`.
    pub fn reconstruct(&self, temperature: f64, vocab: i64) -> Tensor {
        tch::no_grad(|| {
            let k = self.k();
            let w = self.weights(temperature, vocab); // [N, K+1]
            let lse = w.logsumexp(-1, true); // [N, 1]
            let top = w.narrow(1, 0, k) - &lse; // [N, K]
            let tail = if vocab > k {
                (self.log_tail.to_kind(Kind::Float).unsqueeze(1) - ((vocab - k) as f64).ln()) / temperature - &lse
            } else {
                Tensor::full([self.rows(), 1], f64::NEG_INFINITY, (Kind::Float, w.device()))
            }; // [N, 1]
            let mut out = tail.repeat([1, vocab]); // [N, V]
            let _ = out.scatter_(1, &self.ids, &top);
            out
        })
    }
}

//! Response-based KD: the student matches the teacher's temperature-softened output
//! distribution (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network",
//! arXiv:1503.02531).
//!
//! ```text
//! p_t = softmax(z_t / T)      p_s = softmax(z_s / T)
//! soft = T² · (1/N) Σ_n Σ_c p_t[n,c] · (log p_t[n,c] − log p_s[n,c])     ("batchmean" KL)
//! hard = (1/|L|) Σ_{n∈L} −log softmax(z_s)[n, y_n]                     (L: rows with a label)
//! L    = α · soft + (1 − α) · hard
//! ```
//!
//! The `T²` keeps the soft term's gradient magnitude independent of T (the gradient of the KL
//! scales as 1/T²). The KL is divided by the number of rows N, PyTorch's
//! `kl_div(..., reduction="batchmean")` — not `"mean"`, which would also divide by the number of
//! classes. Rows whose label is negative (e.g. −100) carry no label and contribute only to the
//! soft term: KD with unlabeled data.

use tch::{Kind, Tensor};

/// Hinton's blended objective `α·T²·KL(p_t ‖ p_s) + (1−α)·CE(y, z_s)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdLoss {
    /// Softmax temperature T (> 0).
    pub temperature: f64,
    /// Weight α of the soft term, in [0, 1].
    pub alpha: f64,
}

/// The loss and its two parts (each already a scalar).
#[derive(Debug)]
pub struct KdParts {
    /// `α·soft + (1−α)·hard`, the value to backpropagate.
    pub total: Tensor,
    /// `T²·KL(p_t ‖ p_s)`, batchmean.
    pub soft: Tensor,
    /// Cross-entropy over labelled rows (0 when no row has a label).
    pub hard: Tensor,
}

/// Cross-entropy of `logits` against `labels`, averaged over rows with a label ≥ 0; 0 when there
/// are none.
///
/// # Shapes
/// `logits: [N, C]`, `labels: [N]` (i64) → scalar.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    let valid = labels.ge(0); // [N] bool
    let count = valid.sum(Kind::Float).clamp_min(1.0); // scalar
    let safe = labels.clamp_min(0).unsqueeze(1); // [N, 1]
    let nll = -logits.log_softmax(-1, Kind::Float).gather(1, &safe, false).squeeze_dim(1); // [N]
    (nll * valid.to_kind(Kind::Float)).sum(Kind::Float) / count
}

impl KdLoss {
    /// Computes the loss. `teacher` is treated as a constant.
    ///
    /// # Shapes
    /// `student: [N, C]`, `teacher: [N, C]`, `labels: [N]` i64 (negative = unlabeled) → scalars.
    pub fn forward(&self, student: &Tensor, teacher: &Tensor, labels: Option<&Tensor>) -> KdParts {
        let t = self.temperature;
        let n = student.size()[0].max(1) as f64;
        let log_ps = (student / t).log_softmax(-1, Kind::Float); // [N, C]
        let log_pt = (teacher.detach() / t).log_softmax(-1, Kind::Float); // [N, C]
        let kl = (log_pt.exp() * (&log_pt - log_ps)).sum(Kind::Float) / n; // scalar
        let soft = kl * (t * t);
        let hard = match labels {
            Some(y) => cross_entropy(student, y),
            None => Tensor::zeros([], (Kind::Float, student.device())),
        };
        let total = &soft * self.alpha + &hard * (1.0 - self.alpha);
        KdParts { total, soft, hard }
    }
}

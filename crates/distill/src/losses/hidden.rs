//! Feature (hidden-state) distillation: the student's intermediate states, carried into the
//! teacher's width by a learned linear projection `W` (`[H_t, H_s]`, trained with the student and
//! dropped afterwards), are pulled toward the teacher's states at matched layers.
//!
//! For `N` rows (token positions) of one layer pair, `ĥ = h_s Wᵀ` (`[N, H_t]`):
//!
//! - `mse` — TinyBERT's hidden-state loss (Jiao et al. 2020, eq. 7):
//!   `L = 1/(N·H_t) · Σ_n Σ_d (ĥ_nd − h_t,nd)²` (`F.mse_loss(ĥ, h_t)`).
//! - `cosine` — DistilBERT's cosine embedding loss (Sanh et al. 2019), which TinyBERT's
//!   projection makes usable across widths: `L = 1/N · Σ_n (1 − cos(ĥ_n, h_t,n))`
//!   (`1 − F.cosine_similarity(ĥ, h_t, dim=1, eps=1e-8)`, averaged). Scale-free: it ignores the
//!   norm of the teacher's residual stream, which in many LLMs is dominated by a few huge
//!   dimensions (Sun et al. 2024, "Massive activations") that MSE would spend itself on.
//!
//! Over several layer pairs the losses are averaged. Tested against PyTorch
//! (`tests/fixtures/losses/make_hidden_fixtures.py`).

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// Which distance between projected student and teacher states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HiddenLoss {
    Mse,
    Cosine,
}

impl std::fmt::Display for HiddenLoss {
    /// The recipe's spelling.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HiddenLoss::Mse => "mse",
            HiddenLoss::Cosine => "cosine",
        })
    }
}

impl HiddenLoss {
    /// The loss of one layer pair: `projected` `[N, H_t]` (= `h_s Wᵀ`), `teacher` `[N, H_t]`
    /// (no gradient needed) → scalar.
    pub fn forward(self, projected: &Tensor, teacher: &Tensor) -> Tensor {
        let teacher = teacher.to_kind(projected.kind());
        match self {
            HiddenLoss::Mse => projected.mse_loss(&teacher, Reduction::Mean),
            HiddenLoss::Cosine => {
                let cos = Tensor::cosine_similarity(projected, &teacher, 1, 1e-8); // [N]
                cos.neg().g_add_scalar(1.0).mean(Kind::Float) // []
            }
        }
    }
}

/// Student layer → teacher layer for hidden-state KD when the recipe names none: student layer
/// `i` (1-based, the output of the i-th block) learns from teacher layer `round(i·L_t/L_s)`
/// (halves up) — TinyBERT's uniform strategy `g(m) = m·L_t/L_s`, so the last layers pair up.
pub fn uniform_layer_map(student_layers: usize, teacher_layers: usize) -> Vec<(usize, usize)> {
    (1..=student_layers).map(|i| (i, (2 * i * teacher_layers + student_layers) / (2 * student_layers))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_map_pairs_the_last_layers() {
        assert_eq!(uniform_layer_map(6, 30), vec![(1, 5), (2, 10), (3, 15), (4, 20), (5, 25), (6, 30)]);
        assert_eq!(uniform_layer_map(4, 12), vec![(1, 3), (2, 6), (3, 9), (4, 12)]);
        assert_eq!(uniform_layer_map(4, 30), vec![(1, 8), (2, 15), (3, 23), (4, 30)]);
        assert_eq!(uniform_layer_map(2, 2), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn identical_states_cost_nothing() {
        let h = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5, 0.0, 4.0]).view([2, 3]);
        assert_eq!(HiddenLoss::Mse.forward(&h, &h).double_value(&[]), 0.0);
        assert!(HiddenLoss::Cosine.forward(&h, &h).double_value(&[]).abs() < 1e-6);
        // Cosine ignores scale; MSE does not.
        assert!(HiddenLoss::Cosine.forward(&(&h * 3.0), &h).double_value(&[]).abs() < 1e-6);
        assert!(HiddenLoss::Mse.forward(&(&h * 3.0), &h).double_value(&[]) > 1.0);
    }
}

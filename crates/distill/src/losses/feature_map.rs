//! Losses between feature maps of image models: FitNets hints and attention transfer.
//!
//! - **FitNets hint** (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", eq. 2): a
//!   student layer, carried to the teacher's shape by a learned regressor `r` (a 1×1 convolution
//!   for `[B, C, H, W]` maps, a linear map for `[B, F]` features), regresses the teacher layer:
//!   `L = 1/(B·C·H·W) · Σ (r(F_s) − F_t)²` (`F.mse_loss(r(F_s), F_t)`). When the spatial sizes
//!   differ, the larger map is average-pooled to the smaller one first ([`match_spatial`]).
//! - **Attention transfer** (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention",
//!   eq. 2 with their reference code's reduction): the spatial attention map of a feature map
//!   `F` `[B, C, H, W]` is `Q = mean_c |F_c|^p` flattened to `[B, H·W]` and L2-normalised per
//!   example ([`attention_map`]); the loss between a student and a teacher map is
//!   `L = mean over B·H·W of (Q_s/‖Q_s‖₂ − Q_t/‖Q_t‖₂)²` (`(at(x) − at(y)).pow(2).mean()`), and
//!   the paper weights the sum over layer pairs by `β/2` with `β = 1000`. Channel counts may
//!   differ (the map averages them away); spatial sizes are matched by pooling.
//!
//! Tested against PyTorch (`tests/fixtures/losses/make_method_fixtures.py`).

use tch::{Kind, Reduction, Tensor};

/// Average-pools the larger of two `[B, C, H, W]` maps to the other's `H×W` (adaptive average
/// pooling, as `F.adaptive_avg_pool2d`); maps of equal size, and `[B, F]` features, pass as
/// they are.
pub fn match_spatial(s: &Tensor, t: &Tensor) -> (Tensor, Tensor) {
    let (ss, ts) = (s.size(), t.size());
    if ss.len() != 4 || ts.len() != 4 || ss[2..] == ts[2..] {
        return (s.shallow_clone(), t.shallow_clone());
    }
    let hw = [ss[2].min(ts[2]), ss[3].min(ts[3])];
    (s.adaptive_avg_pool2d(hw), t.adaptive_avg_pool2d(hw))
}

/// The FitNets hint loss: `regressed` (the student's features after the regressor) and
/// `teacher` of the same shape → `mean((regressed − teacher)²)`.
pub fn hint_loss(regressed: &Tensor, teacher: &Tensor) -> Tensor {
    regressed.mse_loss(&teacher.to_kind(regressed.kind()), Reduction::Mean)
}

/// Spatial attention map `[B, C, H, W]` → `[B, H·W]`: `mean_c |F_c|^p`, L2-normalised per example
/// (eps 1e-12, as `F.normalize`).
pub fn attention_map(f: &Tensor, p: f64) -> Tensor {
    let q = f.abs().pow_tensor_scalar(p).mean_dim(1, false, Kind::Float).flatten(1, -1); // [B, H·W]
    let norm = q.norm_scalaropt_dim(2.0, [1i64].as_slice(), true).clamp_min(1e-12); // [B, 1]
    q / norm
}

/// Attention transfer between a student and a teacher feature map (`[B, C_s, H, W]`,
/// `[B, C_t, H', W']`): `mean((Q_s − Q_t)²)` over the maps, spatially matched by pooling.
pub fn attention_transfer(s: &Tensor, t: &Tensor, p: f64) -> Tensor {
    let (s, t) = match_spatial(s, &t.to_kind(s.kind()));
    (attention_map(&s, p) - attention_map(&t, p)).pow_tensor_scalar(2).mean(Kind::Float)
}

//! Fake quantization on the exact grids of GGUF's Q8_0 and Q4_0 — the building block of
//! quantization-aware distillation. Each row is cut into blocks of 32 values with one scale per
//! block, computed by llama.cpp's rules (as gguf-py implements them bit for bit) and stored as
//! f16:
//!
//! ```text
//! Q8_0   d = max|x| / 127        q = roundf(x / d)  (half away from zero)   x̂ = q · f16(d)
//! Q4_0   d = x[argmax|x|] / −8   q = min(trunc(x / d + 8.5), 15) − 8          x̂ = q · f16(d)
//! ```
//!
//! (`x / d` is computed as `x · (1/d)`, and a block of zeros gets `1/d = 0`, as the reference
//! does.) [`fake_quant`] returns `x̂`, what llama.cpp computes with after loading such a file;
//! [`fake_quant_ste`] is the straight-through estimator (Bengio et al. 2013): `x̂` in the
//! forward pass, the identity in the backward pass, so a student trains in full precision while
//! its forward sees the quantized weights.

use tch::{Kind, Tensor};

use crate::{Error, Result};

/// A GGUF block-quantization grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantGrid {
    Q8_0,
    Q4_0,
}

/// Values per block.
pub const BLOCK: i64 = 32;

/// `w` (any shape whose last dimension is a multiple of 32) quantized to `grid` and back, f32.
pub fn fake_quant(w: &Tensor, grid: QuantGrid) -> Result<Tensor> {
    let shape = w.size();
    let last = shape.last().copied().unwrap_or(0);
    if last % BLOCK != 0 {
        return Err(Error::Invalid(format!(
            "{grid:?} quantizes rows in blocks of {BLOCK}; a row of {last} values does not divide"
        )));
    }
    Ok(tch::no_grad(|| {
        let x = w.to_kind(Kind::Float).reshape([-1, BLOCK]); // [N, 32]
        let d = match grid {
            QuantGrid::Q8_0 => x.abs().amax([1i64].as_slice(), true) / 127.0, // [N, 1]
            QuantGrid::Q4_0 => {
                let imax = x.abs().argmax(1, true); // [N, 1], the first maximum
                x.gather(1, &imax, false) / -8.0 // [N, 1]
            }
        };
        let id = d.reciprocal().masked_fill(&d.eq(0.0), 0.0); // [N, 1]
        let y = &x * &id; // [N, 32]
        let q = match grid {
            QuantGrid::Q8_0 => {
                let a = y.abs();
                let floored = a.floor();
                // Round half away from zero; `+ 0.0` turns −0 into +0, as the reference's int8 does.
                (&floored + ((&a - &floored) * 2.0).floor()) * y.sign() + 0.0
            }
            QuantGrid::Q4_0 => (y + 8.5).trunc().clamp(0.0, 15.0) - 8.0,
        };
        let d16 = d.to_kind(Kind::Half).to_kind(Kind::Float); // [N, 1]
        (q * d16).reshape(shape.as_slice())
    }))
}

/// The straight-through estimator: `w + (fake_quant(w) − w)` with the difference detached, so
/// the value is the quantized weight and the gradient reaches `w` unchanged.
pub fn fake_quant_ste(w: &Tensor, grid: QuantGrid) -> Result<Tensor> {
    let q = fake_quant(w, grid)?.to_kind(w.kind());
    Ok(w + (q - w).detach())
}

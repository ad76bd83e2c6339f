//! Quantization from `f32`, bit-for-bit equal to `gguf.quants.quantize` of the Python `gguf`
//! package (itself equal to `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref` in ggml-quants.c).

use half::f16;

use crate::dequant::DequantError;
use crate::types::GgmlType;

/// Encodes `data` as little-endian F16, rounding to nearest even (numpy's `astype(float16)`).
pub fn quantize_f16(data: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2);
    for &x in data {
        out.extend_from_slice(&f16::from_f32(x).to_bits().to_le_bytes());
    }
    out
}

/// Encodes `data` as little-endian F32 bytes.
pub fn quantize_f32(data: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for &x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Quantizes `data` (a multiple of 32 values) to Q8_0 blocks.
///
/// Per block of 32: `d = max|x| / 127`, `q[i] = round_half_away_from_zero(x[i] * (1/d))` (0 when
/// `d == 0`), stored as `d: f16 | q: 32 × i8` (34 bytes). `d` is rounded to f16 only for storage;
/// the scaling uses the f32 `1/d`, as in ggml.
pub fn quantize_q8_0(data: &[f32]) -> Result<Vec<u8>, DequantError> {
    if data.len() % 32 != 0 {
        return Err(DequantError::LengthMismatch { ty: GgmlType::Q8_0, bytes: 0, elements: data.len() });
    }
    let mut out = Vec::with_capacity(data.len() / 32 * 34);
    for block in data.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, &x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for &x in block {
            // f32::round rounds half away from zero, like gguf-py's np_roundf and C roundf.
            out.push(((x * id).round() as i8) as u8);
        }
    }
    Ok(out)
}

/// Quantizes `data` (a multiple of 32 values) to Q4_0 blocks.
///
/// Per block of 32: `d = x[argmax|x|] / -8` (the first maximum, sign kept),
/// `q[i] = min(trunc(x[i] * (1/d) + 8.5), 15)` (`1/d = 0` when `d == 0`), stored as
/// `d: f16 | 16 bytes` where byte `j` holds `q[j]` in its low nibble and `q[j + 16]` in its high
/// one (18 bytes). The value is `(q − 8) · d`.
pub fn quantize_q4_0(data: &[f32]) -> Result<Vec<u8>, DequantError> {
    if data.len() % 32 != 0 {
        return Err(DequantError::LengthMismatch { ty: GgmlType::Q4_0, bytes: 0, elements: data.len() });
    }
    let mut out = Vec::with_capacity(data.len() / 32 * 18);
    for block in data.chunks_exact(32) {
        let mut max = 0f32;
        for &x in block {
            if x.abs() > max.abs() {
                max = x;
            }
        }
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let q = |x: f32| ((x * id + 8.5).trunc() as u8).min(15);
        for j in 0..16 {
            out.push(q(block[j]) | (q(block[j + 16]) << 4));
        }
    }
    Ok(out)
}

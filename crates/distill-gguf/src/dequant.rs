//! Dequantization of ggml tensor data to `f32`, bit-for-bit equal to `gguf.quants.dequantize` of
//! the Python `gguf` package (which follows `dequantize_row_*` in ggml-quants.c).
//!
//! Bitwise equality holds because every value is computed with the same `f32` operations in the
//! same order as numpy does (Rust never contracts `a * b + c` into a fused multiply-add unless
//! asked to), and `f16 → f32` is exact.
//!
//! Data is processed block by block; large tensors are split into chunks of whole blocks that
//! rayon dequantizes in parallel.

use half::f16;
use rayon::prelude::*;

use crate::types::GgmlType;

/// Elements in a K-quant super-block.
pub const QK_K: usize = 256;

/// Why a byte slice could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DequantError {
    /// The type has no dequantizer in this crate.
    #[error("dequantizing {0} is not supported")]
    Unsupported(GgmlType),
    /// `data` is not exactly the bytes of `out.len()` elements.
    #[error("{ty}: {bytes} bytes do not hold exactly {elements} elements")]
    LengthMismatch {
        /// The type being decoded.
        ty: GgmlType,
        /// Bytes given.
        bytes: usize,
        /// Elements asked for.
        elements: usize,
    },
}

/// Dequantizes `data` (a whole number of `ty` blocks) into `out`, which must hold exactly the
/// number of elements those blocks encode.
///
/// Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    match ty {
        GgmlType::F32 => dequantize_f32(data, out),
        GgmlType::F16 => dequantize_f16(data, out),
        GgmlType::BF16 => dequantize_bf16(data, out),
        GgmlType::Q8_0 => dequantize_q8_0(data, out),
        GgmlType::Q4_0 => dequantize_q4_0(data, out),
        GgmlType::Q4_1 => dequantize_q4_1(data, out),
        GgmlType::Q4_K => dequantize_q4_k(data, out),
        GgmlType::Q5_K => dequantize_q5_k(data, out),
        GgmlType::Q6_K => dequantize_q6_k(data, out),
        other => Err(DequantError::Unsupported(other)),
    }
}

/// Dequantizes `data` into a new vector of `n_elements` values (see [`dequantize`]).
pub fn dequantize_to_vec(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>, DequantError> {
    // The size is checked before the output is allocated: `n_elements` may come from a header.
    if ty.bytes_for(n_elements as u64) != Some(data.len() as u64) {
        return Err(DequantError::LengthMismatch { ty, bytes: data.len(), elements: n_elements });
    }
    let mut out = vec![0f32; n_elements];
    dequantize(ty, data, &mut out)?;
    Ok(out)
}

/// Target number of output elements per parallel task.
const CHUNK_ELEMENTS: usize = 1 << 16;

/// Runs `kernel` over every `(block bytes, block output)` pair, in parallel for large inputs.
/// `TS` is the block size in bytes, `BS` in elements.
fn for_each_block<const TS: usize, const BS: usize>(
    ty: GgmlType,
    data: &[u8],
    out: &mut [f32],
    kernel: impl Fn(&[u8; TS], &mut [f32; BS]) + Sync,
) -> Result<(), DequantError> {
    let n_blocks = out.len() / BS;
    if out.len() % BS != 0 || data.len() != n_blocks * TS {
        return Err(DequantError::LengthMismatch { ty, bytes: data.len(), elements: out.len() });
    }
    let serial = |data: &[u8], out: &mut [f32]| {
        for (b, y) in data.chunks_exact(TS).zip(out.chunks_exact_mut(BS)) {
            // chunks_exact yields exactly TS / BS items, so both conversions succeed.
            if let (Ok(b), Ok(y)) = (<&[u8; TS]>::try_from(b), <&mut [f32; BS]>::try_from(y)) {
                kernel(b, y);
            }
        }
    };
    let blocks_per_chunk = (CHUNK_ELEMENTS / BS).max(1);
    if n_blocks <= blocks_per_chunk {
        serial(data, out);
    } else {
        data.par_chunks(blocks_per_chunk * TS)
            .zip(out.par_chunks_mut(blocks_per_chunk * BS))
            .for_each(|(d, o)| serial(d, o));
    }
    Ok(())
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// F32: 4 little-endian bytes per element, copied as is.
pub fn dequantize_f32(data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    for_each_block::<4, 1>(GgmlType::F32, data, out, |b, y| {
        y[0] = f32::from_le_bytes(*b);
    })
}

/// F16: 2 little-endian bytes per element (IEEE binary16), widened exactly to f32.
pub fn dequantize_f16(data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    for_each_block::<2, 1>(GgmlType::F16, data, out, |b, y| {
        y[0] = f16::from_bits(u16::from_le_bytes(*b)).to_f32();
    })
}

/// BF16: 2 little-endian bytes per element, the upper half of an f32 (`bits << 16`).
pub fn dequantize_bf16(data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    for_each_block::<2, 1>(GgmlType::BF16, data, out, |b, y| {
        y[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16);
    })
}

/// Q8_0: blocks of 32 elements in 34 bytes.
///
/// ```text
/// d: f16 (2 bytes) | qs: 32 × i8
/// y[i] = qs[i] * d
/// ```
pub fn dequantize_q8_0(data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    for_each_block::<34, 32>(GgmlType::Q8_0, data, out, |b, y| {
        let d = f16_at(b, 0);
        for (yi, &q) in y.iter_mut().zip(&b[2..]) {
            *yi = f32::from(q as i8) * d;
        }
    })
}

/// Q4_0: blocks of 32 elements in 18 bytes.
///
/// ```text
/// d: f16 | qs: 16 bytes, element j in the low nibble of qs[j], element j+16 in the high nibble
/// y[i] = d * (q[i] - 8)
/// ```
pub fn dequantize_q4_0(data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    for_each_block::<18, 32>(GgmlType::Q4_0, data, out, |b, y| {
        let d = f16_at(b, 0);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[2 + j];
            lo[j] = d * f32::from((q & 0x0F) as i8 - 8);
            hi[j] = d * f32::from((q >> 4) as i8 - 8);
        }
    })
}

/// Q4_1: blocks of 32 elements in 20 bytes.
///
/// ```text
/// d: f16 | m: f16 | qs: 16 bytes, element j low nibble of qs[j], element j+16 high nibble
/// y[i] = d * q[i] + m
/// ```
pub fn dequantize_q4_1(data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    for_each_block::<20, 32>(GgmlType::Q4_1, data, out, |b, y| {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[4 + j];
            lo[j] = d * f32::from(q & 0x0F) + m;
            hi[j] = d * f32::from(q >> 4) + m;
        }
    })
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K / Q5_K:
///
/// ```text
/// byte  0..4 : sc[0..4] low 6 bits | top 2 bits = sc[4..8] bits 4-5
/// byte  4..8 : m[0..4]  low 6 bits | top 2 bits = m[4..8]  bits 4-5
/// byte 8..12 : low nibble = sc[4..8] bits 0-3, high nibble = m[4..8] bits 0-3
/// ```
#[inline(always)]
fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
}

/// Q4_K: super-blocks of 256 elements in 144 bytes, 8 sub-blocks of 32.
///
/// ```text
/// d: f16 | dmin: f16 | scales: 12 bytes (8 × 6-bit scale, 8 × 6-bit min; see k_scale_min)
/// qs: 128 bytes; for chunk c in 0..4: sub-block 2c = low nibbles of qs[32c..32c+32],
///                                       sub-block 2c+1 = high nibbles of the same bytes
/// y = (d * sc[s]) * q - (dmin * m[s])
/// ```
pub fn dequantize_q4_k(data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    for_each_block::<144, QK_K>(GgmlType::Q4_K, data, out, |b, y| {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for c in 0..4 {
            let (sc0, m0) = k_scale_min(scales, 2 * c);
            let (sc1, m1) = k_scale_min(scales, 2 * c + 1);
            let (d0, dm0) = (d * f32::from(sc0), dmin * f32::from(m0));
            let (d1, dm1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let q = &qs[32 * c..32 * c + 32];
            let (y0, y1) = y[64 * c..64 * c + 64].split_at_mut(32);
            for l in 0..32 {
                y0[l] = d0 * f32::from(q[l] & 0x0F) - dm0;
                y1[l] = d1 * f32::from(q[l] >> 4) - dm1;
            }
        }
    })
}

/// Q5_K: super-blocks of 256 elements in 176 bytes, 8 sub-blocks of 32.
///
/// ```text
/// d: f16 | dmin: f16 | scales: 12 bytes (as Q4_K) | qh: 32 bytes | qs: 128 bytes
/// low 4 bits: as Q4_K (sub-block 2c low nibbles, 2c+1 high nibbles of qs[32c..32c+32])
/// 5th bit of element l of sub-block s: bit s of qh[l]
/// y = (d * sc[s]) * q - (dmin * m[s])
/// ```
pub fn dequantize_q5_k(data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    for_each_block::<176, QK_K>(GgmlType::Q5_K, data, out, |b, y| {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for c in 0..4 {
            let (sc0, m0) = k_scale_min(scales, 2 * c);
            let (sc1, m1) = k_scale_min(scales, 2 * c + 1);
            let (d0, dm0) = (d * f32::from(sc0), dmin * f32::from(m0));
            let (d1, dm1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let q = &qs[32 * c..32 * c + 32];
            let (y0, y1) = y[64 * c..64 * c + 64].split_at_mut(32);
            for l in 0..32 {
                let h0 = ((qh[l] >> (2 * c)) & 1) << 4;
                let h1 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
                y0[l] = d0 * f32::from((q[l] & 0x0F) | h0) - dm0;
                y1[l] = d1 * f32::from((q[l] >> 4) | h1) - dm1;
            }
        }
    })
}

/// Q6_K: super-blocks of 256 elements in 210 bytes, 16 sub-blocks of 16.
///
/// ```text
/// ql: 128 bytes (low 4 bits) | qh: 64 bytes (high 2 bits) | scales: 16 × i8 | d: f16
/// for half h in 0..2 (128 elements each), l in 0..32:
///   y[h*128 + l     ] ← low nibble  of ql[h*64 + l],      bits 0-1 of qh[h*32 + l]
///   y[h*128 + l + 32] ← low nibble  of ql[h*64 + l + 32], bits 2-3 of qh[h*32 + l]
///   y[h*128 + l + 64] ← high nibble of ql[h*64 + l],      bits 4-5 of qh[h*32 + l]
///   y[h*128 + l + 96] ← high nibble of ql[h*64 + l + 32], bits 6-7 of qh[h*32 + l]
/// q = (low | high << 4) - 32;  y[i] = (d * scales[i / 16]) * q
/// ```
pub fn dequantize_q6_k(data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    for_each_block::<210, QK_K>(GgmlType::Q6_K, data, out, |b, y| {
        let ql = &b[0..128];
        let qh = &b[128..192];
        let sc = &b[192..208];
        let d = f16_at(b, 208);
        let mut ds = [0f32; 16];
        for (dsi, &s) in ds.iter_mut().zip(sc) {
            *dsi = d * f32::from(s as i8);
        }
        for h in 0..2 {
            let ql = &ql[64 * h..64 * h + 64];
            let qh = &qh[32 * h..32 * h + 32];
            let y = &mut y[128 * h..128 * h + 128];
            let ds = &ds[8 * h..8 * h + 8];
            for l in 0..32 {
                let q0 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q1 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                let is = l / 16;
                y[l] = ds[is] * f32::from(q0);
                y[l + 32] = ds[is + 2] * f32::from(q1);
                y[l + 64] = ds[is + 4] * f32::from(q2);
                y[l + 96] = ds[is + 6] * f32::from(q3);
            }
        }
    })
}

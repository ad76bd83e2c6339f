//! MKL's packed GEMM for decoding several rows at once.
//!
//! A decoding step multiplies a few rows (one per sequence of the batch) by every weight matrix.
//! MKL's plain sgemm for 8 rows runs at a fraction of its large-matrix speed on 2 cores; its
//! packed interface (`cblas_sgemm_pack` once per matrix, then `cblas_sgemm_compute` per product)
//! is about 1.35× faster there and gives the same values as the column-major product (checked in
//! the tests). libtorch registers it as `mkl::_mkl_reorder_linear_weight` / `mkl::_mkl_linear`
//! (torch.compile's CPU freezing uses them); tch has no binding for ops outside ATen's generated
//! API, so `csrc/mkl_packed.cpp` calls them through the dispatcher. A packed weight serves
//! products with exactly the row count it was packed for; any other (a prompt's forward) runs on
//! the original weight.

use std::ffi::{c_char, CStr};

use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::{Error, Result};

extern "C" {
    fn distill_mkl_pack(w: *const C_tensor, rows: i64, out: *mut *mut C_tensor) -> *mut c_char;
    fn distill_mkl_linear(
        x: *const C_tensor,
        packed: *const C_tensor,
        w: *const C_tensor,
        bias: *const C_tensor,
        rows: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn distill_free_message(m: *mut c_char);
}

/// Turns the shim's result into a tensor or an error.
fn finish(msg: *mut c_char, out: *mut C_tensor) -> Result<Tensor> {
    if !msg.is_null() {
        // SAFETY: a non-null message is a NUL-terminated string malloc'd by the shim.
        let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned();
        unsafe { distill_free_message(msg) };
        return Err(Error::Invalid(format!("MKL packed GEMM: {text}")));
    }
    // SAFETY: on success the shim stored a new `at::Tensor*` that nothing else owns.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// A weight `[out, in]` packed for products with `rows` rows.
#[derive(Debug)]
pub struct Packed {
    packed: Tensor,
    rows: i64,
}

impl Packed {
    /// Packs `w` (float32, on the CPU) for `rows`-row products; None where packing does not
    /// apply (another kind or device, libtorch without MKL).
    pub fn new(w: &Tensor, rows: i64) -> Result<Option<Packed>> {
        if w.device() != Device::Cpu || w.kind() != Kind::Float || w.dim() != 2 || rows < 1 || !tch::utils::has_mkl() {
            return Ok(None);
        }
        let w = w.contiguous();
        let mut out = std::ptr::null_mut();
        // SAFETY: `w` outlives the call; the shim catches every C++ exception.
        let msg = unsafe { distill_mkl_pack(w.as_ptr(), rows, &mut out) };
        Ok(Some(Packed { packed: finish(msg, out)?, rows }))
    }

    /// `x · wᵀ (+ b)` `[…, out]` for `x` `[…, in]`: the packed product when `x` has the packed
    /// row count, else the plain one on `w` (the weight this was packed from).
    pub fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let x = x.contiguous();
        let mut out = std::ptr::null_mut();
        let bias = b.map_or(std::ptr::null(), Tensor::as_ptr);
        // SAFETY: every tensor outlives the call; a null bias means none.
        let msg =
            unsafe { distill_mkl_linear(x.as_ptr(), self.packed.as_ptr(), w.as_ptr(), bias, self.rows, &mut out) };
        finish(msg, out)
    }

    /// The row count this weight was packed for.
    pub fn rows(&self) -> i64 {
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_product_equals_the_column_major_one_and_falls_back_for_other_row_counts() {
        tch::manual_seed(0);
        let w = Tensor::randn([96, 40], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([96], (Kind::Float, Device::Cpu));
        let p = Packed::new(&w, 8).unwrap().expect("libtorch built with MKL");
        let col = w.tr().contiguous(); // [in, out]
        for rows in [8, 3] {
            let x = Tensor::randn([rows, 1, 40], (Kind::Float, Device::Cpu));
            let want = x.matmul(&col) + &b; // [rows, 1, 96]
            let got = p.linear(&x, &w, Some(&b)).unwrap();
            assert_eq!(got.size(), [rows, 1, 96]);
            let diff = (got - want).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{rows} rows: {diff}");
        }
        assert!(Packed::new(&w.to_kind(Kind::BFloat16), 8).unwrap().is_none());
    }
}

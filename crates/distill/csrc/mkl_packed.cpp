// MKL's packed GEMM (cblas_sgemm_pack / cblas_sgemm_compute) as libtorch registers it: the ops
// `mkl::_mkl_reorder_linear_weight` and `mkl::_mkl_linear` (what torch.compile's CPU freezing
// uses for float32 linear layers). They live outside ATen's generated API, so tch has no binding;
// these two functions call them through the dispatcher by name. Every C++ exception becomes a
// message (malloc'd, freed with distill_free_message) instead of crossing into Rust.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "message.hpp"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>

extern "C" {

// The weight `w` [out, in] packed for products with exactly `rows` rows; *out receives a new tensor.
char *distill_mkl_pack(const at::Tensor *w, int64_t rows, at::Tensor **out) {
  try {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("mkl::_mkl_reorder_linear_weight", "")
                         .typed<at::Tensor(const at::Tensor &, int64_t)>();
    *out = new at::Tensor(op.call(*w, rows));
    return nullptr;
  } catch (const std::exception &e) {
    return distill::message(e.what());
  }
}

// `x · wᵀ (+ bias)` with the packed weight when x has `rows` rows, else with `w` itself.
char *distill_mkl_linear(const at::Tensor *x, const at::Tensor *packed, const at::Tensor *w,
                         const at::Tensor *bias, int64_t rows, at::Tensor **out) {
  try {
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("mkl::_mkl_linear", "")
            .typed<at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &,
                              const std::optional<at::Tensor> &, int64_t)>();
    std::optional<at::Tensor> b;
    if (bias != nullptr) b = *bias;
    *out = new at::Tensor(op.call(*x, *packed, *w, b, rows));
    return nullptr;
  } catch (const std::exception &e) {
    return distill::message(e.what());
  }
}

void distill_free_message(char *m) { std::free(m); }
}

// What the crate's C++ shims share: an exception's text as a malloc'd C string for Rust
// (freed with distill_free_message, defined in mkl_packed.cpp).
#pragma once

#include <cstdlib>
#include <cstring>

namespace distill {
inline char *message(const char *what) {
  size_t n = std::strlen(what);
  char *p = static_cast<char *>(std::malloc(n + 1));
  if (p != nullptr) std::memcpy(p, what, n + 1);
  return p;
}
}  // namespace distill

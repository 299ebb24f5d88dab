// Checked 64-bit arithmetic for sizes and offsets: overflow becomes posenc::Error(overflow) naming the quantity.
#pragma once

#include <cstdint>
#include <string>

#include "posenc/error.hpp"

namespace posenc::detail {

/// a * b, or throws Error(overflow) naming the quantity: "`subject` `quantity`: a * b does not fit
/// in 64 bits". The message is built only on overflow, so checks cost nothing on the hot path.
inline std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* subject, const char* quantity = "") {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) [[unlikely]] {
    throw Error(ErrorKind::overflow, std::string(subject) + quantity + ": " + std::to_string(a) + " * " +
                                         std::to_string(b) + " does not fit in 64 bits");
  }
  return r;
}

/// a + b, or throws Error(overflow) naming the quantity, like checked_mul.
inline std::int64_t checked_add(std::int64_t a, std::int64_t b, const char* subject, const char* quantity = "") {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) [[unlikely]] {
    throw Error(ErrorKind::overflow, std::string(subject) + quantity + ": " + std::to_string(a) + " + " +
                                         std::to_string(b) + " does not fit in 64 bits");
  }
  return r;
}

}  // namespace posenc::detail

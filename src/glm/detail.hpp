// Internal helpers of the GLM subsystem: error messages that name value, index and limit, checked arithmetic.
#pragma once

#include <cstdint>
#include <span>
#include <sstream>
#include <string>
#include <utility>

#include "posenc/error.hpp"
#include "posenc/glm.hpp"

namespace posenc::glm::detail {

/// Concatenates the arguments with operator<< (so messages read naturally at the throw site).
template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

template <typename... Parts>
[[noreturn]] void fail(ErrorKind kind, const Parts&... parts) {
  throw Error(kind, cat(parts...));
}

/// a * b for sizes; Error(overflow) naming `what` when it does not fit in int64.
inline std::int64_t mul(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) {
    fail(ErrorKind::overflow, what, ": ", a, " * ", b, " does not fit in 64 bits");
  }
  return r;
}

/// a + b; Error(overflow) naming `what` when it does not fit in int64.
inline std::int64_t add(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) {
    fail(ErrorKind::overflow, what, ": ", a, " + ", b, " does not fit in 64 bits");
  }
  return r;
}

/// Throws Error(invalid_argument) when `value` < `minimum`.
inline void require_at_least(std::int64_t value, std::int64_t minimum, const char* what) {
  if (value < minimum) {
    fail(ErrorKind::invalid_argument, what, " is ", value, "; it must be at least ", minimum);
  }
}

/// Index of the first occurrence of `token` in tokens[0, end), or -1.
inline std::int64_t find_token(std::span<const TokenId> tokens, TokenId token, std::int64_t end) {
  if (token == no_token) return -1;
  for (std::int64_t i = 0; i < end; ++i) {
    if (tokens[static_cast<std::size_t>(i)] == token) return i;
  }
  return -1;
}

/// Checks that `mask` has batch * length entries, each 0 or 1 (names the first bad [b, t]).
void check_binary_mask(std::span<const std::uint8_t> mask, std::int64_t batch, std::int64_t length,
                       const char* what);

}  // namespace posenc::glm::detail

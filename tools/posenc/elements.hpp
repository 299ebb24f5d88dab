// Reading and writing one activation element of a raw host buffer as float (exact widening, RNE narrowing).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "posenc/dtype.hpp"

namespace posenc::cli {

/// Element `i` of a buffer of `dtype`, widened exactly to float.
inline float load_element(DType dtype, const std::byte* base, std::int64_t i) noexcept {
  if (dtype == DType::f32) {
    float f;
    std::memcpy(&f, base + i * 4, 4);
    return f;
  }
  std::uint16_t h;
  std::memcpy(&h, base + i * 2, 2);
  return dtype == DType::bf16 ? bf16_bits_to_float(h) : f16_bits_to_float(h);
}

/// Stores `value` as element `i`, rounded to nearest even for the 16-bit dtypes.
inline void store_element(DType dtype, std::byte* base, std::int64_t i, float value) noexcept {
  if (dtype == DType::f32) {
    std::memcpy(base + i * 4, &value, 4);
    return;
  }
  const std::uint16_t h = dtype == DType::bf16 ? float_to_bf16_bits(value) : float_to_f16_bits(value);
  std::memcpy(base + i * 2, &h, 2);
}

}  // namespace posenc::cli

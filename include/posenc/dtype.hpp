// Element types posenc reads and writes, and exact host conversions between them and float.
#pragma once

#include <cstdint>
#include <cstring>

namespace posenc {

/// Activation element types of Q and K.
enum class DType : std::uint8_t { f32, f16, bf16 };

/// Element types of position ids.
enum class IndexType : std::uint8_t { i32, i64 };

/// Bytes of one element.
constexpr std::int64_t size_of(DType t) noexcept { return t == DType::f32 ? 4 : 2; }
constexpr std::int64_t size_of(IndexType t) noexcept { return t == IndexType::i32 ? 4 : 8; }

/// "float32", "float16", "bfloat16" / "int32", "int64".
const char* to_string(DType t) noexcept;
const char* to_string(IndexType t) noexcept;

/// Parses "float32"/"f32"/"fp32", "float16"/"f16"/"fp16"/"half", "bfloat16"/"bf16";
/// throws posenc::Error(invalid_argument) naming the text otherwise.
DType parse_dtype(const char* text);

/// float -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN), as PyTorch's cast does.
inline std::uint16_t float_to_bf16_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

/// bfloat16 bits -> float (exact).
inline float bf16_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// float -> IEEE binary16 bits, round to nearest even, with subnormals, overflow to inf, NaN kept.
std::uint16_t float_to_f16_bits(float f) noexcept;

/// IEEE binary16 bits -> float (exact).
float f16_bits_to_float(std::uint16_t h) noexcept;

/// Rounds `f` to the nearest value representable in `t` (identity for f32).
float round_to(DType t, float f) noexcept;

}  // namespace posenc

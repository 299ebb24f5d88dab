// Element types posenc reads and writes, and exact host conversions between them and float.
#pragma once

#include <array>
#include <cstdint>

namespace posenc {

/// Activation element types of Q and K.
enum class DType : std::uint8_t { f32, f16, bf16 };

/// Every DType, in enum order (the CPU engine builds a kernel for each; tests sweep them).
inline constexpr std::array<DType, 3> all_dtypes = {DType::f32, DType::f16, DType::bf16};

/// Element types of position ids.
enum class IndexType : std::uint8_t { i32, i64 };

/// Bytes of one element (0 for a value outside the enum, which validation rejects first).
constexpr std::int64_t size_of(DType t) noexcept {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
  }
  return 0;
}
/// Significand bits, the implicit one included (24, 11, 8), and the exponent of the smallest normal
/// value (-126, -14, -126): what an ulp of the dtype is at a given magnitude.
constexpr int significand_bits(DType t) noexcept {
  switch (t) {
    case DType::f32: return 24;
    case DType::f16: return 11;
    case DType::bf16: return 8;
  }
  return 0;
}
constexpr int min_normal_exponent(DType t) noexcept {
  switch (t) {
    case DType::f32: return -126;
    case DType::f16: return -14;
    case DType::bf16: return -126;
  }
  return 0;
}

constexpr std::int64_t size_of(IndexType t) noexcept {
  switch (t) {
    case IndexType::i32: return 4;
    case IndexType::i64: return 8;
  }
  return 0;
}

/// "float32", "float16", "bfloat16" / "int32", "int64".
const char* to_string(DType t) noexcept;
const char* to_string(IndexType t) noexcept;

/// Parses "float32"/"f32"/"fp32", "float16"/"f16"/"fp16"/"half", "bfloat16"/"bf16";
/// throws posenc::Error(invalid_argument) naming the text otherwise.
DType parse_dtype(const char* text);

/// float -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN), as PyTorch's cast does.
std::uint16_t float_to_bf16_bits(float f) noexcept;

/// bfloat16 bits -> float (exact).
float bf16_bits_to_float(std::uint16_t h) noexcept;

/// float -> IEEE binary16 bits, round to nearest even, with subnormals, overflow to inf, NaN kept.
std::uint16_t float_to_f16_bits(float f) noexcept;

/// IEEE binary16 bits -> float (exact).
float f16_bits_to_float(std::uint16_t h) noexcept;

// The two below throw posenc::Error(invalid_argument) for a `t` outside the enum.

/// Element `index` of a buffer of `t` elements, widened exactly to float.
float load_element(DType t, const void* data, std::int64_t index);

/// Stores `value` as element `index` of a buffer of `t` elements, rounded to nearest even.
void store_element(DType t, void* data, std::int64_t index, float value);

}  // namespace posenc

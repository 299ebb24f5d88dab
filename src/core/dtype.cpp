// Names of element types, dtype parsing, and the exported host conversions (thin wrappers over element.hpp).
#include "posenc/dtype.hpp"

#include <string>
#include <string_view>

#include "core/dispatch.hpp"
#include "core/element.hpp"
#include "posenc/error.hpp"

namespace posenc {

const char* to_string(DType t) noexcept {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
  }
  return "unknown";
}

const char* to_string(IndexType t) noexcept {
  switch (t) {
    case IndexType::i32: return "int32";
    case IndexType::i64: return "int64";
  }
  return "unknown";
}

DType parse_dtype(const char* text) {
  if (text == nullptr) throw Error(ErrorKind::invalid_argument, "parse_dtype: text is null");
  const std::string_view s(text);
  if (s == "float32" || s == "f32" || s == "fp32") return DType::f32;
  if (s == "float16" || s == "f16" || s == "fp16" || s == "half") return DType::f16;
  if (s == "bfloat16" || s == "bf16") return DType::bf16;
  throw Error(ErrorKind::invalid_argument,
              "parse_dtype: unknown dtype \"" + std::string(s) +
                  "\" (expected float32/f32/fp32, float16/f16/fp16/half or bfloat16/bf16)");
}

// The conversions live in conversions.hpp and element.hpp so that host code, the CPU engine and
// the GPU kernels all round through the same lines; these are thin exported wrappers.
std::uint16_t float_to_bf16_bits(float f) noexcept { return detail::to_bf16_bits(f); }

float bf16_bits_to_float(std::uint16_t h) noexcept { return detail::from_bf16_bits(h); }

std::uint16_t float_to_f16_bits(float f) noexcept { return detail::to_f16_bits(f); }

float f16_bits_to_float(std::uint16_t h) noexcept { return detail::from_f16_bits(h); }

float load_element(DType t, const void* data, std::int64_t index) {
  return detail::visit(t, [&](auto d) { return detail::load_at<d.value>(data, index); });
}

void store_element(DType t, void* data, std::int64_t index, float value) {
  detail::visit(t, [&](auto d) { detail::store_at<d.value>(data, index, value); });
}

}  // namespace posenc

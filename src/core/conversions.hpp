// Exact float operations and the bit conversions between float and bfloat16, float16 and fp8 E4M3, compiled for host and device alike.
//
// Everything here is written once and compiled both by the host compiler and by nvcc/hipcc, so
// the CPU and GPU paths round identically. Host translation units must be built with
// -ffp-contract=off; device code uses the explicit _rn intrinsics below, which the compiler never
// fuses. element.hpp builds the activation element types on these; rope_math.hpp the rotation.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Host/device qualifiers. This is not the CUDA/HIP vendor switch (src/gpu/vendor.hpp is): it only
// tells whether a GPU compiler is compiling, and whether this pass generates device code.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define POSENC_HD __host__ __device__ __forceinline__
#else
#define POSENC_HD inline
#endif
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
#define POSENC_DEVICE_PASS 1
#else
#define POSENC_DEVICE_PASS 0
#endif

namespace posenc::detail {

// ---- exact float operations (never contracted into FMA) ----------------------------------------

POSENC_HD float mul_rn(float a, float b) {
#if POSENC_DEVICE_PASS
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

POSENC_HD float add_rn(float a, float b) {
#if POSENC_DEVICE_PASS
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

POSENC_HD float sub_rn(float a, float b) {
#if POSENC_DEVICE_PASS
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

POSENC_HD float fma_rn(float a, float b, float c) {
#if POSENC_DEVICE_PASS
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

POSENC_HD float div_rn(float a, float b) {
#if POSENC_DEVICE_PASS
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

POSENC_HD std::uint32_t float_bits(float f) {
  std::uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}

POSENC_HD float bits_float(std::uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// ---- rounding to the activation dtype (round to nearest even, as PyTorch casts) ----------------

/// bf16 bits of f (RNE; NaN -> quiet NaN).
POSENC_HD std::uint16_t to_bf16_bits(float f) {
  std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

POSENC_HD float from_bf16_bits(std::uint16_t h) {
  return bits_float(static_cast<std::uint32_t>(h) << 16);
}

/// IEEE binary16 bits of f (RNE, subnormals, overflow to inf, NaN kept quiet).
///
/// Written branch-free (every case computed, the right one selected) so that loops converting
/// arrays vectorize; the results equal those of the plain case-by-case conversion for all 2^32
/// inputs (checked exhaustively by test_large).
POSENC_HD std::uint16_t to_f16_bits(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t abs = u & 0x7fffffffu;
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even; a
  // carry moves the exponent. (Wraps for small abs, whose result is not selected.)
  const std::uint32_t v = abs - 0x38000000u;  // (127-15) << 23
  const std::uint32_t normal = (v + 0xfffu + ((v >> 13) & 1u)) >> 13;
  // Subnormal (or zero): the value rounded to a multiple of 2^-24. Adding 0.5 makes float's ulp
  // exactly 2^-24, so the IEEE add rounds to that grid (ties to even); subtracting 0.5 is exact,
  // and the multiple, at most 1024 (1024 = the smallest normal, a correct carry), converts exactly.
  const float grid = sub_rn(add_rn(bits_float(abs), 0.5f), 0.5f);
  const auto subnormal = static_cast<std::uint32_t>(static_cast<std::int32_t>(mul_rn(grid, 16777216.0f)));
  std::uint32_t r = abs < 0x38800000u ? subnormal : normal;
  r = abs >= 0x477ff000u ? 0x7c00u : r;                         // rounds to >= 65520: inf
  r = abs > 0x7f800000u ? (0x7e00u | ((abs >> 13) & 0x3ffu)) : r;  // NaN: quiet, top payload bits
  return static_cast<std::uint16_t>(sign | r);
}

/// IEEE binary16 bits -> float (exact). Branch-free like to_f16_bits (all 2^16 inputs checked by
/// test_cpu_reference).
POSENC_HD float from_f16_bits(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  const std::uint32_t normal = ((exp + 112u) << 23) | (mant << 13);
  const std::uint32_t inf_nan = 0x7f800000u | (mant << 13);
  // Subnormal: mant * 2^-24, exact in float (and +-0 for mant = 0).
  const std::uint32_t subnormal =
      float_bits(mul_rn(static_cast<float>(static_cast<std::int32_t>(mant)), 5.9604644775390625e-8f));
  std::uint32_t r = exp == 0 ? subnormal : normal;
  r = exp == 0x1fu ? inf_nan : r;
  return bits_float(sign | r);
}

/// from_bf16_bits(to_bf16_bits(f)), computed in 32-bit lanes without leaving float's layout: the
/// same bits for every one of the 2^32 inputs (checked exhaustively by test_large), but
/// branch-free, so the CPU engine's rotation loops vectorize without packing to 16 bits between
/// the operations.
POSENC_HD float bf16_round(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  const std::uint32_t quiet_nan = (u | 0x400000u) & 0xffff0000u;
  return bits_float((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

/// from_f16_bits(to_f16_bits(f)) in 32-bit lanes, branch-free; same bits for all 2^32 inputs
/// (checked exhaustively by test_large). Normal range: round the 13 dropped mantissa bits to
/// nearest even (a carry moves the exponent). Subnormal range: adding 0.5 makes float's ulp
/// exactly 2^-24, the f16 subnormal spacing, so the IEEE add rounds to that grid (ties to even) and
/// subtracting 0.5 back is exact.
POSENC_HD float f16_round(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint32_t sign = u & 0x80000000u;
  const std::uint32_t abs = u & 0x7fffffffu;
  const std::uint32_t normal = (abs + 0xfffu + ((abs >> 13) & 1u)) & 0xffffe000u;
  const std::uint32_t subnormal = float_bits(sub_rn(add_rn(bits_float(abs), 0.5f), 0.5f));
  std::uint32_t r = abs < 0x38800000u ? subnormal : normal;
  r = abs >= 0x477ff000u ? 0x7f800000u : r;                         // rounds to >= 65520: inf
  r = abs > 0x7f800000u ? (0x7fc00000u | (abs & 0x007fe000u)) : r;  // NaN: quiet, top payload bits
  return bits_float(sign | r);
}

/// float -> OCP E4M3FN bits (the fp8 KV cache, kv_cache.hpp): round to nearest even, saturating
/// to +-448 (inf included); NaN -> 0x7f | sign. PyTorch's c10 fp8e4m3fn_from_fp32_value after the
/// clamp that makes it saturate.
POSENC_HD std::uint8_t to_e4m3_bits(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint32_t sign = u & 0x80000000u;
  std::uint32_t abs = u ^ sign;
  const auto sign8 = static_cast<std::uint8_t>(sign >> 24);
  if (abs > 0x7f800000u) return static_cast<std::uint8_t>(0x7fu | sign8);  // NaN
  if (abs >= 0x43e00000u) return static_cast<std::uint8_t>(0x7eu | sign8);  // >= 448: saturate
  std::uint8_t r;
  if (abs < (121u << 23)) {
    // Below 2^-6 (the smallest normal): adding 2^14 makes float's ulp 2^-9, the e4m3 subnormal
    // spacing, so the IEEE add rounds to that grid with ties to even; the difference of the bits
    // is the count of 2^-9 steps (8 = a carry into the smallest normal, encoded correctly).
    constexpr std::uint32_t denorm_mask = 141u << 23;
    r = static_cast<std::uint8_t>(float_bits(add_rn(bits_float(abs), bits_float(denorm_mask))) - denorm_mask);
  } else {
    // Normal: rebias the exponent (127 -> 7) and round the 20 dropped mantissa bits to nearest
    // even; a carry moves the exponent (448 is the largest result below the clamp).
    const std::uint32_t mant_odd = (abs >> 20) & 1u;
    abs += (static_cast<std::uint32_t>(7 - 127) << 23) + 0x7ffffu + mant_odd;
    r = static_cast<std::uint8_t>(abs >> 20);
  }
  return static_cast<std::uint8_t>(r | sign8);
}

/// OCP E4M3FN bits -> float (exact; 0x7f/0xff -> NaN).
POSENC_HD float from_e4m3_bits(std::uint8_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x80u) << 24;
  const std::uint32_t exp = (bits >> 3) & 0xfu;
  const std::uint32_t mant = bits & 0x7u;
  if (exp == 0xfu && mant == 0x7u) return bits_float(sign | 0x7fc00000u);
  if (exp == 0) {
    const float v = mul_rn(static_cast<float>(mant), 0.001953125f);  // mant * 2^-9, exact
    return sign != 0 ? -v : v;
  }
  return bits_float(sign | ((exp + 120u) << 23) | (mant << 20));
}

}  // namespace posenc::detail

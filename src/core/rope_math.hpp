// The per-element arithmetic of RoPE, shared verbatim by the CPU engine and the GPU kernels.
//
// Everything here is written once and compiled both by the host compiler and by nvcc/hipcc, so
// the CPU and GPU paths round identically: that is what makes hf_compatible bit-exact between
// the engines. Host translation units must be built with -ffp-contract=off; device code uses the
// explicit _rn intrinsics below, which the compiler never fuses.
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

POSENC_HD std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

POSENC_HD float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
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
POSENC_HD std::uint16_t to_f16_bits(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {
    // Result is subnormal in f16 (or zero): value = m * 2^-24 with m = round(abs_value * 2^24).
    if (abs < 0x33000000u) return static_cast<std::uint16_t>(sign);  // < 2^-25: rounds to 0
    const std::uint32_t exp = abs >> 23;                             // biased f32 exponent
    const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;        // 24-bit significand
    const std::uint32_t shift = 126u - exp;                          // 14..24 + ...
    // value = mant * 2^(exp-150); in units of 2^-24: mant * 2^(exp-126) = mant >> (126-exp)
    const std::uint32_t q = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    const std::uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return static_cast<std::uint16_t>(sign | r);
  }
  // Normal: rebias exponent (127 -> 15) and round the 13 dropped bits to nearest even.
  std::uint32_t v = abs - 0x38000000u;  // (127-15) << 23
  v += 0xfffu + ((v >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | (v >> 13));
}

POSENC_HD float from_f16_bits(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);
  // Subnormal: mant * 2^-24, exact in float.
  const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
  return sign ? -v : v;
}

/// The activation dtypes as compile-time tags (kernels and the CPU engine are templated on them).
enum class Act : int { f32 = 0, f16 = 1, bf16 = 2 };

template <Act A>
POSENC_HD float round_act(float f) {
  if constexpr (A == Act::f32) {
    return f;
  } else if constexpr (A == Act::bf16) {
    return from_bf16_bits(to_bf16_bits(f));
  } else {
    return from_f16_bits(to_f16_bits(f));
  }
}

// ---- angles ------------------------------------------------------------------------------------

struct CosSin {
  float c;
  float s;
};

/// hf_compatible / hf_fp32_apply: HF's float32 pipeline. The position is converted to float32
/// (exact below 2^24, rounded above, as torch does), the angle is the float32 product, cos/sin are
/// the correctly rounded float32 values of that angle (evaluated in double and rounded once, so
/// host and device agree), then multiplied by the float32 attention factor and rounded to the
/// activation dtype.
template <Act A>
POSENC_HD CosSin cos_sin_hf(float inv_freq, std::int64_t pos, float attention_factor) {
  const float p = static_cast<float>(pos);
  const double angle = static_cast<double>(mul_rn(inv_freq, p));
  const float c = static_cast<float>(cos(angle));
  const float s = static_cast<float>(sin(angle));
  return {round_act<A>(mul_rn(c, attention_factor)), round_act<A>(mul_rn(s, attention_factor))};
}

/// accurate: the angle inv_freq * pos is formed in double (exact for |pos| < 2^29), reduced and
/// evaluated in double, and the factor applied before the single rounding to float32.
POSENC_HD CosSin cos_sin_accurate(float inv_freq, std::int64_t pos, double attention_factor) {
  const double angle = static_cast<double>(inv_freq) * static_cast<double>(pos);
  return {static_cast<float>(cos(angle) * attention_factor),
          static_cast<float>(sin(angle) * attention_factor)};
}

// ---- the rotation of one pair ------------------------------------------------------------------

struct Pair {
  float a;
  float b;
};

/// hf_compatible: a' = R(R(a*c) - R(b*s)), b' = R(R(b*c) + R(a*s)), R = round to the activation
/// dtype (HF eager `q*cos + rotate_half(q)*sin`, each op rounded).
template <Act A>
POSENC_HD Pair rotate_hf(float a, float b, CosSin cs) {
  const float ac = round_act<A>(mul_rn(a, cs.c));
  const float bs = round_act<A>(mul_rn(b, cs.s));
  const float bc = round_act<A>(mul_rn(b, cs.c));
  const float as = round_act<A>(mul_rn(a, cs.s));
  return {round_act<A>(sub_rn(ac, bs)), round_act<A>(add_rn(bc, as))};
}

/// hf_fp32_apply: products and sum in float32, one rounding to the activation dtype (HF Cohere).
template <Act A>
POSENC_HD Pair rotate_fp32(float a, float b, CosSin cs) {
  return {round_act<A>(sub_rn(mul_rn(a, cs.c), mul_rn(b, cs.s))),
          round_act<A>(add_rn(mul_rn(b, cs.c), mul_rn(a, cs.s)))};
}

/// accurate: one fused multiply-add per output, rounded once to the activation dtype.
template <Act A>
POSENC_HD Pair rotate_accurate(float a, float b, CosSin cs) {
  return {round_act<A>(fma_rn(a, cs.c, -mul_rn(b, cs.s))),
          round_act<A>(fma_rn(b, cs.c, mul_rn(a, cs.s)))};
}

}  // namespace posenc::detail

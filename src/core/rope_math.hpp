// The per-element arithmetic of RoPE (angles, cos/sin, the rotation of one pair under each numerics policy), shared verbatim by the reference, the CPU engine and the GPU kernels.
//
// Everything here is written once and compiled both by the host compiler and by nvcc/hipcc, so
// the CPU and GPU paths round identically: that is what makes hf_compatible bit-exact between
// the engines. The formulas are those of docs/NUMERICS.md; element.hpp holds the rounding to
// each activation dtype.
#pragma once

#include <cstdint>

#include "core/element.hpp"
#include "posenc/rope.hpp"

namespace posenc::detail {

// ---- angles ------------------------------------------------------------------------------------

struct CosSin {
  float c;
  float s;
};

/// hf numerics: HF's float32 angle `inv_freq @ position_ids.float()`. The position is converted to
/// float32 (exact below 2^24, rounded above, as torch does) and the angle is the float32 product
/// (the matrix product has one term, so torch rounds the product once).
POSENC_HD float hf_angle(float inv_freq, std::int64_t pos) { return mul_rn(inv_freq, static_cast<float>(pos)); }

/// hf numerics: HF's `emb.cos() * attention_scaling` then `.to(x.dtype)`, from the float32 cos
/// and sin of the angle (whichever library the arithmetic takes them from).
template <DType A>
POSENC_HD CosSin cos_sin_hf_scaled(float c, float s, float attention_factor) {
  const Pair r = round_act2<A>(mul_rn(c, attention_factor), mul_rn(s, attention_factor));
  return {r.a, r.b};
}

/// hf numerics with the exact arithmetic: cos/sin of the float32 angle are its correctly rounded
/// float32 values (evaluated in double and rounded once, so host and device agree), then
/// multiplied by the float32 attention factor and rounded to the activation dtype. (torch_cpu
/// takes cos/sin from MKL instead: core/hf_arithmetic.hpp.)
template <DType A>
POSENC_HD CosSin cos_sin_hf(float inv_freq, std::int64_t pos, float attention_factor) {
  const double angle = static_cast<double>(hf_angle(inv_freq, pos));
  double sd;
  double cd;
  sincos(angle, &sd, &cd);  // one argument reduction for both; same values as sin() and cos()
  return cos_sin_hf_scaled<A>(static_cast<float>(cd), static_cast<float>(sd), attention_factor);
}

/// accurate: the angle inv_freq * pos is formed in double (exact for |pos| < 2^29), reduced and
/// evaluated in double, and the factor applied before the single rounding to float32.
POSENC_HD CosSin cos_sin_accurate(float inv_freq, std::int64_t pos, double attention_factor) {
  const double angle = static_cast<double>(inv_freq) * static_cast<double>(pos);
  double sd;
  double cd;
  sincos(angle, &sd, &cd);
  return {static_cast<float>(cd * attention_factor), static_cast<float>(sd * attention_factor)};
}

// ---- a caller's cos/sin cache (tensor.hpp CosSinCacheView) -------------------------------------

/// Element `index` of a cos/sin cache of `dtype`, as float (exact). Typed loads: validation
/// checked the alignment.
POSENC_HD float cos_sin_cache_entry(const void* data, DType dtype, std::int64_t index) {
  switch (dtype) {
    case DType::f32: return static_cast<const float*>(data)[index];
    case DType::f16: return Element<DType::f16>::widen(static_cast<const std::uint16_t*>(data)[index]);
    case DType::bf16: return Element<DType::bf16>::widen(static_cast<const std::uint16_t*>(data)[index]);
  }
  return 0.0f;  // validation rejects a dtype outside the enum
}

/// The cos/sin a cache's entries (c, s) give a rotation under numerics N in activation dtype A:
/// the hf modes round them to A, as `cos.to(x.dtype)` does; accurate uses them as float32.
template <DType A, Numerics N>
POSENC_HD CosSin cos_sin_from_cache(float c, float s) {
  if constexpr (N == Numerics::accurate) {
    return {c, s};
  } else {
    const Pair r = round_act2<A>(c, s);
    return {r.a, r.b};
  }
}

// ---- the rotation of one pair ------------------------------------------------------------------

/// hf_compatible: a' = R(R(a*c) - R(b*s)), b' = R(R(b*c) + R(a*s)), R = round to the activation
/// dtype (HF eager `q*cos + rotate_half(q)*sin`, each op rounded).
template <DType A>
POSENC_HD Pair rotate_hf(float a, float b, CosSin cs) {
  const Pair ac_bs = round_act2<A>(mul_rn(a, cs.c), mul_rn(b, cs.s));
  const Pair bc_as = round_act2<A>(mul_rn(b, cs.c), mul_rn(a, cs.s));
  return round_act2<A>(sub_rn(ac_bs.a, ac_bs.b), add_rn(bc_as.a, bc_as.b));
}

/// hf_fp32_apply: products and sum in float32, one rounding to the activation dtype (HF Cohere).
template <DType A>
POSENC_HD Pair rotate_fp32(float a, float b, CosSin cs) {
  return round_act2<A>(sub_rn(mul_rn(a, cs.c), mul_rn(b, cs.s)),
                      add_rn(mul_rn(b, cs.c), mul_rn(a, cs.s)));
}

/// accurate: one fused multiply-add per output, rounded once to the activation dtype.
template <DType A>
POSENC_HD Pair rotate_accurate(float a, float b, CosSin cs) {
  return round_act2<A>(fma_rn(a, cs.c, -mul_rn(b, cs.s)), fma_rn(b, cs.c, mul_rn(a, cs.s)));
}

// ---- the numerics policy as a template argument -----------------------------------------------

/// cos/sin of one pair under numerics N: the hf modes take the attention factor as a float32
/// operand (HF multiplies by a Python float in a float32 op), accurate applies it in double.
template <DType A, Numerics N>
POSENC_HD CosSin cos_sin(float inv_freq, std::int64_t pos, double attention_factor, float attention_factor_f32) {
  if constexpr (N == Numerics::accurate) {
    return cos_sin_accurate(inv_freq, pos, attention_factor);
  } else {
    return cos_sin_hf<A>(inv_freq, pos, attention_factor_f32);
  }
}

/// The rotation of one pair under numerics N.
template <DType A, Numerics N>
POSENC_HD Pair rotate(float a, float b, CosSin cs) {
  if constexpr (N == Numerics::hf_compatible) {
    return rotate_hf<A>(a, b, cs);
  } else if constexpr (N == Numerics::hf_fp32_apply) {
    return rotate_fp32<A>(a, b, cs);
  } else {
    static_assert(N == Numerics::accurate);
    return rotate_accurate<A>(a, b, cs);
  }
}

/// One output of the rotation under numerics N, for a thread that holds one element of a pair and
/// receives its partner: out = x' of rotate(x, y, {c, s}) when x is the first element (a), and
/// called with s negated it is b' of rotate(y, x, {c, s}) when x is the second (b). Because
/// negation is exact and every rounding is symmetric, R(R(b*c) - R(a*(-s))) is R(R(b*c) + R(a*s))
/// bit for bit (hf), fl(b*c - a*(-s)) is fl(b*c + a*s) (fp32) and fma(b, c, -(a*(-s))) is
/// fma(b, c, a*s) (accurate); NaNs aside, whose sign IEEE leaves open. Half the products of
/// rotate() where only one of its outputs is wanted.
template <DType A, Numerics N>
POSENC_HD float rotate_first(float x, float y, float c, float s) {
  if constexpr (N == Numerics::hf_compatible) {
    const Pair xc_ys = round_act2<A>(mul_rn(x, c), mul_rn(y, s));
    return round_act<A>(sub_rn(xc_ys.a, xc_ys.b));
  } else if constexpr (N == Numerics::hf_fp32_apply) {
    return round_act<A>(sub_rn(mul_rn(x, c), mul_rn(y, s)));
  } else {
    static_assert(N == Numerics::accurate);
    return round_act<A>(fma_rn(x, c, -mul_rn(y, s)));
  }
}

}  // namespace posenc::detail

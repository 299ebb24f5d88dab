// Test support: an independent float64 RoPE reference (long double angles and cos/sin), written apart from rope_math.hpp; the pair layout is pair_places'.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "posenc/dtype.hpp"
#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"

namespace posenc::test {

/// How the reference forms the angle of pair i at position p.
enum class AngleModel {
  /// inv_freq[i] * p exactly (long double holds the 24 x 31-bit product exactly): what the
  /// `accurate` numerics approximate.
  exact,
  /// fl32(inv_freq[i] * fl32(p)): the float32 angle Hugging Face forms, which the hf numerics
  /// reproduce on purpose. Everything after the angle is still float64.
  float32_product,
};

/// The angle model matching a numerics policy.
inline AngleModel angle_model_for(Numerics n) {
  return n == Numerics::accurate ? AngleModel::exact : AngleModel::float32_product;
}

/// Expected outputs of a whole tensor: values[(t * heads + h) * head_dim + d].
struct Expected64 {
  std::int64_t tokens = 0;
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;
  std::vector<double> values;

  double at(std::int64_t t, std::int64_t h, std::int64_t d) const {
    return values[static_cast<std::size_t>((t * heads + h) * head_dim + d)];
  }
};

/// The error bound of a correct engine against rotate64 (same inv_freq, same angle model), in ulps
/// of the output dtype at the head's largest |expected| value, as near64 measures it.
///
/// Derivation. Let u be the dtype's unit roundoff, M the head's largest |expected|; then u*M <
/// ulp(M). A pair (a, b) rotated by (c, s) = af*(cos, sin) has |a||c| + |b||s| <= |(a, b)| * af =
/// |output pair| <= sqrt(2) * M. So a relative error of u on both c and s moves an output by at most
/// sqrt(2) ulp(M); rounding both products does the same; the final rounding adds 0.5 ulp(M).
/// Float32 roundings inside a bf16/f16 pipeline count 2^-16 (bf16) or 2^-13 (f16) of that.
///   accurate:       cos/sin rounded once to f32, one product rounded inside the FMA, final
///                   rounding: f32 2*sqrt(2) + 0.5 = 3.33; bf16/f16 0.5 + 2*sqrt(2) * 2^-16 / 2^-13.
///   hf_fp32_apply:  cos/sin rounded to f32, times fl32(af) (one more rounding when af != 1, two when
///                   af is not a float), rounded to the dtype; products and sum in f32: bf16/f16
///                   sqrt(2) + 0.5 + small = 1.92; f32 3.33 (af = 1) up to 6.16.
///   hf_compatible:  as hf_fp32_apply, but the two products are rounded to the dtype: bf16/f16
///                   2*sqrt(2) + 0.5 + small = 3.33; f32 the same as hf_fp32_apply.
/// A margin of 1e-3 ulp covers f16 products that underflow to subnormals (absolute error 2^-25).
inline double tolerance_ulps(DType dtype, Numerics numerics, double attention_factor) {
  const double root2 = std::sqrt(2.0);
  const double f32_weight = dtype == DType::f32 ? 1.0 : dtype == DType::bf16 ? 0x1p-16 : 0x1p-13;
  if (numerics == Numerics::accurate) return 0.5 + 2 * root2 * f32_weight + 1e-3;
  const auto af32 = static_cast<float>(attention_factor);
  const double factor_roundings = attention_factor == 1.0                         ? 0.0
                                  : static_cast<double>(af32) == attention_factor ? 1.0
                                                                                  : 2.0;
  double cos_sin = root2 * (1.0 + factor_roundings) * f32_weight;
  if (dtype != DType::f32) cos_sin += root2;  // cos/sin rounded to the activation dtype
  const bool products_in_dtype = numerics == Numerics::hf_compatible && dtype != DType::f32;
  const double products = root2 * (products_in_dtype ? 1.0 : f32_weight);
  return cos_sin + products + 0.5 + 1e-3;
}

/// Rotates every head of `src` (a host view) as `spec` lays it out (head_dim, rotary window,
/// pairing: pair_places), pair i by the position of stream axes.stream[i] (`positions`, host,
/// any number of streams) times axes.inv_freq[i]. cos and sin are evaluated in long double and
/// scaled by `attention_factor` before the rotation, which is also evaluated in long double.
/// Elements outside the window are copied.
Expected64 rotate64(const RopeSpec& spec, const PairAxes& axes, double attention_factor, AngleModel model,
                    const ConstTensorView& src, const PositionsView& positions);

/// Fills the cos and sin (rotary/2 entries each) that token t's pairs are rotated by.
using TokenCosSin64 = std::function<void(std::int64_t t, long double* cos_values, long double* sin_values)>;

/// The float64 rotation of every head of `src` by the cos/sin `token_cos_sin` gives (rotate64 is
/// this with the angles of `axes`), in long double, pairs laid out by pair_places.
Expected64 rotate64_by(const RopeSpec& spec, const ConstTensorView& src, const TokenCosSin64& token_cos_sin);

}  // namespace posenc::test

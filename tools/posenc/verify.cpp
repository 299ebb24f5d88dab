// Float64 RoPE written from the math in rope.hpp, independent of the engines, and the error accounting.
#include "verify.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>


namespace posenc::cli {
namespace {

/// Spacing of `dtype` values at magnitude `m` (the ulp of a value in [2^e, 2^(e+1))).
double ulp_of(DType dtype, double m) {
  const int precision = significand_bits(dtype);
  const int min_exponent = min_normal_exponent(dtype);
  int e = min_exponent;
  if (m > 0.0) {
    int frexp_exp = 0;
    std::frexp(m, &frexp_exp);  // m = f * 2^frexp_exp, f in [0.5, 1)
    e = std::max(frexp_exp - 1, min_exponent);
  }
  return std::ldexp(1.0, e - (precision - 1));
}

/// Position of token t in stream s (streams are stored stream-major, [streams, tokens]).
std::int64_t position_at(const HostBatch& batch, std::int64_t s, std::int64_t t) {
  const std::int64_t i = s * batch.tokens + t;
  if (batch.position_type == IndexType::i32) {
    std::int32_t p;
    std::memcpy(&p, batch.positions.data() + i * 4, 4);
    return p;
  }
  std::int64_t p;
  std::memcpy(&p, batch.positions.data() + i * 8, 8);
  return p;
}

struct TensorRef {
  const char* name;
  std::int64_t heads;
  const std::vector<std::byte>* in;
  const std::vector<std::byte>* out;
};

}  // namespace

std::string error_bound_text(const RopeSpec& spec) {
  std::string text = "4 ulp of the dtype + 8 float32 ulp at the pair's magnitude";
  if (spec.numerics != Numerics::accurate) text += " + float32 angle rounding (hf numerics)";
  if (spec.qk_norm.enabled()) return text + " + 4 ulp for the QK norm's roundings; normalised pass-through dims 2 ulp";
  return text + "; pass-through dims exact";
}

VerifyStats verify_sample(const RopeSpec& spec, const FrequencyTable& table, const HostBatch& input,
                          const HostBatch& output, std::span<const std::int64_t> tokens) {
  const std::int64_t d = input.head_dim;
  const std::int64_t rotary = spec.rotary();
  const std::int64_t half = rotary / 2;
  const std::int64_t offset = spec.rotary_offset;
  const PairAxes axes = pair_axes(spec, table);  // per pair: frequency and position stream
  const double factor = spec.attention_factor.value_or(table.attention_factor);
  const bool hf_angle = spec.numerics != Numerics::accurate;
  const DType dtype = input.dtype;

  VerifyStats stats;
  std::vector<double> x(static_cast<std::size_t>(d));
  std::vector<double> ref(static_cast<std::size_t>(d));
  std::vector<double> bound(static_cast<std::size_t>(d));
  std::vector<double> scale(static_cast<std::size_t>(d));

  const TensorRef tensors[] = {{"Q", input.q_heads, &input.q, &output.q},
                               {"K", input.k_heads, &input.k, &output.k}};
  for (const std::int64_t t : tokens) {
    const std::int64_t pos = position_at(input, 0, t);  // named in messages
    for (const TensorRef& tensor : tensors) {
      for (std::int64_t h = 0; h < tensor.heads; ++h) {
        const std::int64_t base = (t * tensor.heads + h) * d;
        for (std::int64_t i = 0; i < d; ++i) x[i] = load_element(dtype, tensor.in->data(), base + i);
        if (spec.qk_norm.enabled()) {
          // The QK norm in float64 (rope.hpp QkNorm): x_j / rms(x) times w_j or (1 + w_j).
          const std::vector<std::byte>& weight = &tensor == &tensors[0] ? output.q_norm_weight : output.k_norm_weight;
          const std::int64_t first = spec.qk_norm_first();
          const std::int64_t width = spec.qk_norm_width();
          double sum = 0.0;
          for (std::int64_t j = 0; j < width; ++j) sum += x[first + j] * x[first + j];
          const double r = 1.0 / std::sqrt(sum / static_cast<double>(width) + spec.qk_norm.epsilon);
          for (std::int64_t j = 0; j < width; ++j) {
            const double w = load_element(dtype, weight.data(), j);
            x[first + j] *= r * (spec.qk_norm.kind == QkNormKind::rms ? w : 1.0 + w);
          }
        }
        for (std::int64_t i = 0; i < d; ++i) {
          ref[i] = x[i];  // pass-through unless the window below overwrites it
          scale[i] = std::fabs(x[i]);
          // A normalised element went through up to two roundings to the dtype.
          bound[i] = spec.qk_norm.enabled() && (!spec.qk_norm.rotary_only || (i >= offset && i < offset + rotary))
                         ? 2.0 * ulp_of(dtype, scale[i])
                         : 0.0;
        }
        for (std::int64_t i = 0; i < half; ++i) {
          // Which elements form pair i, and where its rotated values go (rope.hpp).
          const PairPlaces at = pair_places(spec.pairing, half, i);
          const std::int64_t ia = offset + at.read_a;
          const std::int64_t ib = offset + at.read_b;
          const std::int64_t oa = offset + at.write_a;
          const std::int64_t ob = offset + at.write_b;
          const double a = x[ia];
          const double b = x[ib];
          const std::int64_t pair_pos = position_at(input, axes.stream[i], t);
          const double angle = static_cast<double>(pair_pos) * static_cast<double>(axes.inv_freq[i]);
          const double c = std::cos(angle) * factor;
          const double s = std::sin(angle) * factor;
          ref[oa] = a * c - b * s;
          ref[ob] = b * c + a * s;
          const double r = std::fabs(factor) * std::hypot(a, b);
          const double allowed = (spec.qk_norm.enabled() ? 8.0 : 4.0) * ulp_of(dtype, r) + 8.0 * std::ldexp(r, -24) +
                                 (hf_angle ? std::ldexp(r * std::fabs(angle), -23) : 0.0);
          bound[oa] = bound[ob] = allowed;
          scale[oa] = scale[ob] = r;
        }
        for (std::int64_t i = 0; i < d; ++i) {
          const double got = load_element(dtype, tensor.out->data(), base + i);
          const double err = std::fabs(got - ref[i]);
          ++stats.values;
          stats.max_abs_error = std::max(stats.max_abs_error, err);
          stats.max_ulps = std::max(stats.max_ulps, err / ulp_of(dtype, scale[i]));
          const bool bad = !(err <= bound[i]);  // NaN counts as a failure
          const double ratio = bad && bound[i] == 0.0 ? INFINITY : err / (bound[i] > 0 ? bound[i] : 1);
          if (bad) ++stats.failures;
          if (ratio > stats.max_bound_ratio || (bad && stats.worst.empty())) {
            stats.max_bound_ratio = std::max(stats.max_bound_ratio, ratio);
            char where[256];
            std::snprintf(where, sizeof where, "%s token %lld (position %lld) head %lld dim %lld: got %.9g, want %.9g",
                          tensor.name, static_cast<long long>(t), static_cast<long long>(pos),
                          static_cast<long long>(h), static_cast<long long>(i), got, ref[i]);
            stats.worst = where;
          }
        }
      }
    }
  }
  return stats;
}

}  // namespace posenc::cli

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

/// The position stream of pair i (rope.hpp: 2-D halves, M-RoPE contiguous or interleaved sections).
std::int64_t stream_of_pair(const RopeSpec& spec, std::int64_t i) {
  const std::int64_t half = spec.rotary() / 2;
  if (spec.pairing == Pairing::half_split_2d) return i < half / 2 ? 0 : 1;
  const std::vector<std::int64_t>& m = spec.mrope_section;
  if (m.empty()) return 0;
  if (spec.mrope_interleaved) {
    if (m.size() > 1 && i % 3 == 1 && i < 3 * m[1]) return 1;
    if (m.size() > 2 && i % 3 == 2 && i < 3 * m[2]) return 2;
    return 0;
  }
  std::int64_t end = 0;
  for (std::size_t s = 0; s < m.size(); ++s) {
    end += m[s];
    if (i < end) return static_cast<std::int64_t>(s);
  }
  return 0;
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
  return text + "; pass-through dims exact";
}

VerifyStats verify_sample(const RopeSpec& spec, const FrequencyTable& table, const HostBatch& input,
                          const HostBatch& output, std::span<const std::int64_t> tokens) {
  const std::int64_t d = input.head_dim;
  const std::int64_t rotary = spec.rotary();
  const std::int64_t half = rotary / 2;
  const std::int64_t offset = spec.rotary_offset;
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
        for (std::int64_t i = 0; i < d; ++i) {
          x[i] = load_element(dtype, tensor.in->data(), base + i);
          ref[i] = x[i];  // pass-through unless the window below overwrites it
          bound[i] = 0.0;
          scale[i] = std::fabs(x[i]);
        }
        for (std::int64_t i = 0; i < half; ++i) {
          // Which elements form pair i, and where its rotated values go (rope.hpp diagrams).
          std::int64_t ia = offset + i;
          std::int64_t ib = offset + i + half;
          std::int64_t freq = i;  // index into the table
          if (spec.pairing == Pairing::half_split_2d) {
            // Two half-split RoPEs of R/2 dims sharing the R/4 frequencies.
            const std::int64_t quarter = half / 2;
            freq = i % quarter;
            ia = offset + (i < quarter ? 0 : half) + freq;
            ib = ia + quarter;
          } else if (spec.pairing != Pairing::half_split) {
            ia = offset + 2 * i;
            ib = offset + 2 * i + 1;
          }
          const std::int64_t oa = spec.pairing == Pairing::interleaved_to_half ? offset + i : ia;
          const std::int64_t ob = spec.pairing == Pairing::interleaved_to_half ? offset + i + half : ib;
          const double a = x[ia];
          const double b = x[ib];
          const std::int64_t pair_pos = position_at(input, stream_of_pair(spec, i), t);
          const double angle = static_cast<double>(pair_pos) * static_cast<double>(table.inv_freq[freq]);
          const double c = std::cos(angle) * factor;
          const double s = std::sin(angle) * factor;
          ref[oa] = a * c - b * s;
          ref[ob] = b * c + a * s;
          const double r = std::fabs(factor) * std::hypot(a, b);
          const double allowed = 4.0 * ulp_of(dtype, r) + 8.0 * std::ldexp(r, -24) +
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

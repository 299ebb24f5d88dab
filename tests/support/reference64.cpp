// Test support: the float64 reference (see reference64.hpp). Deliberately shares no arithmetic with rope_math.hpp.
#include "support/reference64.hpp"

#include <cmath>

#include "support/host_tensor.hpp"

namespace posenc::test {
namespace {

std::int64_t position_of(const PositionsView& p, std::int64_t stream, std::int64_t t) {
  const std::int64_t i = stream * p.stream_stride + t;
  return p.type == IndexType::i32 ? static_cast<const std::int32_t*>(p.data)[i]
                                  : static_cast<const std::int64_t*>(p.data)[i];
}

/// The angle of a pair with inverse frequency f at position p under `model`.
long double angle_of(float f, std::int64_t p, AngleModel model) {
  if (model == AngleModel::exact) return static_cast<long double>(f) * static_cast<long double>(p);
  // The double product of two floats is exact; converting it to float rounds once, which is the
  // correctly rounded float32 product.
  const auto p32 = static_cast<float>(p);
  return static_cast<float>(static_cast<double>(f) * static_cast<double>(p32));
}

}  // namespace

Expected64 rotate64_by(const RopeSpec& spec, const ConstTensorView& src, const TokenCosSin64& token_cos_sin) {
  Expected64 e;
  e.tokens = src.tokens;
  e.heads = src.heads;
  e.head_dim = src.head_dim;
  e.values.resize(static_cast<std::size_t>(src.tokens * src.heads * src.head_dim));
  const std::int64_t half = spec.rotary() / 2;
  const std::int64_t w = spec.rotary_offset;
  std::vector<long double> c(static_cast<std::size_t>(half));
  std::vector<long double> s(static_cast<std::size_t>(half));
  for (std::int64_t t = 0; t < src.tokens; ++t) {
    token_cos_sin(t, c.data(), s.data());
    for (std::int64_t h = 0; h < src.heads; ++h) {
      double* out = &e.values[static_cast<std::size_t>((t * src.heads + h) * src.head_dim)];
      for (std::int64_t d = 0; d < src.head_dim; ++d) out[d] = load_value(src, t, h, d);
      for (std::int64_t i = 0; i < half; ++i) {
        const auto pair = static_cast<std::size_t>(i);
        const PairPlaces at = pair_places(spec.pairing, half, i);
        const long double a = load_value(src, t, h, w + at.read_a);
        const long double b = load_value(src, t, h, w + at.read_b);
        out[w + at.write_a] = static_cast<double>(a * c[pair] - b * s[pair]);
        out[w + at.write_b] = static_cast<double>(b * c[pair] + a * s[pair]);
      }
    }
  }
  return e;
}

Expected64 rotate64(const RopeSpec& spec, const PairAxes& axes, double attention_factor, AngleModel model,
                    const ConstTensorView& src, const PositionsView& positions) {
  const auto af = static_cast<long double>(attention_factor);
  const std::int64_t half = spec.rotary() / 2;
  return rotate64_by(spec, src, [&](std::int64_t t, long double* c, long double* s) {
    for (std::int64_t i = 0; i < half; ++i) {
      const auto pair = static_cast<std::size_t>(i);
      const long double angle = angle_of(axes.inv_freq[pair], position_of(positions, axes.stream[pair], t), model);
      c[i] = cosl(angle) * af;
      s[i] = sinl(angle) * af;
    }
  });
}

}  // namespace posenc::test

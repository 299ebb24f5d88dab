// Test support: the float64 reference (see reference64.hpp). Deliberately shares no code with rope_math.hpp.
#include "support/reference64.hpp"

#include <cmath>

#include "support/host_tensor.hpp"

namespace posenc::test {

void rotate_head64(const Geometry& g, const std::vector<float>& inv_freq, double attention_factor, AngleModel model,
                   std::int64_t position, const double* in, double* out) {
  for (std::int64_t d = 0; d < g.head_dim; ++d) out[d] = in[d];
  const std::int64_t half = g.rotary / 2;
  for (std::int64_t i = 0; i < half; ++i) {
    long double angle;
    if (model == AngleModel::exact) {
      angle = static_cast<long double>(inv_freq[static_cast<std::size_t>(i)]) * static_cast<long double>(position);
    } else {
      // The double product of two floats is exact; converting it to float rounds once, which is
      // the correctly rounded float32 product.
      const auto p32 = static_cast<float>(position);
      angle = static_cast<float>(static_cast<double>(inv_freq[static_cast<std::size_t>(i)]) * static_cast<double>(p32));
    }
    const long double c = cosl(angle) * static_cast<long double>(attention_factor);
    const long double s = sinl(angle) * static_cast<long double>(attention_factor);
    std::int64_t ia, ib, oa, ob;  // where pair i is read and written
    if (g.pairing == Pairing::half_split) {
      ia = i;
      ib = i + half;
    } else {
      ia = 2 * i;
      ib = 2 * i + 1;
    }
    if (g.pairing == Pairing::interleaved) {
      oa = 2 * i;
      ob = 2 * i + 1;
    } else {
      oa = i;
      ob = i + half;
    }
    const long double a = in[g.offset + ia];
    const long double b = in[g.offset + ib];
    out[g.offset + oa] = static_cast<double>(a * c - b * s);
    out[g.offset + ob] = static_cast<double>(b * c + a * s);
  }
}

Expected64 rotate64(const Geometry& g, const std::vector<float>& inv_freq, double attention_factor, AngleModel model,
                    const ConstTensorView& src, const PositionsView& positions) {
  Expected64 e;
  e.tokens = src.tokens;
  e.heads = src.heads;
  e.head_dim = src.head_dim;
  e.values.resize(static_cast<std::size_t>(src.tokens * src.heads * src.head_dim));
  std::vector<double> in(static_cast<std::size_t>(src.head_dim));
  for (std::int64_t t = 0; t < src.tokens; ++t) {
    const std::int64_t p = positions.type == IndexType::i32 ? static_cast<const std::int32_t*>(positions.data)[t]
                                                            : static_cast<const std::int64_t*>(positions.data)[t];
    for (std::int64_t h = 0; h < src.heads; ++h) {
      for (std::int64_t d = 0; d < src.head_dim; ++d) in[static_cast<std::size_t>(d)] = load_value(src, t, h, d);
      rotate_head64(g, inv_freq, attention_factor, model, p, in.data(),
                    &e.values[static_cast<std::size_t>((t * src.heads + h) * src.head_dim)]);
    }
  }
  return e;
}

}  // namespace posenc::test

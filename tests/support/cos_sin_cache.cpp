// Test support: host cos/sin caches and their float64 rotation (see cos_sin_cache.hpp).
#include "support/cos_sin_cache.hpp"

#include <cmath>
#include <cstring>
#include <numbers>
#include <string>
#include <vector>

#include "core/hf_arithmetic.hpp"
#include "core/rope_math.hpp"
#include "core/validate.hpp"

namespace posenc::test {

RopeSpec CosSinCase::spec() const {
  RopeSpec s;
  s.head_dim = head_dim;
  s.rotary_dim = rotary;
  s.rotary_offset = offset;
  s.pairing = pairing;
  s.numerics = numerics;
  return s;
}

std::string CosSinCase::name() const {
  return std::string(to_string(dtype)) + " cache " + to_string(cache_dtype) + " " + to_string(pairing) + " " +
         to_string(numerics) + " D=" + std::to_string(head_dim) + " R=" + std::to_string(rotary) + "@" +
         std::to_string(offset) + " heads " + std::to_string(q_heads) + "+" + std::to_string(kv_heads) +
         " T=" + std::to_string(tokens) + (fused ? " fused pad " + std::to_string(pad) : std::string(" separate")) +
         (out_of_place ? " out of place " : " in place ") + to_string(index_type) + " rows " + std::to_string(rows) +
         " row_pad " + std::to_string(row_pad) + " threads " + std::to_string(threads) + " seed " +
         std::to_string(seed);
}

HostCosSinCache::HostCosSinCache(DType dtype, std::int64_t rows, std::int64_t rotary_dim, std::int64_t row_stride) {
  if (row_stride < 0) row_stride = rotary_dim;
  buffer = HostBuffer(((rows - 1) * row_stride + rotary_dim) * size_of(dtype));
  view = CosSinCacheView{buffer.data(), dtype, rows, rotary_dim, row_stride};
}

double HostCosSinCache::at(std::int64_t p, std::int64_t j) const {
  const char* e = static_cast<const char*>(view.data) + (p * view.row_stride + j) * size_of(view.dtype);
  std::uint32_t bits = 0;
  if (view.dtype == DType::f32) {
    std::memcpy(&bits, e, 4);
  } else {
    std::uint16_t u;
    std::memcpy(&u, e, 2);
    bits = u;
  }
  return decode_bits(view.dtype, bits);
}

void HostCosSinCache::set(std::int64_t p, std::int64_t j, double value) {
  char* e = reinterpret_cast<char*>(buffer.data()) + (p * view.row_stride + j) * size_of(view.dtype);
  const std::uint32_t bits = encode_value(view.dtype, value);
  if (view.dtype == DType::f32) {
    std::memcpy(e, &bits, 4);
  } else {
    const auto u = static_cast<std::uint16_t>(bits);
    std::memcpy(e, &u, 2);
  }
}

HostCosSinCache random_cos_sin_cache(DType dtype, std::int64_t rows, std::int64_t rotary_dim, std::int64_t row_stride,
                                     std::uint64_t seed) {
  HostCosSinCache cache(dtype, rows, rotary_dim, row_stride);
  const std::int64_t half = rotary_dim / 2;
  for (std::int64_t p = 0; p < rows; ++p) {
    for (std::int64_t i = 0; i < half; ++i) {
      // random_value is roughly N(0, 1): taken modulo a turn it is an angle anywhere on the circle.
      const double angle = std::fmod(8.0 * random_value(DType::f32, seed, p, 0, i), 2 * std::numbers::pi);
      cache.set(p, i, std::cos(angle));
      cache.set(p, half + i, std::sin(angle));
    }
  }
  return cache;
}

HostCosSinCache spec_cos_sin_cache(const RopeSpec& spec, std::int64_t rows) {
  const FrequencyTable table = compute_frequencies(spec);
  const double factor = detail::effective_attention_factor(spec, table);
  const std::int64_t half = spec.rotary() / 2;
  // The CPU engine's arithmetic: hf numerics under torch_cpu take cos/sin from torch's CPU library.
  const bool torch_cpu = detail::effective_arithmetic(spec, HfArithmetic::torch_cpu) == HfArithmetic::torch_cpu;
  HostCosSinCache cache(DType::f32, rows, spec.rotary());
  std::vector<float> angle(static_cast<std::size_t>(half));
  std::vector<float> c(static_cast<std::size_t>(half));
  std::vector<float> s(static_cast<std::size_t>(half));
  for (std::int64_t p = 0; p < rows; ++p) {
    if (torch_cpu) {
      for (std::int64_t i = 0; i < half; ++i) angle[i] = detail::hf_angle(table.inv_freq[i], p);
      detail::torch_cpu_cos_sin(angle.data(), half, c.data(), s.data());
    }
    for (std::int64_t i = 0; i < half; ++i) {
      const float inv_freq = table.inv_freq[static_cast<std::size_t>(i)];
      const detail::CosSin cs = spec.numerics == Numerics::accurate
                                    ? detail::cos_sin_accurate(inv_freq, p, factor)
                                : torch_cpu ? detail::cos_sin_hf_scaled<DType::f32>(c[i], s[i], static_cast<float>(factor))
                                            : detail::cos_sin_hf<DType::f32>(inv_freq, p, static_cast<float>(factor));
      cache.set(p, i, cs.c);  // float32 values: stored exactly
      cache.set(p, half + i, cs.s);
    }
  }
  return cache;
}

Expected64 rotate64_cached(const RopeSpec& spec, const HostCosSinCache& cache, const ConstTensorView& src,
                           const PositionsView& positions) {
  const std::int64_t half = spec.rotary() / 2;
  return rotate64_by(spec, src, [&](std::int64_t t, long double* c, long double* s) {
    const std::int64_t p = positions.type == IndexType::i32 ? static_cast<const std::int32_t*>(positions.data)[t]
                                                            : static_cast<const std::int64_t*>(positions.data)[t];
    for (std::int64_t i = 0; i < half; ++i) {
      c[i] = cache.at(p, i);
      s[i] = cache.at(p, half + i);
    }
  });
}

}  // namespace posenc::test

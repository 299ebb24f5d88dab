// KV-cache test helpers (kv_image.hpp): poisoned host caches, the layouts, an independent e4m3 encoder, expected cache images.
#include "support/kv_image.hpp"

#include <cmath>
#include <cstring>

namespace posenc::test {

double e4m3_value(int code) {
  const int exp = (code >> 3) & 0xf;
  const int mant = code & 7;
  return exp == 0 ? std::ldexp(mant, -9) : std::ldexp(1.0 + mant / 8.0, exp - 7);
}

namespace {

/// e4m3_value of the finite magnitudes 0x00..0x7e, computed once (test sweeps call the
/// encoder millions of times).
const std::vector<double>& e4m3_magnitudes() {
  static const std::vector<double> table = [] {
    std::vector<double> t;
    for (int code = 0; code <= 0x7e; ++code) t.push_back(e4m3_value(code));
    return t;
  }();
  return table;
}

}  // namespace

std::uint8_t e4m3_expected(float x) {
  const std::uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isnan(x)) return static_cast<std::uint8_t>(0x7f | sign);
  const double a = std::fabs(static_cast<double>(x));
  if (a >= 448.0) return static_cast<std::uint8_t>(0x7e | sign);  // saturate (inf included)
  const std::vector<double>& values = e4m3_magnitudes();
  int best = 0;
  for (int code = 1; code <= 0x7e; ++code) {
    const double d = std::fabs(values[static_cast<std::size_t>(code)] - a);
    const double b = std::fabs(values[static_cast<std::size_t>(best)] - a);
    if (d < b || (d == b && code % 2 == 0)) best = code;  // a tie goes to the even mantissa
  }
  return static_cast<std::uint8_t>(best | sign);
}

HostCache::HostCache(CacheDType dtype, CacheLayout layout, std::int64_t kv_heads, std::int64_t head_dim,
                     std::int64_t blocks, std::int64_t block_len) {
  const std::int64_t bytes = blocks * block_len * kv_heads * head_dim * size_of(dtype);
  k = HostBuffer(bytes);
  v = HostBuffer(bytes);
  view = KvCacheView{k.data(), v.data(), dtype, layout, kv_heads, head_dim, blocks, block_len};
}

HostCache HostCache::mla(CacheDType dtype, std::int64_t latent_dim, std::int64_t head_dim, std::int64_t blocks,
                         std::int64_t block_len) {
  HostCache c;
  c.k = HostBuffer(blocks * block_len * (latent_dim + head_dim) * size_of(dtype));
  c.view = KvCacheView{c.k.data(), nullptr, dtype, CacheLayout::mla, 1, head_dim, blocks, block_len};
  c.view.latent_dim = latent_dim;
  return c;
}

std::int64_t mla_latent_index(const KvCacheView& c, std::int64_t slot, std::int64_t e) {
  return slot * (c.latent_dim + c.head_dim) + e;  // [blocks, block_len, latent + rope]: one row per slot
}

std::int64_t cache_index(const KvCacheView& c, std::int64_t slot, std::int64_t h, std::int64_t d) {
  const std::int64_t block = slot / c.block_len;
  const std::int64_t offset = slot % c.block_len;
  switch (c.layout) {
    case CacheLayout::contiguous:  // [batch, max_len, heads, dim], slot = b * max_len + t
    case CacheLayout::paged_nhd:   // [blocks, page, heads, dim]
      return ((block * c.block_len + offset) * c.kv_heads + h) * c.head_dim + d;
    case CacheLayout::paged_hnd:  // [blocks, heads, page, dim]
      return ((block * c.kv_heads + h) * c.block_len + offset) * c.head_dim + d;
    case CacheLayout::mla:  // k_pe after the latent; one head
      return h == 0 ? mla_latent_index(c, slot, c.latent_dim + d) : -1;
  }
  return -1;
}

std::uint32_t cast_bits(DType from, std::uint32_t bits, CacheDType to, float scale) {
  const double value = decode_bits(from, bits);
  switch (to) {
    case CacheDType::f32:
      return encode_value(DType::f32, value);
    case CacheDType::f16:
      return encode_value(DType::f16, value);
    case CacheDType::bf16:
      return encode_value(DType::bf16, value);
    case CacheDType::fp8_e4m3:
      return e4m3_expected(static_cast<float>(value) / scale);
  }
  return 0;
}

namespace {

/// Writes `bits` as element `index` of a cache image of dtype `t`.
void put(std::vector<std::byte>& image, CacheDType t, std::int64_t index, std::uint32_t bits) {
  const std::int64_t size = size_of(t);
  if (size == 4) std::memcpy(image.data() + index * 4, &bits, 4);
  if (size == 2) {
    const auto b = static_cast<std::uint16_t>(bits);
    std::memcpy(image.data() + index * 2, &b, 2);
  }
  if (size == 1) image[static_cast<std::size_t>(index)] = static_cast<std::byte>(bits);
}

}  // namespace

CacheImage expected_cache(const HostCache& cache, const ConstTensorView& rotated_k, const ConstTensorView& v,
                          const std::vector<std::int64_t>& slots) {
  const KvCacheView& c = cache.view;
  CacheImage image{cache.k.snapshot(), cache.v.snapshot()};
  for (std::int64_t t = 0; t < static_cast<std::int64_t>(slots.size()); ++t) {
    const std::int64_t slot = slots[static_cast<std::size_t>(t)];
    if (slot < 0 || slot >= c.slots()) continue;  // padding (or a bad slot the GPU skips)
    if (c.layout == CacheLayout::mla) {
      for (std::int64_t e = 0; e < c.latent_dim; ++e) {
        put(image.k, c.dtype, mla_latent_index(c, slot, e), cast_bits(v.dtype, load_bits(v, t, 0, e), c.dtype, c.v_scale));
      }
      for (std::int64_t e = 0; e < c.head_dim; ++e) {
        put(image.k, c.dtype, cache_index(c, slot, 0, e),
            cast_bits(rotated_k.dtype, load_bits(rotated_k, t, 0, e), c.dtype, c.k_scale));
      }
      continue;
    }
    for (std::int64_t h = 0; h < c.kv_heads; ++h) {
      for (std::int64_t e = 0; e < c.head_dim; ++e) {
        const std::int64_t index = cache_index(c, slot, h, e);
        put(image.k, c.dtype, index, cast_bits(rotated_k.dtype, load_bits(rotated_k, t, h, e), c.dtype, c.k_scale));
        put(image.v, c.dtype, index, cast_bits(v.dtype, load_bits(v, t, h, e), c.dtype, c.v_scale));
      }
    }
  }
  return image;
}

}  // namespace posenc::test

// KV-cache test helpers: a poisoned host cache, the layouts written out independently of the library, an independent e4m3 encoder, and the expected cache image of an append.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "posenc/kv_cache.hpp"
#include "support/host_tensor.hpp"

namespace posenc::test {

/// Value of the finite OCP E4M3FN magnitude code 0x00..0x7e.
double e4m3_value(int code);

/// The e4m3 code nearest to x by search over every finite magnitude (ties to the even code),
/// saturating at 448, NaN -> 0x7f | sign: independent of the library's bit arithmetic.
std::uint8_t e4m3_expected(float x);

/// A poisoned cache with its own K and V buffers (host memory).
struct HostCache {
  HostBuffer k;
  HostBuffer v;
  KvCacheView view;

  HostCache(CacheDType dtype, CacheLayout layout, std::int64_t kv_heads, std::int64_t head_dim, std::int64_t blocks,
            std::int64_t block_len);

  /// A poisoned CacheLayout::mla cache: one tensor [blocks, block_len, latent_dim + head_dim] in
  /// `k` (`v` stays empty and view.v null), kv_heads 1.
  static HostCache mla(CacheDType dtype, std::int64_t latent_dim, std::int64_t head_dim, std::int64_t blocks,
                       std::int64_t block_len);

 private:
  HostCache() = default;
};

/// Element offset of (slot, head, d), written from the layout drawings independently of the library.
/// For the mla layout: element d of the slot's k_pe (after the latent); mla_latent_index gives the latent's.
std::int64_t cache_index(const KvCacheView& c, std::int64_t slot, std::int64_t h, std::int64_t d);

/// Element offset of element e of the latent (c_kv) of `slot` in an mla cache.
std::int64_t mla_latent_index(const KvCacheView& c, std::int64_t slot, std::int64_t e);

/// The cache bits of an activation element of bits `bits`: its exact value cast by the test's own
/// encoders (encode_value rounds to nearest even; fp8 divides by the scale in float32 first).
std::uint32_t cast_bits(DType from, std::uint32_t bits, CacheDType to, float scale);

/// The arguments of an append of Q (in place), K and V into `cache` at `slots`.
inline AppendArgs append_args(const TensorView& q, const ConstTensorView& k, const ConstTensorView& v,
                              const PositionsView& positions, const std::int64_t* slots, const KvCacheView& cache) {
  AppendArgs a;
  a.q = q;
  a.k = k;
  a.v = v;
  a.positions = positions;
  a.slots = slots;
  a.cache = cache;
  return a;
}

/// Both cache tensors' bytes.
struct CacheImage {
  std::vector<std::byte> k;
  std::vector<std::byte> v;
};

/// What an append must leave in `cache` (its current bytes, e.g. the poison, plus the rows of
/// every token with a slot >= 0): `rotated_k` (K as apply rotates it) and `v` cast to the cache
/// dtype with the cache's scales. For an mla cache (`v` the latent) everything lands in image.k.
CacheImage expected_cache(const HostCache& cache, const ConstTensorView& rotated_k, const ConstTensorView& v,
                          const std::vector<std::int64_t>& slots);

}  // namespace posenc::test

// Test support: a caller's cos/sin cache in host memory (vLLM's [rows, rotary_dim] layout), random or built from a spec, and its float64 rotation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "posenc/dtype.hpp"
#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"
#include "support/host_tensor.hpp"
#include "support/reference64.hpp"

namespace posenc::test {

/// The pairings a cos/sin cache serves: the single-stream ones (a row holds one position's cos/sin).
inline constexpr Pairing cos_sin_pairings[] = {Pairing::half_split, Pairing::interleaved,
                                               Pairing::interleaved_to_half};

/// One call of the rotation from a caller's cos/sin cache, as the CPU and GPU suites sweep it: the
/// activation and cache dtypes, the rotation, the heads, the memory layout, the cache's shape.
struct CosSinCase {
  DType dtype = DType::bf16;
  DType cache_dtype = DType::f32;
  Pairing pairing = Pairing::half_split;
  Numerics numerics = Numerics::hf_compatible;
  std::int64_t head_dim = 128;
  std::int64_t rotary = 128;
  std::int64_t offset = 0;
  std::int64_t q_heads = 4;
  std::int64_t kv_heads = 2;  ///< 0: K absent
  std::int64_t tokens = 9;
  bool fused = false;   ///< Q and K are slices of one fused QKV buffer ...
  std::int64_t pad = 8;  ///< ... with this many elements of padding per token
  bool out_of_place = false;
  IndexType index_type = IndexType::i64;
  std::int64_t rows = 37;
  std::int64_t row_pad = 0;  ///< row_stride = rotary + row_pad
  int threads = 2;           ///< CPU engine threads
  std::uint64_t seed = 1;

  /// The spec a vLLM-style caller builds: geometry, pairing and numerics; nothing about frequencies.
  RopeSpec spec() const;
  std::string name() const;
};

/// A `[rows, rotary_dim]` cos/sin cache, rows `row_stride` elements apart (-1: dense), in its own
/// poisoned buffer: gaps between rows stay poisoned, so reading one shows up as NaN.
struct HostCosSinCache {
  HostBuffer buffer;
  CosSinCacheView view;

  HostCosSinCache(DType dtype, std::int64_t rows, std::int64_t rotary_dim, std::int64_t row_stride = -1);

  /// Entry j of row p, decoded exactly.
  double at(std::int64_t p, std::int64_t j) const;
  /// Stores `value` rounded to nearest even in the cache's dtype.
  void set(std::int64_t p, std::int64_t j, double value);
};

/// cos and sin of a seeded random angle per (row, pair), rounded to `dtype`: a cache no frequency
/// table produces, so a test can tell that the rows really come from it.
HostCosSinCache random_cos_sin_cache(DType dtype, std::int64_t rows, std::int64_t rotary_dim, std::int64_t row_stride,
                                     std::uint64_t seed);

/// The float32 cache posenc's own spec path would compute for `spec` (a fixed-table scheme): row
/// p holds, for pair i, exactly the float32 cos/sin the engines use before any rounding to the
/// activation dtype (rope_math.hpp: cos_sin_hf for the hf numerics, cos_sin_accurate for
/// accurate, attention factor included). Rotating by it must give the spec path's bits.
HostCosSinCache spec_cos_sin_cache(const RopeSpec& spec, std::int64_t rows);

/// The float64 rotation of every head of `src` by the cache (rotate64_by): pair i of a token at
/// position p is rotated by (at(p, i), at(p, R/2 + i)) in long double, nothing rounded in between.
Expected64 rotate64_cached(const RopeSpec& spec, const HostCosSinCache& cache, const ConstTensorView& src,
                           const PositionsView& positions);

}  // namespace posenc::test

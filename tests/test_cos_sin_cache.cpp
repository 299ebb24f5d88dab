// Rotation from a caller's cos/sin cache (RopeArgs::cos_sin, vLLM's rotary_embedding) on the CPU: engine = reference = float64, spec equivalence, append, errors.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"
#include "support/compare.hpp"
#include "support/cos_sin_cache.hpp"
#include "support/host_tensor.hpp"
#include "support/kernel_build.hpp"
#include "support/reference64.hpp"
#include "support/specs.hpp"

namespace {

using namespace posenc;        // NOLINT(google-build-using-namespace)
using namespace posenc::test;  // NOLINT(google-build-using-namespace)

/// Destinations (and sources, out of place) of one case; two worlds of one case hold the same bytes.
struct World {
  std::optional<FusedQkv> fused;
  HostTensor q, k, q_src, k_src;
  HostPositions positions;
  RopeArgs args;

  World(const CosSinCase& c, const std::vector<std::int64_t>& pos, const CosSinCacheView& cache)
      : positions(pos, c.index_type) {
    if (c.fused) {
      fused.emplace(c.dtype, c.tokens, c.q_heads, std::max<std::int64_t>(c.kv_heads, 1), c.head_dim, c.pad);
      args.q = fused->q;
      if (c.kv_heads > 0) args.k = fused->k;
      fill_random(fused->v, c.seed + 2);
    } else {
      q = HostTensor(c.dtype, c.tokens, c.q_heads, c.head_dim);
      args.q = q.view;
      if (c.kv_heads > 0) {
        k = HostTensor(c.dtype, c.tokens, c.kv_heads, c.head_dim);
        args.k = k.view;
      }
    }
    if (c.out_of_place) {
      // Strided sources: gaps between heads and tokens.
      q_src = HostTensor(c.dtype, c.tokens, c.q_heads, c.head_dim, c.q_heads * (c.head_dim + 8) + 24, c.head_dim + 8);
      fill_random(q_src.view, c.seed);
      args.q_src = q_src.cview();
      if (c.kv_heads > 0) {
        k_src = HostTensor(c.dtype, c.tokens, c.kv_heads, c.head_dim, c.kv_heads * (c.head_dim + 8) + 24,
                           c.head_dim + 8);
        fill_random(k_src.view, c.seed + 1);
        args.k_src = k_src.cview();
      }
    } else {
      fill_random(args.q, c.seed);
      if (c.kv_heads > 0) fill_random(args.k, c.seed + 1);
    }
    args.positions = positions.view();
    args.cos_sin = cache;
  }

  /// The buffer holding the destinations and everything else the call must leave alone.
  std::vector<const HostBuffer*> buffers() const {
    std::vector<const HostBuffer*> out;
    if (fused) out.push_back(&fused->buffer);
    for (const HostTensor* t : {&q, &k, &q_src, &k_src}) {
      if (t->buffer.data() != nullptr) out.push_back(&t->buffer);
    }
    return out;
  }
};

/// The case through apply_reference and CpuEngine (bit for bit, every byte of every buffer), and
/// the reference against the float64 rotation by the same cache entries.
::testing::AssertionResult run_case(const CosSinCase& c) {
  const RopeSpec spec = c.spec();
  const HostCosSinCache cache = random_cos_sin_cache(c.cache_dtype, c.rows, c.rotary, c.rotary + c.row_pad, c.seed);
  const std::vector<std::byte> cache_before = cache.buffer.snapshot();
  const std::vector<std::int64_t> pos = random_positions(c.tokens, c.rows, c.seed);
  World ref(c, pos, cache.view);
  World eng(c, pos, cache.view);
  std::vector<std::vector<std::byte>> before;
  for (const HostBuffer* b : eng.buffers()) before.push_back(b->snapshot());
  const ConstTensorView q_in = c.out_of_place ? ref.args.q_src : ConstTensorView(ref.args.q);
  const ConstTensorView k_in = c.out_of_place ? ref.args.k_src : ConstTensorView(ref.args.k);
  // The float64 expectations from the inputs, before the in-place reference overwrites them.
  const Expected64 q64 = rotate64_cached(spec, cache, q_in, ref.args.positions);
  std::optional<Expected64> k64;
  if (c.kv_heads > 0) k64 = rotate64_cached(spec, cache, k_in, ref.args.positions);

  apply_reference(spec, ref.args);
  CpuEngine(spec, CpuOptions{c.threads}).apply(eng.args);

  const double ulps = tolerance_ulps(c.dtype, c.numerics, 1.0);
  if (auto r = near64(q64, ConstTensorView(ref.args.q), c.dtype, ulps); !r) {
    return ::testing::AssertionFailure() << c.name() << ": reference Q vs float64: " << r.message();
  }
  if (k64) {
    if (auto r = near64(*k64, ConstTensorView(ref.args.k), c.dtype, ulps); !r) {
      return ::testing::AssertionFailure() << c.name() << ": reference K vs float64: " << r.message();
    }
  }
  std::vector<ConstTensorView> destinations = {ConstTensorView(eng.args.q)};
  if (eng.args.k.present()) destinations.emplace_back(eng.args.k);
  if (auto r = buffers_match(ref.buffers(), eng.buffers(), before, destinations); !r) {
    return ::testing::AssertionFailure() << c.name() << ": engine vs reference: " << r.message();
  }
  if (auto r = bytes_equal(cache_before, cache.buffer); !r) {
    return ::testing::AssertionFailure() << c.name() << ": the cos/sin cache was written: " << r.message();
  }
  return ::testing::AssertionSuccess();
}

/// Activation dtype x cache dtype x pairing x numerics, each with full and partial rotary, dense
/// and fused-QKV views, int32 and int64 positions; GQA shapes, in/out of place, padded cache rows,
/// window offsets cycle through the combinations.
void sweep(std::uint64_t first_seed) {
  struct Geometry3 {
    std::int64_t head_dim, rotary, offset;
  };
  const std::vector<Geometry3> partial = {{128, 64, 0}, {80, 32, 0}, {64, 32, 16}, {96, 64, 8}};
  const std::vector<std::pair<std::int64_t, std::int64_t>> heads = {{4, 2}, {8, 1}, {3, 0}, {4, 4}, {6, 2}};
  std::uint64_t n = first_seed;
  for (const DType dtype : all_dtypes) {
    for (const DType cache_dtype : all_dtypes) {
      for (const Pairing pairing : cos_sin_pairings) {
        for (const Numerics numerics : all_numerics) {
          for (const bool is_partial : {false, true}) {
            for (const bool fused : {false, true}) {
              for (const IndexType index_type : {IndexType::i32, IndexType::i64}) {
                ++n;
                CosSinCase c;
                c.dtype = dtype;
                c.cache_dtype = cache_dtype;
                c.pairing = pairing;
                c.numerics = numerics;
                if (is_partial) {
                  const Geometry3 g = partial[n % partial.size()];
                  c.head_dim = g.head_dim;
                  c.rotary = g.rotary;
                  c.offset = g.offset;
                } else {
                  c.head_dim = n % 2 == 0 ? 128 : 64;
                  c.rotary = c.head_dim;
                }
                c.q_heads = heads[n % heads.size()].first;
                c.kv_heads = heads[n % heads.size()].second;
                c.fused = fused;
                c.out_of_place = (n / 3) % 2 == 1;
                c.index_type = index_type;
                c.row_pad = n % 4 == 0 ? 6 : 0;
                c.seed = n;
                EXPECT_TRUE(run_case(c));
              }
            }
          }
        }
      }
    }
  }
}

TEST(CosSinCache, SweepEngineEqualsReferenceAndFloat64) { sweep(0); }

// The kernel builds that specialise rotations (F16C float16, AVX512-BF16 bfloat16, AVX-512, AVX2)
// take cos/sin rows from the cache like any other row: each build against the reference.
class CosSinCacheBuilds : public ::testing::TestWithParam<std::string> {};

TEST_P(CosSinCacheBuilds, EngineEqualsReference) {
  const KernelBuild build(GetParam());
  std::uint64_t n = 5000;
  for (const DType dtype : all_dtypes) {
    for (const Pairing pairing : cos_sin_pairings) {
      for (const Numerics numerics : all_numerics) {
        for (const std::int64_t tokens : {1, 40, 700}) {  // 700 tokens: the thread pool
          CosSinCase c;
          c.dtype = dtype;
          c.cache_dtype = all_dtypes[++n % 3];
          c.pairing = pairing;
          c.numerics = numerics;
          c.tokens = tokens;
          c.head_dim = 128;
          c.rotary = n % 2 == 0 ? 128 : 64;
          c.q_heads = 8;
          c.kv_heads = 2;
          c.rows = 1000;
          c.threads = 3;
          c.seed = n;
          EXPECT_TRUE(run_case(c)) << "build " << GetParam();
        }
      }
    }
  }
}

// A cache is the caller's data: NaNs with any payload (low bits set: float32 0x7fffffff, a
// float16 NaN whose payload widens into the low half), infinities, subnormals and the largest
// values in some entries. The activations' rounding must treat them as the reference does in every
// build (the bfloat16 integer-lane kernels round with bf16_round's addition, which a NaN with its
// low half set would carry into the sign bit): NaN where the reference has NaN, the same bits
// elsewhere.
TEST_P(CosSinCacheBuilds, SpecialEntriesEqualReference) {
  const KernelBuild build(GetParam());
  std::uint64_t n = 7000;
  for (const DType dtype : all_dtypes) {
    for (const DType cache_dtype : all_dtypes) {
      const std::vector<std::uint32_t> specials =
          cache_dtype == DType::f32
              ? std::vector<std::uint32_t>{0x7fffffffu, 0xffc12345u, 0x7f800001u, 0x7f800000u, 0xff800000u,
                                           0x00000001u, 0x7f7fffffu, 0x80000000u}
          : cache_dtype == DType::f16
              ? std::vector<std::uint32_t>{0x7fffu, 0xfe01u, 0x7c01u, 0x7c00u, 0xfc00u, 0x0001u, 0x7bffu, 0x8000u}
              : std::vector<std::uint32_t>{0x7fffu, 0xffc1u, 0x7f81u, 0x7f80u, 0xff80u, 0x0001u, 0x7f7fu, 0x8000u};
      for (const Pairing pairing : cos_sin_pairings) {
        for (const Numerics numerics : all_numerics) {
          CosSinCase c;
          c.dtype = dtype;
          c.cache_dtype = cache_dtype;
          c.pairing = pairing;
          c.numerics = numerics;
          c.tokens = 24;
          c.head_dim = 128;
          c.rotary = 128;
          c.q_heads = 3;
          c.kv_heads = 1;
          c.rows = 24;
          c.seed = ++n;
          HostCosSinCache cache = random_cos_sin_cache(cache_dtype, c.rows, c.rotary, c.rotary, c.seed);
          const std::size_t bytes = size_of(cache_dtype);
          std::byte* data =
              cache.buffer.data() + (static_cast<const std::byte*>(cache.view.data) - cache.buffer.data());
          std::uint64_t k = n;
          for (std::int64_t row = 0; row < c.rows; ++row) {  // every fifth entry of every row
            for (std::int64_t j = row % 5; j < c.rotary; j += 5) {
              const std::uint32_t bits = specials[k++ % specials.size()];
              std::memcpy(data + static_cast<std::size_t>(row * cache.view.row_stride + j) * bytes, &bits, bytes);
            }
          }
          std::vector<std::int64_t> pos(static_cast<std::size_t>(c.tokens));
          for (std::int64_t t = 0; t < c.tokens; ++t) pos[static_cast<std::size_t>(t)] = t;
          World ref(c, pos, cache.view);
          World eng(c, pos, cache.view);
          apply_reference(c.spec(), ref.args);
          CpuEngine(c.spec(), CpuOptions{2}).apply(eng.args);
          EXPECT_TRUE(bits_equal(ConstTensorView(ref.args.q), ConstTensorView(eng.args.q), NanBits::any_nan))
              << c.name() << " build " << GetParam();
          EXPECT_TRUE(bits_equal(ConstTensorView(ref.args.k), ConstTensorView(eng.args.k), NanBits::any_nan))
              << c.name() << " build " << GetParam();
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Builds, CosSinCacheBuilds, ::testing::Values("native", "avx512", "avx2", "baseline"));

// A float32 cache holding exactly the cos/sin the spec path computes (spec_cos_sin_cache) rotates
// bit for bit like the spec path, in every numerics, dtype and pairing, also with an attention
// factor (YaRN) that the cache then carries.
TEST(CosSinCache, CacheOfTheSpecsOwnCosSinEqualsSpecPath) {
  std::uint64_t n = 7000;
  for (const Scaling scheme : {Scaling::none, Scaling::yarn, Scaling::llama3}) {
    for (const Pairing pairing : cos_sin_pairings) {
      for (const Numerics numerics : all_numerics) {
        const RopeSpec spec = scheme_spec(scheme, 128, n % 2 == 0 ? 0 : 64, 0, pairing, numerics);
        const std::int64_t rows = 3000;
        const HostCosSinCache cache = spec_cos_sin_cache(spec, rows);
        const CpuEngine engine(spec, CpuOptions{2});
        for (const DType dtype : all_dtypes) {
          ++n;
          const HostPositions pos(random_positions(300, rows, n));
          HostTensor src(dtype, 300, 6, 128);
          fill_random(src.view, n);
          HostTensor by_spec(dtype, 300, 6, 128);
          HostTensor by_cache(dtype, 300, 6, 128);
          HostTensor by_cache_ref(dtype, 300, 6, 128);
          engine.apply(RopeArgs{by_spec.view, {}, src.cview(), {}, pos.view(), {}});
          engine.apply(RopeArgs{by_cache.view, {}, src.cview(), {}, pos.view(), cache.view});
          apply_reference(spec, RopeArgs{by_cache_ref.view, {}, src.cview(), {}, pos.view(), cache.view});
          const std::string what = case_name(spec, dtype);
          EXPECT_TRUE(bits_equal(by_spec.cview(), by_cache.cview())) << what << ": engine, cache vs spec";
          EXPECT_TRUE(bits_equal(by_spec.cview(), by_cache_ref.cview())) << what << ": reference, cache vs spec";
        }
      }
    }
  }
}

// With a cache, the spec's frequency scheme is not consulted: a dynamic-NTK spec whose table
// would change above its threshold rotates exactly like the default spec, given the same cache.
TEST(CosSinCache, SpecFrequenciesAreIgnored) {
  const RopeSpec plain = scheme_spec(Scaling::none, 64, 0, 0, Pairing::half_split, Numerics::hf_compatible);
  RopeSpec dynamic = scheme_spec(Scaling::dynamic, 64, 0, 0, Pairing::half_split, Numerics::hf_compatible);
  dynamic.attention_factor = 3.0;
  const HostCosSinCache cache = random_cos_sin_cache(DType::f32, 10000, 64, -1, 4);
  const HostPositions pos(random_positions(50, 10000, 4));  // above the dynamic threshold (4096)
  HostTensor src(DType::bf16, 50, 4, 64);
  fill_random(src.view, 4);
  HostTensor a(DType::bf16, 50, 4, 64);
  HostTensor b(DType::bf16, 50, 4, 64);
  CpuEngine(plain).apply(RopeArgs{a.view, {}, src.cview(), {}, pos.view(), cache.view});
  CpuEngine(dynamic).apply(RopeArgs{b.view, {}, src.cview(), {}, pos.view(), cache.view});
  EXPECT_TRUE(bits_equal(a.cview(), b.cview()));
}

// ---- the fused append -----------------------------------------------------------------------------

// CpuEngine::append with a cache equals append_reference with it, and the cache's K rows hold the
// bits apply gives K with the same cos/sin cache.
TEST(CosSinCache, AppendEqualsReferenceAndApply) {
  std::uint64_t n = 9000;
  for (const DType dtype : all_dtypes) {
    for (const Pairing pairing : cos_sin_pairings) {
      for (const Numerics numerics : all_numerics) {
        ++n;
        CosSinCase c;
        c.dtype = dtype;
        c.cache_dtype = all_dtypes[n % 3];
        c.pairing = pairing;
        c.numerics = numerics;
        c.head_dim = 64;
        c.rotary = n % 2 == 0 ? 64 : 32;
        const RopeSpec spec = c.spec();
        const std::int64_t tokens = 12;
        const std::int64_t kv_heads = 2;
        const HostCosSinCache cos_sin = random_cos_sin_cache(c.cache_dtype, 100, c.rotary, -1, n);
        const HostPositions pos(random_positions(tokens, 100, n), n % 2 == 0 ? IndexType::i64 : IndexType::i32);
        std::vector<std::int64_t> slots(static_cast<std::size_t>(tokens));
        for (std::int64_t t = 0; t < tokens; ++t) slots[static_cast<std::size_t>(t)] = t == 5 ? -1 : 3 * t + 1;

        FusedQkv qkv(dtype, tokens, 4, kv_heads, c.head_dim, 8);
        fill_random(qkv.q, n);
        fill_random(qkv.k, n + 1);
        fill_random(qkv.v, n + 2);
        const std::vector<std::byte> input = qkv.buffer.snapshot();
        // Two caches of the activation dtype (the rotated K bits land unchanged), 64 slots.
        const std::int64_t cache_bytes = 64 * kv_heads * c.head_dim * size_of(dtype);
        HostBuffer k_ref(cache_bytes), v_ref(cache_bytes), k_eng(cache_bytes), v_eng(cache_bytes);
        const CacheDType kv_dtype = dtype == DType::f32 ? CacheDType::f32
                                    : dtype == DType::f16 ? CacheDType::f16
                                                          : CacheDType::bf16;
        auto append_args = [&](TensorView q, void* k_cache, void* v_cache) {
          AppendArgs a;
          a.q = q;
          a.k = qkv.k;
          a.v = qkv.v;
          a.positions = pos.view();
          a.slots = slots.data();
          a.cache = KvCacheView{k_cache, v_cache, kv_dtype, CacheLayout::contiguous, kv_heads, c.head_dim, 1, 64};
          a.cos_sin = cos_sin.view;
          return a;
        };
        HostTensor q_ref(dtype, tokens, 4, c.head_dim);
        HostTensor q_eng(dtype, tokens, 4, c.head_dim);
        AppendArgs ra = append_args(q_ref.view, k_ref.data(), v_ref.data());
        ra.q_src = qkv.q;
        AppendArgs ea = append_args(q_eng.view, k_eng.data(), v_eng.data());
        ea.q_src = qkv.q;
        append_reference(spec, ra);
        CpuEngine(spec, CpuOptions{2}).append(ea);
        EXPECT_TRUE(bits_equal(q_ref.cview(), q_eng.cview())) << c.name() << ": Q";
        EXPECT_TRUE(bytes_equal(k_ref.snapshot(), k_eng)) << c.name() << ": K cache";
        EXPECT_TRUE(bytes_equal(v_ref.snapshot(), v_eng)) << c.name() << ": V cache";
        EXPECT_TRUE(bytes_equal(input, qkv.buffer)) << c.name() << ": the inputs were written";

        // apply with the same cache: Q equal, and K's rows equal the cache rows of their slots.
        HostTensor q_apply(dtype, tokens, 4, c.head_dim);
        HostTensor k_apply(dtype, tokens, kv_heads, c.head_dim);
        CpuEngine(spec).apply(RopeArgs{q_apply.view, k_apply.view, qkv.q, qkv.k, pos.view(), cos_sin.view});
        EXPECT_TRUE(bits_equal(q_ref.cview(), q_apply.cview())) << c.name() << ": append Q vs apply Q";
        for (std::int64_t t = 0; t < tokens; ++t) {
          const std::int64_t slot = slots[static_cast<std::size_t>(t)];
          if (slot < 0) continue;
          const ConstTensorView row{k_eng.data() + slot * kv_heads * c.head_dim * size_of(dtype),
                                    dtype, 1, kv_heads, c.head_dim, kv_heads * c.head_dim, c.head_dim};
          const ConstTensorView k_row{static_cast<const std::byte*>(k_apply.view.data) +
                                          t * kv_heads * c.head_dim * size_of(dtype),
                                      dtype, 1, kv_heads, c.head_dim, kv_heads * c.head_dim, c.head_dim};
          EXPECT_TRUE(bits_equal(k_row, row)) << c.name() << ": K cache row of token " << t << " vs apply's K";
        }
      }
    }
  }
}

// ---- errors ---------------------------------------------------------------------------------------

/// A valid call (bf16, 4+2 heads, 64 dims, a [50, 64] f32 cache) that each error test breaks in one way.
struct ErrorWorld {
  RopeSpec spec;
  HostTensor q{DType::bf16, 6, 4, 64};
  HostTensor k{DType::bf16, 6, 2, 64};
  HostCosSinCache cache{DType::f32, 50, 64};
  HostPositions positions{{0, 49, 3, 17, 25, 8}};
  RopeArgs args;

  ErrorWorld() {
    spec.head_dim = 64;
    fill_random(q.view, 1);
    fill_random(k.view, 2);
    cache = random_cos_sin_cache(DType::f32, 50, 64, -1, 3);
    args = RopeArgs{q.view, k.view, {}, {}, positions.view(), cache.view};
  }

  /// Runs `call` expecting Error(kind) with `parts`, then checks nothing was written.
  void expect(const std::function<void(const RopeSpec&, const RopeArgs&)>& call, ErrorKind kind,
              std::initializer_list<const char*> parts) {
    const std::vector<std::byte> q_before = q.buffer.snapshot();
    const std::vector<std::byte> k_before = k.buffer.snapshot();
    EXPECT_TRUE(throws_error([&] { call(spec, args); }, kind, std::vector<std::string>(parts.begin(), parts.end())));
    EXPECT_TRUE(bytes_equal(q_before, q.buffer)) << "Q written by a call that threw";
    EXPECT_TRUE(bytes_equal(k_before, k.buffer)) << "K written by a call that threw";
  }
};

const std::vector<std::pair<const char*, std::function<void(const RopeSpec&, const RopeArgs&)>>> entry_points = {
    {"apply_reference", [](const RopeSpec& s, const RopeArgs& a) { apply_reference(s, a); }},
    {"CpuEngine::apply", [](const RopeSpec& s, const RopeArgs& a) { CpuEngine(s).apply(a); }},
    {"validate_args", [](const RopeSpec& s, const RopeArgs& a) { validate_args(s, a); }},
};

TEST(CosSinCacheErrors, ValidCallPasses) {
  ErrorWorld w;
  for (const auto& [name, call] : entry_points) EXPECT_NO_THROW(call(w.spec, w.args)) << name;
}

// Every position is checked against the cache's rows before anything is written; the message
// names the token index, the value and the limit, and says what the limit is.
TEST(CosSinCacheErrors, PositionOutsideTheCache) {
  for (const auto& [name, call] : entry_points) {
    SCOPED_TRACE(name);
    for (const IndexType type : {IndexType::i64, IndexType::i32}) {
      ErrorWorld w;
      w.positions = HostPositions({0, 49, 3, 50, 25, 8}, type);
      w.args.positions = w.positions.view();
      w.expect(call, ErrorKind::out_of_range,
               {"position 50", "token index 3", "[0, 50)", "rows of the cos/sin cache"});
      w.positions = HostPositions({0, 49, -1, 17, 25, 8}, type);
      w.args.positions = w.positions.view();
      w.expect(call, ErrorKind::out_of_range, {"position -1", "token index 2", "[0, 50)"});
    }
    // A spec limit below the cache's rows is the limit then.
    ErrorWorld w;
    w.spec.position_limit = 20;
    w.expect(call, ErrorKind::out_of_range, {"position 49", "token index 1", "[0, 20)", "spec.position_limit"});
  }
}

TEST(CosSinCacheErrors, BadCacheViews) {
  for (const auto& [name, call] : entry_points) {
    SCOPED_TRACE(name);
    {
      ErrorWorld w;
      w.args.cos_sin.rotary_dim = 32;
      w.expect(call, ErrorKind::invalid_argument, {"cos_sin rotary_dim 32", "rotary_dim 64"});
    }
    {
      ErrorWorld w;
      w.spec.rotary_dim = 32;  // the cache is 64 wide
      w.expect(call, ErrorKind::invalid_argument, {"cos_sin rotary_dim 64", "rotary_dim 32"});
    }
    {
      ErrorWorld w;
      w.args.cos_sin.rows = 0;
      w.expect(call, ErrorKind::invalid_argument, {"cos_sin rows 0", ">= 1"});
    }
    {
      ErrorWorld w;
      w.args.cos_sin.row_stride = 63;
      w.expect(call, ErrorKind::invalid_argument, {"cos_sin row_stride 63", "rotary_dim 64"});
    }
    {
      ErrorWorld w;
      w.args.cos_sin.dtype = static_cast<DType>(9);
      w.expect(call, ErrorKind::invalid_argument, {"cos_sin dtype 9"});
    }
    {
      ErrorWorld w;
      w.args.cos_sin.data = static_cast<const char*>(w.args.cos_sin.data) + 2;
      w.expect(call, ErrorKind::invalid_argument, {"cos_sin data address", "4-byte elements"});
    }
    {
      ErrorWorld w;
      w.args.cos_sin.rows = std::int64_t{1} << 60;
      w.expect(call, ErrorKind::overflow, {"cos_sin", "extent"});
    }
    {
      // The cache inside Q's buffer: it would be overwritten while read.
      ErrorWorld w;
      w.args.cos_sin = CosSinCacheView{w.q.view.data, DType::bf16, 2, 64, 64};
      w.expect(call, ErrorKind::invalid_argument, {"cos_sin", "overlaps q", "destination"});
    }
    {
      ErrorWorld w;
      w.args.cos_sin = CosSinCacheView{w.k.view.data, DType::bf16, 2, 64, 64};
      w.expect(call, ErrorKind::invalid_argument, {"cos_sin", "overlaps k", "destination"});
    }
  }
}

// A cache has one row per position: multi-stream specs (ChatGLM-6B 2-D, M-RoPE) are refused.
TEST(CosSinCacheErrors, MultiStreamSpecsRefused) {
  for (const auto& [name, call] : entry_points) {
    SCOPED_TRACE(name);
    {
      ErrorWorld w;
      w.spec.pairing = Pairing::half_split_2d;
      w.args.positions.streams = 2;
      w.args.positions.stream_stride = 6;
      w.positions = HostPositions({0, 1, 2, 3, 4, 5, 0, 0, 1, 1, 2, 2});
      w.args.positions.data = w.positions.view().data;
      w.expect(call, ErrorKind::invalid_argument, {"single-stream", "half_split_2d"});
    }
    {
      ErrorWorld w;
      w.spec.mrope_section = {16, 8, 8};
      w.positions = HostPositions(std::vector<std::int64_t>(18, 1));
      w.args.positions = w.positions.view();
      w.args.positions.count = 6;
      w.args.positions.streams = 3;
      w.args.positions.stream_stride = 6;
      w.expect(call, ErrorKind::invalid_argument, {"single-stream", "3 position stream"});
    }
  }
}

TEST(CosSinCacheErrors, AppendChecksTheCache) {
  const std::int64_t tokens = 4;
  FusedQkv qkv(DType::bf16, tokens, 2, 1, 64);
  fill_random(qkv.q, 1);
  fill_random(qkv.k, 2);
  fill_random(qkv.v, 3);
  const HostCosSinCache cos_sin = random_cos_sin_cache(DType::bf16, 10, 64, -1, 5);
  HostBuffer k_cache(16 * 64 * 2);
  HostBuffer v_cache(16 * 64 * 2);
  const std::vector<std::int64_t> slots = {0, 1, 2, 3};
  RopeSpec spec;
  spec.head_dim = 64;
  auto args = [&](const std::vector<std::int64_t>& positions) {
    static HostPositions held;
    held = HostPositions(positions);
    AppendArgs a;
    a.q = qkv.q;
    a.k = qkv.k;
    a.v = qkv.v;
    a.positions = held.view();
    a.slots = slots.data();
    a.cache = KvCacheView{k_cache.data(), v_cache.data(), CacheDType::bf16, CacheLayout::contiguous, 1, 64, 1, 16};
    a.cos_sin = cos_sin.view;
    return a;
  };
  const std::vector<std::byte> k_before = k_cache.snapshot();
  for (const auto& [name, call] : std::vector<std::pair<const char*, std::function<void(const AppendArgs&)>>>{
           {"append_reference", [&](const AppendArgs& a) { append_reference(spec, a); }},
           {"CpuEngine::append", [&](const AppendArgs& a) { CpuEngine(spec).append(a); }},
           {"validate_append_args", [&](const AppendArgs& a) { validate_append_args(spec, a); }}}) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(throws_error([&] { call(args({0, 1, 10, 3})); }, ErrorKind::out_of_range,
                             {"position 10", "token index 2", "[0, 10)", "cos/sin cache"}));
    AppendArgs overlapping = args({0, 1, 2, 3});
    overlapping.cos_sin = CosSinCacheView{k_cache.data(), DType::bf16, 4, 64, 64};
    EXPECT_TRUE(throws_error([&] { call(overlapping); }, ErrorKind::invalid_argument, {"cache.k", "overlaps cos_sin"}));
    EXPECT_TRUE(bytes_equal(k_before, k_cache)) << "the KV cache was written by a call that threw";
  }
}

}  // namespace

// MLA decoupled RoPE on the CPU (DeepSeek-V3 / Kimi K2): Q's rope slice rotated in place inside [tokens, heads, nope + rope], and the append into the mla cache layout ([c_kv | rotated k_pe] per slot), against apply, a float64 reference and the test's own cache image; errors that write nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/validate.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/kv_image.hpp"
#include "support/mla_tensors.hpp"
#include "support/reference64.hpp"
#include "support/specs.hpp"

namespace posenc::test {
namespace {

/// Rotated `out` against the float64 rotation of `in` (same shapes) within tolerance_ulps.
::testing::AssertionResult near_float64(const RopeSpec& spec, const ConstTensorView& in, const ConstTensorView& out,
                                        const std::vector<std::int64_t>& positions) {
  const HostPositions pos(positions);
  const std::int64_t max_position = *std::max_element(positions.begin(), positions.end());
  const FrequencyTable table = compute_frequencies(spec, max_position + 1);
  const double af = detail::effective_attention_factor(spec, table);
  const Expected64 expected = rotate64(spec, pair_axes(spec, table), af, angle_model_for(spec.numerics), in, pos.view());
  return near64(expected, out, in.dtype, tolerance_ulps(in.dtype, spec.numerics, af));
}

// ---- Q's rope slice inside [tokens, heads, nope + rope] ------------------------------------------

TEST(MlaQuery, RopeSliceRotatesInPlaceNopeUntouched) {
  for (Numerics n : all_numerics) {
    for (DType act : all_dtypes) {
      const RopeSpec spec = deepseek_v3_spec(n);
      SCOPED_TRACE(case_name(spec, act));
      MlaTensors x(act, 37, 16, 128, 64, 512, 7);
      // Positions on both sides of original_max_position_embeddings (4096) and far beyond.
      std::vector<std::int64_t> positions = random_positions(37, 160000, 9);
      positions[1] = 4095;
      positions[2] = 4096;
      const HostPositions pos(positions);
      const HostTensor q_in = dense_copy(ConstTensorView(x.q));
      const HostTensor k_in = dense_copy(x.k);
      // The same rotation of dense copies: the bits the slice must receive.
      HostTensor q_want = dense_copy(ConstTensorView(x.q));
      HostTensor k_want = dense_copy(x.k);
      const CpuEngine engine(spec, CpuOptions{2});
      engine.apply(RopeArgs{q_want.view, k_want.view, {}, {}, pos.view(), {}});
      ASSERT_TRUE(near_float64(spec, q_in.cview(), q_want.cview(), positions));
      ASSERT_TRUE(near_float64(spec, k_in.cview(), k_want.cview(), positions));

      const auto q_before = x.q_full.buffer.snapshot();
      for (bool use_engine : {true, false}) {
        SCOPED_TRACE(use_engine ? "CpuEngine::apply" : "apply_reference");
        std::memcpy(x.q_full.buffer.data(), q_before.data(), q_before.size());
        HostTensor k = dense_copy(x.k);
        const RopeArgs args{x.q, k.view, {}, {}, pos.view(), {}};
        if (use_engine) {
          engine.apply(args);
        } else {
          apply_reference(spec, args);
        }
        EXPECT_TRUE(bits_equal(q_want.cview(), ConstTensorView(x.q)));
        EXPECT_TRUE(bits_equal(k_want.cview(), k.cview()));
        // The nope part of every head (and nothing else) is as it was.
        EXPECT_TRUE(only_views_written(q_before, x.q_full.buffer, {ConstTensorView(x.q)}));
      }
    }
  }
}

// ---- the append into the mla layout --------------------------------------------------------------

/// Runs `c` through CpuEngine::append and append_reference: Q's slice must hold apply's bits (its
/// nope part untouched), the cache exactly the test's image of apply's K and the latent cast (every
/// other byte the poison), k_pe and c_kv unwritten; the cache's k_pe rows (same-dtype caches) and
/// Q within the float64 bound.
void run_case(const MlaCase& c) {
  SCOPED_TRACE(name_of(c));
  const std::int64_t rope = c.spec.head_dim;
  MlaTensors x(c.act, c.tokens, c.heads, c.nope, rope, c.latent, c.seed, c.pad);
  const std::vector<std::int64_t> slots = mla_slots(c);
  ASSERT_EQ(static_cast<std::int64_t>(slots.size()), c.tokens);
  const std::vector<std::int64_t> positions = mla_positions(c);
  const HostPositions pos(positions);

  const HostTensor q_in = dense_copy(ConstTensorView(x.q));
  HostTensor q_want = dense_copy(ConstTensorView(x.q));
  HostTensor k_want = dense_copy(x.k);
  const CpuEngine engine(c.spec, CpuOptions{c.threads});
  engine.apply(RopeArgs{q_want.view, k_want.view, {}, {}, pos.view(), {}});
  EXPECT_TRUE(near_float64(c.spec, q_in.cview(), q_want.cview(), positions));

  HostCache image_base = HostCache::mla(c.cache, c.latent, rope, c.blocks, c.block_len);
  image_base.view.k_scale = c.k_scale;
  image_base.view.v_scale = c.v_scale;
  const CacheImage want = expected_cache(image_base, k_want.cview(), x.v, slots);

  const auto q_before = x.q_full.buffer.snapshot();
  const auto ckv_before = x.ckv_full.buffer.snapshot();
  for (bool use_engine : {true, false}) {
    SCOPED_TRACE(use_engine ? "CpuEngine::append" : "append_reference");
    std::memcpy(x.q_full.buffer.data(), q_before.data(), q_before.size());
    HostCache cache = HostCache::mla(c.cache, c.latent, rope, c.blocks, c.block_len);
    cache.view.k_scale = c.k_scale;
    cache.view.v_scale = c.v_scale;
    AppendArgs args = append_args(x.q, x.k, x.v, pos.view(), slots.data(), cache.view);
    // Out of place: Q read from a dense copy, written into the slice of a poisoned tensor.
    HostTensor q_out_full(c.act, c.tokens, c.heads, c.nope + rope);
    if (c.out_of_place) {
      TensorView q_out = x.q;
      q_out.data = static_cast<std::byte*>(q_out_full.view.data) + c.nope * size_of(c.act);
      args.q = q_out;
      args.q_src = q_in.cview();
    }
    if (use_engine) {
      engine.append(args);
    } else {
      append_reference(c.spec, args);
    }
    EXPECT_TRUE(bits_equal(q_want.cview(), ConstTensorView(args.q)));
    if (c.out_of_place) {
      EXPECT_TRUE(bytes_equal(q_before, x.q_full.buffer));
    } else {
      EXPECT_TRUE(only_views_written(q_before, x.q_full.buffer, {ConstTensorView(x.q)}));
    }
    EXPECT_TRUE(bytes_equal(want.k, cache.k));
    EXPECT_TRUE(bytes_equal(ckv_before, x.ckv_full.buffer));

    if (c.cache == cache_dtype_of(c.act)) {
      // The k_pe rows of the slotted tokens, read back from the cache, against float64.
      std::vector<std::int64_t> kept;
      for (std::int64_t t = 0; t < c.tokens; ++t) {
        if (slots[static_cast<std::size_t>(t)] >= 0) kept.push_back(t);
      }
      const auto n = static_cast<std::int64_t>(kept.size());
      if (n == 0) continue;
      HostTensor k_in(c.act, n, 1, rope);
      HostTensor k_cached(c.act, n, 1, rope);
      std::vector<std::int64_t> kept_positions;
      const std::int64_t e = size_of(c.act);
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t t = kept[static_cast<std::size_t>(i)];
        kept_positions.push_back(positions[static_cast<std::size_t>(t)]);
        std::memcpy(static_cast<std::byte*>(k_in.view.data) + i * rope * e,
                    static_cast<const std::byte*>(x.k.data) + t * x.k.token_stride * e,
                    static_cast<std::size_t>(rope * e));
        const std::int64_t at = cache_index(cache.view, slots[static_cast<std::size_t>(t)], 0, 0);
        std::memcpy(static_cast<std::byte*>(k_cached.view.data) + i * rope * e, cache.k.data() + at * e,
                    static_cast<std::size_t>(rope * e));
      }
      EXPECT_TRUE(near_float64(c.spec, k_in.cview(), k_cached.cview(), kept_positions));
    }
  }
}

TEST(MlaAppend, SameDtypeCacheEveryNumerics) {
  for (Numerics n : all_numerics) {
    for (DType act : all_dtypes) {
      MlaCase c;
      c.spec = deepseek_v3_spec(n);
      c.act = act;
      c.cache = cache_dtype_of(act);
      run_case(c);
    }
  }
}

TEST(MlaAppend, CastsAndFp8Scales) {
  const std::vector<std::pair<DType, CacheDType>> casts = {
      {DType::f32, CacheDType::bf16}, {DType::bf16, CacheDType::f32}, {DType::f16, CacheDType::bf16},
      {DType::bf16, CacheDType::fp8_e4m3}, {DType::f16, CacheDType::fp8_e4m3}, {DType::f32, CacheDType::fp8_e4m3}};
  for (const auto& [act, cache] : casts) {
    MlaCase c;
    c.act = act;
    c.cache = cache;
    c.pad = cache == CacheDType::fp8_e4m3 ? 3 : 0;  // a compressed-KV row of 579 elements: odd token strides
    if (cache == CacheDType::fp8_e4m3) {
      c.k_scale = 0.0078125f;  // k_pe / scale reaches past 448: saturation
      c.v_scale = 0.3f;        // not a power of two: the division rounds
    }
    run_case(c);
  }
}

// fp8 MLA serving: the rope slice of Q written into an fp8 q_out ([T, heads, rope], its own scale)
// beside the fp8 cache; the query tensor (nope and rope parts) left as it was; engine = reference.
TEST(MlaAppend, QuantizedRopeSlice) {
  MlaCase c;
  c.cache = CacheDType::fp8_e4m3;
  c.k_scale = 0.5f;
  c.v_scale = 0.25f;
  const float q_scale = 0.0625f;
  const std::int64_t rope = c.spec.head_dim;
  MlaTensors x(c.act, c.tokens, c.heads, c.nope, rope, c.latent, c.seed, c.pad);
  const std::vector<std::int64_t> slots = mla_slots(c);
  const HostPositions pos(mla_positions(c));
  HostTensor q_want = dense_copy(ConstTensorView(x.q));
  const CpuEngine engine(c.spec, CpuOptions{c.threads});
  engine.apply(RopeArgs{q_want.view, {}, {}, {}, pos.view(), {}});

  // The expected q_out: every element of the rotated slice cast by the test's own encoder.
  const std::int64_t n = c.tokens * c.heads * rope;
  std::vector<std::uint8_t> q_out_want(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, static_cast<const std::byte*>(q_want.view.data) + i * size_of(c.act),
                static_cast<std::size_t>(size_of(c.act)));
    q_out_want[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(cast_bits(c.act, bits, c.cache, q_scale));
  }
  const auto q_before = x.q_full.buffer.snapshot();
  std::vector<std::vector<std::byte>> caches;
  for (bool use_engine : {true, false}) {
    SCOPED_TRACE(use_engine ? "CpuEngine::append" : "append_reference");
    HostCache cache = HostCache::mla(c.cache, c.latent, rope, c.blocks, c.block_len);
    cache.view.k_scale = c.k_scale;
    cache.view.v_scale = c.v_scale;
    AppendArgs args = append_args(x.q, x.k, x.v, pos.view(), slots.data(), cache.view);
    std::vector<std::uint8_t> q_out(static_cast<std::size_t>(n), 0xa5);
    args.q_out = QuantizedOutput{q_out.data(), c.cache, c.heads * rope, rope, q_scale};
    if (use_engine) {
      engine.append(args);
    } else {
      append_reference(c.spec, args);
    }
    EXPECT_EQ(q_out, q_out_want);
    EXPECT_TRUE(bytes_equal(q_before, x.q_full.buffer)) << "the query (nope and rope) is only read";
    caches.push_back(cache.k.snapshot());
  }
  EXPECT_EQ(caches[0], caches[1]);
}

TEST(MlaAppend, OtherGeometriesAndOutOfPlaceQ) {
  MlaCase minicpm;  // MiniCPM3-like: rope 32, latent 256, nope 64
  minicpm.spec = scheme_spec(Scaling::none, 32, 0, 0, Pairing::half_split, Numerics::hf_compatible);
  minicpm.nope = 64;
  minicpm.latent = 256;
  minicpm.out_of_place = true;
  run_case(minicpm);
  MlaCase one_piece;  // latent == head_dim
  one_piece.latent = 64;
  one_piece.heads = 1;
  run_case(one_piece);
}

TEST(MlaAppend, ManyTokensRandomSlotsUseThePool) {
  MlaCase c;
  c.tokens = 600;
  c.heads = 16;
  c.blocks = 48;
  c.block_len = 16;
  c.slots = random_slots(c.tokens, c.blocks * c.block_len, 7, 77);
  c.threads = 3;
  run_case(c);
}

TEST(MlaAppend, AllPaddingWritesNothing) {
  MlaCase c;
  c.slots.assign(static_cast<std::size_t>(c.tokens), -1);
  run_case(c);  // the expected cache is the poison alone; Q is still rotated
}

TEST(MlaAppend, CountersReportTheOperationsTraffic) {
  // 3 tokens, Q slice [3, 2, 64] bf16 in place, k_pe [3, 1, 64], c_kv [3, 1, 512], fp8 cache.
  const RopeSpec spec = deepseek_v3_spec();
  MlaTensors x(DType::bf16, 3, 2, 128, 64, 512, 3);
  const HostPositions pos(std::vector<std::int64_t>{0, 1, 2});
  const std::vector<std::int64_t> slots{0, -1, 2};
  HostCache cache = HostCache::mla(CacheDType::fp8_e4m3, 512, 64, 1, 4);
  const CpuEngine engine(spec, CpuOptions{1});
  engine.enable_counters(true);
  engine.append(append_args(x.q, x.k, x.v, pos.view(), slots.data(), cache.view));
  const OperationCounters c = engine.counters();
  EXPECT_EQ(c.calls, 1);
  EXPECT_EQ(c.tokens, 3);
  // Q's window read and written; k_pe and c_kv read (2 bytes), their cache elements written (1 byte).
  EXPECT_EQ(c.bytes, 2 * 3 * 2 * 64 * 2 + 3 * (64 + 512) * (2 + 1));
}

// ---- errors: a clear message, and nothing written ------------------------------------------------

struct MlaErrors : ::testing::Test {
  RopeSpec spec = deepseek_v3_spec();
  MlaTensors x{DType::bf16, 3, 2, 128, 64, 512, 11};
  HostPositions positions{std::vector<std::int64_t>{0, 5000, 2}};
  std::vector<std::int64_t> slots{0, 5, -1};
  HostCache cache = HostCache::mla(CacheDType::fp8_e4m3, 512, 64, 2, 4);

  AppendArgs args() { return append_args(x.q, x.k, x.v, positions.view(), slots.data(), cache.view); }

  /// Both entry points throw `kind` with every part in the message, and write nothing.
  void expect_rejected(const AppendArgs& a, ErrorKind kind, const std::vector<std::string>& parts) {
    const CpuEngine engine(spec, CpuOptions{2});
    const auto q_before = x.q_full.buffer.snapshot();
    const auto ckv_before = x.ckv_full.buffer.snapshot();
    const auto cache_before = cache.k.snapshot();
    EXPECT_TRUE(throws_error([&] { engine.append(a); }, kind, parts));
    EXPECT_TRUE(throws_error([&] { append_reference(spec, a); }, kind, parts));
    EXPECT_TRUE(throws_error([&] { validate_append_args(spec, a); }, kind, parts));
    EXPECT_TRUE(bytes_equal(q_before, x.q_full.buffer));
    EXPECT_TRUE(bytes_equal(ckv_before, x.ckv_full.buffer));
    EXPECT_TRUE(bytes_equal(cache_before, cache.k));
  }
};

TEST_F(MlaErrors, ValidCallOfTheFixtureSucceeds) {
  // The error cases below differ from this call in one field each.
  EXPECT_NO_THROW(append_reference(spec, args()));
  EXPECT_NO_THROW(CpuEngine(spec, CpuOptions{2}).append(args()));
}

TEST_F(MlaErrors, KvHeadsMustBeOne) {
  AppendArgs a = args();
  a.cache.kv_heads = 2;
  expect_rejected(a, ErrorKind::invalid_argument, {"cache.kv_heads 2", "must be 1", "mla"});
  // K with two heads (a cache of one): named against the cache.
  HostTensor k2(DType::bf16, 3, 2, 64);
  fill_random(k2.view, 5);
  a = args();
  a.k = k2.cview();
  expect_rejected(a, ErrorKind::invalid_argument, {"k heads 2", "cache.kv_heads 1"});
}

TEST_F(MlaErrors, LatentDim) {
  AppendArgs a = args();
  a.v.head_dim = 256;  // c_kv narrower than the cache's latent
  expect_rejected(a, ErrorKind::invalid_argument, {"v head_dim 256", "cache.latent_dim 512"});
  for (std::int64_t bad : std::vector<std::int64_t>{0, -64, 500, (std::int64_t{1} << 24) + 64}) {
    a = args();
    a.cache.latent_dim = bad;
    expect_rejected(a, ErrorKind::invalid_argument,
                    {"cache.latent_dim " + std::to_string(bad), "multiple of head_dim 64", "16777216"});
  }
  // A latent on another layout would be silently ignored: rejected.
  a = args();
  a.cache.layout = CacheLayout::paged_nhd;
  a.cache.v = x.q_full.buffer.data();  // any non-null pointer: the latent is rejected first
  expect_rejected(a, ErrorKind::invalid_argument, {"cache.latent_dim 512", "must be 0", "paged_nhd"});
}

TEST_F(MlaErrors, SecondCacheTensor) {
  HostBuffer other(cache.k.size());
  AppendArgs a = args();
  a.cache.v = other.data();
  expect_rejected(a, ErrorKind::invalid_argument, {"cache.v must be null", "mla"});
}

TEST_F(MlaErrors, SlotsOutOfRangeAndTwice) {
  slots = {0, 8, -1};  // 2 blocks x 4 = 8 slots
  expect_rejected(args(), ErrorKind::out_of_range, {"slot 8", "token index 1", "[0, 8)"});
  slots = {0, -3, 1};
  expect_rejected(args(), ErrorKind::out_of_range, {"slot -3", "token index 1", "[0, 8)"});
  slots = {6, 2, 6};
  expect_rejected(args(), ErrorKind::invalid_argument, {"slot 6", "token index 0", "token index 2"});
}

TEST_F(MlaErrors, CacheOverlappingInputs) {
  // The cache laid over the compressed KV it is filled from (576 bf16 elements per token; the bf16
  // cache of one block of 2 slots spans 2 x 576 x 2 bytes, inside the 3 tokens' 3 x 576 x 2).
  AppendArgs a = args();
  a.cache.k = x.ckv_full.buffer.data();
  a.cache.dtype = CacheDType::bf16;
  a.cache.k_scale = 1.0f;
  a.cache.v_scale = 1.0f;
  a.cache.blocks = 1;
  a.cache.block_len = 2;
  std::vector<std::int64_t> two = {0, 1, -1};
  a.slots = two.data();
  expect_rejected(a, ErrorKind::invalid_argument, {"cache.k", "overlaps k"});
  // ... and over Q's tensor.
  a.cache.k = x.q_full.buffer.data();
  expect_rejected(a, ErrorKind::invalid_argument, {"cache.k", "overlaps q"});
}

TEST_F(MlaErrors, BadScale) {
  AppendArgs a = args();
  a.cache.v_scale = 0.0f;
  expect_rejected(a, ErrorKind::invalid_argument, {"cache.v_scale", "finite and > 0"});
}

}  // namespace
}  // namespace posenc::test

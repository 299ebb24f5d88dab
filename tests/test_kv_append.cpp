// Fused RoPE + KV-cache append on the CPU: cache contents against apply's K and independently cast V in every layout and cast, padding slots, errors that write nothing, the e4m3 encoder, slots_from_block_table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/kv_image.hpp"
#include "support/specs.hpp"

namespace posenc::test {
namespace {

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(E4m3, DecodesEveryCode) {
  for (int code = 0; code < 256; ++code) {
    const float f = e4m3_bits_to_float(static_cast<std::uint8_t>(code));
    if ((code & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(f)) << "code " << code;
      continue;
    }
    const double expected = (code & 0x80 ? -1.0 : 1.0) * e4m3_value(code & 0x7f);
    EXPECT_EQ(static_cast<double>(f), expected) << "code " << code;
    EXPECT_EQ(std::signbit(f), (code & 0x80) != 0) << "code " << code;
  }
}

TEST(E4m3, EncoderMatchesNearestEvenWithSaturation) {
  std::vector<float> inputs = {0.0f, -0.0f, 448.0f, 449.0f, 464.0f, 479.9f, 480.0f, 1e30f, -1e30f,
                               std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                               std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                               std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max()};
  // Every finite e4m3 value, the midpoints to its neighbour (ties) and one float ulp either side.
  for (int code = 0; code <= 0x7e; ++code) {
    const auto v = static_cast<float>(e4m3_value(code));
    const auto mid = static_cast<float>((e4m3_value(code) + e4m3_value(code + 1 == 0x7f ? code : code + 1)) / 2);
    for (float x : {v, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1000.0f)}) {
      inputs.push_back(x);
      inputs.push_back(-x);
    }
  }
  // A sweep over the float bit patterns (both signs, every binade, NaN and inf included).
  for (std::uint64_t u = 0; u <= 0xffffffffu; u += 1021) inputs.push_back(bits_to_float(static_cast<std::uint32_t>(u)));
  std::int64_t mismatches = 0;
  for (float x : inputs) {
    const std::uint8_t got = float_to_e4m3_bits(x);
    const std::uint8_t want = e4m3_expected(x);
    if (got != want && ++mismatches <= 5) {
      ADD_FAILURE() << "e4m3(" << x << ") = 0x" << std::hex << int{got} << ", expected 0x" << int{want};
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(float_to_e4m3_bits(448.0f), 0x7e);
  EXPECT_EQ(float_to_e4m3_bits(1e9f), 0x7e);
  EXPECT_EQ(float_to_e4m3_bits(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_EQ(float_to_e4m3_bits(std::numeric_limits<float>::quiet_NaN()), 0x7f);
  EXPECT_EQ(float_to_e4m3_bits(0.0009765625f), 0x00);  // 2^-10: tie between 0 and 2^-9, to even 0
  EXPECT_EQ(float_to_e4m3_bits(0.0029296875f), 0x02);  // 1.5 * 2^-9: tie between codes 1 and 2, to 2
}

// ---- the append fixture ------------------------------------------------------------------------

struct Case {
  RopeSpec spec;
  DType act = DType::bf16;
  CacheDType cache = CacheDType::bf16;
  CacheLayout layout = CacheLayout::paged_nhd;
  std::int64_t tokens = 7;
  std::int64_t q_heads = 4;
  std::int64_t kv_heads = 2;
  std::int64_t blocks = 4;
  std::int64_t block_len = 4;
  std::vector<std::int64_t> slots;  // empty: a default mix of scattered slots and -1
  bool out_of_place = false;
  float k_scale = 1.0f;
  float v_scale = 1.0f;
  bool q_out = false;     ///< Q written quantized into a q_out buffer (the cache's dtype) instead of in place
  float q_scale = 1.0f;
  int threads = 2;
  std::uint64_t seed = 1;
};

/// q_out's layout in the tests: Q's heads, with 16 poisoned elements between tokens.
constexpr std::int64_t q_out_gap = 16;

/// The q_out image an append must leave: `image` (the poison) with every token's rotated Q (`q`,
/// dense, as apply rotates it) cast element by element by the test's own encoders.
std::vector<std::byte> expected_q_out(const ConstTensorView& q, CacheDType dtype, float scale,
                                      std::vector<std::byte> image) {
  const std::int64_t elem = size_of(dtype);
  const std::int64_t act = size_of(q.dtype);
  const std::int64_t ts = q.heads * q.head_dim + q_out_gap;
  for (std::int64_t t = 0; t < q.tokens; ++t) {
    for (std::int64_t h = 0; h < q.heads; ++h) {
      for (std::int64_t d = 0; d < q.head_dim; ++d) {
        std::uint32_t bits = 0;
        std::memcpy(&bits, static_cast<const std::byte*>(q.data) + ((t * q.heads + h) * q.head_dim + d) * act,
                    static_cast<std::size_t>(act));
        const std::uint32_t out = cast_bits(q.dtype, bits, dtype, scale);
        std::memcpy(image.data() + (t * ts + h * q.head_dim + d) * elem, &out, static_cast<std::size_t>(elem));
      }
    }
  }
  return image;
}

std::string name_of(const Case& c) {
  return case_name(c.spec, c.act) + " -> " + to_string(c.cache) + " " + to_string(c.layout) +
         (c.q_out ? " q_out" : c.out_of_place ? " out of place" : " in place");
}

/// Runs `c` through CpuEngine::append and append_reference, and checks Q against apply's Q, the
/// cache against apply's K and V cast by the test's encoders (every other byte untouched), and
/// that K and V (and q_src) were not written.
void run_case(const Case& c) {
  SCOPED_TRACE(name_of(c));
  const std::int64_t d = c.spec.head_dim;
  std::vector<std::int64_t> slots = c.slots;
  if (slots.empty()) {
    const std::int64_t capacity = c.blocks * c.block_len;
    for (std::int64_t t = 0; t < c.tokens; ++t) slots.push_back(t % 3 == 1 ? -1 : (t * 5 + 3) % capacity);
  }
  ASSERT_EQ(static_cast<std::int64_t>(slots.size()), c.tokens);
  HostTensor q_in(c.act, c.tokens, c.q_heads, d);
  HostTensor k(c.act, c.tokens, c.kv_heads, d, /*token_stride=*/c.kv_heads * d + 8);  // strided, poisoned gaps
  HostTensor v(c.act, c.tokens, c.kv_heads, d);
  fill_random(q_in.view, c.seed);
  fill_random(k.view, c.seed + 1);
  fill_random(v.view, c.seed + 2);
  const HostPositions positions(c.spec, random_positions(c.tokens, 4096, c.seed + 3));

  // What apply produces for Q and K (in place on copies).
  HostTensor q_want(c.act, c.tokens, c.q_heads, d);
  HostTensor k_want(c.act, c.tokens, c.kv_heads, d, c.kv_heads * d + 8);
  std::memcpy(q_want.buffer.data(), q_in.buffer.data(), static_cast<std::size_t>(q_in.buffer.size()));
  std::memcpy(k_want.buffer.data(), k.buffer.data(), static_cast<std::size_t>(k.buffer.size()));
  const CpuEngine engine(c.spec, CpuOptions{c.threads});
  engine.apply(RopeArgs{q_want.view, k_want.view, {}, {}, positions.view(), {}});

  // The expected cache image: poison, then each slotted token's rows.
  HostCache reference_cache(c.cache, c.layout, c.kv_heads, d, c.blocks, c.block_len);
  reference_cache.view.k_scale = c.k_scale;
  reference_cache.view.v_scale = c.v_scale;
  const CacheImage want = expected_cache(reference_cache, k_want.cview(), v.cview(), slots);

  const auto k_before = k.buffer.snapshot();
  const auto v_before = v.buffer.snapshot();
  for (bool use_engine : {true, false}) {
    SCOPED_TRACE(use_engine ? "CpuEngine::append" : "append_reference");
    HostCache cache(c.cache, c.layout, c.kv_heads, d, c.blocks, c.block_len);
    cache.view.k_scale = c.k_scale;
    cache.view.v_scale = c.v_scale;
    HostTensor q(c.act, c.tokens, c.q_heads, d);
    std::memcpy(q.buffer.data(), q_in.buffer.data(), static_cast<std::size_t>(q_in.buffer.size()));
    AppendArgs args;
    if (c.out_of_place) {
      q = HostTensor(c.act, c.tokens, c.q_heads, d);  // poisoned output
      args.q_src = q_in.cview();
    }
    args.q = q.view;
    args.k = k.cview();
    args.v = v.cview();
    args.positions = positions.view();
    args.slots = slots.data();
    args.cache = cache.view;
    // q_out: poisoned, Q's heads with gaps between tokens; Q itself must stay as it was.
    const std::int64_t q_out_elem = size_of(c.cache);
    std::vector<std::byte> q_out(
        static_cast<std::size_t>(((c.tokens - 1) * (c.q_heads * d + q_out_gap) + c.q_heads * d) * q_out_elem),
        std::byte{0xa5});
    const std::vector<std::byte> q_out_poison = q_out;
    if (c.q_out) {
      args.q_out = QuantizedOutput{q_out.data(), c.cache, c.q_heads * d + q_out_gap, d, c.q_scale};
    }
    const auto q_in_before = q_in.buffer.snapshot();
    if (use_engine) {
      engine.append(args);
    } else {
      append_reference(c.spec, args);
    }
    if (c.q_out) {
      EXPECT_TRUE(bytes_equal(q_in_before, q.buffer)) << "q is the input with q_out: not written";
      EXPECT_TRUE(q_out == expected_q_out(q_want.cview(), c.cache, c.q_scale, q_out_poison))
          << "q_out: the rotated Q cast as the cache casts K";
    } else {
      EXPECT_TRUE(bits_equal(q_want.cview(), q.cview()));
    }
    EXPECT_TRUE(bytes_equal(want.k, cache.k));
    EXPECT_TRUE(bytes_equal(want.v, cache.v));
    EXPECT_TRUE(bytes_equal(k_before, k.buffer));
    EXPECT_TRUE(bytes_equal(v_before, v.buffer));
    if (c.out_of_place) {
      EXPECT_TRUE(bytes_equal(q_in_before, q_in.buffer));
    }
  }
}

Case base_case(DType act, CacheDType cache, CacheLayout layout) {
  Case c;
  c.spec = scheme_spec(Scaling::none, 64, 0, 0, Pairing::half_split, Numerics::hf_compatible);
  c.act = act;
  c.cache = cache;
  c.layout = layout;
  return c;
}

const std::vector<CacheLayout> all_layouts = {CacheLayout::contiguous, CacheLayout::paged_nhd,
                                              CacheLayout::paged_hnd};

TEST(KvAppend, SameDtypeEveryLayoutCopiesApplyBits) {
  for (CacheLayout layout : all_layouts) {
    for (DType act : all_dtypes) {
      const CacheDType cache = cache_dtype_of(act);
      run_case(base_case(act, cache, layout));
    }
  }
}

TEST(KvAppend, PairingsNumericsAndSchemes) {
  for (Pairing p : all_pairings) {
    for (Numerics n : all_numerics) {
      Case c = base_case(DType::bf16, CacheDType::bf16, CacheLayout::paged_hnd);
      c.spec = scheme_spec(Scaling::yarn, 64, 32, 16, p, n);  // partial window with an offset
      run_case(c);
    }
  }
  Case dynamic = base_case(DType::f16, CacheDType::f16, CacheLayout::contiguous);
  dynamic.spec = scheme_spec(Scaling::dynamic, 128);  // table depends on the call's positions
  run_case(dynamic);
}

TEST(KvAppend, GqaMqaAndOutOfPlaceQ) {
  for (std::int64_t kv_heads : {1, 2, 8}) {
    Case c = base_case(DType::bf16, CacheDType::bf16, CacheLayout::paged_nhd);
    c.q_heads = 8;
    c.kv_heads = kv_heads;
    c.out_of_place = kv_heads != 2;
    run_case(c);
  }
}

TEST(KvAppend, Casts) {
  const std::vector<std::pair<DType, CacheDType>> casts = {
      {DType::f32, CacheDType::bf16}, {DType::f32, CacheDType::f16}, {DType::bf16, CacheDType::f32},
      {DType::f16, CacheDType::bf16}, {DType::bf16, CacheDType::f16}};
  for (const auto& [act, cache] : casts) {
    for (CacheLayout layout : all_layouts) run_case(base_case(act, cache, layout));
  }
}

TEST(KvAppend, Fp8WithScales) {
  for (DType act : all_dtypes) {
    for (CacheLayout layout : all_layouts) {
      Case c = base_case(act, CacheDType::fp8_e4m3, layout);
      c.k_scale = 0.0078125f;  // x / scale reaches past 448: saturation is exercised
      c.v_scale = 0.3f;        // not a power of two: the division rounds
      run_case(c);
    }
  }
}

TEST(KvAppend, QuantizedQ) {
  // fp8 serving: Q into an fp8 q_out with its own scale, beside the fp8 cache; every activation
  // dtype, a paged and a contiguous cache, saturation (scale 2^-7) and a scale that rounds.
  for (DType act : all_dtypes) {
    for (CacheLayout layout : {CacheLayout::paged_nhd, CacheLayout::contiguous}) {
      for (float q_scale : {0.0078125f, 0.07f}) {
        Case c = base_case(act, CacheDType::fp8_e4m3, layout);
        c.q_out = true;
        c.q_scale = q_scale;
        c.k_scale = 0.25f;
        c.v_scale = 0.3f;
        run_case(c);
      }
    }
  }
  // A partial window with an offset (the pass-through dims are cast too), every pairing.
  for (Pairing p : all_pairings) {
    Case c = base_case(DType::bf16, CacheDType::fp8_e4m3, CacheLayout::paged_hnd);
    c.spec = scheme_spec(Scaling::yarn, 64, 32, 16, p, Numerics::hf_compatible);
    c.q_out = true;
    c.q_scale = 0.5f;
    run_case(c);
  }
  // Not only fp8: a bf16 cache of float32 activations takes a bf16 q_out (scale 1).
  Case cast = base_case(DType::f32, CacheDType::bf16, CacheLayout::paged_nhd);
  cast.q_out = true;
  run_case(cast);
}

/// Per-head fp8 scales (KvCacheView::k_head_scales, v_head_scales, QuantizedOutput::head_scales):
/// every head's cache rows and q_out rows equal those of a per-tensor call with that head's scale,
/// for both entry points and every cache layout with heads.
TEST(KvAppend, PerHeadFp8ScalesActAsEachHeadsOwnScale) {
  const RopeSpec spec = scheme_spec(Scaling::none, 32);
  const std::int64_t tokens = 5, q_heads = 4, kv_heads = 2, d = 32, blocks = 2, block_len = 4;
  const std::vector<float> k_scales = {0.25f, 3.0f}, v_scales = {0.5f, 7.0f}, q_scales = {0.1f, 0.2f, 0.3f, 0.4f};
  HostTensor q(DType::bf16, tokens, q_heads, d), k(DType::bf16, tokens, kv_heads, d), v(DType::bf16, tokens, kv_heads, d);
  fill_random(q.view, 61);
  fill_random(k.view, 62);
  fill_random(v.view, 63);
  const HostPositions positions(std::vector<std::int64_t>{0, 7, 3, 100, 2});
  const std::vector<std::int64_t> slots = {3, -1, 0, 6, 1};
  const std::int64_t q_out_bytes = tokens * q_heads * d;
  for (const CacheLayout layout : {CacheLayout::contiguous, CacheLayout::paged_nhd, CacheLayout::paged_hnd}) {
    // Where head h's element 0 of a slot lives, in elements (kv_cache.hpp's layouts).
    const auto row = [&](std::int64_t slot, std::int64_t h) {
      if (layout != CacheLayout::paged_hnd) return (slot * kv_heads + h) * d;
      const std::int64_t block = slot / block_len;
      return ((block * kv_heads + h) * block_len + slot % block_len) * d;
    };
    // Expected: for each head, a per-tensor call at its scales, and that head's rows taken from it.
    HostCache want(CacheDType::fp8_e4m3, layout, kv_heads, d, blocks, block_len);
    std::vector<std::byte> want_q(static_cast<std::size_t>(q_out_bytes), std::byte{0xa5});
    for (std::int64_t h = 0; h < q_heads; ++h) {
      HostCache one(CacheDType::fp8_e4m3, layout, kv_heads, d, blocks, block_len);
      one.view.k_scale = k_scales[static_cast<std::size_t>(h % kv_heads)];
      one.view.v_scale = v_scales[static_cast<std::size_t>(h % kv_heads)];
      std::vector<std::byte> one_q(static_cast<std::size_t>(q_out_bytes), std::byte{0xa5});
      AppendArgs a = append_args(q.view, k.cview(), v.cview(), positions.view(), slots.data(), one.view);
      a.q_out = QuantizedOutput{one_q.data(), CacheDType::fp8_e4m3, q_heads * d, d, q_scales[static_cast<std::size_t>(h)]};
      CpuEngine(spec, CpuOptions{1}).append(a);
      for (std::int64_t t = 0; t < tokens; ++t)
        std::copy_n(one_q.begin() + (t * q_heads + h) * d, d, want_q.begin() + (t * q_heads + h) * d);
      if (h >= kv_heads) continue;
      for (const std::int64_t slot : slots) {
        if (slot < 0) continue;
        std::memcpy(want.k.data() + row(slot, h), one.k.data() + row(slot, h), static_cast<std::size_t>(d));
        std::memcpy(want.v.data() + row(slot, h), one.v.data() + row(slot, h), static_cast<std::size_t>(d));
      }
    }
    for (const bool use_engine : {true, false}) {
      SCOPED_TRACE(std::string(to_string(layout)) + (use_engine ? " CpuEngine::append" : " append_reference"));
      HostCache cache(CacheDType::fp8_e4m3, layout, kv_heads, d, blocks, block_len);
      cache.view.k_head_scales = k_scales.data();
      cache.view.v_head_scales = v_scales.data();
      std::vector<std::byte> q_out(static_cast<std::size_t>(q_out_bytes), std::byte{0xa5});
      AppendArgs a = append_args(q.view, k.cview(), v.cview(), positions.view(), slots.data(), cache.view);
      a.q_out = QuantizedOutput{q_out.data(), CacheDType::fp8_e4m3, q_heads * d, d, 1.0f, q_scales.data()};
      if (use_engine) {
        CpuEngine(spec, CpuOptions{2}).append(a);
      } else {
        append_reference(spec, a);
      }
      EXPECT_TRUE(bytes_equal(want.k.snapshot(), cache.k)) << "K cache";
      EXPECT_TRUE(bytes_equal(want.v.snapshot(), cache.v)) << "V cache";
      EXPECT_TRUE(q_out == want_q) << "q_out";
    }
  }
}

TEST(KvAppend, AllPaddingWritesNothing) {
  Case c = base_case(DType::f32, CacheDType::f32, CacheLayout::paged_nhd);
  c.slots.assign(static_cast<std::size_t>(c.tokens), -1);
  run_case(c);  // the expected cache is the poison alone; Q is still rotated
}

TEST(KvAppend, ManyTokensUseThePool) {
  // 512 tokens x 8 heads x 128 f32: megabytes, above the engine's single-thread threshold.
  Case c = base_case(DType::f32, CacheDType::bf16, CacheLayout::paged_hnd);
  c.spec = scheme_spec(Scaling::llama3, 128);
  c.tokens = 512;
  c.q_heads = 8;
  c.kv_heads = 8;
  c.blocks = 40;
  c.block_len = 16;
  for (std::int64_t t = 0; t < c.tokens; ++t) c.slots.push_back(t % 17 == 0 ? -1 : (t * 7) % 640);
  run_case(c);
}

TEST(KvAppend, CountersReportTheOperationsTraffic) {
  // 5 tokens, Q [5, 4, 64] bf16 in place (rotary 32), K and V [5, 2, 64] bf16, fp8 cache.
  const RopeSpec spec = scheme_spec(Scaling::none, 64, 32, 0);
  HostTensor q(DType::bf16, 5, 4, 64);
  HostTensor k(DType::bf16, 5, 2, 64);
  HostTensor v(DType::bf16, 5, 2, 64);
  fill_random(q.view, 1);
  fill_random(k.view, 2);
  fill_random(v.view, 3);
  const HostPositions positions(std::vector<std::int64_t>{0, 1, 2, 3, 4});
  const std::vector<std::int64_t> slots{0, -1, 2, 3, 4};
  HostCache cache(CacheDType::fp8_e4m3, CacheLayout::paged_nhd, 2, 64, 2, 4);
  AppendArgs a = append_args(q.view, k.cview(), v.cview(), positions.view(), slots.data(), cache.view);
  const CpuEngine engine(spec, CpuOptions{1});
  engine.enable_counters(true);
  engine.append(a);
  const OperationCounters c = engine.counters();
  EXPECT_EQ(c.calls, 1);
  EXPECT_EQ(c.tokens, 5);
  // Q's rotary window read and written; K and V read whole (2 bytes), cache rows written (1 byte).
  EXPECT_EQ(c.bytes, 2 * 5 * 4 * 32 * 2 + 5 * 2 * 64 * 2 * (2 + 1));
  EXPECT_EQ(c.timed_calls, 0);
}

// ---- errors: a clear message, and nothing written ----------------------------------------------

struct ErrorFixture {
  RopeSpec spec = scheme_spec(Scaling::none, 32);
  HostTensor q{DType::bf16, 3, 4, 32};
  HostTensor k{DType::bf16, 3, 2, 32};
  HostTensor v{DType::bf16, 3, 2, 32};
  HostPositions positions{std::vector<std::int64_t>{0, 1, 2}};
  std::vector<std::int64_t> slots{0, 5, -1};
  HostCache cache{CacheDType::fp8_e4m3, CacheLayout::paged_nhd, 2, 32, 2, 4};

  ErrorFixture() {
    fill_random(q.view, 11);
    fill_random(k.view, 12);
    fill_random(v.view, 13);
  }

  AppendArgs args() {
    AppendArgs a = append_args(q.view, k.cview(), v.cview(), positions.view(), slots.data(), cache.view);
    return a;
  }

  /// Both entry points throw `kind` with every part in the message, and write nothing.
  void expect_rejected(const AppendArgs& a, ErrorKind kind, const std::vector<std::string>& parts) {
    const CpuEngine engine(spec, CpuOptions{2});
    const std::vector<std::vector<std::byte>> before = {q.buffer.snapshot(), k.buffer.snapshot(),
                                                        v.buffer.snapshot(), cache.k.snapshot(),
                                                        cache.v.snapshot()};
    EXPECT_TRUE(throws_error([&] { engine.append(a); }, kind, parts));
    EXPECT_TRUE(throws_error([&] { append_reference(spec, a); }, kind, parts));
    EXPECT_TRUE(throws_error([&] { validate_append_args(spec, a); }, kind, parts));
    EXPECT_TRUE(bytes_equal(before[0], q.buffer));
    EXPECT_TRUE(bytes_equal(before[1], k.buffer));
    EXPECT_TRUE(bytes_equal(before[2], v.buffer));
    EXPECT_TRUE(bytes_equal(before[3], cache.k));
    EXPECT_TRUE(bytes_equal(before[4], cache.v));
  }
};

TEST(KvAppendErrors, ValidCallOfTheFixtureSucceeds) {
  // The error cases below differ from this call in one field each.
  ErrorFixture f;
  f.cache.view.k_scale = 0.5f;
  const AppendArgs a = f.args();
  EXPECT_NO_THROW(append_reference(f.spec, a));
  EXPECT_NO_THROW(CpuEngine(f.spec, CpuOptions{2}).append(a));
}

TEST(KvAppendErrors, SlotOutOfRange) {
  ErrorFixture f;
  f.slots = {0, 8, -1};  // 2 blocks x 4 = 8 slots
  f.expect_rejected(f.args(), ErrorKind::out_of_range, {"slot 8", "token index 1", "[0, 8)"});
  f.slots = {0, 1, -2};
  f.expect_rejected(f.args(), ErrorKind::out_of_range, {"slot -2", "token index 2", "[0, 8)"});
}

TEST(KvAppendErrors, DuplicateSlot) {
  ErrorFixture f;
  f.slots = {6, 2, 6};
  f.expect_rejected(f.args(), ErrorKind::invalid_argument, {"slot 6", "token index 0", "token index 2"});
}

TEST(KvAppendErrors, WrongHeadsAndShapes) {
  ErrorFixture f;
  AppendArgs a = f.args();
  a.cache.kv_heads = 4;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"k heads 2", "cache.kv_heads 4"});
  a = f.args();
  a.v.heads = 1;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"v heads 1", "cache.kv_heads 2"});
  a = f.args();
  a.cache.head_dim = 64;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"cache.head_dim 64", "spec.head_dim 32"});
  a = f.args();
  a.v.dtype = DType::f16;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"v dtype float16", "k dtype bfloat16"});
  a = f.args();
  a.k = ConstTensorView();
  f.expect_rejected(a, ErrorKind::invalid_argument, {"k is absent"});
  a = f.args();
  a.slots = nullptr;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"slots is null"});
  a = f.args();
  a.cache.blocks = 0;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"cache.blocks 0"});
}

TEST(KvAppendErrors, BadScale) {
  ErrorFixture f;
  for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    AppendArgs a = f.args();
    a.cache.v_scale = bad;
    f.expect_rejected(a, ErrorKind::invalid_argument, {"cache.v_scale", "finite and > 0"});
  }
  // A bf16 cache of one block fits the fp8 cache's bytes; a scale there would be silently ignored.
  AppendArgs a = f.args();
  a.cache.dtype = CacheDType::bf16;
  a.cache.blocks = 1;
  std::vector<std::int64_t> slots = {0, 1, -1};
  a.slots = slots.data();
  a.cache.k_scale = 2.0f;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"cache.k_scale", "must be 1", "bfloat16"});
}

TEST(KvAppendErrors, CacheOverlappingInputs) {
  ErrorFixture f;
  AppendArgs a = f.args();
  a.cache.v = a.cache.k;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"cache.k and cache.v", "overlap"});
  // A cache laid over V (the rows of 2 tokens fit in it): V would be overwritten while read.
  a = f.args();
  a.cache.v = f.v.buffer.data();
  a.cache.dtype = CacheDType::bf16;
  a.cache.blocks = 1;
  a.cache.block_len = 2;
  std::vector<std::int64_t> slots = {0, 1, -1};
  a.slots = slots.data();
  f.expect_rejected(a, ErrorKind::invalid_argument, {"cache.v", "overlaps v"});
}

TEST(KvAppendErrors, QuantizedQ) {
  ErrorFixture f;  // an fp8 cache
  std::vector<std::byte> out(static_cast<std::size_t>(3 * 4 * 32), std::byte{0});
  const auto with_q_out = [&](float scale = 0.5f) {
    AppendArgs a = f.args();
    a.q_out = QuantizedOutput{out.data(), CacheDType::fp8_e4m3, 4 * 32, 32, scale};
    return a;
  };
  EXPECT_NO_THROW(CpuEngine(f.spec, CpuOptions{2}).append(with_q_out()));
  AppendArgs a = with_q_out();
  a.q_src = f.q.cview();
  f.expect_rejected(a, ErrorKind::invalid_argument, {"q_src is present with q_out", "q is the input"});
  a = with_q_out();
  a.q_out.dtype = CacheDType::bf16;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"q_out.dtype bfloat16", "cache.dtype float8_e4m3fn"});
  for (float bad : {0.0f, -2.0f, std::numeric_limits<float>::quiet_NaN()}) {
    f.expect_rejected(with_q_out(bad), ErrorKind::invalid_argument, {"q_out.scale", "finite and > 0"});
  }
  a = with_q_out();
  a.q_out.head_stride = 16;  // heads of 32 elements 16 apart
  f.expect_rejected(a, ErrorKind::invalid_argument, {"q_out overlaps itself"});
  a = with_q_out();
  a.q_out.data = f.k.buffer.data();  // written while K is read
  f.expect_rejected(a, ErrorKind::invalid_argument, {"q_out", "overlaps k"});
  a = with_q_out();
  a.q_out.data = f.cache.k.data();
  f.expect_rejected(a, ErrorKind::invalid_argument, {"cache.k", "overlaps q_out"});
  // The slots inside q_out's 384 bytes: they are read while q_out is written.
  std::vector<std::int64_t> shared(48 + 3);
  std::copy(f.slots.begin(), f.slots.end(), shared.begin() + 8);
  a = with_q_out();
  a.q_out.data = shared.data();
  a.slots = shared.data() + 8;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"q_out", "overlaps slots"});
}

TEST(KvAppendErrors, PerHeadScales) {
  ErrorFixture f;  // an fp8 paged cache of 2 KV heads; Q has 4 heads
  std::vector<float> k_scales = {0.5f, 2.0f}, v_scales = {1.5f, 0.25f}, q_scales = {1.0f, 2.0f, 3.0f, 4.0f};
  std::vector<std::byte> out(static_cast<std::size_t>(3 * 4 * 32), std::byte{0});
  const auto with_scales = [&] {
    AppendArgs a = f.args();
    a.cache.k_head_scales = k_scales.data();
    a.cache.v_head_scales = v_scales.data();
    a.q_out = QuantizedOutput{out.data(), CacheDType::fp8_e4m3, 4 * 32, 32, 1.0f, q_scales.data()};
    return a;
  };
  EXPECT_NO_THROW(CpuEngine(f.spec, CpuOptions{2}).append(with_scales()));
  for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    v_scales[1] = bad;
    f.expect_rejected(with_scales(), ErrorKind::invalid_argument, {"cache.v_head_scales[1]", "finite and > 0"});
  }
  v_scales[1] = 0.25f;
  q_scales[3] = -4.0f;
  f.expect_rejected(with_scales(), ErrorKind::invalid_argument, {"q_out.head_scales[3] = -4", "finite and > 0"});
  q_scales[3] = 4.0f;
  AppendArgs a = with_scales();
  a.cache.k_scale = 0.5f;  // the per-tensor scale beside per-head ones: which one applies?
  f.expect_rejected(a, ErrorKind::invalid_argument, {"cache.k_scale", "must be 1 when cache.k_head_scales is set"});
  a = with_scales();
  a.q_out.scale = 2.0f;
  f.expect_rejected(a, ErrorKind::invalid_argument, {"q_out.scale", "must be 1 when q_out.head_scales is set"});
  // A bf16 cache (one block fits the fp8 cache's bytes): per-head scales would be ignored.
  a = with_scales();
  a.q_out = QuantizedOutput{};
  a.cache.dtype = CacheDType::bf16;
  a.cache.blocks = 1;
  std::vector<std::int64_t> slots = {0, 1, -1};
  a.slots = slots.data();
  f.expect_rejected(a, ErrorKind::invalid_argument, {"cache.k_head_scales is set", "fp8_e4m3", "bfloat16"});
  // The scales inside the cache: the cache is written while they are read.
  a = with_scales();
  a.cache.v_head_scales = reinterpret_cast<const float*>(f.cache.v.data());
  f.expect_rejected(a, ErrorKind::invalid_argument, {"cache.v", "overlaps cache.v_head_scales"});
}

// ---- slots_from_block_table --------------------------------------------------------------------

TEST(SlotsFromBlockTable, HandComputedExample) {
  // Two sequences, two blocks each, page_size 4, 8 blocks in the cache.
  const std::vector<std::int64_t> table = {7, 2,   // sequence 0: positions 0-3 in block 7, 4-7 in block 2
                                           5, 0};  // sequence 1: positions 0-3 in block 5, 4-7 in block 0
  const std::vector<std::int64_t> seq = {0, 1, -1, 0, 1};
  const std::vector<std::int64_t> pos = {5, 0, 0, 3, 7};
  const std::vector<std::int64_t> slots = slots_from_block_table(table, 2, seq, pos, 4, 8);
  // (0, 5): block 2 offset 1 = 9; (1, 0): block 5 offset 0 = 20; padding; (0, 3): 7*4+3 = 31; (1, 7): 0*4+3 = 3
  EXPECT_EQ(slots, (std::vector<std::int64_t>{9, 20, -1, 31, 3}));
}

TEST(SlotsFromBlockTable, Errors) {
  const std::vector<std::int64_t> table = {7, 2, 5, 8};
  const std::vector<std::int64_t> one = {0};
  expect_error([&] { slots_from_block_table(table, 2, std::vector<std::int64_t>{1}, std::vector<std::int64_t>{6}, 4, 8); },
               ErrorKind::out_of_range, {"block id 8", "block_table[1][1]", "token index 0", "[0, 8)"});
  expect_error([&] { slots_from_block_table(table, 2, std::vector<std::int64_t>{2}, one, 4, 8); },
               ErrorKind::out_of_range, {"token_seq 2", "[0, 2)"});
  expect_error([&] { slots_from_block_table(table, 2, one, std::vector<std::int64_t>{8}, 4, 8); },
               ErrorKind::out_of_range, {"token_pos 8", "[0, 8)"});
  expect_error([&] { slots_from_block_table(table, 3, one, one, 4, 8); }, ErrorKind::invalid_argument,
               {"block_table size 4", "blocks_per_seq 3"});
  expect_error([&] { slots_from_block_table(table, 2, one, std::vector<std::int64_t>{}, 4, 8); },
               ErrorKind::invalid_argument, {"token_seq has 1", "token_pos has 0"});
}

}  // namespace
}  // namespace posenc::test

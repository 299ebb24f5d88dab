// GPU fused RoPE + KV-cache append: Q and cache against the GPU's own rotation cast by the test's encoders and against CpuEngine::append, in every layout, cast, pairing and numerics; the fp8 encoder on every 16-bit input; padding, bad slots, host validation, graphs, counters.
//
// Two oracles. (1) GpuEngine::apply (tested against the CPU engine in test_gpu_engine) rotates
// copies of Q and K; the expected cache is that K and the input V cast by the test's own encoders
// (tests/support/kv_image.hpp) into a poisoned image, so every numerics mode is checked bit for
// bit, `accurate` included. (2) For the hf numerics, CpuEngine::append on the same inputs must
// produce the very same bytes. Every byte outside the rows written must stay poisoned, and the
// inputs K, V (and q_src) must be unchanged.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gpu/check.hpp"
#include "gpu/vendor.hpp"
#include "gpu_support.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"
#include "posenc/kv_cache.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/kv_image.hpp"
#include "support/specs.hpp"

namespace posenc::test {
namespace {

using gpu::GpuEngine;

class GpuAppend : public GpuTest {};

struct Case {
  RopeSpec spec;
  DType act = DType::bf16;
  CacheDType cache = CacheDType::bf16;
  CacheLayout layout = CacheLayout::paged_nhd;
  std::int64_t tokens = 13;
  std::int64_t q_heads = 4;
  std::int64_t kv_heads = 2;
  std::int64_t blocks = 6;
  std::int64_t block_len = 4;
  std::vector<std::int64_t> slots;  ///< empty: scattered slots with some -1
  bool out_of_place = false;
  /// Odd strides for K and V: the launcher must fall back to the one-element instantiation.
  bool unaligned = false;
  float k_scale = 1.0f;
  float v_scale = 1.0f;
  std::uint64_t seed = 1;
};

std::string name_of(const Case& c) {
  return case_name(c.spec, c.act) + " -> " + to_string(c.cache) + " " + to_string(c.layout) +
         (c.out_of_place ? " out of place" : " in place") + (c.unaligned ? " unaligned" : "");
}

/// A device copy of a host cache (both tensors), and its view.
struct DeviceCache {
  DeviceMirror k;
  DeviceMirror v;
  KvCacheView view;
  DeviceCache(const gpu::Device& device, const HostCache& host, gpu::StreamRef stream)
      : k(device, host.k, stream), v(device, host.v, stream), view(host.view) {
    view.k = k.map(host.k.data());
    view.v = v.map(host.v.data());
  }
};

gpu::DeviceBuffer upload_slots(const gpu::Device& device, const std::vector<std::int64_t>& slots,
                               gpu::StreamRef stream) {
  gpu::DeviceBuffer b(device, static_cast<std::int64_t>(slots.size() * sizeof(std::int64_t)) + 8);
  b.upload(slots.data(), static_cast<std::int64_t>(slots.size() * sizeof(std::int64_t)), stream);
  stream.synchronize();
  return b;
}

std::vector<std::int64_t> slots_of(const Case& c) {
  if (!c.slots.empty()) return c.slots;
  std::vector<std::int64_t> slots;
  const std::int64_t capacity = c.blocks * c.block_len;
  // Distinct while tokens <= capacity (7 is coprime to every capacity used here).
  for (std::int64_t t = 0; t < c.tokens; ++t) slots.push_back(t % 5 == 2 ? -1 : (t * 7 + 3) % capacity);
  return slots;
}

void run_case(const gpu::Device& device, gpu::StreamRef stream, const Case& c) {
  SCOPED_TRACE(name_of(c));
  const std::int64_t d = c.spec.head_dim;
  const std::vector<std::int64_t> slots = slots_of(c);
  ASSERT_EQ(static_cast<std::int64_t>(slots.size()), c.tokens);
  const std::int64_t pad = c.unaligned ? 1 : 8;
  HostTensor q_in(c.act, c.tokens, c.q_heads, d);
  HostTensor k(c.act, c.tokens, c.kv_heads, d, c.kv_heads * d + pad);
  HostTensor v(c.act, c.tokens, c.kv_heads, d, c.kv_heads * d + 3 * pad);
  fill_random(q_in.view, c.seed);
  fill_random(k.view, c.seed + 1);
  fill_random(v.view, c.seed + 2);
  const HostPositions positions(c.spec, random_positions(c.tokens, 4096, c.seed + 3));
  const DevicePositions d_positions(device, positions, stream);
  const gpu::DeviceBuffer d_slots = upload_slots(device, slots, stream);
  const GpuEngine engine(c.spec, device);

  // Oracle 1: the GPU's own rotation of Q and K, and the cast of K and V into a poisoned image.
  HostTensor q_want(c.act, c.tokens, c.q_heads, d);
  HostTensor k_want(c.act, c.tokens, c.kv_heads, d, c.kv_heads * d + pad);
  {
    DeviceMirror dq(device, q_in.buffer, stream);
    DeviceMirror dk(device, k.buffer, stream);
    engine.apply(RopeArgs{dq.map(q_in.view), dk.map(k.view), {}, {}, d_positions.view, {}}, stream);
    engine.check(stream);
    dq.download(q_want.buffer, stream);
    dk.download(k_want.buffer, stream);
  }
  HostCache poisoned(c.cache, c.layout, c.kv_heads, d, c.blocks, c.block_len);
  poisoned.view.k_scale = c.k_scale;
  poisoned.view.v_scale = c.v_scale;
  const CacheImage want = expected_cache(poisoned, k_want.cview(), v.cview(), slots);

  // Oracle 2 (hf numerics): the CPU engine's append gives the same bytes.
  if (c.spec.numerics != Numerics::accurate) {
    HostCache cpu_cache(c.cache, c.layout, c.kv_heads, d, c.blocks, c.block_len);
    cpu_cache.view.k_scale = c.k_scale;
    cpu_cache.view.v_scale = c.v_scale;
    HostTensor q_cpu(c.act, c.tokens, c.q_heads, d);
    std::memcpy(q_cpu.buffer.data(), q_in.buffer.data(), static_cast<std::size_t>(q_in.buffer.size()));
    AppendArgs a = append_args(q_cpu.view, k.cview(), v.cview(), positions.view(), slots.data(), cpu_cache.view);
    CpuEngine(c.spec, CpuOptions{2}).append(a);
    EXPECT_TRUE(bits_equal(q_want.cview(), q_cpu.cview())) << "GPU apply and CPU append rotate Q differently";
    EXPECT_TRUE(bytes_equal(want.k, cpu_cache.k)) << "CPU append's K cache differs from the oracle";
    EXPECT_TRUE(bytes_equal(want.v, cpu_cache.v)) << "CPU append's V cache differs from the oracle";
  }

  // The GPU append.
  HostCache host_cache(c.cache, c.layout, c.kv_heads, d, c.blocks, c.block_len);
  host_cache.view.k_scale = c.k_scale;
  host_cache.view.v_scale = c.v_scale;
  DeviceCache cache(device, host_cache, stream);
  DeviceMirror dq_in(device, q_in.buffer, stream);
  DeviceMirror dk(device, k.buffer, stream);
  DeviceMirror dv(device, v.buffer, stream);
  HostTensor q_out(c.act, c.tokens, c.q_heads, d);  // poisoned destination when out of place
  DeviceMirror dq_out(device, q_out.buffer, stream);
  AppendArgs a;
  if (c.out_of_place) {
    a.q = dq_out.map(q_out.view);
    a.q_src = dq_in.map(q_in.cview());
  } else {
    a.q = dq_in.map(q_in.view);
  }
  a.k = dk.map(k.cview());
  a.v = dv.map(v.cview());
  a.positions = d_positions.view;
  a.slots = static_cast<const std::int64_t*>(d_slots.data());
  a.cache = cache.view;
  engine.append(a, stream);
  engine.check(stream);

  HostTensor q_got(c.act, c.tokens, c.q_heads, d);
  (c.out_of_place ? dq_out : dq_in).download(q_got.buffer, stream);
  EXPECT_TRUE(bits_equal(q_want.cview(), q_got.cview())) << "Q";
  cache.k.download(host_cache.k, stream);
  cache.v.download(host_cache.v, stream);
  EXPECT_TRUE(bytes_equal(want.k, host_cache.k)) << "K cache";
  EXPECT_TRUE(bytes_equal(want.v, host_cache.v)) << "V cache";
  HostTensor k_after(c.act, c.tokens, c.kv_heads, d, c.kv_heads * d + pad);
  HostTensor v_after(c.act, c.tokens, c.kv_heads, d, c.kv_heads * d + 3 * pad);
  dk.download(k_after.buffer, stream);
  dv.download(v_after.buffer, stream);
  EXPECT_TRUE(bytes_equal(k.buffer.snapshot(), k_after.buffer)) << "K input was written";
  EXPECT_TRUE(bytes_equal(v.buffer.snapshot(), v_after.buffer)) << "V input was written";
  if (c.out_of_place) {
    HostTensor q_src_after(c.act, c.tokens, c.q_heads, d);
    dq_in.download(q_src_after.buffer, stream);
    EXPECT_TRUE(bytes_equal(q_in.buffer.snapshot(), q_src_after.buffer)) << "q_src was written";
  }
}

Case base_case(DType act, CacheDType cache, CacheLayout layout) {
  Case c;
  c.spec = exact_arithmetic(scheme_spec(Scaling::none, 128, 0, 0, Pairing::half_split, Numerics::hf_compatible));
  c.act = act;
  c.cache = cache;
  c.layout = layout;
  return c;
}

const std::vector<CacheLayout> all_layouts = {CacheLayout::contiguous, CacheLayout::paged_nhd,
                                              CacheLayout::paged_hnd};

TEST_F(GpuAppend, SameDtypeEveryLayoutVectorizedAndNot) {
  for (CacheLayout layout : all_layouts) {
    for (DType act : all_dtypes) {
      for (bool unaligned : {false, true}) {
        Case c = base_case(act, cache_dtype_of(act), layout);
        c.unaligned = unaligned;
        run_case(device, ref(), c);
      }
    }
  }
}

TEST_F(GpuAppend, PairingsNumericsPartialWindows) {
  for (Pairing p : all_pairings) {
    for (Numerics n : all_numerics) {
      Case c = base_case(DType::bf16, CacheDType::bf16, CacheLayout::paged_hnd);
      c.spec = exact_arithmetic(scheme_spec(Scaling::yarn, 128, 64, 32, p, n));  // partial window with an offset
      c.out_of_place = n == Numerics::hf_fp32_apply;
      run_case(device, ref(), c);
    }
  }
}

TEST_F(GpuAppend, CallDependentTables) {
  for (Scaling s : {Scaling::dynamic, Scaling::longrope}) {
    Case c = base_case(DType::f16, CacheDType::f16, CacheLayout::contiguous);
    c.spec = exact_arithmetic(scheme_spec(s, 128));  // positions reach 4096: the call's own table
    run_case(device, ref(), c);
  }
}

TEST_F(GpuAppend, CastsAndFp8Scales) {
  const std::vector<std::pair<DType, CacheDType>> casts = {
      {DType::f32, CacheDType::bf16}, {DType::f32, CacheDType::f16}, {DType::bf16, CacheDType::f32},
      {DType::f16, CacheDType::bf16}, {DType::bf16, CacheDType::f16}};
  for (const auto& [act, cache] : casts) {
    for (CacheLayout layout : all_layouts) run_case(device, ref(), base_case(act, cache, layout));
  }
  for (DType act : all_dtypes) {
    for (CacheLayout layout : all_layouts) {
      for (bool unaligned : {false, true}) {
        Case c = base_case(act, CacheDType::fp8_e4m3, layout);
        c.k_scale = 0.0078125f;  // x / scale reaches past 448: saturation
        c.v_scale = 0.3f;        // not a power of two: the division rounds
        c.unaligned = unaligned;
        run_case(device, ref(), c);
      }
    }
  }
}

/// fp8 cache bytes: `gpu` equals `cpu` byte for byte, except that where the CPU wrote an fp8 NaN
/// (0x7f or 0xff: the input was a NaN) the GPU may write either: the NaN is the quotient x / scale,
/// and IEEE leaves the sign of a NaN an operation returns open (docs/NUMERICS.md §4; on an H100,
/// CUDA's division gives bf16's signalling NaNs sign 0). `nan_signs` counts those NaNs.
::testing::AssertionResult fp8_bytes_equal(const std::vector<std::byte>& cpu, const HostBuffer& gpu,
                                           std::int64_t& nan_signs) {
  if (static_cast<std::int64_t>(cpu.size()) != gpu.size()) return bytes_equal(cpu, gpu);
  nan_signs = 0;
  for (std::int64_t i = 0; i < gpu.size(); ++i) {
    const auto want = static_cast<unsigned>(cpu[static_cast<std::size_t>(i)]);
    const auto got = static_cast<unsigned>(gpu.data()[i]);
    if (want == got) continue;
    if ((want & 0x7fu) == 0x7fu && (got & 0x7fu) == 0x7fu) {
      ++nan_signs;
      continue;
    }
    std::ostringstream what;
    what << "byte " << i << " of " << gpu.size() << ": CPU 0x" << std::hex << want << ", GPU 0x" << got;
    return ::testing::AssertionFailure() << what.str();
  }
  return ::testing::AssertionSuccess();
}

/// The GPU's fp8 encoder (V rows are cast to the cache without rotation) against the CPU engine's
/// on every 16-bit input: V carries all 65536 bf16 (or f16) bit patterns, NaNs, infinities,
/// subnormals and both zeros included, divided by scales that keep them in range, push them past
/// 448 (saturation) and into e4m3's subnormals; the vectorized and the one-element paths. Every
/// byte equal, a NaN's sign excepted (fp8_bytes_equal).
TEST_F(GpuAppend, Fp8CacheEncodesEvery16BitValueAsTheCpuEngine) {
  const std::int64_t tokens = 64, q_heads = 2, kv_heads = 8, d = 128;  // 64 x 8 x 128 = 65536 V elements
  const RopeSpec spec = base_case(DType::bf16, CacheDType::fp8_e4m3, CacheLayout::paged_nhd).spec;
  std::vector<std::int64_t> slots(tokens);
  for (std::int64_t t = 0; t < tokens; ++t) slots[t] = (t * 7) % tokens;  // a permutation
  for (const DType act : {DType::bf16, DType::f16})
    for (const float v_scale : {1.0f, 0.3f, 0.0078125f, 4096.0f})
      for (const bool unaligned : {false, true}) {
        SCOPED_TRACE(std::string(to_string(act)) + " v_scale " + std::to_string(v_scale) +
                     (unaligned ? " unaligned" : " aligned"));
        const std::int64_t pad = unaligned ? 1 : 8;
        HostTensor q(act, tokens, q_heads, d), k(act, tokens, kv_heads, d, kv_heads * d + pad),
            v(act, tokens, kv_heads, d, kv_heads * d + pad);
        fill_random(q.view, 71);
        fill_random(k.view, 72);
        for (std::int64_t t = 0; t < tokens; ++t)
          for (std::int64_t e = 0; e < kv_heads * d; ++e) {
            const auto bits = static_cast<std::uint16_t>(t * kv_heads * d + e);
            std::memcpy(static_cast<std::byte*>(v.view.data) + (t * v.view.token_stride + e) * 2, &bits, 2);
          }
        const HostPositions positions(spec, random_positions(tokens, 4096, 73));

        HostCache cpu_cache(CacheDType::fp8_e4m3, CacheLayout::paged_nhd, kv_heads, d, tokens / 4, 4);
        cpu_cache.view.v_scale = v_scale;
        HostTensor q_cpu(act, tokens, q_heads, d);
        std::memcpy(q_cpu.view.data, q.view.data, static_cast<std::size_t>(q.buffer.size()));
        CpuEngine(spec).append(append_args(q_cpu.view, k.cview(), v.cview(), positions.view(), slots.data(), cpu_cache.view));

        HostCache host_cache(CacheDType::fp8_e4m3, CacheLayout::paged_nhd, kv_heads, d, tokens / 4, 4);
        host_cache.view.v_scale = v_scale;
        DeviceCache cache(device, host_cache, ref());
        DeviceMirror dq(device, q.buffer, ref()), dk(device, k.buffer, ref()), dv(device, v.buffer, ref());
        const DevicePositions d_positions(device, positions, ref());
        const gpu::DeviceBuffer d_slots = upload_slots(device, slots, ref());
        const GpuEngine engine(spec, device);
        engine.append(append_args(dq.map(q.view), dk.map(k.cview()), dv.map(v.cview()), d_positions.view,
                                  static_cast<const std::int64_t*>(d_slots.data()), cache.view),
                      ref());
        engine.check(ref());
        cache.v.download(host_cache.v, ref());
        std::int64_t nan_signs = 0;
        EXPECT_TRUE(fp8_bytes_equal(cpu_cache.v.snapshot(), host_cache.v, nan_signs)) << "V cache";
        // Only NaN inputs may differ, and only in sign: at most the NaN patterns of one sign, 127
        // in bf16 and 1023 in f16.
        EXPECT_LE(nan_signs, act == DType::bf16 ? 127 : 1023) << "V cache: NaNs whose sign differs";
        cache.k.download(host_cache.k, ref());
        EXPECT_TRUE(bytes_equal(cpu_cache.k.snapshot(), host_cache.k)) << "K cache";
      }
}

/// Per-head fp8 scales for run_q_out_case (empty: the per-tensor scales of the case).
struct HeadScales {
  std::vector<float> k, v, q;
};

/// AppendArgs::q_out: the GPU append with Q written quantized equals CpuEngine::append with the same
/// q_out (exact arithmetic): q_out's bytes (gaps between tokens stay poisoned), both caches, and Q
/// itself unchanged.
void run_q_out_case(const gpu::Device& device, gpu::StreamRef stream, const Case& c, float q_scale,
                    std::int64_t out_gap = 16, const HeadScales& heads = {}) {
  SCOPED_TRACE(name_of(c) + " q_out scale " + std::to_string(q_scale) + " gap " + std::to_string(out_gap) +
               (heads.k.empty() ? "" : " per-head scales"));
  const std::int64_t d = c.spec.head_dim;
  const std::vector<std::int64_t> slots = slots_of(c);
  const std::int64_t pad = c.unaligned ? 1 : 8;
  HostTensor q(c.act, c.tokens, c.q_heads, d, c.q_heads * d + pad);
  HostTensor k(c.act, c.tokens, c.kv_heads, d, c.kv_heads * d + pad);
  HostTensor v(c.act, c.tokens, c.kv_heads, d, c.kv_heads * d + 3 * pad);
  fill_random(q.view, c.seed);
  fill_random(k.view, c.seed + 1);
  fill_random(v.view, c.seed + 2);
  const HostPositions positions(c.spec, random_positions(c.tokens, 4096, c.seed + 3));
  const std::int64_t out_ts = c.q_heads * d + out_gap;  // poisoned elements between tokens
  const std::int64_t elem = size_of(c.cache);
  const std::int64_t out_bytes = ((c.tokens - 1) * out_ts + c.q_heads * d) * elem;

  // The CPU engine's append with q_out.
  HostBuffer cpu_out(out_bytes);
  cpu_out.poison();
  HostCache cpu_cache(c.cache, c.layout, c.kv_heads, d, c.blocks, c.block_len);
  cpu_cache.view.k_scale = c.k_scale;
  cpu_cache.view.v_scale = c.v_scale;
  AppendArgs a = append_args(q.view, k.cview(), v.cview(), positions.view(), slots.data(), cpu_cache.view);
  a.q_out = QuantizedOutput{cpu_out.data(), c.cache, out_ts, d, q_scale};
  const auto data_or_null = [](const std::vector<float>& s) { return s.empty() ? nullptr : s.data(); };
  a.cache.k_head_scales = data_or_null(heads.k);
  a.cache.v_head_scales = data_or_null(heads.v);
  a.q_out.head_scales = data_or_null(heads.q);
  CpuEngine(c.spec, CpuOptions{2}).append(a);

  // The GPU append with q_out.
  const DevicePositions d_positions(device, positions, stream);
  const gpu::DeviceBuffer d_slots = upload_slots(device, slots, stream);
  HostCache host_cache(c.cache, c.layout, c.kv_heads, d, c.blocks, c.block_len);
  host_cache.view.k_scale = c.k_scale;
  host_cache.view.v_scale = c.v_scale;
  DeviceCache cache(device, host_cache, stream);
  DeviceMirror dq(device, q.buffer, stream);
  DeviceMirror dk(device, k.buffer, stream);
  DeviceMirror dv(device, v.buffer, stream);
  HostBuffer gpu_out(out_bytes);
  gpu_out.poison();
  DeviceMirror d_out(device, gpu_out, stream);
  AppendArgs g = append_args(dq.map(q.view), dk.map(k.cview()), dv.map(v.cview()), d_positions.view,
                             static_cast<const std::int64_t*>(d_slots.data()), cache.view);
  g.q_out = QuantizedOutput{d_out.map(gpu_out.data()), c.cache, out_ts, d, q_scale};
  // The per-head scales in device memory.
  const auto device_scales = [&](const std::vector<float>& s) {
    gpu::DeviceBuffer b(device, static_cast<std::int64_t>(std::max<std::size_t>(s.size(), 1) * sizeof(float)));
    if (!s.empty()) b.upload(s.data(), static_cast<std::int64_t>(s.size() * sizeof(float)), stream);
    return b;
  };
  const gpu::DeviceBuffer d_k_scales = device_scales(heads.k), d_v_scales = device_scales(heads.v),
                          d_q_scales = device_scales(heads.q);
  if (!heads.k.empty()) g.cache.k_head_scales = static_cast<const float*>(d_k_scales.data());
  if (!heads.v.empty()) g.cache.v_head_scales = static_cast<const float*>(d_v_scales.data());
  if (!heads.q.empty()) g.q_out.head_scales = static_cast<const float*>(d_q_scales.data());
  const GpuEngine engine(c.spec, device);
  engine.append(g, stream);
  engine.check(stream);

  d_out.download(gpu_out, stream);
  EXPECT_TRUE(bytes_equal(cpu_out.snapshot(), gpu_out)) << "q_out";
  cache.k.download(host_cache.k, stream);
  cache.v.download(host_cache.v, stream);
  EXPECT_TRUE(bytes_equal(cpu_cache.k.snapshot(), host_cache.k)) << "K cache";
  EXPECT_TRUE(bytes_equal(cpu_cache.v.snapshot(), host_cache.v)) << "V cache";
  HostTensor q_after(c.act, c.tokens, c.q_heads, d, c.q_heads * d + pad);
  dq.download(q_after.buffer, stream);
  EXPECT_TRUE(bytes_equal(q.buffer.snapshot(), q_after.buffer)) << "Q was written (it is only read with q_out)";
}

TEST_F(GpuAppend, QuantizedQEqualsCpuEngine) {
  for (DType act : all_dtypes) {
    for (bool unaligned : {false, true}) {
      for (float q_scale : {0.0078125f, 0.07f}) {
        Case c = base_case(act, CacheDType::fp8_e4m3, CacheLayout::paged_nhd);
        c.k_scale = 0.25f;
        c.v_scale = 0.3f;
        c.unaligned = unaligned;
        run_q_out_case(device, ref(), c, q_scale);
      }
    }
    // Aligned Q, K and V but q_out rows one element apart from alignment: the one-element path.
    Case odd = base_case(act, CacheDType::fp8_e4m3, CacheLayout::paged_nhd);
    run_q_out_case(device, ref(), odd, 0.25f, 1);
  }
  for (Pairing p : all_pairings) {  // partial windows with an offset: the pass-through dims are cast too
    Case c = base_case(DType::bf16, CacheDType::fp8_e4m3, CacheLayout::paged_hnd);
    c.spec = exact_arithmetic(scheme_spec(Scaling::yarn, 128, 64, 32, p, Numerics::hf_compatible));
    run_q_out_case(device, ref(), c, 0.5f);
  }
  Case cast = base_case(DType::f32, CacheDType::bf16, CacheLayout::contiguous);
  run_q_out_case(device, ref(), cast, 1.0f);
}

/// Per-head fp8 scales (KvCacheView::k_head_scales, v_head_scales, QuantizedOutput::head_scales)
/// read by the kernel from device memory: the same bytes as the CPU engine with the same scales.
TEST_F(GpuAppend, PerHeadScalesEqualCpuEngine) {
  for (DType act : all_dtypes) {
    for (bool unaligned : {false, true}) {
      Case c = base_case(act, CacheDType::fp8_e4m3, CacheLayout::paged_hnd);
      c.kv_heads = 3;
      c.q_heads = 6;
      c.unaligned = unaligned;
      run_q_out_case(device, ref(), c, 1.0f, 16,
                     HeadScales{{0.25f, 0.0078125f, 3.0f}, {0.3f, 2.0f, 0.05f}, {0.5f, 1.0f, 0.1f, 7.0f, 0.02f, 0.9f}});
    }
  }
}

/// A per-head scale that is not finite and > 0 lives in device memory, where validation cannot see
/// it: the kernel records it, leaves that head's rows unwritten (the other heads' are written),
/// and check() names the array, the head and the value.
TEST_F(GpuAppend, BadPerHeadScaleIsRecordedAndItsRowsSkipped) {
  const std::int64_t tokens = 4, q_heads = 2, kv_heads = 2, d = 128;
  const RopeSpec spec = base_case(DType::bf16, CacheDType::fp8_e4m3, CacheLayout::paged_nhd).spec;
  HostTensor q(DType::bf16, tokens, q_heads, d), k(DType::bf16, tokens, kv_heads, d), v(DType::bf16, tokens, kv_heads, d);
  fill_random(q.view, 81);
  fill_random(k.view, 82);
  fill_random(v.view, 83);
  const HostPositions positions(random_positions(tokens, 4096, 84));
  const std::vector<std::int64_t> slots = {0, 1, 2, 3};
  HostCache host_cache(CacheDType::fp8_e4m3, CacheLayout::paged_nhd, kv_heads, d, 1, 4);
  const std::vector<std::byte> poison = host_cache.v.snapshot();
  DeviceCache cache(device, host_cache, ref());
  DeviceMirror dq(device, q.buffer, ref()), dk(device, k.buffer, ref()), dv(device, v.buffer, ref());
  const DevicePositions d_positions(device, positions, ref());
  const gpu::DeviceBuffer d_slots = upload_slots(device, slots, ref());
  const std::vector<float> v_scales = {0.5f, std::numeric_limits<float>::quiet_NaN()};
  gpu::DeviceBuffer d_v_scales(device, 8);
  d_v_scales.upload(v_scales.data(), 8, ref());
  AppendArgs g = append_args(dq.map(q.view), dk.map(k.cview()), dv.map(v.cview()), d_positions.view,
                             static_cast<const std::int64_t*>(d_slots.data()), cache.view);
  g.cache.v_head_scales = static_cast<const float*>(d_v_scales.data());
  const GpuEngine engine(spec, device);
  engine.append(g, ref());
  EXPECT_TRUE(throws_error([&] { engine.check(ref()); }, ErrorKind::invalid_argument,
                           {"cache.v_head_scales[1] = nan", "finite and > 0", "not written"}));
  EXPECT_NO_THROW(engine.check(ref())) << "the record is cleared once reported";
  cache.v.download(host_cache.v, ref());
  const std::vector<std::byte> got = host_cache.v.snapshot();
  for (std::int64_t slot = 0; slot < 4; ++slot) {
    for (std::int64_t h = 0; h < kv_heads; ++h) {
      const auto at = static_cast<std::ptrdiff_t>((slot * kv_heads + h) * d);
      const bool untouched = std::equal(got.begin() + at, got.begin() + at + d, poison.begin() + at);
      EXPECT_EQ(untouched, h == 1) << "slot " << slot << " head " << h;
    }
  }
}

TEST_F(GpuAppend, GqaMqaHeadDims) {
  for (std::int64_t kv_heads : {1, 8}) {
    for (std::int64_t head_dim : {64, 80, 256}) {
      Case c = base_case(DType::bf16, CacheDType::bf16, CacheLayout::paged_nhd);
      c.spec = exact_arithmetic(scheme_spec(Scaling::none, head_dim, head_dim / 2, 0, Pairing::interleaved, Numerics::hf_compatible));
      c.q_heads = 8;
      c.kv_heads = kv_heads;
      c.out_of_place = kv_heads == 1;
      run_case(device, ref(), c);
    }
  }
}

TEST_F(GpuAppend, ManyTokensAndAllPadding) {
  Case big = base_case(DType::bf16, CacheDType::bf16, CacheLayout::paged_hnd);
  big.spec = exact_arithmetic(scheme_spec(Scaling::llama3, 128));
  big.tokens = 3000;
  big.q_heads = 32;
  big.kv_heads = 8;
  big.blocks = 200;
  big.block_len = 16;
  for (std::int64_t t = 0; t < big.tokens; ++t) big.slots.push_back(t % 17 == 0 ? -1 : (t * 7) % 3200);
  run_case(device, ref(), big);

  Case padding = base_case(DType::f32, CacheDType::f32, CacheLayout::paged_nhd);
  padding.slots.assign(static_cast<std::size_t>(padding.tokens), -1);
  run_case(device, ref(), padding);  // the cache stays poison; Q is still rotated
}

// ---- bad slots: recorded on the device, nothing written out of bounds ---------------------------

TEST_F(GpuAppend, BadSlotsAreRecordedAndSkipped) {
  Case c = base_case(DType::bf16, CacheDType::bf16, CacheLayout::paged_nhd);
  c.tokens = 6;
  const std::int64_t limit = c.blocks * c.block_len;
  // Token 1: one past the end; token 3: below -1; token 5: huge. The others are written.
  c.slots = {0, limit, 5, -2, -1, std::int64_t{1} << 40};
  const RopeSpec& spec = c.spec;
  const std::int64_t d = spec.head_dim;
  HostTensor q(c.act, c.tokens, c.q_heads, d);
  HostTensor k(c.act, c.tokens, c.kv_heads, d);
  HostTensor v(c.act, c.tokens, c.kv_heads, d);
  fill_random(q.view, 1);
  fill_random(k.view, 2);
  fill_random(v.view, 3);
  const HostPositions positions(random_positions(c.tokens, 4096, 4));
  const DevicePositions d_positions(device, positions, ref());
  const gpu::DeviceBuffer d_slots = upload_slots(device, c.slots, ref());
  const GpuEngine engine(spec, device);

  // Expected: the valid tokens' rows as the CPU engine writes them (it is given -1 for the bad ones).
  std::vector<std::int64_t> valid = c.slots;
  for (auto& s : valid) s = (s >= 0 && s < limit) ? s : -1;
  HostCache want(c.cache, c.layout, c.kv_heads, d, c.blocks, c.block_len);
  HostTensor q_want(c.act, c.tokens, c.q_heads, d);
  std::memcpy(q_want.buffer.data(), q.buffer.data(), static_cast<std::size_t>(q.buffer.size()));
  AppendArgs host = append_args(q_want.view, k.cview(), v.cview(), positions.view(), valid.data(), want.view);
  CpuEngine(spec, CpuOptions{1}).append(host);

  HostCache got(c.cache, c.layout, c.kv_heads, d, c.blocks, c.block_len);
  DeviceCache cache(device, got, ref());
  DeviceMirror dq(device, q.buffer, ref());
  DeviceMirror dk(device, k.buffer, ref());
  DeviceMirror dv(device, v.buffer, ref());
  AppendArgs a = append_args(dq.map(q.view), dk.map(k.cview()), dv.map(v.cview()), d_positions.view,
                             static_cast<const std::int64_t*>(d_slots.data()), cache.view);
  engine.append(a, ref());
  EXPECT_TRUE(throws_error([&] { engine.check(ref()); }, ErrorKind::out_of_range,
                           {"slot " + std::to_string(limit), "token 1", "not written"}));
  EXPECT_NO_THROW(engine.check(ref()));  // the record was cleared

  cache.k.download(got.k, ref());
  cache.v.download(got.v, ref());
  dq.download(q.buffer, ref());
  EXPECT_TRUE(bytes_equal(want.k.snapshot(), got.k));
  EXPECT_TRUE(bytes_equal(want.v.snapshot(), got.v));
  EXPECT_TRUE(bits_equal(q_want.cview(), q.cview())) << "every token's Q is rotated";
}

TEST_F(GpuAppend, HostValidationRejectsAndWritesNothing) {
  const RopeSpec spec = exact_arithmetic(scheme_spec(Scaling::none, 64));
  HostTensor q(DType::bf16, 3, 4, 64);
  HostTensor k(DType::bf16, 3, 2, 64);
  HostTensor v(DType::bf16, 3, 3, 64);  // wrong head count
  fill_random(q.view, 1);
  fill_random(k.view, 2);
  fill_random(v.view, 3);
  const HostPositions positions(std::vector<std::int64_t>{0, 1, 2});
  const DevicePositions d_positions(device, positions, ref());
  const gpu::DeviceBuffer d_slots = upload_slots(device, {0, 1, 2}, ref());
  HostCache host(CacheDType::bf16, CacheLayout::paged_nhd, 2, 64, 2, 4);
  DeviceCache cache(device, host, ref());
  DeviceMirror dq(device, q.buffer, ref());
  DeviceMirror dk(device, k.buffer, ref());
  DeviceMirror dv(device, v.buffer, ref());
  const GpuEngine engine(spec, device);
  AppendArgs a = append_args(dq.map(q.view), dk.map(k.cview()), dv.map(v.cview()), d_positions.view,
                             static_cast<const std::int64_t*>(d_slots.data()), cache.view);
  EXPECT_TRUE(throws_error([&] { engine.append(a, ref()); }, ErrorKind::invalid_argument, {"v", "3", "2"}));
  HostTensor v_ok(DType::bf16, 3, 2, 64);
  fill_random(v_ok.view, 4);
  DeviceMirror dv_ok(device, v_ok.buffer, ref());
  a.v = dv_ok.map(v_ok.cview());
  a.slots = nullptr;
  EXPECT_TRUE(throws_error([&] { engine.append(a, ref()); }, ErrorKind::invalid_argument, {"slots is null"}));
  a.slots = static_cast<const std::int64_t*>(d_slots.data());
  a.cache.k_scale = 0.5f;  // a scale on a bf16 cache
  EXPECT_TRUE(throws_error([&] { engine.append(a, ref()); }, ErrorKind::invalid_argument, {"k_scale", "must be 1"}));
  engine.check(ref());
  HostCache after(CacheDType::bf16, CacheLayout::paged_nhd, 2, 64, 2, 4);
  cache.k.download(after.k, ref());
  HostTensor q_after(DType::bf16, 3, 4, 64);
  dq.download(q_after.buffer, ref());
  EXPECT_TRUE(bytes_equal(host.k.snapshot(), after.k));
  EXPECT_TRUE(bytes_equal(q.buffer.snapshot(), q_after.buffer));
}

// ---- graphs and counters ------------------------------------------------------------------------

/// A fixed decode-like call: 8 tokens, bf16, paged NHD, device data.
struct DecodeCall {
  RopeSpec spec = exact_arithmetic(scheme_spec(Scaling::none, 128));
  HostTensor q{DType::bf16, 8, 8, 128};
  HostTensor k{DType::bf16, 8, 2, 128};
  HostTensor v{DType::bf16, 8, 2, 128};
  HostPositions positions{random_positions(8, 4096, 9)};
  std::vector<std::int64_t> slots{3, 17, -1, 40, 9, 63, 22, 50};
  HostCache host{CacheDType::bf16, CacheLayout::paged_nhd, 2, 128, 4, 16};

  DecodeCall() {
    fill_random(q.view, 1);
    fill_random(k.view, 2);
    fill_random(v.view, 3);
  }
};

/// DecodeCall's data on the device.
struct DeviceDecode {
  DevicePositions positions;
  gpu::DeviceBuffer slots;
  DeviceMirror q;
  DeviceMirror k;
  DeviceMirror v;
  DeviceCache cache;
  AppendArgs args;
  DeviceDecode(const gpu::Device& device, const DecodeCall& c, gpu::StreamRef s)
      : positions(device, c.positions, s), slots(upload_slots(device, c.slots, s)), q(device, c.q.buffer, s),
        k(device, c.k.buffer, s), v(device, c.v.buffer, s), cache(device, c.host, s) {
    args.q = q.map(c.q.view);
    args.k = k.map(c.k.cview());
    args.v = v.map(c.v.cview());
    args.positions = positions.view;
    args.slots = static_cast<const std::int64_t*>(slots.data());
    args.cache = cache.view;
  }
};

TEST_F(GpuAppend, CapturedInAGraphLikeDirectCalls) {
  const DecodeCall call;
  const GpuEngine engine(call.spec, device);
  DeviceDecode direct(device, call, ref());
  DeviceDecode graphed(device, call, ref());
  const auto native = static_cast<cudaStream_t>(ref().native());
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  POSENC_GPU_CHECK(cudaStreamBeginCapture(native, cudaStreamCaptureModeGlobal));
  engine.append(graphed.args, ref());  // global capture fails on any allocation, copy or sync
  POSENC_GPU_CHECK(cudaStreamEndCapture(native, &graph));
  POSENC_GPU_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; ++i) {
    POSENC_GPU_CHECK(cudaGraphLaunch(exec, native));
    engine.append(direct.args, ref());
  }
  engine.check(ref());
  POSENC_GPU_CHECK(cudaGraphExecDestroy(exec));
  POSENC_GPU_CHECK(cudaGraphDestroy(graph));
  HostCache a(CacheDType::bf16, CacheLayout::paged_nhd, 2, 128, 4, 16);
  HostCache b(CacheDType::bf16, CacheLayout::paged_nhd, 2, 128, 4, 16);
  direct.cache.k.download(a.k, ref());
  graphed.cache.k.download(b.k, ref());
  EXPECT_TRUE(bytes_equal(a.k.snapshot(), b.k));
  EXPECT_FALSE(bytes_equal(call.host.k.snapshot(), b.k)) << "the replays wrote the cache";
  HostTensor qa(DType::bf16, 8, 8, 128);
  HostTensor qb(DType::bf16, 8, 8, 128);
  direct.q.download(qa.buffer, ref());
  graphed.q.download(qb.buffer, ref());
  EXPECT_TRUE(bytes_equal(qa.buffer.snapshot(), qb.buffer)) << "three rotations of Q, both ways";
}

TEST_F(GpuAppend, CountersMatchTheCpuEngineAndTimeTheDevice) {
  const DecodeCall call;
  const GpuEngine engine(call.spec, device);
  DeviceDecode d(device, call, ref());
  engine.append(d.args, ref());  // counters off: nothing counted
  engine.enable_counters(true, /*device_timing=*/true);
  constexpr int calls = 5;
  for (int i = 0; i < calls; ++i) engine.append(d.args, ref());
  RopeArgs rope{d.args.q, {}, {}, {}, d.positions.view, {}};
  engine.apply(rope, ref());
  ref().synchronize();
  const OperationCounters g = engine.counters();

  // The CPU engine counts the same calls the same way.
  const CpuEngine cpu(call.spec, CpuOptions{1});
  cpu.enable_counters(true);
  HostTensor q = HostTensor(DType::bf16, 8, 8, 128);
  std::memcpy(q.buffer.data(), call.q.buffer.data(), static_cast<std::size_t>(call.q.buffer.size()));
  HostCache cache(CacheDType::bf16, CacheLayout::paged_nhd, 2, 128, 4, 16);
  AppendArgs host =
      append_args(q.view, call.k.cview(), call.v.cview(), call.positions.view(), call.slots.data(), cache.view);
  for (int i = 0; i < calls; ++i) cpu.append(host);
  cpu.apply(RopeArgs{q.view, {}, {}, {}, call.positions.view(), {}});
  const OperationCounters c = cpu.counters();
  EXPECT_EQ(g.calls, calls + 1);
  EXPECT_EQ(g.calls, c.calls);
  EXPECT_EQ(g.tokens, c.tokens);
  EXPECT_EQ(g.bytes, c.bytes);
  EXPECT_EQ(g.timed_calls, calls + 1);
  EXPECT_GT(g.device_ms, 0.0);
  EXPECT_LT(g.device_ms, 1000.0);
  EXPECT_EQ(c.timed_calls, 0);

  engine.reset_counters();
  engine.enable_counters(false);
  engine.append(d.args, ref());
  ref().synchronize();
  const OperationCounters off = engine.counters();
  EXPECT_EQ(off.calls, 0);
  EXPECT_EQ(off.timed_calls, 0);
  EXPECT_EQ(off.device_ms, 0.0);
}

}  // namespace
}  // namespace posenc::test

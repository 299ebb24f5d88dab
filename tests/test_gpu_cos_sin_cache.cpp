// GPU rotation from a caller's cos/sin cache (RopeArgs::cos_sin): bit-identical to the CPU engine in every numerics, spec equivalence, append, out-of-range positions (identity rotation, fault report).
//
// With a cache no angle is evaluated, so every numerics mode is IEEE arithmetic on the cache's
// entries alone, shared with the CPU engine through rope_math.hpp: the GPU must match the CPU
// engine bit for bit, `accurate` included. Destinations start poisoned; bytes outside the
// destination views (fused V slice, padding, sources, the cache) must come back unchanged.
#include <algorithm>
#include <cstring>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "gpu_support.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"
#include "posenc/kv_cache.hpp"
#include "support/compare.hpp"
#include "support/cos_sin_cache.hpp"
#include "support/host_tensor.hpp"
#include "support/specs.hpp"

namespace posenc::test {
namespace {

using gpu::GpuEngine;

class GpuCosSinCache : public GpuTest {};

/// The layout of a case (support/cos_sin_cache.hpp CosSinCase): a fused pad of 3 breaks 16-byte
/// alignment (the generic instantiation).
LayoutKind layout_of(const CosSinCase& c) { return c.fused ? LayoutKind::fused : LayoutKind::separate; }

/// The result of one case on both engines, and the positions it used.
struct BothEngines {
  QkLayout input;
  QkLayout cpu;
  QkLayout gpu;
};

/// Rotates the case's input with the CPU engine (oracle) and the GPU engine, the same cache and
/// positions, and checks the GPU wrote exactly its destinations. `positions` may hold values
/// outside the cache for the GPU; the CPU gets `cpu_positions` (valid ones) instead.
BothEngines run_both(const gpu::Device& device, gpu::StreamRef stream, const CosSinCase& c,
                     const HostCosSinCache& cache, const std::vector<std::int64_t>& positions,
                     const std::vector<std::int64_t>& cpu_positions, const GpuEngine& engine) {
  BothEngines r;
  r.input = make_layout(c.dtype, c.tokens, c.q_heads, c.kv_heads, c.head_dim, layout_of(c), c.pad);
  fill_random_parallel(r.input.q, c.seed * 2 + 1);
  if (r.input.k.present()) fill_random_parallel(r.input.k, c.seed * 2 + 2);
  const std::vector<std::byte> input_bytes = r.input.buffer.snapshot();
  const RopeSpec spec = exact_arithmetic(c.spec());

  r.cpu = c.out_of_place ? make_layout(c.dtype, c.tokens, c.q_heads, c.kv_heads, c.head_dim, layout_of(c), c.pad)
                         : clone(r.input);
  const HostPositions cpu_pos(cpu_positions, c.index_type);
  {
    RopeArgs args;
    args.q = r.cpu.q;
    args.k = r.cpu.k;
    args.positions = cpu_pos.view();
    args.cos_sin = cache.view;
    if (c.out_of_place) {
      args.q_src = r.input.q;
      if (r.input.k.present()) args.k_src = r.input.k;
    }
    CpuEngine(spec).apply(args);
  }

  DeviceMirror d_input(device, r.input.buffer, stream);
  DeviceMirror d_cache(device, cache.buffer, stream);
  const HostPositions gpu_pos(positions, c.index_type);
  const DevicePositions d_positions(device, gpu_pos, stream);
  r.gpu = c.out_of_place ? make_layout(c.dtype, c.tokens, c.q_heads, c.kv_heads, c.head_dim, layout_of(c), c.pad)
                         : clone(r.input);
  const std::vector<std::byte> before = r.gpu.buffer.snapshot();
  std::optional<DeviceMirror> d_output;
  RopeArgs args;
  args.positions = d_positions.view;
  args.cos_sin = cache.view;
  args.cos_sin.data = d_cache.map(cache.view.data);
  if (!c.out_of_place) {
    args.q = d_input.map(r.input.q);
    args.k = d_input.map(r.input.k);
  } else {
    d_output.emplace(device, r.gpu.buffer, stream);
    args.q = d_output->map(r.gpu.q);
    args.k = d_output->map(r.gpu.k);
    args.q_src = d_input.map(ConstTensorView(r.input.q));
    if (r.input.k.present()) args.k_src = d_input.map(ConstTensorView(r.input.k));
  }
  EXPECT_NO_THROW(engine.apply(args, stream)) << c.name();
  if (!c.out_of_place) {
    d_input.download(r.gpu.buffer, stream);
  } else {
    d_output->download(r.gpu.buffer, stream);
    HostBuffer source_after(r.input.buffer.size());
    d_input.download(source_after, stream);
    EXPECT_TRUE(bytes_equal(input_bytes, source_after)) << c.name() << ": an out-of-place source was written";
  }
  HostBuffer cache_after(cache.buffer.size());
  d_cache.download(cache_after, stream);
  EXPECT_TRUE(bytes_equal(cache.buffer.snapshot(), cache_after)) << c.name() << ": the cos/sin cache was written";
  EXPECT_TRUE(only_views_written(before, r.gpu.buffer, r.gpu.views())) << c.name();
  return r;
}

/// One case with valid positions: the GPU equals the CPU engine bit for bit, and reports no fault.
void expect_case(const gpu::Device& device, gpu::StreamRef stream, const CosSinCase& c) {
  const HostCosSinCache cache = random_cos_sin_cache(c.cache_dtype, c.rows, c.rotary, c.rotary + c.row_pad, c.seed);
  const std::vector<std::int64_t> pos = random_positions(c.tokens, c.rows, c.seed);
  const GpuEngine engine(exact_arithmetic(c.spec()), device);
  const BothEngines r = run_both(device, stream, c, cache, pos, pos, engine);
  EXPECT_NO_THROW(engine.check(stream)) << c.name();
  EXPECT_TRUE(all_written(r.gpu.q)) << c.name();
  EXPECT_TRUE(bits_equal(r.cpu.q, r.gpu.q)) << c.name() << ": Q differs from the CPU engine";
  if (r.gpu.k.present()) {
    EXPECT_TRUE(all_written(r.gpu.k)) << c.name();
    EXPECT_TRUE(bits_equal(r.cpu.k, r.gpu.k)) << c.name() << ": K differs from the CPU engine";
  }
}

// Activation dtype x cache dtype x pairing x numerics, each at T = 1 (decode), 7 and 300; partial
// rotary, window offsets, GQA shapes, fused QKV slices (aligned and not), in/out of place, int32 and
// int64 positions and padded cache rows cycle through the combinations.
TEST_F(GpuCosSinCache, SweepMatchesCpuEngine) {
  struct Window {
    std::int64_t head_dim, rotary, offset;
  };
  const Window windows[] = {{128, 128, 0}, {128, 64, 0}, {64, 64, 0}, {80, 32, 0}, {256, 64, 192}, {96, 32, 8}};
  const std::int64_t heads[][2] = {{8, 8}, {32, 8}, {4, 1}, {6, 0}, {5, 3}};
  const std::int64_t pads[] = {0, 8, 3};
  std::uint64_t n = 0;
  for (const DType dtype : all_dtypes) {
    for (const DType cache_dtype : all_dtypes) {
      for (const Pairing pairing : cos_sin_pairings) {
        for (const Numerics numerics : all_numerics) {
          for (const std::int64_t tokens : {1, 7, 300}) {
            ++n;
            CosSinCase c;
            c.dtype = dtype;
            c.cache_dtype = cache_dtype;
            c.pairing = pairing;
            c.numerics = numerics;
            const Window w = windows[n % 6];
            c.head_dim = w.head_dim;
            c.rotary = w.rotary;
            c.offset = w.offset;
            c.q_heads = heads[n % 5][0];
            c.kv_heads = heads[n % 5][1];
            c.tokens = tokens;
            c.fused = (n / 2) % 2 == 1;
            c.pad = c.fused ? pads[(n / 4) % 3] : 0;
            c.out_of_place = n % 3 == 1;
            c.index_type = (n / 3) % 2 == 0 ? IndexType::i64 : IndexType::i32;
            c.row_pad = n % 4 == 0 ? 6 : 0;
            c.rows = n % 7 == 0 ? 1 : 1024;  // one row: every token at position 0
            c.seed = n;
            expect_case(device, ref(), c);
            if (HasFailure()) return;
          }
        }
      }
    }
  }
}

// Long calls in the benchmark's head shape (32 + 8 heads of 128, a 131072-row cache) and a
// partial-rotary NeoX shape, every activation dtype.
TEST_F(GpuCosSinCache, LongCallsMatchCpuEngine) {
  std::uint64_t n = 100;
  for (const DType dtype : all_dtypes) {
    for (const bool neox : {true, false}) {
      CosSinCase c;
      c.dtype = dtype;
      c.cache_dtype = n % 2 == 0 ? DType::f32 : dtype;
      c.pairing = neox ? Pairing::half_split : Pairing::interleaved;
      c.q_heads = 32;
      c.kv_heads = 8;
      c.tokens = 8192;
      c.rows = 131072;
      if (!neox) c.rotary = 64;
      c.seed = ++n;
      expect_case(device, ref(), c);
    }
  }
}

// A float32 cache holding the spec's own cos/sin (spec_cos_sin_cache) rotates bit for bit like
// the GPU's spec path in the hf numerics (whose cos/sin the GPU computes bit-identically to the
// host; accurate uses the device's sin/cos, so it is not part of this test).
TEST_F(GpuCosSinCache, CacheOfTheSpecsOwnCosSinEqualsSpecPath) {
  std::uint64_t n = 200;
  for (const Scaling scheme : {Scaling::none, Scaling::yarn}) {
    for (const Pairing pairing : cos_sin_pairings) {
      for (const Numerics numerics : {Numerics::hf_compatible, Numerics::hf_fp32_apply}) {
        for (const DType dtype : all_dtypes) {
          ++n;
          const RopeSpec spec = exact_arithmetic(scheme_spec(scheme, 128, n % 2 == 0 ? 0 : 64, 0, pairing, numerics));
          const std::int64_t rows = 8192;
          const std::int64_t tokens = 1000;
          const HostCosSinCache cache = spec_cos_sin_cache(spec, rows);
          const HostPositions pos(random_positions(tokens, rows, n));
          QkLayout input = make_layout(dtype, tokens, 8, 2, 128, LayoutKind::fused, 0);
          fill_random_parallel(input.q, n);
          fill_random_parallel(input.k, n + 1);
          const GpuEngine engine(spec, device);
          DeviceMirror by_spec(device, input.buffer, ref());
          DeviceMirror by_cache(device, input.buffer, ref());
          DeviceMirror d_cache(device, cache.buffer, ref());
          const DevicePositions d_pos(device, pos, ref());
          CosSinCacheView view = cache.view;
          view.data = d_cache.map(cache.view.data);
          engine.apply(RopeArgs{by_spec.map(input.q), by_spec.map(input.k), {}, {}, d_pos.view, {}}, ref());
          engine.apply(RopeArgs{by_cache.map(input.q), by_cache.map(input.k), {}, {}, d_pos.view, view}, ref());
          EXPECT_NO_THROW(engine.check(ref()));
          QkLayout a = clone(input);
          QkLayout b = clone(input);
          by_spec.download(a.buffer, ref());
          by_cache.download(b.buffer, ref());
          EXPECT_TRUE(bytes_equal(a.buffer.snapshot(), b.buffer)) << case_name(spec, dtype);
        }
      }
    }
  }
}

// A position outside the cache never indexes it: the token's rows are written as they were read
// (identity rotation), every other token is rotated as the CPU engine rotates it, and check()
// reports the first bad token with its value and the cache's rows, then is clear again.
TEST_F(GpuCosSinCache, OutOfRangePositionsAreIdentityAndReported) {
  std::uint64_t n = 300;
  for (const DType dtype : all_dtypes) {
    for (const bool in_place : {true, false}) {
      for (const bool vectorized : {true, false}) {
        ++n;
        CosSinCase c;
        c.dtype = dtype;
        c.numerics = all_numerics[n % 3];
        c.pairing = cos_sin_pairings[n % 3];
        c.tokens = 40;
        c.rows = 100;
        c.fused = true;
        c.pad = vectorized ? 0 : 3;
        c.out_of_place = !in_place;
        c.index_type = n % 2 == 0 ? IndexType::i64 : IndexType::i32;
        c.seed = n;
        const HostCosSinCache cache = random_cos_sin_cache(DType::bf16, c.rows, c.rotary, -1, n);
        std::vector<std::int64_t> pos = random_positions(c.tokens, c.rows, n);
        std::vector<std::int64_t> valid = pos;
        // Bad tokens: 5 (= rows), 6 (-1), 20 (far past), 39 (the last); the CPU oracle gets 0 there.
        const std::vector<std::pair<std::int64_t, std::int64_t>> bad = {
            {5, 100}, {6, -1}, {20, 1 << 30}, {39, 12345}};
        for (const auto& [t, value] : bad) {
          pos[static_cast<std::size_t>(t)] = value;
          valid[static_cast<std::size_t>(t)] = 0;
        }
        const GpuEngine engine(exact_arithmetic(c.spec()), device);
        const BothEngines r = run_both(device, ref(), c, cache, pos, valid, engine);
        EXPECT_TRUE(throws_error([&] { engine.check(ref()); }, ErrorKind::out_of_range,
                                 {"position 100 of token 5", "[0, 100)", "cos/sin cache"}))
            << c.name();
        EXPECT_NO_THROW(engine.check(ref())) << c.name() << ": the fault record was not cleared";

        for (std::int64_t t = 0; t < c.tokens; ++t) {
          const bool is_bad = std::any_of(bad.begin(), bad.end(), [&](const auto& b) { return b.first == t; });
          for (const auto& [out, cpu, in] : {std::tuple{r.gpu.q, r.cpu.q, r.input.q}, std::tuple{r.gpu.k, r.cpu.k, r.input.k}}) {
            const auto token = [&](const TensorView& v) {
              ConstTensorView one(v);
              one.data = static_cast<const std::byte*>(v.data) + t * v.token_stride * size_of(v.dtype);
              one.tokens = 1;
              return one;
            };
            if (is_bad && c.pairing == Pairing::interleaved_to_half) {
              // The identity rotation still writes the pairs de-interleaved: y[i] = x[2i], y[H + i] = x[2i + 1].
              const std::int64_t es = size_of(in.dtype);
              const std::int64_t half = c.rotary / 2;
              for (std::int64_t h = 0; h < in.heads; ++h) {
                const auto* x = static_cast<const std::byte*>(in.data) + (t * in.token_stride + h * in.head_stride) * es;
                const auto* y = static_cast<const std::byte*>(out.data) + (t * out.token_stride + h * out.head_stride) * es;
                std::vector<std::byte> want(x, x + in.head_dim * es);
                for (std::int64_t i = 0; i < half; ++i) {
                  std::memcpy(&want[(c.offset + i) * es], x + (c.offset + 2 * i) * es, es);
                  std::memcpy(&want[(c.offset + half + i) * es], x + (c.offset + 2 * i + 1) * es, es);
                }
                EXPECT_EQ(0, std::memcmp(want.data(), y, want.size())) << c.name() << ": token " << t << " head " << h;
              }
            } else if (is_bad) {
              EXPECT_TRUE(bits_equal(token(in), token(out))) << c.name() << ": token " << t << " was rotated";
            } else {
              EXPECT_TRUE(bits_equal(token(cpu), token(out))) << c.name() << ": token " << t;
            }
          }
        }
      }
    }
  }
}

// The limit is min(rows, spec.position_limit), reported with the value; a negative position first.
TEST_F(GpuCosSinCache, FaultNamesTheCallsLimit) {
  CosSinCase c;
  c.tokens = 10;
  c.rows = 64;
  RopeSpec spec = exact_arithmetic(c.spec());
  spec.position_limit = 32;
  const HostCosSinCache cache = random_cos_sin_cache(DType::f32, c.rows, c.rotary, -1, 9);
  std::vector<std::int64_t> pos = random_positions(c.tokens, 32, 9);
  pos[3] = 40;  // inside the cache, outside the spec's limit
  pos[7] = -2;
  const GpuEngine engine(spec, device);
  QkLayout q = make_layout(DType::bf16, c.tokens, 2, 0, 128, LayoutKind::separate, 0);
  fill_random(q.q, 9);
  DeviceMirror d(device, q.buffer, ref());
  DeviceMirror d_cache(device, cache.buffer, ref());
  const HostPositions hp(pos);
  const DevicePositions d_pos(device, hp, ref());
  CosSinCacheView view = cache.view;
  view.data = d_cache.map(cache.view.data);
  engine.apply(RopeArgs{d.map(q.q), {}, {}, {}, d_pos.view, view}, ref());
  EXPECT_TRUE(throws_error([&] { engine.check(ref()); }, ErrorKind::out_of_range,
                           {"position 40 of token 3", "[0, 32)"}));
}

// The fused append with a cache equals CpuEngine::append with it (contiguous and paged caches,
// a padding slot), in every numerics and pairing.
TEST_F(GpuCosSinCache, AppendMatchesCpuEngine) {
  std::uint64_t n = 400;
  for (const DType dtype : all_dtypes) {
    for (const Pairing pairing : cos_sin_pairings) {
      for (const Numerics numerics : all_numerics) {
        ++n;
        CosSinCase c;
        c.dtype = dtype;
        c.pairing = pairing;
        c.numerics = numerics;
        c.head_dim = 64;
        c.rotary = n % 2 == 0 ? 64 : 32;
        const RopeSpec spec = exact_arithmetic(c.spec());
        const std::int64_t tokens = 50;
        const std::int64_t kv_heads = 2;
        const HostCosSinCache cache = random_cos_sin_cache(all_dtypes[n % 3], 500, c.rotary, -1, n);
        const HostPositions pos(random_positions(tokens, 500, n), n % 2 == 0 ? IndexType::i64 : IndexType::i32);
        std::vector<std::int64_t> slots(static_cast<std::size_t>(tokens));
        for (std::int64_t t = 0; t < tokens; ++t) slots[static_cast<std::size_t>(t)] = t == 7 ? -1 : (t * 37) % 64;
        QkLayout qkv = make_layout(dtype, tokens, 4, kv_heads, 64, LayoutKind::fused, 0);
        fill_random(qkv.q, n);
        fill_random(qkv.k, n + 1);
        // V: the slice after K in the fused buffer.
        ConstTensorView v = ConstTensorView(qkv.k);
        v.data = static_cast<const std::byte*>(qkv.k.data) + kv_heads * 64 * size_of(dtype);
        fill_random(TensorView{const_cast<void*>(v.data), dtype, tokens, kv_heads, 64, v.token_stride, 64}, n + 2);
        const CacheDType kv_dtype = CacheDType::bf16;
        const CacheLayout layout = n % 2 == 0 ? CacheLayout::paged_hnd : CacheLayout::paged_nhd;
        const std::int64_t cache_bytes = 64 * kv_heads * 64 * size_of(kv_dtype);

        // CPU.
        QkLayout cpu = clone(qkv);
        HostBuffer k_cpu(cache_bytes), v_cpu(cache_bytes);
        auto args_for = [&](const TensorView& q, const ConstTensorView& k, const ConstTensorView& vv, void* kc,
                            void* vc, const PositionsView& p, const std::int64_t* s, const CosSinCacheView& cs) {
          AppendArgs a;
          a.q = q;
          a.k = k;
          a.v = vv;
          a.positions = p;
          a.slots = s;
          a.cache = KvCacheView{kc, vc, kv_dtype, layout, kv_heads, 64, 4, 16};
          a.cos_sin = cs;
          return a;
        };
        ConstTensorView v_cpu_view = v;
        v_cpu_view.data = cpu.buffer.data() + (static_cast<const std::byte*>(v.data) - qkv.buffer.data());
        CpuEngine(spec).append(
            args_for(cpu.q, cpu.k, v_cpu_view, k_cpu.data(), v_cpu.data(), pos.view(), slots.data(), cache.view));

        // GPU.
        DeviceMirror d_qkv(device, qkv.buffer, ref());
        HostBuffer k_gpu(cache_bytes), v_gpu(cache_bytes);
        DeviceMirror d_k(device, k_gpu, ref());
        DeviceMirror d_v(device, v_gpu, ref());
        DeviceMirror d_cache(device, cache.buffer, ref());
        const DevicePositions d_pos(device, pos, ref());
        gpu::DeviceBuffer d_slots(device, tokens * 8);
        d_slots.upload(slots.data(), tokens * 8, ref());
        CosSinCacheView view = cache.view;
        view.data = d_cache.map(cache.view.data);
        const GpuEngine engine(spec, device);
        engine.append(args_for(d_qkv.map(qkv.q), d_qkv.map(ConstTensorView(qkv.k)), d_qkv.map(v), d_k.map(k_gpu.data()),
                               d_v.map(v_gpu.data()), d_pos.view, static_cast<const std::int64_t*>(d_slots.data()),
                               view),
                      ref());
        EXPECT_NO_THROW(engine.check(ref()));
        QkLayout gpu_qkv = clone(qkv);
        d_qkv.download(gpu_qkv.buffer, ref());
        d_k.download(k_gpu, ref());
        d_v.download(v_gpu, ref());
        const std::string what = c.name();
        EXPECT_TRUE(bits_equal(cpu.q, gpu_qkv.q)) << what << ": Q";
        EXPECT_TRUE(bytes_equal(k_cpu.snapshot(), k_gpu)) << what << ": K cache";
        EXPECT_TRUE(bytes_equal(v_cpu.snapshot(), v_gpu)) << what << ": V cache";
      }
    }
  }
}

// Host validation before the launch: a multi-stream spec or a mismatched cache is refused.
TEST_F(GpuCosSinCache, HostValidation) {
  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = 64;
  const HostCosSinCache cache = random_cos_sin_cache(DType::f32, 10, 32, -1, 1);
  QkLayout q = make_layout(DType::bf16, 4, 2, 0, 64, LayoutKind::separate, 0);
  DeviceMirror d(device, q.buffer, ref());
  DeviceMirror d_cache(device, cache.buffer, ref());
  const HostPositions hp({0, 1, 2, 3});
  const DevicePositions d_pos(device, hp, ref());
  CosSinCacheView view = cache.view;
  view.data = d_cache.map(cache.view.data);
  const GpuEngine engine(spec, device);
  expect_error([&] { engine.apply(RopeArgs{d.map(q.q), {}, {}, {}, d_pos.view, view}, ref()); },
               ErrorKind::invalid_argument, {"cos_sin rotary_dim 32", "rotary_dim 64"});
  spec.pairing = Pairing::half_split_2d;
  spec.rotary_dim = 32;
  const GpuEngine two_d(spec, device);
  PositionsView two_streams = d_pos.view;
  two_streams.count = 2;
  two_streams.streams = 2;
  two_streams.stream_stride = 2;
  QkLayout q2 = make_layout(DType::bf16, 2, 2, 0, 64, LayoutKind::separate, 0);
  DeviceMirror d2(device, q2.buffer, ref());
  expect_error([&] { two_d.apply(RopeArgs{d2.map(q2.q), {}, {}, {}, two_streams, view}, ref()); },
               ErrorKind::invalid_argument, {"single-stream"});
}

}  // namespace
}  // namespace posenc::test

// CpuEngine is bit-identical to apply_reference over sweeps of dtype x pairing x numerics x shapes x layouts x threads, for every kernel build (AVX512-BF16, AVX-512, AVX2, baseline).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <new>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/kernel_build.hpp"
#include "support/specs.hpp"

// Counts heap allocations program-wide while enabled, to prove apply allocates nothing.
namespace {
std::atomic<bool> count_allocations{false};
std::atomic<std::int64_t> allocations{0};
}  // namespace

// Out of line, so that GCC does not see malloc/free meet new/delete at the call sites.
[[gnu::noinline]] void* operator new(std::size_t bytes) {
  if (count_allocations.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  void* p = std::malloc(bytes == 0 ? 1 : bytes);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

using namespace posenc;        // NOLINT(google-build-using-namespace)
using namespace posenc::test;  // NOLINT(google-build-using-namespace)

/// How Q and K are laid out in memory.
enum class Layout {
  dense,       ///< [T, H, D] contiguous
  strided,     ///< gaps between heads and between tokens
  fused,       ///< views into one fused QKV buffer with per-token padding
  head_major,  ///< [H, T, D] storage seen as [T, H, D] (token_stride D, head_stride T*D)
};

const char* to_string(Layout l) {
  switch (l) {
    case Layout::dense:
      return "dense";
    case Layout::strided:
      return "strided";
    case Layout::fused:
      return "fused";
    case Layout::head_major:
      return "head_major";
  }
  return "?";
}

HostTensor make_tensor(Layout layout, DType dtype, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim) {
  switch (layout) {
    case Layout::strided:
      return HostTensor(dtype, tokens, heads, head_dim, heads * (head_dim + 8) + 24, head_dim + 8);
    case Layout::head_major:
      return HostTensor(dtype, tokens, heads, head_dim, head_dim, tokens * head_dim);
    case Layout::dense:
    case Layout::fused:
      break;
  }
  return HostTensor(dtype, tokens, heads, head_dim);
}

/// One complete, deterministic problem: destinations, optional sources, positions. Two worlds built
/// with the same arguments hold the same bytes, so one can go to the reference and one to the engine.
struct World {
  std::optional<FusedQkv> fused;
  HostTensor q, k, q_src, k_src;
  HostPositions positions;
  RopeArgs args;

  World(DType dtype, std::int64_t tokens, std::int64_t q_heads, std::int64_t kv_heads, std::int64_t head_dim,
        Layout layout, bool out_of_place, HostPositions pos, std::uint64_t seed)
      : positions(std::move(pos)) {
    if (layout == Layout::fused) {
      fused.emplace(dtype, tokens, q_heads, std::max<std::int64_t>(kv_heads, 1), head_dim, 8);
      args.q = fused->q;
      if (kv_heads > 0) args.k = fused->k;
      fill_random(fused->v, seed + 2);
    } else {
      q = make_tensor(layout, dtype, tokens, q_heads, head_dim);
      args.q = q.view;
      if (kv_heads > 0) {
        k = make_tensor(layout, dtype, tokens, kv_heads, head_dim);
        args.k = k.view;
      }
    }
    if (out_of_place) {
      // Sources in another layout than their destinations: strides may differ.
      const Layout src_layout = layout == Layout::strided ? Layout::head_major : Layout::strided;
      q_src = make_tensor(src_layout, dtype, tokens, q_heads, head_dim);
      fill_random(q_src.view, seed);
      args.q_src = q_src.cview();
      if (kv_heads > 0) {
        k_src = make_tensor(src_layout, dtype, tokens, kv_heads, head_dim);
        fill_random(k_src.view, seed + 1);
        args.k_src = k_src.cview();
      }
    } else {
      fill_random(args.q, seed);
      if (kv_heads > 0) fill_random(args.k, seed + 1);
    }
    args.positions = positions.view();
  }

  /// Every buffer the call may touch, in a fixed order.
  std::vector<const HostBuffer*> buffers() const {
    std::vector<const HostBuffer*> out;
    if (fused) out.push_back(&fused->buffer);
    for (const HostTensor* t : {&q, &k, &q_src, &k_src}) {
      if (t->buffer.data() != nullptr) out.push_back(&t->buffer);
    }
    return out;
  }
};

/// A case of the sweep.
struct Case {
  RopeSpec spec;
  DType dtype;
  std::int64_t tokens;
  std::int64_t q_heads;
  std::int64_t kv_heads;
  Layout layout;
  bool out_of_place;
  int threads;

  std::string name() const {
    return case_name(spec, dtype) + "/T " + std::to_string(tokens) + "/heads " + std::to_string(q_heads) + "+" +
           std::to_string(kv_heads) + "/" + to_string(layout) + (out_of_place ? "/out of place" : "/in place") +
           "/threads " + std::to_string(threads);
  }
};

/// Runs the case through apply_reference and through `engine` on identical worlds: every byte of
/// every buffer must agree (outputs, pass-through, gaps, V), every output must have been written,
/// and nothing outside the destination views may have changed.
::testing::AssertionResult engine_matches_reference(const CpuEngine& engine, const Case& c,
                                                    const std::vector<std::int64_t>& positions, std::uint64_t seed) {
  const IndexType index_type = seed % 2 == 0 ? IndexType::i64 : IndexType::i32;
  const HostPositions pos(c.spec, positions, index_type);  // the spec's streams: 2 for half_split_2d
  World ref(c.dtype, c.tokens, c.q_heads, c.kv_heads, c.spec.head_dim, c.layout, c.out_of_place, pos, seed);
  World eng(c.dtype, c.tokens, c.q_heads, c.kv_heads, c.spec.head_dim, c.layout, c.out_of_place, pos, seed);
  std::vector<std::vector<std::byte>> before;
  for (const HostBuffer* b : eng.buffers()) before.push_back(b->snapshot());

  apply_reference(c.spec, ref.args);
  engine.apply(eng.args);

  if (auto r = bits_equal(ConstTensorView(ref.args.q), ConstTensorView(eng.args.q)); !r) {
    return ::testing::AssertionFailure() << c.name() << ": Q " << r.message();
  }
  if (eng.args.k.present()) {
    if (auto r = bits_equal(ConstTensorView(ref.args.k), ConstTensorView(eng.args.k)); !r) {
      return ::testing::AssertionFailure() << c.name() << ": K " << r.message();
    }
  }
  std::vector<ConstTensorView> destinations = {ConstTensorView(eng.args.q)};
  if (eng.args.k.present()) destinations.emplace_back(eng.args.k);
  if (auto r = buffers_match(ref.buffers(), eng.buffers(), before, destinations); !r) {
    return ::testing::AssertionFailure() << c.name() << ": " << r.message();
  }
  return ::testing::AssertionSuccess();
}


class EngineSweep : public ::testing::TestWithParam<std::string> {};

// dtypes x pairings x numerics x token counts {1, 7, 64, 1000} x threads {1, 2}, with head_dim,
// rotary window, scheme, GQA head counts (including one KV head and Q only), layout and in/out of
// place cycling through their values so that each appears with every dtype and pairing.
TEST_P(EngineSweep, BitIdenticalToReference) {
  const KernelBuild build(GetParam());
  const std::vector<std::int64_t> head_dims = {64, 80, 96, 128, 256};
  const std::vector<std::pair<std::int64_t, std::int64_t>> heads = {{4, 4}, {8, 2}, {5, 1}, {3, 0}, {6, 1}};
  const std::vector<Layout> layouts = {Layout::dense, Layout::strided, Layout::fused, Layout::head_major};
  std::uint64_t n = 0;
  for (const DType dtype : all_dtypes) {
    for (const Pairing pairing : all_pairings) {
      for (const Numerics numerics : all_numerics) {
        for (const std::int64_t tokens : {1, 7, 64, 1000}) {
          for (const int threads : {1, 2}) {
            ++n;
            const std::int64_t head_dim = head_dims[n % head_dims.size()];
            // Every third case rotates a window inside the head, with pass-through on both sides.
            const std::int64_t rotary = n % 3 == 0 ? head_dim / 2 : 0;
            const std::int64_t offset = n % 3 == 0 ? head_dim / 4 : 0;
            const Scaling scheme = all_schemes[n % all_schemes.size()];
            const auto [q_heads, kv_heads] = heads[(n / 2) % heads.size()];
            Case c{scheme_spec(scheme, head_dim, rotary, offset, pairing, numerics),
                   dtype,
                   tokens,
                   q_heads,
                   kv_heads,
                   layouts[(n / 3) % layouts.size()],
                   (n / 5) % 2 == 1,
                   threads};
            // Both arithmetics the CPU engine reproduces: torch_cpu (the default) and exact.
            c.spec.hf_arithmetic = (n / 7) % 2 == 0 ? posenc::HfArithmetic::engine : posenc::HfArithmetic::exact;
            const CpuEngine engine(c.spec, CpuOptions{threads});
            ASSERT_EQ(engine.threads(), threads);
            // Positions up to 2^20; for dynamic/longrope this call is above the threshold.
            EXPECT_TRUE(engine_matches_reference(engine, c, random_positions(tokens, (1 << 20) + 1, n), n));
          }
        }
      }
    }
  }
}

// Small heads with windows at odd offsets leave 1, 2 or 3 pass-through elements on either side:
// the edge cases of the window split and of the pass-through copy.
TEST_P(EngineSweep, OddWindowEdges) {
  const KernelBuild build(GetParam());
  struct Window {
    std::int64_t head_dim, rotary, offset;
  };
  std::uint64_t n = 900;
  for (const Window w : {Window{10, 4, 5}, Window{10, 8, 1}, Window{6, 2, 3}, Window{34, 16, 1}, Window{36, 32, 3},
                         Window{4, 2, 0}, Window{2, 0, 0}}) {
    for (const Pairing pairing : all_pairings) {
      // 2-D RoPE splits the window into two halves of whole pairs: R a multiple of 4.
      if (pairing == Pairing::half_split_2d && (w.rotary == 0 ? w.head_dim : w.rotary) % 4 != 0) continue;
      for (const Numerics numerics : all_numerics) {
        for (const DType dtype : all_dtypes) {
          for (const bool out_of_place : {false, true}) {
            ++n;
            const Case c{scheme_spec(Scaling::none, w.head_dim, w.rotary, w.offset, pairing, numerics),
                         dtype,
                         64,
                         3,
                         1,
                         n % 2 == 0 ? Layout::strided : Layout::dense,
                         out_of_place,
                         2};
            const CpuEngine engine(c.spec, CpuOptions{2});
            EXPECT_TRUE(engine_matches_reference(engine, c, random_positions(64, 100000, n), n));
          }
        }
      }
    }
  }
}

// dynamic and longrope choose their table per call from the largest position. One engine serves a
// sequence of calls crossing the threshold both ways (prefill below, decode steps above, a repeated
// step that hits the per-call cache, back below), each small (inline) and large (thread pool).
TEST_P(EngineSweep, DynamicAndLongropeAcrossThreshold) {
  const KernelBuild build(GetParam());
  std::uint64_t seed = 500;
  for (const Scaling scheme : {Scaling::dynamic, Scaling::longrope}) {
    for (const Numerics numerics : all_numerics) {
      const RopeSpec spec = scheme_spec(scheme, 96, 0, 0, Pairing::half_split, numerics);
      const std::int64_t threshold = scheme_threshold(spec);
      const CpuEngine engine(spec, CpuOptions{2});
      for (const std::int64_t tokens : {3, 600}) {
        const Case c{spec, DType::bf16, tokens, 4, 1, Layout::dense, false, 2};
        for (const std::int64_t max_position :
             {threshold - 1, threshold, threshold + 1, threshold + 1, threshold + 37, threshold - 1, 4 * threshold}) {
          std::vector<std::int64_t> p = random_positions(tokens, max_position + 1, ++seed);
          p[1] = max_position;  // random_positions puts limit - 1 at index 1
          EXPECT_TRUE(engine_matches_reference(engine, c, p, seed)) << "largest position " << max_position;
        }
      }
    }
  }
}

// Infinities, NaNs with payloads, subnormals, the largest finite values (whose rotation overflows)
// and zeros go through the same arithmetic in the engine and in the reference: every non-NaN
// result is bit-identical and every NaN result is a NaN in both (a computed NaN's sign and payload
// are not specified by IEEE 754; the vectorized FMA forms legitimately differ there).
TEST_P(EngineSweep, SpecialValuesBitIdentical) {
  const KernelBuild build(GetParam());
  for (const DType dtype : all_dtypes) {
    const std::vector<std::uint32_t> specials =
        dtype == DType::f32
            ? std::vector<std::uint32_t>{0x7f800000u, 0xff800000u, 0x7fc00001u, 0x7f800001u, 0xffc12345u,
                                         0x00000001u, 0x807fffffu, 0x7f7fffffu, 0xff7fffffu, 0x00000000u,
                                         0x80000000u, 0x00800000u, 0x3f800000u}
        : dtype == DType::f16
            ? std::vector<std::uint32_t>{0x7c00u, 0xfc00u, 0x7e01u, 0x7c01u, 0xfe55u, 0x0001u, 0x83ffu,
                                         0x7bffu, 0xfbffu, 0x0000u, 0x8000u, 0x0400u, 0x3c00u}
            : std::vector<std::uint32_t>{0x7f80u, 0xff80u, 0x7fc1u, 0x7f81u, 0xffc5u, 0x0001u, 0x807fu,
                                         0x7f7fu, 0xff7fu, 0x0000u, 0x8000u, 0x0080u, 0x3f80u};
    for (const Pairing pairing : all_pairings) {
      for (const Numerics numerics : all_numerics) {
        RopeSpec spec = scheme_spec(Scaling::yarn, 64, 0, 0, pairing, numerics);
        const std::int64_t tokens = 40;
        HostTensor src(dtype, tokens, 2, 64);
        fill_random(src.view, 3);
        std::uint64_t k = 0;
        for (std::int64_t t = 0; t < tokens; ++t) {
          for (std::int64_t d = 0; d < 64; d += 3) store_bits(src.view, t, t % 2, d, specials[k++ % specials.size()]);
        }
        const HostPositions pos(spec, random_positions(tokens, 1 << 20, 17));
        HostTensor a(dtype, tokens, 2, 64);
        HostTensor b(dtype, tokens, 2, 64);
        apply_reference(spec, RopeArgs{a.view, {}, src.cview(), {}, pos.view(), {}});
        CpuEngine(spec, CpuOptions{2}).apply(RopeArgs{b.view, {}, src.cview(), {}, pos.view(), {}});
        EXPECT_TRUE(bits_equal(a.cview(), b.cview(), NanBits::any_nan)) << case_name(spec, dtype);
      }
    }
  }
}

// On CPUs with AVX512-BF16 the bfloat16 kernels round with vcvtne2ps2bf16, which takes
// subnormals as zero. hf_compatible runs them only where no rounding can meet one (activations 0
// or at least 2^-79 per block, cos/sin 0 or at least 2^-40 per token); hf_fp32_apply and accurate
// only on blocks whose float results are not subnormal; elsewhere they emulate. Activations around
// 2^-79 (one tiny element in a normal block, whole blocks near the bound or just above it, zeros,
// the full exponent range with its overflows), cos/sin scaled by attention factors around 2^-40
// and down to 2^-60 (subnormal products and results) and position 0 (sin exactly 0) must stay
// bit-identical, NaNs included, for every numerics, on both pairings and a window with a remainder
// (80: 32 + 8 pairs).
TEST_P(EngineSweep, Bf16TinyMagnitudesBitIdentical) {
  const KernelBuild build(GetParam());
  std::uint64_t seed = 700;
  for (const Pairing pairing : {Pairing::half_split, Pairing::interleaved}) {
    for (const double factor : {1.0, 0x1p-38, 0x1p-40, 0x1p-41, 0x1p-60}) {
      for (const std::int64_t head_dim : {128, 80}) {
        for (const Numerics numerics : all_numerics) {
          RopeSpec spec = scheme_spec(Scaling::none, head_dim, 0, 0, pairing, numerics);
          spec.attention_factor = factor;
          const std::int64_t tokens = 48;
          const std::int64_t heads = 4;
          HostTensor src(DType::bf16, tokens, heads, head_dim);
          fill_random(src.view, ++seed);
          std::mt19937_64 rng(seed);
          auto with_exponent = [&](std::uint32_t lo, std::uint32_t hi) {  // random sign and mantissa
            const auto r = static_cast<std::uint32_t>(rng());
            return (r & 0x807fu) | ((lo + (r >> 16) % (hi - lo + 1)) << 7);
          };
          for (std::int64_t t = 0; t < tokens; ++t) {
            for (std::int64_t h = 0; h < heads; ++h) {
              const std::int64_t mode = (t * heads + h) % 6;
              for (std::int64_t d = 0; d < head_dim; ++d) {
                if (mode == 1 && d % 7 == 0) store_bits(src.view, t, h, d, (rng() & 1) << 15);  // zeros
                if (mode == 2 && d == static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(head_dim))) {
                  store_bits(src.view, t, h, d, with_exponent(40, 47));  // below 2^-79
                }
                if (mode == 3) store_bits(src.view, t, h, d, with_exponent(44, 52));  // around 2^-79
                if (mode == 4) store_bits(src.view, t, h, d, with_exponent(48, 56));  // from 2^-79 up
                if (mode == 5) store_bits(src.view, t, h, d, with_exponent(0, 254));  // every exponent
              }
            }
          }
          std::vector<std::int64_t> p = random_positions(tokens, 1 << 16, seed);
          for (std::int64_t t = 0; t < tokens; t += 3) p[static_cast<std::size_t>(t)] = 0;
          const HostPositions pos(p);
          HostTensor a(DType::bf16, tokens, heads, head_dim);
          HostTensor b(DType::bf16, tokens, heads, head_dim);
          apply_reference(spec, RopeArgs{a.view, {}, src.cview(), {}, pos.view(), {}});
          CpuEngine(spec, CpuOptions{2}).apply(RopeArgs{b.view, {}, src.cview(), {}, pos.view(), {}});
          EXPECT_TRUE(bits_equal(a.cview(), b.cview())) << case_name(spec, DType::bf16) << " factor " << factor;
        }
      }
    }
  }
}

// The sweeps above force each build with POSENC_CPU_ISA; a CPU without it runs a narrower one.
// kernel_build names the build that really runs: the forced one where the CPU has it (so the
// sweeps' avx512 and avx2 cases exercise those builds here), the AVX512-BF16 build only for
// bfloat16 half_split / interleaved, and "baseline" whatever the CPU when forced.
TEST_P(EngineSweep, KernelBuildNamesTheBuildThatRuns) {
  const KernelBuild build(GetParam());
#if defined(__x86_64__) || defined(__i386__)
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
#else
  const bool avx2 = false, avx512 = false, bf16 = false;
#endif
  const std::string widest = avx512 ? "avx512" : avx2 ? "avx2" : "baseline";
  const std::string& param = GetParam();
  std::string expected = widest;  // every dtype but a bf16 rotation the BF16 build serves
  if (param == "baseline") expected = "baseline";
  if (param == "avx2" && avx2) expected = "avx2";
  for (const Pairing pairing : all_pairings) {
    const CpuEngine engine(scheme_spec(Scaling::none, 128, 0, 0, pairing, Numerics::hf_compatible), CpuOptions{1});
    for (const DType dtype : all_dtypes) {
      const bool bf16_build = param == "native" && bf16 && dtype == DType::bf16 &&
                              (pairing == Pairing::half_split || pairing == Pairing::interleaved);
      EXPECT_EQ(engine.kernel_build(dtype), bf16_build ? "avx512_bf16" : expected)
          << GetParam() << " " << to_string(dtype) << " " << to_string(pairing);
    }
  }
  CpuEngine moved(scheme_spec(Scaling::none), CpuOptions{1});
  const CpuEngine taker(std::move(moved));
  EXPECT_EQ(moved.kernel_build(DType::f32), "");  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(taker.kernel_build(static_cast<DType>(250)), "");
}

INSTANTIATE_TEST_SUITE_P(Kernels, EngineSweep, ::testing::Values("native", "avx512", "avx2", "baseline"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// Several threads share one engine: only one can use its pool at a time, the others rotate on
// their own thread; every result is still the reference's.
TEST(CpuEngine, ConcurrentCallsOnOneEngine) {
  const RopeSpec spec = scheme_spec(Scaling::llama3, 128, 0, 0, Pairing::half_split, Numerics::hf_compatible);
  const CpuEngine engine(spec, CpuOptions{2});
  std::vector<std::thread> callers;
  std::vector<int> failures(4, 0);
  for (int i = 0; i < 4; ++i) {
    callers.emplace_back([&, i] {
      for (int round = 0; round < 10; ++round) {
        const Case c{spec, DType::bf16, 300, 8, 2, Layout::dense, round % 2 == 1, 2};
        if (!engine_matches_reference(engine, c,
                                      random_positions(300, 100000, static_cast<std::uint64_t>(i * 100 + round)),
                                      static_cast<std::uint64_t>(i * 100 + round))) {
          ++failures[static_cast<std::size_t>(i)];
        }
      }
    });
  }
  for (std::thread& t : callers) t.join();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(failures[static_cast<std::size_t>(i)], 0) << "caller " << i;
}

// The engine exposes its spec, its init-time table (equal to compute_frequencies) and its thread
// count; it can be moved, and a moved-from engine refuses to run instead of crashing.
TEST(CpuEngine, AccessorsAndMoves) {
  const RopeSpec spec = scheme_spec(Scaling::yarn, 128, 64, 64, Pairing::interleaved, Numerics::accurate);
  CpuEngine engine(spec, CpuOptions{2});
  EXPECT_EQ(engine.threads(), 2);
  EXPECT_EQ(engine.spec().rotary_offset, 64);
  const FrequencyTable table = compute_frequencies(spec);
  ASSERT_EQ(engine.frequencies().inv_freq.size(), table.inv_freq.size());
  for (std::size_t i = 0; i < table.inv_freq.size(); ++i) {
    EXPECT_EQ(engine.frequencies().inv_freq[i], table.inv_freq[i]) << "inv_freq[" << i << "]";
  }
  EXPECT_EQ(engine.frequencies().attention_factor, table.attention_factor);
  EXPECT_GE(CpuEngine(spec).threads(), 1);  // 0 = hardware_concurrency

  CpuEngine moved(std::move(engine));
  const Case c{spec, DType::f16, 50, 4, 2, Layout::strided, true, 2};
  EXPECT_TRUE(engine_matches_reference(moved, c, random_positions(50, 70000, 1), 1));
  World w(DType::f16, 50, 4, 2, 128, Layout::dense, false, HostPositions(random_positions(50, 70000, 1)), 1);
  EXPECT_TRUE(throws_error([&] { engine.apply(w.args); },  // NOLINT(bugprone-use-after-move)
                           ErrorKind::invalid_argument, {"moved-from"}));
  CpuEngine assigned(scheme_spec(Scaling::none), CpuOptions{1});
  assigned = std::move(moved);
  EXPECT_TRUE(engine_matches_reference(assigned, c, random_positions(50, 70000, 2), 2));
  EXPECT_TRUE(throws_error([] { CpuEngine(scheme_spec(Scaling::none), CpuOptions{-1}); }, ErrorKind::invalid_argument,
                           {"CpuOptions.threads -1"}));
}

/// Heap allocations made while `fn` runs (on any thread).
template <typename Fn>
std::int64_t allocations_during(Fn fn) {
  allocations = 0;
  count_allocations = true;
  fn();
  count_allocations = false;
  return allocations.load();
}

// The hot path allocates nothing: validation, the call's frequency table, the kernels and the
// thread pool run from fixed storage, for calls run inline and calls spread over the pool. The one
// exception is documented: a dynamic/longrope call whose seq_len is new and above the threshold
// builds its table once (compute_frequencies returns a vector); repeating that seq_len allocates
// nothing.
TEST(CpuEngine, ApplyAllocatesNothing) {
  // The counter itself works: a vector allocates.
  ASSERT_EQ(allocations_during([] {
              std::vector<int> v(10);
              (void)v;
            }),
            1);
  for (const Scaling scheme : {Scaling::llama3, Scaling::dynamic, Scaling::longrope}) {
    const RopeSpec spec = scheme_spec(scheme, 128, 0, 0, Pairing::half_split, Numerics::hf_compatible);
    const CpuEngine engine(spec, CpuOptions{2});
    for (const std::int64_t tokens : {3, 1000}) {
      World w(DType::bf16, tokens, 8, 2, 128, Layout::dense, false, HostPositions(random_positions(tokens, 1 << 20, 5)),
              5);
      const std::int64_t first = allocations_during([&] { engine.apply(w.args); });
      if (scheme == Scaling::llama3) {
        EXPECT_EQ(first, 0) << to_string(scheme) << " T " << tokens << ": first call";
      }
      EXPECT_EQ(allocations_during([&] {
                  for (int i = 0; i < 5; ++i) engine.apply(w.args);
                }),
                0)
          << to_string(scheme) << " T " << tokens << ": repeated calls";
    }
  }
}

// Exotic but valid layouts pass validation and rotate correctly: one token with token_stride 0,
// one head with head_stride 0, and heads interleaved across tokens (rows at t*4 + h*6, D = 2),
// which no "sorted strides" rule accepts but whose rows never meet.
TEST(CpuEngine, ExoticValidLayouts) {
  RopeSpec spec = scheme_spec(Scaling::none, 2, 0, 0, Pairing::half_split, Numerics::accurate);
  struct Shape {
    std::int64_t tokens, heads, token_stride, head_stride;
  };
  for (const Shape s : {Shape{1, 3, 0, 2}, Shape{5, 1, 2, 0}, Shape{3, 2, 4, 6}}) {
    const std::int64_t bytes = view_bytes(DType::f32, s.tokens, s.heads, 2, s.token_stride, s.head_stride);
    HostBuffer ref_buffer(bytes);
    HostBuffer eng_buffer(bytes);
    const TensorView ref_view{ref_buffer.data(), DType::f32, s.tokens, s.heads, 2, s.token_stride, s.head_stride};
    const TensorView eng_view{eng_buffer.data(), DType::f32, s.tokens, s.heads, 2, s.token_stride, s.head_stride};
    fill_random(ref_view, 9);
    fill_random(eng_view, 9);
    const HostPositions pos(random_positions(s.tokens, 1000, 4));
    apply_reference(spec, RopeArgs{ref_view, {}, {}, {}, pos.view(), {}});
    CpuEngine(spec, CpuOptions{2}).apply(RopeArgs{eng_view, {}, {}, {}, pos.view(), {}});
    EXPECT_TRUE(bytes_equal(ref_buffer.snapshot(), eng_buffer)) << describe(ConstTensorView(eng_view));
    EXPECT_TRUE(all_written(ConstTensorView(eng_view))) << describe(ConstTensorView(eng_view));
  }
}

}  // namespace

namespace {

// The row cache (src/cpu/row_cache.hpp): rows filled by one call and reused by later calls give
// the same bits as computing them, in every dtype and numerics, for positions inside and outside
// the cached range (the default spec caches positions below 65536).
TEST(CpuEngineRowCache, RepeatedCallsReuseRowsBitForBit) {
  const std::vector<std::int64_t> positions = {0, 1, 2, 3, 0, 1, 4095, 65535, 65536, 1 << 20, 3, 3, 77, 0};
  const std::int64_t tokens = static_cast<std::int64_t>(positions.size());
  for (DType dtype : {DType::bf16, DType::f16, DType::f32}) {
    for (Numerics numerics : {Numerics::hf_compatible, Numerics::hf_fp32_apply, Numerics::accurate})
    for (const posenc::HfArithmetic arithmetic : {posenc::HfArithmetic::torch_cpu, posenc::HfArithmetic::exact}) {
      RopeSpec spec;
      spec.head_dim = 128;
      spec.theta = 500000.0;
      spec.numerics = numerics;
      spec.hf_arithmetic = arithmetic;
      const CpuEngine engine(spec, CpuOptions{2});
      for (int call = 0; call < 3; ++call) {  // call 0 fills the rows, calls 1 and 2 read them
        HostTensor want(dtype, tokens, 3, 128);
        fill_random(want.view, 100 + static_cast<std::uint64_t>(call));
        HostTensor got(dtype, tokens, 3, 128);
        std::memcpy(got.buffer.data(), want.buffer.data(), static_cast<std::size_t>(want.buffer.size()));
        RopeArgs ref_args;
        ref_args.q = want.view;
        ref_args.positions = {positions.data(), IndexType::i64, tokens};
        apply_reference(spec, ref_args);
        RopeArgs args = ref_args;
        args.q = got.view;
        engine.apply(args);
        EXPECT_EQ(std::memcmp(want.buffer.data(), got.buffer.data(), static_cast<std::size_t>(want.buffer.size())), 0)
            << to_string(dtype) << " " << to_string(numerics) << " " << to_string(arithmetic) << ", call " << call;
      }
    }
  }
}

}  // namespace

namespace {

// Operation counters: off by default (nothing counted), on: calls, tokens and the bytes the calls
// must move (in place: only the rotary window; out of place: whole heads), reset to zero.
TEST(CpuEngineCounters, CountCallsTokensAndBytesOnlyWhenEnabled) {
  RopeSpec spec;
  spec.head_dim = 128;
  spec.rotary_dim = 64;  // partial: in place moves only the window
  const CpuEngine engine(spec);
  const std::vector<std::int64_t> positions = {0, 1, 2, 3, 4};
  HostTensor q(DType::bf16, 5, 4, 128);
  HostTensor k(DType::bf16, 5, 2, 128);
  fill_random(q.view, 1);
  fill_random(k.view, 2);
  RopeArgs args;
  args.q = q.view;
  args.k = k.view;
  args.positions = {positions.data(), IndexType::i64, 5};

  engine.apply(args);
  EXPECT_EQ(engine.counters().calls, 0) << "counters are off by default";

  engine.enable_counters(true);
  engine.apply(args);  // in place
  HostTensor q_out(DType::bf16, 5, 4, 128);
  RopeArgs out_of_place = args;
  out_of_place.q = q_out.view;
  out_of_place.q_src = q.cview();
  out_of_place.k = TensorView{};
  engine.apply(out_of_place);  // Q only, out of place
  const OperationCounters c = engine.counters();
  EXPECT_EQ(c.calls, 2);
  EXPECT_EQ(c.tokens, 10);
  const std::int64_t in_place = 2 * 5 * (4 + 2) * 64 * 2;  // 2 x tokens x heads x window x bf16
  const std::int64_t q_whole = 2 * 5 * 4 * 128 * 2;
  EXPECT_EQ(c.bytes, in_place + q_whole);

  engine.enable_counters(false);
  engine.apply(args);
  EXPECT_EQ(engine.counters().calls, 2) << "nothing is counted while off";
  engine.reset_counters();
  EXPECT_EQ(engine.counters().calls, 0);
  EXPECT_EQ(engine.counters().bytes, 0);
}

}  // namespace

namespace {

// The fused append reuses its per-thread K scratch: after a first call of a given size, further
// calls of that size or smaller allocate nothing (the steady state of decode and prefill).
TEST(CpuEngine, AppendAllocatesNothingOnceWarm) {
  RopeSpec spec = scheme_spec(Scaling::none, 128, 64, 0, Pairing::interleaved, Numerics::hf_compatible);
  const CpuEngine engine(spec, CpuOptions{2});
  const std::int64_t tokens = 700;  // large enough for the pool
  HostTensor q(DType::bf16, tokens, 8, 128), k(DType::bf16, tokens, 2, 128), v(DType::bf16, tokens, 2, 128);
  fill_random(q.view, 1);
  fill_random(k.view, 2);
  fill_random(v.view, 3);
  std::vector<std::int64_t> positions(static_cast<std::size_t>(tokens)), slots(static_cast<std::size_t>(tokens));
  for (std::int64_t t = 0; t < tokens; ++t) {
    positions[static_cast<std::size_t>(t)] = t;
    slots[static_cast<std::size_t>(t)] = t;
  }
  std::vector<std::uint16_t> k_cache(static_cast<std::size_t>(tokens * 2 * 128)), v_cache(k_cache.size());
  AppendArgs args;
  args.q = q.view;
  args.k = k.cview();
  args.v = v.cview();
  args.positions = {positions.data(), IndexType::i64, tokens};
  args.slots = slots.data();
  args.cache.k = k_cache.data();
  args.cache.v = v_cache.data();
  args.cache.dtype = CacheDType::bf16;
  args.cache.layout = CacheLayout::contiguous;
  args.cache.kv_heads = 2;
  args.cache.head_dim = 128;
  args.cache.blocks = 1;
  args.cache.block_len = tokens;
  engine.append(args);  // warms the scratch
  EXPECT_EQ(allocations_during([&] {
              for (int i = 0; i < 3; ++i) engine.append(args);
            }),
            0);
}

}  // namespace

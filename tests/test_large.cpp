// Large tests (label large): a bf16 Q of more than 2^31 elements rotated by CpuEngine and checked at sampled tokens, and the conversions (branch-free, F16C, AVX512-BF16) over all 2^32 floats.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#endif

#include "core/rope_math.hpp"
#include "core/validate.hpp"
#include "posenc/cpu.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/plain_conversions.hpp"
#include "support/reference64.hpp"
#include "support/specs.hpp"

namespace {

using namespace posenc;        // NOLINT(google-build-using-namespace)
using namespace posenc::test;  // NOLINT(google-build-using-namespace)

/// MemAvailable from /proc/meminfo in bytes, or -1 when unknown.
std::int64_t available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::int64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return -1;
}

/// The input of element `index` (its linear offset): a cheap hash made into a bf16 value with
/// random sign, exponent in [2^-2, 2^2) and mantissa; never zero. Cheap enough to fill 2^31
/// elements in about a second, and recomputable for any sampled element without a second copy.
std::uint16_t large_input_bits(std::uint64_t index) {
  std::uint64_t h = index * 0x9e3779b97f4a7c15ull;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  const auto sign = static_cast<std::uint16_t>((h >> 15) & 0x8000u);
  const auto exponent = static_cast<std::uint16_t>((125u + ((h >> 8) & 3u)) << 7);
  return static_cast<std::uint16_t>(sign | exponent | (h & 0x7fu));
}

/// Runs fn(begin, end) over [0, n) on `threads` std::threads.
template <typename Fn>
void parallel_for(std::int64_t n, int threads, Fn fn) {
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    workers.emplace_back([=] { fn(n * i / threads, n * (i + 1) / threads); });
  }
  for (std::thread& w : workers) w.join();
}

// bf16 Q [2^17 + 1, 128, 128]: 2^31 + 16384 elements, 4.3 GB, so element offsets and byte offsets
// pass 2^31 and 2^32. GLM-4.5-style partial rotary (64 of 128, half split) rotated in place by a
// 2-thread CpuEngine. Sampled tokens, the last ones included, must be bit-identical to
// apply_reference on the same rows, within tolerance of the float64 reference, and their
// pass-through halves untouched.
TEST(Large, TensorAbove2To31ElementsRotatedByCpuEngine) {
  constexpr std::int64_t tokens = (std::int64_t{1} << 17) + 1;
  constexpr std::int64_t heads = 128;
  constexpr std::int64_t head_dim = 128;
  constexpr std::int64_t elements = tokens * heads * head_dim;
  static_assert(elements > (std::int64_t{1} << 31));
  const std::int64_t bytes = elements * 2;
  const std::int64_t available = available_memory();
  if (available >= 0 && available < bytes + (std::int64_t{1} << 30)) {
    GTEST_SKIP() << "needs " << bytes / (1 << 20) << " MiB plus 1 GiB of headroom; MemAvailable is "
                 << available / (1 << 20) << " MiB";
  }

  RopeSpec spec = scheme_spec(Scaling::none, head_dim, 64, 0, Pairing::half_split, Numerics::hf_compatible);
  spec.theta = 1e6;
  const CpuEngine engine(spec, CpuOptions{2});

  HostBuffer buffer(bytes);
  const TensorView q{buffer.data(), DType::bf16, tokens, heads, head_dim, heads * head_dim, head_dim};
  const auto t0 = std::chrono::steady_clock::now();
  parallel_for(elements, 2, [&](std::int64_t begin, std::int64_t end) {
    auto* p = reinterpret_cast<std::uint16_t*>(buffer.data());
    for (std::int64_t i = begin; i < end; ++i) p[i] = large_input_bits(static_cast<std::uint64_t>(i));
  });
  std::vector<std::int64_t> positions(static_cast<std::size_t>(tokens));
  for (std::int64_t t = 0; t < tokens; ++t) positions[static_cast<std::size_t>(t)] = t;
  const HostPositions pos(std::move(positions));

  const auto t1 = std::chrono::steady_clock::now();
  engine.apply(RopeArgs{q, {}, {}, {}, pos.view(), {}});
  const auto t2 = std::chrono::steady_clock::now();
  const double seconds = std::chrono::duration<double>(t2 - t1).count();
  std::printf("  fill %.2f s; CpuEngine (%d threads) rotated %.2f GB in place in %.2f s: %.2f GB/s read+write\n",
              std::chrono::duration<double>(t1 - t0).count(), engine.threads(), static_cast<double>(bytes) / 1e9,
              seconds, 2.0 * static_cast<double>(bytes) / seconds / 1e9);

  // Sampled tokens: the first, some spread through the middle, and the last eight.
  std::vector<std::int64_t> sample = {0, 1, 2, 4097, 65535, 65536, 99991, tokens / 2};
  for (std::int64_t t = tokens - 8; t < tokens; ++t) sample.push_back(t);
  const auto n = static_cast<std::int64_t>(sample.size());
  HostTensor rows(DType::bf16, n, heads, head_dim);  // the sampled tokens' inputs, then the reference's output
  HostTensor inputs(DType::bf16, n, heads, head_dim);
  HostTensor engine_rows(DType::bf16, n, heads, head_dim);
  for (std::int64_t j = 0; j < n; ++j) {
    const std::int64_t t = sample[static_cast<std::size_t>(j)];
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t d = 0; d < head_dim; ++d) {
        const std::uint64_t index = static_cast<std::uint64_t>((t * heads + h) * head_dim + d);
        store_bits(rows.view, j, h, d, large_input_bits(index));
        store_bits(inputs.view, j, h, d, large_input_bits(index));
        store_bits(engine_rows.view, j, h, d, load_bits(ConstTensorView(q), t, h, d));
      }
    }
  }
  const HostPositions sample_pos(sample);
  apply_reference(spec, RopeArgs{rows.view, {}, {}, {}, sample_pos.view(), {}});
  EXPECT_TRUE(bits_equal(rows.cview(), engine_rows.cview())) << "sampled tokens of the large tensor vs apply_reference";

  const FrequencyTable table = compute_frequencies(spec, tokens);
  const Expected64 expected = rotate64(spec, pair_axes(spec, table), table.attention_factor,
                                       AngleModel::float32_product, inputs.cview(), sample_pos.view());
  EXPECT_TRUE(near64(expected, engine_rows.cview(), DType::bf16,
                     tolerance_ulps(DType::bf16, spec.numerics, table.attention_factor)));
  for (std::int64_t j = 0; j < n; ++j) {
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t d = 64; d < head_dim; ++d) {
        ASSERT_EQ(load_bits(engine_rows.cview(), j, h, d), load_bits(inputs.cview(), j, h, d))
            << "pass-through element of token " << sample[static_cast<std::size_t>(j)] << ", head " << h << ", dim "
            << d;
      }
    }
  }
}

// rope_math.hpp's branch-free conversions against the plain case-by-case ones, for every float.
TEST(Large, BranchFreeConversionsEqualPlainForAll2To32Floats) {
  std::atomic<std::int64_t> mismatches{0};
  std::atomic<std::uint64_t> first_bad{~0ull};
  parallel_for(std::int64_t{1} << 32, 2, [&](std::int64_t begin, std::int64_t end) {
    std::int64_t bad = 0;
    for (std::int64_t x = begin; x < end; ++x) {
      const auto u = static_cast<std::uint32_t>(x);
      const float f = plain::value(u);
      const bool ok =
          detail::to_f16_bits(f) == plain::to_f16(f) && detail::to_bf16_bits(f) == plain::to_bf16(f) &&
          plain::bits(detail::round_act<DType::f16>(f)) == plain::bits(plain::from_f16(plain::to_f16(f))) &&
          plain::bits(detail::round_act<DType::bf16>(f)) == plain::bits(plain::from_bf16(plain::to_bf16(f)));
      if (!ok && bad++ == 0) {
        std::uint64_t expected = ~0ull;
        first_bad.compare_exchange_strong(expected, u);
      }
    }
    mismatches += bad;
  });
  EXPECT_EQ(mismatches.load(), 0) << "first mismatching float bits 0x" << std::hex << first_bad.load();
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/// The F16C round trip the CPU engine's AVX2 / AVX-512 float16 kernels use (src/cpu/kernels.hpp,
/// f16_round8), eight floats at a time.
[[gnu::target("avx2,f16c")]] void f16c_round_trip(const std::uint32_t* in, std::uint32_t* out) {
  const __m256 x = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in)));
  const __m256 r = _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_castps_si256(r));
}

/// The same round trip in the EVEX forms of the AVX-512 build (f16c_round with 16 lanes), sixteen
/// floats at a time: the masked forms with every lane on, as the kernels write them.
[[gnu::target("avx512f")]] void f16c_round_trip16(const std::uint32_t* in, std::uint32_t* out) {
  const __m512 x = _mm512_castsi512_ps(_mm512_loadu_si512(in));
  const __m512 r =
      _mm512_maskz_cvtph_ps(0xffff, _mm512_maskz_cvtps_ph(0xffff, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  _mm512_storeu_si512(out, _mm512_castps_si512(r));
}

/// Compares `round_trip` (`lanes` floats at a time) with f16_round for every float.
template <int lanes, class RoundTrip>
void expect_f16_round_for_all_floats(RoundTrip round_trip) {
  std::atomic<std::int64_t> mismatches{0};
  std::atomic<std::uint64_t> first_bad{~0ull};
  parallel_for((std::int64_t{1} << 32) / lanes, 2, [&](std::int64_t begin, std::int64_t end) {
    std::int64_t bad = 0;
    std::uint32_t in[lanes];
    std::uint32_t out[lanes];
    for (std::int64_t group = begin; group < end; ++group) {
      for (int i = 0; i < lanes; ++i) in[i] = static_cast<std::uint32_t>(group * lanes + i);
      round_trip(in, out);
      for (int i = 0; i < lanes; ++i) {
        if (out[i] == plain::bits(detail::f16_round(plain::value(in[i])))) continue;
        if (bad++ == 0) {
          std::uint64_t expected = ~0ull;
          first_bad.compare_exchange_strong(expected, in[i]);
        }
      }
    }
    mismatches += bad;
  });
  EXPECT_EQ(mismatches.load(), 0) << "first mismatching float bits 0x" << std::hex << first_bad.load();
}

// The hardware float16 round trip the CPU kernels rely on gives rope_math.hpp's f16_round bits
// (rounding, subnormals, overflow to inf, NaN payloads) for every float, in both widths.
TEST(Large, F16cRoundTripEqualsF16RoundForAll2To32Floats) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("f16c")) {
    GTEST_SKIP() << "this CPU has no AVX2/F16C: the CPU engine does not use the F16C kernels here";
  }
  expect_f16_round_for_all_floats<8>(f16c_round_trip);
}

TEST(Large, F16cRoundTrip16LanesEqualsF16RoundForAll2To32Floats) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("f16c")) {
    GTEST_SKIP() << "this CPU has no AVX-512: the CPU engine does not use the 16-lane F16C kernels here";
  }
  expect_f16_round_for_all_floats<16>(f16c_round_trip16);
}

/// The bfloat16 rounding of the CPU engine's AVX512-BF16 kernels (src/cpu/kernels.hpp): 32 floats
/// rounded by vcvtne2ps2bf16 and widened back to float lanes by unpacking against zero, as the
/// kernels do, then put back in input order (the unpack's lane order is tested with the kernels).
[[gnu::target("avx512f,avx512bw,avx512bf16")]] void bf16_hardware_round(const std::uint32_t* in,
                                                                       std::uint32_t* out) {
  const __m512 low = _mm512_castsi512_ps(_mm512_loadu_si512(in));
  const __m512 high = _mm512_castsi512_ps(_mm512_loadu_si512(in + 16));
  const __m512i words = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(high, low));  // in[0..31] in order
  const __m512i zero = _mm512_setzero_si512();
  // The low unpack holds words {0-3, 8-11, 16-19, 24-27}, the high one {4-7, 12-15, 20-23, 28-31}.
  alignas(64) std::uint32_t unpacked[32];
  _mm512_store_si512(unpacked, _mm512_unpacklo_epi16(zero, words));
  _mm512_store_si512(unpacked + 16, _mm512_unpackhi_epi16(zero, words));
  for (int k = 0; k < 16; ++k) {
    out[8 * (k / 4) + k % 4] = unpacked[k];
    out[8 * (k / 4) + 4 + k % 4] = unpacked[16 + k];
  }
}

// The hardware bfloat16 rounding the CPU kernels use on AVX512-BF16 gives bf16_round's bits
// (rounding, overflow to inf, NaN payloads) for every float that is not subnormal; subnormals,
// which it takes as zero, become a zero of their sign. The kernels take that path only where no
// rounding can see a subnormal (tests/test_cpu_engine.cpp checks the guard, kernels.hpp argues it).
TEST(Large, Bf16HardwareRoundEqualsBf16RoundForAll2To32Floats) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512bf16")) {
    GTEST_SKIP() << "this CPU has no AVX512-BF16: the CPU engine does not use vcvtne2ps2bf16 here";
  }
  std::atomic<std::int64_t> mismatches{0};
  std::atomic<std::uint64_t> first_bad{~0ull};
  parallel_for(std::int64_t{1} << 27, 2, [&](std::int64_t begin, std::int64_t end) {
    std::int64_t bad = 0;
    std::uint32_t in[32];
    std::uint32_t out[32];
    for (std::int64_t group = begin; group < end; ++group) {
      for (int i = 0; i < 32; ++i) in[i] = static_cast<std::uint32_t>(group * 32 + i);
      bf16_hardware_round(in, out);
      for (int i = 0; i < 32; ++i) {
        const bool subnormal = (in[i] & 0x7f800000u) == 0 && (in[i] & 0x007fffffu) != 0;
        const std::uint32_t expected =
            subnormal ? in[i] & 0x80000000u : plain::bits(detail::bf16_round(plain::value(in[i])));
        if (out[i] == expected) continue;
        if (bad++ == 0) {
          std::uint64_t none = ~0ull;
          first_bad.compare_exchange_strong(none, in[i]);
        }
      }
    }
    mismatches += bad;
  });
  EXPECT_EQ(mismatches.load(), 0) << "first mismatching float bits 0x" << std::hex << first_bad.load();
}
#endif

}  // namespace

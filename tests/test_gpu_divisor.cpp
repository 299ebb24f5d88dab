// The GPU kernels' division by a launch constant (gpu/rope_params.hpp Divisor) against plain integer division (host-only).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "gpu/rope_params.hpp"

namespace {

using posenc::gpu::detail::divide;
using posenc::gpu::detail::make_divisor;

constexpr std::uint32_t n_limit = 0x80000000u;  // the kernels divide n in [0, 2^31)

/// Checks n / d for the n that stress a divisor: the smallest values, every multiple of d +-1 at
/// both ends of the range, the top of the range, and random draws.
void check_divisor(std::uint32_t d, std::mt19937_64& rng) {
  const auto m = make_divisor(d);
  auto expect = [&](std::uint32_t n) {
    ASSERT_EQ(divide(n, m), n / d) << "n = " << n << ", d = " << d << " (mul " << m.mul << ", shift " << m.shift << ")";
  };
  for (std::uint32_t n = 0; n < 4096; ++n) expect(n);
  for (std::uint32_t k = 1; k < 64; ++k) {
    const std::uint64_t low = std::uint64_t{k} * d;
    const std::uint64_t high = (std::uint64_t{n_limit - 1} / d - k + 1) * d;
    for (std::uint64_t base : {low, high}) {
      for (std::int64_t off = -1; off <= 1; ++off) {
        const std::int64_t n = static_cast<std::int64_t>(base) + off;
        if (n >= 0 && n < static_cast<std::int64_t>(n_limit)) expect(static_cast<std::uint32_t>(n));
      }
    }
  }
  for (std::uint32_t n = n_limit - 4096; n < n_limit; ++n) expect(n);
  std::uniform_int_distribution<std::uint32_t> any(0, n_limit - 1);
  for (int i = 0; i < 4096; ++i) expect(any(rng));
}

TEST(GpuDivisor, EqualsIntegerDivisionForSmallDivisors) {
  std::mt19937_64 rng(7);
  for (std::uint32_t d = 1; d <= 2048; ++d) {
    check_divisor(d, rng);
    if (HasFatalFailure()) return;
  }
}

TEST(GpuDivisor, EqualsIntegerDivisionForLargeAndPowerOfTwoDivisors) {
  std::mt19937_64 rng(11);
  std::vector<std::uint32_t> ds = {n_limit - 1, n_limit - 2, (n_limit >> 1) + 1, n_limit >> 1, 65535, 65536, 65537,
                                   1u << 20, (1u << 20) + 1, 3u << 28, 1000003, 268431360};
  for (int s = 0; s < 31; ++s) ds.push_back(1u << s);
  std::uniform_int_distribution<std::uint32_t> any(1, n_limit - 1);
  for (int i = 0; i < 200; ++i) ds.push_back(any(rng));
  for (std::uint32_t d : ds) {
    check_divisor(d, rng);
    if (HasFatalFailure()) return;
  }
}

// Every n for the divisors of the main benchmark shape (32 + 8 heads, 64 pairs, a batch of 16
// slots x 4 rows) and of GLM-4.5 (96 + 8 heads): a quarter of the range each, strided.
TEST(GpuDivisor, EqualsIntegerDivisionOverTheRangeForMainShapes) {
  for (std::uint32_t d : {40u, 64u, 104u, 192u}) {
    const auto m = make_divisor(d);
    std::uint64_t bad = 0;
    std::uint32_t first = 0;
    for (std::uint32_t n = d % 4; n < n_limit; n += 4) {
      if (divide(n, m) != n / d && bad++ == 0) first = n;
    }
    EXPECT_EQ(bad, 0u) << "d = " << d << ", first wrong n = " << first;
  }
}

}  // namespace

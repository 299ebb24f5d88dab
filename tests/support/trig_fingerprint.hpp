// Test support: which cos/sin this host's torch_cpu arithmetic computes (MKL picks its kernel by CPU), as scripts/golden/hf_rotary.py's trig_fingerprint does with torch.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/hf_arithmetic.hpp"

namespace posenc::test {

/// The digest (hf_rotary.digest) of torch_cpu's float32 cos then sin of 8192 fixed angles up to
/// 2^20: angle i = fl32(u_i) * 2^-12, u_i = i * 2654435761 mod 2^32. Fixtures record the value of
/// the machine that made them; outputs that depend on cos/sin are comparable only where it is the
/// same (an Intel CPU's MKL kernels round some values differently from the generic kernel that
/// runs on AMD, and torch on that CPU does too). Empty without MKL.
inline std::string torch_cpu_trig_fingerprint() {
  if (!detail::torch_cpu_trig_available()) return {};
  constexpr std::int64_t n = 8192;
  std::vector<float> angle(n), c(n), s(n);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto u = static_cast<std::uint32_t>(static_cast<std::uint64_t>(i) * 2654435761u);
    angle[static_cast<std::size_t>(i)] = static_cast<float>(u) * 0x1p-12f;
  }
  detail::torch_cpu_cos_sin(angle.data(), n, c.data(), s.data());
  std::uint64_t sum = 0;
  std::uint64_t index = 0;
  for (const std::vector<float>* v : {&c, &s}) {
    for (const float f : *v) {
      std::uint32_t b;
      __builtin_memcpy(&b, &f, 4);
      sum += static_cast<std::uint64_t>(b) * ((2 * index + 1) * 0x9E3779B97F4A7C15ull);
      ++index;
    }
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(sum));
  return text;
}

}  // namespace posenc::test

// Test support: comparison and ulp helpers (see compare.hpp).
#include "support/compare.hpp"

#include <cmath>
#include <cstring>
#include <iomanip>
#include <sstream>

namespace posenc::test {
namespace {

int mantissa_bits(DType t) { return significand_bits(t) - 1; }

std::string hex(std::uint32_t bits, DType t) {
  std::ostringstream s;
  s << "0x" << std::hex << std::setfill('0') << std::setw(static_cast<int>(2 * size_of(t))) << bits;
  return s.str();
}

std::string value_text(double v) {
  std::ostringstream s;
  s << std::setprecision(17) << v;
  return s.str();
}

/// Bits mapped to a line where adjacent values are adjacent integers (sign-magnitude to two's complement).
std::int64_t ordered(DType t, std::uint32_t bits) {
  const int width = static_cast<int>(8 * size_of(t));
  const std::uint32_t sign = 1u << (width - 1);
  const std::int64_t magnitude = bits & (sign - 1u);
  return (bits & sign) != 0 ? -magnitude : magnitude;
}

std::uint32_t poison_of(DType t) {
  return t == DType::f32 ? (static_cast<std::uint32_t>(poison_bits16) << 16 | poison_bits16) : poison_bits16;
}

}  // namespace

double ulp_of(DType t, double m) {
  m = std::fabs(m);
  int e = min_normal_exponent(t);
  if (m >= std::ldexp(1.0, e)) e = std::ilogb(m);
  return std::ldexp(1.0, e - mantissa_bits(t));
}

std::int64_t ulp_distance(DType t, std::uint32_t a_bits, std::uint32_t b_bits) {
  const std::int64_t d = ordered(t, a_bits) - ordered(t, b_bits);
  return d < 0 ? -d : d;
}

::testing::AssertionResult near64(const Expected64& expected, const ConstTensorView& actual, DType unit, double ulps,
                                  ErrorStats* stats) {
  if (expected.tokens != actual.tokens || expected.heads != actual.heads || expected.head_dim != actual.head_dim) {
    return ::testing::AssertionFailure() << "shape of expected [" << expected.tokens << ", " << expected.heads << ", "
                                         << expected.head_dim << "] differs from actual " << describe(actual);
  }
  ErrorStats local;
  for (std::int64_t t = 0; t < actual.tokens; ++t) {
    for (std::int64_t h = 0; h < actual.heads; ++h) {
      double head_max = 0.0;
      for (std::int64_t d = 0; d < actual.head_dim; ++d)
        head_max = std::fmax(head_max, std::fabs(expected.at(t, h, d)));
      const double unit_ulp = ulp_of(unit, head_max);
      for (std::int64_t d = 0; d < actual.head_dim; ++d) {
        const double want = expected.at(t, h, d);
        const std::uint32_t bits = load_bits(actual, t, h, d);
        const double got = decode_bits(actual.dtype, bits);
        const double err = std::fabs(got - want) / unit_ulp;
        if (!(err <= ulps)) {  // also catches NaN
          return ::testing::AssertionFailure()
                 << "element (token " << t << ", head " << h << ", dim " << d << ") of " << describe(actual)
                 << ": expected " << value_text(want) << " (float64), got " << value_text(got) << " (bits "
                 << hex(bits, actual.dtype) << "); error " << err << " ulp of " << to_string(unit)
                 << " at the head's max |value| " << value_text(head_max) << ", allowed " << ulps;
        }
        if (err > local.max_ulps) local = {err, t, h, d};
      }
    }
  }
  if (stats != nullptr) *stats = local;
  return ::testing::AssertionSuccess() << "max error " << local.max_ulps << " ulp";
}

::testing::AssertionResult bits_equal(const ConstTensorView& expected, const ConstTensorView& actual, NanBits nan) {
  if (expected.tokens != actual.tokens || expected.heads != actual.heads || expected.head_dim != actual.head_dim ||
      expected.dtype != actual.dtype) {
    return ::testing::AssertionFailure() << "expected " << describe(expected) << " but actual is " << describe(actual);
  }
  std::int64_t mismatches = 0;
  std::ostringstream first;
  for (std::int64_t t = 0; t < actual.tokens; ++t) {
    for (std::int64_t h = 0; h < actual.heads; ++h) {
      for (std::int64_t d = 0; d < actual.head_dim; ++d) {
        const std::uint32_t e = load_bits(expected, t, h, d);
        const std::uint32_t a = load_bits(actual, t, h, d);
        if (e == a) continue;
        if (nan == NanBits::any_nan && std::isnan(decode_bits(expected.dtype, e)) &&
            std::isnan(decode_bits(actual.dtype, a))) {
          continue;
        }
        if (mismatches++ == 0) {
          first << "first at (token " << t << ", head " << h << ", dim " << d << "): expected "
                << value_text(decode_bits(expected.dtype, e)) << " (bits " << hex(e, expected.dtype) << "), got "
                << value_text(decode_bits(actual.dtype, a)) << " (bits " << hex(a, actual.dtype) << "), "
                << ulp_distance(actual.dtype, e, a) << " ulp apart";
        }
      }
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << mismatches << " of " << actual.tokens * actual.heads * actual.head_dim
                                       << " elements of " << describe(actual) << " differ; " << first.str();
}

::testing::AssertionResult bytes_equal(const std::vector<std::byte>& before, const std::byte* after,
                                       std::int64_t size) {
  if (static_cast<std::int64_t>(before.size()) != size) {
    return ::testing::AssertionFailure() << "sizes differ: " << before.size() << " bytes before, " << size << " after";
  }
  for (std::int64_t i = 0; i < size; ++i) {
    if (before[static_cast<std::size_t>(i)] != after[i]) {
      // (formatted here: a manipulator streamed into an AssertionResult applies to that one
      // insertion only, so std::hex there printed decimal digits after "0x")
      std::ostringstream what;
      what << "byte " << i << " of " << size << " changed from 0x" << std::hex
           << static_cast<int>(before[static_cast<std::size_t>(i)]) << " to 0x" << static_cast<int>(after[i]);
      return ::testing::AssertionFailure() << what.str();
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult only_views_written(const std::vector<std::byte>& before, const HostBuffer& after,
                                              const std::vector<ConstTensorView>& views) {
  std::vector<bool> covered(static_cast<std::size_t>(after.size()), false);
  for (const ConstTensorView& v : views) {
    const std::int64_t e = size_of(v.dtype);
    for (std::int64_t t = 0; t < v.tokens; ++t) {
      for (std::int64_t h = 0; h < v.heads; ++h) {
        const std::int64_t at = static_cast<const std::byte*>(v.data) - after.data() + element_offset(v, t, h, 0) * e;
        for (std::int64_t i = 0; i < v.head_dim * e; ++i) covered[static_cast<std::size_t>(at + i)] = true;
      }
    }
  }
  for (std::int64_t i = 0; i < after.size(); ++i) {
    if (!covered[static_cast<std::size_t>(i)] && before[static_cast<std::size_t>(i)] != after.data()[i]) {
      return ::testing::AssertionFailure() << "byte " << i << " of the " << after.size()
                                           << "-byte buffer lies outside every destination view but was written";
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult all_written(const ConstTensorView& v) {
  const std::uint32_t poison = poison_of(v.dtype);
  for (std::int64_t t = 0; t < v.tokens; ++t) {
    for (std::int64_t h = 0; h < v.heads; ++h) {
      for (std::int64_t d = 0; d < v.head_dim; ++d) {
        if (load_bits(v, t, h, d) == poison) {
          return ::testing::AssertionFailure()
                 << "element (token " << t << ", head " << h << ", dim " << d << ") of " << describe(v)
                 << " still holds the poison " << hex(poison, v.dtype) << ": it was never written";
        }
      }
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult buffers_match(const std::vector<const HostBuffer*>& expected,
                                         const std::vector<const HostBuffer*>& actual,
                                         const std::vector<std::vector<std::byte>>& before,
                                         const std::vector<ConstTensorView>& destinations) {
  for (std::size_t i = 0; i < actual.size(); ++i) {
    if (auto r = bytes_equal(expected[i]->snapshot(), *actual[i]); !r) {
      return ::testing::AssertionFailure() << "buffer " << i << " differs from the reference's: " << r.message();
    }
    std::vector<ConstTensorView> inside;
    for (const ConstTensorView& d : destinations) {
      const auto* p = static_cast<const std::byte*>(d.data);
      if (p >= actual[i]->data() && p < actual[i]->data() + actual[i]->size()) inside.push_back(d);
    }
    if (auto r = only_views_written(before[i], *actual[i], inside); !r) {
      return ::testing::AssertionFailure() << "buffer " << i << ": " << r.message();
    }
  }
  for (const ConstTensorView& d : destinations) {
    if (auto r = all_written(d); !r) return r;
  }
  return ::testing::AssertionSuccess();
}

}  // namespace posenc::test

// Test support: comparisons that say what differed (first mismatch with token, head, dim, values and bits), ulp helpers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "posenc/tensor.hpp"
#include "support/host_tensor.hpp"
#include "support/reference64.hpp"

namespace posenc::test {

/// Spacing of `t`'s values at magnitude |m| (the ulp of the binade holding m; the subnormal spacing
/// below the smallest normal). For f32 that is 2^(e-23), bf16 2^(e-7), f16 2^(e-10).
double ulp_of(DType t, double m);

/// How many representable values of `t` lie between two finite values given as bits (0 when
/// equal; +0 and -0 are 0 apart).
std::int64_t ulp_distance(DType t, std::uint32_t a_bits, std::uint32_t b_bits);

/// Largest error seen by near64, in ulps of the unit dtype at the head's max |expected|.
struct ErrorStats {
  double max_ulps = 0.0;
  std::int64_t t = -1;
  std::int64_t h = -1;
  std::int64_t d = -1;
};

/// Checks |actual - expected| <= ulps * ulp_of(unit, M) for every element, where M is the largest
/// |expected| of that (token, head). Fails on the first element over the bound, naming (t, h, d),
/// both values, the actual bits and the error in ulps; also fails on NaN.
::testing::AssertionResult near64(const Expected64& expected, const ConstTensorView& actual, DType unit, double ulps,
                                  ErrorStats* stats = nullptr);

/// How bits_equal treats NaN results.
enum class NanBits {
  exact,    ///< a NaN must match bit for bit like any other value
  any_nan,  ///< a NaN matches any NaN: IEEE leaves a computed NaN's sign and payload open, and
            ///< compilers legitimately differ there (e.g. fma(a, c, -x) fused into fmsub keeps
            ///< x's NaN sign, the separate negation flips it)
};

/// Bit-for-bit equality of two views of equal shape and dtype (strides may differ). Reports how
/// many elements differ and the first one (t, h, d, both values and bits, ulp distance).
::testing::AssertionResult bits_equal(const ConstTensorView& expected, const ConstTensorView& actual,
                                      NanBits nan = NanBits::exact);

/// `after` holds exactly the bytes of `before`; otherwise names the first differing offset.
::testing::AssertionResult bytes_equal(const std::vector<std::byte>& before, const std::byte* after, std::int64_t size);
inline ::testing::AssertionResult bytes_equal(const std::vector<std::byte>& before, const HostBuffer& after) {
  return bytes_equal(before, after.data(), after.size());
}

/// Every byte of `after` that belongs to no element of `views` equals `before`: gaps between
/// strided views, padding and other tensors of a fused buffer were not written.
::testing::AssertionResult only_views_written(const std::vector<std::byte>& before, const HostBuffer& after,
                                              const std::vector<ConstTensorView>& views);

/// No element of `v` still holds the poison pattern (it was written).
::testing::AssertionResult all_written(const ConstTensorView& v);

/// Two runs of one call on identical buffers (`expected` by the reference, `actual` by the code
/// under test, in the same order): every buffer agrees byte for byte, each `actual` buffer changed
/// only inside the `destinations` it holds (against `before`, its bytes before the call), and
/// every destination element was written.
::testing::AssertionResult buffers_match(const std::vector<const HostBuffer*>& expected,
                                         const std::vector<const HostBuffer*>& actual,
                                         const std::vector<std::vector<std::byte>>& before,
                                         const std::vector<ConstTensorView>& destinations);

}  // namespace posenc::test

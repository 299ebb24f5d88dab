// float <-> bfloat16/float16 conversions, exhaustively against an independent long-double model, and dtype names.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>

#include "posenc/dtype.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"

namespace {

std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- the independent model: formats described by (mantissa bits, min exponent, max exponent) ----

struct Format {
  int mantissa_bits;  // stored fraction bits
  int min_exp;        // exponent of the smallest normal
  int max_exp;        // exponent of the largest finite
  int exp_bits;
};
constexpr Format f16{10, -14, 15, 5};
constexpr Format bf16{7, -126, 127, 8};

/// Value of a 16-bit pattern, written from the IEEE definition.
long double decode(const Format& f, std::uint16_t h) {
  const int sign = h >> 15;
  const int exp_field = (h >> f.mantissa_bits) & ((1 << f.exp_bits) - 1);
  const int frac = h & ((1 << f.mantissa_bits) - 1);
  long double v = 0;
  if (exp_field == 0)
    v = std::ldexp(static_cast<long double>(frac), f.min_exp - f.mantissa_bits);
  else if (exp_field == (1 << f.exp_bits) - 1)
    v = frac == 0 ? HUGE_VALL : NAN;
  else
    v = std::ldexp(static_cast<long double>(frac + (1 << f.mantissa_bits)), exp_field - 1 + f.min_exp - f.mantissa_bits);
  return sign ? -v : v;
}

/// The 16-bit pattern nearest to finite x, ties to even, overflow to infinity, computed by
/// scaling to an integer count of quanta and rounding with rint (the FE_TONEAREST mode).
std::uint16_t encode(const Format& f, long double x) {
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const long double a = std::fabs(x);
  if (a == 0) return sign;
  int e = 0;
  (void)std::frexp(a, &e);            // a = m * 2^e, m in [0.5, 1): leading bit has exponent e - 1
  const int lead = std::max(e - 1, f.min_exp);  // subnormals share the smallest normal's quantum
  const long double quantum = std::ldexp(1.0L, lead - f.mantissa_bits);
  long double q = std::rint(a / quantum);  // exact division by a power of two; rint rounds ties to even
  int biased = lead - f.min_exp + 1;
  if (q >= std::ldexp(1.0L, f.mantissa_bits + 1)) {  // rounded up into the next binade
    q /= 2;
    ++biased;
  }
  if (q < std::ldexp(1.0L, f.mantissa_bits)) biased = 0;  // subnormal (or zero)
  const int max_biased = f.max_exp - f.min_exp + 1;
  if (biased > max_biased) return static_cast<std::uint16_t>(sign | (((1 << f.exp_bits) - 1) << f.mantissa_bits));
  const auto frac = static_cast<std::uint32_t>(q) & ((1u << f.mantissa_bits) - 1);
  return static_cast<std::uint16_t>(sign | (biased << f.mantissa_bits) | frac);
}

bool is_nan16(const Format& f, std::uint16_t h) {
  const int exp_all = (1 << f.exp_bits) - 1;
  return ((h >> f.mantissa_bits) & exp_all) == exp_all && (h & ((1 << f.mantissa_bits) - 1)) != 0;
}

TEST(DtypeModel, RoundsTiesToEven) {
  ASSERT_EQ(std::fegetround(), FE_TONEAREST);
  EXPECT_EQ(encode(f16, 1.0L + std::ldexp(1.0L, -11)), 0x3c00) << "1 + half an ulp ties to 1 (even)";
  EXPECT_EQ(encode(f16, 1.0L + 3 * std::ldexp(1.0L, -11)), 0x3c02) << "ties to the even neighbour above";
  EXPECT_EQ(encode(f16, 65520.0L), 0x7c00) << "halfway to 2^16 overflows";
  EXPECT_EQ(encode(f16, 65519.0L), 0x7bff);
  EXPECT_EQ(encode(f16, std::ldexp(1.0L, -25)), 0x0000) << "half the smallest subnormal ties to zero";
}

// ---- float16 -----------------------------------------------------------------------------------

TEST(DtypeF16, EveryPatternDecodesExactly) {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const float got = posenc::f16_bits_to_float(static_cast<std::uint16_t>(h));
    if (is_nan16(f16, static_cast<std::uint16_t>(h))) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << "pattern 0x" << h;
      EXPECT_EQ(bits(got) >> 31, h >> 15) << std::hex << "NaN sign of 0x" << h;
      EXPECT_EQ((bits(got) >> 13) & 0x3ffu, h & 0x3ffu) << std::hex << "NaN payload of 0x" << h;
      continue;
    }
    const long double want = decode(f16, static_cast<std::uint16_t>(h));
    ASSERT_EQ(static_cast<long double>(got), want) << std::hex << "pattern 0x" << h;
    ASSERT_EQ(std::signbit(got), (h & 0x8000u) != 0) << std::hex << "sign of 0x" << h;
  }
}

TEST(DtypeF16, EveryPatternRoundTrips) {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const auto h16 = static_cast<std::uint16_t>(h);
    const std::uint16_t back = posenc::float_to_f16_bits(posenc::f16_bits_to_float(h16));
    if (is_nan16(f16, h16))
      EXPECT_EQ(back, h16 | 0x0200u) << std::hex << "NaN 0x" << h << " comes back quiet with its payload";
    else
      ASSERT_EQ(back, h16) << std::hex << "pattern 0x" << h;
  }
}

TEST(DtypeF16, MidpointsAndNeighboursRoundLikeTheModel) {
  // Between each pair of adjacent finite positive values: the exact midpoint (a tie) and the
  // floats just below and above it. Every such float is exactly representable in float32.
  int checked = 0;
  for (std::uint32_t h = 0; h < 0x7c00; ++h) {
    const long double lo = decode(f16, static_cast<std::uint16_t>(h));
    const long double hi = h + 1 == 0x7c00 ? 65536.0L : decode(f16, static_cast<std::uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);
    ASSERT_EQ(static_cast<long double>(mid), (lo + hi) / 2) << "midpoint is a float";
    for (const float x : {std::nextafter(mid, 0.0f), mid, std::nextafter(mid, 1e30f)}) {
      for (const float s : {x, -x}) {
        ASSERT_EQ(posenc::float_to_f16_bits(s), encode(f16, s))
            << std::hexfloat << "float " << s << " (between patterns 0x" << std::hex << h << " and 0x" << h + 1 << ")";
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 0x7c00 * 6);
}

TEST(DtypeF16, RandomFloatsRoundLikeTheModel) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<std::uint32_t> any;
  for (int n = 0; n < 2'000'000; ++n) {
    // Bias towards f16's range: exponents 2^-30 .. 2^17 hold every interesting case.
    std::uint32_t u = any(rng);
    if (n % 2 == 0) u = (u & 0x807fffffu) | ((97u + (u >> 24) % 48u) << 23);
    const float f = from_bits(u);
    if (std::isnan(f)) {
      const std::uint16_t h = posenc::float_to_f16_bits(f);
      ASSERT_TRUE(is_nan16(f16, h)) << std::hex << "NaN 0x" << u << " -> 0x" << h;
      ASSERT_EQ(h >> 15, u >> 31) << "NaN keeps its sign";
      continue;
    }
    ASSERT_EQ(posenc::float_to_f16_bits(f), encode(f16, f)) << std::hexfloat << f;
  }
}

TEST(DtypeF16, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(posenc::float_to_f16_bits(inf), 0x7c00);
  EXPECT_EQ(posenc::float_to_f16_bits(-inf), 0xfc00);
  EXPECT_EQ(posenc::float_to_f16_bits(-0.0f), 0x8000);
  EXPECT_EQ(posenc::float_to_f16_bits(1e10f), 0x7c00) << "overflow goes to infinity";
  EXPECT_EQ(posenc::float_to_f16_bits(5.9604644775390625e-8f), 0x0001) << "smallest subnormal";
  EXPECT_EQ(posenc::float_to_f16_bits(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_TRUE(std::isinf(posenc::f16_bits_to_float(0x7c00)));
}

// ---- bfloat16 ----------------------------------------------------------------------------------

TEST(DtypeBf16, EveryPatternDecodesAndRoundTrips) {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const auto h16 = static_cast<std::uint16_t>(h);
    const float f = posenc::bf16_bits_to_float(h16);
    if (is_nan16(bf16, h16)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << "pattern 0x" << h;
      EXPECT_EQ(posenc::float_to_bf16_bits(f), h16 | 0x0040u) << std::hex << "NaN 0x" << h << " comes back quiet";
      continue;
    }
    ASSERT_EQ(static_cast<long double>(f), decode(bf16, h16)) << std::hex << "pattern 0x" << h;
    ASSERT_EQ(posenc::float_to_bf16_bits(f), h16) << std::hex << "pattern 0x" << h;
  }
}

TEST(DtypeBf16, MidpointsAndRandomFloatsRoundLikeTheModel) {
  for (std::uint32_t h = 0; h < 0x7f80; ++h) {
    const std::uint32_t lo = h << 16;
    for (const std::uint32_t u : {lo + 0x7fffu, lo + 0x8000u, lo + 0x8001u}) {  // below, at, above the tie
      for (const std::uint32_t s : {u, u | 0x80000000u}) {
        const float f = from_bits(s);
        ASSERT_EQ(posenc::float_to_bf16_bits(f), encode(bf16, f)) << std::hexfloat << f;
      }
    }
  }
  std::mt19937 rng(99);
  std::uniform_int_distribution<std::uint32_t> any;
  for (int n = 0; n < 2'000'000; ++n) {
    const float f = from_bits(any(rng));
    if (std::isnan(f)) {
      ASSERT_TRUE(is_nan16(bf16, posenc::float_to_bf16_bits(f))) << std::hexfloat << f;
      continue;
    }
    ASSERT_EQ(posenc::float_to_bf16_bits(f), encode(bf16, f)) << std::hexfloat << f;
  }
}

// ---- element access and names ----------------------------------------------------------------

// load_element / store_element: the element at its byte offset, widened exactly, stored rounded
// (the same bits as the conversions above); an unknown dtype is an error, not a 2-byte guess.
TEST(DtypeElements, LoadAndStoreEveryDtype) {
  using posenc::DType;
  std::mt19937 rng(11);
  std::uniform_int_distribution<std::uint32_t> any;
  for (const DType t : posenc::all_dtypes) {
    unsigned char buffer[3 * 4] = {};
    for (int n = 0; n < 20'000; ++n) {
      const float f = from_bits(any(rng));
      if (std::isnan(f)) continue;
      posenc::store_element(t, buffer, 1, f);
      const float back = posenc::load_element(t, buffer, 1);
      const float rounded = t == DType::f32   ? f
                            : t == DType::f16 ? posenc::f16_bits_to_float(posenc::float_to_f16_bits(f))
                                              : posenc::bf16_bits_to_float(posenc::float_to_bf16_bits(f));
      ASSERT_EQ(bits(back), bits(rounded)) << posenc::to_string(t) << " " << std::hexfloat << f;
      std::uint32_t stored = 0;
      std::memcpy(&stored, buffer + posenc::size_of(t), static_cast<std::size_t>(posenc::size_of(t)));
      const std::uint32_t want = t == DType::f32   ? bits(f)
                                 : t == DType::f16 ? posenc::float_to_f16_bits(f)
                                                   : posenc::float_to_bf16_bits(f);
      ASSERT_EQ(stored, want) << posenc::to_string(t) << " " << std::hexfloat << f;
    }
    EXPECT_EQ(posenc::size_of(posenc::cache_dtype_of(t)), posenc::size_of(t));
    EXPECT_STREQ(posenc::to_string(posenc::cache_dtype_of(t)), posenc::to_string(t));
  }
  const auto unknown = static_cast<DType>(7);
  EXPECT_EQ(posenc::size_of(unknown), 0);
  float x = 1.0f;
  EXPECT_THROW(posenc::store_element(unknown, &x, 0, 2.0f), posenc::Error);
  EXPECT_THROW((void)posenc::load_element(unknown, &x, 0), posenc::Error);
  EXPECT_EQ(x, 1.0f);
}

// What an ulp is: 2^(exponent - significand_bits + 1) at a normal value, the smallest normal's
// spacing below.
TEST(DtypeElements, SignificandAndExponentRange) {
  using posenc::DType;
  EXPECT_EQ(posenc::significand_bits(DType::f32), std::numeric_limits<float>::digits);
  EXPECT_EQ(posenc::min_normal_exponent(DType::f32), std::numeric_limits<float>::min_exponent - 1);
  // float16: 1 + 2^-10 is the next value after 1, 2^-14 the smallest normal.
  EXPECT_EQ(posenc::significand_bits(DType::f16), 11);
  EXPECT_EQ(posenc::f16_bits_to_float(0x3c01), 1.0f + std::ldexp(1.0f, 1 - posenc::significand_bits(DType::f16)));
  EXPECT_EQ(posenc::f16_bits_to_float(0x0400), std::ldexp(1.0f, posenc::min_normal_exponent(DType::f16)));
  // bfloat16: 1 + 2^-7, smallest normal 2^-126.
  EXPECT_EQ(posenc::bf16_bits_to_float(0x3f81), 1.0f + std::ldexp(1.0f, 1 - posenc::significand_bits(DType::bf16)));
  EXPECT_EQ(posenc::bf16_bits_to_float(0x0080), std::ldexp(1.0f, posenc::min_normal_exponent(DType::bf16)));
}

TEST(DtypeNames, ParseAndPrint) {
  using posenc::DType;
  const std::pair<const char*, DType> spellings[] = {
      {"float32", DType::f32}, {"f32", DType::f32},   {"fp32", DType::f32},     {"float16", DType::f16},
      {"f16", DType::f16},     {"fp16", DType::f16},  {"half", DType::f16},     {"bfloat16", DType::bf16},
      {"bf16", DType::bf16},
  };
  for (const auto& [text, t] : spellings) EXPECT_EQ(posenc::parse_dtype(text), t) << text;
  EXPECT_STREQ(posenc::to_string(DType::f32), "float32");
  EXPECT_STREQ(posenc::to_string(DType::f16), "float16");
  EXPECT_STREQ(posenc::to_string(DType::bf16), "bfloat16");
  EXPECT_STREQ(posenc::to_string(posenc::IndexType::i32), "int32");
  EXPECT_STREQ(posenc::to_string(posenc::IndexType::i64), "int64");
  for (const char* bad : {"float64", "BF16", "", "fp8"}) {
    try {
      (void)posenc::parse_dtype(bad);
      ADD_FAILURE() << "parse_dtype accepted \"" << bad << "\"";
    } catch (const posenc::Error& e) {
      EXPECT_EQ(e.kind(), posenc::ErrorKind::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("\"" + std::string(bad) + "\""), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW((void)posenc::parse_dtype(nullptr), posenc::Error);
}

}  // namespace

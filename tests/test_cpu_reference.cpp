// apply_reference against the independent float64 reference for every scheme x pairing x dtype x numerics, and its layout contract (pass-through, in place, fused QKV).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

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

/// Largest error seen per (dtype, numerics) over a sweep, printed so the margins are visible.
using WorstErrors = std::map<std::string, std::pair<double, double>>;  // key -> (max seen, bound)

/// Rotates random Q [T, 3, D] and K [T, 1, D] out of place with apply_reference and checks every
/// element of both outputs against rotate64 within tolerance_ulps.
::testing::AssertionResult reference_matches_float64(const RopeSpec& spec, DType dtype,
                                                     const std::vector<std::int64_t>& positions, std::uint64_t seed,
                                                     WorstErrors* worst = nullptr) {
  const auto tokens = static_cast<std::int64_t>(positions.size());
  HostTensor q_src(dtype, tokens, 3, spec.head_dim);
  HostTensor k_src(dtype, tokens, 1, spec.head_dim);
  HostTensor q(dtype, tokens, 3, spec.head_dim);
  HostTensor k(dtype, tokens, 1, spec.head_dim);
  fill_random(q_src.view, seed);
  fill_random(k_src.view, seed + 1);
  const HostPositions pos(spec, positions);
  RopeArgs args{q.view, k.view, q_src.cview(), k_src.cview(), pos.view(), {}};
  apply_reference(spec, args);

  const std::int64_t max_position = *std::max_element(positions.begin(), positions.end());
  const FrequencyTable table = compute_frequencies(spec, max_position + 1);
  const double af = detail::effective_attention_factor(spec, table);
  const double bound = tolerance_ulps(dtype, spec.numerics, af);
  const AngleModel model = angle_model_for(spec.numerics);
  const PairAxes axes = pair_axes(spec, table);
  for (const auto& [name, src, dst] :
       {std::tuple{"q", q_src.cview(), q.cview()}, std::tuple{"k", k_src.cview(), k.cview()}}) {
    const Expected64 expected = rotate64(spec, axes, af, model, src, pos.view());
    ErrorStats stats;
    ::testing::AssertionResult r = near64(expected, dst, dtype, bound, &stats);
    if (!r) return ::testing::AssertionFailure() << case_name(spec, dtype) << " " << name << ": " << r.message();
    if (worst != nullptr) {
      auto& w = (*worst)[std::string(to_string(dtype)) + " " + to_string(spec.numerics)];
      w.first = std::max(w.first, stats.max_ulps);
      w.second = std::max(w.second, bound);
    }
  }
  return ::testing::AssertionSuccess();
}

void print_worst(const WorstErrors& worst) {
  for (const auto& [key, value] : worst) {
    std::printf("  %-28s max error %.3f ulp (bound %.3f)\n", key.c_str(), value.first, value.second);
  }
}

/// Positions for a sweep: 0, the top of the range, and seeded random ones in [lo, hi].
std::vector<std::int64_t> positions_in(std::int64_t lo, std::int64_t hi, std::int64_t count, std::uint64_t seed) {
  std::vector<std::int64_t> p = random_positions(count, hi - lo + 1, seed);
  for (std::int64_t& v : p) v += lo;
  p[0] = 0;
  return p;
}

// Every scheme x pairing x numerics x dtype, on a full-rotary head and on a partial window inside
// the head, at positions up to 2^20. dynamic and longrope are run once with the call below their
// threshold and once above it (the table is chosen per call from the largest position).
TEST(ReferenceVsFloat64, EverySchemePairingNumericsDtype) {
  WorstErrors worst;
  std::uint64_t seed = 1;
  for (const Scaling scheme : all_schemes) {
    for (const Pairing pairing : all_pairings) {
      for (const Numerics numerics : all_numerics) {
        for (const auto& [head_dim, rotary, offset] : {std::tuple{64, 0, 0}, std::tuple{96, 32, 24}}) {
          const RopeSpec spec = scheme_spec(scheme, head_dim, rotary, offset, pairing, numerics);
          std::vector<std::vector<std::int64_t>> calls;
          const std::int64_t threshold = scheme_threshold(spec);
          if (threshold > 0) calls.push_back(positions_in(0, threshold - 1, 12, seed));
          calls.push_back(positions_in(0, std::int64_t{1} << 20, 12, seed + 7));
          for (const DType dtype : all_dtypes) {
            for (const auto& positions : calls) {
              EXPECT_TRUE(reference_matches_float64(spec, dtype, positions, ++seed, &worst));
            }
          }
        }
      }
    }
  }
  print_worst(worst);
}

// The head sizes of real models, a 16-of-128 rotary window (GPT-NeoX style rotary_pct), windows
// at an offset (GLM-4.5-like: rotary half at the end of the head), and odd offsets that leave a
// single pass-through element at one end.
TEST(ReferenceVsFloat64, HeadDimsAndWindows) {
  WorstErrors worst;
  std::uint64_t seed = 1000;
  struct Shape {
    std::int64_t head_dim, rotary, offset;
  };
  for (const Shape s :
       {Shape{64, 0, 0}, Shape{80, 0, 0}, Shape{96, 0, 0}, Shape{128, 0, 0}, Shape{256, 0, 0}, Shape{128, 16, 0},
        Shape{128, 64, 64}, Shape{128, 32, 50}, Shape{80, 32, 0}, Shape{10, 4, 5}, Shape{34, 16, 1}}) {
    for (const Pairing pairing : all_pairings) {
      for (const Numerics numerics : all_numerics) {
        const RopeSpec spec = scheme_spec(Scaling::llama3, s.head_dim, s.rotary, s.offset, pairing, numerics);
        for (const DType dtype : all_dtypes) {
          seed += 2;
          EXPECT_TRUE(reference_matches_float64(spec, dtype, positions_in(0, 1 << 20, 9, seed), seed + 1, &worst));
        }
      }
    }
  }
  print_worst(worst);
}

// A spec-level attention factor override (and YaRN's own factor) scales cos and sin.
TEST(ReferenceVsFloat64, AttentionFactor) {
  std::uint64_t seed = 2000;
  for (const Numerics numerics : all_numerics) {
    RopeSpec spec = scheme_spec(Scaling::none, 64, 0, 0, Pairing::interleaved, numerics);
    spec.attention_factor = 0.7071067811865476;  // not a float: exercises the float32 rounding of the factor
    for (const DType dtype : all_dtypes) {
      seed += 2;
      EXPECT_TRUE(reference_matches_float64(spec, dtype, positions_in(0, 100000, 8, seed), seed + 1));
    }
  }
}

/// A Q-only problem in two layouts: out of place into a fresh buffer, and in place.
struct PassThroughCase {
  RopeSpec spec;
  DType dtype;
};

// Out of place, elements outside the window are copied bit for bit (a NaN payload planted there
// survives); in place they are not touched at all; the rotated part is the same either way.
TEST(ReferenceLayout, PassThroughCopiedOutOfPlaceUntouchedInPlace) {
  for (const Pairing pairing : all_pairings) {
    for (const DType dtype : all_dtypes) {
      const RopeSpec spec = scheme_spec(Scaling::none, 128, 32, 40, pairing, Numerics::hf_compatible);
      const std::int64_t tokens = 5;
      HostTensor src(dtype, tokens, 2, 128);
      fill_random(src.view, 42);
      // A signalling-looking NaN payload outside the window must be copied, not re-encoded.
      store_bits(src.view, 3, 1, 127, dtype == DType::f32 ? 0x7f800123u : 0x7c01u);
      store_bits(src.view, 3, 1, 0, dtype == DType::f32 ? 0xff812345u : 0xfe01u);
      const HostPositions pos(spec, {0, 1, 17, 4096, 99999});

      HostTensor out(dtype, tokens, 2, 128, 2 * 128 + 24, 128 + 8);  // gaps between heads and tokens
      const std::vector<std::byte> out_before = out.buffer.snapshot();
      apply_reference(spec, RopeArgs{out.view, {}, src.cview(), {}, pos.view(), {}});
      EXPECT_TRUE(all_written(out.cview())) << to_string(dtype);
      EXPECT_TRUE(only_views_written(out_before, out.buffer, {out.cview()})) << to_string(dtype);

      HostTensor in_place(dtype, tokens, 2, 128);
      std::memcpy(in_place.buffer.data(), src.buffer.data(), static_cast<std::size_t>(src.buffer.size()));
      apply_reference(spec, RopeArgs{in_place.view, {}, {}, {}, pos.view(), {}});
      EXPECT_TRUE(bits_equal(out.cview(), in_place.cview())) << to_string(pairing) << " " << to_string(dtype);
      for (std::int64_t t = 0; t < tokens; ++t) {
        for (std::int64_t h = 0; h < 2; ++h) {
          for (std::int64_t d = 0; d < 128; ++d) {
            if (d >= 40 && d < 72) continue;
            ASSERT_EQ(load_bits(src.cview(), t, h, d), load_bits(out.cview(), t, h, d))
                << "pass-through element (" << t << ", " << h << ", " << d << ") not copied bit for bit";
          }
        }
      }
    }
  }
}

// In place with interleaved_to_half reads pair i from (2i, 2i+1) and writes it to (i, i+H): the
// whole window is read before it is written, so in place equals out of place.
TEST(ReferenceLayout, InPlaceEqualsOutOfPlaceForEveryPairing) {
  for (const Pairing pairing : all_pairings) {
    for (const Numerics numerics : all_numerics) {
      for (const DType dtype : all_dtypes) {
        const RopeSpec spec = scheme_spec(Scaling::yarn, 64, 0, 0, pairing, numerics);
        HostTensor src(dtype, 7, 4, 64);
        fill_random(src.view, 7);
        const HostPositions pos(spec, positions_in(0, 200000, 7, 3));
        HostTensor out(dtype, 7, 4, 64);
        apply_reference(spec, RopeArgs{out.view, {}, src.cview(), {}, pos.view(), {}});
        HostTensor in_place(dtype, 7, 4, 64);
        std::memcpy(in_place.buffer.data(), src.buffer.data(), static_cast<std::size_t>(src.buffer.size()));
        apply_reference(spec, RopeArgs{in_place.view, {}, {}, {}, pos.view(), {}});
        EXPECT_TRUE(bits_equal(out.cview(), in_place.cview())) << case_name(spec, dtype);
      }
    }
  }
}

// Q and K as strided views inside one fused QKV buffer (with per-token padding), rotated in place:
// the result equals the dense computation, and V and the padding are not touched.
TEST(ReferenceLayout, FusedQkvViewsInPlace) {
  for (const DType dtype : all_dtypes) {
    const RopeSpec spec = scheme_spec(Scaling::none, 128, 64, 0, Pairing::interleaved, Numerics::hf_compatible);
    const std::int64_t tokens = 9;
    FusedQkv fused(dtype, tokens, 4, 2, 128, /*pad=*/16);
    fill_random(fused.q, 11);
    fill_random(fused.k, 12);
    fill_random(fused.v, 13);
    HostTensor q_dense(dtype, tokens, 4, 128);
    HostTensor k_dense(dtype, tokens, 2, 128);
    fill_random(q_dense.view, 11);
    fill_random(k_dense.view, 12);
    const HostPositions pos(positions_in(0, 5000, tokens, 5), IndexType::i32);
    const std::vector<std::byte> before = fused.buffer.snapshot();

    apply_reference(spec, RopeArgs{fused.q, fused.k, {}, {}, pos.view(), {}});
    apply_reference(spec, RopeArgs{q_dense.view, k_dense.view, {}, {}, pos.view(), {}});
    EXPECT_TRUE(bits_equal(q_dense.cview(), ConstTensorView(fused.q))) << to_string(dtype);
    EXPECT_TRUE(bits_equal(k_dense.cview(), ConstTensorView(fused.k))) << to_string(dtype);
    EXPECT_TRUE(only_views_written(before, fused.buffer, {fused.q, fused.k})) << to_string(dtype);
  }
}

// int32 and int64 positions give the same bits.
TEST(ReferenceLayout, Int32AndInt64PositionsAgree) {
  const RopeSpec spec = scheme_spec(Scaling::longrope, 96, 0, 0, Pairing::half_split, Numerics::hf_compatible);
  const std::vector<std::int64_t> p = positions_in(0, 9000, 11, 9);
  HostTensor src(DType::bf16, 11, 2, 96);
  fill_random(src.view, 1);
  HostTensor a(DType::bf16, 11, 2, 96);
  HostTensor b(DType::bf16, 11, 2, 96);
  const HostPositions p64(p, IndexType::i64);
  const HostPositions p32(p, IndexType::i32);
  apply_reference(spec, RopeArgs{a.view, {}, src.cview(), {}, p64.view(), {}});
  apply_reference(spec, RopeArgs{b.view, {}, src.cview(), {}, p32.view(), {}});
  EXPECT_TRUE(bits_equal(a.cview(), b.cview()));
}

// rope_math.hpp's branch-free conversions equal the plain case-by-case ones. test_large checks
// all 2^32 inputs; this samples every exponent and sign with the mantissa patterns where rounding
// decides (ties, just above and below them, carries) plus a seeded spread.
TEST(Conversions, BranchFreeEqualPlainOnBoundarySample) {
  std::vector<std::uint32_t> low = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x2001, 0x3000,
                                    0x7fff, 0x8000, 0x8001, 0xbfff, 0xc000, 0xefff, 0xf000, 0xffff};
  std::uint64_t state = 12345;
  for (int i = 0; i < 47; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    low.push_back(static_cast<std::uint32_t>(state >> 48));
  }
  std::int64_t checked = 0;
  for (std::uint32_t high = 0; high < 0x10000u; ++high) {
    for (const std::uint32_t lo : low) {
      const std::uint32_t u = high << 16 | lo;
      const float f = plain::value(u);
      ASSERT_EQ(detail::to_f16_bits(f), plain::to_f16(f)) << std::hex << "to_f16_bits(bits 0x" << u << ")";
      ASSERT_EQ(detail::to_bf16_bits(f), plain::to_bf16(f)) << std::hex << "to_bf16_bits(bits 0x" << u << ")";
      ASSERT_EQ(plain::bits(detail::round_act<DType::f16>(f)), plain::bits(plain::from_f16(plain::to_f16(f))))
          << std::hex << "round_act<f16>(bits 0x" << u << ")";
      ASSERT_EQ(plain::bits(detail::round_act<DType::bf16>(f)), plain::bits(plain::from_bf16(plain::to_bf16(f))))
          << std::hex << "round_act<bf16>(bits 0x" << u << ")";
      ++checked;
    }
  }
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const auto h16 = static_cast<std::uint16_t>(h);
    ASSERT_EQ(plain::bits(detail::from_f16_bits(h16)), plain::bits(plain::from_f16(h16)))
        << std::hex << "from_f16_bits(0x" << h << ")";
  }
  EXPECT_GT(checked, 4'000'000);
}

// rotate_first (the QK-norm GPU kernel's one-output rotation) is either output of rotate: x' for
// (x, y, c, s) and y' for (y, x, c, -s), bit for bit for every dtype and numerics; NaN results
// only as NaN (their sign is open). Operands are drawn as random bit patterns of the activation
// dtype (a and b) and of float32 rounded as each numerics uses cos/sin, so zeros, subnormals,
// infinities and NaNs all occur.
template <DType A, Numerics N>
void expect_rotate_first_is_rotate(std::uint64_t seed) {
  std::mt19937 next(static_cast<std::uint32_t>(seed));
  auto activation = [&next] {
    const std::uint32_t r = next();
    if constexpr (A == DType::f16) return detail::from_f16_bits(static_cast<std::uint16_t>(r));
    if constexpr (A == DType::bf16) return plain::value(r & 0xffff0000u);
    return plain::value(r);
  };
  auto trig = [&next] {
    const float f = plain::value(next());
    return N == Numerics::accurate ? f : detail::round_act<A>(f);
  };
  auto same = [](float got, float want) {
    return std::isnan(want) ? std::isnan(got) : plain::bits(got) == plain::bits(want);
  };
  for (int i = 0; i < 200'000; ++i) {
    const float a = activation();
    const float b = activation();
    const float c = trig();
    const float s = trig();
    const detail::Pair want = detail::rotate<A, N>(a, b, {c, s});
    const float first = detail::rotate_first<A, N>(a, b, c, s);
    const float second = detail::rotate_first<A, N>(b, a, c, -s);
    ASSERT_TRUE(same(first, want.a)) << std::hex << "a 0x" << plain::bits(a) << " b 0x" << plain::bits(b) << " c 0x"
                                     << plain::bits(c) << " s 0x" << plain::bits(s) << ": 0x" << plain::bits(first)
                                     << " for a' 0x" << plain::bits(want.a);
    ASSERT_TRUE(same(second, want.b)) << std::hex << "a 0x" << plain::bits(a) << " b 0x" << plain::bits(b) << " c 0x"
                                      << plain::bits(c) << " s 0x" << plain::bits(s) << ": 0x" << plain::bits(second)
                                      << " for b' 0x" << plain::bits(want.b);
  }
}

TEST(RotateFirst, IsEitherOutputOfRotate) {
  expect_rotate_first_is_rotate<DType::f32, Numerics::hf_compatible>(1);
  expect_rotate_first_is_rotate<DType::f32, Numerics::hf_fp32_apply>(2);
  expect_rotate_first_is_rotate<DType::f32, Numerics::accurate>(3);
  expect_rotate_first_is_rotate<DType::f16, Numerics::hf_compatible>(4);
  expect_rotate_first_is_rotate<DType::f16, Numerics::hf_fp32_apply>(5);
  expect_rotate_first_is_rotate<DType::f16, Numerics::accurate>(6);
  expect_rotate_first_is_rotate<DType::bf16, Numerics::hf_compatible>(7);
  expect_rotate_first_is_rotate<DType::bf16, Numerics::hf_fp32_apply>(8);
  expect_rotate_first_is_rotate<DType::bf16, Numerics::accurate>(9);
}

}  // namespace

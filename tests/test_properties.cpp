// Properties RoPE must have, checked on apply_reference and CpuEngine: identity at position 0, pair norms kept, inverse rotation, relative-position dot products.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "posenc/cpu.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/specs.hpp"

namespace {

using namespace posenc;        // NOLINT(google-build-using-namespace)
using namespace posenc::test;  // NOLINT(google-build-using-namespace)

/// Runs apply_reference and a CpuEngine on the same Q-only problem (out of place) and returns
/// the engine's output after checking both agree bit for bit.
HostTensor rotate_both(const RopeSpec& spec, const HostTensor& src, const HostPositions& pos) {
  HostTensor ref(src.view.dtype, src.view.tokens, src.view.heads, src.view.head_dim);
  HostTensor eng(src.view.dtype, src.view.tokens, src.view.heads, src.view.head_dim);
  apply_reference(spec, RopeArgs{ref.view, {}, src.cview(), {}, pos.view(), {}});
  CpuEngine(spec, CpuOptions{2}).apply(RopeArgs{eng.view, {}, src.cview(), {}, pos.view(), {}});
  EXPECT_TRUE(bits_equal(ref.cview(), eng.cview())) << case_name(spec, src.view.dtype);
  return eng;
}

// Position 0 rotates by angle 0: cos = 1 and sin = 0 exactly, so with attention factor 1 every
// output equals its input bit for bit (a*1 and b*0 round exactly). interleaved_to_half only moves
// elements: pair i read from (2i, 2i+1) lands in (i, i+H).
TEST(Properties, PositionZeroIsIdentity) {
  for (const Scaling scheme : {Scaling::none, Scaling::linear, Scaling::llama3, Scaling::table, Scaling::dynamic}) {
    for (const Pairing pairing : all_pairings) {
      for (const Numerics numerics : all_numerics) {
        for (const DType dtype : all_dtypes) {
          const RopeSpec spec = scheme_spec(scheme, 96, 64, 16, pairing, numerics);
          HostTensor src(dtype, 3, 2, 96);
          fill_random(src.view, 5);
          const HostPositions pos(spec, {0, 0, 0});
          const HostTensor out = rotate_both(spec, src, pos);
          std::vector<std::int64_t> from(96);  // the input element that output d must equal
          for (std::int64_t d = 0; d < 96; ++d) from[static_cast<std::size_t>(d)] = d;
          for (std::int64_t i = 0; i < 32; ++i) {
            const PairPlaces at = pair_places(pairing, 32, i);
            from[static_cast<std::size_t>(16 + at.write_a)] = 16 + at.read_a;
            from[static_cast<std::size_t>(16 + at.write_b)] = 16 + at.read_b;
          }
          for (std::int64_t t = 0; t < 3; ++t) {
            for (std::int64_t h = 0; h < 2; ++h) {
              for (std::int64_t d = 0; d < 96; ++d) {
                ASSERT_EQ(load_bits(src.cview(), t, h, from[static_cast<std::size_t>(d)]),
                          load_bits(out.cview(), t, h, d))
                    << case_name(spec, dtype) << ": output (" << t << ", " << h << ", " << d
                    << ") is not input element " << from[static_cast<std::size_t>(d)] << " at position 0";
              }
            }
          }
        }
      }
    }
  }
}

// A rotation keeps each pair's length. In float32 with accurate numerics every output is within
// 3.33 ulp of the head's max (tolerance_ulps), so a pair's norm moves by at most sqrt(2) * 3.33
// ulp(M) <= 4.8 * 2^-23 * M; the check uses 5 * 2^-23 * M.
TEST(Properties, PairNormsPreservedFloat32Accurate) {
  for (const Pairing pairing : all_pairings) {
    const RopeSpec spec = scheme_spec(Scaling::yarn, 128, 0, 0, pairing, Numerics::accurate);
    const double factor = compute_frequencies(spec).attention_factor;
    HostTensor src(DType::f32, 64, 4, 128);
    fill_random(src.view, 77);
    const HostPositions pos(spec, random_positions(64, std::int64_t{1} << 20, 3));
    const HostTensor out = rotate_both(spec, src, pos);
    for (std::int64_t t = 0; t < 64; ++t) {
      for (std::int64_t h = 0; h < 4; ++h) {
        double head_max = 0;
        for (std::int64_t d = 0; d < 128; ++d)
          head_max = std::fmax(head_max, std::fabs(load_value(out.cview(), t, h, d)));
        for (std::int64_t i = 0; i < 64; ++i) {
          const PairPlaces at = pair_places(pairing, 64, i);
          const double in =
              std::hypot(load_value(src.cview(), t, h, at.read_a), load_value(src.cview(), t, h, at.read_b));
          const double norm =
              std::hypot(load_value(out.cview(), t, h, at.write_a), load_value(out.cview(), t, h, at.write_b));
          ASSERT_NEAR(norm, in * factor, 5 * 0x1p-23 * head_max)
              << to_string(pairing) << " token " << t << " head " << h << " pair " << i << " at position "
              << pos.values[static_cast<std::size_t>(t)];
        }
      }
    }
  }
}

/// Swaps the two members of every pair of the window (pair_places; pairings that write a pair
/// where they read it), in place. Rotating a swapped pair by +angle and swapping back rotates by
/// -angle: (b, a) -> (b c - a s, a c + b s), i.e. (a, b) -> (a c + b s, b c - a s).
void swap_pairs(const TensorView& v, Pairing pairing, std::int64_t half) {
  for (std::int64_t t = 0; t < v.tokens; ++t) {
    for (std::int64_t h = 0; h < v.heads; ++h) {
      for (std::int64_t i = 0; i < half; ++i) {
        const PairPlaces at = pair_places(pairing, half, i);
        const std::int64_t a = at.read_a;
        const std::int64_t b = at.read_b;
        const std::uint32_t x = load_bits(ConstTensorView(v), t, h, a);
        store_bits(v, t, h, a, load_bits(ConstTensorView(v), t, h, b));
        store_bits(v, t, h, b, x);
      }
    }
  }
}

// Rotating by +angle and then by -angle restores the input: within twice the float32 accurate
// bound (3.33 ulp of the head max per rotation; 7 used), and within twice the bf16 hf_compatible
// bound (3.33 ulp each; 7 used).
TEST(Properties, InverseRotationRestoresInput) {
  // Every pairing that writes a pair where it read it (interleaved_to_half moves them).
  for (const Pairing pairing : {Pairing::half_split, Pairing::interleaved, Pairing::half_split_2d}) {
    for (const auto& [dtype, numerics, ulps] :
         {std::tuple{DType::f32, Numerics::accurate, 7.0}, std::tuple{DType::bf16, Numerics::hf_compatible, 7.0},
          std::tuple{DType::f16, Numerics::hf_fp32_apply, 4.0}}) {
      const RopeSpec spec = scheme_spec(Scaling::llama3, 128, 0, 0, pairing, numerics);
      HostTensor src(dtype, 32, 3, 128);
      fill_random(src.view, 101);
      const HostPositions pos(spec, random_positions(32, 1 << 20, 8));
      HostTensor x(dtype, 32, 3, 128);
      std::memcpy(x.buffer.data(), src.buffer.data(), static_cast<std::size_t>(src.buffer.size()));
      const CpuEngine engine(spec, CpuOptions{2});
      engine.apply(RopeArgs{x.view, {}, {}, {}, pos.view(), {}});
      swap_pairs(x.view, pairing, 64);
      engine.apply(RopeArgs{x.view, {}, {}, {}, pos.view(), {}});
      swap_pairs(x.view, pairing, 64);
      Expected64 expected{32, 3, 128, {}};
      for (std::int64_t t = 0; t < 32; ++t) {
        for (std::int64_t h = 0; h < 3; ++h) {
          for (std::int64_t d = 0; d < 128; ++d) expected.values.push_back(load_value(src.cview(), t, h, d));
        }
      }
      EXPECT_TRUE(near64(expected, x.cview(), dtype, ulps)) << to_string(pairing) << " " << to_string(numerics);
    }
  }
}

/// Dot product, in float64, of head h of q at token tq and head h of k at token tk.
double dot(const ConstTensorView& q, std::int64_t tq, const ConstTensorView& k, std::int64_t tk, std::int64_t h) {
  double s = 0;
  for (std::int64_t d = 0; d < q.head_dim; ++d) s += load_value(q, tq, h, d) * load_value(k, tk, h, d);
  return s;
}

// The reason RoPE exists: q(m) . k(n) depends only on m - n. The same q and k vectors are placed
// at position pairs with equal differences up to 2^20; the float32 accurate dot products must
// agree within the error the outputs may carry (3.33 ulp of each head max per element, summed
// over the head: 3.5 * (ulp(Mq) * sum|k| + ulp(Mk) * sum|q|) for each of the two products).
TEST(Properties, DotProductDependsOnlyOnDistance) {
  for (const Pairing pairing : all_pairings) {
    const RopeSpec spec = scheme_spec(Scaling::none, 128, 0, 0, pairing, Numerics::accurate);
    const std::vector<std::int64_t> offsets = {0, 1, 1000, 65536, 999999, (1 << 20) - 64};
    for (const std::int64_t distance : {0, 1, 7, 63}) {
      // Token j of q sits at offsets[j] + distance, token j of k at offsets[j]; every token holds
      // the same vectors.
      const auto n = static_cast<std::int64_t>(offsets.size());
      HostTensor q_src(DType::f32, n, 2, 128);
      HostTensor k_src(DType::f32, n, 2, 128);
      for (std::int64_t t = 0; t < n; ++t) {
        for (std::int64_t h = 0; h < 2; ++h) {
          for (std::int64_t d = 0; d < 128; ++d) {
            store_bits(q_src.view, t, h, d, encode_value(DType::f32, random_value(DType::f32, 1, 0, h, d)));
            store_bits(k_src.view, t, h, d, encode_value(DType::f32, random_value(DType::f32, 2, 0, h, d)));
          }
        }
      }
      std::vector<std::int64_t> qp;
      for (const std::int64_t o : offsets) qp.push_back(o + distance);
      // Every stream holds the same positions, so each stream's distance is `distance`.
      const std::int32_t streams = spec.position_streams();
      auto in_every_stream = [streams](const std::vector<std::int64_t>& p) {
        std::vector<std::int64_t> out;
        for (std::int32_t s = 0; s < streams; ++s) out.insert(out.end(), p.begin(), p.end());
        return HostPositions(out, IndexType::i64, streams);
      };
      const HostTensor q = rotate_both(spec, q_src, in_every_stream(qp));
      const HostTensor k = rotate_both(spec, k_src, in_every_stream(offsets));
      for (std::int64_t h = 0; h < 2; ++h) {
        auto bound = [&](std::int64_t t) {
          double mq = 0, mk = 0, sq = 0, sk = 0;
          for (std::int64_t d = 0; d < 128; ++d) {
            const double vq = std::fabs(load_value(q.cview(), t, h, d));
            const double vk = std::fabs(load_value(k.cview(), t, h, d));
            mq = std::fmax(mq, vq);
            mk = std::fmax(mk, vk);
            sq += vq;
            sk += vk;
          }
          return 3.5 * (ulp_of(DType::f32, mq) * sk + ulp_of(DType::f32, mk) * sq);
        };
        const double first = dot(q.cview(), 0, k.cview(), 0, h);
        for (std::int64_t t = 1; t < n; ++t) {
          EXPECT_NEAR(dot(q.cview(), t, k.cview(), t, h), first, bound(0) + bound(t))
              << to_string(pairing) << " head " << h << ": q at " << qp[static_cast<std::size_t>(t)] << ", k at "
              << offsets[static_cast<std::size_t>(t)] << " vs q at " << qp[0] << ", k at " << offsets[0];
        }
      }
    }
  }
}

}  // namespace

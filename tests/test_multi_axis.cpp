// Multi-axis rotation on the CPU: M-RoPE (contiguous, interleaved) and ChatGLM-6B 2-D RoPE against a float64 model, 1-D equivalences, engine = reference, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/kernel_build.hpp"
#include "support/reference64.hpp"
#include "support/specs.hpp"

namespace {

using namespace posenc;        // NOLINT(google-build-using-namespace)
using namespace posenc::test;  // NOLINT(google-build-using-namespace)

// ---- the multi-axis specs under test -----------------------------------------------------------

struct Named {
  std::string name;
  RopeSpec spec;
};

RopeSpec mrope(std::int64_t head_dim, std::int64_t rotary, Pairing pairing, std::vector<std::int64_t> section,
               bool interleaved, double theta, Numerics numerics) {
  RopeSpec s;
  s.head_dim = head_dim;
  s.rotary_dim = rotary;
  s.pairing = pairing;
  s.theta = theta;
  s.numerics = numerics;
  s.mrope_section = std::move(section);
  s.mrope_interleaved = interleaved;
  return s;
}

RopeSpec chatglm_2d(Numerics numerics) {
  RopeSpec s;
  s.head_dim = 128;
  s.pairing = Pairing::half_split_2d;
  s.numerics = numerics;
  return s;
}

/// Qwen2-VL, Qwen3-VL (interleaved sections), GLM-4.1V (adjacent pairs, R = 64 of 128) and ChatGLM-6B.
std::vector<Named> multi_axis_specs(Numerics n) {
  return {
      {"qwen2-vl", mrope(128, 0, Pairing::half_split, {16, 24, 24}, false, 1e6, n)},
      {"qwen3-vl", mrope(128, 0, Pairing::half_split, {24, 20, 20}, true, 5e6, n)},
      {"glm4v", mrope(128, 64, Pairing::interleaved, {8, 12, 12}, false, 1e4, n)},
      {"chatglm-6b", chatglm_2d(n)},
  };
}

// ---- positions with several streams --------------------------------------------------------------

/// `streams` position streams stored stream-major with `stream_stride` >= count; the gap between
/// streams holds out-of-range values, so reading it would fail validation or change results.
struct StreamPositions {
  IndexType type;
  std::int64_t count;
  std::int32_t streams;
  std::int64_t stride;
  std::vector<std::int64_t> values;  // streams * stride
  std::vector<std::int32_t> values32;

  StreamPositions(const std::vector<std::vector<std::int64_t>>& per_stream, IndexType t, std::int64_t gap = 0)
      : type(t),
        count(static_cast<std::int64_t>(per_stream.at(0).size())),
        streams(static_cast<std::int32_t>(per_stream.size())),
        stride(count + gap),
        values(static_cast<std::size_t>(streams * stride), -7) {
    for (std::int32_t s = 0; s < streams; ++s) {
      for (std::int64_t i = 0; i < count; ++i) values[static_cast<std::size_t>(s * stride + i)] = per_stream[s][i];
    }
    for (const std::int64_t v : values) values32.push_back(static_cast<std::int32_t>(v));
  }

  std::int64_t at(std::int32_t s, std::int64_t i) const { return values[static_cast<std::size_t>(s * stride + i)]; }

  PositionsView view() const {
    const void* data = type == IndexType::i32 ? static_cast<const void*>(values32.data())
                                              : static_cast<const void*>(values.data());
    return PositionsView{data, type, count, streams, stride};
  }
};

/// `streams` independent random streams in [0, limit).
std::vector<std::vector<std::int64_t>> random_streams(std::int32_t streams, std::int64_t count, std::int64_t limit,
                                                      std::uint64_t seed) {
  std::vector<std::vector<std::int64_t>> out;
  for (std::int32_t s = 0; s < streams; ++s) out.push_back(random_positions(count, limit, seed * 31 + 7 * s));
  return out;
}

// ---- the streams and frequencies of a float64 model (written from rope.hpp's comments) ---------

/// The stream of pair i, restated from the text of rope.hpp rather than taken from pair_axes.
int stream_of(const RopeSpec& spec, std::int64_t i) {
  const std::int64_t half = spec.rotary() / 2;
  if (spec.pairing == Pairing::half_split_2d) return i < half / 2 ? 0 : 1;
  if (spec.mrope_section.empty()) return 0;
  const std::vector<std::int64_t>& m = spec.mrope_section;
  if (spec.mrope_interleaved) {
    if (i % 3 == 1 && i < 3 * m[1]) return 1;
    if (i % 3 == 2 && i < 3 * m[2]) return 2;
    return 0;
  }
  std::int64_t end = 0;
  for (std::size_t s = 0; s < m.size(); ++s) {
    end += m[s];
    if (i < end) return static_cast<int>(s);
  }
  return -1;
}

/// Each pair's frequency and stream, restated from rope.hpp's text rather than taken from
/// pair_axes: `table` is compute_frequencies' output (R/4 values for half_split_2d, whose two
/// halves each reuse it).
PairAxes axes_of(const RopeSpec& spec, const std::vector<float>& table) {
  PairAxes axes;
  const std::int64_t half = spec.rotary() / 2;
  const std::int64_t quarter = spec.rotary() / 4;
  for (std::int64_t i = 0; i < half; ++i) {
    const std::int64_t f = spec.pairing == Pairing::half_split_2d ? i % quarter : i;
    axes.inv_freq.push_back(table[static_cast<std::size_t>(f)]);
    axes.stream.push_back(static_cast<std::uint8_t>(stream_of(spec, i)));
  }
  return axes;
}

/// Out-of-place apply_reference of `spec` on fresh random Q/K; returns the destinations.
struct RopeRun {
  HostTensor q_src, k_src, q, k;
  RopeRun(DType dtype, std::int64_t tokens, std::int64_t q_heads, std::int64_t kv_heads, std::int64_t head_dim,
      std::uint64_t seed)
      : q_src(dtype, tokens, q_heads, head_dim),
        k_src(dtype, tokens, kv_heads, head_dim),
        q(dtype, tokens, q_heads, head_dim),
        k(dtype, tokens, kv_heads, head_dim) {
    fill_random(q_src.view, seed);
    fill_random(k_src.view, seed + 1);
  }
  RopeArgs args(const PositionsView& p) const { return RopeArgs{q.view, k.view, q_src.cview(), k_src.cview(), p, {}}; }
};

// ---- 1. the reference against the float64 model -----------------------------------------------

TEST(MultiAxisReference, MatchesFloat64Model) {
  std::uint64_t seed = 1;
  for (const Numerics numerics : all_numerics) {
    for (const Named& n : multi_axis_specs(numerics)) {
      for (const DType dtype : all_dtypes) {
        ++seed;
        SCOPED_TRACE(n.name + "/" + to_string(numerics) + "/" + to_string(dtype));
        const RopeSpec& spec = n.spec;
        const StreamPositions pos(random_streams(spec.position_streams(), 33, 1 << 17, seed), IndexType::i64, 5);
        RopeRun run(dtype, 33, 3, 2, spec.head_dim, seed);
        apply_reference(spec, run.args(pos.view()));
        const FrequencyTable table = compute_frequencies(spec);
        ASSERT_EQ(static_cast<std::int64_t>(table.inv_freq.size()), spec.frequency_dim() / 2);
        const double tol = tolerance_ulps(dtype, numerics, 1.0);
        const AngleModel model = angle_model_for(numerics);
        EXPECT_TRUE(near64(rotate64(spec, axes_of(spec, table.inv_freq), 1.0, model, run.q_src.cview(), pos.view()), run.q.cview(),
                           dtype, tol));
        EXPECT_TRUE(near64(rotate64(spec, axes_of(spec, table.inv_freq), 1.0, model, run.k_src.cview(), pos.view()), run.k.cview(),
                           dtype, tol));
      }
    }
  }
}

// pair_axes against the layouts rope.hpp draws (a check of the model above as much as of posenc).
TEST(MultiAxisReference, PairAxesFollowTheDocumentedLayouts) {
  for (const Named& n : multi_axis_specs(Numerics::hf_compatible)) {
    const FrequencyTable table = compute_frequencies(n.spec);
    const PairAxes axes = pair_axes(n.spec, table);
    ASSERT_EQ(static_cast<std::int64_t>(axes.stream.size()), n.spec.rotary() / 2) << n.name;
    for (std::int64_t i = 0; i < n.spec.rotary() / 2; ++i) {
      EXPECT_EQ(axes.stream[static_cast<std::size_t>(i)], stream_of(n.spec, i)) << n.name << " pair " << i;
    }
  }
  // Qwen3-VL [24, 20, 20]: t h w t h w ... up to pair 59, then t for pairs 60..63.
  const RopeSpec q3 = multi_axis_specs(Numerics::hf_compatible)[1].spec;
  const PairAxes a = pair_axes(q3, compute_frequencies(q3));
  EXPECT_EQ(a.stream[0], 0);
  EXPECT_EQ(a.stream[1], 1);
  EXPECT_EQ(a.stream[2], 2);
  EXPECT_EQ(a.stream[59], 2);
  EXPECT_EQ(a.stream[61], 0);
  EXPECT_EQ(a.stream[62], 0);
  // ChatGLM-6B: 32 frequencies of a 64-dim RoPE, repeated for the block-position half.
  const RopeSpec glm = chatglm_2d(Numerics::hf_compatible);
  const FrequencyTable t2 = compute_frequencies(glm);
  ASSERT_EQ(t2.inv_freq.size(), 32u);
  EXPECT_EQ(t2.inv_freq[1], 1.0f / std::pow(10000.0f, 2.0f / 64.0f));
  const PairAxes a2 = pair_axes(glm, t2);
  EXPECT_EQ(a2.inv_freq[33], t2.inv_freq[1]);
  EXPECT_EQ(a2.stream[31], 0);
  EXPECT_EQ(a2.stream[32], 1);
}

// ---- 2. reductions to 1-D RoPE -------------------------------------------------------------------

TEST(MultiAxisReference, EqualStreamsAreOneDimensionalRope) {
  std::uint64_t seed = 100;
  for (const Numerics numerics : all_numerics) {
    for (const Named& n : multi_axis_specs(numerics)) {
      if (n.spec.pairing == Pairing::half_split_2d) continue;  // 2-D is not 1-D RoPE for equal streams
      for (const DType dtype : all_dtypes) {
        ++seed;
        SCOPED_TRACE(n.name + "/" + to_string(numerics) + "/" + to_string(dtype));
        const std::vector<std::int64_t> p = random_positions(40, 1 << 20, seed);
        const StreamPositions three({p, p, p}, IndexType::i32, 3);
        const HostPositions one(p, IndexType::i32);
        RopeSpec plain = n.spec;
        plain.mrope_section.clear();
        plain.mrope_interleaved = false;
        RopeRun multi(dtype, 40, 4, 2, n.spec.head_dim, seed);
        RopeRun single(dtype, 40, 4, 2, n.spec.head_dim, seed);
        apply_reference(n.spec, multi.args(three.view()));
        apply_reference(plain, single.args(one.view()));
        EXPECT_TRUE(bits_equal(single.q.cview(), multi.q.cview()));
        EXPECT_TRUE(bits_equal(single.k.cview(), multi.k.cview()));
      }
    }
  }
}

// ChatGLM-6B with block position 0 everywhere (the prompt part): the second half passes through
// unchanged and the first half is exactly a half-split RoPE of R/2 dims by the position stream.
TEST(MultiAxisReference, ChatGlmBlockPositionZeroLeavesSecondHalf) {
  std::uint64_t seed = 300;
  for (const Numerics numerics : all_numerics) {
    for (const DType dtype : all_dtypes) {
      ++seed;
      SCOPED_TRACE(std::string(to_string(numerics)) + "/" + to_string(dtype));
      const RopeSpec spec = chatglm_2d(numerics);
      const std::vector<std::int64_t> p = random_positions(24, 2048, seed);
      const StreamPositions pos({p, std::vector<std::int64_t>(p.size(), 0)}, IndexType::i64);
      RopeRun run(dtype, 24, 2, 2, 128, seed);
      apply_reference(spec, run.args(pos.view()));
      // A 1-D half-split RoPE rotating dims [0, 64) of the same heads.
      RopeSpec first = spec;
      first.pairing = Pairing::half_split;
      first.rotary_dim = 64;
      RopeRun one_d(dtype, 24, 2, 2, 128, seed);
      const HostPositions single(p);
      apply_reference(first, one_d.args(single.view()));
      // one_d passed dims [64, 128) through; spec must have left them unchanged as well.
      EXPECT_TRUE(bits_equal(one_d.q.cview(), run.q.cview()));
      EXPECT_TRUE(bits_equal(one_d.k.cview(), run.k.cview()));
    }
  }
}

// A distinct block-position stream must change only the second half (so the check above can fail).
TEST(MultiAxisReference, ChatGlmBlockPositionRotatesOnlySecondHalf) {
  const RopeSpec spec = chatglm_2d(Numerics::hf_compatible);
  const std::vector<std::int64_t> p = random_positions(16, 2048, 9);
  const StreamPositions zero({p, std::vector<std::int64_t>(16, 0)}, IndexType::i64);
  const StreamPositions ones({p, std::vector<std::int64_t>(16, 5)}, IndexType::i64);
  RopeRun a(DType::bf16, 16, 2, 1, 128, 9);
  RopeRun b(DType::bf16, 16, 2, 1, 128, 9);
  apply_reference(spec, a.args(zero.view()));
  apply_reference(spec, b.args(ones.view()));
  std::int64_t first_half_diffs = 0, second_half_diffs = 0;
  for (std::int64_t t = 0; t < 16; ++t) {
    for (std::int64_t h = 0; h < 2; ++h) {
      for (std::int64_t d = 0; d < 128; ++d) {
        const bool differs = load_bits(a.q.cview(), t, h, d) != load_bits(b.q.cview(), t, h, d);
        (d < 64 ? first_half_diffs : second_half_diffs) += differs;
      }
    }
  }
  EXPECT_EQ(first_half_diffs, 0);
  EXPECT_GT(second_half_diffs, 16 * 2 * 32);  // most of the 2048 second-half elements
}

// ---- 3. CpuEngine = apply_reference ---------------------------------------------------------------


/// Destination layouts: dense, or strided with poisoned gaps between heads and tokens.
HostTensor make(bool strided, DType dtype, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim) {
  if (strided) return HostTensor(dtype, tokens, heads, head_dim, heads * (head_dim + 8) + 24, head_dim + 8);
  return HostTensor(dtype, tokens, heads, head_dim);
}

class MultiAxisEngine : public ::testing::TestWithParam<std::string> {};

// The four families plus scaled variants (yarn, longrope and dynamic, whose tables change per
// call) x dtypes x numerics x in/out of place x strides x GQA heads x threads x i32/i64.
TEST_P(MultiAxisEngine, BitIdenticalToReference) {
  const KernelBuild build(GetParam());
  std::uint64_t n = 0;
  for (const Numerics numerics : all_numerics) {
    std::vector<Named> specs = multi_axis_specs(numerics);
    for (const Scaling scheme : {Scaling::yarn, Scaling::longrope, Scaling::dynamic}) {
      RopeSpec mixed = scheme_spec(scheme, 128, 64, 32, Pairing::half_split, numerics);
      mixed.mrope_section = {8, 12, 12};
      specs.push_back({std::string("mrope-") + to_string(scheme), mixed});
      RopeSpec two_d = scheme_spec(Scaling::none, 128, 0, 0, Pairing::half_split_2d, numerics);
      two_d.scaling = scheme;
      two_d.params = scheme_spec(scheme, 64, 0, 0, Pairing::half_split, numerics).params;  // R/4 = 32 factors
      specs.push_back({std::string("2d-") + to_string(scheme), two_d});
    }
    for (const Named& named : specs) {
      for (const DType dtype : all_dtypes) {
        for (const std::int64_t tokens : {1, 9, 300}) {
          ++n;
          const RopeSpec& spec = named.spec;
          const bool out_of_place = n % 2 == 1;
          const bool strided = n % 3 != 0;
          const std::int64_t q_heads = n % 2 == 0 ? 8 : 5;
          const std::int64_t kv_heads = n % 4 == 3 ? 0 : (n % 2 == 0 ? 2 : 1);
          const int threads = n % 5 < 2 ? 1 : 2;
          const IndexType index = n % 2 == 0 ? IndexType::i32 : IndexType::i64;
          SCOPED_TRACE(named.name + "/" + to_string(numerics) + "/" + to_string(dtype) + "/tokens " +
                       std::to_string(tokens) + "/case " + std::to_string(n));
          // Positions to 2^20: dynamic and longrope go past their thresholds in some stream.
          const StreamPositions pos(random_streams(spec.position_streams(), tokens, (1 << 20) + 1, n), index,
                                    static_cast<std::int64_t>(n % 4));
          HostTensor q_src = make(!strided, dtype, tokens, q_heads, spec.head_dim);
          HostTensor k_src = make(!strided, dtype, tokens, std::max<std::int64_t>(kv_heads, 1), spec.head_dim);
          fill_random(q_src.view, n);
          fill_random(k_src.view, n + 1);
          HostTensor want_q = make(strided, dtype, tokens, q_heads, spec.head_dim);
          HostTensor want_k = make(strided, dtype, tokens, std::max<std::int64_t>(kv_heads, 1), spec.head_dim);
          HostTensor got_q = make(strided, dtype, tokens, q_heads, spec.head_dim);
          HostTensor got_k = make(strided, dtype, tokens, std::max<std::int64_t>(kv_heads, 1), spec.head_dim);
          if (!out_of_place) {  // in place: destinations start as copies of the input
            for (HostTensor* d : {&want_q, &got_q}) {
              for (std::int64_t t = 0; t < tokens; ++t)
                for (std::int64_t h = 0; h < q_heads; ++h)
                  for (std::int64_t e = 0; e < spec.head_dim; ++e)
                    store_bits(d->view, t, h, e, load_bits(q_src.cview(), t, h, e));
            }
            for (HostTensor* d : {&want_k, &got_k}) {
              for (std::int64_t t = 0; t < tokens; ++t)
                for (std::int64_t h = 0; h < d->view.heads; ++h)
                  for (std::int64_t e = 0; e < spec.head_dim; ++e)
                    store_bits(d->view, t, h, e, load_bits(k_src.cview(), t, h, e));
            }
          }
          const auto args_for = [&](HostTensor& q, HostTensor& k) {
            RopeArgs a;
            a.q = q.view;
            if (kv_heads > 0) a.k = k.view;
            if (out_of_place) {
              a.q_src = q_src.cview();
              if (kv_heads > 0) a.k_src = k_src.cview();
            }
            a.positions = pos.view();
            return a;
          };
          const std::vector<std::byte> got_k_before = got_k.buffer.snapshot();
          apply_reference(spec, args_for(want_q, want_k));
          const CpuEngine engine(spec, CpuOptions{threads});
          engine.apply(args_for(got_q, got_k));
          EXPECT_TRUE(bits_equal(want_q.cview(), got_q.cview(), NanBits::any_nan));
          if (kv_heads > 0) {
            EXPECT_TRUE(bits_equal(want_k.cview(), got_k.cview(), NanBits::any_nan));
          } else {
            EXPECT_TRUE(bytes_equal(got_k_before, got_k.buffer)) << "Q-only call wrote the unused K buffer";
          }
          // Only the views were written (strided gaps keep their poison).
          if (strided) {
            EXPECT_TRUE(only_views_written(want_q.buffer.snapshot(), got_q.buffer, {got_q.cview()}));
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Builds, MultiAxisEngine, ::testing::Values("native", "avx2", "baseline"));

// dynamic / longrope select their table from the largest position of ANY stream (HF takes
// max(position_ids) over the whole [3, T] tensor): a call whose stream 2 alone crosses the
// threshold uses the long table.
TEST(MultiAxisEngineTables, LargestPositionOfAllStreamsSelectsTheTable) {
  for (const Scaling scheme : {Scaling::dynamic, Scaling::longrope}) {
    SCOPED_TRACE(to_string(scheme));
    RopeSpec spec = scheme_spec(scheme, 64, 0, 0, Pairing::half_split, Numerics::hf_compatible);
    spec.mrope_section = {8, 12, 12};
    const std::int64_t threshold = scheme_threshold(spec);
    const std::vector<std::int64_t> low = random_positions(12, threshold / 2, 3);
    std::vector<std::int64_t> high = low;
    high[7] = threshold + 500;  // only stream 2 reaches past the threshold
    const StreamPositions pos({low, low, high}, IndexType::i64);
    // The same call with the table of seq_len = threshold + 501 fed in, and with stream 0's.
    RopeSpec all_streams = spec;
    all_streams.scaling = Scaling::table;
    all_streams.params.inv_freq = compute_frequencies(spec, threshold + 501).inv_freq;
    all_streams.attention_factor = compute_frequencies(spec, threshold + 501).attention_factor;
    RopeSpec stream0 = all_streams;
    stream0.params.inv_freq = compute_frequencies(spec, threshold / 2).inv_freq;
    stream0.attention_factor = compute_frequencies(spec, threshold / 2).attention_factor;
    RopeRun engine_run(DType::f32, 12, 2, 1, 64, 5);
    RopeRun want(DType::f32, 12, 2, 1, 64, 5);
    RopeRun wrong(DType::f32, 12, 2, 1, 64, 5);
    CpuEngine(spec, CpuOptions{1}).apply(engine_run.args(pos.view()));
    apply_reference(all_streams, want.args(pos.view()));
    apply_reference(stream0, wrong.args(pos.view()));
    EXPECT_TRUE(bits_equal(want.q.cview(), engine_run.q.cview()));
    EXPECT_FALSE(bits_equal(wrong.q.cview(), engine_run.q.cview())) << "the tables must differ for this check";
    RopeRun ref_run(DType::f32, 12, 2, 1, 64, 5);
    apply_reference(spec, ref_run.args(pos.view()));
    EXPECT_TRUE(bits_equal(want.q.cview(), ref_run.q.cview()));
  }
}

// ---- 4. bad input ----------------------------------------------------------------------------------

TEST(MultiAxisErrors, BadCallsAreNamedAndWriteNothing) {
  const RopeSpec glm4v = mrope(128, 64, Pairing::interleaved, {8, 12, 12}, false, 1e4, Numerics::hf_compatible);
  const CpuEngine engine(glm4v, CpuOptions{2});
  const std::vector<std::int64_t> p = random_positions(8, 1000, 4);
  HostTensor q(DType::bf16, 8, 4, 128);
  HostTensor k(DType::bf16, 8, 2, 128);
  fill_random(q.view, 1);
  fill_random(k.view, 2);
  const std::vector<std::byte> q_before = q.buffer.snapshot();
  const std::vector<std::byte> k_before = k.buffer.snapshot();

  struct Bad {
    const char* what;
    PositionsView positions;
    ErrorKind kind;
    std::vector<std::string> parts;
  };
  const HostPositions one(p);
  const StreamPositions two({p, p}, IndexType::i64);
  StreamPositions overlapping({p, p, p}, IndexType::i64);
  std::vector<std::int64_t> bad = p;
  bad[5] = 70000;
  RopeSpec tight = glm4v;
  const StreamPositions far({p, p, bad}, IndexType::i64);
  PositionsView overlap = overlapping.view();
  overlap.stream_stride = 7;
  PositionsView huge = overlapping.view();
  const std::vector<Bad> cases = {
      {"one stream for M-RoPE", one.view(), ErrorKind::invalid_argument, {"positions.streams 1", "3 position streams"}},
      {"two streams for three sections", two.view(), ErrorKind::invalid_argument, {"positions.streams 2", "3"}},
      {"overlapping streams", overlap, ErrorKind::invalid_argument,
       {"positions.stream_stride 7", "positions.count 8", "overlap"}},
  };
  for (const Bad& c : cases) {
    SCOPED_TRACE(c.what);
    const RopeArgs args{q.view, k.view, {}, {}, c.positions, {}};
    EXPECT_TRUE(throws_error([&] { engine.apply(args); }, c.kind, c.parts));
    EXPECT_TRUE(throws_error([&] { apply_reference(glm4v, args); }, c.kind, c.parts));
    EXPECT_TRUE(throws_error([&] { validate_args(glm4v, args); }, c.kind, c.parts));
    EXPECT_TRUE(bytes_equal(q_before, q.buffer));
    EXPECT_TRUE(bytes_equal(k_before, k.buffer));
  }
  // A stream extent that does not fit in 64 bits.
  huge.stream_stride = std::int64_t{1} << 62;
  EXPECT_TRUE(throws_error([&] { engine.apply(RopeArgs{q.view, k.view, {}, {}, huge, {}}); }, ErrorKind::overflow,
                           {"stream_stride"}));
  // Out of range in stream 2 only.
  tight.position_limit = 65536;
  const CpuEngine tight_engine(tight, CpuOptions{1});
  const RopeArgs far_args{q.view, k.view, {}, {}, far.view(), {}};
  for (const auto& run : {std::function<void()>([&] { tight_engine.apply(far_args); }),
                          std::function<void()>([&] { apply_reference(tight, far_args); })}) {
    EXPECT_TRUE(throws_error(run, ErrorKind::out_of_range,
                             {"position 70000 of stream 2 at token index 5 is outside [0, 65536)"}));
  }
  EXPECT_TRUE(bytes_equal(q_before, q.buffer));
  EXPECT_TRUE(bytes_equal(k_before, k.buffer));
}

TEST(MultiAxisErrors, BadSpecsAreNamed) {
  struct Bad {
    const char* what;
    RopeSpec spec;
    std::vector<std::string> parts;
  };
  const Numerics n = Numerics::hf_compatible;
  RopeSpec interleaved_alone;
  interleaved_alone.mrope_interleaved = true;
  RopeSpec two_d_mrope = chatglm_2d(n);
  two_d_mrope.mrope_section = {16, 16};
  RopeSpec two_d_odd = chatglm_2d(n);
  two_d_odd.rotary_dim = 66;
  RopeSpec longrope_2d = chatglm_2d(n);
  longrope_2d.scaling = Scaling::longrope;
  longrope_2d.params = scheme_spec(Scaling::longrope, 128).params;  // 64 factors, 2-D needs 32
  const std::vector<Bad> cases = {
      {"section sum", mrope(128, 0, Pairing::half_split, {16, 24, 20}, false, 1e6, n),
       {"mrope_section = [16, 24, 20]", "sums to 60", "rotary_dim / 2 = 64"}},
      {"zero section", mrope(128, 0, Pairing::half_split, {0, 32, 32}, false, 1e6, n),
       {"mrope_section[0] = 0", "> 0", "[0, 32, 32]"}},
      {"five streams", mrope(128, 0, Pairing::half_split, {10, 10, 10, 10, 24}, false, 1e6, n),
       {"mrope_section = [10, 10, 10, 10, 24]", "at most 4"}},
      {"interleaved with two sections", mrope(128, 0, Pairing::half_split, {32, 32}, true, 1e6, n),
       {"mrope_section = [32, 32]", "3 entries"}},
      {"interleaved without sections", interleaved_alone, {"mrope_interleaved", "needs mrope_section"}},
      {"2-D with sections", two_d_mrope, {"mrope_section = [16, 16]", "half_split_2d"}},
      {"2-D window not a multiple of 4", two_d_odd, {"rotary_dim = 66", "multiple of 4"}},
      {"2-D longrope factors", longrope_2d, {"params.short_factor.size() = 64", "rotary_dim / 4 = 32"}},
  };
  for (const Bad& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_TRUE(throws_error([&] { c.spec.validate(); }, ErrorKind::invalid_argument, c.parts));
    EXPECT_TRUE(throws_error([&] { CpuEngine engine(c.spec); }, ErrorKind::invalid_argument, c.parts));
  }
}

TEST(MultiAxisSpec, DescribeNamesTheLayout) {
  const std::string m = mrope(128, 0, Pairing::half_split, {24, 20, 20}, true, 5e6, Numerics::hf_compatible).describe();
  EXPECT_NE(m.find("sections [24, 20, 20] (interleaved"), std::string::npos) << m;
  EXPECT_NE(m.find("3 position streams"), std::string::npos) << m;
  const std::string g = chatglm_2d(Numerics::hf_compatible).describe();
  EXPECT_NE(g.find("half_split_2d"), std::string::npos) << g;
  EXPECT_NE(g.find("32 frequencies"), std::string::npos) << g;
  EXPECT_NE(g.find("float32"), std::string::npos) << g;
  EXPECT_EQ(chatglm_2d(Numerics::hf_compatible).position_streams(), 2);
}

}  // namespace

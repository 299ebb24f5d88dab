// GPU engine tests: GPU against the CPU engine over a sweep, call-dependent tables, bad input, position faults, threads, leaks.
//
// The CPU engine is the oracle. hf_compatible and hf_fp32_apply share rope_math.hpp with it and
// must match bit for bit; accurate evaluates cos/sin with the device's double sin/cos instead of
// the host libm, so it is compared within a stated tolerance (accurate_ulps) against the CPU engine
// and against the independent float64 reference. Every destination starts poisoned, every
// element is checked, and bytes outside the destination views (fused V slice, padding, sources)
// must come back unchanged.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "core/schemes.hpp"
#include "gpu_support.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/reference64.hpp"
#include "support/specs.hpp"

namespace posenc::test {
namespace {

using gpu::GpuEngine;

/// accurate numerics: allowed error in ulps of the activation dtype at the head's largest
/// |value|, both GPU vs CPU engine and GPU vs float64 reference. The output is rounded once to
/// the activation dtype (0.5 ulp) after float32 cos/sin and an FMA (a few float32 ulps): one
/// ulp for f16/bf16; four float32 ulps for f32.
double accurate_ulps(DType t) { return t == DType::f32 ? 4.0 : 1.0; }

// ---- the sweep -----------------------------------------------------------------------------------

struct SweepCase {
  DType dtype = DType::bf16;
  Pairing pairing = Pairing::half_split;
  Numerics numerics = Numerics::hf_compatible;
  std::int64_t head_dim = 128;
  std::int64_t rotary = 128;
  std::int64_t offset = 0;
  std::int64_t q_heads = 8;
  std::int64_t k_heads = 8;  ///< 0: K absent
  std::int64_t tokens = 1;
  LayoutKind layout = LayoutKind::separate;
  std::int64_t pad = 0;
  bool in_place = true;
  IndexType index_type = IndexType::i64;
  double theta = 10000.0;
  std::int64_t position_limit = std::int64_t{1} << 20;
  std::uint64_t seed = 1;
};

std::string describe_case(const SweepCase& c) {
  std::ostringstream s;
  s << to_string(c.dtype) << " " << to_string(c.pairing) << " " << to_string(c.numerics) << " D=" << c.head_dim
    << " R=" << c.rotary << "@" << c.offset << " Hq=" << c.q_heads << " Hk=" << c.k_heads << " T=" << c.tokens
    << (c.layout == LayoutKind::fused ? " fused pad=" + std::to_string(c.pad) : std::string(" separate"))
    << (c.in_place ? " in-place " : " out-of-place ") << to_string(c.index_type) << " theta=" << c.theta
    << " limit=" << c.position_limit << " seed=" << c.seed;
  return s.str();
}

RopeSpec spec_of(const SweepCase& c) {
  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = c.head_dim;
  spec.rotary_dim = c.rotary;
  spec.rotary_offset = c.offset;
  spec.pairing = c.pairing;
  spec.numerics = c.numerics;
  spec.theta = c.theta;
  spec.position_limit = c.position_limit;
  return spec;
}

/// Compares the GPU result with the CPU engine's (and, for accurate, the float64 reference).
void expect_matches(const SweepCase& c, const RopeSpec& spec, const std::vector<float>& inv_freq,
                    double attention_factor, const ConstTensorView& input, const PositionsView& positions,
                    const ConstTensorView& cpu, const ConstTensorView& gpu, const char* name) {
  EXPECT_TRUE(all_written(gpu)) << name;
  if (c.numerics != Numerics::accurate) {
    EXPECT_TRUE(bits_equal(cpu, gpu)) << name << ": GPU differs from the CPU engine";
    return;
  }
  EXPECT_TRUE(near64(expected_from(cpu), gpu, c.dtype, accurate_ulps(c.dtype)))
      << name << ": GPU vs CPU engine beyond " << accurate_ulps(c.dtype) << " ulps";
  const Expected64 ref = rotate64(spec, pair_axes(spec, FrequencyTable{inv_freq, attention_factor}),
                                  attention_factor, AngleModel::exact, input, positions);
  EXPECT_TRUE(near64(ref, gpu, c.dtype, accurate_ulps(c.dtype)))
      << name << ": GPU vs float64 reference beyond " << accurate_ulps(c.dtype) << " ulps";
}

/// Runs one case through the CPU engine and the GPU engine and compares everything.
void run_case(const gpu::Device& device, gpu::StreamRef stream, const SweepCase& c) {
  SCOPED_TRACE(describe_case(c));
  const RopeSpec spec = spec_of(c);
  const HostPositions positions(random_positions(c.tokens, c.position_limit, c.seed), c.index_type);

  QkLayout input = make_layout(c.dtype, c.tokens, c.q_heads, c.k_heads, c.head_dim, c.layout, c.pad);
  fill_random_parallel(input.q, c.seed * 2 + 1);
  if (input.k.present()) fill_random_parallel(input.k, c.seed * 2 + 2);
  const std::vector<std::byte> input_bytes = input.buffer.snapshot();

  // The oracle.
  QkLayout cpu = c.in_place ? clone(input)
                            : make_layout(c.dtype, c.tokens, c.q_heads, c.k_heads, c.head_dim, c.layout, c.pad);
  {
    RopeArgs args;
    args.q = cpu.q;
    args.k = cpu.k;
    args.positions = positions.view();
    if (!c.in_place) {
      args.q_src = input.q;
      if (input.k.present()) args.k_src = input.k;
    }
    CpuEngine(spec).apply(args);
  }

  // The GPU engine, into a poisoned destination (out of place) or over the input (in place).
  const GpuEngine engine(spec, device);
  DeviceMirror d_input(device, input.buffer, stream);
  const DevicePositions d_positions(device, positions, stream);
  QkLayout result = c.in_place ? clone(input)
                               : make_layout(c.dtype, c.tokens, c.q_heads, c.k_heads, c.head_dim, c.layout, c.pad);
  const std::vector<std::byte> before = result.buffer.snapshot();
  std::optional<DeviceMirror> d_output;
  RopeArgs args;
  args.positions = d_positions.view;
  if (c.in_place) {
    args.q = d_input.map(input.q);
    args.k = d_input.map(input.k);
  } else {
    d_output.emplace(device, result.buffer, stream);
    args.q = d_output->map(result.q);
    args.k = d_output->map(result.k);
    args.q_src = d_input.map(ConstTensorView(input.q));
    if (input.k.present()) args.k_src = d_input.map(ConstTensorView(input.k));
  }
  ASSERT_NO_THROW(engine.apply(args, stream));
  ASSERT_NO_THROW(engine.check(stream));

  if (c.in_place) {
    d_input.download(result.buffer, stream);
  } else {
    d_output->download(result.buffer, stream);
    HostBuffer source_after(input.buffer.size());
    d_input.download(source_after, stream);
    EXPECT_TRUE(bytes_equal(input_bytes, source_after)) << "an out-of-place source was written";
  }
  EXPECT_TRUE(only_views_written(before, result.buffer, result.views()));

  const double factor = spec.attention_factor.value_or(engine.frequencies().attention_factor);
  expect_matches(c, spec, engine.frequencies().inv_freq, factor, input.q, positions.view(), cpu.q, result.q, "q");
  if (input.k.present()) {
    expect_matches(c, spec, engine.frequencies().inv_freq, factor, input.k, positions.view(), cpu.k, result.k, "k");
  }
}

/// One test of the sweep: a dtype, a pairing and a group of token counts.
struct SweepParam {
  DType dtype;
  Pairing pairing;
  int group;  ///< 0: T in {1, 7, 64} (every numerics x head_dim), 1: T = 1000, 2: T = 65536
};

constexpr std::int64_t sweep_head_dims[] = {64, 80, 96, 128, 256};
constexpr Numerics all_numerics[] = {Numerics::hf_compatible, Numerics::hf_fp32_apply, Numerics::accurate};

/// Fills the axes that are cycled rather than crossed (heads, layout, in place, index type,
/// rotary window, theta, position range) from the case counter `i`, with co-prime periods so
/// that the combinations vary across the sweep.
SweepCase cycled(DType dtype, Pairing pairing, Numerics numerics, std::int64_t head_dim, std::int64_t tokens,
                 std::uint64_t i) {
  SweepCase c;
  c.dtype = dtype;
  c.pairing = pairing;
  c.numerics = numerics;
  c.head_dim = head_dim;
  c.tokens = tokens;
  constexpr std::int64_t heads[][2] = {{8, 8}, {32, 8}, {4, 1}, {6, 0}, {5, 3}};
  c.q_heads = heads[i % 5][0];
  c.k_heads = heads[i % 5][1];
  c.layout = (i / 2) % 2 == 0 ? LayoutKind::separate : LayoutKind::fused;
  // pad 3 breaks 16-byte alignment of the token stride: the generic instantiation.
  constexpr std::int64_t pads[] = {0, 8, 3};
  c.pad = c.layout == LayoutKind::fused ? pads[(i / 4) % 3] : 0;
  c.in_place = (i % 3) != 1;
  c.index_type = (i / 3) % 2 == 0 ? IndexType::i64 : IndexType::i32;
  switch ((i / 7) % 4) {
    case 0:  // full rotation
      c.rotary = head_dim;
      c.offset = 0;
      break;
    case 1:  // GLM: first half rotated
      c.rotary = head_dim / 2;
      c.offset = 0;
      break;
    case 2:  // DeepSeek-like: rotated tail
      c.rotary = std::min<std::int64_t>(64, head_dim / 2);
      c.offset = head_dim - c.rotary;
      break;
    default:  // a window in the middle, usually not vector-aligned: the generic instantiation
      c.rotary = (head_dim / 4) & ~std::int64_t{1};
      c.offset = (head_dim / 8) & ~std::int64_t{1};
      break;
  }
  c.theta = i % 4 == 0 ? 500000.0 : 10000.0;
  // Large positions only where the float64 comparison does not apply (hf modes are bit-exact).
  c.position_limit = numerics != Numerics::accurate && i % 5 == 2 ? (std::int64_t{1} << 31) : (std::int64_t{1} << 20);
  c.seed = 0x9e3779b97f4a7c15ull * (i + 1) + static_cast<std::uint64_t>(dtype) * 131 +
           static_cast<std::uint64_t>(pairing) * 17;
  return c;
}

std::vector<SweepCase> sweep_cases(const SweepParam& p) {
  std::vector<SweepCase> cases;
  std::uint64_t i = static_cast<std::uint64_t>(p.dtype) * 7 + static_cast<std::uint64_t>(p.pairing) * 3;
  if (p.group == 0) {
    for (const std::int64_t tokens : {1, 7, 64}) {
      for (const Numerics n : all_numerics) {
        for (const std::int64_t d : sweep_head_dims) cases.push_back(cycled(p.dtype, p.pairing, n, d, tokens, i++));
      }
    }
  } else if (p.group == 1) {
    for (const Numerics n : all_numerics) {
      for (const std::int64_t d : {80, 128}) cases.push_back(cycled(p.dtype, p.pairing, n, d, 1000, i++));
    }
  } else {
    // 65536 tokens: one KV head keeps the host-side oracle quick; numerics rotate with the pairing.
    SweepCase c = cycled(p.dtype, p.pairing, all_numerics[static_cast<int>(p.pairing)], 128, 65536, i);
    c.q_heads = 4;
    c.k_heads = 1;
    cases.push_back(c);
    if (p.dtype == DType::bf16 && p.pairing == Pairing::half_split) {
      // The benchmark shape (Llama-3-8B-like GQA), hf_compatible, in place, contiguous.
      SweepCase perf = c;
      perf.numerics = Numerics::hf_compatible;
      perf.q_heads = 32;
      perf.k_heads = 8;
      perf.rotary = 128;
      perf.offset = 0;
      perf.layout = LayoutKind::separate;
      perf.pad = 0;
      perf.in_place = true;
      cases.push_back(perf);
    }
  }
  return cases;
}

class GpuSweep : public GpuTest, public ::testing::WithParamInterface<SweepParam> {};

TEST_P(GpuSweep, MatchesCpuEngine) {
  for (const SweepCase& c : sweep_cases(GetParam())) {
    run_case(device, ref(), c);
    if (HasFatalFailure()) return;
  }
}

std::vector<SweepParam> all_sweep_params() {
  std::vector<SweepParam> v;
  for (const int group : {0, 1, 2}) {
    for (const DType t : {DType::f32, DType::f16, DType::bf16}) {
      for (const Pairing p : {Pairing::half_split, Pairing::interleaved, Pairing::interleaved_to_half}) {
        v.push_back({t, p, group});
      }
    }
  }
  return v;
}

std::string sweep_name(const ::testing::TestParamInfo<SweepParam>& info) {
  static constexpr const char* groups[] = {"Decode", "Prefill1000", "Long65536"};
  std::string pairing = to_string(info.param.pairing);
  pairing.erase(std::remove(pairing.begin(), pairing.end(), '_'), pairing.end());
  return std::string(groups[info.param.group]) + "_" + to_string(info.param.dtype) + "_" + pairing;
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuSweep, ::testing::ValuesIn(all_sweep_params()), sweep_name);

// ---- call-dependent tables ------------------------------------------------------------------------

class GpuEngineTest : public GpuTest {
 protected:
  struct Outputs {
    QkLayout cpu;
    QkLayout gpu;
  };

  /// In-place bf16 Q [T, 4, D] / K [T, 2, D] rotated by `positions` on both engines.
  Outputs run_both(const RopeSpec& spec, const GpuEngine& engine, const std::vector<std::int64_t>& values,
                   std::uint64_t seed, DType dtype = DType::bf16) {
    const auto tokens = static_cast<std::int64_t>(values.size());
    const HostPositions positions(values, IndexType::i64);
    QkLayout input = make_layout(dtype, tokens, 4, 2, spec.head_dim, LayoutKind::separate, 0);
    fill_random(input.q, seed);
    fill_random(input.k, seed + 1);
    Outputs out{clone(input), clone(input)};
    RopeArgs cpu_args;
    cpu_args.q = out.cpu.q;
    cpu_args.k = out.cpu.k;
    cpu_args.positions = positions.view();
    CpuEngine(spec).apply(cpu_args);

    DeviceMirror d(device, input.buffer, ref());
    const DevicePositions d_positions(device, positions, ref());
    RopeArgs args;
    args.q = d.map(input.q);
    args.k = d.map(input.k);
    args.positions = d_positions.view;
    engine.apply(args, ref());
    engine.check(ref());
    d.download(out.gpu.buffer, ref());
    return out;
  }
};

std::vector<std::int64_t> positions_up_to(std::int64_t count, std::int64_t max) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) v[static_cast<std::size_t>(i)] = max - (count - 1 - i) * 3;
  return v;
}

RopeSpec longrope_spec() {
  RopeSpec spec;  // Phi-3-mini-128k-like
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = 96;
  spec.scaling = Scaling::longrope;
  spec.params.original_max_position_embeddings = 4096;
  spec.params.max_position_embeddings = 131072;
  spec.params.factor = 32.0;
  for (int i = 0; i < 48; ++i) {
    spec.params.short_factor.push_back(1.0 + 0.01 * i);
    spec.params.long_factor.push_back(1.0 + 1.5 * i);
  }
  return spec;
}

TEST_F(GpuEngineTest, LongRopeSelectsTheTableFromTheCallsLargestPosition) {
  const RopeSpec spec = longrope_spec();
  const GpuEngine engine(spec, device);
  // max + 1 = 4096 (= OMP): short factors; max + 1 = 4097: long; then short again (slots rotate).
  for (const std::int64_t max : {4095, 4096, 100, 60000, 4095}) {
    SCOPED_TRACE("largest position " + std::to_string(max));
    const Outputs out = run_both(spec, engine, positions_up_to(33, max), static_cast<std::uint64_t>(max));
    EXPECT_TRUE(bits_equal(out.cpu.q, out.gpu.q));
    EXPECT_TRUE(bits_equal(out.cpu.k, out.gpu.k));
  }
}

TEST_F(GpuEngineTest, DynamicNtkMatchesTheCpuBelowAndAboveTheThreshold) {
  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = 128;
  spec.scaling = Scaling::dynamic;
  spec.params.factor = 4.0;
  spec.params.max_position_embeddings = 2048;
  for (const DType dtype : {DType::bf16, DType::f32}) {
    const GpuEngine engine(spec, device);
    // Below the threshold the uploaded default table is used: bit-exact.
    {
      const Outputs out = run_both(spec, engine, positions_up_to(17, 2047), 5, dtype);
      EXPECT_TRUE(bits_equal(out.cpu.q, out.gpu.q)) << to_string(dtype);
      EXPECT_TRUE(bits_equal(out.cpu.k, out.gpu.k)) << to_string(dtype);
    }
    // Above it the pre-pass grows theta on the device. Stated tolerance: an inv_freq entry may
    // differ from the CPU's by 1 float32 ulp (device double pow vs glibc powf), which moves the
    // angle by at most p * 2^-23 rad and an output by at most sqrt(2) * M * p * 2^-23 (M = the
    // head's largest |value|), plus 1 ulp of rounding.
    const std::int64_t max = 8191;
    const Outputs out = run_both(spec, engine, positions_up_to(17, max), 6, dtype);
    const double mantissa = dtype == DType::f32 ? 24.0 : (dtype == DType::f16 ? 11.0 : 8.0);
    const double ulps = 1.0 + std::sqrt(2.0) * static_cast<double>(max) * std::ldexp(1.0, -23) * std::ldexp(1.0, static_cast<int>(mantissa));
    EXPECT_TRUE(near64(expected_from(out.cpu.q), out.gpu.q, dtype, ulps)) << to_string(dtype) << " tolerance " << ulps;
    EXPECT_TRUE(near64(expected_from(out.cpu.k), out.gpu.k, dtype, ulps)) << to_string(dtype) << " tolerance " << ulps;

    // And the table really changed: the default-theta rotation of the same call differs.
    RopeSpec plain = spec;
    plain.scaling = Scaling::none;
    const GpuEngine plain_engine(plain, device);
    const Outputs base = run_both(plain, plain_engine, positions_up_to(17, max), 6, dtype);
    EXPECT_FALSE(bits_equal(base.gpu.q, out.gpu.q)) << "dynamic NTK above the threshold rotated like the default scheme";
  }
}

// Every row of the scheme registry (src/core/schemes.cpp) against the CPU engine, with a call below
// and above a call-dependent threshold: a new scheme is checked here with no new test code. Fixed
// and short/long tables are bit-exact in the hf modes; a growing table (dynamic NTK) computed on
// the device may differ by the stated tolerance of DynamicNtkMatchesTheCpuBelowAndAboveTheThreshold;
// accurate is compared within accurate_ulps.
TEST_F(GpuEngineTest, EveryRegistrySchemeMatchesTheCpuEngine) {
  std::uint64_t seed = 900;
  for (const detail::SchemeRow& row : detail::scheme_rows()) {
    for (const Numerics numerics : all_numerics) {
      const RopeSpec spec = exact_arithmetic(scheme_spec(row.scaling, 128, 0, 0, Pairing::half_split, numerics));
      const GpuEngine engine(spec, device);
      const std::int64_t threshold = row.threshold != nullptr ? row.threshold(spec.params) : 0;
      std::vector<std::int64_t> largest = {threshold > 0 ? threshold - 1 : 70000};
      if (threshold > 0) largest.push_back(2 * threshold + 5);
      for (const std::int64_t max : largest) {
        for (const DType dtype : {DType::bf16, DType::f32}) {
          SCOPED_TRACE(case_name(spec, dtype) + " largest position " + std::to_string(max));
          const Outputs out = run_both(spec, engine, positions_up_to(17, max), ++seed, dtype);
          const bool grown = row.call_table == detail::CallTable::grows && max + 1 > threshold;
          if (numerics != Numerics::accurate && !grown) {
            EXPECT_TRUE(bits_equal(out.cpu.q, out.gpu.q));
            EXPECT_TRUE(bits_equal(out.cpu.k, out.gpu.k));
            continue;
          }
          double ulps = numerics == Numerics::accurate ? accurate_ulps(dtype) : 0.0;
          if (grown) {
            ulps += 1.0 + std::sqrt(2.0) * static_cast<double>(max) * std::ldexp(1.0, -23) *
                              std::ldexp(1.0, significand_bits(dtype));
          }
          EXPECT_TRUE(near64(expected_from(out.cpu.q), out.gpu.q, dtype, ulps)) << "tolerance " << ulps;
          EXPECT_TRUE(near64(expected_from(out.cpu.k), out.gpu.k, dtype, ulps)) << "tolerance " << ulps;
        }
      }
    }
  }
}

// ---- position faults --------------------------------------------------------------------------

/// The message of the posenc::Error `fn` throws, checking its kind ("" and a failure otherwise).
std::string error_of(const std::function<void()>& fn, ErrorKind kind) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << "message: " << e.what();
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-posenc exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

TEST_F(GpuEngineTest, OutOfRangePositionsAreRotatedRecordedAndReportedByCheck) {
  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = 64;
  spec.position_limit = 4096;
  const GpuEngine engine(spec, device);

  std::vector<std::int64_t> values(64);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<std::int64_t>(i) * 50;
  values[17] = 5000;   // first bad token
  values[40] = 4096;   // the limit itself is outside
  values[50] = 99999;

  // Memory-safe and rotated by the value's angle: equal to a CPU engine whose limit admits them
  // (negative values, which no CPU limit admits, are checked for reporting below).
  RopeSpec wide = spec;
  wide.position_limit = std::int64_t{1} << 40;
  const HostPositions positions(values, IndexType::i32);
  QkLayout input = make_layout(DType::bf16, 64, 4, 2, 64, LayoutKind::separate, 0);
  fill_random(input.q, 11);
  fill_random(input.k, 12);
  QkLayout cpu = clone(input);
  RopeArgs cpu_args;
  cpu_args.q = cpu.q;
  cpu_args.k = cpu.k;
  cpu_args.positions = positions.view();
  CpuEngine(wide).apply(cpu_args);

  DeviceMirror d(device, input.buffer, ref());
  const DevicePositions d_positions(device, positions, ref());
  RopeArgs args;
  args.q = d.map(input.q);
  args.k = d.map(input.k);
  args.positions = d_positions.view;
  ASSERT_NO_THROW(engine.apply(args, ref()));
  const std::string message = error_of([&] { engine.check(ref()); }, ErrorKind::out_of_range);
  EXPECT_NE(message.find("of token 17 is"), std::string::npos) << message;
  EXPECT_NE(message.find("5000"), std::string::npos) << message;
  EXPECT_NE(message.find("4096"), std::string::npos) << message;
  QkLayout result = clone(input);
  d.download(result.buffer, ref());
  EXPECT_TRUE(bits_equal(cpu.q, result.q));
  EXPECT_TRUE(bits_equal(cpu.k, result.k));

  // check() cleared the record.
  EXPECT_NO_THROW(engine.check(ref()));

  // Two calls before a check: the smallest token index of either is reported.
  std::vector<std::int64_t> later = values;
  later[17] = 17;
  later[5] = -7;
  const HostPositions later_positions(later, IndexType::i32);
  const DevicePositions d_later(device, later_positions, ref());
  engine.apply(args, ref());
  args.positions = d_later.view;
  engine.apply(args, ref());
  const std::string second = error_of([&] { engine.check(ref()); }, ErrorKind::out_of_range);
  EXPECT_NE(second.find("of token 5 is"), std::string::npos) << second;
  EXPECT_NE(second.find("-7"), std::string::npos) << second;

  // int64 values beyond the int32 range are reported as a bound.
  std::vector<std::int64_t> huge(64, 1);
  huge[9] = std::int64_t{1} << 40;
  const HostPositions huge_positions(huge, IndexType::i64);
  const DevicePositions d_huge(device, huge_positions, ref());
  args.positions = d_huge.view;
  engine.apply(args, ref());
  const std::string third = error_of([&] { engine.check(ref()); }, ErrorKind::out_of_range);
  EXPECT_NE(third.find("of token 9 is"), std::string::npos) << third;
  EXPECT_NE(third.find("2147483647 or more"), std::string::npos) << third;
}

// ---- bad input ----------------------------------------------------------------------------------

TEST_F(GpuEngineTest, BadInputsThrowBeforeAnyDeviceWrite) {
  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = 128;
  const GpuEngine engine(spec, device);
  const std::int64_t tokens = 16;
  QkLayout input = make_layout(DType::bf16, tokens, 8, 2, 128, LayoutKind::fused, 8);
  fill_random(input.q, 21);
  fill_random(input.k, 22);
  DeviceMirror d(device, input.buffer, ref());
  const HostPositions positions(random_positions(tokens, 4096, 3), IndexType::i64);
  const DevicePositions d_positions(device, positions, ref());
  RopeArgs good;
  good.q = d.map(input.q);
  good.k = d.map(input.k);
  good.positions = d_positions.view;

  struct Bad {
    const char* what;
    ErrorKind kind;
    const char* says;
    std::function<void(RopeArgs&)> mutate;
  };
  const std::vector<Bad> bad = {
      {"head_dim differs from the spec", ErrorKind::invalid_argument, "head_dim",
       [](RopeArgs& a) { a.q.head_dim = 64; }},
      {"tokens differ from positions.count", ErrorKind::invalid_argument, "tokens",
       [](RopeArgs& a) { a.k.tokens += 1; }},
      {"K dtype differs from Q", ErrorKind::invalid_argument, "dtype", [](RopeArgs& a) { a.k.dtype = DType::f16; }},
      {"no positions", ErrorKind::invalid_argument, "positions", [](RopeArgs& a) { a.positions.data = nullptr; }},
      {"zero tokens", ErrorKind::invalid_argument, "positions.count",
       [](RopeArgs& a) { a.positions.count = 0; }},
      {"Q overlaps itself", ErrorKind::invalid_argument, "overlaps itself", [](RopeArgs& a) { a.q.head_stride = 0; }},
      {"Q and K share memory", ErrorKind::invalid_argument, "must not share memory",
       [](RopeArgs& a) { a.k.data = static_cast<char*>(a.q.data) + 2; }},
      {"negative stride", ErrorKind::invalid_argument, "negative", [](RopeArgs& a) { a.q.token_stride = -1; }},
      {"source shape differs", ErrorKind::invalid_argument, "shape",
       [](RopeArgs& a) {
         a.q_src = ConstTensorView(a.k);
       }},
      {"absent Q", ErrorKind::invalid_argument, "q", [](RopeArgs& a) { a.q.data = nullptr; }},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.what);
    RopeArgs args = good;
    b.mutate(args);
    const std::string message = error_of([&] { engine.apply(args, ref()); }, b.kind);
    EXPECT_NE(message.find(b.says), std::string::npos) << message;
  }
  // Nothing reached the device.
  HostBuffer after(input.buffer.size());
  d.download(after, ref());
  EXPECT_TRUE(bytes_equal(input.buffer.snapshot(), after));
  EXPECT_NO_THROW(engine.check(ref()));

  // A spec the engine cannot be built from, and a moved-from engine.
  RopeSpec odd = spec;
  odd.rotary_dim = 63;
  error_of([&] { GpuEngine broken(odd, device); }, ErrorKind::invalid_argument);
  GpuEngine first(spec, device);
  GpuEngine second = std::move(first);
  error_of([&] { first.apply(good, ref()); }, ErrorKind::invalid_argument);  // NOLINT(bugprone-use-after-move)
  EXPECT_NO_THROW(second.apply(good, ref()));
  EXPECT_NO_THROW(second.check(ref()));
}

// ---- threads, streams, leaks ----------------------------------------------------------------------

TEST_F(GpuEngineTest, SeveralThreadsOnSeveralStreamsDoNotInterfere) {
  struct Job {
    DType dtype;
    Pairing pairing;
    Numerics numerics;
    std::int64_t head_dim;
    std::int64_t rotary;
  };
  const std::vector<Job> jobs = {
      {DType::bf16, Pairing::half_split, Numerics::hf_compatible, 128, 128},
      {DType::f16, Pairing::interleaved, Numerics::hf_fp32_apply, 64, 32},
      {DType::f32, Pairing::interleaved_to_half, Numerics::hf_compatible, 96, 64},
      {DType::bf16, Pairing::interleaved, Numerics::hf_compatible, 256, 128},
  };
  std::vector<std::string> failures(jobs.size());
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    threads.emplace_back([&, j] {
      try {
        const Job& job = jobs[j];
        RopeSpec spec;
        spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
        spec.head_dim = job.head_dim;
        spec.rotary_dim = job.rotary;
        spec.pairing = job.pairing;
        spec.numerics = job.numerics;
        const std::int64_t tokens = 300 + static_cast<std::int64_t>(j) * 77;
        QkLayout input = make_layout(job.dtype, tokens, 8, 2, job.head_dim, LayoutKind::fused, 8);
        fill_random(input.q, 100 + j);
        fill_random(input.k, 200 + j);
        const HostPositions positions(random_positions(tokens, 1 << 16, 300 + j), IndexType::i32);
        QkLayout cpu = make_layout(job.dtype, tokens, 8, 2, job.head_dim, LayoutKind::separate, 0);
        RopeArgs cpu_args;
        cpu_args.q = cpu.q;
        cpu_args.k = cpu.k;
        cpu_args.q_src = input.q;
        cpu_args.k_src = input.k;
        cpu_args.positions = positions.view();
        CpuEngine(spec).apply(cpu_args);

        gpu::Stream own(device);
        const gpu::StreamRef lane = own.ref();
        const GpuEngine engine(spec, device);
        DeviceMirror d_in(device, input.buffer, lane);
        QkLayout out = make_layout(job.dtype, tokens, 8, 2, job.head_dim, LayoutKind::separate, 0);
        DeviceMirror d_out(device, out.buffer, lane);
        const DevicePositions d_positions(device, positions, lane);
        RopeArgs args;
        args.q = d_out.map(out.q);
        args.k = d_out.map(out.k);
        args.q_src = d_in.map(ConstTensorView(input.q));
        args.k_src = d_in.map(ConstTensorView(input.k));
        args.positions = d_positions.view;
        ready.fetch_add(1);
        while (ready.load() < static_cast<int>(jobs.size())) std::this_thread::yield();
        for (int r = 0; r < 50; ++r) engine.apply(args, lane);  // same output every time
        engine.check(lane);
        d_out.download(out.buffer, lane);
        const auto q_ok = bits_equal(cpu.q, out.q);
        const auto k_ok = bits_equal(cpu.k, out.k);
        if (!q_ok) failures[j] += std::string("q: ") + q_ok.message();
        if (!k_ok) failures[j] += std::string(" k: ") + k_ok.message();
      } catch (const std::exception& e) {
        failures[j] = std::string("threw: ") + e.what();
        ready.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (std::size_t j = 0; j < jobs.size(); ++j) EXPECT_EQ(failures[j], "") << "job " << j;
}

TEST_F(GpuEngineTest, TenThousandCallsAllocateNothing) {
  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = 128;
  spec.scaling = Scaling::longrope;  // the pre-pass path too
  spec.params = longrope_spec().params;
  spec.head_dim = 96;
  const GpuEngine engine(spec, device);
  QkLayout input = make_layout(DType::bf16, 8, 8, 2, 96, LayoutKind::separate, 0);
  fill_random(input.q, 1);
  fill_random(input.k, 2);
  DeviceMirror d(device, input.buffer, ref());
  const HostPositions positions(random_positions(8, 8192, 4), IndexType::i64);
  const DevicePositions d_positions(device, positions, ref());
  RopeArgs args;
  args.q = d.map(input.q);
  args.k = d.map(input.k);
  args.positions = d_positions.view;

  gpu::MemoryPool pool(device);
  pool.release(pool.acquire(1 << 20));  // the pool's one vendor allocation happens here
  engine.apply(args, ref());             // and any lazy module loading here
  engine.check(ref());
  const std::int64_t free_before = device.memory_info().free_bytes;
  for (int i = 0; i < 10000; ++i) {
    gpu::DeviceBuffer scratch = pool.acquire((1 << 20) - i % 1000);
    engine.apply(args, ref());
    ref().synchronize();  // the scratch block may be reused only once no work uses it
    pool.release(std::move(scratch));
  }
  engine.check(ref());
  EXPECT_EQ(device.memory_info().free_bytes, free_before);
  EXPECT_EQ(pool.allocation_count(), 1);
}

}  // namespace
}  // namespace posenc::test

// GPU engine: which arithmetic the hf numerics follow (RopeSpec::hf_arithmetic): the vendor's float cos/sin for torch_cuda, correctly rounded for exact, torch_cpu refused.
//
// The engine's cos/sin are read back through the rotation itself: in float32 with attention
// factor 1, the pair (a, b) = (1, 0) becomes (c, s) exactly under hf_compatible (1*c = c, 0*s = 0,
// c - 0 = c). The bit-for-bit comparison with torch on CUDA is the sweep
// (scripts/golden/sweep_bitexact.py --device cuda); these tests pin what can be checked without
// torch: torch_cuda's values are within the CUDA math library's documented 2-ulp bound of the
// exact ones and differ from them somewhere (so the vendor path really runs), exact's equal the
// correctly rounded values, and the init-time table is torch's CPU table.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gpu_support.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"
#include "posenc/rope.hpp"

namespace posenc::test {
namespace {

using gpu::GpuEngine;

class GpuArithmetic : public GpuTest {};

/// Distance in float32 ulps (same sign, finite).
std::int64_t ulps(float x, float y) {
  std::int32_t a;
  std::int32_t b;
  std::memcpy(&a, &x, 4);
  std::memcpy(&b, &y, 4);
  if (a < 0) a = INT32_MIN - a;
  if (b < 0) b = INT32_MIN - b;
  return std::llabs(static_cast<std::int64_t>(a) - b);
}

struct Readback {
  std::vector<float> c;  ///< [token][pair]
  std::vector<float> s;
  std::vector<float> inv_freq;
};

/// The engine's (c, s) for every (token, pair), through a float32 rotation of unit pairs.
Readback read_cos_sin(const gpu::Device& device, gpu::StreamRef stream, const RopeSpec& spec,
                      const std::vector<std::int64_t>& positions) {
  const std::int64_t tokens = static_cast<std::int64_t>(positions.size());
  const std::int64_t d = spec.head_dim;
  const std::int64_t half = spec.rotary() / 2;
  std::vector<float> q(static_cast<std::size_t>(tokens * d), 0.0f);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t i = 0; i < half; ++i) {
      const PairPlaces places = pair_places(spec.pairing, half, i);
      q[static_cast<std::size_t>(t * d + spec.rotary_offset + places.read_a)] = 1.0f;
    }
  }
  const std::int64_t q_bytes = tokens * d * 4;
  gpu::DeviceBuffer d_q(device, q_bytes);
  gpu::DeviceBuffer d_pos(device, tokens * 8);
  d_q.upload(q.data(), q_bytes, stream);
  d_pos.upload(positions.data(), tokens * 8, stream);
  const GpuEngine engine(spec, device);
  RopeArgs args;
  args.q = TensorView::contiguous(d_q.data(), DType::f32, tokens, 1, d);
  args.positions = PositionsView{d_pos.data(), IndexType::i64, tokens};
  engine.apply(args, stream);
  d_q.download(q.data(), q_bytes, stream);
  stream.synchronize();
  engine.check(stream);

  Readback r;
  r.inv_freq = engine.frequencies().inv_freq;
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t i = 0; i < half; ++i) {
      const PairPlaces places = pair_places(spec.pairing, half, i);
      r.c.push_back(q[static_cast<std::size_t>(t * d + spec.rotary_offset + places.write_a)]);
      r.s.push_back(q[static_cast<std::size_t>(t * d + spec.rotary_offset + places.write_b)]);
    }
  }
  return r;
}

std::vector<std::int64_t> sweep_positions(std::int64_t count, std::uint64_t seed) {
  std::vector<std::int64_t> p;
  for (std::int64_t i = 0; i < 64; ++i) p.push_back(i);
  p.push_back((std::int64_t{1} << 20) - 1);
  p.push_back(std::int64_t{1} << 24);
  p.push_back((std::int64_t{1} << 24) + 1);  // rounds to 2^24 in float32, as torch's .float()
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> any(0, (std::int64_t{1} << 20) - 1);
  while (static_cast<std::int64_t>(p.size()) < count) p.push_back(any(rng));
  return p;
}

RopeSpec unit_spec(HfArithmetic arithmetic) {
  RopeSpec spec;
  spec.head_dim = 128;
  spec.theta = 1e6;
  spec.numerics = Numerics::hf_compatible;
  spec.hf_arithmetic = arithmetic;
  return spec;
}

/// fl32(inv_freq * fl32(p)) evaluated in double, as torch forms the angle.
double angle_of(float inv_freq, std::int64_t p) {
  const auto product = static_cast<float>(static_cast<double>(inv_freq) * static_cast<double>(static_cast<float>(p)));
  return static_cast<double>(product);
}

TEST_F(GpuArithmetic, TorchCudaUsesTheVendorsFloatTrig) {
  const std::vector<std::int64_t> positions = sweep_positions(4096, 11);
  for (const HfArithmetic a : {HfArithmetic::engine, HfArithmetic::torch_cuda}) {
    const RopeSpec spec = unit_spec(a);
    const Readback r = read_cos_sin(device, ref(), spec, positions);
    const std::int64_t half = spec.rotary() / 2;
    std::int64_t differing = 0;
    std::int64_t worst = 0;
    for (std::size_t t = 0; t < positions.size(); ++t) {
      for (std::int64_t i = 0; i < half; ++i) {
        const std::size_t at = t * static_cast<std::size_t>(half) + static_cast<std::size_t>(i);
        const double angle = angle_of(r.inv_freq[static_cast<std::size_t>(i)], positions[t]);
        const auto c = static_cast<float>(std::cos(angle));
        const auto s = static_cast<float>(std::sin(angle));
        const std::int64_t e = std::max(ulps(r.c[at], c), ulps(r.s[at], s));
        worst = std::max(worst, e);
        differing += e != 0 ? 1 : 0;
      }
    }
    // CUDA's cosf/sinf: at most 2 ulps (CUDA C++ Programming Guide, single-precision functions).
    EXPECT_LE(worst, 2) << to_string(a);
    EXPECT_GT(differing, 0) << to_string(a) << ": every value correctly rounded: the vendor trig did not run";
  }
}

TEST_F(GpuArithmetic, ExactIsCorrectlyRounded) {
  const std::vector<std::int64_t> positions = sweep_positions(2048, 12);
  const RopeSpec spec = unit_spec(HfArithmetic::exact);
  const Readback r = read_cos_sin(device, ref(), spec, positions);
  const std::int64_t half = spec.rotary() / 2;
  for (std::size_t t = 0; t < positions.size(); ++t) {
    for (std::int64_t i = 0; i < half; ++i) {
      const std::size_t at = t * static_cast<std::size_t>(half) + static_cast<std::size_t>(i);
      const double angle = angle_of(r.inv_freq[static_cast<std::size_t>(i)], positions[t]);
      ASSERT_EQ(r.c[at], static_cast<float>(std::cos(angle))) << "position " << positions[t] << " pair " << i;
      ASSERT_EQ(r.s[at], static_cast<float>(std::sin(angle))) << "position " << positions[t] << " pair " << i;
    }
  }
}

// transformers 5 builds the init-time table on the CPU even for a model on the GPU, so the GPU
// engine's torch_cuda table is the torch_cpu one, and exact's the exact one.
TEST_F(GpuArithmetic, InitTableIsTorchsCpuTable) {
  for (const double theta : {1e4, 5e5, 1e6, 1e8}) {
    for (const std::int64_t dim : {64, 80, 96, 128, 160, 256}) {
      RopeSpec spec = unit_spec(HfArithmetic::torch_cuda);
      spec.head_dim = dim;
      spec.theta = theta;
      RopeSpec cpu = spec;
      cpu.hf_arithmetic = HfArithmetic::torch_cpu;
      RopeSpec exact = spec;
      exact.hf_arithmetic = HfArithmetic::exact;
      EXPECT_EQ(GpuEngine(spec, device).frequencies().inv_freq, compute_frequencies(cpu).inv_freq)
          << "theta " << theta << " dim " << dim;
      EXPECT_EQ(GpuEngine(exact, device).frequencies().inv_freq, compute_frequencies(exact).inv_freq)
          << "theta " << theta << " dim " << dim;
    }
  }
}

TEST_F(GpuArithmetic, TorchCpuIsRefusedWithTheReason) {
  RopeSpec spec = unit_spec(HfArithmetic::torch_cpu);
  try {
    const GpuEngine engine(spec, device);
    FAIL() << "torch_cpu accepted by the GPU engine";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::unsupported);
    EXPECT_NE(std::string(e.what()).find("torch_cpu"), std::string::npos) << e.what();
  }
  // accurate numerics do not read the field.
  spec.numerics = Numerics::accurate;
  EXPECT_NO_THROW(GpuEngine(spec, device));
}

// Dynamic NTK's grown table and LongRoPE's long table are computed on the GPU under torch_cuda
// (the float32 tensor ops of transformers on CUDA, with powf): close to the exact table (powf's
// documented bound is a few ulps). Read back through the rotation at position 1: (c, s) =
// (cos, sin) of the call's inv_freq (the call reaches past the threshold with its second token);
// sin is the sensitive one there (sin(x) ~ x). Whether an entry differs from the exact table is
// not a property to require: the bit-for-bit check against torch on CUDA is the sweep's.
TEST_F(GpuArithmetic, CallTimeTablesFollowTheGpu) {
  RopeSpec dynamic = unit_spec(HfArithmetic::torch_cuda);
  dynamic.theta = 10000.0;
  dynamic.scaling = Scaling::dynamic;
  dynamic.params.factor = 2.0;
  dynamic.params.max_position_embeddings = 4096;
  RopeSpec longrope = unit_spec(HfArithmetic::torch_cuda);
  longrope.head_dim = 96;
  longrope.theta = 10000.0;
  longrope.scaling = Scaling::longrope;
  longrope.params.original_max_position_embeddings = 4096;
  longrope.params.max_position_embeddings = 131072;
  longrope.attention_factor = 1.0;  // c and s read back unscaled
  for (std::int64_t i = 0; i < 48; ++i) {
    longrope.params.short_factor.push_back(1.0 + 0.01 * static_cast<double>(i));
    longrope.params.long_factor.push_back(1.0 + 0.37 * static_cast<double>(i));
  }
  for (const RopeSpec& spec : {dynamic, longrope}) {
    const std::int64_t far = 9000;
    const Readback vendor = read_cos_sin(device, ref(), spec, {1, far});
    RopeSpec exact_spec = spec;
    exact_spec.hf_arithmetic = HfArithmetic::exact;
    const Readback exact = read_cos_sin(device, ref(), exact_spec, {1, far});
    const FrequencyTable call_table = compute_frequencies(exact_spec, far + 1);
    for (std::int64_t i = 0; i < spec.rotary() / 2; ++i) {
      const auto at = static_cast<std::size_t>(i);
      const double f = static_cast<double>(call_table.inv_freq[at]);
      EXPECT_EQ(exact.c[at], static_cast<float>(std::cos(f))) << to_string(spec.scaling) << " pair " << i;
      EXPECT_EQ(exact.s[at], static_cast<float>(std::sin(f))) << to_string(spec.scaling) << " pair " << i;
      // Vendor: inv_freq within 8 float32 ulps of the exact one, then cosf/sinf within 2 ulps.
      const double f_ulp = std::nextafter(call_table.inv_freq[at], 1e30f) - call_table.inv_freq[at];
      const double c_ulp = std::nextafter(exact.c[at], 2.0f) - exact.c[at];
      const double s_ulp = std::nextafter(exact.s[at], 2.0f) - exact.s[at];
      EXPECT_LE(std::abs(static_cast<double>(vendor.c[at]) - std::cos(f)), std::abs(std::sin(f)) * 8.0 * f_ulp + 3.0 * c_ulp)
          << to_string(spec.scaling) << " pair " << i;
      EXPECT_LE(std::abs(static_cast<double>(vendor.s[at]) - std::sin(f)), std::abs(std::cos(f)) * 8.0 * f_ulp + 3.0 * s_ulp)
          << to_string(spec.scaling) << " pair " << i;
    }
  }
}

}  // namespace
}  // namespace posenc::test

// GPU multi-axis rotation (M-RoPE contiguous and interleaved, ChatGLM-6B 2-D) against the CPU engine, bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "gpu_support.hpp"
#include "posenc/cpu.hpp"
#include "posenc/gpu.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"

namespace posenc::test {
namespace {

struct AxisCase {
  std::string name;
  Pairing pairing;
  std::int64_t head_dim;
  std::int64_t rotary_dim;
  std::vector<std::int64_t> sections;
  bool interleaved_sections;
  DType dtype;
  Numerics numerics;
  std::int64_t tokens;
};

/// gtest prints the parameter in test listings: the case name, not its bytes.
void PrintTo(const AxisCase& c, std::ostream* os) { *os << c.name; }

std::vector<AxisCase> cases() {
  std::vector<AxisCase> out;
  const DType dtypes[] = {DType::bf16, DType::f16, DType::f32};
  const Numerics numerics[] = {Numerics::hf_compatible, Numerics::accurate};
  for (DType t : dtypes) {
    for (Numerics n : numerics) {
      const std::string suffix = std::string("_") + to_string(t) + "_" + to_string(n);
      // Qwen2-VL: full rotary, half-split, sections [16, 24, 24].
      out.push_back({"qwen2vl" + suffix, Pairing::half_split, 128, 128, {16, 24, 24}, false, t, n, 777});
      // GLM-4.1V: 64 of 128 dims, interleaved, sections [8, 12, 12].
      out.push_back({"glm4v" + suffix, Pairing::interleaved, 128, 64, {8, 12, 12}, false, t, n, 301});
      // Qwen3-VL: interleaved sections [24, 20, 20].
      out.push_back({"qwen3vl" + suffix, Pairing::half_split, 128, 128, {24, 20, 20}, true, t, n, 65});
      // ChatGLM-6B 2-D RoPE: head 128, two halves of 64 dims, position and block streams.
      out.push_back({"chatglm6b" + suffix, Pairing::half_split_2d, 128, 128, {}, false, t, n, 129});
    }
  }
  return out;
}

class GpuMultiAxis : public GpuTest, public ::testing::WithParamInterface<AxisCase> {};

TEST_P(GpuMultiAxis, MatchesCpuEngineBitForBit) {
  const AxisCase& c = GetParam();
  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = c.head_dim;
  spec.rotary_dim = c.rotary_dim;
  spec.pairing = c.pairing;
  spec.theta = 10000.0;
  spec.mrope_section = c.sections;
  spec.mrope_interleaved = c.interleaved_sections;
  spec.numerics = c.numerics;
  const std::int32_t streams = spec.position_streams();

  // Positions: stream-major, each stream different so every section boundary matters.
  std::vector<std::int64_t> pos(static_cast<std::size_t>(streams * c.tokens));
  for (std::int32_t s = 0; s < streams; ++s) {
    const std::vector<std::int64_t> r = random_positions(c.tokens, 70000, 1000 + static_cast<std::uint64_t>(s));
    std::copy(r.begin(), r.end(), pos.begin() + s * c.tokens);
  }
  PositionsView host_pos{pos.data(), IndexType::i64, c.tokens, streams, c.tokens};

  QkLayout cpu = make_layout(c.dtype, c.tokens, 4, 2, c.head_dim, LayoutKind::fused, 0);
  fill_random_parallel(cpu.q, 11);
  fill_random_parallel(cpu.k, 12);
  QkLayout gpu_side = clone(cpu);

  RopeArgs args;
  args.q = cpu.q;
  args.k = cpu.k;
  args.positions = host_pos;
  CpuEngine(spec).apply(args);

  DeviceMirror mirror(device, gpu_side.buffer, ref());
  gpu::DeviceBuffer dpos(device, static_cast<std::int64_t>(pos.size() * sizeof(std::int64_t)));
  dpos.upload(pos.data(), dpos.size_bytes(), ref());
  RopeArgs dargs;
  dargs.q = mirror.map(gpu_side.q);
  dargs.k = mirror.map(gpu_side.k);
  dargs.positions = {dpos.data(), IndexType::i64, c.tokens, streams, c.tokens};
  const gpu::GpuEngine engine(spec, device);
  engine.apply(dargs, ref());
  engine.check(ref());
  mirror.download(gpu_side.buffer, ref());

  ASSERT_EQ(cpu.buffer.size(), gpu_side.buffer.size());
  const bool same = std::memcmp(cpu.buffer.data(), gpu_side.buffer.data(),
                                static_cast<std::size_t>(cpu.buffer.size())) == 0;
  if (!same) {
    for (std::int64_t t = 0; t < c.tokens; ++t) {
      for (std::int64_t h = 0; h < 4; ++h) {
        for (std::int64_t d = 0; d < c.head_dim; ++d) {
          const std::uint32_t a = load_bits(cpu.q, t, h, d), b = load_bits(gpu_side.q, t, h, d);
          ASSERT_EQ(a, b) << c.name << ": Q differs at token " << t << ", head " << h << ", dim " << d;
        }
      }
    }
  }
  EXPECT_TRUE(same) << c.name << ": GPU bytes differ from the CPU engine's";
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuMultiAxis, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<AxisCase>& param_info) {
                           std::string n = param_info.param.name;
                           for (char& ch : n) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace posenc::test

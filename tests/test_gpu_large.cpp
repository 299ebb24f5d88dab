// GPU large-tensor test: Q with more than 2^31 elements (64-bit indexing), sampled tokens checked against the CPU engine.
//
// Q is bf16 [2^17 + 1, 128, 128] = 2^31 + 16384 elements (4 GiB), K [2^17 + 1, 8, 128]. The data is a
// 1024-token random block repeated along the tokens (uploaded block by block), so any token's input
// is known on the host without a 4 GiB host copy; positions are the token index.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "gpu_support.hpp"
#include "posenc/cpu.hpp"
#include "posenc/gpu.hpp"
#include "support/compare.hpp"

namespace posenc::test {
namespace {

class GpuLarge : public GpuTest {};

TEST_F(GpuLarge, QueryAbove2To31ElementsMatchesTheCpuOnSampledTokens) {
  constexpr std::int64_t tokens = (std::int64_t{1} << 17) + 1;
  constexpr std::int64_t q_heads = 128;
  constexpr std::int64_t k_heads = 8;
  constexpr std::int64_t head_dim = 128;
  constexpr std::int64_t block = 1024;
  constexpr DType dtype = DType::bf16;
  static_assert(tokens * q_heads * head_dim > (std::int64_t{1} << 31));
  const std::int64_t q_row = q_heads * head_dim * size_of(dtype);
  const std::int64_t k_row = k_heads * head_dim * size_of(dtype);
  if (device.memory_info().free_bytes < tokens * (q_row + k_row) + (std::int64_t{1} << 30)) {
    GTEST_SKIP() << "needs " << tokens * (q_row + k_row) << " bytes of free device memory";
  }

  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = head_dim;
  spec.theta = 500000.0;
  const gpu::GpuEngine engine(spec, device);

  // One random block of `block` tokens, repeated.
  HostTensor q_block(dtype, block, q_heads, head_dim);
  HostTensor k_block(dtype, block, k_heads, head_dim);
  fill_random_parallel(q_block.view, 71);
  fill_random_parallel(k_block.view, 72);
  gpu::DeviceBuffer q(device, tokens * q_row);
  gpu::DeviceBuffer k(device, tokens * k_row);
  for (std::int64_t t = 0; t < tokens; t += block) {
    const std::int64_t n = std::min(block, tokens - t);
    q.upload(q_block.buffer.data(), n * q_row, ref(), t * q_row);
    k.upload(k_block.buffer.data(), n * k_row, ref(), t * k_row);
  }
  std::vector<std::int64_t> values(static_cast<std::size_t>(tokens));
  for (std::int64_t t = 0; t < tokens; ++t) values[static_cast<std::size_t>(t)] = t;
  const HostPositions positions(values, IndexType::i64);
  const DevicePositions d_positions(device, positions, ref());
  ref().synchronize();

  RopeArgs args;
  args.q = TensorView::contiguous(q.data(), dtype, tokens, q_heads, head_dim);
  args.k = TensorView::contiguous(k.data(), dtype, tokens, k_heads, head_dim);
  args.positions = d_positions.view;
  ASSERT_NO_THROW(engine.apply(args, ref()));
  ASSERT_NO_THROW(engine.check(ref()));

  // Sampled tokens, including both sides of element 2^31 and the last token.
  const std::vector<std::int64_t> sample = {0, 1, 1023, 1024, 65535, 65536, 131071, 131072};
  const auto count = static_cast<std::int64_t>(sample.size());
  HostTensor q_in(dtype, count, q_heads, head_dim);
  HostTensor k_in(dtype, count, k_heads, head_dim);
  HostTensor q_gpu(dtype, count, q_heads, head_dim);
  HostTensor k_gpu(dtype, count, k_heads, head_dim);
  std::vector<std::int64_t> sample_positions;
  for (std::int64_t i = 0; i < count; ++i) {
    const std::int64_t t = sample[static_cast<std::size_t>(i)];
    std::memcpy(q_in.buffer.data() + i * q_row, q_block.buffer.data() + (t % block) * q_row, q_row);
    std::memcpy(k_in.buffer.data() + i * k_row, k_block.buffer.data() + (t % block) * k_row, k_row);
    q.download(q_gpu.buffer.data() + i * q_row, q_row, ref(), t * q_row);
    k.download(k_gpu.buffer.data() + i * k_row, k_row, ref(), t * k_row);
    sample_positions.push_back(t);
  }
  ref().synchronize();
  const HostPositions host_sample(sample_positions, IndexType::i64);
  RopeArgs cpu_args;
  cpu_args.q = q_in.view;
  cpu_args.k = k_in.view;
  cpu_args.positions = host_sample.view();
  CpuEngine(spec).apply(cpu_args);
  EXPECT_TRUE(bits_equal(q_in.cview(), q_gpu.cview()));
  EXPECT_TRUE(bits_equal(k_in.cview(), k_gpu.cview()));
}

}  // namespace
}  // namespace posenc::test

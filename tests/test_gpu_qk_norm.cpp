// GPU QK norm (RopeSpec::qk_norm): the norm + RoPE kernel against the CPU engine bit for bit in the exact arithmetic (apply and append), torch_cuda within a few dtype ulps of it, the register path against the shared-memory path bit for bit (also with rows pipelined across a block's tokens), shapes that change torch's reduce lanes, and refusals.
//
// The exact arithmetic sums squares in double in index order on both engines, so every dtype,
// pairing, numerics, norm form and width must give the same bytes. torch_cuda follows torch's CUDA
// reduction order and its rsqrtf (core/qk_norm.hpp), which no host code reproduces: here it is
// held to the exact result within a few ulps of the dtype (bound at the test); the Python tests compare it with torch on
// the GPU bit for bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gpu/launch_shape.hpp"
#include "gpu_support.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"
#include "posenc/kv_cache.hpp"
#include "support/host_tensor.hpp"

namespace posenc::test {
namespace {

using gpu::GpuEngine;

class GpuQkNorm : public GpuTest {};

RopeSpec norm_spec(Pairing pairing, Numerics numerics, QkNormKind kind, bool rotary_only, HfArithmetic a,
                   std::int64_t head_dim = 128) {
  RopeSpec spec;
  spec.head_dim = head_dim;
  spec.rotary_dim = pairing == Pairing::half_split_2d ? head_dim : head_dim / 2;
  spec.rotary_offset = pairing == Pairing::half_split_2d ? 0 : head_dim / 4;
  spec.pairing = pairing;
  spec.numerics = numerics;
  spec.theta = 1e6;
  spec.hf_arithmetic = a;
  spec.qk_norm = QkNorm{kind, 1e-6, rotary_only};
  return spec;
}

struct Outputs {
  std::vector<std::byte> q;
  std::vector<std::byte> k;
};

/// Runs `spec` out of place (or in place) on the GPU and on the CPU (exact arithmetic there) over
/// the same random Q, K and weights; returns (gpu, cpu).
std::pair<Outputs, Outputs> run_both(const gpu::Device& device, gpu::StreamRef stream, const RopeSpec& spec,
                                     DType dtype, std::int64_t tokens, std::int64_t q_heads, std::int64_t k_heads,
                                     bool in_place, std::uint64_t seed) {
  const std::int64_t d = spec.head_dim;
  const std::int64_t width = spec.qk_norm_width();
  HostTensor q_in(dtype, tokens, q_heads, d), k_in(dtype, tokens, k_heads, d), weights(dtype, 2, 1, width);
  fill_random(q_in.view, seed);
  fill_random(k_in.view, seed + 1);
  fill_random(weights.view, seed + 2);
  const HostPositions pos(spec, random_positions(tokens, 1 << 17, seed + 3));
  const std::int64_t wbytes = width * size_of(dtype);

  // CPU: exact arithmetic (the GPU's torch_cuda is compared against it with a tolerance).
  RopeSpec cpu_spec = spec;
  cpu_spec.hf_arithmetic = HfArithmetic::exact;
  HostTensor q_cpu(dtype, tokens, q_heads, d), k_cpu(dtype, tokens, k_heads, d);
  RopeArgs cpu_args;
  cpu_args.q = q_cpu.view;
  cpu_args.k = k_cpu.view;
  cpu_args.positions = pos.view();
  const auto* w = static_cast<const std::byte*>(weights.view.data);
  cpu_args.norm = NormWeights{w, w + wbytes};
  if (in_place) {
    std::memcpy(q_cpu.view.data, q_in.view.data, static_cast<std::size_t>(q_in.buffer.size()));
    std::memcpy(k_cpu.view.data, k_in.view.data, static_cast<std::size_t>(k_in.buffer.size()));
  } else {
    cpu_args.q_src = q_in.cview();
    cpu_args.k_src = k_in.cview();
  }
  CpuEngine(cpu_spec).apply(cpu_args);

  // GPU: device mirrors of the same buffers (destinations poisoned, or the input in place).
  HostTensor q_gpu(dtype, tokens, q_heads, d), k_gpu(dtype, tokens, k_heads, d);
  if (in_place) {
    std::memcpy(q_gpu.view.data, q_in.view.data, static_cast<std::size_t>(q_in.buffer.size()));
    std::memcpy(k_gpu.view.data, k_in.view.data, static_cast<std::size_t>(k_in.buffer.size()));
  }
  DeviceMirror dq(device, q_gpu.buffer, stream), dk(device, k_gpu.buffer, stream);
  DeviceMirror dq_in(device, q_in.buffer, stream), dk_in(device, k_in.buffer, stream);
  DeviceMirror dw(device, weights.buffer, stream);
  const DevicePositions dpos(device, pos, stream);
  RopeArgs args;
  args.q = dq.map(q_gpu.view);
  args.k = dk.map(k_gpu.view);
  if (!in_place) {
    args.q_src = dq_in.map(q_in.cview());
    args.k_src = dk_in.map(k_in.cview());
  }
  args.positions = dpos.view;
  const auto* dw_base = static_cast<const std::byte*>(dw.map(weights.view.data));
  args.norm = NormWeights{dw_base, dw_base + wbytes};
  GpuEngine engine(spec, device);
  engine.apply(args, stream);
  engine.check(stream);
  dq.download(q_gpu.buffer, stream);
  dk.download(k_gpu.buffer, stream);
  return {{q_gpu.buffer.snapshot(), k_gpu.buffer.snapshot()}, {q_cpu.buffer.snapshot(), k_cpu.buffer.snapshot()}};
}

TEST_F(GpuQkNorm, ExactArithmeticEqualsCpuEngine) {
  for (const DType dtype : all_dtypes)
    for (const Pairing pairing : all_pairings)
      for (const Numerics numerics : all_numerics)
        for (const QkNormKind kind : {QkNormKind::rms, QkNormKind::rms_one_plus})
          for (const bool rotary_only : {false, true})
            for (const bool in_place : {false, true}) {
              const RopeSpec spec = norm_spec(pairing, numerics, kind, rotary_only, HfArithmetic::exact);
              SCOPED_TRACE(std::string(to_string(dtype)) + " " + to_string(pairing) + " " + to_string(numerics) +
                           " " + to_string(kind) + (rotary_only ? " rotary_only" : "") + (in_place ? " in place" : ""));
              const auto [g, c] = run_both(device, ref(), spec, dtype, 37, 6, 2, in_place, 101);
              EXPECT_EQ(g.q, c.q);
              EXPECT_EQ(g.k, c.k);
            }
}

/// torch_cuda: torch's summation order and rsqrtf move r by an ulp or two of float32, and CUDA's
/// cosf/sinf move cos/sin by an ulp of float32, against the exact arithmetic. Each can flip the
/// rounding of a normalised value, of a product or of the sum by one ulp of the dtype, so an output
/// moves by a few ulps of the head's largest normalised value, not of its own (a rotated value
/// a cos - b sin can be far smaller than a and b). Bound per value: 4 ulps of the head's largest
/// |output| (rotation keeps a pair's length, so that is within a factor 2 of the largest normalised
/// value); a wrong position, row or weight is off by the size of the values. Few values may move.
TEST_F(GpuQkNorm, TorchCudaWithinUlpsOfExact) {
  for (const DType dtype : {DType::bf16, DType::f16})
    for (const std::int64_t head_dim : {64, 128, 256})
      for (const std::int64_t tokens : {1, 3, 200}) {  // few and many rows: torch's lanes differ
        const RopeSpec spec =
            norm_spec(Pairing::half_split, Numerics::hf_compatible, QkNormKind::rms, false, HfArithmetic::exact,
                      head_dim);
        RopeSpec cuda = spec;
        cuda.hf_arithmetic = HfArithmetic::torch_cuda;
        SCOPED_TRACE(std::string(to_string(dtype)) + " head_dim " + std::to_string(head_dim) + " tokens " +
                     std::to_string(tokens));
        const auto [g, c] = run_both(device, ref(), cuda, dtype, tokens, 8, 2, false, 202);
        const int mantissa_bits = dtype == DType::bf16 ? 7 : 10;
        const auto value = [&](const std::vector<std::byte>& bytes, std::int64_t i) {
          return static_cast<double>(load_element(dtype, bytes.data(), i));
        };
        std::int64_t differ = 0;
        std::int64_t far = 0;
        double worst_ulps = 0.0;
        const auto n = static_cast<std::int64_t>(g.q.size()) / 2;
        for (std::int64_t head = 0; head < n / head_dim; ++head) {
          double scale = 0.0;
          for (std::int64_t e = 0; e < head_dim; ++e) scale = std::max(scale, std::abs(value(c.q, head * head_dim + e)));
          ASSERT_GT(scale, 0.0) << "head " << head;
          const double ulp = std::ldexp(1.0, std::ilogb(scale) - mantissa_bits);
          for (std::int64_t e = 0; e < head_dim; ++e) {
            const std::int64_t i = head * head_dim + e;
            const double gv = value(g.q, i);
            const double cv = value(c.q, i);
            ASSERT_TRUE(std::isfinite(gv)) << "element " << i << " = " << gv;
            if (gv == cv) continue;
            ++differ;
            worst_ulps = std::max(worst_ulps, std::abs(gv - cv) / ulp);
            if (std::abs(gv - cv) > 4.0 * ulp && far++ < 5) {
              ADD_FAILURE() << "head " << head << " element " << e << ": GPU " << gv << ", exact " << cv
                            << ", head's largest |value| " << scale;
            }
          }
        }
        EXPECT_EQ(far, 0);
        EXPECT_LT(differ, n / 20) << "worst " << worst_ulps << " ulps of the head's largest value";
      }
}

/// A copy of `dense` (rows of one token consecutive) with `token_pad` extra elements after each
/// token's rows: 0 keeps the layout, 1 moves every token after the first off 16-byte alignment.
std::unique_ptr<HostTensor> padded_copy(const HostTensor& dense, std::int64_t token_pad) {
  const ConstTensorView from = dense.cview();
  const std::int64_t row_bytes = from.heads * from.head_dim * size_of(from.dtype);
  auto to = std::make_unique<HostTensor>(from.dtype, from.tokens, from.heads, from.head_dim,
                                         from.heads * from.head_dim + token_pad);
  for (std::int64_t t = 0; t < from.tokens; ++t)
    std::memcpy(static_cast<std::byte*>(to->view.data) + t * to->view.token_stride * size_of(from.dtype),
                static_cast<const std::byte*>(from.data) + t * from.token_stride * size_of(from.dtype),
                static_cast<std::size_t>(row_bytes));
  return to;
}

/// The bytes of every token's rows of `t`, without the padding between tokens.
std::vector<std::byte> dense_bytes(const HostTensor& t) {
  const std::int64_t es = size_of(t.view.dtype);
  const std::int64_t row_bytes = t.view.heads * t.view.head_dim * es;
  std::vector<std::byte> out;
  for (std::int64_t i = 0; i < t.view.tokens; ++i) {
    const auto* row = static_cast<const std::byte*>(t.view.data) + i * t.view.token_stride * es;
    out.insert(out.end(), row, row + row_bytes);
  }
  return out;
}

/// Q and K (dense copies of their rows) after one torch_cuda norm + RoPE on the GPU, from inputs
/// laid out with `token_pad` extra elements after each token: 0 keeps every row 16-byte aligned,
/// so the kernel holds rows in registers; 1 breaks the alignment, so it takes the shared-memory
/// path. Same values, same weights and positions either way. `out_pad` (default token_pad) pads the
/// outputs' tokens instead, so that source and destination strides differ (8 keeps the alignment).
Outputs run_laid_out(const gpu::Device& device, gpu::StreamRef stream, const RopeSpec& spec, DType dtype,
                     std::int64_t tokens, std::int64_t q_heads, std::int64_t k_heads, std::int64_t token_pad,
                     std::uint64_t seed, std::int64_t out_pad = -1) {
  if (out_pad < 0) out_pad = token_pad;
  const std::int64_t d = spec.head_dim;
  const std::int64_t es = size_of(dtype);
  HostTensor q_dense(dtype, tokens, q_heads, d), k_dense(dtype, tokens, k_heads, d), weights(dtype, 2, 1, d);
  fill_random(q_dense.view, seed);
  fill_random(k_dense.view, seed + 1);
  fill_random(weights.view, seed + 2);
  const HostPositions pos(spec, random_positions(tokens, 1 << 17, seed + 3));
  const auto q_in = padded_copy(q_dense, token_pad), k_in = padded_copy(k_dense, token_pad);
  HostTensor q_out(dtype, tokens, q_heads, d, q_heads * d + out_pad), k_out(dtype, tokens, k_heads, d, k_heads * d + out_pad);
  DeviceMirror dq(device, q_out.buffer, stream), dk(device, k_out.buffer, stream);
  DeviceMirror dq_in(device, q_in->buffer, stream), dk_in(device, k_in->buffer, stream);
  DeviceMirror dw(device, weights.buffer, stream);
  const DevicePositions dpos(device, pos, stream);
  RopeArgs args;
  args.q = dq.map(q_out.view);
  args.k = dk.map(k_out.view);
  args.q_src = dq_in.map(q_in->cview());
  args.k_src = dk_in.map(k_in->cview());
  args.positions = dpos.view;
  const auto* w = static_cast<const std::byte*>(dw.map(weights.view.data));
  args.norm = NormWeights{w, w + d * es};
  GpuEngine engine(spec, device);
  engine.apply(args, stream);
  engine.check(stream);
  dq.download(q_out.buffer, stream);
  dk.download(k_out.buffer, stream);
  Outputs dense;
  dense.q = dense_bytes(q_out);
  dense.k = dense_bytes(k_out);
  return dense;
}

/// The register path (whole-head norm and rotation, head_dim 128 or 256, half_split or
/// interleaved, torch's 32-lane reduction: Qwen3's shape) against the shared-memory path on the same
/// values: the same bits, for every dtype, numerics and norm form. 40 tokens keep torch's lane
/// count at 32 for Q's and K's rows. `accurate` normalises in exact arithmetic, not in torch's
/// reduction order, which is all the register path implements: both of its calls take shared memory.
TEST_F(GpuQkNorm, RegisterRowsEqualSharedMemoryRows) {
  for (const DType dtype : all_dtypes)
    for (const std::int64_t head_dim : {128, 256})
      for (const Pairing pairing : {Pairing::half_split, Pairing::interleaved})
        for (const Numerics numerics : all_numerics)
          for (const QkNormKind kind : {QkNormKind::rms, QkNormKind::rms_one_plus}) {
            RopeSpec spec = norm_spec(pairing, numerics, kind, false, HfArithmetic::torch_cuda, head_dim);
            // The whole head, as a config gives it (rotary_dim 0: resolved by the engine) and
            // spelled out: the launcher must choose the register path for both.
            spec.rotary_dim = kind == QkNormKind::rms ? 0 : head_dim;
            spec.rotary_offset = 0;
            SCOPED_TRACE(std::string(to_string(dtype)) + " head_dim " + std::to_string(head_dim) + " " +
                         to_string(pairing) + " " + to_string(numerics) + " " + to_string(kind) + " rotary_dim " +
                         std::to_string(spec.rotary_dim));
            const std::int64_t before = gpu::detail::norm_register_launches();
            const std::int64_t expected = before + (numerics == Numerics::accurate ? 0 : 1);
            const Outputs in_registers = run_laid_out(device, ref(), spec, dtype, 40, 8, 2, 0, 404);
            EXPECT_EQ(gpu::detail::norm_register_launches(), expected) << "the aligned call took the register path";
            const Outputs in_shared = run_laid_out(device, ref(), spec, dtype, 40, 8, 2, 1, 404);
            EXPECT_EQ(gpu::detail::norm_register_launches(), expected) << "the padded call took shared memory";
            EXPECT_TRUE(in_registers.q == in_shared.q) << "Q";
            EXPECT_TRUE(in_registers.k == in_shared.k) << "K";
            // Outputs laid out with another token stride than the inputs: the register path
            // addresses source and destination rows separately (RegisterRowAddress).
            const Outputs restrided = run_laid_out(device, ref(), spec, dtype, 40, 8, 2, 0, 404, 8);
            EXPECT_EQ(gpu::detail::norm_register_launches(), expected + (numerics == Numerics::accurate ? 0 : 1));
            EXPECT_TRUE(restrided.q == in_shared.q) << "Q, output token stride + 8";
            EXPECT_TRUE(restrided.k == in_shared.k) << "K, output token stride + 8";
            // Seven Q heads and two K: where a warp holds two rows (16-bit, head_dim 128: half-warp
            // rows), one warp's are a Q and a K row, and the last warp's second half has none.
            const std::int64_t before_odd = gpu::detail::norm_register_launches();
            const Outputs odd_registers = run_laid_out(device, ref(), spec, dtype, 40, 7, 2, 0, 909);
            EXPECT_EQ(gpu::detail::norm_register_launches(), before_odd + (numerics == Numerics::accurate ? 0 : 1))
                << "7 + 2 heads took the register path";
            const Outputs odd_shared = run_laid_out(device, ref(), spec, dtype, 40, 7, 2, 1, 909);
            EXPECT_TRUE(odd_registers.q == odd_shared.q) << "Q, 7 + 2 heads";
            EXPECT_TRUE(odd_registers.k == odd_shared.k) << "K, 7 + 2 heads";
          }
}

/// Tokens enough that every block of a norm launch walks several: more than the most blocks of 256
/// threads a device can hold (8 an SM), three times over, plus an odd few so that blocks end on
/// different tokens. The register path then takes each warp's next row across token boundaries.
std::int64_t tokens_beyond_resident_blocks(const gpu::Device& device) {
  return std::max<std::int64_t>(4099, std::int64_t{device.multiprocessor_count()} * 8 * 3 + 5);
}

/// The register path against the shared-memory path where every block walks several tokens
/// (tokens_beyond_resident_blocks): the register path's rows are pipelined across its tokens (the
/// first row of a block's next token loaded before that token's barrier and table, the table
/// double-buffered), which a call of fewer tokens than resident blocks never does. The same bits.
TEST_F(GpuQkNorm, RegisterRowsAcrossTokensEqualSharedMemoryRows) {
  const std::int64_t tokens = tokens_beyond_resident_blocks(device);
  for (const DType dtype : all_dtypes)
    for (const std::int64_t head_dim : {128, 256})
      for (const Pairing pairing : {Pairing::half_split, Pairing::interleaved})
        for (const Numerics numerics : {Numerics::hf_compatible, Numerics::hf_fp32_apply}) {
          const QkNormKind kind = numerics == Numerics::hf_compatible ? QkNormKind::rms : QkNormKind::rms_one_plus;
          RopeSpec spec = norm_spec(pairing, numerics, kind, false, HfArithmetic::torch_cuda, head_dim);
          spec.rotary_dim = 0;
          spec.rotary_offset = 0;
          SCOPED_TRACE(std::string(to_string(dtype)) + " head_dim " + std::to_string(head_dim) + " " +
                       to_string(pairing) + " " + to_string(numerics) + " tokens " + std::to_string(tokens));
          const std::int64_t before = gpu::detail::norm_register_launches();
          // 8 Q heads and 2 K heads: 10 rows over 8 warps, so warps take one row of a token or two.
          const Outputs in_registers = run_laid_out(device, ref(), spec, dtype, tokens, 8, 2, 0, 606);
          EXPECT_EQ(gpu::detail::norm_register_launches(), before + 1) << "the aligned call took the register path";
          const Outputs in_shared = run_laid_out(device, ref(), spec, dtype, tokens, 8, 2, 1, 606);
          EXPECT_EQ(gpu::detail::norm_register_launches(), before + 1) << "the padded call took shared memory";
          EXPECT_TRUE(in_registers.q == in_shared.q) << "Q";
          EXPECT_TRUE(in_registers.k == in_shared.k) << "K";
        }
}

/// What one torch_cuda norm + RoPE append writes: Q's rows (dense; q_out's when `fp8_q`) and the
/// two caches' bytes, from inputs with `token_pad` extra elements after each token (0: aligned,
/// the register path; 1: the shared-memory path). Some slots are -1 or shared by no one (with 40
/// tokens, over half). `q_heads` Q heads (and two K and V heads).
struct AppendOutputs {
  std::vector<std::byte> q;
  std::vector<std::byte> cache;
};

AppendOutputs append_laid_out(const gpu::Device& device, gpu::StreamRef stream, const RopeSpec& spec, CacheDType cache_dtype,
                              bool fp8_q, std::int64_t token_pad, std::uint64_t seed, std::int64_t tokens = 40,
                              std::int64_t q_heads = 8) {
  const DType dtype = DType::bf16;
  // Slots for about 1.6 tokens each, in blocks of 16: (t * 13) % slots_n repeats only past slots_n.
  const std::int64_t kv_heads = 2, d = spec.head_dim, slots_n = (tokens * 8 / 5 + 15) / 16 * 16, es = 2;
  HostTensor q_dense(dtype, tokens, q_heads, d), k_dense(dtype, tokens, kv_heads, d), v_dense(dtype, tokens, kv_heads, d),
      weights(dtype, 2, 1, d);
  fill_random(q_dense.view, seed);
  fill_random(k_dense.view, seed + 1);
  fill_random(v_dense.view, seed + 2);
  fill_random(weights.view, seed + 3);
  const HostPositions pos(spec, random_positions(tokens, 1 << 17, seed + 4));
  std::vector<std::int64_t> slots(tokens);
  for (std::int64_t t = 0; t < tokens; ++t) slots[t] = t % 7 == 3 ? -1 : (t * 13) % slots_n;
  std::vector<std::int64_t> unique_slots;  // a slot written twice would depend on the order of writes
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    if (std::find(unique_slots.begin(), unique_slots.end(), slots[t]) != unique_slots.end()) slots[t] = -1;
    else unique_slots.push_back(slots[t]);
  }
  const auto q_in = padded_copy(q_dense, token_pad), k_in = padded_copy(k_dense, token_pad),
             v_in = padded_copy(v_dense, token_pad);
  HostTensor q_out(dtype, tokens, q_heads, d, q_heads * d + token_pad);
  const std::int64_t cache_es = size_of(cache_dtype);
  HostBuffer cache(2 * slots_n * kv_heads * d * cache_es);
  cache.poison();
  HostBuffer q_fp8(fp8_q ? tokens * q_heads * d : 1);
  q_fp8.poison();
  DeviceMirror dq(device, q_out.buffer, stream), dq_in(device, q_in->buffer, stream), dk(device, k_in->buffer, stream),
      dv(device, v_in->buffer, stream), dw(device, weights.buffer, stream), dc(device, cache, stream),
      dq8(device, q_fp8, stream);
  const DevicePositions dpos(device, pos, stream);
  gpu::DeviceBuffer dslots(device, tokens * 8);
  dslots.upload(slots.data(), tokens * 8, stream);
  AppendArgs g;
  g.q = dq.map(q_out.view);
  if (fp8_q) {
    g.q = dq_in.map(q_in->view);  // q_out reads Q in place and leaves it
    g.q_out = QuantizedOutput{dq8.map(q_fp8.data()), cache_dtype, q_heads * d, d, 0.75f};
  } else {
    g.q_src = dq_in.map(q_in->cview());
  }
  g.k = dk.map(k_in->cview());
  g.v = dv.map(v_in->cview());
  g.positions = dpos.view;
  g.slots = static_cast<const std::int64_t*>(dslots.data());
  auto* cache_base = static_cast<std::byte*>(dc.map(cache.data()));
  const bool fp8 = cache_dtype == CacheDType::fp8_e4m3;
  g.cache = KvCacheView{cache_base, cache_base + slots_n * kv_heads * d * cache_es, cache_dtype, CacheLayout::paged_nhd,
                        kv_heads, d, slots_n / 16, 16, fp8 ? 0.5f : 1.0f, fp8 ? 1.25f : 1.0f};
  const auto* dw_base = static_cast<const std::byte*>(dw.map(weights.view.data));
  g.norm = NormWeights{dw_base, dw_base + d * es};
  GpuEngine engine(spec, device);
  engine.append(g, stream);
  engine.check(stream);
  dc.download(cache, stream);
  AppendOutputs out;
  out.cache.assign(cache.data(), cache.data() + cache.size());
  if (fp8_q) {
    dq8.download(q_fp8, stream);
    const std::byte* b = q_fp8.data();
    out.q.assign(b, b + q_fp8.size());
  } else {
    dq.download(q_out.buffer, stream);
    out.q = dense_bytes(q_out);
  }
  return out;
}

/// The append through the register path (Q or q_out, K into the cache, V copied and cast) against
/// the shared-memory path on the same values: the same bytes, for bf16 and fp8 caches.
TEST_F(GpuQkNorm, RegisterRowsAppendEqualsSharedMemoryRows) {
  for (const Pairing pairing : {Pairing::half_split, Pairing::interleaved})
    for (const CacheDType cache_dtype : {CacheDType::bf16, CacheDType::fp8_e4m3})
      for (const bool fp8_q : {false, true}) {
        if (fp8_q && cache_dtype != CacheDType::fp8_e4m3) continue;
        RopeSpec spec = norm_spec(pairing, Numerics::hf_compatible, QkNormKind::rms, false, HfArithmetic::torch_cuda);
        spec.rotary_dim = 0;
        spec.rotary_offset = 0;
        SCOPED_TRACE(std::string(to_string(pairing)) + (cache_dtype == CacheDType::bf16 ? " bf16 cache" : " fp8 cache") +
                     (fp8_q ? " fp8 q_out" : ""));
        const std::int64_t before = gpu::detail::norm_register_launches();
        const AppendOutputs in_registers = append_laid_out(device, ref(), spec, cache_dtype, fp8_q, 0, 505);
        EXPECT_EQ(gpu::detail::norm_register_launches(), before + 1) << "the aligned call took the register path";
        const AppendOutputs in_shared = append_laid_out(device, ref(), spec, cache_dtype, fp8_q, 1, 505);
        EXPECT_EQ(gpu::detail::norm_register_launches(), before + 1) << "the padded call took shared memory";
        EXPECT_TRUE(in_registers.q == in_shared.q) << "Q";
        EXPECT_TRUE(in_registers.cache == in_shared.cache) << "caches";
        // Seven Q heads: rows Q0..Q6, K0, K1, V0, V1, so half-warp rows pair a Q with a K row and a
        // K with a V row, and the last warp's second half has none.
        const std::int64_t before_odd = gpu::detail::norm_register_launches();
        const AppendOutputs odd_registers = append_laid_out(device, ref(), spec, cache_dtype, fp8_q, 0, 515, 40, 7);
        EXPECT_EQ(gpu::detail::norm_register_launches(), before_odd + 1) << "7 Q heads took the register path";
        const AppendOutputs odd_shared = append_laid_out(device, ref(), spec, cache_dtype, fp8_q, 1, 515, 40, 7);
        EXPECT_TRUE(odd_registers.q == odd_shared.q) << "Q, 7 Q heads";
        EXPECT_TRUE(odd_registers.cache == odd_shared.cache) << "caches, 7 Q heads";
      }
}

/// The append's register path against its shared-memory path where every block walks several
/// tokens (rows pipelined across them, as above), with slots -1 and slots written by no one
/// between the tokens: the same bytes, bf16 and fp8 caches, both pairings.
TEST_F(GpuQkNorm, RegisterRowsAppendAcrossTokensEqualsSharedMemoryRows) {
  const std::int64_t tokens = tokens_beyond_resident_blocks(device);
  for (const Pairing pairing : {Pairing::half_split, Pairing::interleaved})
    for (const CacheDType cache_dtype : {CacheDType::bf16, CacheDType::fp8_e4m3}) {
      RopeSpec spec = norm_spec(pairing, Numerics::hf_compatible, QkNormKind::rms, false, HfArithmetic::torch_cuda);
      spec.rotary_dim = 0;
      spec.rotary_offset = 0;
      const bool fp8_q = cache_dtype == CacheDType::fp8_e4m3;
      SCOPED_TRACE(std::string(to_string(pairing)) + (fp8_q ? " fp8 cache, fp8 q_out" : " bf16 cache") + " tokens " +
                   std::to_string(tokens));
      const std::int64_t before = gpu::detail::norm_register_launches();
      const AppendOutputs in_registers = append_laid_out(device, ref(), spec, cache_dtype, fp8_q, 0, 707, tokens);
      EXPECT_EQ(gpu::detail::norm_register_launches(), before + 1) << "the aligned call took the register path";
      const AppendOutputs in_shared = append_laid_out(device, ref(), spec, cache_dtype, fp8_q, 1, 707, tokens);
      EXPECT_EQ(gpu::detail::norm_register_launches(), before + 1) << "the padded call took shared memory";
      EXPECT_TRUE(in_registers.q == in_shared.q) << "Q";
      EXPECT_TRUE(in_registers.cache == in_shared.cache) << "caches";
    }
}

TEST_F(GpuQkNorm, AppendEqualsApply) {
  const RopeSpec spec =
      norm_spec(Pairing::half_split, Numerics::hf_compatible, QkNormKind::rms, false, HfArithmetic::exact);
  const std::int64_t tokens = 12, q_heads = 4, kv_heads = 2, d = spec.head_dim;
  HostTensor q_in(DType::bf16, tokens, q_heads, d), k_in(DType::bf16, tokens, kv_heads, d),
      v_in(DType::bf16, tokens, kv_heads, d), weights(DType::bf16, 2, 1, d);
  fill_random(q_in.view, 301);
  fill_random(k_in.view, 302);
  fill_random(v_in.view, 303);
  fill_random(weights.view, 304);
  const HostPositions pos(random_positions(tokens, 5000, 305));
  std::vector<std::int64_t> slots(tokens);
  for (std::int64_t t = 0; t < tokens; ++t) slots[t] = t % 5 == 4 ? -1 : (t * 7) % 16;
  const auto* w = static_cast<const std::byte*>(weights.view.data);

  // Expected: the CPU engine's append.
  std::vector<std::uint16_t> cache_k(16 * kv_heads * d, poison_bits16), cache_v(16 * kv_heads * d, poison_bits16);
  HostTensor q_cpu(DType::bf16, tokens, q_heads, d);
  AppendArgs a;
  a.q = q_cpu.view;
  a.q_src = q_in.cview();
  a.k = k_in.cview();
  a.v = v_in.cview();
  a.positions = pos.view();
  a.slots = slots.data();
  a.cache = KvCacheView{cache_k.data(), cache_v.data(), CacheDType::bf16, CacheLayout::paged_nhd, kv_heads, d, 4, 4};
  a.norm = NormWeights{w, w + d * 2};
  CpuEngine(spec).append(a);

  HostTensor q_gpu(DType::bf16, tokens, q_heads, d);
  HostBuffer cache(2 * 16 * kv_heads * d * 2);
  cache.poison();
  DeviceMirror dq(device, q_gpu.buffer, ref()), dq_in(device, q_in.buffer, ref()), dk(device, k_in.buffer, ref()),
      dv(device, v_in.buffer, ref()), dw(device, weights.buffer, ref()), dc(device, cache, ref());
  const DevicePositions dpos(device, pos, ref());
  gpu::DeviceBuffer dslots(device, tokens * 8);
  dslots.upload(slots.data(), tokens * 8, ref());
  AppendArgs g = a;
  g.q = dq.map(q_gpu.view);
  g.q_src = dq_in.map(q_in.cview());
  g.k = dk.map(k_in.cview());
  g.v = dv.map(v_in.cview());
  g.positions = dpos.view;
  g.slots = static_cast<const std::int64_t*>(dslots.data());
  auto* cache_base = static_cast<std::byte*>(dc.map(cache.data()));
  g.cache.k = cache_base;
  g.cache.v = cache_base + 16 * kv_heads * d * 2;
  const auto* dw_base = static_cast<const std::byte*>(dw.map(weights.view.data));
  g.norm = NormWeights{dw_base, dw_base + d * 2};
  GpuEngine engine(spec, device);
  engine.append(g, ref());
  engine.check(ref());
  dq.download(q_gpu.buffer, ref());
  dc.download(cache, ref());
  EXPECT_EQ(q_gpu.buffer.snapshot(), q_cpu.buffer.snapshot());
  EXPECT_EQ(std::memcmp(cache.data(), cache_k.data(), cache_k.size() * 2), 0) << "K cache";
  EXPECT_EQ(std::memcmp(cache.data() + cache_k.size() * 2, cache_v.data(), cache_v.size() * 2), 0) << "V cache";
}

TEST_F(GpuQkNorm, RefusesMissingWeights) {
  const RopeSpec spec =
      norm_spec(Pairing::half_split, Numerics::hf_compatible, QkNormKind::rms, false, HfArithmetic::torch_cuda);
  HostTensor q(DType::bf16, 2, 2, spec.head_dim);
  fill_random(q.view, 9);
  DeviceMirror dq(device, q.buffer, ref());
  const HostPositions pos(random_positions(2, 10, 10));
  const DevicePositions dpos(device, pos, ref());
  RopeArgs args;
  args.q = dq.map(q.view);
  args.positions = dpos.view;
  GpuEngine engine(spec, device);
  try {
    engine.apply(args, ref());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("norm.q is absent"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace posenc::test

// GPU device code of the frequency-selection pre-pass (Scaling::longrope, Scaling::dynamic): one block picks or computes the call's table (no host code).
//
// A non-template kernel, so it lives apart from rope_kernels.cuh (included by two translation
// units) and is included by rope_launch.cu alone.
#pragma once

#include <cstdint>

#include "gpu/rope_kernels.cuh"

namespace posenc::gpu::detail {

/// The call's table for Scaling::dynamic with seq_len > max_position_embeddings, pair i: the
/// float32 tensor arithmetic of Hugging Face's dynamic NTK update, operation for operation, in one
/// of two roundings of the same steps:
///   Vendor = false (HfArithmetic::exact): as compute_frequencies (core/frequencies.cpp), true
///     divisions and each pow evaluated in double and rounded once to float32;
///   Vendor = true (HfArithmetic::torch_cuda): as ATen's CUDA kernels round them: a tensor divided
///     by a Python number is multiplied by the float32 reciprocal of that number, `tensor ** scalar`
///     is powf with the exponent rounded to float32, `base ** e` is powf.
/// In both, torch turns `** 2` and `** 3` into multiplies (R = 4 gives 2) and `1.0 / x` is a
/// correctly rounded reciprocal.
template <bool Vendor>
__device__ __forceinline__ float dynamic_inv_freq(const SelectParams& p, std::int64_t seq_len, int i) {
  using posenc::detail::mul_rn;
  using posenc::detail::sub_rn;
  const float scaled = mul_rn(p.factor, static_cast<float>(seq_len));
  const float ratio =
      sub_rn(Vendor ? mul_rn(scaled, p.inv_max_positions) : __fdiv_rn(scaled, p.max_positions), p.factor_minus_one);
  float scale;
  if (p.exponent == 2.0) {
    scale = mul_rn(ratio, ratio);
  } else if (p.exponent == 3.0) {
    scale = mul_rn(mul_rn(ratio, ratio), ratio);
  } else {
    scale = Vendor ? powf(ratio, p.exponent_f32) : static_cast<float>(pow(static_cast<double>(ratio), p.exponent));
  }
  const float base = mul_rn(p.base, scale);
  const auto two_i = static_cast<float>(2 * i);
  const float e = Vendor ? mul_rn(two_i, p.inv_rotary_dim) : __fdiv_rn(two_i, static_cast<float>(p.rotary_dim));
  const float pw = Vendor ? powf(base, e) : static_cast<float>(pow(static_cast<double>(base), static_cast<double>(e)));
  return __fdiv_rn(1.0f, pw);
}

/// LongRoPE's long table as transformers computes it on CUDA when a call first passes the original
/// context (HfArithmetic::torch_cuda): inv_freq[i] = 1 / (fl32(long_factor[i]) * powf(fl32(theta),
/// fl32(2i) * fl32(1/dim))), the division by dim again a multiply by the float32 reciprocal. Run
/// once by the engine's constructor; `long_factor` holds the float32 factors, `out` half entries.
__global__ void longrope_long_table_kernel(const float* long_factor, float base, float inv_rotary_dim, int half,
                                           float* out) {
  using posenc::detail::mul_rn;
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= half) return;
  const float e = mul_rn(static_cast<float>(2 * i), inv_rotary_dim);
  out[i] = __fdiv_rn(1.0f, mul_rn(long_factor[i], powf(base, e)));
}

/// Frequency-selection pre-pass (one block of select_block_threads): reduces max(position) and
/// writes the table for this call into `out`, in stream order before the rotation launch.
__global__ void __launch_bounds__(select_block_threads) select_frequencies_kernel(
    const SelectParams p) {
  __shared__ std::int64_t partial[select_block_threads];
  std::int64_t m = INT64_MIN;
  for (std::int64_t t = threadIdx.x; t < p.tokens; t += blockDim.x) {
    const std::int64_t pos = load_position(p.positions, p.positions_i64 != 0, t);
    m = pos > m ? pos : m;
  }
  partial[threadIdx.x] = m;
  __syncthreads();
  for (int stride = select_block_threads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride) {
      const std::int64_t other = partial[threadIdx.x + stride];
      partial[threadIdx.x] = other > partial[threadIdx.x] ? other : partial[threadIdx.x];
    }
    __syncthreads();
  }
  const std::int64_t max_pos = partial[0];
  const std::int64_t seq_len = max_pos == INT64_MAX ? max_pos : max_pos + 1;
  const bool call_table = seq_len > p.threshold;
  for (int i = static_cast<int>(threadIdx.x); i < p.half; i += static_cast<int>(blockDim.x)) {
    float f = p.init_table[i];
    if (call_table) {
      if (p.mode == SelectMode::longrope) {
        f = p.long_table[i];
      } else {
        f = p.vendor_arithmetic != 0 ? dynamic_inv_freq<true>(p, seq_len, i) : dynamic_inv_freq<false>(p, seq_len, i);
      }
    }
    p.out[i] = f;
  }
}

}  // namespace posenc::gpu::detail

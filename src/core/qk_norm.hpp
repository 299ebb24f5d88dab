// The QK-norm stage's arithmetic (RopeSpec::qk_norm): the mean of squares in each device torch's summation order, the reciprocal square root and the weight, shared by the reference, the CPU engine and the GPU kernels.
//
// transformers' q_norm/k_norm compute `x.float().pow(2).mean(-1)` and `torch.rsqrt(var + eps)` in
// float32 on the model's device. A float32 sum of D squares depends on the order of its additions,
// and each device's torch adds in its own fixed order (docs/NUMERICS.md §3.6 derives both):
//   torch_cpu   ATen's cascade_sum: 8-lane vectors (on every x86-64 capability: the sum kernel is
//               not built for 16 lanes), four vector accumulators, the lanes added one by one;
//               mean = sum / D; rsqrt = 1 / sqrt (both correctly rounded).
//   torch_cuda  ATen's reduce kernel: rows of D >= 128 are read as 4-float vectors, a lane of
//               `width` lanes accumulates its vectors in four accumulators, then a halving tree
//               across the lanes; mean = sum * fl32(rows / (rows * D)); rsqrt = CUDA's rsqrtf.
//   exact       the sum in double, rounded once; rsqrt in double, rounded once (same on every device).
// The rows count is the number of head rows of the tensor being normalised (tokens * heads): torch
// sizes its launch (and its mean factor) by it.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/element.hpp"
#include "posenc/rope.hpp"

namespace posenc::detail {

/// The sum of the squares `sq[0..n)` in the order of ATen's CPU cascade_sum over a contiguous row
/// (SumKernel.cpp: vectorized_inner_sum -> row_sum -> multi_row_sum), with 8-lane float vectors.
inline float torch_cpu_sum(const float* sq, int n) {
  constexpr int lanes = 8;
  constexpr int ilp = 4;
  // row_sum over `count` items of `lanes` (vectors) or 1 (scalars) floats each, item i at
  // sq + i * width: ilp accumulators, multi_row_sum's levels of 16 items, the tail into
  // accumulator 0, then the accumulators added in order.
  auto row_sum = [&](int count, int width, float* out) {
    float acc[4][ilp][lanes] = {};
    const int groups = count / ilp;
    int level_power = 4;
    {
      int ceil_log2 = 0;
      while ((1 << ceil_log2) < groups) ++ceil_log2;
      level_power = ceil_log2 / 4 > 4 ? ceil_log2 / 4 : 4;
    }
    const int level_step = 1 << level_power;
    const int level_mask = level_step - 1;
    auto add_group = [&](int g) {
      for (int k = 0; k < ilp; ++k)
        for (int l = 0; l < width; ++l) acc[0][k][l] = acc[0][k][l] + sq[(g * ilp + k) * width + l];
    };
    int g = 0;
    while (g + level_step <= groups) {
      for (int j = 0; j < level_step; ++j, ++g) add_group(g);
      for (int j = 1; j < 4; ++j) {
        for (int k = 0; k < ilp; ++k)
          for (int l = 0; l < width; ++l) {
            acc[j][k][l] = acc[j][k][l] + acc[j - 1][k][l];
            acc[j - 1][k][l] = 0.0f;
          }
        if ((g & (level_mask << (j * level_power))) != 0) break;
      }
    }
    for (; g < groups; ++g) add_group(g);
    for (int j = 1; j < 4; ++j)
      for (int k = 0; k < ilp; ++k)
        for (int l = 0; l < width; ++l) acc[0][k][l] = acc[0][k][l] + acc[j][k][l];
    for (int i = groups * ilp; i < count; ++i)
      for (int l = 0; l < width; ++l) acc[0][0][l] = acc[0][0][l] + sq[i * width + l];
    for (int k = 1; k < ilp; ++k)
      for (int l = 0; l < width; ++l) acc[0][0][l] = acc[0][0][l] + acc[0][k][l];
    for (int l = 0; l < width; ++l) out[l] = acc[0][0][l];
  };
  float total = 0.0f;
  if (n >= lanes) {
    const int vectors = n / lanes;
    float partial[lanes];
    row_sum(vectors, lanes, partial);
    for (int i = vectors * lanes; i < n; ++i) total = total + sq[i];  // the scalar tail first
    for (int l = 0; l < lanes; ++l) total = total + partial[l];
  } else {
    row_sum(n, 1, &total);
  }
  return total;
}

/// The launch shape ATen's reduce kernel picks for a mean over the last dim of `rows` rows of `n`
/// floats (Reduce.cuh setReduceConfig): lanes per row, and whether rows are read as 4-float vectors.
/// For n <= max_head_dim it never splits a row across warps or blocks.
struct TorchCudaReduceShape {
  int lanes = 32;
  bool vectorized = false;
};

POSENC_HD TorchCudaReduceShape torch_cuda_reduce_shape(int n, std::int64_t rows) {
  constexpr int max_threads = 512;
  constexpr int warp = 32;
  TorchCudaReduceShape shape;
  shape.vectorized = n >= 128;
  const int dim0 = shape.vectorized ? n / 4 : n;
  auto last_pow2 = [](std::int64_t v) {
    std::int64_t p = 1;
    while (p * 2 <= v) p *= 2;
    return static_cast<int>(p);
  };
  const int dim0_pow2 = dim0 < max_threads ? last_pow2(dim0) : max_threads;
  const int dim1_pow2 = rows < max_threads ? last_pow2(rows) : max_threads;
  int width = dim0_pow2 < warp ? dim0_pow2 : warp;
  const int height = dim1_pow2 < max_threads / width ? dim1_pow2 : max_threads / width;
  width = dim0_pow2 < max_threads / height ? dim0_pow2 : max_threads / height;
  shape.lanes = width;
  return shape;
}

/// A lane's four accumulators added as ATen's reduce adds them: ((a0 + a1) + a2) + a3.
POSENC_HD float torch_cuda_accumulators_sum(const float (&acc)[4]) {
  return add_rn(add_rn(add_rn(acc[0], acc[1]), acc[2]), acc[3]);
}

/// Lane `lane`'s partial sum of the squares of `x[0..n)` (`x.pow(2)`: fl32(x * x)) in ATen's reduce
/// kernel of `shape` (Reduce.cuh input_vectorized_thread_reduce_impl / thread_reduce_impl with
/// vt0 = 4): four accumulators, then added in order. torch's rows start 16-byte aligned; a row of
/// n % 4 != 0 elements read as vectors would not (the launcher refuses that case).
POSENC_HD float torch_cuda_lane_sum(const float* x, int n, TorchCudaReduceShape shape, int lane) {
  auto sq = [x](int i) { return mul_rn(x[i], x[i]); };
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const int stride = shape.lanes;
  if (shape.vectorized) {
    for (int v = lane; v * 4 + 3 < n; v += stride)
      for (int i = 0; i < 4; ++i) acc[i] = add_rn(acc[i], sq(v * 4 + i));
    const int tail = n - n % 4 + lane;
    if (tail < n) acc[0] = add_rn(acc[0], sq(tail));
  } else {
    int idx = lane;
    for (; idx + 3 * stride < n; idx += 4 * stride)
      for (int i = 0; i < 4; ++i) acc[i] = add_rn(acc[i], sq(idx + i * stride));
    for (int i = 0; i < 4 && idx < n; ++i, idx += stride) acc[i] = add_rn(acc[i], sq(idx));
  }
  return torch_cuda_accumulators_sum(acc);
}

/// The sum of the squares of x[0..n) in ATen's reduce order: every lane's partial, then lanes l and
/// l + o added for o = lanes/2, ..., 1 (shared memory above 32 lanes, warp shuffles below: the same
/// tree). `partial` is scratch of shape.lanes floats. (The GPU kernel spreads the same steps over
/// a warp: norm_kernels.cuh.)
POSENC_HD float torch_cuda_sum(const float* x, int n, TorchCudaReduceShape shape, float* partial) {
  for (int l = 0; l < shape.lanes; ++l) partial[l] = torch_cuda_lane_sum(x, n, shape, l);
  for (int o = shape.lanes / 2; o > 0; o /= 2)
    for (int l = 0; l < o; ++l) partial[l] = add_rn(partial[l], partial[l + o]);
  return partial[0];
}

/// torch on CUDA computes the mean as sum * factor, factor = fl32(fl32(rows) / fl32(rows * n))
/// (ReduceMomentKernel.cu); it is fl32(1/n) whenever rows * n is exact in float32.
POSENC_HD float torch_cuda_mean_factor(std::int64_t rows, int n) {
  const double total = static_cast<double>(rows) * static_cast<double>(n);  // exact below 2^53
  return static_cast<float>(rows) / static_cast<float>(total);
}

/// The weight step of QkNormKind `kind` in activation dtype A, from y = fl32(x * r): rms gives
/// round(w * round(y)) (the product of two A values, rounded once), rms_one_plus round(y * fl32(1 + w)).
template <DType A>
POSENC_HD float norm_weighted(QkNormKind kind, float y, float w) {
  if (kind == QkNormKind::rms) return round_act<A>(mul_rn(w, round_act<A>(y)));
  return round_act<A>(mul_rn(y, add_rn(1.0f, w)));
}

/// exact: the mean of squares in double, rounded once to float32.
POSENC_HD float exact_mean_square(const float* x, int n) {
  double sum = 0.0;
  for (int j = 0; j < n; ++j) sum += static_cast<double>(x[j]) * static_cast<double>(x[j]);
  return static_cast<float>(sum / n);
}

/// exact: fl32(1 / sqrt(v)) evaluated in double.
POSENC_HD float exact_rsqrt(float v) { return static_cast<float>(1.0 / sqrt(static_cast<double>(v))); }

/// Host side: normalises x[0..n) (the row's values as float) in place into values of activation
/// dtype A (as float), with the weights w[0..n) (as float) under `arithmetic` (torch_cpu or exact;
/// torch_cuda's rsqrtf exists only on the device). `sq` is scratch of n floats.
template <DType A>
void norm_row_host(const QkNorm& norm, HfArithmetic arithmetic, float* x, const float* w, int n, float* sq) {
  float mean = 0.0f;
  if (arithmetic == HfArithmetic::torch_cpu) {
    for (int j = 0; j < n; ++j) sq[j] = x[j] * x[j];
    mean = torch_cpu_sum(sq, n) / static_cast<float>(n);
  } else {
    mean = exact_mean_square(x, n);
  }
  const float v = mean + static_cast<float>(norm.epsilon);
  const float r = arithmetic == HfArithmetic::torch_cpu ? 1.0f / std::sqrt(v) : exact_rsqrt(v);
  for (int j = 0; j < n; ++j) x[j] = norm_weighted<A>(norm.kind, x[j] * r, w[j]);
}

}  // namespace posenc::detail

// Device code of the GPU GLM-4 attention example: bias rows before the QKV GEMM and a plain paged attention kernel (no host code).
//
// The attention kernel is written to be read and checked, not to be fast: one block per
// (token, q head), the token's scores in shared memory, float32 throughout. It is the CPU
// layer's loop (examples/glm4_attention_layer.cpp) with the cache rows found through a block
// table instead of `block * max_len + index`.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

namespace posenc::examples::gpu_kernels {

// Threads per attention block: four warps; the reductions below assume a multiple of 32.
inline constexpr int attention_threads = 128;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);  // round to nearest even, as PyTorch's cast
}

/// out[r * width + c] = bias[c] for r < rows. The QKV GEMM then runs with beta = 1, so the bias
/// is added inside cuBLAS's float32 epilogue and the result is rounded once (like nn.Linear's
/// fused bias), not once after the GEMM and again after a separate add.
template <typename T>
__global__ void bias_rows_kernel(T* __restrict__ out, const T* __restrict__ bias, std::int64_t rows,
                                 std::int64_t width) {
  const std::int64_t n = rows * width;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    out[i] = bias[i % width];
  }
}

/// Block-wide reduction of one float per thread (max or sum); every thread gets the result.
/// `scratch` holds one value per warp. Ends with a barrier, so shared data written before the
/// call is visible to every thread after it.
template <bool is_max>
__device__ float block_reduce(float value, float* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, value, offset);
    value = is_max ? fmaxf(value, other) : value + other;
  }
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
  if (threadIdx.x % 32 == 0) scratch[warp] = value;
  __syncthreads();
  float result = scratch[0];
  for (int w = 1; w < warps; ++w) result = is_max ? fmaxf(result, scratch[w]) : result + scratch[w];
  __syncthreads();  // scratch is reused by the next reduction
  return result;
}

/// Causal softmax attention of one token and one Q head over the token's own sequence in a
/// paged NHD cache [pages, page_size, kv_heads, head_dim]: keys 0 .. token_keys[token] - 1 of the
/// sequence whose block-table row is token_rows[token] (cache index i lives in page
/// block_table[row * blocks_per_seq + i / page_size] at offset i % page_size). Other sequences'
/// pages are never read: that is the batch's block-diagonal mask. GQA: Q head h reads KV head
/// h / (q_heads / kv_heads), as HF's repeat_kv. Scores, softmax (max subtracted) and the PV sum
/// are float32; the result is rounded to T once.
///
/// Grid (tokens, q_heads), attention_threads threads, dynamic shared memory
/// (head_dim + max_keys) floats. Q is read from the fused QKV buffer (token stride qkv_stride),
/// where the append rotated it in place; out is [tokens, q_heads * head_dim].
template <typename T>
__global__ void __launch_bounds__(attention_threads)
    paged_attention_kernel(const T* __restrict__ qkv, std::int64_t qkv_stride, const T* __restrict__ k_cache,
                           const T* __restrict__ v_cache, const std::int32_t* __restrict__ block_table,
                           int blocks_per_seq, int page_size, const std::int32_t* __restrict__ token_rows,
                           const std::int32_t* __restrict__ token_keys, int q_heads, int kv_heads, int head_dim,
                           float scale, T* __restrict__ out) {
  extern __shared__ float shared[];
  __shared__ float scratch[attention_threads / 32];
  float* q = shared;                // [head_dim]
  float* scores = shared + head_dim;  // [keys]
  const int token = static_cast<int>(blockIdx.x);
  const int head = static_cast<int>(blockIdx.y);
  const int kv_head = head / (q_heads / kv_heads);
  const int keys = token_keys[token];
  const std::int32_t* pages = block_table + static_cast<std::int64_t>(token_rows[token]) * blocks_per_seq;
  const int tid = static_cast<int>(threadIdx.x);

  const T* q_row = qkv + token * qkv_stride + static_cast<std::int64_t>(head) * head_dim;
  for (int d = tid; d < head_dim; d += blockDim.x) q[d] = to_float(q_row[d]);
  __syncthreads();

  // Row of cache index i for this KV head (the paged_nhd formula of kv_cache.hpp).
  const auto row_of = [&](int i) {
    const std::int64_t slot = static_cast<std::int64_t>(pages[i / page_size]) * page_size + i % page_size;
    return (slot * kv_heads + kv_head) * head_dim;
  };

  float local_max = -INFINITY;
  for (int i = tid; i < keys; i += blockDim.x) {
    const T* k = k_cache + row_of(i);
    float dot = 0.0f;
    for (int d = 0; d < head_dim; ++d) dot += q[d] * to_float(k[d]);
    const float s = dot * scale;
    scores[i] = s;
    local_max = fmaxf(local_max, s);
  }
  const float max_score = block_reduce<true>(local_max, scratch);

  float local_sum = 0.0f;
  for (int i = tid; i < keys; i += blockDim.x) {
    const float e = expf(scores[i] - max_score);  // max subtracted: no overflow, the largest term is 1
    scores[i] = e;
    local_sum += e;
  }
  const float sum = block_reduce<false>(local_sum, scratch);  // its barriers publish every scores[i]

  // One thread per output element; each walks all keys (head_dim is small, keys are few).
  T* out_row = out + (static_cast<std::int64_t>(token) * q_heads + head) * head_dim;
  for (int d = tid; d < head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < keys; ++i) acc += scores[i] * to_float(v_cache[row_of(i) + d]);
    out_row[d] = from_float<T>(acc / sum);
  }
}

}  // namespace posenc::examples::gpu_kernels

// GPU device code of the QK-norm + RoPE kernel (RopeSpec::qk_norm): per-head RMSNorm, rotation and (append) the cache write in one launch (no host code).
//
// Thread mapping: one block per token (grid-stride over tokens). The block first computes the
// token's cos/sin (one entry per pair, shared by all its heads) into shared memory, then each warp
// takes rows (heads) in turn over [Q heads..., K heads...] (appends: [Q..., K..., V...]):
//   1. the warp loads the head into its shared row as floats (coalesced);
//   2. the mean of squares in torch's CUDA order (core/qk_norm.hpp): lane j computes the partial
//      of torch lanes j, j + 32, ...; the halving tree over torch's lanes runs in shared memory,
//      level by level, so every addition is the one torch makes. The exact arithmetic sums in
//      double in index order on one lane (the CPU's order);
//   3. every lane normalises its elements (the weight step of norm_weighted) in place;
//   4. lanes rotate pairs i = lane, lane + 32, ... from the normalised row (pair_places) and write
//      them, with the pass-through elements, to Q or to the cache row.
// The rows stay in shared memory between the steps, so each element is read once from global
// memory and written once.
#pragma once

#include <cstdint>

#include "gpu/rope_kernels.cuh"  // first: it includes vendor.hpp before element.hpp
#include "core/qk_norm.hpp"

namespace posenc::gpu::detail {

/// The mean of squares of x[0..n) as the norm's arithmetic computes it, spread over the warp;
/// every lane returns it. `partial` is the warp's scratch.
__device__ __forceinline__ float norm_mean_square(const KernelNorm& norm, bool is_q, const float* x, int n,
                                                  float* partial, int lane) {
  if (norm.torch_cuda == 0) {
    if (lane == 0) partial[0] = posenc::detail::exact_mean_square(x, n);
    device_sync_warp();
    const float mean = partial[0];
    device_sync_warp();
    return mean;
  }
  posenc::detail::TorchCudaReduceShape shape;
  shape.lanes = is_q ? norm.q_lanes : norm.k_lanes;
  shape.vectorized = norm.vectorized_sum != 0;
  for (int l = lane; l < shape.lanes; l += 32) partial[l] = posenc::detail::torch_cuda_lane_sum(x, n, shape, l);
  for (int o = shape.lanes / 2; o > 0; o /= 2) {
    device_sync_warp();
    for (int l = lane; l < o; l += 32) partial[l] = posenc::detail::add_rn(partial[l], partial[l + o]);
  }
  device_sync_warp();
  const float sum = partial[0];
  device_sync_warp();
  return posenc::detail::mul_rn(sum, is_q ? norm.q_factor : norm.k_factor);
}

/// QK norm, then RoPE (and for Append the KV-cache write) of every row of a call.
template <DType A, Numerics N, bool Append>
__global__ void __launch_bounds__(norm_block_threads) rope_norm_kernel(const NormKernelParams params) {
  using S = storage_t<A>;
  const RopeKernelParams& p = params.rope;
  const KernelNorm& norm = params.norm;
  extern __shared__ unsigned char norm_shared[];
  CosSin* const table = reinterpret_cast<CosSin*>(norm_shared);
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
  float* const row = reinterpret_cast<float*>(norm_shared + p.half * table_entry_bytes) +
                     warp * (norm.head_dim + norm_max_torch_lanes);
  float* const partial = row + norm.head_dim;
  const int head_dim = norm.head_dim;
  const int window_end = p.rotary_offset + p.rotary_dim;

  for (std::int64_t token = blockIdx.x; token < p.tokens; token += gridDim.x) {
    if (token != static_cast<std::int64_t>(blockIdx.x)) __syncthreads();  // the last token's rows read the table
    // The token's cos/sin, one entry per pair (load_table_entry's index: token * half + pair,
    // here with a tile of one token starting at `token`).
    for (int i = static_cast<int>(threadIdx.x); i < p.half; i += static_cast<int>(blockDim.x)) {
      const TableEntry e = load_table_entry(p, token, i);
      if (p.cos_sin != nullptr) {
        table[i] = cache_table_entry<A, N>(p, token, i, e.position);
        continue;
      }
      if (e.position < 0 || e.position >= p.position_limit) record_bad_value(p.fault + position_fault, token, e.position);
      table[i] = N != Numerics::accurate && p.vendor_trig != 0
                     ? cos_sin_vendor_trig<A>(e.inv_freq, e.position, p.attention_factor_f32)
                     : cos_sin<A, N>(e.inv_freq, e.position, p);
    }
    __syncthreads();

    for (int h = warp; h < p.total_heads; h += warps) {
      bool active = true;
      HeadPointers<S> hp;
      if constexpr (Append) hp = append_row_pointers<S>(p, token, h, active);
      else hp = head_pointers<S>(p, token, h);
      if (!active) continue;  // a K or V row of a token without a slot (the warp agrees: one row)
      if (!hp.rotate) {
        // A V row of an append: copied to the cache as it is (no norm).
        if constexpr (Append) {
          for (int j = lane; j < head_dim; j += 32) {
            Packed<S, 1> x;
            x.v[0] = hp.src[j];
            store_cache<A, 1>(static_cast<unsigned char*>(hp.dst), j, x, p.cache.dtype, hp.scale);
          }
        }
        continue;
      }
      // 1. The head into the warp's row.
      for (int j = lane; j < head_dim; j += 32) row[j] = Element<A>::widen(hp.src[j]);
      device_sync_warp();
      // 2.-3. The norm over [first, first + width).
      const bool is_q = h < p.q_heads;
      float* const x = row + norm.first;
      const float mean = norm_mean_square(norm, is_q, x, norm.width, partial, lane);
      const float v = posenc::detail::add_rn(mean, norm.epsilon);
      const float r = norm.torch_cuda != 0 ? rsqrtf(v) : posenc::detail::exact_rsqrt(v);
      const S* const weight = static_cast<const S*>(is_q ? norm.q_weight : norm.k_weight);
      const auto kind = static_cast<QkNormKind>(norm.kind);
      for (int j = lane; j < norm.width; j += 32)
        x[j] = posenc::detail::norm_weighted<A>(kind, posenc::detail::mul_rn(x[j], r), Element<A>::widen(weight[j]));
      device_sync_warp();
      // 4. The rotation from the normalised row, and the other elements.
      const bool to_cache = Append && hp.to_cache;
      const float scale = hp.scale;
      auto store = [&](int j, float value) {
        Packed<S, 1> out;
        out.v[0] = Element<A>::narrow_rounded(value);
        if (to_cache) store_cache<A, 1>(static_cast<unsigned char*>(hp.dst), j, out, p.cache.dtype, scale);
        else static_cast<S*>(hp.dst)[j] = out.v[0];
      };
      for (int i = lane; i < p.half; i += 32) {
        const PairPlaces at = pair_places(static_cast<Pairing>(norm.pairing), p.half, i);
        const Pair rotated = rotate<A, N>(row[p.rotary_offset + at.read_a], row[p.rotary_offset + at.read_b], table[i]);
        store(p.rotary_offset + static_cast<int>(at.write_a), rotated.a);
        store(p.rotary_offset + static_cast<int>(at.write_b), rotated.b);
      }
      // Elements outside the window: normalised ones always, the others out of place (and into a cache row).
      const bool pass_normalised = norm.first == 0 && norm.width == head_dim;
      if (pass_normalised || hp.copy_pass_through) {
        for (int j = lane; j < head_dim; j += 32)
          if (j < p.rotary_offset || j >= window_end) store(j, row[j]);
      }
      device_sync_warp();  // the row is reused by the warp's next head
    }
  }
}

}  // namespace posenc::gpu::detail

// The argument blocks of the GPU RoPE kernels: plain data packed by rope_launch.cu, read by rope_kernels.cuh.
#pragma once

#include <cstdint>

namespace posenc::gpu::detail {

/// Largest block the launcher ever uses (one row of up to 1024 lanes in the generic path).
inline constexpr int max_block_threads = 1024;

/// Largest block of the vectorized instantiations: a row there has at most head_dim / V <= 256
/// lanes (V >= 4), and the launcher packs rows into ~256-thread blocks. The smaller bound lets the
/// compiler give these kernels up to 255 registers (the double-precision sincos and the
/// head-batched loads need them) instead of the 64 a 1024-thread bound allows.
inline constexpr int vector_block_threads = 256;

/// Threads of the frequency-selection pre-pass (one block).
inline constexpr int select_block_threads = 256;

/// The device words of an engine's fault record: two for positions, two for slots (append),
/// three for positions outside a caller's cos/sin cache. All start at all-ones and only ever
/// decrease (atomicMin), so concurrent writers need no ordering. A pair at `first`:
///   [first]     the smallest token index with an out-of-range value;
///   [first + 1] (min(index, 2^32-1) << 32) | biased int32 value, clamped: for the smallest index
///               below 2^32-1 it holds that token's value (saturated to the int32 range).
/// The cos/sin cache's record has a third word, as the limit differs from call to call:
///   [first + 2] (min(index, 2^32-1) << 32) | min(limit, 2^32-1): that token's limit.
/// A pair at scale_fault records a per-head fp8 scale that is not finite and > 0 (KvCacheView::
/// k_head_scales, v_head_scales, QuantizedOutput::head_scales): its "index" scale_fault_index(which,
/// head), its value the scale's float bits.
inline constexpr int fault_words = 9;
inline constexpr int position_fault = 0;
inline constexpr int slot_fault = 2;
inline constexpr int cos_sin_fault = 4;
inline constexpr int scale_fault = 7;
/// Which per-head scale array a scale fault names, in its index's top bits above the head.
inline constexpr int scale_fault_head_bits = 28;
enum class ScaleArray : int { q_out = 0, k = 1, v = 2 };
constexpr std::int64_t scale_fault_index(ScaleArray which, std::int64_t head) {
  return (static_cast<std::int64_t>(which) << scale_fault_head_bits) | head;
}
inline constexpr unsigned long long fault_clear = ~0ull;

/// Division by a launch constant d in [1, 2^31) without the ~25-instruction integer division:
/// n / d == (mulhi(n, mul) + n) >> shift for every n in [0, 2^31) (Granlund-Montgomery with a
/// 33-bit multiplier whose top bit is the `+ n`). The kernel's row and table indices are divided
/// by the head count and the pair count on the decode critical path, before the first load.
struct Divisor {
  std::uint32_t mul = 0;
  std::uint32_t shift = 0;
};

/// The Divisor of d (1 <= d < 2^31; checked by the launcher).
constexpr Divisor make_divisor(std::uint32_t d) {
  std::uint32_t shift = 0;
  while ((std::uint64_t{1} << shift) < d) ++shift;
  const std::uint64_t mul = ((std::uint64_t{1} << 32) * ((std::uint64_t{1} << shift) - d)) / d + 1;
  return {static_cast<std::uint32_t>(mul), shift};
}

/// n / d for n in [0, 2^31) (n + mulhi(n, mul) < 2^32 there, so the sum cannot wrap). constexpr
/// functions are device functions too (nvcc --expt-relaxed-constexpr; clang for HIP).
constexpr std::uint32_t divide(std::uint32_t n, Divisor d) {
  const auto hi = static_cast<std::uint32_t>((std::uint64_t{n} * d.mul) >> 32);
  return (hi + n) >> d.shift;
}

/// Q or K as the kernel sees it. `src == dst` in place. Strides are in elements.
struct KernelTensor {
  void* dst = nullptr;
  const void* src = nullptr;
  std::int64_t dst_token_stride = 0;
  std::int64_t dst_head_stride = 0;
  std::int64_t src_token_stride = 0;
  std::int64_t src_head_stride = 0;
  /// 1 when out of place: pass-through lanes copy the dims outside the rotary window.
  std::int32_t copy_pass_through = 0;
};

/// The KV cache of an append launch (kv_cache.hpp's layouts); unused by plain rotations. The
/// launch's rows are [Q heads..., K heads..., V heads...]: K rows are rotated and V rows copied,
/// both into the cache row of their token's slot, cast to `dtype` on the way. With the mla layout
/// (latent_dim > 0) K is k_pe (one head) and the V "heads" are the latent_dim / head_dim pieces of
/// the latent (v_head_stride = head_dim), so every row is still head_dim elements.
struct KernelCache {
  void* k = nullptr;
  void* v = nullptr;
  const void* v_src = nullptr;  ///< the V input, activation dtype
  std::int64_t v_token_stride = 0;
  std::int64_t v_head_stride = 0;
  const std::int64_t* slots = nullptr;  ///< one per token, device memory; -1 skips the token
  std::int64_t slot_limit = 0;          ///< blocks * block_len
  std::int64_t block_len = 0;
  std::int32_t kv_heads = 0;
  std::int32_t head_dim = 0;
  std::int32_t head_major = 0;  ///< 1: paged_hnd; 0: contiguous / paged_nhd (the same formula)
  /// mla: elements of the latent at the start of each slot's row (k_pe follows it); 0 otherwise.
  /// k and v are then the same tensor.
  std::int32_t latent_dim = 0;
  std::int32_t dtype = 0;       ///< posenc::CacheDType
  float k_scale = 1.0f;         ///< fp8 only
  float v_scale = 1.0f;
  float q_scale = 1.0f;         ///< q_out's
  /// Per-head fp8 scales (kv_heads floats for K and V, q_heads for q_out) replacing k_scale,
  /// v_scale and q_scale when not null; checked on the device (scale_fault).
  const float* k_head_scales = nullptr;
  const float* v_head_scales = nullptr;
  const float* q_head_scales = nullptr;
  /// AppendArgs::q_out: Q's rows go here (whole heads, cache dtype elements) instead of to Q; null:
  /// Q is written as a rotation writes it.
  void* q_out = nullptr;
  std::int64_t q_out_token_stride = 0;  ///< elements
  std::int64_t q_out_head_stride = 0;
};

/// One rotation launch. The block works on tiles of `tile_tokens` consecutive tokens: it first
/// computes the tile's cos/sin (tile_tokens x half entries, into shared memory), then rotates the
/// tile's rows, row = (token, head) over the combined head list [Q heads..., K heads...]. A row is
/// covered by `lanes` threads (threadIdx.x); blockDim.y row slots take rows in turn.
struct RopeKernelParams {
  KernelTensor q;
  KernelTensor k;
  const void* positions = nullptr;
  const float* inv_freq = nullptr;       ///< `half` entries, per pair (rope.hpp PairAxes)
  const std::uint8_t* pair_stream = nullptr;  ///< `half` entries; nullptr: every pair uses stream 0
  std::int64_t stream_stride = 0;        ///< elements between position streams
  unsigned long long* fault = nullptr;   ///< fault_words entries
  std::int64_t tokens = 0;
  std::int64_t tiles = 0;                ///< ceil(tokens / tile_tokens), from the launcher
  std::int64_t position_limit = 0;
  double attention_factor = 1.0;         ///< accurate numerics (double, as the CPU reference)
  float attention_factor_f32 = 1.0f;     ///< hf numerics (float32, as Hugging Face)
  /// hf numerics: 1 = cos/sin by the vendor's float cosf/sinf (HfArithmetic::torch_cuda), 0 =
  /// correctly rounded (HfArithmetic::exact). Unused by accurate numerics and a caller's cache.
  std::int32_t vendor_trig = 0;
  std::int32_t q_heads = 0;
  std::int32_t total_heads = 0;          ///< q_heads + k_heads
  std::int32_t tile_tokens = 1;
  std::int32_t rotary_lanes = 0;         ///< lanes rotating V pairs each
  std::int32_t half = 0;                 ///< rotary_dim / 2
  std::int32_t rotary_dim = 0;
  std::int32_t rotary_offset = 0;
  std::int32_t positions_i64 = 1;
  /// The caller's cos/sin cache (RopeArgs::cos_sin, tensor.hpp), or nullptr: the table entries
  /// come from the spec's frequencies. When present, entry (token, pair i) is elements i and
  /// half + i of row position * cos_sin_row_stride, and inv_freq is not used.
  const void* cos_sin = nullptr;
  std::int64_t cos_sin_row_stride = 0;  ///< elements between rows
  /// min(rows, position_limit): positions outside [0, cos_sin_limit) never index the cache.
  std::int64_t cos_sin_limit = 0;
  std::int32_t cos_sin_dtype = 0;       ///< posenc::DType value of the cache's elements
  Divisor by_heads;   ///< total_heads: row -> token of the tile
  Divisor by_half;    ///< half: table entry -> token of the tile
  Divisor by_batch;   ///< rows of one batch of the tile's blocks (blockDim.y * rows_in_flight_for * gridDim.y)
  KernelCache cache;  ///< append launches only
};

/// Where the register path of a plain rotation (norm_kernels.cuh norm_tokens_in_registers) finds
/// Q's rows (KernelNorm::rows[0]) or K's (rows[1]): byte strides that fit 32 bits, so that a row's
/// address is two 32 x 32 -> 64-bit multiply-adds (launch_shape.hpp NormPathInput::narrow_rows).
struct RegisterRowAddress {
  const void* src = nullptr;
  void* dst = nullptr;
  std::int32_t src_token_bytes = 0;
  std::int32_t src_head_bytes = 0;
  std::int32_t dst_token_bytes = 0;
  std::int32_t dst_head_bytes = 0;
};

/// The QK-norm stage (RopeSpec::qk_norm) of a norm launch (norm_kernels.cuh).
struct KernelNorm {
  const void* q_weight = nullptr;  ///< `width` elements of the activation dtype (device memory)
  const void* k_weight = nullptr;
  std::int32_t kind = 0;           ///< posenc::QkNormKind (rms or rms_one_plus)
  std::int32_t pairing = 0;        ///< posenc::Pairing (a runtime value here: the kernel is not hot enough to specialise)
  std::int32_t first = 0;          ///< first normalised element of a head
  std::int32_t width = 0;          ///< elements normalised
  std::int32_t head_dim = 0;
  std::int32_t torch_cuda = 0;     ///< 1: torch's CUDA sum order, mean factor and rsqrtf; 0: exact
  std::int32_t vectorized_sum = 0; ///< torch reads the row as 4-float vectors (width >= 128)
  std::int32_t q_lanes = 32;       ///< torch's reduce lanes for Q's rows (tokens x q_heads of them)
  std::int32_t k_lanes = 32;       ///< ... and for K's
  float q_factor = 1.0f;           ///< torch's mean factor for Q's row count (core/qk_norm.hpp)
  float k_factor = 1.0f;
  float epsilon = 0.0f;            ///< fl32(epsilon)
  /// 1: rows held in registers, four elements a lane (norm_kernels.cuh norm_tokens_in_registers;
  /// launch_shape.hpp norm_uses_registers says when)
  std::int32_t register_rows = 0;
  /// A plain rotation's register path: Q's rows and K's (an append addresses its rows through
  /// append_row_pointers instead).
  RegisterRowAddress rows[2] = {};
};

/// A norm launch: the rotation's parameters and the norm stage. One block per token (grid-stride),
/// one warp per row (token, head).
struct NormKernelParams {
  RopeKernelParams rope;
  KernelNorm norm;
};

/// Threads of a norm launch's block (norm_block_threads / 32 rows at a time) and the most torch
/// reduce lanes a row can have (core/qk_norm.hpp: width 1024 read as 256 vectors by one block).
inline constexpr int norm_block_threads = 256;
inline constexpr int norm_max_torch_lanes = 256;

/// Rows a warp of the QK-norm kernel holds at once: two on the register path for 16-bit rows of
/// head_dim 128 (each half-warp a row: norm_kernels.cuh norm_tokens_in_registers), else one. The
/// kernel and the launcher's grid (launch_shape.hpp norm_grid) both read it.
constexpr int norm_rows_per_warp(bool register_rows, std::int64_t element_bytes, std::int64_t head_dim) {
  return register_rows && element_bytes == 2 && head_dim == 128 ? 2 : 1;
}

/// Shared memory of a norm launch: with rows held in registers (KernelNorm::register_rows,
/// norm_kernels.cuh norm_tokens_in_registers) two tokens' cos/sin tables of half entries of 8 bytes,
/// the block's current token's and its next token's, then each warp's copy of KernelNorm::rows;
/// otherwise the token's table, then per warp a row of head_dim floats and norm_max_torch_lanes
/// partial sums (at most 45056 bytes for head_dim 1024, within the 48 KiB a launch gets without
/// opting in).
constexpr std::int64_t norm_shared_bytes(std::int64_t half, std::int64_t head_dim, bool rows_in_registers) {
  return rows_in_registers ? 2 * half * 8 + (norm_block_threads / 32) * 2 * std::int64_t{sizeof(RegisterRowAddress)}
                           : half * 8 + (norm_block_threads / 32) * (head_dim + norm_max_torch_lanes) * 4;
}

/// Shared memory a tile's cos/sin table may use (bytes); the launcher sizes tiles to fit.
inline constexpr int max_tile_table_bytes = 16384;

/// Bytes of one entry of that table: a (cos, sin) pair of floats (rope_math.hpp CosSin).
inline constexpr int table_entry_bytes = 8;

/// Rows a thread takes per batch: their loads are all issued before the first of their stores
/// (stores may alias later loads as far as the compiler knows). The vectorized kernels take one
/// row and rely on warps instead: with one row a thread needs few enough registers for four or
/// five blocks of 256 threads per SM, and more resident warps hide the loads better than deeper
/// batches do (docs/PERFORMANCE.md, variants 17-21); the next batch's rows are prefetched into L2.
/// The one-element (unaligned) kernels take four.
constexpr int rows_in_flight_for(bool vectorized) { return vectorized ? 1 : 4; }


/// Which call-dependent table the pre-pass builds.
enum class SelectMode : std::int32_t { longrope = 1, dynamic = 2 };

/// The frequency-selection pre-pass (Scaling::longrope and Scaling::dynamic): one block reduces the
/// call's largest position and writes the table the rotation launch then reads.
struct SelectParams {
  const void* positions = nullptr;
  std::int64_t tokens = 0;
  std::int32_t positions_i64 = 1;
  SelectMode mode = SelectMode::longrope;
  std::int32_t half = 0;
  std::int32_t rotary_dim = 0;
  /// The call-dependent table is used when max(position) + 1 > threshold (longrope: the original
  /// max position embeddings; dynamic: max_position_embeddings).
  std::int64_t threshold = 0;
  const float* init_table = nullptr;  ///< short (longrope) or default (dynamic) table
  const float* long_table = nullptr;  ///< longrope only
  float* out = nullptr;
  // dynamic NTK, as float32 scalars the way Hugging Face's tensor arithmetic rounds them
  float base = 0.0f;              ///< fl32(rope_theta)
  float factor = 1.0f;            ///< fl32(factor)
  float max_positions = 1.0f;     ///< fl32(max_position_embeddings)
  float factor_minus_one = 0.0f;  ///< fl32(factor - 1)   (Python double subtraction, then rounded)
  double exponent = 1.0;          ///< dim / (dim - 2), unrounded (torch's 0-dim `tensor ** scalar` on the CPU)
  /// 1: the grown table as torch computes it on CUDA (HfArithmetic::torch_cuda; select_kernel.cuh),
  /// 0: as on the CPU with each pow correctly rounded (HfArithmetic::exact).
  std::int32_t vendor_arithmetic = 0;
  float inv_max_positions = 1.0f;  ///< fl32(1 / fl32(max_position_embeddings)): ATen CUDA divides by a scalar so
  float inv_rotary_dim = 1.0f;     ///< fl32(1 / fl32(rotary_dim))
  float exponent_f32 = 1.0f;       ///< fl32(dim / (dim - 2)): CUDA's `tensor ** scalar` takes it as float
};

}  // namespace posenc::gpu::detail

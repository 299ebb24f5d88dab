// The launch shape of rope_kernel (grid, block, tile, shared memory) and the QK-norm kernel's choice of path, as pure host functions, unit-tested on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gpu/rope_params.hpp"  // KernelTensor, RegisterRowAddress

namespace posenc::gpu::detail {

/// Threads a block aims at: rows of `lanes` threads, as many rows as fit.
inline constexpr int target_block_threads = 256;

/// A tile aims at this many batches of rows per block: enough heads share each (FP64) cos/sin,
/// and a block's batches, each waiting for its rows, stay few (docs/PERFORMANCE.md, variant 22).
inline constexpr int target_batches_per_tile = 3;

/// What the shape depends on.
struct ShapeInput {
  std::int64_t tokens = 1;         ///< >= 1
  int total_heads = 1;             ///< rows per token (Q + K heads, + V heads in an append)
  int lanes = 1;                   ///< threads per row: rotary lanes, plus pass-through lanes when copying
  int half = 1;                    ///< pairs per head: cos/sin entries per token
  int sm_count = 1;                ///< the device's multiprocessors
  int resident_blocks_per_sm = 1;  ///< of this instantiation at target_block_threads (occupancy)
  int rows_in_flight = 1;          ///< rows a thread takes per batch (rope_params.hpp rows_in_flight_for)
};

struct LaunchShape {
  std::uint32_t grid_x = 1;   ///< tiles (the kernel grid-strides beyond 2^31 - 1)
  std::uint32_t grid_y = 1;   ///< blocks sharing one tile's rows
  std::uint32_t block_x = 1;  ///< lanes of a row
  std::uint32_t block_y = 1;  ///< row groups: rows in flight at once
  int tile_tokens = 1;
  std::int64_t tiles = 1;        ///< ceil(tokens / tile_tokens)
  std::size_t table_bytes = 0;   ///< dynamic shared memory: the tile's cos/sin
};

/// Chooses the launch:
///  - a row (token, head) is `lanes` threads; blocks hold ~target_block_threads threads;
///  - a tile is at most as many tokens as make target_batches_per_tile batches of rows_in_flight
///    rows per row group (large T: many heads share each cos/sin), and no more than the
///    shared-memory table (max_tile_table_bytes) and the kernel's 32-bit row index allow;
///  - within that bound, tiles are sized so that the grid fills whole waves of resident blocks:
///    waves = ceil(tokens / (resident blocks * largest tile)), then the smallest tile that covers
///    the tokens in that many waves (a floor here once launched 410 tiles on 396 resident blocks:
///    a second wave of 14 blocks nearly doubled the time). Decode: one token per block;
///  - when the tiles leave resident blocks idle, a tile's rows are split over grid_y blocks, up to
///    one row per thread: the per-thread chain of rows is the decode latency once the table is done.
LaunchShape choose_shape(const ShapeInput& in);

/// What the QK-norm kernel's path depends on (the launcher fills it from the spec, the call's norm
/// fields and the tensors' alignment).
struct NormPathInput {
  bool torch_cuda = false;         ///< torch's CUDA reduction order (KernelNorm::torch_cuda), not exact's
  bool vectorized_sum = false;     ///< torch reads the rows as 4-float vectors
  int q_lanes = 0;                 ///< torch's reduce lanes over Q's rows, and over K's
  int k_lanes = 0;
  std::int64_t head_dim = 0;
  std::int64_t norm_first = 0;     ///< the normalised span [first, first + width)
  std::int64_t norm_width = 0;
  std::int64_t rotary_offset = 0;
  std::int64_t rotary = 0;         ///< the rotated width, resolved (RopeSpec::rotary(), never 0)
  bool two_halves_or_adjacent = false;  ///< pairing half_split or interleaved
  bool mla = false;                ///< an MLA append (rows of the latent, not heads)
  bool aligned = false;            ///< every row of Q, K, V, the cache and q_out 16-byte aligned, strides too
  /// An append, or a rotation whose Q and K byte strides fit 32 bits, with fewer than 2^31 tokens
  /// (a plain rotation's register path addresses rows with 32-bit multiply-adds: RegisterRowAddress).
  bool narrow_rows = false;
};

/// Whether the QK-norm kernel holds each row in registers (norm_kernels.cuh norm_tokens_in_registers)
/// instead of in shared memory: torch's CUDA reduction with 32 lanes over 4-float vectors for Q
/// and K, so that lane l holds exactly the elements torch's lane l sums; the norm and the rotation
/// over the whole head of 128 or 256; half_split or interleaved pairs; aligned rows; narrow_rows. Otherwise the
/// shared-memory path, which takes every shape.
bool norm_uses_registers(const NormPathInput& in);

/// KernelNorm::rows of a plain rotation: Q's and K's row addressing with byte strides
/// (`element_bytes` a element). False, leaving `rows` as they were, when a byte stride does not fit
/// 32 bits or `tokens` is 2^31 or more (NormPathInput::narrow_rows).
bool register_row_addresses(const KernelTensor& q, const KernelTensor& k, std::int64_t element_bytes,
                            std::int64_t tokens, RegisterRowAddress (&rows)[2]);

/// The QK-norm kernel's grid: x blocks grid-striding over tokens, one whole wave of resident blocks
/// at most (a partial second wave would double the last tokens' time); y blocks sharing each token's
/// rows when the tokens leave resident blocks idle (decode), up to one row per warp (per half-warp
/// where `rows_per_warp` is 2: norm_rows_per_warp).
struct NormGrid {
  std::uint32_t x = 1;
  std::uint32_t y = 1;
};
NormGrid norm_grid(std::int64_t tokens, int total_heads, std::int64_t resident_blocks, int rows_per_warp = 1);

/// QK-norm launches in this process that took the register path (the launcher counts them with
/// count_norm_register_launch, one relaxed atomic add): a test seam, so that a test comparing the
/// two paths can tell that both ran.
std::int64_t norm_register_launches() noexcept;
void count_norm_register_launch() noexcept;

}  // namespace posenc::gpu::detail

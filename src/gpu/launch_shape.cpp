// choose_shape and norm_uses_registers (launch_shape.hpp): plain host arithmetic, compiled in every build so the CPU tests cover it.
#include "gpu/launch_shape.hpp"

#include <algorithm>
#include <atomic>
#include <climits>

#include "gpu/rope_params.hpp"

namespace posenc::gpu::detail {

LaunchShape choose_shape(const ShapeInput& in) {
  LaunchShape s;
  const int lanes = std::max(1, in.lanes);
  const int total_heads = std::max(1, in.total_heads);
  const int half = std::max(1, in.half);
  const int row_groups = std::max(1, target_block_threads / lanes);
  const std::int64_t rows_wanted = std::int64_t{row_groups} * std::max(1, in.rows_in_flight) * target_batches_per_tile;
  std::int64_t max_tile = std::max<std::int64_t>(1, rows_wanted / total_heads);
  max_tile = std::min<std::int64_t>(max_tile, std::max(1, max_tile_table_bytes / (half * table_entry_bytes)));
  max_tile = std::min<std::int64_t>(max_tile, std::max(1, INT_MAX / total_heads));
  const std::int64_t resident_blocks = std::int64_t{std::max(1, in.sm_count)} * std::max(1, in.resident_blocks_per_sm);
  const std::int64_t per_wave = resident_blocks * max_tile;  // fits: both are small
  const std::int64_t waves = (in.tokens + per_wave - 1) / per_wave;
  const std::int64_t tile =
      std::min(max_tile, (in.tokens + resident_blocks * waves - 1) / (resident_blocks * waves));
  s.tile_tokens = static_cast<int>(tile);
  s.table_bytes = static_cast<std::size_t>(tile) * static_cast<std::size_t>(half) * table_entry_bytes;
  s.tiles = (in.tokens + tile - 1) / tile;
  const std::int64_t rows_per_tile = tile * total_heads;
  const std::int64_t splits = std::max<std::int64_t>(
      1, std::min({(rows_per_tile + row_groups - 1) / row_groups, resident_blocks / s.tiles, std::int64_t{65535}}));
  s.grid_x = static_cast<std::uint32_t>(std::min<std::int64_t>(s.tiles, INT_MAX));
  s.grid_y = static_cast<std::uint32_t>(splits);
  s.block_x = static_cast<std::uint32_t>(lanes);
  s.block_y = static_cast<std::uint32_t>(row_groups);
  return s;
}

bool norm_uses_registers(const NormPathInput& in) {
  const bool whole_head = in.norm_first == 0 && in.norm_width == in.head_dim && in.rotary_offset == 0 &&
                          in.rotary == in.head_dim;
  return in.torch_cuda && in.vectorized_sum && in.q_lanes == 32 && in.k_lanes == 32 && whole_head &&
         (in.head_dim == 128 || in.head_dim == 256) && in.two_halves_or_adjacent && !in.mla && in.aligned &&
         in.narrow_rows;
}

bool register_row_addresses(const KernelTensor& q, const KernelTensor& k, std::int64_t element_bytes,
                            std::int64_t tokens, RegisterRowAddress (&rows)[2]) {
  if (tokens > INT_MAX || element_bytes <= 0) return false;
  const auto narrow = [element_bytes](std::int64_t stride, std::int32_t& bytes) {
    if (stride > INT_MAX / element_bytes || stride < INT_MIN / element_bytes) return false;
    bytes = static_cast<std::int32_t>(stride * element_bytes);
    return true;
  };
  RegisterRowAddress out[2];
  const KernelTensor* const tensors[2] = {&q, &k};
  for (int i = 0; i < 2; ++i) {
    const KernelTensor& t = *tensors[i];
    out[i].src = t.src;
    out[i].dst = t.dst;
    if (!narrow(t.src_token_stride, out[i].src_token_bytes) || !narrow(t.src_head_stride, out[i].src_head_bytes) ||
        !narrow(t.dst_token_stride, out[i].dst_token_bytes) || !narrow(t.dst_head_stride, out[i].dst_head_bytes)) {
      return false;
    }
  }
  rows[0] = out[0];
  rows[1] = out[1];
  return true;
}

NormGrid norm_grid(std::int64_t tokens, int total_heads, std::int64_t resident_blocks, int rows_per_warp) {
  NormGrid g;
  const std::int64_t resident = std::max<std::int64_t>(resident_blocks, 1);
  const std::int64_t x = std::min({std::max<std::int64_t>(tokens, 1), resident, std::int64_t{INT_MAX}});
  const int rows = norm_block_threads / 32 * std::max(rows_per_warp, 1);  // a block's rows at once
  const std::int64_t row_groups = (std::max(total_heads, 1) + rows - 1) / rows;  // blocks for one row a warp (or half-warp)
  const std::int64_t y = std::max<std::int64_t>(1, std::min(row_groups, resident / x));
  g.x = static_cast<std::uint32_t>(x);
  g.y = static_cast<std::uint32_t>(std::min<std::int64_t>(y, 65535));
  return g;
}

namespace {
std::atomic<std::int64_t> register_launches{0};
}  // namespace

std::int64_t norm_register_launches() noexcept { return register_launches.load(std::memory_order_relaxed); }

void count_norm_register_launch() noexcept { register_launches.fetch_add(1, std::memory_order_relaxed); }

}  // namespace posenc::gpu::detail

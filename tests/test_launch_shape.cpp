// The GPU launcher's launch shape and QK-norm path (src/gpu/launch_shape.hpp), checked on the host: every token covered, whole waves of resident blocks, the shared-memory and 32-bit bounds, decode splits; which norm shapes hold rows in registers.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <utility>

#include "gpu/launch_shape.hpp"
#include "gpu/rope_params.hpp"
#include "posenc/rope.hpp"

namespace {

using posenc::gpu::detail::choose_shape;
using posenc::gpu::detail::LaunchShape;
using posenc::gpu::detail::ShapeInput;

/// An H100-like device: 132 SMs; a vectorized bf16 rotation of Llama-3-8B heads (32 + 8, head 128).
ShapeInput h100_llama(std::int64_t tokens) {
  ShapeInput in;
  in.tokens = tokens;
  in.total_heads = 40;
  in.lanes = 8;  // 64 pairs / V = 8
  in.half = 64;
  in.sm_count = 132;
  in.resident_blocks_per_sm = 5;
  in.rows_in_flight = posenc::gpu::detail::rows_in_flight_for(true);
  return in;
}

std::string text(const ShapeInput& in) {
  return "T=" + std::to_string(in.tokens) + " heads=" + std::to_string(in.total_heads) + " lanes=" +
         std::to_string(in.lanes) + " half=" + std::to_string(in.half) + " sms=" + std::to_string(in.sm_count) +
         " resident=" + std::to_string(in.resident_blocks_per_sm) + " rows=" + std::to_string(in.rows_in_flight);
}

/// What every shape must satisfy.
void expect_valid(const ShapeInput& in, const LaunchShape& s) {
  SCOPED_TRACE(text(in));
  ASSERT_GE(s.tile_tokens, 1);
  // Tiles cover every token, the last one partly at most.
  EXPECT_EQ(s.tiles, (in.tokens + s.tile_tokens - 1) / s.tile_tokens);
  EXPECT_GE(s.tiles * s.tile_tokens, in.tokens);
  EXPECT_LT((s.tiles - 1) * s.tile_tokens, in.tokens);
  // The grid covers the tiles, or grid-strides over them beyond INT_MAX.
  EXPECT_EQ(s.grid_x, static_cast<std::uint32_t>(std::min<std::int64_t>(s.tiles, INT_MAX)));
  EXPECT_GE(s.grid_y, 1u);
  EXPECT_LE(s.grid_y, 65535u);
  // A row is `lanes` threads; the block stays near 256 threads (one row at least).
  EXPECT_EQ(s.block_x, static_cast<std::uint32_t>(in.lanes));
  EXPECT_EQ(s.block_y, static_cast<std::uint32_t>(std::max(1, posenc::gpu::detail::target_block_threads / in.lanes)));
  // The table fits its shared memory (unless one token alone is larger) and the row index 32 bits.
  EXPECT_EQ(s.table_bytes, static_cast<std::size_t>(s.tile_tokens) * static_cast<std::size_t>(in.half) *
                               posenc::gpu::detail::table_entry_bytes);
  if (s.tile_tokens > 1) {
    EXPECT_LE(s.table_bytes, static_cast<std::size_t>(posenc::gpu::detail::max_tile_table_bytes));
  }
  EXPECT_LE(std::int64_t{s.tile_tokens} * in.total_heads, std::int64_t{INT_MAX});
}

TEST(LaunchShape, DecodeUsesOneTokenPerBlockAndSplitsItsRows) {
  const ShapeInput in = h100_llama(1);
  const LaunchShape s = choose_shape(in);
  expect_valid(in, s);
  EXPECT_EQ(s.tile_tokens, 1);
  EXPECT_EQ(s.grid_x, 1u);
  // 40 rows over 32 row groups: two blocks share them, each row group one row at most.
  EXPECT_EQ(s.grid_y, 2u);
}

// The wave-count bug this function once had: a floor instead of a ceiling made T = 4096 launch 410
// tiles on 396 resident blocks (3 SMs' worth of a second wave). The tiles must fill whole waves.
TEST(LaunchShape, TilesFillWholeWavesOfResidentBlocks) {
  for (const int sms : {66, 108, 132}) {
    for (const int resident : {2, 3, 4, 5}) {
      for (std::int64_t tokens = 1; tokens <= 300000; tokens = tokens * 3 + 1) {
        ShapeInput in = h100_llama(tokens);
        in.sm_count = sms;
        in.resident_blocks_per_sm = resident;
        const LaunchShape s = choose_shape(in);
        expect_valid(in, s);
        const std::int64_t blocks = std::int64_t{sms} * resident;
        // The fewest waves any tile within the bound could need, and this shape's waves.
        const std::int64_t largest = std::max<std::int64_t>(1, 32 * in.rows_in_flight * 3 / in.total_heads);
        const std::int64_t fewest = (tokens + blocks * largest - 1) / (blocks * largest);
        EXPECT_EQ((s.tiles + blocks - 1) / blocks, fewest) << "T=" << tokens << " sms=" << sms << " resident=" << resident;
        // And the smallest tile that does it: one token less per tile would need another wave.
        if (s.tile_tokens > 1) {
          const std::int64_t fewer = (tokens + s.tile_tokens - 2) / (s.tile_tokens - 1);
          EXPECT_GT((fewer + blocks - 1) / blocks, fewest) << "T=" << tokens;
        }
      }
    }
  }
  // T = 4096 on 396 resident blocks with tiles of at most 8 tokens: 683 tiles of 6 tokens fill two
  // waves; the floor (4096 / 792 = 5 tokens) would launch 820 tiles, a third wave of 28 blocks.
  ShapeInput in = h100_llama(4096);
  in.total_heads = 12;
  in.resident_blocks_per_sm = 3;
  const LaunchShape s = choose_shape(in);
  EXPECT_EQ(s.tile_tokens, 6);
  EXPECT_EQ(s.tiles, 683);
  EXPECT_EQ((s.tiles + 395) / 396, 2);
}

TEST(LaunchShape, LargeHeadsAreBoundedByTheSharedMemoryTable) {
  ShapeInput in = h100_llama(1 << 20);
  in.half = 512;  // head_dim 1024: 4 KiB of cos/sin per token
  in.total_heads = 2;
  in.lanes = 64;
  const LaunchShape s = choose_shape(in);
  expect_valid(in, s);
  EXPECT_EQ(s.tile_tokens, posenc::gpu::detail::max_tile_table_bytes / (512 * posenc::gpu::detail::table_entry_bytes));
}

TEST(LaunchShape, HugeCallsGridStrideAndKeepTheRowIndexIn32Bits) {
  ShapeInput in = h100_llama(std::int64_t{1} << 40);
  in.total_heads = 1 << 30;  // tile * heads must stay below 2^31
  const LaunchShape s = choose_shape(in);
  expect_valid(in, s);
  EXPECT_EQ(s.tile_tokens, 1);
  EXPECT_EQ(s.grid_x, static_cast<std::uint32_t>(INT_MAX));
}

// Unaligned (generic) instantiations: one element per lane, four rows in flight, up to 1024 lanes.
TEST(LaunchShape, GenericInstantiationsAndWideRows) {
  for (const int lanes : {1, 3, 64, 128, 256, 512, 1024}) {
    for (const std::int64_t tokens : {1, 7, 1000, 65536}) {
      ShapeInput in = h100_llama(tokens);
      in.lanes = lanes;
      in.rows_in_flight = posenc::gpu::detail::rows_in_flight_for(false);
      in.resident_blocks_per_sm = 1;
      expect_valid(in, choose_shape(in));
    }
  }
}

/// Qwen3-8B's prologue as the launcher describes it: torch_cuda arithmetic, 32-lane vectorized
/// reduction, whole-head norm and rotation of 128, half_split, aligned rows.
posenc::gpu::detail::NormPathInput qwen3_norm() {
  posenc::gpu::detail::NormPathInput in;
  in.torch_cuda = true;
  in.vectorized_sum = true;
  in.q_lanes = 32;
  in.k_lanes = 32;
  in.head_dim = 128;
  in.norm_first = 0;
  in.norm_width = 128;
  in.rotary_offset = 0;
  in.rotary = 128;
  in.two_halves_or_adjacent = true;
  in.aligned = true;
  in.narrow_rows = true;
  return in;
}

TEST(NormPath, CommonShapeHoldsRowsInRegisters) {
  using posenc::gpu::detail::norm_uses_registers;
  EXPECT_TRUE(norm_uses_registers(qwen3_norm()));
  auto in = qwen3_norm();
  in.head_dim = in.norm_width = in.rotary = 256;
  EXPECT_TRUE(norm_uses_registers(in)) << "head_dim 256";
}

// A spec that rotates the whole head leaves RopeSpec::rotary_dim 0; the launcher resolves it
// (RopeSpec::rotary()) before asking. This is what the first version got wrong: it compared the
// unresolved rotary_dim with head_dim, and the register path never ran in the benchmark.
TEST(NormPath, TheLauncherAsksWithTheResolvedRotaryWidth) {
  posenc::RopeSpec spec;
  spec.head_dim = 128;
  ASSERT_EQ(spec.rotary_dim, 0);
  auto in = qwen3_norm();
  in.rotary = spec.rotary();
  EXPECT_TRUE(posenc::gpu::detail::norm_uses_registers(in));
  in.rotary = spec.rotary_dim;
  EXPECT_FALSE(posenc::gpu::detail::norm_uses_registers(in));
}

TEST(NormPath, EveryOtherShapeTakesSharedMemory) {
  using posenc::gpu::detail::NormPathInput;
  using posenc::gpu::detail::norm_uses_registers;
  const std::pair<const char*, void (*)(NormPathInput&)> changes[] = {
      {"exact arithmetic (one lane sums in double)", [](NormPathInput& in) { in.torch_cuda = false; }},
      {"scalar reduction", [](NormPathInput& in) { in.vectorized_sum = false; }},
      {"16 Q lanes (few rows)", [](NormPathInput& in) { in.q_lanes = 16; }},
      {"64 K lanes", [](NormPathInput& in) { in.k_lanes = 64; }},
      {"head_dim 64", [](NormPathInput& in) { in.head_dim = in.norm_width = in.rotary = 64; }},
      {"head_dim 192", [](NormPathInput& in) { in.head_dim = in.norm_width = in.rotary = 192; }},
      {"partial rotary", [](NormPathInput& in) { in.rotary = 64; }},
      {"rotary offset", [](NormPathInput& in) { in.rotary_offset = 64, in.rotary = 64; }},
      {"norm over the rotary span only", [](NormPathInput& in) { in.norm_first = 64, in.norm_width = 64; }},
      {"half_split_2d pairs", [](NormPathInput& in) { in.two_halves_or_adjacent = false; }},
      {"MLA append", [](NormPathInput& in) { in.mla = true; }},
      {"misaligned rows", [](NormPathInput& in) { in.aligned = false; }},
      {"a stride of 2 GiB or more, or 2^31 tokens", [](NormPathInput& in) { in.narrow_rows = false; }},
  };
  for (const auto& [what, change] : changes) {
    NormPathInput in = qwen3_norm();
    change(in);
    EXPECT_FALSE(norm_uses_registers(in)) << what;
  }
}

TEST(NormGrid, OneWaveOfTokensAndRowsSplitAtDecode) {
  using posenc::gpu::detail::norm_grid;
  const std::int64_t resident = 132 * 5;  // an H100-like device at five blocks per SM
  // Qwen3-8B: 32 + 8 heads, eight warps a block: five blocks give every row its own warp.
  auto g = norm_grid(1, 40, resident);
  EXPECT_EQ(g.x, 1u);
  EXPECT_EQ(g.y, 5u);
  g = norm_grid(64, 40, resident);
  EXPECT_EQ(g.x, 64u);
  EXPECT_EQ(g.y, 5u);
  g = norm_grid(200, 40, resident);  // 660 / 200: three blocks a token fit in the wave
  EXPECT_EQ(g.x, 200u);
  EXPECT_EQ(g.y, 3u);
  g = norm_grid(4096, 40, resident);  // one wave grid-striding over the tokens
  EXPECT_EQ(g.x, 660u);
  EXPECT_EQ(g.y, 1u);
  g = norm_grid(std::int64_t{1} << 40, 40, resident);
  EXPECT_EQ(g.x, 660u);
  EXPECT_EQ(g.y, 1u);
  g = norm_grid(1, 2, resident);  // fewer rows than a block's warps: no split
  EXPECT_EQ(g.y, 1u);
  g = norm_grid(1, 40, 0);  // an occupancy of 0 is treated as 1
  EXPECT_EQ(g.x, 1u);
  EXPECT_EQ(g.y, 1u);
  // Half-warp rows (16-bit, head_dim 128, register path): 16 rows a block, three blocks for 40.
  ASSERT_EQ(posenc::gpu::detail::norm_rows_per_warp(true, 2, 128), 2);
  g = norm_grid(1, 40, resident, 2);
  EXPECT_EQ(g.y, 3u);
  g = norm_grid(64, 40, resident, 2);
  EXPECT_EQ(g.x, 64u);
  EXPECT_EQ(g.y, 3u);
  EXPECT_EQ(posenc::gpu::detail::norm_rows_per_warp(true, 4, 128), 1) << "float32 rows take a warp";
  EXPECT_EQ(posenc::gpu::detail::norm_rows_per_warp(true, 2, 256), 1) << "head_dim 256 takes a warp";
  EXPECT_EQ(posenc::gpu::detail::norm_rows_per_warp(false, 2, 128), 1) << "the shared-memory path";
}

// The plain rotation's register path addresses rows with 32-bit byte strides; a stride that does
// not fit (or 2^31 tokens) sends the call to the shared-memory path, leaving the rows untouched.
TEST(NormPath, RegisterRowAddressesAreByteStridesOf32Bits) {
  using posenc::gpu::detail::KernelTensor;
  using posenc::gpu::detail::RegisterRowAddress;
  using posenc::gpu::detail::register_row_addresses;
  alignas(16) static unsigned char q_data[64];
  alignas(16) static unsigned char k_data[64];
  KernelTensor q;
  q.src = q_data;
  q.dst = q_data;
  q.src_token_stride = q.dst_token_stride = 32 * 128;
  q.src_head_stride = q.dst_head_stride = 128;
  KernelTensor k = q;
  k.src = k_data;
  k.dst = k_data + 16;
  k.src_token_stride = 8 * 128;
  k.dst_token_stride = 3 * 8 * 128;  // e.g. K inside a fused QKV output
  RegisterRowAddress rows[2];
  ASSERT_TRUE(register_row_addresses(q, k, 2, 65536, rows));
  EXPECT_EQ(rows[0].src, q_data);
  EXPECT_EQ(rows[1].dst, k_data + 16);
  EXPECT_EQ(rows[0].src_token_bytes, 2 * 32 * 128);
  EXPECT_EQ(rows[0].dst_head_bytes, 2 * 128);
  EXPECT_EQ(rows[1].src_token_bytes, 2 * 8 * 128);
  EXPECT_EQ(rows[1].dst_token_bytes, 2 * 3 * 8 * 128);

  const RegisterRowAddress before[2] = {rows[0], rows[1]};
  auto unchanged = [&] {
    return rows[0].src_token_bytes == before[0].src_token_bytes && rows[1].dst_token_bytes == before[1].dst_token_bytes &&
           rows[1].src == before[1].src;
  };
  KernelTensor wide = k;
  wide.dst_token_stride = std::int64_t{1} << 30;  // 2 GiB of bf16 between tokens
  EXPECT_FALSE(register_row_addresses(q, wide, 2, 2, rows));
  EXPECT_TRUE(unchanged());
  wide.dst_token_stride = (std::int64_t{1} << 30) - 1;  // 2^31 - 2 bytes: fits
  EXPECT_TRUE(register_row_addresses(q, wide, 2, 2, rows));
  EXPECT_EQ(rows[1].dst_token_bytes, (std::int64_t{1} << 31) - 2);
  EXPECT_FALSE(register_row_addresses(q, k, 2, std::int64_t{1} << 31, rows)) << "2^31 tokens";
  EXPECT_TRUE(register_row_addresses(q, k, 2, (std::int64_t{1} << 31) - 1, rows));
  KernelTensor negative = q;
  negative.src_head_stride = -128;
  ASSERT_TRUE(register_row_addresses(negative, k, 4, 1, rows));
  EXPECT_EQ(rows[0].src_head_bytes, -512);
  negative.src_head_stride = std::int64_t{INT32_MIN} / 4 - 1;
  EXPECT_FALSE(register_row_addresses(negative, k, 4, 1, rows));
}

}  // namespace

// A GLM-4 attention layer on posenc's GPU engine: cuBLAS fused QKV, device position tracker, RoPE + paged KV-cache append, GQA attention, cuBLAS o_proj.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "glm4_attention_layer.hpp"
#include "posenc/counters.hpp"
#include "posenc/dtype.hpp"
#include "posenc/glm.hpp"
#include "posenc/gpu.hpp"

namespace posenc::examples {

/// How the GPU layer stores things. The shape comes from GlmAttentionConfig (batch sequences of
/// at most max_len tokens), shared with the CPU layer.
struct GlmGpuOptions {
  /// Weights, activations and the KV cache: DType::f32 or DType::bf16 (GEMMs and attention
  /// accumulate in float32 either way).
  DType dtype = DType::f32;
  /// Cache slots per page. 8 with the fixture schedule: sequence 1's 9-token prefill spans two
  /// pages in one step, and every sequence crosses page boundaries while decoding.
  std::int64_t page_size = 8;
  /// Seeds the shuffle of the free-page list, so a sequence's pages are scattered over the cache
  /// (a contiguous assignment would hide a wrong block-table lookup).
  std::uint32_t page_seed = 2024;
  int device = 0;  ///< CUDA device ordinal
  /// Whose pow/cos/sin the rotation reproduces. The default follows torch on the GPU (CUDA's
  /// float cosf/sinf); the fixture test asks for `exact` to compare the cache with the CPU engine
  /// bit for bit (the CPU engine cannot reproduce CUDA's cos/sin).
  HfArithmetic hf_arithmetic = HfArithmetic::engine;
};

/// One GLM attention layer on the GPU with a paged KV cache [pages, page_size, kv_heads, head_dim]
/// (CacheLayout::paged_nhd, cache dtype = activation dtype) and a gpu::GpuPositionTracker.
///
/// Per step: the host (the scheduler's part) turns the entries into device-tracker entries,
/// hands out pages, builds the slot mapping with slots_from_block_table and uploads them; the
/// device then runs tracker step -> bias rows + QKV GEMM -> GpuEngine::append (positions
/// straight from the tracker) -> paged attention -> o_proj GEMM, all on one stream, and the step
/// ends with tracker.check and engine.check (they synchronize; fine for an example).
///
/// Host inputs and outputs are float32; with bf16 they are rounded to bf16 on the way in
/// (nearest even) and widened exactly on the way out.
class GlmAttentionGpuLayer {
 public:
  /// Opens the device, uploads the weights (fused to one [q + 2 kv, hidden] matrix, as the CPU
  /// layer), creates the cuBLAS handle and allocates every buffer for the largest step
  /// (batch * max_len tokens). Counters with device timing are on. Throws posenc::Error
  /// (unsupported: no GPU or a dtype other than f32/bf16; vendor: a CUDA/cuBLAS call failed,
  /// naming the call and the vendor's error string).
  GlmAttentionGpuLayer(GlmAttentionConfig config, const GlmAttentionWeights& weights, GlmGpuOptions options = {});
  ~GlmAttentionGpuLayer();
  GlmAttentionGpuLayer(GlmAttentionGpuLayer&&) noexcept;
  GlmAttentionGpuLayer& operator=(GlmAttentionGpuLayer&&) noexcept;
  GlmAttentionGpuLayer(const GlmAttentionGpuLayer&) = delete;
  GlmAttentionGpuLayer& operator=(const GlmAttentionGpuLayer&) = delete;

  /// Starts tracking `seq_id` (length 0) in the next free tracker slot; pages are handed out
  /// as it grows. Throws when all `batch` slots are taken, the id is negative or tracked already.
  void add_sequence(std::int64_t seq_id);
  bool contains(std::int64_t seq_id) const noexcept;
  /// Tokens of `seq_id` in the cache (the host's mirror of the device tracker's length).
  std::int64_t length(std::int64_t seq_id) const;

  /// Runs one step (same contract as GlmAttentionLayer::step): `hidden` holds sum(new_tokens)
  /// rows of hidden_size values in entry order, `out` receives the attention output (after
  /// o_proj). Returns the positions the device tracker gave the step's tokens (copied back).
  /// Checked on the host before anything runs (committing nothing when it throws): known,
  /// distinct sequences, new_tokens >= 1, no sequence past max_len, sizes. Device faults
  /// (tracker or engine) are thrown by the checks at the end of the step.
  glm::PositionIds step(std::span<const glm::StepEntry> entries, std::span<const float> hidden,
                        std::span<float> out);

  /// The physical pages of `seq_id` in order (its block-table row, assigned pages only).
  std::vector<std::int64_t> pages(std::int64_t seq_id) const;
  std::int64_t page_count() const noexcept;  ///< pages in the cache

  /// The K / V cache rows of `seq_id` gathered through its block table, [length, kv_heads,
  /// head_dim], as float (bf16 widened exactly). Copies the cache back and synchronizes.
  std::vector<float> k_cache(std::int64_t seq_id) const;
  std::vector<float> v_cache(std::int64_t seq_id) const;
  /// The fused QKV buffer of the last step, [tokens, (q_heads + 2 kv_heads) * head_dim], as
  /// float: Q as the append rotated it in place, K and V as projected (the append reads K and V,
  /// it does not write them). Copies back and synchronizes. For tests.
  std::vector<float> last_qkv() const;

  /// The engine's counters (calls and tokens of the appends, bytes, device time of each append).
  OperationCounters counters() const;

  const GlmAttentionConfig& config() const noexcept;
  const GlmGpuOptions& options() const noexcept;
  const gpu::Device& device() const noexcept;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace posenc::examples

// A GLM-4 attention layer on posenc's CPU engine: fused QKV, partial interleaved RoPE + KV-cache append, GQA attention, o_proj.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "posenc/cpu.hpp"
#include "posenc/glm.hpp"
#include "posenc/rope.hpp"

namespace posenc::examples {

/// Shape of the layer (HF GlmConfig names) and of its contiguous KV cache.
struct GlmAttentionConfig {
  std::int64_t hidden_size = 64;
  std::int64_t q_heads = 4;   ///< num_attention_heads
  std::int64_t kv_heads = 2;  ///< num_key_value_heads (GQA: q_heads % kv_heads == 0)
  std::int64_t head_dim = 16;
  double partial_rotary_factor = 0.5;  ///< GLM rotates the first half of each head
  double rope_theta = 10000.0;
  std::int64_t batch = 4;     ///< cache blocks: sequences the layer can hold at once
  std::int64_t max_len = 48;  ///< cache rows per sequence
};

/// Parameters in nn.Linear's layout (weight [out, in], row-major). GLM has Q/K/V biases, no o_proj bias.
struct GlmAttentionWeights {
  std::vector<float> q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, o_weight;

  /// Deterministic pseudo-random weights (for running the example without fixtures).
  static GlmAttentionWeights random(const GlmAttentionConfig& config, std::uint32_t seed);
};

/// The rotation GLM's HF code applies: interleaved pairs over the first
/// head_dim * partial_rotary_factor elements, default frequencies, HF-compatible rounding.
RopeSpec glm_rope_spec(const GlmAttentionConfig& config);

/// One attention layer with its own KV cache [batch, max_len, kv_heads, head_dim] (float32) and
/// a glm::PositionTracker. A step takes any mix of prefill chunks and decode tokens.
class GlmAttentionLayer {
 public:
  GlmAttentionLayer(GlmAttentionConfig config, GlmAttentionWeights weights, CpuOptions options = {});

  /// Starts tracking `seq_id` (length 0) and gives it the next free cache block; throws when the
  /// cache has no free block or the id is tracked already.
  void add_sequence(std::int64_t seq_id);

  /// Runs one step. `hidden` holds sum(new_tokens) rows of hidden_size values in entry order;
  /// `out` receives the attention output (after o_proj) in the same order. Returns the positions
  /// the tracker gave the step's tokens. Throws (committing nothing) when a sequence would
  /// outgrow max_len or the sizes disagree.
  glm::PositionIds step(std::span<const glm::StepEntry> entries, std::span<const float> hidden,
                        std::span<float> out);

  const GlmAttentionConfig& config() const noexcept { return config_; }
  const glm::PositionTracker& tracker() const noexcept { return tracker_; }
  bool contains(std::int64_t seq_id) const { return tracker_.contains(seq_id); }
  std::int64_t cache_block(std::int64_t seq_id) const;
  /// The K cache [batch, max_len, kv_heads, head_dim]: rotated keys as CpuEngine::append wrote them.
  std::span<const float> k_cache() const noexcept { return k_cache_; }

 private:
  GlmAttentionConfig config_;
  std::vector<float> qkv_weight_;  // [q_heads + 2 kv_heads] * head_dim rows of hidden_size: Q, K, V fused
  std::vector<float> qkv_bias_;
  std::vector<float> o_weight_;
  CpuEngine engine_;
  glm::PositionTracker tracker_;
  std::vector<std::int64_t> blocks_;  // blocks_[tracker slot] = cache block of that sequence
  std::vector<float> k_cache_;
  std::vector<float> v_cache_;
};

/// The fixtures scripts/golden/glm_attention.py writes (one row per token, steps concatenated).
struct GlmAttentionFixture {
  GlmAttentionWeights weights;
  std::int64_t tokens = 0;
  std::vector<float> hidden;            ///< [tokens, hidden_size]
  std::vector<std::int64_t> positions;  ///< [tokens]
  std::vector<std::int64_t> seq_ids;    ///< [tokens]
  std::vector<std::int64_t> steps;      ///< [tokens], non-decreasing
  std::vector<float> output;            ///< [tokens, hidden_size]
  std::vector<float> k_proj;            ///< [tokens, kv_heads * head_dim], HF's pre-RoPE K
  std::vector<float> k_rope;            ///< [tokens, kv_heads * head_dim], HF's cached (rotated) K

  /// Reads `dir`; throws posenc::Error naming the file when one is missing or has another shape.
  static GlmAttentionFixture load(const std::string& dir, const GlmAttentionConfig& config);
};

/// One step of a schedule: its entries and the range [first, first + count) of its token rows.
struct ScheduleStep {
  std::vector<glm::StepEntry> entries;
  std::int64_t first = 0;
  std::int64_t count = 0;
};

/// Splits per-token (step, seq_id) columns into steps; consecutive tokens of one sequence within
/// a step form one entry (a prefill chunk or a decode token).
std::vector<ScheduleStep> schedule_from_tokens(std::span<const std::int64_t> steps,
                                               std::span<const std::int64_t> seq_ids);

/// The schedule the fixtures use (prefill 5/9/3, 32 decode steps, a 4-token join at step 10),
/// for running without fixtures.
std::vector<ScheduleStep> default_schedule();

}  // namespace posenc::examples

// Model configuration ingestion: a Hugging Face config.json (transformers 4.x/5.x, GLM remote code) to RopeSpecs.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "posenc/rope.hpp"

namespace posenc {

/// What posenc needs to know of a model, resolved from its config.json.
struct ModelConfig {
  std::string model_type;        ///< "glm", "llama", "chatglm", ...
  std::string source;            ///< file path or "<embedded:name>"
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t max_position_embeddings = 0;
  /// MLA models (DeepSeek-V2/V3, Kimi K2, GLM's MLA models; head_dim is then qk_rope_head_dim):
  /// qk_nope_head_dim and kv_lora_rank (the mla cache's latent_dim, kv_cache.hpp) when the config
  /// gives them; 0 otherwise.
  std::int64_t mla_nope_head_dim = 0;
  std::int64_t mla_latent_dim = 0;
  /// One spec per attention layer type; plain models have the single key "default", layer-typed
  /// models (Gemma3, transformers 5.x keyed rope_parameters) have e.g. "full_attention" and
  /// "sliding_attention".
  std::map<std::string, RopeSpec> rope;

  /// The spec for `layer_type` ("default" for single-spec models); throws naming the key if absent.
  const RopeSpec& spec(const std::string& layer_type = "default") const;
};

/// Limits of config ingestion (docs/CLI.md, "Input limits"); exceeding one is posenc::Error(config)
/// naming the limit. Real configs are a few KB deep at most 5 levels, with at most a few hundred heads.
inline constexpr std::int64_t max_config_bytes = std::int64_t{16} << 20;  ///< config.json text size
inline constexpr int max_config_depth = 64;            ///< nested JSON objects and arrays
inline constexpr std::int64_t max_heads = 65536;       ///< num_attention_heads, num_key_value_heads

/// Parses config.json text. Unknown or contradictory rope keys give posenc::Error(config) naming
/// the key and the value. `source` labels messages.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source = "<text>");

/// Reads and parses a config.json file (posenc::Error(io) when unreadable).
ModelConfig load_model_config(const std::string& path);

/// The configuration `posenc run` uses when none is given: GLM-4-9B-chat (THUDM/glm-4-9b-chat,
/// remote-code keys: kv_channels 128, rope_ratio 500, seq_length 131072, multi_query_group_num 2).
const char* default_model_config_json() noexcept;

}  // namespace posenc

// Per-model knowledge load_model_config applies where config.json is silent: each model_type's pairing, numerics, default theta, partial rotary factor, MLA and M-RoPE rules (core-internal).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "posenc/rope.hpp"

namespace posenc::detail::config {

/// Smallest position_limit a loaded spec gets: up to 2^24 every position converts to float32
/// exactly, as HF's float32 angle computation requires.
inline constexpr std::int64_t min_position_limit = std::int64_t{1} << 24;

/// What a model_type implies when config.json does not say it.
struct Family {
  std::string_view type;
  Pairing pairing = Pairing::half_split;
  Numerics numerics = Numerics::hf_compatible;
  double theta = 10000.0;        ///< default_theta (HF 5.x), the global one for layer-typed models
  double local_theta = 0.0;      ///< Gemma3: default theta of sliding_attention layers (0: none)
  double partial = 1.0;          ///< default partial_rotary_factor
  bool mla = false;              ///< rope head is qk_rope_head_dim
  bool rope_interleave = false;  ///< pairing from `rope_interleave` (default true): DeepSeek-V3 style
  // Structural defaults for configs that rely on the HF class defaults (Gemma3's text_config).
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t max_pos = 0;
  // M-RoPE families (docs/NUMERICS.md §2.2): the sections transformers uses when the rope dict
  // has no mrope_section (all zero: none, the config must give them), and Qwen3-VL's interleaved
  // assignment, which transformers applies whatever `mrope_interleaved` says.
  bool mrope = false;
  std::array<std::int64_t, 3> mrope_default{};
  bool mrope_interleaved = false;
  // QK norm (RopeSpec::qk_norm): the form of the model's per-head q_norm/k_norm; with
  // `qk_norm_key` the config's boolean of that name switches it on (default off), else it is
  // always on. Epsilon: rms_norm_eps, default `norm_eps` (the HF config class's).
  QkNormKind qk_norm = QkNormKind::none;
  std::string_view qk_norm_key{};
  double norm_eps = 1e-6;
};

/// The family of a model_type; Llama-like defaults (rotate_half, theta 10000) for the others.
const Family& family_of(std::string_view type);

/// "gemma3_text" -> "gemma3": text sub-configs of multimodal models share the family's rules.
std::string family_name(std::string type);

}  // namespace posenc::detail::config

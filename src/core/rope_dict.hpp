// One rope dictionary of a config.json (rope_scaling / rope_parameters, or one layer type of it) read against the scheme registry, and the RopeSpec it gives with the model-level values (core-internal).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/config_json.hpp"
#include "core/model_families.hpp"
#include "posenc/rope.hpp"

namespace posenc::detail::config {

/// The keys of one rope dict, as given (absent: nullopt). Only the keys of its scheme's registry
/// row (and the common ones) are accepted, so a present key belongs to that scheme.
struct RopeDict {
  Scaling scaling = Scaling::none;
  std::string rope_type = "default";
  std::optional<double> theta;
  std::optional<double> partial;
  std::optional<double> factor;
  std::optional<double> attention_factor;
  std::optional<double> beta_fast;
  std::optional<double> beta_slow;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  std::optional<double> low_freq_factor;
  std::optional<double> high_freq_factor;
  std::optional<std::int64_t> original_max;
  std::optional<bool> truncate;
  std::optional<std::vector<double>> short_factor;
  std::optional<std::vector<double>> long_factor;
  std::optional<std::vector<std::int64_t>> mrope_section;
  std::optional<bool> mrope_interleaved;
};

/// Reads a rope dict: its scheme from rope_type (or the legacy `type`), every key checked against
/// the scheme's row (unknown keys and missing required ones are errors naming the key).
RopeDict read_rope_dict(const Node& d);

/// The model-level values a spec is built with.
struct Model {
  const Node* cfg = nullptr;  // the language model's keys (top level or text_config)
  const Family* family = nullptr;
  std::int64_t head_dim = 0;
  std::int64_t max_pos = 0;
  Pairing pairing = Pairing::half_split;
  std::optional<double> theta;     // top-level rope_theta (or rotary_emb_base)
  std::optional<double> partial;   // top-level partial_rotary_factor (or rotary_pct)
  std::optional<std::int64_t> original_max;  // top-level original_max_position_embeddings
  std::optional<std::int64_t> rotary_dim;    // GPT-J's explicit rotary_dim
};

/// Turns a rope dict into a validated spec. `dict_node` names keys in messages; `keyed` is true
/// for a dict taken from a layer-type-keyed rope_parameters; `default_theta` is the family's for
/// this layer.
RopeSpec make_spec(const Model& m, const RopeDict& d, const Node& dict_node, bool keyed, double default_theta);

}  // namespace posenc::detail::config

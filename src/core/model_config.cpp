// Model configuration ingestion: a Hugging Face config.json (transformers 4.x/5.x, GLM remote code) to RopeSpecs.
//
// Resolution follows transformers 5.17 (docs/NUMERICS.md §6):
// * rope parameters come from `rope_scaling` (4.x) or `rope_parameters` (5.x; a single dict or a dict
//   keyed by layer type). The legacy `type` key names the scheme when `rope_type` is absent.
// * rope_theta: the dict's value, else the top-level `rope_theta`, else the model's default theta
//   (not always 10000). partial_rotary_factor: the dict's value wins over the top-level one (5.17).
// * llama3/yarn/longrope: original_max_position_embeddings comes from a top-level key when the
//   config has one (Phi-3 style; a single dict only), else from the dict, else max_position_embeddings.
// * yarn/longrope without `factor`: factor = max_position_embeddings / original_max_position_embeddings.
// * rotary dim = int(head_dim * partial_rotary_factor).
// Unknown scheme names, unknown keys inside the rope dict, contradictory spellings and values of
// the wrong JSON type are errors naming the key and the value: a silently misread config gives a
// wrong model, not a crash.
//
// MLA models (DeepSeek-V2/V3, Kimi-K2, GLM-4.7-Flash, GLM-5): the spec describes the rope part of
// a head only (head_dim = qk_rope_head_dim, fully rotated); the nope part is concatenated by the
// attention code and never rotated.
//
// position_limit is max(2^24, max_position_embeddings): dynamic/yarn/longrope models are used past
// max_position_embeddings, and up to 2^24 every position converts to float32 exactly, as HF's
// float32 angle computation requires (beyond it neighbouring positions share an angle).
#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/schemes.hpp"
#include "core/text_detail.hpp"
#include "posenc/error.hpp"
#include "posenc/model_config.hpp"

namespace posenc {
namespace {

using json = nlohmann::json;
using detail::number_text;

constexpr std::int64_t min_position_limit = std::int64_t{1} << 24;

// ---- per-model knowledge -----------------------------------------------------------------------

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
};

constexpr Family families[] = {
    // GLM: HF Glm/Glm4/Glm4v pair adjacent elements; Glm4Moe/Glm4vMoe use rotate_half. The GLM
    // configs force partial_rotary_factor 0.5 by default (Glm4v does not).
    {.type = "glm", .pairing = Pairing::interleaved, .partial = 0.5},
    {.type = "glm4", .pairing = Pairing::interleaved, .partial = 0.5},
    {.type = "glm4v", .pairing = Pairing::interleaved, .mrope = true, .mrope_default = {8, 12, 12}},
    {.type = "glm4_moe", .partial = 0.5},
    {.type = "glm4v_moe", .partial = 0.5, .mrope = true, .mrope_default = {8, 12, 12}},
    {.type = "glm4_moe_lite", .mla = true, .rope_interleave = true},
    {.type = "glm_moe_dsa", .mla = true, .rope_interleave = true},
    {.type = "deepseek_v3", .mla = true, .rope_interleave = true},
    {.type = "kimi_k2", .mla = true, .rope_interleave = true},
    // DeepSeek-V2 and Llama4 use the complex-multiplication form: adjacent pairs, float32 rotation
    // (HF keeps cos/sin in complex64, which hf_fp32_apply approximates by rounding them first).
    {.type = "deepseek_v2", .pairing = Pairing::interleaved, .numerics = Numerics::hf_fp32_apply, .mla = true},
    {.type = "llama4", .pairing = Pairing::interleaved, .numerics = Numerics::hf_fp32_apply, .theta = 5e5},
    {.type = "gptj", .pairing = Pairing::interleaved},
    {.type = "cohere", .pairing = Pairing::interleaved, .numerics = Numerics::hf_fp32_apply, .theta = 5e5},
    {.type = "cohere2", .pairing = Pairing::interleaved, .numerics = Numerics::hf_fp32_apply},
    {.type = "gpt_neox", .partial = 0.25},
    {.type = "qwen2_vl", .theta = 1e6, .mrope = true},
    {.type = "qwen2_5_vl", .theta = 1e6, .mrope = true},
    {.type = "qwen3_vl", .theta = 5e6, .mrope = true, .mrope_default = {24, 20, 20}, .mrope_interleaved = true},
    {.type = "qwen3_vl_moe", .theta = 5e6, .mrope = true, .mrope_default = {24, 20, 20}, .mrope_interleaved = true},
    {.type = "mixtral", .theta = 1e6},
    {.type = "gpt_oss", .theta = 1.5e5},
    {.type = "gemma3",
     .theta = 1e6,
     .local_theta = 1e4,
     .heads = 8,
     .kv_heads = 4,
     .head_dim = 256,
     .max_pos = 131072},
};

/// Llama-like defaults (rotate_half, theta 10000): llama, mistral, qwen2, qwen3, phi, phi3, ...
constexpr Family llama_like{};

const Family& family_of(std::string_view type) {
  for (const Family& f : families)
    if (f.type == type) return f;
  return llama_like;
}

/// "gemma3_text" -> "gemma3": text sub-configs of multimodal models share the family's rules.
std::string family_name(std::string type) {
  constexpr std::string_view suffix = "_text";
  if (type.size() > suffix.size() && type.ends_with(suffix)) type.resize(type.size() - suffix.size());
  return type;
}

// ---- typed access with messages that name the key and the value --------------------------------

/// A JSON value as quoted in a message: its first 80 characters, escaped (message_excerpt).
/// Invalid UTF-8 inside strings is replaced instead of thrown on; the nesting depth is bounded by
/// max_config_depth, so dump() cannot exhaust the stack.
std::string value_text(const json& v) {
  return message_excerpt(v.dump(-1, ' ', false, json::error_handler_t::replace));
}

/// One JSON object of the config, with its key prefix ("", "text_config.", "rope_scaling.").
class Node {
 public:
  Node(const json& obj, std::string prefix, const std::string& source)
      : obj_(&obj), prefix_(std::move(prefix)), source_(&source) {}

  const json& raw() const { return *obj_; }
  const std::string& source() const { return *source_; }
  /// "rope_scaling" for the node of "rope_scaling." keys.
  std::string name() const { return prefix_.empty() ? std::string("top level") : prefix_.substr(0, prefix_.size() - 1); }
  std::string key(std::string_view k) const { return prefix_ + std::string(k); }
  /// key(k) as quoted in a message (keys come from the file: escaped and cut).
  std::string key_text(std::string_view k) const { return message_excerpt(key(k)); }

  /// Present and not null (HF treats null as absent).
  bool has(std::string_view k) const {
    const auto it = obj_->find(k);
    return it != obj_->end() && !it->is_null();
  }

  [[noreturn]] void fail(std::string_view k, const std::string& problem) const {
    const auto it = obj_->find(k);
    const std::string value = it == obj_->end() ? "(not given)" : value_text(*it);
    throw Error(ErrorKind::config, "model config " + source() + ": key '" + key_text(k) + "' = " + value + ": " + problem);
  }

  [[noreturn]] void fail_missing(std::string_view k, const std::string& why) const {
    throw Error(ErrorKind::config, "model config " + source() + ": key '" + key_text(k) + "' is missing: " + why);
  }

  std::optional<double> number(std::string_view k) const {
    if (!has(k)) return std::nullopt;
    const json& v = obj_->at(std::string(k));
    if (!v.is_number()) fail(k, "expected a number");
    const double d = v.get<double>();
    if (!std::isfinite(d)) fail(k, "expected a finite number");
    return d;
  }

  std::optional<std::int64_t> integer(std::string_view k) const {
    if (!has(k)) return std::nullopt;
    const json& v = obj_->at(std::string(k));
    if (v.is_number_unsigned()) {
      const auto u = v.get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) fail(k, "does not fit in 64 bits");
      return static_cast<std::int64_t>(u);
    }
    if (v.is_number_integer()) return v.get<std::int64_t>();
    if (v.is_number_float()) {
      // 4096.0 is accepted (Python would use it as is); 4096.5 is not an integer.
      const double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 0x1p62) return static_cast<std::int64_t>(d);
    }
    fail(k, "expected an integer");
  }

  std::optional<bool> boolean(std::string_view k) const {
    if (!has(k)) return std::nullopt;
    const json& v = obj_->at(std::string(k));
    if (!v.is_boolean()) fail(k, "expected true or false");
    return v.get<bool>();
  }

  std::optional<std::string> string(std::string_view k) const {
    if (!has(k)) return std::nullopt;
    const json& v = obj_->at(std::string(k));
    if (!v.is_string()) fail(k, "expected a string");
    return v.get<std::string>();
  }

  std::optional<std::vector<double>> numbers(std::string_view k) const {
    if (!has(k)) return std::nullopt;
    const json& v = obj_->at(std::string(k));
    if (!v.is_array()) fail(k, "expected a list of numbers");
    std::vector<double> out;
    out.reserve(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_number() || !std::isfinite(v[i].get<double>()))
        throw Error(ErrorKind::config, "model config " + source() + ": key '" + key_text(k) + "[" + std::to_string(i) +
                                           "]' = " + value_text(v[i]) + ": expected a finite number");
      out.push_back(v[i].get<double>());
    }
    return out;
  }

  /// The object under `k`, or nullptr when absent or null.
  const json* object(std::string_view k) const {
    if (!has(k)) return nullptr;
    const json& v = obj_->at(std::string(k));
    if (!v.is_object()) fail(k, "expected a JSON object");
    return &v;
  }

  /// A positive integer that must be present (`why` says what needs it).
  std::int64_t positive(std::string_view k, std::optional<std::int64_t> fallback, const std::string& why) const {
    const std::optional<std::int64_t> v = integer(k);
    if (!v) {
      if (fallback) return *fallback;
      fail_missing(k, why);
    }
    if (*v <= 0) fail(k, "must be > 0");
    return *v;
  }

  /// A head count: positive(), and at most max_heads.
  std::int64_t heads(std::string_view k, std::optional<std::int64_t> fallback, const std::string& why) const {
    const std::int64_t v = positive(k, fallback, why);
    if (v > max_heads) fail(k, "exceeds the limit of " + number_text(max_heads) + " heads");
    return v;
  }

 private:
  const json* obj_;
  std::string prefix_;
  const std::string* source_;
};

/// Two spellings of one value (e.g. rope_theta / rotary_emb_base): either, or both when equal.
std::optional<double> either_number(const Node& n, std::string_view a, std::string_view b) {
  const std::optional<double> va = n.number(a);
  const std::optional<double> vb = n.number(b);
  if (va && vb && *va != *vb)
    n.fail(b, "contradicts '" + n.key_text(a) + "' = " + number_text(*va) + " (two spellings of one value)");
  return va ? va : vb;
}

// ---- one rope dict (rope_scaling / rope_parameters or one of its layer types) -------------------

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

// Keys every scheme accepts: the scheme name, theta and partial factor (5.x moves them into the
// dict) and the M-RoPE layout (Qwen2-VL/GLM-4V/Qwen3-VL: RopeSpec::mrope_section, mrope_interleaved).
constexpr std::string_view common_keys[] = {"rope_type", "type", "rope_theta", "partial_rotary_factor",
                                             "mrope_section", "mrope_interleaved"};

/// "default, mrope, linear, ...": every rope_type the registry knows.
std::string scheme_names() {
  std::string s;
  for (const detail::SchemeRow& row : detail::scheme_rows())
    for (std::string_view name : row.rope_types) s += (s.empty() ? "" : ", ") + std::string(name);
  return s;
}

RopeDict read_rope_dict(const Node& d) {
  RopeDict r;
  const std::optional<std::string> rope_type = d.string("rope_type");
  const std::optional<std::string> legacy_type = d.string("type");
  if (rope_type && legacy_type && *rope_type != *legacy_type)
    d.fail("type", "contradicts '" + d.key_text("rope_type") + "' = " + value_text(json(*rope_type)));
  r.rope_type = rope_type ? *rope_type : legacy_type ? *legacy_type : "default";
  const std::string_view type_key = rope_type ? "rope_type" : "type";

  const detail::SchemeRow* scheme = detail::scheme_for_rope_type(r.rope_type);
  if (scheme == nullptr) {
    if (r.rope_type == "proportional")
      throw Error(ErrorKind::unsupported, "model config " + d.source() + ": key '" + d.key_text(type_key) +
                                              "' = \"proportional\": this rope_type is not supported by posenc");
    d.fail(type_key, "unknown rope_type (known: " + scheme_names() + ")");
  }
  r.scaling = scheme->scaling;

  for (const auto& [key, value] : d.raw().items()) {
    const bool known = std::find(std::begin(common_keys), std::end(common_keys), key) != std::end(common_keys) ||
                       std::find(scheme->config_keys.begin(), scheme->config_keys.end(), key) !=
                           scheme->config_keys.end();
    if (!known) {
      std::string allowed;
      for (std::string_view k : scheme->config_keys) allowed += ", " + std::string(k);
      d.fail(key, "unknown key for rope_type \"" + r.rope_type + "\" (allowed: rope_type, type, rope_theta, "
                  "partial_rotary_factor, mrope_section, mrope_interleaved" + allowed + ")");
    }
  }

  r.theta = d.number("rope_theta");
  r.partial = d.number("partial_rotary_factor");
  r.factor = d.number("factor");
  // 0 is no factor in any scheme: linear, dynamic and llama3 divide by it, and HF's yarn uses it as
  // given (1 / (0 * f) is inf). Only an absent factor is derived (yarn, longrope), so "factor": 0
  // is an error whatever the scheme (docs/CLI.md).
  if (r.factor && *r.factor == 0.0)
    d.fail("factor", "must be > 0 (omit the key to derive max_position_embeddings / "
                     "original_max_position_embeddings for yarn and longrope)");
  r.attention_factor = d.number("attention_factor");
  r.beta_fast = d.number("beta_fast");
  r.beta_slow = d.number("beta_slow");
  r.mscale = d.number("mscale");
  r.mscale_all_dim = d.number("mscale_all_dim");
  r.low_freq_factor = d.number("low_freq_factor");
  r.high_freq_factor = d.number("high_freq_factor");
  r.original_max = d.integer("original_max_position_embeddings");
  r.truncate = d.boolean("truncate");
  r.short_factor = d.numbers("short_factor");
  r.long_factor = d.numbers("long_factor");
  if (const std::optional<std::vector<double>> section = d.numbers("mrope_section")) {
    std::vector<std::int64_t> pairs;
    for (std::size_t i = 0; i < section->size(); ++i) {
      const double v = (*section)[i];
      if (!(v == std::floor(v) && v > 0 && v < 0x1p31))
        d.fail("mrope_section", "entry " + std::to_string(i) + " = " + number_text(v) +
                                    " is not a positive integer (pairs per position stream)");
      pairs.push_back(static_cast<std::int64_t>(v));
    }
    r.mrope_section = std::move(pairs);
  }
  r.mrope_interleaved = d.boolean("mrope_interleaved");

  for (std::string_view k : scheme->required_keys) {
    if (!d.has(k)) d.fail_missing(k, "rope_type \"" + r.rope_type + "\" requires it");
  }
  return r;
}

// ---- model-level values and the spec of one layer type -----------------------------------------

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

/// Turns a rope dict into a spec. `dict_node` names keys in messages; `keyed` is true for a dict
/// taken from a layer-type-keyed rope_parameters; `default_theta` is the family's for this layer.
RopeSpec make_spec(const Model& m, const RopeDict& d, const Node& dict_node, bool keyed, double default_theta) {
  const Node& cfg = *m.cfg;
  RopeSpec spec;
  spec.head_dim = m.head_dim;
  spec.pairing = m.pairing;
  spec.numerics = m.family->numerics;
  spec.theta = d.theta ? *d.theta : m.theta ? *m.theta : default_theta;
  spec.scaling = d.scaling;
  spec.position_limit = std::max(min_position_limit, m.max_pos);

  // Rotary window: int(head_dim * partial_rotary_factor), the dict's factor first (5.17).
  if (m.rotary_dim) {
    spec.rotary_dim = *m.rotary_dim;
  } else {
    const double partial = d.partial ? *d.partial : m.partial ? *m.partial : m.family->partial;
    const Node& where = d.partial ? dict_node : cfg;
    const std::string_view key = d.partial || cfg.has("partial_rotary_factor") ? "partial_rotary_factor"
                                 : cfg.has("rotary_pct")                       ? "rotary_pct"
                                                                               : "";
    if (!(partial > 0.0 && partial <= 1.0)) where.fail(key, "must be in (0, 1]");
    const auto rotary = static_cast<std::int64_t>(static_cast<double>(m.head_dim) * partial);
    if (rotary < 2 || rotary % 2 != 0) {
      const std::string why = "head_dim " + number_text(m.head_dim) + " * " + number_text(partial) + " gives " +
                              number_text(rotary) + " rotary dims; rotation needs an even number >= 2";
      if (key.empty()) throw Error(ErrorKind::config, "model config " + cfg.source() + ": " + why);
      where.fail(key, why);
    }
    spec.rotary_dim = rotary;
  }

  // The scheme's parameters. read_rope_dict accepted only the keys of this scheme (the registry
  // row's config_keys) and checked its required ones, so each present key belongs to it.
  const detail::SchemeRow& scheme = detail::scheme_row(d.scaling);
  ScalingParams& p = spec.params;
  if (scheme.uses_original_max) {
    // A top-level original_max_position_embeddings (Phi-3) overrides the dict's, single dict only.
    if (!keyed && m.original_max) p.original_max_position_embeddings = *m.original_max;
    else if (d.original_max) p.original_max_position_embeddings = *d.original_max;
    else if (m.max_pos > 0) p.original_max_position_embeddings = m.max_pos;
    else cfg.fail_missing("max_position_embeddings", "rope_type \"" + d.rope_type + "\" needs it (or "
                                                     "original_max_position_embeddings)");
  }
  p.max_position_embeddings = m.max_pos;
  if (scheme.uses_max_position && m.max_pos <= 0)
    cfg.fail_missing("max_position_embeddings", "rope_type \"" + d.rope_type + "\" needs it");
  if (d.factor) {
    p.factor = *d.factor;
  } else if (scheme.derives_factor) {
    if (m.max_pos <= 0) cfg.fail_missing("max_position_embeddings", "needed to derive the missing factor");
    p.factor = static_cast<double>(m.max_pos) / static_cast<double>(p.original_max_position_embeddings);
  }
  p.beta_fast = d.beta_fast.value_or(0.0) != 0.0 ? *d.beta_fast : 32.0;  // HF `beta_fast or 32`
  p.beta_slow = d.beta_slow.value_or(0.0) != 0.0 ? *d.beta_slow : 1.0;
  p.mscale = d.mscale.value_or(0.0);
  p.mscale_all_dim = d.mscale_all_dim.value_or(0.0);
  // HF 5.x reads `truncate` from the outer config.rope_parameters, so inside a layer-keyed dict it
  // is never seen and truncation stays on.
  p.truncate = keyed ? true : d.truncate.value_or(true);
  if (d.low_freq_factor) p.low_freq_factor = *d.low_freq_factor;
  if (d.high_freq_factor) p.high_freq_factor = *d.high_freq_factor;
  if (d.short_factor) p.short_factor = *d.short_factor;
  if (d.long_factor) p.long_factor = *d.long_factor;
  if (d.attention_factor) spec.attention_factor = *d.attention_factor;

  // M-RoPE: the dict's sections, else the family's default (GLM-4V [8, 12, 12], Qwen3-VL
  // [24, 20, 20]); Qwen3-VL always interleaves. A config that contradicts its family's fixed
  // layout is an error: transformers would ignore the key, so the config means something else.
  const Family& fam = *m.family;
  if (d.mrope_section) {
    spec.mrope_section = *d.mrope_section;
  } else if (fam.mrope && fam.mrope_default[0] != 0) {
    spec.mrope_section.assign(fam.mrope_default.begin(), fam.mrope_default.end());
  }
  spec.mrope_interleaved = fam.mrope ? fam.mrope_interleaved : d.mrope_interleaved.value_or(false);
  if (fam.mrope && d.mrope_interleaved && *d.mrope_interleaved != fam.mrope_interleaved)
    dict_node.fail("mrope_interleaved", std::string("contradicts ") + std::string(fam.type) + ", whose M-RoPE is " +
                                            (fam.mrope_interleaved ? "always interleaved" : "contiguous") +
                                            " in transformers");
  if (!d.mrope_section && d.mrope_interleaved.value_or(false) && spec.mrope_section.empty())
    dict_node.fail("mrope_interleaved", "needs mrope_section (the pairs of each position stream)");

  try {
    spec.validate();
  } catch (const Error& e) {
    throw Error(ErrorKind::config, "model config " + cfg.source() + " (" + dict_node.name() + "): " + e.what());
  }
  return spec;
}

// ---- model families ----------------------------------------------------------------------------

/// Validates a remote-code family's single spec (a failure becomes a config error naming the
/// file) and stores it as the "default" layer type.
void add_default_spec(const Node& cfg, ModelConfig& mc, RopeSpec spec) {
  try {
    spec.validate();
  } catch (const Error& e) {
    throw Error(ErrorKind::config, "model config " + cfg.source() + ": " + e.what());
  }
  mc.rope.emplace("default", std::move(spec));
}

/// ChatGLM-6B (v1, `position_encoding_2d: true`; docs/NUMERICS.md §7.3): head_dim = hidden_size /
/// heads, the whole head rotates as two half-split RoPEs of head_dim/2 dims (position, then block
/// position), base 10000, all heads are kv heads. The remote code forms the angles in the model
/// dtype (fp16); posenc forms them in float32, as every other family (RopeSpec::describe says so).
void parse_chatglm_6b(const Node& cfg, ModelConfig& mc) {
  mc.num_attention_heads = cfg.heads("num_attention_heads", std::nullopt, "the number of query heads");
  mc.num_key_value_heads = mc.num_attention_heads;
  const std::int64_t hidden = cfg.positive("hidden_size", std::nullopt, "head_dim = hidden_size / heads");
  if (hidden % mc.num_attention_heads != 0)
    cfg.fail("hidden_size", "not divisible by num_attention_heads = " + number_text(mc.num_attention_heads));
  mc.head_dim = hidden / mc.num_attention_heads;
  mc.max_position_embeddings = cfg.integer("max_sequence_length").value_or(0);
  if (mc.max_position_embeddings < 0) cfg.fail("max_sequence_length", "must be >= 0");
  // RotaryEmbedding(head_dim / 2, base=10000): the base is fixed in the remote code.
  if (cfg.has("rope_ratio") && cfg.number("rope_ratio") != 1.0)
    cfg.fail("rope_ratio", "ChatGLM-6B's 2-D RoPE has the fixed base 10000 (position_encoding_2d is true)");

  RopeSpec spec;
  spec.head_dim = mc.head_dim;
  spec.rotary_dim = mc.head_dim;
  if (mc.head_dim % 4 != 0)
    cfg.fail("hidden_size", "gives head_dim " + number_text(mc.head_dim) +
                                ", which 2-D RoPE cannot split into two halves of pairs (needs a multiple of 4)");
  spec.pairing = Pairing::half_split_2d;
  spec.theta = 10000;
  spec.position_limit = std::max(min_position_limit, mc.max_position_embeddings);
  add_default_spec(cfg, mc, std::move(spec));
}

/// GLM remote code (`model_type` "chatglm": ChatGLM2/3, GLM-4-9B): half the head rotates, adjacent
/// pairs, theta = 10000 * rope_ratio (ChatGLM3-32k/128k and GLM-4 semantics; ChatGLM2-6B-32k
/// used rope_ratio as position interpolation instead and needs a hand-made spec). ChatGLM-6B
/// (position_encoding_2d) is parse_chatglm_6b.
void parse_chatglm(const Node& cfg, ModelConfig& mc) {
  if (cfg.boolean("position_encoding_2d").value_or(false)) {
    parse_chatglm_6b(cfg, mc);
    return;
  }
  mc.num_attention_heads = cfg.heads("num_attention_heads", std::nullopt, "the number of query heads");
  std::int64_t head_dim = 0;
  if (cfg.has("kv_channels")) {
    head_dim = cfg.positive("kv_channels", std::nullopt, "");
  } else {
    const std::int64_t hidden = cfg.positive("hidden_size", std::nullopt, "head_dim = hidden_size / heads");
    if (hidden % mc.num_attention_heads != 0)
      cfg.fail("hidden_size", "not divisible by num_attention_heads = " + number_text(mc.num_attention_heads));
    head_dim = hidden / mc.num_attention_heads;
  }
  mc.head_dim = head_dim;
  if (cfg.boolean("multi_query_attention").value_or(false))
    mc.num_key_value_heads =
        cfg.heads("multi_query_group_num", std::nullopt, "multi_query_attention is true");
  else
    mc.num_key_value_heads = mc.num_attention_heads;
  mc.max_position_embeddings = cfg.integer("seq_length").value_or(0);
  if (mc.max_position_embeddings < 0) cfg.fail("seq_length", "must be >= 0");

  RopeSpec spec;
  spec.head_dim = head_dim;
  spec.rotary_dim = head_dim / 2;  // RotaryEmbedding(kv_channels // 2)
  if (spec.rotary_dim % 2 != 0)
    cfg.fail(cfg.has("kv_channels") ? "kv_channels" : "hidden_size",
             "gives head_dim " + number_text(head_dim) + ", whose rotary half " + number_text(spec.rotary_dim) +
                 " is odd: rotation needs pairs");
  spec.pairing = Pairing::interleaved;
  const double rope_ratio = cfg.number("rope_ratio").value_or(1.0);
  if (!(rope_ratio > 0.0)) cfg.fail("rope_ratio", "must be > 0");
  spec.theta = 10000 * rope_ratio;  // Python `10000 * self.rope_ratio`
  spec.position_limit = std::max(min_position_limit, mc.max_position_embeddings);
  add_default_spec(cfg, mc, std::move(spec));
}

void parse_hf(const Node& cfg, const std::string& type, ModelConfig& mc) {
  Model m;
  m.cfg = &cfg;
  m.family = &family_of(type);
  const Family& fam = *m.family;
  const bool gptj = type == "gptj";

  // Heads and head size (GPT-J spells them n_head / n_embd / n_positions).
  const std::string_view heads_key = gptj ? "n_head" : "num_attention_heads";
  mc.num_attention_heads =
      cfg.heads(heads_key, fam.heads ? std::optional<std::int64_t>(fam.heads) : std::nullopt,
                "the number of query heads");
  mc.num_key_value_heads = cfg.heads("num_key_value_heads",
                                     fam.kv_heads ? fam.kv_heads : mc.num_attention_heads, "");
  if (mc.num_attention_heads % mc.num_key_value_heads != 0)
    cfg.fail("num_key_value_heads",
             "must divide num_attention_heads = " + number_text(mc.num_attention_heads));
  if (fam.mla) {
    m.head_dim = cfg.positive("qk_rope_head_dim", std::nullopt, "MLA models rotate the qk_rope_head_dim part");
  } else if (cfg.has("head_dim")) {
    m.head_dim = cfg.positive("head_dim", std::nullopt, "");
  } else if (fam.head_dim != 0) {
    m.head_dim = fam.head_dim;
  } else {
    const std::string_view hidden_key = gptj ? "n_embd" : "hidden_size";
    const std::int64_t hidden =
        cfg.positive(hidden_key, std::nullopt, "head_dim is absent, so it is hidden_size / num_attention_heads");
    if (hidden % mc.num_attention_heads != 0)
      cfg.fail(hidden_key, "not divisible by " + std::string(heads_key) + " = " +
                               number_text(mc.num_attention_heads) + ", and head_dim is not given");
    m.head_dim = hidden / mc.num_attention_heads;
  }
  mc.head_dim = m.head_dim;
  const std::string_view max_pos_key = gptj ? "n_positions" : "max_position_embeddings";
  m.max_pos = cfg.integer(max_pos_key).value_or(fam.max_pos);
  if (m.max_pos < 0) cfg.fail(max_pos_key, "must be >= 0");
  mc.max_position_embeddings = m.max_pos;

  // Pairing: the family's, or DeepSeek-V3's rope_interleave (true: adjacent pairs in, halves out).
  m.pairing = fam.pairing;
  if (fam.rope_interleave)
    m.pairing = cfg.boolean("rope_interleave").value_or(true) ? Pairing::interleaved_to_half : Pairing::half_split;

  // Model-level rope values; GPT-NeoX spells them rotary_emb_base / rotary_pct.
  m.theta = either_number(cfg, "rope_theta", "rotary_emb_base");
  m.partial = either_number(cfg, "partial_rotary_factor", "rotary_pct");
  m.original_max = cfg.integer("original_max_position_embeddings");
  if (gptj) {
    // HF GPT-J: only rotary_dim of each head rotates (GPTJConfig default 64; an explicit null
    // rotates the whole head); the base is fixed at 10000.
    m.theta = std::nullopt;
    m.rotary_dim = cfg.raw().contains("rotary_dim") ? cfg.integer("rotary_dim") : std::optional<std::int64_t>(64);
    if (m.rotary_dim && (*m.rotary_dim <= 0 || *m.rotary_dim % 2 != 0 || *m.rotary_dim > m.head_dim))
      cfg.fail("rotary_dim", "must be even, > 0 and <= head_dim = " + number_text(m.head_dim));
  }

  // The rope dict: 4.x rope_scaling or 5.x rope_parameters (HF 5.x takes rope_scaling first).
  const json* scaling = cfg.object("rope_scaling");
  const json* parameters = cfg.object("rope_parameters");
  if (scaling && parameters && *scaling != *parameters)
    cfg.fail("rope_parameters", "contradicts '" + cfg.key_text("rope_scaling") + "' = " + value_text(*scaling) +
                                    " (give one of them)");
  const std::string dict_name = scaling ? "rope_scaling" : "rope_parameters";
  static const json empty = json::object();
  const json& dict = scaling ? *scaling : parameters ? *parameters : empty;
  const Node dict_node(dict, cfg.key(dict_name) + ".", cfg.source());

  // Keyed by layer type when every value is an object (a flat dict never holds objects).
  const bool keyed = !dict.empty() && std::all_of(dict.begin(), dict.end(), [](const json& v) { return v.is_object(); });
  if (!keyed) {
    for (const auto& [key, value] : dict.items())
      if (value.is_object())
        dict_node.fail(key, "a layer-type entry mixed with plain rope keys (use one form)");
  }

  const bool layer_typed_family = fam.local_theta != 0.0;
  if (keyed) {
    std::set<std::string> layer_types;
    const bool has_layer_types = cfg.has("layer_types");
    if (has_layer_types) {
      const json& lt = cfg.raw().at("layer_types");
      if (!lt.is_array()) cfg.fail("layer_types", "expected a list of layer-type names");
      for (const json& t : lt) {
        if (!t.is_string()) cfg.fail("layer_types", "expected a list of layer-type names");
        layer_types.insert(t.get<std::string>());
      }
    }
    for (const auto& [layer, sub] : dict.items()) {
      if (has_layer_types && !layer_types.contains(layer))
        dict_node.fail(layer, "not one of the config's layer_types");
      const Node sub_node(sub, dict_node.key(layer) + ".", cfg.source());
      const RopeDict d = read_rope_dict(sub_node);
      double default_theta = fam.theta;
      if (layer_typed_family && layer == "sliding_attention")
        default_theta = cfg.number("rope_local_base_freq").value_or(fam.local_theta);
      // The top-level rope_theta is the global one for Gemma3-style models.
      Model layer_model = m;
      if (layer_typed_family && layer == "sliding_attention") layer_model.theta = std::nullopt;
      mc.rope.emplace(layer, make_spec(layer_model, d, sub_node, true, default_theta));
    }
  } else if (layer_typed_family) {
    // Gemma3 4.x: rope_scaling and rope_theta describe the global (full_attention) layers; the
    // sliding layers use rope_local_base_freq with the default scheme.
    const RopeDict global = read_rope_dict(dict_node);
    mc.rope.emplace("full_attention", make_spec(m, global, dict_node, false, fam.theta));
    RopeDict local;
    local.theta = cfg.number("rope_local_base_freq").value_or(fam.local_theta);
    Model local_model = m;
    local_model.theta = std::nullopt;
    mc.rope.emplace("sliding_attention", make_spec(local_model, local, dict_node, false, fam.local_theta));
  } else {
    const RopeDict d = read_rope_dict(dict_node);
    mc.rope.emplace("default", make_spec(m, d, dict_node, false, fam.theta));
  }
}

}  // namespace

const RopeSpec& ModelConfig::spec(const std::string& layer_type) const {
  const auto it = rope.find(layer_type);
  if (it != rope.end()) return it->second;
  std::string have;
  for (const auto& [name, s] : rope) have += (have.empty() ? "" : ", ") + name;
  throw Error(ErrorKind::config, "model config " + source + ": no RoPE spec for layer type '" +
                                     message_excerpt(layer_type) + "' (it has: " +
                                     (have.empty() ? std::string("none") : message_excerpt(have, 400)) + ")");
}

namespace {

/// Parses `text` with its size and nesting depth bounded. The depth is checked by the parser's
/// callback as each object or array opens, before anything deeper is built: nlohmann's parser is
/// iterative, but dump() and comparisons of a value recurse, so an unbounded depth would let a
/// small file exhaust the stack. Every JSON-library failure (syntax, a number too large for a
/// double such as 1e400) is a config error naming the file.
json parse_bounded(const std::string& text, const std::string& source) {
  if (static_cast<std::int64_t>(text.size()) > max_config_bytes)
    throw Error(ErrorKind::config, "model config " + source + ": " + std::to_string(text.size()) +
                                       " bytes exceeds the limit of " + std::to_string(max_config_bytes) +
                                       " bytes (max_config_bytes)");
  const json::parser_callback_t limit_depth = [&source](int depth, json::parse_event_t event, json&) {
    // `depth` counts the containers enclosing the one that starts (0 for the top level).
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= max_config_depth)
      throw Error(ErrorKind::config, "model config " + source + ": JSON nested deeper than the limit of " +
                                         std::to_string(max_config_depth) + " levels (max_config_depth)");
    return true;
  };
  try {
    return json::parse(text, limit_depth);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::config, "model config " + source + ": not valid JSON: " + message_excerpt(e.what(), 200));
  }
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  const json root = parse_bounded(json_text, source);
  if (!root.is_object())
    throw Error(ErrorKind::config, "model config " + source + ": the top level must be a JSON object, got " +
                                       value_text(root));
  ModelConfig mc;
  mc.source = source;
  const Node top(root, "", source);
  mc.model_type = top.string("model_type").value_or("");

  // Multimodal wrappers (Gemma3, GLM-4V, Qwen2-VL in 5.x) keep the language model in text_config.
  const json* text = top.object("text_config");
  const Node cfg = text ? Node(*text, "text_config.", source) : top;
  const std::string type = family_name(text ? cfg.string("model_type").value_or(mc.model_type) : mc.model_type);

  if (type == "chatglm")
    parse_chatglm(cfg, mc);
  else
    parse_hf(cfg, type, mc);
  return mc;
}

ModelConfig load_model_config(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  // status() reports why a path cannot be followed (a symlink loop, a permission) in `ec`; only a
  // path that does not exist is "no such file".
  if (ec && status.type() != fs::file_type::not_found)
    throw Error(ErrorKind::io, "cannot read model config '" + path + "': " + ec.message());
  if (!fs::is_regular_file(status))
    throw Error(ErrorKind::io, "cannot read model config '" + path + "': " +
                                   (fs::exists(status) ? "not a regular file" : "no such file"));
  // The size limit is checked before reading, so a huge file costs no memory.
  const std::uintmax_t size = fs::file_size(path, ec);
  if (!ec && size > static_cast<std::uintmax_t>(max_config_bytes))
    throw Error(ErrorKind::config, "model config " + path + ": " + std::to_string(size) +
                                       " bytes exceeds the limit of " + std::to_string(max_config_bytes) +
                                       " bytes (max_config_bytes)");
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) throw Error(ErrorKind::io, "cannot open model config '" + path + "': " + std::strerror(errno));
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw Error(ErrorKind::io, "cannot read model config '" + path + "': " + std::strerror(errno));
  return parse_model_config(text, path);
}

const char* default_model_config_json() noexcept {
  // configs/glm-4-9b-chat.json, embedded by src/CMakeLists.txt.
  static constexpr char text[] =
#include "core/default_model_config.inc"
      ;
  return text;
}

}  // namespace posenc

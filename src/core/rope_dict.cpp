// Rope dictionaries of a config.json (rope_dict.hpp): reading one against the scheme registry, and the spec it gives.
#include "core/rope_dict.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <string_view>

#include "core/schemes.hpp"
#include "posenc/error.hpp"

namespace posenc::detail::config {
namespace {

// Keys every scheme accepts: the scheme name, theta and partial factor (5.x moves them into the
// dict) and the M-RoPE layout (Qwen2-VL/GLM-4V/Qwen3-VL: RopeSpec::mrope_section, mrope_interleaved).
constexpr std::string_view common_keys[] = {"rope_type", "type", "rope_theta", "partial_rotary_factor",
                                             "mrope_section", "mrope_interleaved"};

/// "default, mrope, linear, ...": every rope_type the registry knows.
std::string scheme_names() {
  std::string s;
  for (const SchemeRow& row : scheme_rows())
    for (std::string_view name : row.rope_types) s += (s.empty() ? "" : ", ") + std::string(name);
  return s;
}

}  // namespace

RopeDict read_rope_dict(const Node& d) {
  RopeDict r;
  const std::optional<std::string> rope_type = d.string("rope_type");
  const std::optional<std::string> legacy_type = d.string("type");
  if (rope_type && legacy_type && *rope_type != *legacy_type)
    d.fail("type", "contradicts '" + d.key_text("rope_type") + "' = " + value_text(json(*rope_type)));
  r.rope_type = rope_type ? *rope_type : legacy_type ? *legacy_type : "default";
  const std::string_view type_key = rope_type ? "rope_type" : "type";

  const SchemeRow* scheme = scheme_for_rope_type(r.rope_type);
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
  const SchemeRow& scheme = scheme_row(d.scaling);
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

}  // namespace posenc::detail::config

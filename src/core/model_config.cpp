// Model configuration ingestion: a Hugging Face config.json (transformers 4.x/5.x, GLM remote code) to RopeSpecs; this file drives the layers in config_json.hpp (JSON access), model_families.hpp (per-model defaults) and rope_dict.hpp (rope dictionaries).
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
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <limits>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "core/config_json.hpp"
#include "core/model_families.hpp"
#include "core/rope_dict.hpp"
#include "core/text_detail.hpp"
#include "posenc/error.hpp"
#include "posenc/model_config.hpp"

namespace posenc {
namespace {

using detail::number_text;
using detail::config::either_number;
using detail::config::Family;
using detail::config::family_name;
using detail::config::family_of;
using detail::config::json;
using detail::config::make_spec;
using detail::config::min_position_limit;
using detail::config::Model;
using detail::config::Node;
using detail::config::parse_bounded;
using detail::config::read_rope_dict;
using detail::config::RopeDict;
using detail::config::value_text;

// ---- the families whose config is not Hugging Face's ------------------------------------------

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
    // The rest of the MLA geometry, shown by `posenc info` (the rotation does not depend on it).
    if (cfg.has("qk_nope_head_dim")) mc.mla_nope_head_dim = cfg.positive("qk_nope_head_dim", std::nullopt, "");
    if (cfg.has("kv_lora_rank")) mc.mla_latent_dim = cfg.positive("kv_lora_rank", std::nullopt, "");
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

  // The per-head QK norm before the rotation (Qwen3, Gemma 3, GLM-4.5 with use_qk_norm).
  bool qk_norm = fam.qk_norm != QkNormKind::none;
  if (qk_norm && !fam.qk_norm_key.empty()) qk_norm = cfg.boolean(std::string(fam.qk_norm_key)).value_or(false);
  if (qk_norm) {
    const double eps = cfg.number("rms_norm_eps").value_or(fam.norm_eps);
    if (!(eps >= 0.0 && eps <= static_cast<double>(std::numeric_limits<float>::max())))
      cfg.fail("rms_norm_eps", "must be finite and >= 0 (the QK norm adds it in float32)");
    for (auto& [layer, spec] : mc.rope) spec.qk_norm = QkNorm{fam.qk_norm, eps, false};
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

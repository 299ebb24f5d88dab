// C ABI: model configurations (file, text, embedded default) and specs (from a config or a plain description).
#include <cstddef>
#include <memory>
#include <string>

#include "capi/common.hpp"

using namespace posenc;
using capi::guard;

namespace {

constexpr double default_theta = 10000.0;

// The first versions of the structs that have grown since (posenc.h "ABI growth").
constexpr std::size_t spec_desc_first_size = offsetof(posenc_spec_desc, position_limit) + sizeof(std::int64_t);
constexpr std::size_t spec_info_first_size = offsetof(posenc_spec_info, reserved) + sizeof(std::int32_t);

/// A spec handle: validated, with its frequency table and description computed once, so the
/// accessors hand out pointers that live as long as the handle.
posenc_spec* make_spec(RopeSpec spec) {
  spec.validate();
  FrequencyTable table = compute_frequencies(spec);  // torch_cuda too: the init table is the CPU's
  std::string description = spec.describe();
  return new posenc_spec{std::move(spec), std::move(table), std::move(description)};
}

/// posenc_spec_with_*: a validated copy of `spec` with one field changed by `change`.
template <class Change>
posenc_status spec_with(const char* function, const posenc_spec* spec, posenc_spec** out, Change&& change) {
  return guard(function, [&] {
    capi::require(spec, "spec");
    capi::require(out, "out");
    RopeSpec copy = spec->spec;
    change(copy);
    *out = make_spec(std::move(copy));
  });
}

posenc_config* make_config(ModelConfig config) {
  std::vector<std::string> layer_types;
  for (const auto& entry : config.rope) layer_types.push_back(entry.first);
  return new posenc_config{std::move(config), std::move(layer_types)};
}

}  // namespace

extern "C" {

posenc_status posenc_config_load(const char* path, posenc_config** out) {
  return guard(__func__, [&] {
    capi::require(path, "path");
    capi::require(out, "out");
    *out = make_config(load_model_config(path));
  });
}

posenc_status posenc_config_parse(const char* json, size_t length, const char* source, posenc_config** out) {
  return guard(__func__, [&] {
    capi::require(json, "json");
    capi::require(out, "out");
    // Refused before the text is copied: `length` is the caller's word for how much to read.
    if (length > static_cast<std::uint64_t>(max_config_bytes))
      throw Error(ErrorKind::config, "length " + std::to_string(length) + " is above the config text limit " +
                                         std::to_string(max_config_bytes) + " bytes");
    *out = make_config(parse_model_config(std::string(json, length), source != nullptr ? source : "<text>"));
  });
}

posenc_status posenc_config_default(posenc_config** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    *out = make_config(parse_model_config(default_model_config_json(), "<embedded:glm-4-9b-chat>"));
  });
}

void posenc_config_destroy(posenc_config* config) { delete config; }

posenc_status posenc_config_get_info(const posenc_config* config, posenc_config_info* out) {
  return guard(__func__, [&] {
    capi::require(config, "config");
    capi::check_out(out, sizeof(posenc_config_info), "out", "posenc_config_info");
    const ModelConfig& c = config->config;
    posenc_config_info info;
    std::memset(&info, 0, sizeof info);
    info.model_type = c.model_type.c_str();
    info.source = c.source.c_str();
    info.num_attention_heads = c.num_attention_heads;
    info.num_key_value_heads = c.num_key_value_heads;
    info.head_dim = c.head_dim;
    info.max_position_embeddings = c.max_position_embeddings;
    info.layer_type_count = static_cast<std::int64_t>(config->layer_types.size());
    capi::write_out(out, info);
  });
}

posenc_status posenc_config_layer_type(const posenc_config* config, int64_t index, const char** out) {
  return guard(__func__, [&] {
    capi::require(config, "config");
    capi::require(out, "out");
    const auto count = static_cast<std::int64_t>(config->layer_types.size());
    if (index < 0 || index >= count)
      throw Error(ErrorKind::out_of_range, "index " + std::to_string(index) + " is outside [0, " +
                                               std::to_string(count) + "), the config's layer types");
    *out = config->layer_types[static_cast<std::size_t>(index)].c_str();
  });
}

posenc_status posenc_config_spec(const posenc_config* config, const char* layer_type, posenc_spec** out) {
  return guard(__func__, [&] {
    capi::require(config, "config");
    capi::require(out, "out");
    *out = make_spec(config->config.spec(layer_type != nullptr ? layer_type : "default"));
  });
}

posenc_status posenc_spec_create(const posenc_spec_desc* desc, posenc_spec** out) {
  return guard(__func__, [&] {
    const posenc_spec_desc d = capi::read_in(desc, spec_desc_first_size, "desc", "posenc_spec_desc");
    capi::require(out, "out");
    RopeSpec spec;
    spec.head_dim = d.head_dim;
    spec.rotary_dim = d.rotary_dim;
    spec.rotary_offset = d.rotary_offset;
    spec.pairing = capi::to_pairing(d.pairing, "desc->pairing");
    spec.numerics = capi::to_numerics(d.numerics, "desc->numerics");
    spec.theta = d.theta == 0.0 ? default_theta : d.theta;
    if (d.attention_factor != 0.0) spec.attention_factor = d.attention_factor;
    if (d.position_limit != 0) spec.position_limit = d.position_limit;
    spec.hf_arithmetic = capi::to_hf_arithmetic(d.hf_arithmetic, "desc->hf_arithmetic");
    capi::check_reserved(d.reserved, "desc");
    spec.qk_norm.kind = capi::to_qk_norm(d.qk_norm, "desc->qk_norm");
    spec.qk_norm.rotary_only = capi::to_bool(d.qk_norm_rotary_only, "desc->qk_norm_rotary_only");
    spec.qk_norm.epsilon = d.qk_norm_epsilon;
    *out = make_spec(std::move(spec));
  });
}

posenc_status posenc_spec_with_numerics(const posenc_spec* spec, int32_t numerics, posenc_spec** out) {
  return spec_with(__func__, spec, out, [&](RopeSpec& copy) { copy.numerics = capi::to_numerics(numerics, "numerics"); });
}

posenc_status posenc_spec_with_hf_arithmetic(const posenc_spec* spec, int32_t hf_arithmetic, posenc_spec** out) {
  return spec_with(__func__, spec, out, [&](RopeSpec& copy) {
    copy.hf_arithmetic = capi::to_hf_arithmetic(hf_arithmetic, "hf_arithmetic");
  });
}

posenc_status posenc_spec_with_position_limit(const posenc_spec* spec, int64_t position_limit, posenc_spec** out) {
  return spec_with(__func__, spec, out, [&](RopeSpec& copy) { copy.position_limit = position_limit; });
}

void posenc_spec_destroy(posenc_spec* spec) { delete spec; }

posenc_status posenc_spec_get_info(const posenc_spec* spec, posenc_spec_info* out) {
  return guard(__func__, [&] {
    capi::require(spec, "spec");
    capi::check_out(out, spec_info_first_size, "out", "posenc_spec_info");
    const RopeSpec& s = spec->spec;
    posenc_spec_info info;
    std::memset(&info, 0, sizeof info);
    info.head_dim = s.head_dim;
    info.rotary_dim = s.rotary();
    info.rotary_offset = s.rotary_offset;
    info.pairing = static_cast<std::int32_t>(s.pairing);
    info.numerics = static_cast<std::int32_t>(s.numerics);
    info.scaling = static_cast<std::int32_t>(s.scaling);
    info.position_streams = s.position_streams();
    info.theta = s.theta;
    info.attention_factor = spec->frequencies.attention_factor;
    info.position_limit = s.position_limit;
    info.frequency_count = static_cast<std::int64_t>(spec->frequencies.inv_freq.size());
    info.mrope_section_count = static_cast<std::int64_t>(s.mrope_section.size());
    info.mrope_interleaved = s.mrope_interleaved ? 1 : 0;
    info.hf_arithmetic = static_cast<std::int32_t>(s.hf_arithmetic);
    info.qk_norm = static_cast<std::int32_t>(s.qk_norm.kind);
    info.qk_norm_rotary_only = s.qk_norm.rotary_only ? 1 : 0;
    info.qk_norm_epsilon = s.qk_norm.epsilon;
    capi::write_out(out, info);
  });
}

posenc_status posenc_spec_inv_freq(const posenc_spec* spec, float* out, size_t capacity) {
  return guard(__func__, [&] {
    capi::require(spec, "spec");
    capi::require(out, "out");
    const auto& table = spec->frequencies.inv_freq;
    if (capacity < table.size())
      throw Error(ErrorKind::invalid_argument, "capacity " + std::to_string(capacity) + " is below the " +
                                                   std::to_string(table.size()) + " inv_freq entries of the spec");
    std::copy(table.begin(), table.end(), out);
  });
}

posenc_status posenc_spec_mrope_section(const posenc_spec* spec, int64_t* out, size_t capacity) {
  return guard(__func__, [&] {
    capi::require(spec, "spec");
    const auto& section = spec->spec.mrope_section;
    if (section.empty()) return;  // nothing to write: `out` may be NULL
    capi::require(out, "out");
    if (capacity < section.size())
      throw Error(ErrorKind::invalid_argument, "capacity " + std::to_string(capacity) + " is below the " +
                                                   std::to_string(section.size()) + " M-RoPE sections of the spec");
    std::copy(section.begin(), section.end(), out);
  });
}

posenc_status posenc_spec_describe(const posenc_spec* spec, const char** out) {
  return guard(__func__, [&] {
    capi::require(spec, "spec");
    capi::require(out, "out");
    *out = spec->description.c_str();
  });
}

}  // extern "C"

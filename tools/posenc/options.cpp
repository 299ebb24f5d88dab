// Shared option parsing: config loading with usage-error reporting, layer-type selection, dtype, numerics and HF arithmetic.
#include "options.hpp"

#include <CLI/CLI.hpp>

#include <optional>
#include <utility>

#include "command.hpp"
#include "posenc/error.hpp"

namespace posenc::cli {

void add_model_options(CLI::App& app, ModelOptions& options, bool config_required, bool with_numerics) {
  CLI::Option* config = app.add_option("--config,-c", options.config,
                                       "model config.json (Hugging Face format)");
  if (config_required) {
    config->required();
  } else {
    config->description("model config.json (Hugging Face format); default: the embedded GLM-4-9B-chat");
  }
  app.add_option("--layer-type", options.layer_type,
                 "attention layer type of layer-typed configs (e.g. full_attention, sliding_attention)");
  if (with_numerics) {
    app.add_option("--numerics", options.numerics, "override the numerics policy")
        ->check(CLI::IsMember({"hf_compatible", "hf_fp32_apply", "accurate"}));
  }
  app.add_option("--hf-arithmetic", options.hf_arithmetic,
                 "whose float32 pow/cos/sin the hf numerics reproduce: engine (default: torch on the engine's "
                 "device), torch_cpu, torch_cuda or exact (docs/NUMERICS.md 3.4)")
      ->check(CLI::IsMember({"engine", "torch_cpu", "torch_cuda", "exact"}));
  app.add_flag("--no-qk-norm", options.no_qk_norm,
               "rotate only: leave out the config's per-head QK norm (Qwen3, Gemma 3, GLM-4.5; docs/NUMERICS.md 3.6)");
}

ModelConfig load_config_or_default(const std::string& path) {
  try {
    if (path.empty()) return parse_model_config(default_model_config_json(), embedded_config_label);
    return load_model_config(path);
  } catch (const Error& e) {
    usage_error(std::string("config ") + (path.empty() ? embedded_config_label : path) + ": " +
                to_string(e.kind()) + ": " + e.what());
  }
}

ResolvedModel resolve_model(const ModelOptions& options) {
  return select_spec(load_config_or_default(options.config), options);
}

ResolvedModel select_spec(ModelConfig config, const ModelOptions& options) {
  ResolvedModel model{std::move(config), options.layer_type, {}};
  if (model.layer_type.empty()) {
    if (model.config.rope.contains("default") || model.config.rope.size() != 1) {
      model.layer_type = "default";
    } else {
      model.layer_type = model.config.rope.begin()->first;
    }
  }
  const auto it = model.config.rope.find(model.layer_type);
  if (it == model.config.rope.end()) {
    std::string known;
    for (const auto& [name, spec] : model.config.rope) known += (known.empty() ? "" : ", ") + name;
    usage_error("config " + model.config.source + " has no layer type '" + message_excerpt(model.layer_type) +
                "'; pass --layer-type with one of: " + message_excerpt(known, 400));
  }
  model.spec = it->second;
  if (options.no_qk_norm) model.spec.qk_norm = QkNorm{};
  if (!options.numerics.empty()) model.spec.numerics = parse_numerics_option(options.numerics);
  if (!options.hf_arithmetic.empty()) {
    const std::optional<HfArithmetic> a = parse_hf_arithmetic(options.hf_arithmetic);
    if (!a) usage_error("--hf-arithmetic: unknown arithmetic '" + options.hf_arithmetic + "' (expected " + hf_arithmetic_help + ")");
    model.spec.hf_arithmetic = *a;
  }
  try {
    model.spec.validate();
  } catch (const Error& e) {
    usage_error("config " + model.config.source + ": " + to_string(e.kind()) + ": " + e.what());
  }
  return model;
}

DType parse_dtype_option(const std::string& text) {
  try {
    return parse_dtype(text.c_str());
  } catch (const Error&) {
    usage_error("--dtype: unknown dtype '" + text + "' (expected " + dtype_help + ")");
  }
}

Numerics parse_numerics_option(const std::string& text) {
  for (const Numerics n : {Numerics::hf_compatible, Numerics::hf_fp32_apply, Numerics::accurate}) {
    if (text == to_string(n)) return n;
  }
  usage_error("--numerics: unknown policy '" + text + "' (expected " + numerics_help + ")");
}

RopeSpec with_host_tables(RopeSpec spec) {
  if (spec.hf_arithmetic == HfArithmetic::torch_cuda) spec.hf_arithmetic = HfArithmetic::exact;
  return spec;
}

}  // namespace posenc::cli

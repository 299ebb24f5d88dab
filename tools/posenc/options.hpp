// Options shared by several subcommands (model config, layer type, dtype, numerics, HF arithmetic), parsed one way everywhere.
#pragma once

#include <string>

#include "posenc/dtype.hpp"
#include "posenc/model_config.hpp"
#include "posenc/rope.hpp"

namespace CLI {
class App;
}

namespace posenc::cli {

/// --config, --layer-type, --hf-arithmetic and (optionally) --numerics, as the user typed them.
struct ModelOptions {
  std::string config;         ///< path of a config.json; empty = the embedded default model
  std::string layer_type;     ///< empty = "default", or the only layer type the config has
  std::string numerics;       ///< empty = the numerics the config resolves to
  std::string hf_arithmetic;  ///< empty = engine (each engine reproduces torch on its own device)
  bool no_qk_norm = false;    ///< drop the config's QK-norm stage: rotate only
};

/// Adds --config, --layer-type, --hf-arithmetic, --no-qk-norm and, when `with_numerics`, --numerics to `app`.
void add_model_options(CLI::App& app, ModelOptions& options, bool config_required, bool with_numerics);

/// A model config with the chosen layer type's spec (numerics override applied).
struct ResolvedModel {
  ModelConfig config;
  std::string layer_type;
  RopeSpec spec;
};

/// Selects the spec of options.layer_type in `config` and applies --numerics and --hf-arithmetic. Every problem is a
/// usage error (exit 2) that carries posenc::Error's kind and message.
ResolvedModel select_spec(ModelConfig config, const ModelOptions& options);

/// Loads the config (or the embedded default), then select_spec.
ResolvedModel resolve_model(const ModelOptions& options);

/// Loads a config.json, or the embedded default when `path` is empty; usage error on failure.
ModelConfig load_config_or_default(const std::string& path);

/// The accepted spellings of --dtype and --numerics (for CLI11 validators and help text).
inline constexpr const char* dtype_help = "bf16 | f16 | f32 (also bfloat16, float16, half, float32, fp32)";
inline constexpr const char* numerics_help = "hf_compatible | hf_fp32_apply | accurate";
inline constexpr const char* hf_arithmetic_help = "engine | torch_cpu | torch_cuda | exact";

/// Parses a --dtype value; usage error naming the text otherwise.
DType parse_dtype_option(const std::string& text);

/// Parses a --numerics value; usage error naming the text otherwise.
Numerics parse_numerics_option(const std::string& text);

/// `spec` for tables computed on the host at any seq_len (compute_frequencies): torch_cuda's
/// call-time tables come from the GPU engine, so the host uses the exact ones (within a float32
/// ulp of them; its float64 verification does not need the GPU's bits).
RopeSpec with_host_tables(RopeSpec spec);

/// Label of an embedded config in messages.
inline constexpr const char* embedded_config_label = "<embedded:glm-4-9b-chat>";

}  // namespace posenc::cli

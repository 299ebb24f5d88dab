// `posenc info`: resolve a model's config.json and print its RoPE spec, shapes and frequency table.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>

#include "command.hpp"
#include "options.hpp"
#include "posenc/error.hpp"
#include "posenc/glm.hpp"

namespace posenc::cli {
namespace {

void print_spec(const std::string& layer_type, const RopeSpec& spec) {
  std::printf("\nlayer type %s\n", message_excerpt(layer_type).c_str());
  const std::string description = spec.describe();
  std::printf("%s", description.c_str());
  if (!description.empty() && description.back() != '\n') std::printf("\n");

  // The init table of the spec's arithmetic (engine = torch_cpu on the host; torch_cuda's init
  // table is the CPU's too: transformers builds it there).
  const FrequencyTable table = compute_frequencies(spec);
  std::printf("attention factor  %.9g (scheme)", table.attention_factor);
  if (spec.attention_factor) std::printf(", %.9g (config override, used)", *spec.attention_factor);
  std::printf("\n");
  const bool per_call = scheme_info(spec.scaling).depends_on_call;
  std::printf("inv_freq  %zu float32 values%s\n", table.inv_freq.size(),
              per_call ? " (the table at init; this scheme rebuilds it per call from the largest position)" : "");
  std::printf("  %5s  %-16s  %s\n", "i", "hex", "decimal");
  for (std::size_t i = 0; i < table.inv_freq.size(); ++i) {
    const double value = table.inv_freq[i];
    std::printf("  %5zu  %-16a  %.9g\n", i, value, value);
  }
}

/// For a GLM-family config: the position scheme and mask pattern its generation implies
/// (docs/GLM.md); nothing for other families.
void print_glm_scheme(const ModelConfig& config) {
  bool two_d = false;
  for (const auto& [layer_type, spec] : config.rope) two_d = two_d || spec.pairing == Pairing::half_split_2d;
  glm::GlmScheme scheme;
  try {
    scheme = glm::glm_scheme_for(config.model_type, two_d);
  } catch (const Error&) {
    return;  // not a GLM generation
  }
  std::printf("GLM      %s\n", scheme.generation.c_str());
  std::printf("  positions  %s (%d stream%s)\n", scheme.position_scheme.c_str(), scheme.streams,
              scheme.streams == 1 ? "" : "s");
  std::printf("  mask       %s\n", scheme.mask_pattern.c_str());
  std::printf("  rotation   %s\n", scheme.rotation.c_str());
}

int info(const ModelOptions& options) {
  const ModelConfig config = load_config_or_default(options.config);
  std::printf("config   %s\n", config.source.c_str());
  std::printf("model    %s\n", message_excerpt(config.model_type).c_str());
  std::printf("heads    %lld query, %lld key/value, head_dim %lld\n",
              static_cast<long long>(config.num_attention_heads),
              static_cast<long long>(config.num_key_value_heads), static_cast<long long>(config.head_dim));
  std::printf("context  max_position_embeddings %lld\n",
              static_cast<long long>(config.max_position_embeddings));
  if (config.mla_latent_dim > 0) {
    // MLA (docs/ARCHITECTURE.md "MLA"): the rotated slice of each query head and the latent cache row.
    const long long rope = config.head_dim;
    const long long nope = config.mla_nope_head_dim;
    const long long latent = config.mla_latent_dim;
    std::printf("MLA      query head %lld = nope %lld + rope %lld (rope rotated: view head_dim %lld, head_stride %lld, "
                "offset %lld)\n", nope + rope, nope, rope, rope, nope + rope, nope);
    std::printf("  cache  layout mla, one row of %lld = latent %lld (kv_lora_rank, V) + k_pe %lld (rotated K) "
                "per slot, kv_heads 1\n", latent + rope, latent, rope);
  }
  print_glm_scheme(config);

  if (!options.layer_type.empty()) {
    const ResolvedModel model = select_spec(config, options);  // names the known types if absent
    print_spec(model.layer_type, model.spec);
    return exit_ok;
  }
  for (const auto& [layer_type, spec] : config.rope) {
    RopeSpec shown = spec;
    if (!options.hf_arithmetic.empty()) shown.hf_arithmetic = *parse_hf_arithmetic(options.hf_arithmetic);  // CLI11 checked it
    print_spec(layer_type, shown);
  }
  return exit_ok;
}

Runner setup(CLI::App& app) {
  auto options = std::make_shared<ModelOptions>();
  add_model_options(app, *options, /*config_required=*/false, /*with_numerics=*/false);
  return [options] { return info(*options); };
}

[[maybe_unused]] const bool registered = register_command(
    {"info",
     "Resolve a model's config.json (default: embedded GLM-4-9B-chat) and print its RoPE spec, head "
     "counts, inv_freq table (hex and decimal) and attention factor, for every layer type or --layer-type.",
     setup});

}  // namespace
}  // namespace posenc::cli

// The model families of load_model_config (model_families.hpp): one row per model_type that differs from Llama's defaults.
#include "core/model_families.hpp"

namespace posenc::detail::config {
namespace {

constexpr Family families[] = {
    // GLM: HF Glm/Glm4/Glm4v pair adjacent elements; Glm4Moe/Glm4vMoe use rotate_half. The GLM
    // configs force partial_rotary_factor 0.5 by default (Glm4v does not).
    {.type = "glm", .pairing = Pairing::interleaved, .partial = 0.5},
    {.type = "glm4", .pairing = Pairing::interleaved, .partial = 0.5},
    {.type = "glm4v", .pairing = Pairing::interleaved, .mrope = true, .mrope_default = {8, 12, 12}},
    {.type = "glm4_moe", .partial = 0.5, .qk_norm = QkNormKind::rms, .qk_norm_key = "use_qk_norm", .norm_eps = 1e-5},
    {.type = "glm4v_moe",
     .partial = 0.5,
     .mrope = true,
     .mrope_default = {8, 12, 12},
     .qk_norm = QkNormKind::rms,
     .qk_norm_key = "use_qk_norm",
     .norm_eps = 1e-5},
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
    // Qwen3 and Qwen3-VL normalise every Q and K head (Qwen3RMSNorm) before rotating.
    {.type = "qwen3", .qk_norm = QkNormKind::rms},
    {.type = "qwen3_moe", .qk_norm = QkNormKind::rms},
    {.type = "qwen3_vl",
     .theta = 5e6,
     .mrope = true,
     .mrope_default = {24, 20, 20},
     .mrope_interleaved = true,
     .qk_norm = QkNormKind::rms},
    {.type = "qwen3_vl_moe",
     .theta = 5e6,
     .mrope = true,
     .mrope_default = {24, 20, 20},
     .mrope_interleaved = true,
     .qk_norm = QkNormKind::rms},
    {.type = "mixtral", .theta = 1e6},
    {.type = "gpt_oss", .theta = 1.5e5},
    {.type = "gemma3",
     .theta = 1e6,
     .local_theta = 1e4,
     .heads = 8,
     .kv_heads = 4,
     .head_dim = 256,
     .max_pos = 131072,
     .qk_norm = QkNormKind::rms_one_plus},
};

/// Llama-like defaults (rotate_half, theta 10000): llama, mistral, qwen2, qwen3, phi, phi3, ...
constexpr Family llama_like{};

}  // namespace

const Family& family_of(std::string_view type) {
  for (const Family& f : families)
    if (f.type == type) return f;
  return llama_like;
}

std::string family_name(std::string type) {
  constexpr std::string_view suffix = "_text";
  if (type.size() > suffix.size() && type.ends_with(suffix)) type.resize(type.size() - suffix.size());
  return type;
}

}  // namespace posenc::detail::config

// glm_scheme_for: the position scheme, mask pattern and rotation a GLM model_type implies (for `posenc info`).
#include <string>

#include "glm/detail.hpp"
#include "posenc/glm.hpp"

namespace posenc::glm {

namespace {

constexpr const char* known_types =
    "glm, glm4, glm4_moe, glm4v, glm4v_moe, glm4_moe_lite, glm_moe_dsa, chatglm, glm-130b, "
    "glm-blank-infilling";

GlmScheme causal_1d(std::string generation, std::string rotation) {
  return {std::move(generation),
          "1-D: arange (a padded batch: cumsum(attention_mask) - 1), +1 per decode step",
          "causal",
          std::move(rotation),
          1,
          MaskPattern::causal};
}

}  // namespace

GlmScheme glm_scheme_for(std::string_view model_type, bool position_encoding_2d) {
  if (model_type == "glm-blank-infilling") {
    return {"GLM (original, blank infilling; GLM-Large / GLM-10B)",
            "2-D (position, block): Part A = index in the corrupted text, Part B = its span's mask "
            "position; block 0 in Part A, 1..len+1 within each Part B span",
            "prefix-LM: Part A [0, sep) bidirectional, Part B causal",
            "none: learned absolute position and block-position embeddings added at the input",
            2,
            MaskPattern::prefix_lm};
  }
  if (model_type == "glm-130b") {
    return {"GLM-130B",
            "1-D: arange; with [MASK]/[sMASK] every position from <sop> on = the mask position, "
            "with [gMASK] positions continue",
            "prefix-LM: bidirectional before <sop>, causal from <sop> on",
            "half_split (rotate_half) over the full head (128 dims), theta 10000",
            1,
            MaskPattern::prefix_lm};
  }
  if (model_type == "chatglm" && position_encoding_2d) {
    return {"ChatGLM-6B",
            "2-D (position, block): position = arange, fixed at the mask position from <sop> on; "
            "block = 0 before <sop>, 1, 2, ... from <sop>; decode: block + 1",
            "prefix-LM: bidirectional before <sop>, causal from <sop> on",
            "2-D RoPE: each head split 64 + 64, each half half_split; first half by position, "
            "second by block position; theta 10000",
            2,
            MaskPattern::prefix_lm};
  }
  if (model_type == "chatglm") {
    return causal_1d("ChatGLM2-6B / ChatGLM3-6B / GLM-4-9B (remote code)",
                     "interleaved pairs on the first half of each head (64 of 128 dims), "
                     "theta 10000 * rope_ratio");
  }
  if (model_type == "glm") {
    return causal_1d("GLM-4-9B (HF glm)",
                     "interleaved, partial_rotary_factor 0.5 (64 of 128 dims)");
  }
  if (model_type == "glm4") {
    return causal_1d("GLM-4-0414 / GLM-Z1 (HF glm4)",
                     "interleaved, partial_rotary_factor 0.5 (64 of 128 dims)");
  }
  if (model_type == "glm4_moe") {
    return causal_1d("GLM-4.5 / GLM-4.6 / GLM-4.7 (HF glm4_moe)",
                     "half_split on the first 64 of 128 dims (partial_rotary_factor 0.5)");
  }
  if (model_type == "glm4v" || model_type == "glm4v_moe") {
    const bool moe = model_type == "glm4v_moe";
    return {moe ? "GLM-4.5V (HF glm4v_moe)" : "GLM-4.1V (HF glm4v)",
            "3-axis M-RoPE (t, h, w): text advances all axes by 1, vision blocks take grid ids; "
            "decode = past_len + rope_delta on all axes",
            "causal",
            moe ? "half_split + M-RoPE sections [8, 12, 12] over 64 rotary dims"
                : "interleaved + M-RoPE sections [8, 12, 12] over 64 rotary dims",
            3,
            MaskPattern::causal};
  }
  if (model_type == "glm4_moe_lite" || model_type == "glm_moe_dsa") {
    return causal_1d(model_type == "glm4_moe_lite" ? "GLM-4.7-Flash (HF glm4_moe_lite)"
                                                   : "GLM-5 (HF glm_moe_dsa)",
                     "MLA rope part (qk_rope_head_dim): pairs read interleaved, written "
                     "de-interleaved (interleaved_to_half)");
  }
  detail::fail(ErrorKind::config, "glm_scheme_for: model_type \"", model_type,
               "\" is not a GLM model type; known: ", known_types);
}

}  // namespace posenc::glm

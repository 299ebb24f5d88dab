// Building blocks of compute_frequencies, exposed so tests can check each against Hugging Face.
//
// Every function mirrors one expression of transformers 5.x `modeling_rope_utils.py` and says which
// of its operations are float32 tensor ops (rounded to float32 after each op; Python scalars are
// rounded to float32 when they meet a float32 tensor) and which are Python float (double) math.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "core/hf_arithmetic.hpp"
#include "posenc/rope.hpp"

namespace posenc::detail {

/// e_i = fl32(fl32(2i) / fl32(R)): torch `arange(0, R, 2).float() / R`.
float rope_exponent(std::int64_t i, std::int64_t rotary);

/// fl32(1 / base^e_i) for i < R/2: torch `1.0 / (base ** (arange(0, R, 2).float() / R))` with
/// `base` already a float32 value and the powers of `powers` (the device's torch, or exact).
std::vector<float> inv_freq_for_base(float base, std::int64_t rotary, const TorchPowers& powers);

/// The default scheme: inv_freq_for_base(fl32(theta), R, powers).
std::vector<float> default_inv_freq(double theta, std::int64_t rotary, const TorchPowers& powers);

/// YaRN's [low, high] dimension range in Python double, after truncation (floor/ceil when
/// `truncate`) and clamping to [0, R-1], before the `low == high` nudge of the ramp.
struct CorrectionRange {
  double low;
  double high;
};
CorrectionRange yarn_correction_range(std::int64_t rotary, double theta, double original_max, double beta_fast,
                                      double beta_slow, bool truncate);

/// get_mscale(scale, m) = 1 if scale <= 1 else 0.1 * m * ln(scale) + 1 (Python double).
double yarn_get_mscale(double scale, double mscale = 1.0);

/// The factor yarn and longrope use: params.factor, or max_position_embeddings /
/// original_max_position_embeddings (Python double) when params.factor is 0.
double resolved_factor(const ScalingParams& params);

/// YaRN's attention factor without an explicit override (mscale ratio for DeepSeek, else get_mscale).
double yarn_attention_factor(const ScalingParams& params);

/// LongRoPE's attention factor without an explicit override: 1 if factor <= 1, else
/// sqrt(1 + ln(factor) / ln(original_max_position_embeddings)).
double longrope_attention_factor(const ScalingParams& params);

/// DeepSeek-V2/V3 multiply the softmax scale qk_head_dim^-0.5 by get_mscale(factor, mscale_all_dim)^2
/// when mscale_all_dim is non-zero (HF DeepseekV3Attention); 1 otherwise. Not part of RoPE itself,
/// but the attention that consumes a yarn spec needs it.
double deepseek_softmax_scale_multiplier(const ScalingParams& params);

/// Dynamic NTK theta' when HF recomputes in the forward pass: seq_len is then a tensor
/// (`max(position_ids) + 1`), so theta' runs in float32 tensor arithmetic, s = max(seq_len, L):
///   x = fl32(fl32(fl32(factor) * fl32(s)) / fl32(L)) - fl32(factor - 1)   (each op rounded)
///   theta' = fl32(theta) * powers.scalar(x, R / (R - 2))               (0-dim `tensor ** scalar`)
/// (on the CPU, and in exact, the scalar power is fl32(pow(double(x), R / (R - 2)))).
float dynamic_theta(double theta, double factor, std::int64_t seq_len, std::int64_t max_position_embeddings,
                    std::int64_t rotary, const TorchPowers& powers);

/// The same theta' when HF is called with a Python int seq_len (its reference scripts, not the
/// forward pass): all Python double, rounded to float32 only where it meets the exponent tensor.
double dynamic_theta_python(double theta, double factor, std::int64_t seq_len,
                            std::int64_t max_position_embeddings, std::int64_t rotary);

/// Largest attention factor a spec may give (override or scheme): the largest float16, so a unit
/// input stays finite in every activation dtype. Real models use about 1 to 2.
inline constexpr double max_attention_factor = 65504.0;

/// compute_frequencies without RopeSpec::validate() (which calls check_frequency_range), with the
/// powers of a given arithmetic (host_powers, or an engine's own): `spec` must have passed the
/// per-field checks.
FrequencyTable frequencies_unchecked(const RopeSpec& spec, std::optional<std::int64_t> seq_len,
                                     const TorchPowers& powers);

/// The last step of RopeSpec::validate(): the tables the spec can produce (at init, and for
/// dynamic/longrope at the largest seq_len position_limit allows) hold finite inv_freq > 0 whose
/// angles stay finite in float32 up to position_limit - 1, and the attention factor lies in
/// [smallest normal float32, max_attention_factor]. Throws posenc::Error(invalid_argument) naming
/// the scheme's parameters otherwise. The tables checked are the exact ones: every arithmetic's
/// are within a float32 ulp of them.
void check_frequency_range(const RopeSpec& spec);

}  // namespace posenc::detail

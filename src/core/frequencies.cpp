// Frequency tables: compute_frequencies through the scheme registry (schemes.cpp), the float32 building blocks the schemes share, and the range check of the tables a spec can give.
//
// Bit-exactness notes (docs/NUMERICS.md §5):
// * torch evaluates `base ** exponent_tensor` with its device's pow; which pow stands for which
//   HfArithmetic is hf_arithmetic.hpp's TorchPowers, handed to every scheme.
// * Each float32 tensor op rounds; Python scalars are rounded to float32 where they meet a tensor;
//   `scalar / tensor` is torch's `tensor.reciprocal() * scalar` (two roundings). The comments at
//   each expression say which is which.
// * This translation unit is compiled with -ffp-contract=off: no a*b+c may become an FMA.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <string>

#include "core/frequencies_detail.hpp"
#include "core/schemes.hpp"
#include "core/text_detail.hpp"
#include "posenc/error.hpp"
#include "posenc/rope.hpp"

namespace posenc {
namespace detail {

namespace {

float f32(double v) { return static_cast<float>(v); }

}  // namespace

float rope_exponent(std::int64_t i, std::int64_t rotary) {
  return static_cast<float>(2 * i) / static_cast<float>(rotary);
}

std::vector<float> inv_freq_for_base(float base, std::int64_t rotary, const TorchPowers& powers) {
  std::vector<float> inv = powers.table(base, rotary);  // base ** (arange(0, R, 2).float() / R)
  for (float& v : inv) v = 1.0f / v;                    // reciprocal (the `* 1.0` is exact)
  return inv;
}

std::vector<float> default_inv_freq(double theta, std::int64_t rotary, const TorchPowers& powers) {
  return inv_freq_for_base(f32(theta), rotary, powers);
}

CorrectionRange yarn_correction_range(std::int64_t rotary, double theta, double original_max, double beta_fast,
                                      double beta_slow, bool truncate) {
  // find_correction_dim, Python double, operation for operation.
  const double dim = static_cast<double>(rotary);
  const auto correction_dim = [&](double rotations) {
    return (dim * std::log(original_max / (rotations * 2 * std::numbers::pi))) / (2 * std::log(theta));
  };
  double low = correction_dim(beta_fast);
  double high = correction_dim(beta_slow);
  if (truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  return {std::max(low, 0.0), std::min(high, dim - 1)};
}

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

double resolved_factor(const ScalingParams& params) {
  if (params.factor != 0.0) return params.factor;
  return static_cast<double>(params.max_position_embeddings) /
         static_cast<double>(params.original_max_position_embeddings);
}

double yarn_attention_factor(const ScalingParams& params) {
  const double factor = resolved_factor(params);
  // HF tests `mscale and mscale_all_dim`: both must be non-zero for the DeepSeek ratio.
  if (params.mscale != 0.0 && params.mscale_all_dim != 0.0)
    return yarn_get_mscale(factor, params.mscale) / yarn_get_mscale(factor, params.mscale_all_dim);
  return yarn_get_mscale(factor);
}

double longrope_attention_factor(const ScalingParams& params) {
  const double factor = resolved_factor(params);
  if (factor <= 1.0) return 1.0;
  return std::sqrt(1 + std::log(factor) / std::log(static_cast<double>(params.original_max_position_embeddings)));
}

double deepseek_softmax_scale_multiplier(const ScalingParams& params) {
  if (params.mscale_all_dim == 0.0) return 1.0;
  const double m = yarn_get_mscale(resolved_factor(params), params.mscale_all_dim);
  return m * m;
}

float dynamic_theta(double theta, double factor, std::int64_t seq_len, std::int64_t max_position_embeddings,
                    std::int64_t rotary, const TorchPowers& powers) {
  const std::int64_t s = std::max(seq_len, max_position_embeddings);  // torch.maximum, int64
  const double r = static_cast<double>(rotary);
  float x = f32(factor) * static_cast<float>(s);         // factor * seq_len        (float32 tensor)
  x = x / static_cast<float>(max_position_embeddings);  // / max_position_embeddings
  x = x - f32(factor - 1);                              // - (factor - 1): Python double, then fl32
  x = powers.scalar(x, r / (r - 2));                    // ** (dim / (dim - 2))
  return f32(theta) * x;                                // base * tensor
}

double dynamic_theta_python(double theta, double factor, std::int64_t seq_len,
                            std::int64_t max_position_embeddings, std::int64_t rotary) {
  const double s = static_cast<double>(std::max(seq_len, max_position_embeddings));
  const double l = static_cast<double>(max_position_embeddings);
  const double r = static_cast<double>(rotary);
  return theta * std::pow((factor * s / l) - (factor - 1), r / (r - 2));
}

}  // namespace detail

namespace detail {
namespace {

/// "scaling yarn, theta = 10000, params.factor = 4, ...": what a frequency-range message names.
std::string scheme_text(const RopeSpec& spec) {
  const SchemeRow& row = scheme_row(spec.scaling);
  std::string s = "scaling " + std::string(row.name) + ", theta = " + number_text(spec.theta);
  for (const SchemeParameter& p : row.parameters(spec.params)) s += ", params." + p.name + " = " + p.text;
  return s + ", position_limit = " + number_text(spec.position_limit);
}

}  // namespace

void check_frequency_range(const RopeSpec& spec) {
  const auto fail = [&](const std::string& what) {
    throw Error(ErrorKind::invalid_argument, "RopeSpec (" + scheme_text(spec) + ") " + what);
  };
  // The tables the spec can give: at init, and the extreme per-call ones. A growing table (dynamic's
  // theta') is largest at position_limit; a short/long scheme (longrope) switches once seq_len
  // passes its threshold (<= 2^53: validated, so + 1 cannot overflow).
  std::vector<std::optional<std::int64_t>> seq_lens = {std::nullopt};
  const SchemeRow& row = scheme_row(spec.scaling);
  const bool beyond = row.threshold != nullptr && spec.position_limit > row.threshold(spec.params);
  switch (row.call_table) {
    case CallTable::fixed: break;
    case CallTable::short_long:
      if (beyond) seq_lens.push_back(row.threshold(spec.params) + 1);  // the second table
      break;
    case CallTable::grows:
      if (beyond) seq_lens.push_back(spec.position_limit);  // the largest table
      break;
  }
  // The largest angle is inv_freq * fl32(position_limit - 1), formed in float32 by hf_compatible.
  const auto last_position = static_cast<float>(spec.position_limit - 1);
  for (const std::optional<std::int64_t> seq_len : seq_lens) {
    const FrequencyTable table = frequencies_unchecked(spec, seq_len, host_powers(HfArithmetic::exact));
    const std::string at = seq_len ? " for seq_len " + number_text(*seq_len) : std::string(" at init");
    for (std::size_t i = 0; i < table.inv_freq.size(); ++i) {
      const float v = table.inv_freq[i];
      if (!(std::isfinite(v) && v > 0.0f))
        fail("gives inv_freq[" + std::to_string(i) + "] = " + number_text(static_cast<double>(v)) + at +
             ": every inverse frequency must be finite and > 0 in float32 (a parameter is out of range)");
      if (!std::isfinite(v * last_position))
        fail("gives inv_freq[" + std::to_string(i) + "] = " + number_text(static_cast<double>(v)) + at +
             ", whose angle at position " + number_text(spec.position_limit - 1) +
             " overflows float32: lower the frequencies or position_limit");
    }
    const double af = spec.attention_factor.value_or(table.attention_factor);
    if (!(af >= static_cast<double>(std::numeric_limits<float>::min()) && af <= max_attention_factor))
      fail("gives the attention factor " + number_text(af) + at + ": it must lie in [" +
           number_text(static_cast<double>(std::numeric_limits<float>::min())) + ", " +
           number_text(max_attention_factor) + "]");
  }
}

FrequencyTable frequencies_unchecked(const RopeSpec& spec, std::optional<std::int64_t> seq_len,
                                     const TorchPowers& powers) {
  // Every scheme works on frequency_dim(): R, or R/2 for half_split_2d, whose halves are each a
  // RoPE of R/2 dims (pair_axes spreads the table over the pairs).
  FrequencyTable table = scheme_row(spec.scaling).table(spec, seq_len, powers);
  if (spec.attention_factor) table.attention_factor = *spec.attention_factor;
  return table;
}

}  // namespace detail

FrequencyTable compute_frequencies(const RopeSpec& spec, std::optional<std::int64_t> seq_len) {
  spec.validate();
  if (seq_len && *seq_len < 1)
    throw Error(ErrorKind::invalid_argument, "compute_frequencies: seq_len = " + std::to_string(*seq_len) +
                                                 ": must be >= 1 (the call's largest position + 1)");
  // On the host, an engine-dependent spec takes the CPU engine's arithmetic.
  HfArithmetic arithmetic = detail::effective_arithmetic(spec, HfArithmetic::torch_cpu);
  if (arithmetic == HfArithmetic::torch_cuda) {
    // transformers builds the init table on the CPU also for a model on a GPU (docs/NUMERICS.md
    // §3.4): the host has it. Tables computed during a call come from CUDA's powf.
    const detail::SchemeRow& row = detail::scheme_row(spec.scaling);
    if (seq_len && row.threshold != nullptr && *seq_len > row.threshold(spec.params))
      throw Error(ErrorKind::unsupported,
                  "compute_frequencies: hf_arithmetic torch_cuda, seq_len " + std::to_string(*seq_len) +
                      ": this call's table comes from CUDA's powf on the GPU (the GPU engine computes it); "
                      "the host has only the init table, up to seq_len " +
                      std::to_string(row.threshold(spec.params)));
    arithmetic = HfArithmetic::torch_cpu;
  }
  return detail::frequencies_unchecked(spec, seq_len, detail::host_powers(arithmetic));
}

}  // namespace posenc

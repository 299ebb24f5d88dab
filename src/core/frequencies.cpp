// Frequency schemes: inv_freq and the attention factor of a RopeSpec, as transformers 5.x computes them on the CPU.
//
// Bit-exactness notes (docs/NUMERICS.md §5):
// * torch evaluates `base ** exponent_tensor` with the CPU capability's powf. Its DEFAULT
//   capability is glibc powf followed by a float32 reciprocal, which is what std::pow(float, float)
//   gives here. AVX2/AVX512 builds of torch use SLEEF and differ by 1 ulp in about 1% of entries,
//   so tables from such a host can differ from ours by 1 ulp; callers needing that exact table
//   supply it with Scaling::table.
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
#include "core/text_detail.hpp"
#include "posenc/error.hpp"
#include "posenc/rope.hpp"

namespace posenc {
namespace detail {

namespace {

float f32(double v) { return static_cast<float>(v); }

// torch's float32 `tensor ** python_scalar` on a 0-dim tensor (PowKernel.cpp,
// pow_tensor_scalar_optimized_kernel<float, double>): 2 and 3 become multiplies; otherwise the
// scalar path computes std::pow(float, double), i.e. the double pow of the widened base with the
// unrounded Python exponent, rounded to float32.
float pow_tensor_scalar(float base, double exponent) {
  if (exponent == 2.0) return base * base;
  if (exponent == 3.0) return base * base * base;
  return f32(std::pow(static_cast<double>(base), exponent));
}

}  // namespace

float rope_exponent(std::int64_t i, std::int64_t rotary) {
  return static_cast<float>(2 * i) / static_cast<float>(rotary);
}

std::vector<float> inv_freq_for_base(float base, std::int64_t rotary) {
  std::vector<float> inv(static_cast<std::size_t>(rotary / 2));
  for (std::int64_t i = 0; i < rotary / 2; ++i) {
    const float p = std::pow(base, rope_exponent(i, rotary));  // glibc powf
    inv[static_cast<std::size_t>(i)] = 1.0f / p;              // reciprocal (the `* 1.0` is exact)
  }
  return inv;
}

std::vector<float> default_inv_freq(double theta, std::int64_t rotary) {
  return inv_freq_for_base(f32(theta), rotary);
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
                    std::int64_t rotary) {
  const std::int64_t s = std::max(seq_len, max_position_embeddings);  // torch.maximum, int64
  const double r = static_cast<double>(rotary);
  float x = f32(factor) * static_cast<float>(s);         // factor * seq_len        (float32 tensor)
  x = x / static_cast<float>(max_position_embeddings);  // / max_position_embeddings
  x = x - f32(factor - 1);                              // - (factor - 1): Python double, then fl32
  x = pow_tensor_scalar(x, r / (r - 2));                // ** (dim / (dim - 2))
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

namespace {

using detail::f32;

std::vector<float> linear_inv_freq(const RopeSpec& spec) {
  std::vector<float> inv = detail::default_inv_freq(spec.theta, spec.frequency_dim());
  const float factor = f32(spec.params.factor);
  for (float& v : inv) v = v / factor;  // in-place `inv_freq /= factor`
  return inv;
}

std::vector<float> yarn_inv_freq(const RopeSpec& spec) {
  const ScalingParams& p = spec.params;
  const std::int64_t r = spec.frequency_dim();
  const float factor = f32(detail::resolved_factor(p));
  // `beta_fast or 32`, `beta_slow or 1`: zero means "not given".
  const double beta_fast = p.beta_fast != 0.0 ? p.beta_fast : 32.0;
  const double beta_slow = p.beta_slow != 0.0 ? p.beta_slow : 1.0;
  const detail::CorrectionRange range = detail::yarn_correction_range(
      r, spec.theta, static_cast<double>(p.original_max_position_embeddings), beta_fast, beta_slow, p.truncate);
  double high = range.high;
  if (range.low == high) high += 0.001;  // "prevent singularity", Python double
  const float low32 = f32(range.low);
  const float span32 = f32(high - range.low);  // (max - min) in Python, rounded when it divides the tensor

  const float base = f32(spec.theta);
  std::vector<float> inv(static_cast<std::size_t>(r / 2));
  for (std::int64_t i = 0; i < r / 2; ++i) {
    const float pos_freq = std::pow(base, detail::rope_exponent(i, r));
    const float extrapolation = 1.0f / pos_freq;             // 1.0 / pos_freqs
    const float interpolation = 1.0f / (factor * pos_freq);  // 1.0 / (factor * pos_freqs)
    // linear_ramp_factor: clamp((arange(float32) - min) / (max - min), 0, 1)
    const float ramp = std::clamp((static_cast<float>(i) - low32) / span32, 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;  // 1 - ramp
    const float interpolation_weight = 1.0f - extrapolation_factor;
    inv[static_cast<std::size_t>(i)] =
        interpolation * interpolation_weight + extrapolation * extrapolation_factor;
  }
  return inv;
}

std::vector<float> longrope_inv_freq(const RopeSpec& spec, std::optional<std::int64_t> seq_len) {
  const ScalingParams& p = spec.params;
  const std::int64_t r = spec.frequency_dim();
  // Long factors once the call reaches past the pretraining length (HF `seq_len > OMP`).
  const bool use_long = seq_len && *seq_len > p.original_max_position_embeddings;
  const std::vector<double>& ext = use_long ? p.long_factor : p.short_factor;
  const float base = f32(spec.theta);
  std::vector<float> inv(static_cast<std::size_t>(r / 2));
  for (std::int64_t i = 0; i < r / 2; ++i) {
    const float pos_freq = std::pow(base, detail::rope_exponent(i, r));
    // torch.tensor(factors, float32) rounds each factor; 1.0 / (ext * pos_freq)
    inv[static_cast<std::size_t>(i)] = 1.0f / (f32(ext[static_cast<std::size_t>(i)]) * pos_freq);
  }
  return inv;
}

std::vector<float> llama3_inv_freq(const RopeSpec& spec) {
  const ScalingParams& p = spec.params;
  std::vector<float> inv = detail::default_inv_freq(spec.theta, spec.frequency_dim());
  const double old_context = static_cast<double>(p.original_max_position_embeddings);
  // Python doubles, rounded to float32 where they meet the wavelen tensor.
  const float low_freq_wavelen = f32(old_context / p.low_freq_factor);
  const float high_freq_wavelen = f32(old_context / p.high_freq_factor);
  const float factor = f32(p.factor);
  const float two_pi = f32(2 * std::numbers::pi);
  const float old_context32 = f32(old_context);
  const float low32 = f32(p.low_freq_factor);
  const float band32 = f32(p.high_freq_factor - p.low_freq_factor);
  for (float& v : inv) {
    const float wavelen = (1.0f / v) * two_pi;  // 2*pi / inv_freq = inv_freq.reciprocal() * 2*pi
    const float a = wavelen > low_freq_wavelen ? v / factor : v;
    // (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    const float smooth = ((1.0f / wavelen) * old_context32 - low32) / band32;
    // (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama, left to right
    const float smoothed = (1.0f - smooth) * a / factor + smooth * a;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    v = medium ? smoothed : a;
  }
  return inv;
}

/// "scaling yarn, theta = 10000, params.factor = 4, ...": what a frequency-range message names.
std::string scheme_text(const RopeSpec& spec) {
  using detail::number_text;
  const ScalingParams& p = spec.params;
  std::string s = std::string("scaling ") + to_string(spec.scaling) + ", theta = " + number_text(spec.theta);
  switch (spec.scaling) {
    case Scaling::none:
    case Scaling::table: break;
    case Scaling::llama3:
      s += ", params.low_freq_factor = " + number_text(p.low_freq_factor) +
           ", params.high_freq_factor = " + number_text(p.high_freq_factor);
      [[fallthrough]];
    case Scaling::linear:
    case Scaling::dynamic:
    case Scaling::yarn:
    case Scaling::longrope: s += ", params.factor = " + number_text(p.factor); break;
  }
  if (spec.scaling == Scaling::dynamic)
    s += ", params.max_position_embeddings = " + number_text(p.max_position_embeddings);
  if (spec.scaling == Scaling::yarn)
    s += ", params.mscale = " + number_text(p.mscale) + ", params.mscale_all_dim = " + number_text(p.mscale_all_dim);
  if (spec.scaling == Scaling::yarn || spec.scaling == Scaling::longrope || spec.scaling == Scaling::llama3)
    s += ", params.original_max_position_embeddings = " + number_text(p.original_max_position_embeddings);
  return s + ", position_limit = " + number_text(spec.position_limit);
}

}  // namespace

namespace detail {

void check_frequency_range(const RopeSpec& spec) {
  const auto fail = [&](const std::string& what) {
    throw Error(ErrorKind::invalid_argument, "RopeSpec (" + scheme_text(spec) + ") " + what);
  };
  // The tables the spec can give: at init, and the extreme per-call ones. dynamic's theta' grows
  // with seq_len, so its largest is at position_limit; longrope switches to its long factors once
  // seq_len passes original_max_position_embeddings (<= 2^53: validated, so + 1 cannot overflow).
  std::vector<std::optional<std::int64_t>> seq_lens = {std::nullopt};
  const ScalingParams& p = spec.params;
  if (spec.scaling == Scaling::dynamic && spec.position_limit > p.max_position_embeddings)
    seq_lens.push_back(spec.position_limit);
  if (spec.scaling == Scaling::longrope && spec.position_limit > p.original_max_position_embeddings)
    seq_lens.push_back(p.original_max_position_embeddings + 1);
  // The largest angle is inv_freq * fl32(position_limit - 1), formed in float32 by hf_compatible.
  const auto last_position = static_cast<float>(spec.position_limit - 1);
  for (const std::optional<std::int64_t> seq_len : seq_lens) {
    const FrequencyTable table = frequencies_unchecked(spec, seq_len);
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

FrequencyTable frequencies_unchecked(const RopeSpec& spec, std::optional<std::int64_t> seq_len) {
  // Every scheme works on frequency_dim(): R, or R/2 for half_split_2d, whose halves are each a
  // RoPE of R/2 dims (pair_axes spreads the table over the pairs).
  const std::int64_t r = spec.frequency_dim();
  const ScalingParams& p = spec.params;
  FrequencyTable table;
  switch (spec.scaling) {
    case Scaling::none:
      table.inv_freq = detail::default_inv_freq(spec.theta, r);
      break;
    case Scaling::linear:
      table.inv_freq = linear_inv_freq(spec);
      break;
    case Scaling::dynamic:
      // HF recomputes only when the call grows past max_position_embeddings; below that the init
      // table (= default) is used.
      if (seq_len && *seq_len > p.max_position_embeddings)
        table.inv_freq = detail::inv_freq_for_base(
            detail::dynamic_theta(spec.theta, p.factor, *seq_len, p.max_position_embeddings, r), r);
      else
        table.inv_freq = detail::default_inv_freq(spec.theta, r);
      break;
    case Scaling::yarn:
      table.inv_freq = yarn_inv_freq(spec);
      table.attention_factor = detail::yarn_attention_factor(p);
      break;
    case Scaling::longrope:
      table.inv_freq = longrope_inv_freq(spec, seq_len);
      table.attention_factor = detail::longrope_attention_factor(p);
      break;
    case Scaling::llama3:
      table.inv_freq = llama3_inv_freq(spec);
      break;
    case Scaling::table:
      table.inv_freq = p.inv_freq;
      break;
  }
  if (spec.attention_factor) table.attention_factor = *spec.attention_factor;
  return table;
}

}  // namespace detail

FrequencyTable compute_frequencies(const RopeSpec& spec, std::optional<std::int64_t> seq_len) {
  spec.validate();
  if (seq_len && *seq_len < 1)
    throw Error(ErrorKind::invalid_argument, "compute_frequencies: seq_len = " + std::to_string(*seq_len) +
                                                 ": must be >= 1 (the call's largest position + 1)");
  return detail::frequencies_unchecked(spec, seq_len);
}

}  // namespace posenc

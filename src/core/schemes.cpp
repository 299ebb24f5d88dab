// The frequency-scheme registry (schemes.hpp): one row per Scaling, and next to it everything that is that scheme's alone.
#include "core/schemes.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <numbers>
#include <string>

#include "core/frequencies_detail.hpp"
#include "core/spec_checks.hpp"
#include "core/text_detail.hpp"
#include "posenc/error.hpp"

namespace posenc::detail {
namespace {

float f32(double v) { return static_cast<float>(v); }

// ---- inv_freq of each scheme (transformers 5.x, expression for expression; docs/NUMERICS.md §5) -

std::vector<float> linear_inv_freq(const RopeSpec& spec, const TorchPowers& powers) {
  std::vector<float> inv = default_inv_freq(spec.theta, spec.frequency_dim(), powers);
  const float factor = f32(spec.params.factor);
  for (float& v : inv) v = v / factor;  // in-place `inv_freq /= factor`
  return inv;
}

std::vector<float> yarn_inv_freq(const RopeSpec& spec, const TorchPowers& powers) {
  const ScalingParams& p = spec.params;
  const std::int64_t r = spec.frequency_dim();
  const float factor = f32(resolved_factor(p));
  // `beta_fast or 32`, `beta_slow or 1`: zero means "not given".
  const double beta_fast = p.beta_fast != 0.0 ? p.beta_fast : 32.0;
  const double beta_slow = p.beta_slow != 0.0 ? p.beta_slow : 1.0;
  const CorrectionRange range = yarn_correction_range(
      r, spec.theta, static_cast<double>(p.original_max_position_embeddings), beta_fast, beta_slow, p.truncate);
  double high = range.high;
  if (range.low == high) high += 0.001;  // "prevent singularity", Python double
  const float low32 = f32(range.low);
  const float span32 = f32(high - range.low);  // (max - min) in Python, rounded when it divides the tensor

  const std::vector<float> pos_freqs = powers.table(f32(spec.theta), r);  // base ** (arange / dim)
  std::vector<float> inv(static_cast<std::size_t>(r / 2));
  for (std::int64_t i = 0; i < r / 2; ++i) {
    const float pos_freq = pos_freqs[static_cast<std::size_t>(i)];
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

std::vector<float> longrope_inv_freq(const RopeSpec& spec, std::optional<std::int64_t> seq_len,
                                     const TorchPowers& powers) {
  const ScalingParams& p = spec.params;
  const std::int64_t r = spec.frequency_dim();
  // Long factors once the call reaches past the pretraining length (HF `seq_len > OMP`).
  const bool use_long = seq_len && *seq_len > p.original_max_position_embeddings;
  const std::vector<double>& ext = use_long ? p.long_factor : p.short_factor;
  const std::vector<float> pos_freqs = powers.table(f32(spec.theta), r);  // base ** inv_freq_shape
  std::vector<float> inv(static_cast<std::size_t>(r / 2));
  for (std::int64_t i = 0; i < r / 2; ++i) {
    const float pos_freq = pos_freqs[static_cast<std::size_t>(i)];
    // torch.tensor(factors, float32) rounds each factor; 1.0 / (ext * pos_freq)
    inv[static_cast<std::size_t>(i)] = 1.0f / (f32(ext[static_cast<std::size_t>(i)]) * pos_freq);
  }
  return inv;
}

std::vector<float> llama3_inv_freq(const RopeSpec& spec, const TorchPowers& powers) {
  const ScalingParams& p = spec.params;
  std::vector<float> inv = default_inv_freq(spec.theta, spec.frequency_dim(), powers);
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

// ---- the rows -------------------------------------------------------------------------------

std::string factor_text(const ScalingParams& p) {
  return p.factor == 0.0 ? std::string("max_pos/original_max") : number_text(p.factor);
}

std::string count_text(std::size_t n) { return std::to_string(n) + " values"; }

std::int64_t max_position_threshold(const ScalingParams& p) { return p.max_position_embeddings; }
std::int64_t original_max_threshold(const ScalingParams& p) { return p.original_max_position_embeddings; }

FrequencyTable with_unit_factor(std::vector<float> inv_freq) { return FrequencyTable{std::move(inv_freq), 1.0}; }

const std::array<SchemeRow, 7>& rows() {
  static const std::array<SchemeRow, 7> table = {{
      {
          .scaling = Scaling::none,
          .name = "none",
          .summary = "inv_freq[i] = 1 / theta^(2i/R) (the default)",
          .rope_types = {"default", "mrope"},  // "mrope": Qwen2-VL's 4.x spelling of default
          .table = [](const RopeSpec& s, std::optional<std::int64_t>, const TorchPowers& powers) {
            return with_unit_factor(default_inv_freq(s.theta, s.frequency_dim(), powers));
          },
          .validate = [](const RopeSpec&) {},
          .parameters = [](const ScalingParams&) { return std::vector<SchemeParameter>{}; },
      },
      {
          .scaling = Scaling::linear,
          .name = "linear",
          .summary = "position interpolation: the default inv_freq / factor",
          .rope_types = {"linear"},
          .config_keys = {"factor"},
          .required_keys = {"factor"},
          .table = [](const RopeSpec& s, std::optional<std::int64_t>, const TorchPowers& powers) {
            return with_unit_factor(linear_inv_freq(s, powers));
          },
          .validate = [](const RopeSpec& s) { require_float32("params.factor", s.params.factor); },
          .parameters = [](const ScalingParams& p) { return std::vector<SchemeParameter>{{"factor", factor_text(p)}}; },
      },
      {
          .scaling = Scaling::dynamic,
          .name = "dynamic",
          .summary = "dynamic NTK: theta grows with the call's largest position past max_position_embeddings "
                     "(a table per call there)",
          .rope_types = {"dynamic"},
          .config_keys = {"factor"},
          .required_keys = {"factor"},
          .uses_max_position = true,
          .call_table = CallTable::grows,
          .threshold = max_position_threshold,
          .table = [](const RopeSpec& s, std::optional<std::int64_t> seq_len, const TorchPowers& powers) {
            // HF recomputes only when the call grows past max_position_embeddings; below that the
            // init table (= default) is used.
            const ScalingParams& p = s.params;
            const std::int64_t r = s.frequency_dim();
            if (seq_len && *seq_len > p.max_position_embeddings)
              return with_unit_factor(inv_freq_for_base(
                  dynamic_theta(s.theta, p.factor, *seq_len, p.max_position_embeddings, r, powers), r, powers));
            return with_unit_factor(default_inv_freq(s.theta, r, powers));
          },
          .validate = [](const RopeSpec& s) {
            require_float32("params.factor", s.params.factor);
            require_context("params.max_position_embeddings", s.params.max_position_embeddings);
            // theta' uses the exponent R / (R - 2).
            if (s.frequency_dim() < 4)
              reject(s.pairing == Pairing::half_split_2d ? "rotary_dim / 2" : "rotary_dim", number_text(s.frequency_dim()),
                     "must be >= 4 for dynamic scaling (exponent R/(R-2))");
          },
          .parameters = [](const ScalingParams& p) {
            return std::vector<SchemeParameter>{{"factor", factor_text(p)},
                                                {"max_position_embeddings", number_text(p.max_position_embeddings)}};
          },
      },
      {
          .scaling = Scaling::yarn,
          .name = "yarn",
          .summary = "YaRN: a ramp between interpolation and extrapolation, attention factor from mscale",
          .rope_types = {"yarn"},
          .config_keys = {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
                          "mscale", "mscale_all_dim", "truncate"},
          .uses_original_max = true,
          .derives_factor = true,
          .table = [](const RopeSpec& s, std::optional<std::int64_t>, const TorchPowers& powers) {
            return FrequencyTable{yarn_inv_freq(s, powers), yarn_attention_factor(s.params)};
          },
          .validate = [](const RopeSpec& s) {
            const ScalingParams& p = s.params;
            require_factor_or_derivable(p, /*in_float32=*/true);
            require_context("params.original_max_position_embeddings", p.original_max_position_embeddings);
            require_non_negative("params.beta_fast", p.beta_fast);
            require_non_negative("params.beta_slow", p.beta_slow);
            require_non_negative("params.mscale", p.mscale);
            require_non_negative("params.mscale_all_dim", p.mscale_all_dim);
            // The ramp runs from the dimension of beta_fast rotations to that of beta_slow: the
            // other way round it swaps interpolation and extrapolation. 0 means the default (32, 1).
            const double fast = p.beta_fast != 0.0 ? p.beta_fast : 32.0;
            const double slow = p.beta_slow != 0.0 ? p.beta_slow : 1.0;
            if (!(fast > slow))
              reject("params.beta_fast", number_text(fast), "must be > params.beta_slow = " + number_text(slow));
            // The correction range divides by ln(theta).
            if (!(s.theta > 1.0))
              reject("theta", number_text(s.theta), "must be > 1 for yarn (its ramp divides by ln theta)");
          },
          .parameters = [](const ScalingParams& p) {
            return std::vector<SchemeParameter>{
                {"factor", factor_text(p)},
                {"original_max_position_embeddings", number_text(p.original_max_position_embeddings)},
                {"beta_fast", number_text(p.beta_fast)},
                {"beta_slow", number_text(p.beta_slow)},
                {"mscale", number_text(p.mscale)},
                {"mscale_all_dim", number_text(p.mscale_all_dim)},
                {"truncate", p.truncate ? "true" : "false"}};
          },
      },
      {
          .scaling = Scaling::longrope,
          .name = "longrope",
          .summary = "LongRoPE: per-frequency short factors, long ones once the call passes "
                     "original_max_position_embeddings",
          .rope_types = {"longrope", "su"},  // "su": Phi-3's pre-release name
          .config_keys = {"short_factor", "long_factor", "factor", "original_max_position_embeddings", "attention_factor"},
          .required_keys = {"short_factor", "long_factor"},
          .uses_original_max = true,
          .derives_factor = true,
          .call_table = CallTable::short_long,
          .threshold = original_max_threshold,
          .table = [](const RopeSpec& s, std::optional<std::int64_t> seq_len, const TorchPowers& powers) {
            return FrequencyTable{longrope_inv_freq(s, seq_len, powers), longrope_attention_factor(s.params)};
          },
          .validate = [](const RopeSpec& s) {
            const ScalingParams& p = s.params;
            require_factor_or_derivable(p, /*in_float32=*/false);
            require_context("params.original_max_position_embeddings", p.original_max_position_embeddings);
            require_list("params.short_factor", p.short_factor, s.frequency_dim() / 2, s.pairing);
            require_list("params.long_factor", p.long_factor, s.frequency_dim() / 2, s.pairing);
          },
          .parameters = [](const ScalingParams& p) {
            return std::vector<SchemeParameter>{
                {"factor", factor_text(p)},
                {"original_max_position_embeddings", number_text(p.original_max_position_embeddings)},
                {"short_factor", count_text(p.short_factor.size())},
                {"long_factor", count_text(p.long_factor.size())}};
          },
      },
      {
          .scaling = Scaling::llama3,
          .name = "llama3",
          .summary = "Llama 3.1: low frequencies / factor, high ones kept, the band between smoothed",
          .rope_types = {"llama3"},
          .config_keys = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
          .required_keys = {"factor", "low_freq_factor", "high_freq_factor"},
          .uses_original_max = true,
          .table = [](const RopeSpec& s, std::optional<std::int64_t>, const TorchPowers& powers) {
            return with_unit_factor(llama3_inv_freq(s, powers));
          },
          .validate = [](const RopeSpec& s) {
            const ScalingParams& p = s.params;
            require_float32("params.factor", p.factor);
            require_context("params.original_max_position_embeddings", p.original_max_position_embeddings);
            require_float32("params.low_freq_factor", p.low_freq_factor);
            require_float32("params.high_freq_factor", p.high_freq_factor);
            // The smoothing divides by (high - low).
            if (!std::isfinite(p.high_freq_factor) || !(p.high_freq_factor > p.low_freq_factor))
              reject("params.high_freq_factor", number_text(p.high_freq_factor),
                     "must be finite and > params.low_freq_factor = " + number_text(p.low_freq_factor));
          },
          .parameters = [](const ScalingParams& p) {
            return std::vector<SchemeParameter>{
                {"factor", factor_text(p)},
                {"low_freq_factor", number_text(p.low_freq_factor)},
                {"high_freq_factor", number_text(p.high_freq_factor)},
                {"original_max_position_embeddings", number_text(p.original_max_position_embeddings)}};
          },
      },
      {
          .scaling = Scaling::table,
          .name = "table",
          .summary = "the caller's inv_freq table",
          .table = [](const RopeSpec& s, std::optional<std::int64_t>, const TorchPowers&) {
            return with_unit_factor(s.params.inv_freq);
          },
          .validate = [](const RopeSpec& s) {
            require_list("params.inv_freq", s.params.inv_freq, s.frequency_dim() / 2, s.pairing);
          },
          .parameters = [](const ScalingParams& p) {
            return std::vector<SchemeParameter>{{"inv_freq", count_text(p.inv_freq.size()) + " (caller-supplied)"}};
          },
      },
  }};
  return table;
}

}  // namespace

std::span<const SchemeRow> scheme_rows() { return rows(); }

const SchemeRow* find_scheme_row(Scaling scaling) noexcept {
  for (const SchemeRow& row : rows())
    if (row.scaling == scaling) return &row;
  return nullptr;
}

const SchemeRow& scheme_row(Scaling scaling) {
  if (const SchemeRow* row = find_scheme_row(scaling)) return *row;
  throw Error(ErrorKind::invalid_argument, "scaling " + std::to_string(static_cast<int>(scaling)) + " is not a known value");
}

const SchemeRow* scheme_for_rope_type(std::string_view rope_type) {
  for (const SchemeRow& row : rows())
    if (std::find(row.rope_types.begin(), row.rope_types.end(), rope_type) != row.rope_types.end()) return &row;
  return nullptr;
}

}  // namespace posenc::detail

namespace posenc {

SchemeInfo scheme_info(Scaling scaling) {
  const detail::SchemeRow& row = detail::scheme_row(scaling);
  SchemeInfo info;
  info.scaling = row.scaling;
  info.name = row.name;
  info.summary = row.summary;
  for (std::string_view name : row.rope_types) info.rope_types.emplace_back(name);
  info.depends_on_call = row.call_table != detail::CallTable::fixed;
  return info;
}

}  // namespace posenc

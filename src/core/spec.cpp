// RopeSpec validation and description, and the names of the spec's enumerations.
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "core/frequencies_detail.hpp"
#include "core/text_detail.hpp"
#include "posenc/error.hpp"
#include "posenc/rope.hpp"

namespace posenc {

const char* to_string(Pairing p) noexcept {
  switch (p) {
    case Pairing::half_split: return "half_split";
    case Pairing::interleaved: return "interleaved";
    case Pairing::interleaved_to_half: return "interleaved_to_half";
    case Pairing::half_split_2d: return "half_split_2d";
  }
  return "unknown";
}

const char* to_string(Numerics n) noexcept {
  switch (n) {
    case Numerics::hf_compatible: return "hf_compatible";
    case Numerics::hf_fp32_apply: return "hf_fp32_apply";
    case Numerics::accurate: return "accurate";
  }
  return "unknown";
}

const char* to_string(Scaling s) noexcept {
  switch (s) {
    case Scaling::none: return "none";
    case Scaling::linear: return "linear";
    case Scaling::dynamic: return "dynamic";
    case Scaling::yarn: return "yarn";
    case Scaling::longrope: return "longrope";
    case Scaling::llama3: return "llama3";
    case Scaling::table: return "table";
  }
  return "unknown";
}

namespace {

using detail::number_text;

[[noreturn]] void reject(const std::string& field, const std::string& value, const std::string& limit) {
  throw Error(ErrorKind::invalid_argument, "RopeSpec." + field + " = " + value + ": " + limit);
}

bool positive_finite(double v) { return std::isfinite(v) && v > 0.0; }

void require_positive(const std::string& field, double v) {
  if (!positive_finite(v)) reject(field, number_text(v), "must be finite and > 0");
}

void require_non_negative(const std::string& field, double v) {
  if (!std::isfinite(v) || v < 0.0) reject(field, number_text(v), "must be finite and >= 0");
}

void require_positive(const std::string& field, std::int64_t v) {
  if (v <= 0) reject(field, number_text(v), "must be > 0");
}

constexpr double float32_min = std::numeric_limits<float>::min();  // smallest normal float32
constexpr double float32_max = std::numeric_limits<float>::max();

/// A value the schemes round to float32 (theta, factors) must be a normal float32: below the
/// smallest normal it rounds to 0 or a subnormal and a division by it is inf; above the largest it
/// rounds to inf.
void require_float32(const std::string& field, double v) {
  if (!(v >= float32_min && v <= float32_max))
    reject(field, number_text(v),
           "must be finite and > 0, within float32's normal range [" + number_text(float32_min) + ", " +
               number_text(float32_max) + "] (it is rounded to float32)");
}

/// Context lengths the schemes divide and take logarithms of in double: exact there up to 2^53,
/// which also keeps `length + 1` (the first seq_len past it) from overflowing.
constexpr std::int64_t max_context = std::int64_t{1} << 53;

void require_context(const std::string& field, std::int64_t v) {
  require_positive(field, v);
  if (v > max_context) reject(field, number_text(v), "must be <= 2^53 = " + number_text(max_context));
}

// yarn and longrope accept factor 0 as "derive it as max_position_embeddings / original_max"
// (what HF does when the config has no factor), so that path needs max_position_embeddings.
// `in_float32`: the scheme rounds the factor to float32 (yarn), not only uses it in double (longrope).
void require_factor_or_derivable(const ScalingParams& p, bool in_float32) {
  if (p.factor == 0.0) {
    if (p.max_position_embeddings <= 0)
      reject("params.max_position_embeddings", number_text(p.max_position_embeddings),
             "must be > 0 when params.factor = 0 (factor derived as max_position_embeddings / "
             "original_max_position_embeddings)");
    require_context("params.max_position_embeddings", p.max_position_embeddings);
    return;
  }
  if (in_float32) require_float32("params.factor", p.factor);
  else require_positive("params.factor", p.factor);
}

template <typename T>
void require_list(const std::string& field, const std::vector<T>& values, std::int64_t expected, Pairing pairing) {
  if (static_cast<std::int64_t>(values.size()) != expected)
    reject(field + ".size()", number_text(static_cast<std::int64_t>(values.size())),
           std::string(pairing == Pairing::half_split_2d ? "must equal rotary_dim / 4 = " : "must equal rotary_dim / 2 = ") +
               number_text(expected));
  for (std::size_t i = 0; i < values.size(); ++i) {
    const auto v = static_cast<double>(values[i]);
    if (!positive_finite(v)) reject(field + "[" + std::to_string(i) + "]", number_text(v), "must be finite and > 0");
    // LongRoPE factors are rounded to float32 and divided by: a normal float32 (a table's
    // inv_freq already is a float32, and may be subnormal: a tiny angle is still an angle).
    if constexpr (std::is_same_v<T, double>) require_float32(field + "[" + std::to_string(i) + "]", v);
  }
}

std::string section_text(const std::vector<std::int64_t>& section) {
  std::string s = "[";
  for (std::size_t i = 0; i < section.size(); ++i) s += (i ? ", " : "") + number_text(section[i]);
  return s + "]";
}

/// Most position streams a spec may have: t, h, w and ggml's fourth (vision) section. Pair streams
/// are stored as bytes and the engines keep one position per stream per token.
constexpr std::size_t max_streams = 4;

void validate_mrope(const RopeSpec& spec) {
  const std::vector<std::int64_t>& section = spec.mrope_section;
  if (section.empty()) {
    if (spec.mrope_interleaved)
      reject("mrope_interleaved", "true", "needs mrope_section (the pairs of each position stream)");
    return;
  }
  const std::string text = section_text(section);
  if (spec.pairing == Pairing::half_split_2d)
    reject("mrope_section", text, "cannot be combined with pairing half_split_2d (its streams are fixed)");
  if (section.size() > max_streams)
    reject("mrope_section", text, "has " + std::to_string(section.size()) + " streams; at most " +
                                      std::to_string(max_streams) + " are supported");
  if (spec.mrope_interleaved && section.size() != 3)
    reject("mrope_section", text, "must have 3 entries (t, h, w) for mrope_interleaved");
  std::int64_t sum = 0;  // saturating: an absurd entry must make a message, not an overflow
  for (std::size_t i = 0; i < section.size(); ++i) {
    if (section[i] <= 0)
      reject("mrope_section[" + std::to_string(i) + "]", number_text(section[i]), "must be > 0 (in " + text + ")");
    sum = section[i] > INT64_MAX - sum ? INT64_MAX : sum + section[i];
  }
  if (sum != spec.rotary() / 2)
    reject("mrope_section", text,
           "sums to " + number_text(sum) + ", must equal rotary_dim / 2 = " + number_text(spec.rotary() / 2));
}

}  // namespace

void RopeSpec::validate() const {
  // Enumerations first: a value cast from a bad integer would otherwise select no code path.
  if (static_cast<int>(pairing) > static_cast<int>(Pairing::half_split_2d))
    reject("pairing", std::to_string(static_cast<int>(pairing)), "is not a Pairing value");
  if (static_cast<int>(numerics) > static_cast<int>(Numerics::accurate))
    reject("numerics", std::to_string(static_cast<int>(numerics)), "is not a Numerics value");
  if (static_cast<int>(scaling) > static_cast<int>(Scaling::table))
    reject("scaling", std::to_string(static_cast<int>(scaling)), "is not a Scaling value");

  if (head_dim < 2 || head_dim > max_head_dim)
    reject("head_dim", number_text(head_dim), "must be in [2, " + number_text(max_head_dim) + "]");
  if (head_dim % 2 != 0) reject("head_dim", number_text(head_dim), "must be even");
  if (rotary_dim < 0)
    reject("rotary_dim", number_text(rotary_dim), "must be 0 (meaning head_dim) or a positive even number");
  if (rotary_dim % 2 != 0) reject("rotary_dim", number_text(rotary_dim), "must be even (rotation pairs)");
  if (rotary_offset < 0) reject("rotary_offset", number_text(rotary_offset), "must be >= 0");
  const std::int64_t r = rotary();
  if (r > head_dim - rotary_offset)
    reject("rotary_offset + rotary_dim", number_text(rotary_offset) + " + " + number_text(r),
           "must be <= head_dim = " + number_text(head_dim));
  if (pairing == Pairing::half_split_2d && r % 4 != 0)
    reject("rotary_dim", number_text(r), "must be a multiple of 4 for half_split_2d (two halves of pairs)");
  validate_mrope(*this);
  require_float32("theta", theta);
  if (position_limit <= 0) reject("position_limit", number_text(position_limit), "must be > 0");
  if (attention_factor && !(*attention_factor >= float32_min && *attention_factor <= detail::max_attention_factor))
    reject("attention_factor", number_text(*attention_factor),
           "must be finite and > 0, within [" + number_text(float32_min) + ", " +
               number_text(detail::max_attention_factor) + "] (it scales cos and sin in every dtype)");

  // The schemes work on frequency_dim() (R, or R/2 for half_split_2d): their lists have
  // frequency_dim() / 2 entries.
  const std::int64_t fd = frequency_dim();
  const ScalingParams& p = params;
  switch (scaling) {
    case Scaling::none:
      break;
    case Scaling::linear:
      require_float32("params.factor", p.factor);
      break;
    case Scaling::dynamic:
      require_float32("params.factor", p.factor);
      require_context("params.max_position_embeddings", p.max_position_embeddings);
      // theta' uses the exponent R / (R - 2).
      if (fd < 4)
        reject(pairing == Pairing::half_split_2d ? "rotary_dim / 2" : "rotary_dim", number_text(fd),
               "must be >= 4 for dynamic scaling (exponent R/(R-2))");
      break;
    case Scaling::yarn: {
      require_factor_or_derivable(p, /*in_float32=*/true);
      require_context("params.original_max_position_embeddings", p.original_max_position_embeddings);
      require_non_negative("params.beta_fast", p.beta_fast);
      require_non_negative("params.beta_slow", p.beta_slow);
      require_non_negative("params.mscale", p.mscale);
      require_non_negative("params.mscale_all_dim", p.mscale_all_dim);
      // The ramp runs from the dimension of beta_fast rotations to that of beta_slow: the other
      // way round it swaps interpolation and extrapolation. 0 means the default (32, 1).
      const double fast = p.beta_fast != 0.0 ? p.beta_fast : 32.0;
      const double slow = p.beta_slow != 0.0 ? p.beta_slow : 1.0;
      if (!(fast > slow))
        reject("params.beta_fast", number_text(fast), "must be > params.beta_slow = " + number_text(slow));
      // The correction range divides by ln(theta).
      if (!(theta > 1.0)) reject("theta", number_text(theta), "must be > 1 for yarn (its ramp divides by ln theta)");
      break;
    }
    case Scaling::longrope:
      require_factor_or_derivable(p, /*in_float32=*/false);
      require_context("params.original_max_position_embeddings", p.original_max_position_embeddings);
      require_list("params.short_factor", p.short_factor, fd / 2, pairing);
      require_list("params.long_factor", p.long_factor, fd / 2, pairing);
      break;
    case Scaling::llama3:
      require_float32("params.factor", p.factor);
      require_context("params.original_max_position_embeddings", p.original_max_position_embeddings);
      require_float32("params.low_freq_factor", p.low_freq_factor);
      require_float32("params.high_freq_factor", p.high_freq_factor);
      // The smoothing divides by (high - low).
      if (!std::isfinite(p.high_freq_factor) || !(p.high_freq_factor > p.low_freq_factor))
        reject("params.high_freq_factor", number_text(p.high_freq_factor),
               "must be finite and > params.low_freq_factor = " + number_text(p.low_freq_factor));
      break;
    case Scaling::table:
      require_list("params.inv_freq", p.inv_freq, fd / 2, pairing);
      break;
  }
  // Every parameter is in range on its own; together they must still give finite frequencies,
  // angles and attention factor (e.g. a dynamic factor whose theta' overflows at position_limit).
  detail::check_frequency_range(*this);
}

std::string RopeSpec::describe() const {
  using detail::number_text;
  const std::int64_t r = rotary();
  std::ostringstream out;
  out << "head_dim          " << head_dim << '\n';
  out << "rotary window     dims [" << rotary_offset << ", " << rotary_offset + r << ") of " << head_dim
      << " (" << frequency_dim() / 2 << " frequencies";
  if (r != head_dim) out << "; " << head_dim - r << " dims pass through";
  out << ")\n";
  out << "pairing           " << to_string(pairing) << '\n';
  if (pairing == Pairing::half_split_2d) {
    out << "2-D RoPE          (ChatGLM-6B) dims [" << rotary_offset << ", " << rotary_offset + r / 2
        << ") rotate by position stream 0 (position), [" << rotary_offset + r / 2 << ", " << rotary_offset + r
        << ") by stream 1 (block position), each half-split with the " << r / 4
        << " frequencies of a RoPE of " << r / 2 << " dims; angles in float32 (the original remote code "
           "forms them in the model dtype, fp16)\n";
  }
  if (!mrope_section.empty()) {
    out << "M-RoPE            sections " << section_text(mrope_section) << " ("
        << (mrope_interleaved ? "interleaved, Qwen3-VL" : "contiguous") << "), " << mrope_section.size()
        << " position streams\n";
  }
  out << "theta             " << number_text(theta) << '\n';
  out << "scaling           " << to_string(scaling);
  const ScalingParams& p = params;
  const auto factor_text = [&] {
    return p.factor == 0.0 ? std::string("max_pos/original_max") : number_text(p.factor);
  };
  switch (scaling) {
    case Scaling::none: break;
    case Scaling::linear: out << " (factor " << factor_text() << ")"; break;
    case Scaling::dynamic:
      out << " (factor " << factor_text() << ", max_position_embeddings " << p.max_position_embeddings << ")";
      break;
    case Scaling::yarn:
      out << " (factor " << factor_text() << ", original_max_position_embeddings "
          << p.original_max_position_embeddings << ", beta_fast " << number_text(p.beta_fast) << ", beta_slow "
          << number_text(p.beta_slow) << ", mscale " << number_text(p.mscale) << ", mscale_all_dim "
          << number_text(p.mscale_all_dim) << ", truncate " << (p.truncate ? "true" : "false") << ")";
      break;
    case Scaling::longrope:
      out << " (factor " << factor_text() << ", original_max_position_embeddings "
          << p.original_max_position_embeddings << ", " << p.short_factor.size() << " short / "
          << p.long_factor.size() << " long factors)";
      break;
    case Scaling::llama3:
      out << " (factor " << factor_text() << ", low_freq_factor " << number_text(p.low_freq_factor)
          << ", high_freq_factor " << number_text(p.high_freq_factor) << ", original_max_position_embeddings "
          << p.original_max_position_embeddings << ")";
      break;
    case Scaling::table: out << " (" << p.inv_freq.size() << " caller-supplied inv_freq values)"; break;
  }
  out << '\n';
  out << "attention factor  "
      << (attention_factor ? number_text(*attention_factor) + " (override)" : std::string("from the scheme"))
      << '\n';
  out << "numerics          " << to_string(numerics) << '\n';
  out << "position limit    " << position_limit << '\n';
  return out.str();
}

}  // namespace posenc

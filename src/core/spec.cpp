// RopeSpec validation and description, and the names of the spec's enumerations.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core/frequencies_detail.hpp"
#include "core/schemes.hpp"
#include "core/spec_checks.hpp"
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

const char* to_string(HfArithmetic a) noexcept {
  switch (a) {
    case HfArithmetic::engine: return "engine";
    case HfArithmetic::torch_cpu: return "torch_cpu";
    case HfArithmetic::torch_cuda: return "torch_cuda";
    case HfArithmetic::exact: return "exact";
  }
  return "unknown";
}

const char* to_string(QkNormKind k) noexcept {
  switch (k) {
    case QkNormKind::none: return "none";
    case QkNormKind::rms: return "rms";
    case QkNormKind::rms_one_plus: return "rms_one_plus";
  }
  return "unknown";
}

std::optional<HfArithmetic> parse_hf_arithmetic(std::string_view name) noexcept {
  for (const HfArithmetic a : all_hf_arithmetics)
    if (name == to_string(a)) return a;
  return std::nullopt;
}

const char* to_string(Scaling s) noexcept {
  const detail::SchemeRow* row = detail::find_scheme_row(s);
  return row != nullptr ? row->name.data() : "unknown";  // the name is a string literal
}

namespace detail {

void reject(const std::string& field, const std::string& value, const std::string& limit) {
  throw Error(ErrorKind::invalid_argument, "RopeSpec." + field + " = " + value + ": " + limit);
}

namespace {

bool positive_finite(double v) { return std::isfinite(v) && v > 0.0; }

/// Both list types: `expected` finite entries > 0; LongRoPE factors (double) are rounded to
/// float32 and divided by, so they must be normal float32 values (a table's inv_freq already is
/// a float32, and may be subnormal: a tiny angle is still an angle).
template <typename T>
void check_list(const std::string& field, const std::vector<T>& values, std::int64_t expected, Pairing pairing) {
  if (static_cast<std::int64_t>(values.size()) != expected)
    reject(field + ".size()", number_text(static_cast<std::int64_t>(values.size())),
           std::string(pairing == Pairing::half_split_2d ? "must equal rotary_dim / 4 = " : "must equal rotary_dim / 2 = ") +
               number_text(expected));
  for (std::size_t i = 0; i < values.size(); ++i) {
    const auto v = static_cast<double>(values[i]);
    if (!positive_finite(v)) reject(field + "[" + std::to_string(i) + "]", number_text(v), "must be finite and > 0");
    if constexpr (std::is_same_v<T, double>) require_float32(field + "[" + std::to_string(i) + "]", v);
  }
}

}  // namespace

void require_positive(const std::string& field, double v) {
  if (!positive_finite(v)) reject(field, number_text(v), "must be finite and > 0");
}

void require_non_negative(const std::string& field, double v) {
  if (!std::isfinite(v) || v < 0.0) reject(field, number_text(v), "must be finite and >= 0");
}

void require_positive(const std::string& field, std::int64_t v) {
  if (v <= 0) reject(field, number_text(v), "must be > 0");
}

void require_float32(const std::string& field, double v) {
  if (!(v >= float32_min && v <= float32_max))
    reject(field, number_text(v),
           "must be finite and > 0, within float32's normal range [" + number_text(float32_min) + ", " +
               number_text(float32_max) + "] (it is rounded to float32)");
}

void require_context(const std::string& field, std::int64_t v) {
  require_positive(field, v);
  if (v > max_context) reject(field, number_text(v), "must be <= 2^53 = " + number_text(max_context));
}

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

void require_list(const std::string& field, const std::vector<double>& values, std::int64_t expected, Pairing pairing) {
  check_list(field, values, expected, pairing);
}

void require_list(const std::string& field, const std::vector<float>& values, std::int64_t expected, Pairing pairing) {
  check_list(field, values, expected, pairing);
}

}  // namespace detail

namespace {

using detail::float32_min;
using detail::number_text;
using detail::reject;
using detail::require_float32;

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
  if (std::find(all_pairings.begin(), all_pairings.end(), pairing) == all_pairings.end())
    reject("pairing", std::to_string(static_cast<int>(pairing)), "is not a Pairing value");
  if (std::find(all_numerics.begin(), all_numerics.end(), numerics) == all_numerics.end())
    reject("numerics", std::to_string(static_cast<int>(numerics)), "is not a Numerics value");
  if (std::find(all_hf_arithmetics.begin(), all_hf_arithmetics.end(), hf_arithmetic) == all_hf_arithmetics.end())
    reject("hf_arithmetic", std::to_string(static_cast<int>(hf_arithmetic)), "is not an HfArithmetic value");
  const detail::SchemeRow* row = detail::find_scheme_row(scaling);
  if (row == nullptr) reject("scaling", std::to_string(static_cast<int>(scaling)), "is not a Scaling value");

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

  switch (qk_norm.kind) {
    case QkNormKind::none:
    case QkNormKind::rms:
    case QkNormKind::rms_one_plus: break;
    default: reject("qk_norm.kind", std::to_string(static_cast<int>(qk_norm.kind)), "is not a QkNormKind value");
  }
  if (qk_norm.enabled()) {
    // Added to the mean in float32: it must stay a finite float32 (0 is allowed: a row of zeros
    // then gives inf * 0 = NaN, as torch does).
    if (!(qk_norm.epsilon >= 0.0 && qk_norm.epsilon <= detail::float32_max))
      reject("qk_norm.epsilon", number_text(qk_norm.epsilon),
             "must be finite, >= 0 and <= " + number_text(detail::float32_max) + " (it is added in float32)");
  }

  row->validate(*this);  // the scheme's own parameters (schemes.cpp)
  // Every parameter is in range on its own; together they must still give finite frequencies,
  // angles and attention factor (e.g. a dynamic factor whose theta' overflows at position_limit).
  detail::check_frequency_range(*this);
}

std::string RopeSpec::describe() const {
  using detail::number_text;
  const std::int64_t r = rotary();
  std::ostringstream out;
  out.exceptions(std::ios::badbit);  // a stream swallows bad_alloc and truncates; out of memory must say so
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
  const detail::SchemeRow& row = detail::scheme_row(scaling);
  out << "scaling           " << row.name;
  const std::vector<detail::SchemeParameter> parameters = row.parameters(params);
  for (std::size_t i = 0; i < parameters.size(); ++i)
    out << (i == 0 ? " (" : ", ") << parameters[i].name << ' ' << parameters[i].text << (i + 1 == parameters.size() ? ")" : "");
  out << "\n                  " << row.summary << '\n';
  out << "attention factor  "
      << (attention_factor ? number_text(*attention_factor) + " (override)" : std::string("from the scheme"))
      << '\n';
  if (qk_norm.enabled()) {
    out << "qk norm           " << to_string(qk_norm.kind) << " over "
        << (qk_norm.rotary_only ? "the rotary window (" + number_text(r) + " dims)" : "the head (" + number_text(head_dim) + " dims)")
        << ", epsilon " << number_text(qk_norm.epsilon)
        << (qk_norm.kind == QkNormKind::rms ? ": y = round(w * round(x * r))" : ": y = round(x * r * (1 + w))")
        << ", r = 1/sqrt(mean(x^2) + epsilon), before the rotation\n";
  }
  out << "numerics          " << to_string(numerics) << '\n';
  out << "hf arithmetic     " << to_string(hf_arithmetic);
  if (numerics == Numerics::accurate) out << " (not used by accurate numerics: exact tables)";
  else if (hf_arithmetic == HfArithmetic::engine) out << " (torch_cpu on the CPU engine, torch_cuda on the GPU engine)";
  out << '\n';
  out << "position limit    " << position_limit << '\n';
  return out.str();
}

}  // namespace posenc

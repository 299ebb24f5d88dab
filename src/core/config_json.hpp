// Typed access to a config.json with messages that name the key and the value: the JSON layer of load_model_config (core-internal).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/text_detail.hpp"
#include "posenc/error.hpp"
#include "posenc/model_config.hpp"

namespace posenc::detail::config {

using json = nlohmann::json;

/// A JSON value as quoted in a message: its first 80 characters, escaped (message_excerpt).
/// Invalid UTF-8 inside strings is replaced instead of thrown on; the nesting depth is bounded by
/// max_config_depth, so dump() cannot exhaust the stack.
std::string value_text(const json& v);

/// Parses `text` with its size (max_config_bytes) and nesting depth (max_config_depth) bounded;
/// every failure is Error(config) naming `source`.
json parse_bounded(const std::string& text, const std::string& source);

/// One JSON object of the config, with its key prefix ("", "text_config.", "rope_scaling.").
class Node {
 public:
  Node(const json& obj, std::string prefix, const std::string& source)
      : obj_(&obj), prefix_(std::move(prefix)), source_(&source) {}

  const json& raw() const { return *obj_; }
  const std::string& source() const { return *source_; }
  /// "rope_scaling" for the node of "rope_scaling." keys.
  std::string name() const { return prefix_.empty() ? std::string("top level") : prefix_.substr(0, prefix_.size() - 1); }
  std::string key(std::string_view k) const { return prefix_ + std::string(k); }
  /// key(k) as quoted in a message (keys come from the file: escaped and cut).
  std::string key_text(std::string_view k) const { return message_excerpt(key(k)); }

  /// Present and not null (HF treats null as absent).
  bool has(std::string_view k) const {
    const auto it = obj_->find(k);
    return it != obj_->end() && !it->is_null();
  }

  [[noreturn]] void fail(std::string_view k, const std::string& problem) const {
    const auto it = obj_->find(k);
    const std::string value = it == obj_->end() ? "(not given)" : value_text(*it);
    throw Error(ErrorKind::config, "model config " + source() + ": key '" + key_text(k) + "' = " + value + ": " + problem);
  }

  [[noreturn]] void fail_missing(std::string_view k, const std::string& why) const {
    throw Error(ErrorKind::config, "model config " + source() + ": key '" + key_text(k) + "' is missing: " + why);
  }

  std::optional<double> number(std::string_view k) const {
    if (!has(k)) return std::nullopt;
    const json& v = obj_->at(std::string(k));
    if (!v.is_number()) fail(k, "expected a number");
    const double d = v.get<double>();
    if (!std::isfinite(d)) fail(k, "expected a finite number");
    return d;
  }

  std::optional<std::int64_t> integer(std::string_view k) const {
    if (!has(k)) return std::nullopt;
    const json& v = obj_->at(std::string(k));
    if (v.is_number_unsigned()) {
      const auto u = v.get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) fail(k, "does not fit in 64 bits");
      return static_cast<std::int64_t>(u);
    }
    if (v.is_number_integer()) return v.get<std::int64_t>();
    if (v.is_number_float()) {
      // 4096.0 is accepted (Python would use it as is); 4096.5 is not an integer.
      const double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 0x1p62) return static_cast<std::int64_t>(d);
    }
    fail(k, "expected an integer");
  }

  std::optional<bool> boolean(std::string_view k) const {
    if (!has(k)) return std::nullopt;
    const json& v = obj_->at(std::string(k));
    if (!v.is_boolean()) fail(k, "expected true or false");
    return v.get<bool>();
  }

  std::optional<std::string> string(std::string_view k) const {
    if (!has(k)) return std::nullopt;
    const json& v = obj_->at(std::string(k));
    if (!v.is_string()) fail(k, "expected a string");
    return v.get<std::string>();
  }

  std::optional<std::vector<double>> numbers(std::string_view k) const {
    if (!has(k)) return std::nullopt;
    const json& v = obj_->at(std::string(k));
    if (!v.is_array()) fail(k, "expected a list of numbers");
    std::vector<double> out;
    out.reserve(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_number() || !std::isfinite(v[i].get<double>()))
        throw Error(ErrorKind::config, "model config " + source() + ": key '" + key_text(k) + "[" + std::to_string(i) +
                                           "]' = " + value_text(v[i]) + ": expected a finite number");
      out.push_back(v[i].get<double>());
    }
    return out;
  }

  /// The object under `k`, or nullptr when absent or null.
  const json* object(std::string_view k) const {
    if (!has(k)) return nullptr;
    const json& v = obj_->at(std::string(k));
    if (!v.is_object()) fail(k, "expected a JSON object");
    return &v;
  }

  /// A positive integer that must be present (`why` says what needs it).
  std::int64_t positive(std::string_view k, std::optional<std::int64_t> fallback, const std::string& why) const {
    const std::optional<std::int64_t> v = integer(k);
    if (!v) {
      if (fallback) return *fallback;
      fail_missing(k, why);
    }
    if (*v <= 0) fail(k, "must be > 0");
    return *v;
  }

  /// A head count: positive(), and at most max_heads.
  std::int64_t heads(std::string_view k, std::optional<std::int64_t> fallback, const std::string& why) const {
    const std::int64_t v = positive(k, fallback, why);
    if (v > max_heads) fail(k, "exceeds the limit of " + number_text(max_heads) + " heads");
    return v;
  }

 private:
  const json* obj_;
  std::string prefix_;
  const std::string* source_;
};

/// Two spellings of one value (e.g. rope_theta / rotary_emb_base): either, or both when equal.
std::optional<double> either_number(const Node& n, std::string_view a, std::string_view b);

}  // namespace posenc::detail::config

// Shortest round-trip text for numbers in error messages and summaries (core-internal).
#pragma once

#include <charconv>
#include <cstdint>
#include <string>

namespace posenc::detail {

/// The shortest text that reads back as exactly `v` ("10000", "0.1", "1e+06", "nan", "inf").
inline std::string number_text(double v) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

inline std::string number_text(std::int64_t v) { return std::to_string(v); }

}  // namespace posenc::detail

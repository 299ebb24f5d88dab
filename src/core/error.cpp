// posenc::Error, the one exception type of the library, and the names of its kinds.
#include "posenc/error.hpp"

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/memory.hpp"

namespace posenc {

const char* to_string(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::invalid_argument: return "invalid_argument";
    case ErrorKind::out_of_range: return "out_of_range";
    case ErrorKind::overflow: return "overflow";
    case ErrorKind::config: return "config";
    case ErrorKind::unsupported: return "unsupported";
    case ErrorKind::vendor: return "vendor";
    case ErrorKind::io: return "io";
    case ErrorKind::out_of_memory: return "out_of_memory";
  }
  return "unknown";
}

Error::Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}

namespace {

/// Length of the well-formed UTF-8 sequence at text[i] that encodes a printable code point
/// (not a C1 control, U+0080..U+009F), or 0.
std::size_t printable_utf8_length(std::string_view text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<std::uint8_t>(text[k]); };
  const std::uint8_t lead = byte(i);
  std::size_t length = 0;
  std::uint32_t cp = 0;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
    cp = lead & 0x1fu;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    cp = lead & 0x0fu;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    cp = lead & 0x07u;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xc0u) != 0x80u) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3fu);
  }
  const bool overlong = (length == 3 && cp < 0x800) || (length == 4 && cp < 0x10000);
  const bool surrogate = cp >= 0xd800 && cp <= 0xdfff;
  if (overlong || surrogate || cp > 0x10ffff || (cp >= 0x80 && cp <= 0x9f)) return 0;
  return length;
}

}  // namespace

std::string message_excerpt(std::string_view text, std::size_t max_chars) {
  std::string out;
  std::size_t chars = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    if (chars == max_chars) return out + "...";
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
      ++i;
    } else if (const std::size_t n = c >= 0x80 ? printable_utf8_length(text, i) : 0; n > 0) {
      out.append(text.substr(i, n));
      i += n;
    } else {
      switch (c) {
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default: {
          char escaped[5];
          std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
          out += escaped;
        }
      }
      ++i;
    }
    ++chars;
  }
  return out;
}

namespace detail {

void throw_out_of_host_memory(const std::string& what, std::int64_t bytes) {
  std::string message = "out of host memory allocating " + what;
  if (bytes >= 0) message += " (" + std::to_string(bytes) + " bytes)";
  throw Error(ErrorKind::out_of_memory, message);
}

}  // namespace detail
}  // namespace posenc

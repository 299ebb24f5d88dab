// posenc::Error, the one exception type of the library, and the names of its kinds.
#include "posenc/error.hpp"

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
  }
  return "unknown";
}

Error::Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}

}  // namespace posenc

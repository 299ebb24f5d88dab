// posenc::Error: the one exception type every posenc operation throws, with a machine-readable kind.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace posenc {

/// What went wrong, so callers can branch without parsing messages.
enum class ErrorKind {
  invalid_argument,  ///< a shape, stride, dtype, size or spec value is not acceptable
  out_of_range,      ///< a position or index lies outside its allowed range
  overflow,          ///< a size or offset does not fit in 64 bits
  config,            ///< a model configuration key is unknown, missing or contradictory
  unsupported,       ///< valid request that this build or device cannot serve
  vendor,            ///< the CUDA/HIP runtime reported an error (message carries its string)
  io,                ///< a file could not be read or written, or has a bad format
  out_of_memory,     ///< host or device memory could not be allocated (names what, and its size where known)
};

/// Returns the lower-case name of `kind` ("invalid_argument", ...).
const char* to_string(ErrorKind kind) noexcept;

/// Thrown by every posenc function on bad input or a failed runtime call. The message names the
/// offending value, its index where there is one, and the limit it broke. When an `apply` throws
/// before launching work, the caller's tensors have not been written.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message);
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

/// `text` made safe to quote in an error message: at most `max_chars` characters (a cut is marked
/// "..."), control characters, C1 controls and bytes that are not UTF-8 written as escapes (\n,
/// \x1b), so a hostile file cannot flood or drive a terminal through a message.
std::string message_excerpt(std::string_view text, std::size_t max_chars = 80);

}  // namespace posenc

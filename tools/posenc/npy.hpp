// Reading and writing NumPy .npy files (format versions 1-3, C order, little-endian) for the CLI.
//
// NumPy has no bfloat16. posenc writes bfloat16 arrays as '<u2' (the raw bit patterns) and reads
// both '<u2' and '<V2' ('|V2': what np.save writes for ml_dtypes.bfloat16) as bfloat16 bits; in
// NumPy, `(a.astype(np.uint32) << 16).view(np.float32)` turns such an array into float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace posenc::cli {

/// Limits of the reader (docs/CLI.md, "Input limits"); a file over one is refused naming it.
inline constexpr std::int64_t max_npy_header_bytes = 10000;        ///< NumPy's own np.load default
inline constexpr std::int64_t max_npy_dims = 64;                   ///< NumPy 2's NPY_MAXDIMS
inline constexpr std::int64_t max_npy_elements = std::int64_t{1} << 32;  ///< per array, and per dimension

/// Element types the codec understands; `u16` is bfloat16 bits stored as '<u2', `bf16` is '<V2'.
enum class NpyType : std::uint8_t { f32, f16, bf16, u16, i32, i64 };

/// Bytes of one element.
constexpr std::int64_t npy_item_size(NpyType t) noexcept {
  switch (t) {
    case NpyType::f32:
    case NpyType::i32:
      return 4;
    case NpyType::i64:
      return 8;
    default:
      return 2;
  }
}

/// The descr posenc writes for `t` ("<f4", "<f2", "<u2" for both bf16 and u16, "<i4", "<i8").
const char* npy_descr(NpyType t) noexcept;

/// An array read from (or to be written to) a .npy file: C order, little-endian bytes.
struct NpyArray {
  NpyType type = NpyType::f32;
  std::vector<std::int64_t> shape;  ///< empty for a 0-d array
  std::vector<std::byte> data;

  /// Number of elements (the product of `shape`; 1 for a 0-d array).
  std::int64_t count() const noexcept;
};

/// Decodes a whole .npy file image. Throws posenc::Error(io) that starts with `label` (the file
/// name) and says what is wrong: bad magic, unsupported version, malformed header (quoted as a
/// short escaped excerpt), a header, rank or element count over the limits above,
/// fortran_order True, unsupported or big-endian dtype, negative dimension, truncated or
/// trailing data.
NpyArray decode_npy(std::span<const std::byte> bytes, const std::string& label);

/// The magic, version, length and padded header dict of a .npy file (version 1.0, or 2.0 when
/// the header needs it); the data follows it.
std::vector<std::byte> encode_npy_header(NpyType type, std::span<const std::int64_t> shape);

/// Encodes an array as a .npy file image. `data` must hold exactly product(shape) elements of `type`.
std::vector<std::byte> encode_npy(NpyType type, std::span<const std::int64_t> shape,
                                  std::span<const std::byte> data);

/// Reads and decodes `path`, checking its header and size before reading the data;
/// posenc::Error(io) naming the file when it cannot be read or decoded.
NpyArray read_npy(const std::string& path);

/// Encodes and writes `path` all or nothing (OutputFiles, output.hpp); posenc::Error(io) naming
/// the file on failure, when `path` is left as it was.
void write_npy(const std::string& path, NpyType type, std::span<const std::int64_t> shape,
               std::span<const std::byte> data);

}  // namespace posenc::cli

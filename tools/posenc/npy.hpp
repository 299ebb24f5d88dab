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
/// name) and says what is wrong: bad magic, unsupported version, malformed header,
/// fortran_order True, unsupported or big-endian dtype, negative dimension, truncated or
/// trailing data.
NpyArray decode_npy(std::span<const std::byte> bytes, const std::string& label);

/// Encodes an array as a .npy file image (version 1.0, or 2.0 when the header needs it).
/// `data` must hold exactly product(shape) elements of `type`.
std::vector<std::byte> encode_npy(NpyType type, std::span<const std::int64_t> shape,
                                  std::span<const std::byte> data);

/// Reads and decodes `path`; posenc::Error(io) naming the file when it cannot be read or decoded.
NpyArray read_npy(const std::string& path);

/// Encodes and writes `path` (replacing it); posenc::Error(io) naming the file on failure.
void write_npy(const std::string& path, NpyType type, std::span<const std::int64_t> shape,
               std::span<const std::byte> data);

}  // namespace posenc::cli

// Fuzz target: the .npy reader (tools/posenc/npy.*) on arbitrary bytes.
//
// Properties: decode_npy either returns an array or throws posenc::Error(io) whose message starts
// with the file's label; an accepted array's data holds exactly count() elements of its type; and
// encoding it again and decoding the result gives the same shape and bytes (bfloat16 bits come
// back as '<u2', as the codec documents). Sanitizers catch everything else.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "npy.hpp"
#include "posenc/error.hpp"

namespace {

using posenc::cli::NpyArray;
using posenc::cli::NpyType;
using posenc::fuzz::require;

constexpr const char* label = "fuzz.npy";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  NpyArray array;
  try {
    array = posenc::cli::decode_npy(bytes, label);
  } catch (const posenc::Error& e) {
    require(e.kind() == posenc::ErrorKind::io, std::string("decode_npy threw kind ") + to_string(e.kind()));
    require(std::string(e.what()).rfind(std::string(label) + ": ", 0) == 0,
            std::string("decode_npy's message does not start with the label: ") + e.what());
    return 0;
  }
  const std::int64_t count = array.count();
  require(count >= 0, "accepted array with a negative element count");
  require(static_cast<std::int64_t>(array.data.size()) == count * posenc::cli::npy_item_size(array.type),
          "accepted array whose data size is not count() elements");

  const std::vector<std::byte> again = posenc::cli::encode_npy(array.type, array.shape, array.data);
  const NpyArray back = posenc::cli::decode_npy(again, "round trip");
  const NpyType written = array.type == NpyType::bf16 ? NpyType::u16 : array.type;
  require(back.type == written, "round trip changed the dtype");
  require(back.shape == array.shape, "round trip changed the shape");
  require(back.data == array.data, "round trip changed the data");
  return 0;
}

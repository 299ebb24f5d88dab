// Internals of the C ABI: handle types, the exception-to-status guard, versioned struct I/O, view conversions.
#pragma once

#include <cstddef>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/glm.hpp"
#include "posenc/gpu.hpp"
#include "posenc/kv_cache.hpp"
#include "posenc/model_config.hpp"
#include "posenc/posenc.h"
#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"

// The opaque handles of posenc.h. Each owns its C++ object; a spec also keeps what its const char*
// and table accessors hand out, so the pointers stay valid while the handle lives.
struct posenc_config {
  posenc::ModelConfig config;
  std::vector<std::string> layer_types;  // keys of config.rope, sorted (std::map order)
};
struct posenc_spec {
  posenc::RopeSpec spec;
  posenc::FrequencyTable frequencies;  // init-time table (compute_frequencies without seq_len)
  std::string description;
};
struct posenc_cpu_engine {
  posenc::CpuEngine engine;
};
struct posenc_gpu_engine {
  posenc::gpu::GpuEngine engine;
};
struct posenc_position_tracker {
  posenc::glm::PositionTracker tracker;
};
struct posenc_gpu_position_tracker {
  posenc::gpu::GpuPositionTracker tracker;
};
// A builder's result: the ids, what the builder found, and the arrays `info`'s pointers address
// (filled once by capi::publish, after which the handle is immutable).
struct posenc_glm_positions {
  posenc::glm::PositionIds ids;
  std::vector<std::uint8_t> valid;  // empty: every token real
  std::vector<std::int64_t> mask_positions;
  std::vector<std::int64_t> pad_counts;
  std::vector<std::int64_t> prefix_lens;
  std::optional<posenc::glm::SequenceState> state;  // set where glm::tracker_state applies
  posenc_glm_positions_info info;
};
struct posenc_glm_mask {
  posenc::glm::MaskRanges ranges;
  std::vector<posenc_glm_key_range> c_ranges;  // ranges in posenc.h's layout
};

namespace posenc::capi {

/// Records `message` as this thread's last error, prefixed with the C function's name.
posenc_status fail(posenc_status status, const char* function, const char* message) noexcept;
/// Clears this thread's last error (every successful call does).
void clear_error() noexcept;
posenc_status status_of(ErrorKind kind) noexcept;

/// Runs `body`, turning every exception into a status and this thread's last-error message. No
/// exception crosses the C boundary.
template <class Body>
posenc_status guard(const char* function, Body&& body) noexcept {
  try {
    body();
    clear_error();
    return POSENC_OK;
  } catch (const Error& e) {
    return fail(status_of(e.kind()), function, e.what());
  } catch (const std::bad_alloc&) {
    return fail(POSENC_ERROR_OUT_OF_MEMORY, function, "out of host memory (an allocation of the C ABI failed)");
  } catch (const std::exception& e) {
    return fail(POSENC_ERROR_INTERNAL, function, e.what());
  } catch (...) {
    return fail(POSENC_ERROR_INTERNAL, function, "an exception that is not a std::exception");
  }
}

/// Error(invalid_argument) "<name> is NULL" unless `pointer` is set.
void require(const void* pointer, const char* name);

/// Largest struct_size accepted: far above any posenc struct, low enough that a garbage value
/// (an uninitialized struct) is refused before it makes us read beyond the caller's memory.
inline constexpr std::size_t max_struct_size = 4096;

/// Checks a caller's struct_size for a struct whose first version is `min_size` bytes (see
/// posenc.h "ABI growth"): at least min_size, a multiple of the struct's alignment and at most
/// max_struct_size. Error(invalid_argument) naming the value, the limit and the fix otherwise.
void check_struct_size(std::size_t struct_size, std::size_t min_size, std::size_t alignment, const char* name,
                       const char* type);

/// Error(unsupported) naming the first non-zero byte of [known_size, struct_size): a field of a
/// newer posenc.h that this library cannot honour.
void check_unknown_tail(const void* in, std::size_t struct_size, std::size_t known_size, const char* name,
                        const char* type);

/// An input struct as this library knows it: the caller's first struct_size bytes, the rest zero.
template <class T>
T read_in(const T* in, std::size_t min_size, const char* name, const char* type) {
  static_assert(std::is_trivially_copyable_v<T>);
  require(in, name);
  check_struct_size(in->struct_size, min_size, alignof(T), name, type);
  check_unknown_tail(in, in->struct_size, sizeof(T), name, type);
  T value;
  std::memset(&value, 0, sizeof value);
  std::memcpy(&value, in, in->struct_size < sizeof(T) ? in->struct_size : sizeof(T));
  return value;
}

/// A caller's array of `count` structs that start with struct_size, as read_in reads each: every
/// element has the first one's struct_size, which is the array's stride (posenc.h, GLM section).
/// Messages name the element as name[i].
template <class T>
std::vector<T> read_array(const T* first, std::size_t count, std::size_t min_size, const char* name,
                          const char* type) {
  std::vector<T> out;
  if (count == 0) return out;
  require(first, name);
  const std::size_t stride = first->struct_size;
  out.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    const auto* element = reinterpret_cast<const T*>(reinterpret_cast<const unsigned char*>(first) + stride * i);
    const std::string element_name = std::string(name) + "[" + std::to_string(i) + "]";
    if (element->struct_size != stride)
      throw Error(ErrorKind::invalid_argument,
                  element_name + "->struct_size is " + std::to_string(element->struct_size) + ", not " +
                      std::to_string(stride) + " as " + name + "[0]'s (every element of an array has the same size)");
    out.push_back(read_in(element, min_size, element_name.c_str(), type));
  }
  return out;
}

/// Validates an output struct's struct_size (first version `min_size` bytes), for write_out.
/// Bytes beyond what this library knows belong to the caller and are left alone.
template <class T>
void check_out(const T* out, std::size_t min_size, const char* name, const char* type) {
  require(out, name);
  check_struct_size(out->struct_size, min_size, alignof(T), name, type);
}

/// Writes `value` into the caller's struct up to its struct_size (which is kept).
template <class T>
void write_out(T* out, T value) noexcept {
  value.struct_size = out->struct_size;
  std::memcpy(out, &value, out->struct_size < sizeof(T) ? out->struct_size : sizeof(T));
}

/// Enum values of posenc.h to the C++ enums; Error(invalid_argument) naming `what` and the
/// accepted values otherwise.
DType to_dtype(std::int32_t value, const std::string& what);
IndexType to_index_type(std::int32_t value, const std::string& what);
CacheDType to_cache_dtype(std::int32_t value, const std::string& what);
CacheLayout to_layout(std::int32_t value, const std::string& what);
Pairing to_pairing(std::int32_t value, const std::string& what);
Numerics to_numerics(std::int32_t value, const std::string& what);
HfArithmetic to_hf_arithmetic(std::int32_t value, const std::string& what);
QkNormKind to_qk_norm(std::int32_t value, const std::string& what);
/// Error(invalid_argument) "<what> is <value>, not one of <accepted>".
[[noreturn]] void invalid_enum(const std::string& what, std::int32_t value, const char* accepted);
/// Error(invalid_argument) unless a reserved field is 0.
void check_reserved(std::int32_t reserved, const std::string& what);
/// 0 or 1 (a C boolean); Error(invalid_argument) otherwise.
bool to_bool(std::int32_t value, const std::string& what);

TensorView to_view(const posenc_tensor& t, const std::string& what);
ConstTensorView to_view(const posenc_const_tensor& t, const std::string& what);
PositionsView to_view(const posenc_positions& p, const std::string& what);
CosSinCacheView to_view(const posenc_cos_sin_cache& c, const std::string& what);
KvCacheView to_view(const posenc_kv_cache& c, const std::string& what);

/// The C++ arguments of a call (fields named "args->q.dtype" and so on in messages).
RopeArgs to_args(const posenc_rope_args* args);
AppendArgs to_args(const posenc_append_args* args);

posenc_counters to_counters(const OperationCounters& c) noexcept;

/// A stream argument of posenc.h: NULL is the legacy default stream (the C++ API asks for it by name).
inline gpu::StreamRef stream_ref(void* stream) noexcept {
  return stream == nullptr ? gpu::StreamRef::legacy_default() : gpu::StreamRef(stream);
}

/// The device `ordinal` of a GPU object's constructor: Error(invalid_argument) when negative, and
/// Error(unsupported) with the reason posenc_get_gpu_info gives (the vendor runtime's own string,
/// whatever the backend) where no GPU can be used.
gpu::Device open_device(std::int32_t ordinal);

}  // namespace posenc::capi

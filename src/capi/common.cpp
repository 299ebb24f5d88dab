// The C ABI's shared machinery: last-error storage, status mapping, struct-size checks, enum and view conversions.
#include "capi/common.hpp"

#include <string>

#include "posenc/version.hpp"

static_assert(POSENC_VERSION_MAJOR == posenc::version_major && POSENC_VERSION_MINOR == posenc::version_minor &&
                  POSENC_VERSION_PATCH == posenc::version_patch,
              "posenc.h and posenc/version.hpp disagree on the version");

namespace posenc::capi {
namespace {

// The message of the last failed call on this thread. A failure to store it (no memory) falls
// back to a fixed text rather than losing the status.
thread_local std::string last_message;
thread_local bool last_message_lost = false;

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorKind::invalid_argument, message); }

std::string enum_message(const std::string& what, std::int32_t value, const char* accepted) {
  return what + " is " + std::to_string(value) + ", not one of " + accepted;
}

}  // namespace

posenc_status fail(posenc_status status, const char* function, const char* message) noexcept {
  try {
    last_message.assign(function);
    last_message.append(": ");
    last_message.append(message);
    last_message_lost = false;
  } catch (...) {
    last_message_lost = true;
  }
  return status;
}

void clear_error() noexcept {
  last_message.clear();
  last_message_lost = false;
}

posenc_status status_of(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::invalid_argument: return POSENC_ERROR_INVALID_ARGUMENT;
    case ErrorKind::out_of_range: return POSENC_ERROR_OUT_OF_RANGE;
    case ErrorKind::overflow: return POSENC_ERROR_OVERFLOW;
    case ErrorKind::config: return POSENC_ERROR_CONFIG;
    case ErrorKind::unsupported: return POSENC_ERROR_UNSUPPORTED;
    case ErrorKind::vendor: return POSENC_ERROR_VENDOR;
    case ErrorKind::io: return POSENC_ERROR_IO;
    case ErrorKind::out_of_memory: return POSENC_ERROR_OUT_OF_MEMORY;
  }
  return POSENC_ERROR_INTERNAL;
}

void require(const void* pointer, const char* name) {
  if (pointer == nullptr) invalid(std::string(name) + " is NULL");
}

void check_struct_size(std::size_t struct_size, std::size_t min_size, std::size_t alignment, const char* name,
                       const char* type) {
  const std::string field = std::string(name) + "->struct_size is " + std::to_string(struct_size);
  const std::string fix = std::string(" (set it to sizeof(") + type + "), as " + type + "_make() does)";
  if (struct_size < min_size)
    invalid(field + ", below " + std::to_string(min_size) + ", the size of " + type +
            " in the first posenc.h that has it" + fix);
  if (struct_size % alignment != 0)
    invalid(field + ", not a multiple of " + type + "'s alignment " + std::to_string(alignment) + fix);
  if (struct_size > max_struct_size)
    invalid(field + ", above the limit " + std::to_string(max_struct_size) + " (an uninitialized struct?)" + fix);
}

void check_unknown_tail(const void* in, std::size_t struct_size, std::size_t known_size, const char* name,
                        const char* type) {
  const auto* bytes = static_cast<const unsigned char*>(in);
  for (std::size_t i = known_size; i < struct_size; ++i) {
    if (bytes[i] != 0)
      throw Error(ErrorKind::unsupported,
                  std::string(name) + ": byte " + std::to_string(i) + " of " + type + " (struct_size " +
                      std::to_string(struct_size) + ") is not zero, but this libposenc " + version_string +
                      " knows only its first " + std::to_string(known_size) +
                      " bytes: the caller sets a field that needs a newer libposenc");
  }
}

DType to_dtype(std::int32_t value, const std::string& what) {
  switch (value) {
    case POSENC_DTYPE_F32: return DType::f32;
    case POSENC_DTYPE_F16: return DType::f16;
    case POSENC_DTYPE_BF16: return DType::bf16;
  }
  invalid(enum_message(what, value, "POSENC_DTYPE_F32 (0), POSENC_DTYPE_F16 (1), POSENC_DTYPE_BF16 (2)"));
}

IndexType to_index_type(std::int32_t value, const std::string& what) {
  switch (value) {
    case POSENC_INDEX_I32: return IndexType::i32;
    case POSENC_INDEX_I64: return IndexType::i64;
  }
  invalid(enum_message(what, value, "POSENC_INDEX_I32 (0), POSENC_INDEX_I64 (1)"));
}

CacheDType to_cache_dtype(std::int32_t value, const std::string& what) {
  switch (value) {
    case POSENC_CACHE_F32: return CacheDType::f32;
    case POSENC_CACHE_F16: return CacheDType::f16;
    case POSENC_CACHE_BF16: return CacheDType::bf16;
    case POSENC_CACHE_FP8_E4M3: return CacheDType::fp8_e4m3;
  }
  invalid(enum_message(what, value, "POSENC_CACHE_F32 (0) .. POSENC_CACHE_FP8_E4M3 (3)"));
}

CacheLayout to_layout(std::int32_t value, const std::string& what) {
  switch (value) {
    case POSENC_LAYOUT_CONTIGUOUS: return CacheLayout::contiguous;
    case POSENC_LAYOUT_PAGED_NHD: return CacheLayout::paged_nhd;
    case POSENC_LAYOUT_PAGED_HND: return CacheLayout::paged_hnd;
    case POSENC_LAYOUT_MLA: return CacheLayout::mla;
  }
  invalid(enum_message(what, value,
                       "POSENC_LAYOUT_CONTIGUOUS (0), POSENC_LAYOUT_PAGED_NHD (1), POSENC_LAYOUT_PAGED_HND (2), "
                       "POSENC_LAYOUT_MLA (3)"));
}

Pairing to_pairing(std::int32_t value, const std::string& what) {
  switch (value) {
    case POSENC_PAIRING_HALF_SPLIT: return Pairing::half_split;
    case POSENC_PAIRING_INTERLEAVED: return Pairing::interleaved;
    case POSENC_PAIRING_INTERLEAVED_TO_HALF: return Pairing::interleaved_to_half;
    case POSENC_PAIRING_HALF_SPLIT_2D: return Pairing::half_split_2d;
  }
  invalid(enum_message(what, value, "POSENC_PAIRING_HALF_SPLIT (0) .. POSENC_PAIRING_HALF_SPLIT_2D (3)"));
}

Numerics to_numerics(std::int32_t value, const std::string& what) {
  switch (value) {
    case POSENC_NUMERICS_HF_COMPATIBLE: return Numerics::hf_compatible;
    case POSENC_NUMERICS_HF_FP32_APPLY: return Numerics::hf_fp32_apply;
    case POSENC_NUMERICS_ACCURATE: return Numerics::accurate;
  }
  invalid(enum_message(what, value, "POSENC_NUMERICS_HF_COMPATIBLE (0) .. POSENC_NUMERICS_ACCURATE (2)"));
}

HfArithmetic to_hf_arithmetic(std::int32_t value, const std::string& what) {
  switch (value) {
    case POSENC_HF_ARITHMETIC_ENGINE: return HfArithmetic::engine;
    case POSENC_HF_ARITHMETIC_TORCH_CPU: return HfArithmetic::torch_cpu;
    case POSENC_HF_ARITHMETIC_TORCH_CUDA: return HfArithmetic::torch_cuda;
    case POSENC_HF_ARITHMETIC_EXACT: return HfArithmetic::exact;
  }
  invalid(enum_message(what, value, "POSENC_HF_ARITHMETIC_ENGINE (0) .. POSENC_HF_ARITHMETIC_EXACT (3)"));
}

QkNormKind to_qk_norm(std::int32_t value, const std::string& what) {
  switch (value) {
    case POSENC_QK_NORM_NONE: return QkNormKind::none;
    case POSENC_QK_NORM_RMS: return QkNormKind::rms;
    case POSENC_QK_NORM_RMS_ONE_PLUS: return QkNormKind::rms_one_plus;
  }
  invalid(enum_message(what, value, "POSENC_QK_NORM_NONE (0) .. POSENC_QK_NORM_RMS_ONE_PLUS (2)"));
}

bool to_bool(std::int32_t value, const std::string& what) {
  if (value != 0 && value != 1) invalid(enum_message(what, value, "0, 1"));
  return value == 1;
}

void check_reserved(std::int32_t reserved, const std::string& what) {
  if (reserved != 0) invalid(what + ".reserved is " + std::to_string(reserved) + ", must be 0");
}

void invalid_enum(const std::string& what, std::int32_t value, const char* accepted) {
  invalid(enum_message(what, value, accepted));
}

TensorView to_view(const posenc_tensor& t, const std::string& what) {
  if (t.data == nullptr) return {};  // absent: its other fields are not read
  check_reserved(t.reserved, what);
  return {t.data, to_dtype(t.dtype, what + ".dtype"), t.tokens, t.heads, t.head_dim, t.token_stride, t.head_stride};
}

ConstTensorView to_view(const posenc_const_tensor& t, const std::string& what) {
  if (t.data == nullptr) return {};
  check_reserved(t.reserved, what);
  return {t.data, to_dtype(t.dtype, what + ".dtype"), t.tokens, t.heads, t.head_dim, t.token_stride, t.head_stride};
}

PositionsView to_view(const posenc_positions& p, const std::string& what) {
  // Absent positions are still converted: validation names them ("positions.data is null").
  const IndexType type = p.data == nullptr ? IndexType::i64 : to_index_type(p.type, what + ".type");
  return {p.data, type, p.count, p.streams, p.stream_stride};
}

CosSinCacheView to_view(const posenc_cos_sin_cache& c, const std::string& what) {
  if (c.data == nullptr) return {};
  check_reserved(c.reserved, what);
  return {c.data, to_dtype(c.dtype, what + ".dtype"), c.rows, c.rotary_dim, c.row_stride};
}

KvCacheView to_view(const posenc_kv_cache& c, const std::string& what) {
  KvCacheView view;
  view.k = c.k;
  view.v = c.v;
  view.dtype = to_cache_dtype(c.dtype, what + ".dtype");
  view.layout = to_layout(c.layout, what + ".layout");
  view.kv_heads = c.kv_heads;
  view.head_dim = c.head_dim;
  view.blocks = c.blocks;
  view.block_len = c.block_len;
  view.k_scale = c.k_scale;
  view.v_scale = c.v_scale;
  return view;
}

// The sizes of the call structs in the first posenc.h (ABI 1): fields appended later are
// optional, and a caller compiled before them passes this size.
constexpr std::size_t rope_args_first_size = offsetof(posenc_rope_args, positions) + sizeof(posenc_positions);
constexpr std::size_t append_args_first_size = offsetof(posenc_append_args, cache) + sizeof(posenc_kv_cache);

RopeArgs to_args(const posenc_rope_args* in) {
  const posenc_rope_args a = read_in(in, rope_args_first_size, "args", "posenc_rope_args");
  RopeArgs args;
  args.q = to_view(a.q, "args->q");
  args.k = to_view(a.k, "args->k");
  args.q_src = to_view(a.q_src, "args->q_src");
  args.k_src = to_view(a.k_src, "args->k_src");
  args.positions = to_view(a.positions, "args->positions");
  args.cos_sin = to_view(a.cos_sin, "args->cos_sin");
  args.norm = NormWeights{a.q_norm_weight, a.k_norm_weight};
  return args;
}

AppendArgs to_args(const posenc_append_args* in) {
  const posenc_append_args a = read_in(in, append_args_first_size, "args", "posenc_append_args");
  AppendArgs args;
  args.q = to_view(a.q, "args->q");
  args.q_src = to_view(a.q_src, "args->q_src");
  args.k = to_view(a.k, "args->k");
  args.v = to_view(a.v, "args->v");
  args.positions = to_view(a.positions, "args->positions");
  args.slots = a.slots;
  args.cache = to_view(a.cache, "args->cache");
  args.cos_sin = to_view(a.cos_sin, "args->cos_sin");
  args.cache.latent_dim = a.cache_latent_dim;  // zero when the caller's struct ends before it
  args.norm = NormWeights{a.q_norm_weight, a.k_norm_weight};
  if (a.q_out_data != nullptr) {  // absent (or before the caller's struct end): its other fields are not read
    args.q_out = QuantizedOutput{a.q_out_data, to_cache_dtype(a.q_out_dtype, "args->q_out_dtype"),
                                 a.q_out_token_stride, a.q_out_head_stride, a.q_out_scale, a.q_out_head_scales};
  }
  args.cache.k_head_scales = a.cache_k_head_scales;  // NULL when the caller's struct ends before them
  args.cache.v_head_scales = a.cache_v_head_scales;
  return args;
}

gpu::Device open_device(std::int32_t ordinal) {
  if (ordinal < 0) invalid("device is " + std::to_string(ordinal) + ", must be >= 0");
  if (!gpu::available()) throw Error(ErrorKind::unsupported, "no GPU can be used: " + gpu::unavailable_reason());
  return gpu::Device::open(ordinal);
}

posenc_counters to_counters(const OperationCounters& c) noexcept {
  posenc_counters out;
  std::memset(&out, 0, sizeof out);
  out.calls = c.calls;
  out.tokens = c.tokens;
  out.bytes = c.bytes;
  out.timed_calls = c.timed_calls;
  out.device_ms = c.device_ms;
  return out;
}

}  // namespace posenc::capi

// ------------------------------------------------------------------------------------------------
// Status names, last error, versions and the GPU query
// ------------------------------------------------------------------------------------------------

using namespace posenc;
using capi::guard;

extern "C" {

const char* posenc_status_name(posenc_status status) {
  switch (status) {
    case POSENC_OK: return "ok";
    case POSENC_ERROR_INVALID_ARGUMENT: return "invalid_argument";
    case POSENC_ERROR_OUT_OF_RANGE: return "out_of_range";
    case POSENC_ERROR_OVERFLOW: return "overflow";
    case POSENC_ERROR_CONFIG: return "config";
    case POSENC_ERROR_UNSUPPORTED: return "unsupported";
    case POSENC_ERROR_VENDOR: return "vendor";
    case POSENC_ERROR_IO: return "io";
    case POSENC_ERROR_OUT_OF_MEMORY: return "out_of_memory";
    case POSENC_ERROR_INTERNAL: return "internal";
  }
  return "unknown";
}

const char* posenc_last_error(void) {
  if (capi::last_message_lost) return "posenc: the error message was lost (no memory to store it)";
  return capi::last_message.c_str();
}

posenc_status posenc_get_version(posenc_version_info* out) {
  return guard(__func__, [&] {
    capi::check_out(out, sizeof(posenc_version_info), "out", "posenc_version_info");
    posenc_version_info info;
    std::memset(&info, 0, sizeof info);
    info.major = POSENC_VERSION_MAJOR;
    info.minor = POSENC_VERSION_MINOR;
    info.patch = POSENC_VERSION_PATCH;
    info.abi = POSENC_ABI_VERSION;
    info.version = version_string;
    info.backend = gpu::backend_name();
    capi::write_out(out, info);
  });
}

posenc_status posenc_get_gpu_info(posenc_gpu_info* out) {
  thread_local std::string reason;
  return guard(__func__, [&] {
    capi::check_out(out, sizeof(posenc_gpu_info), "out", "posenc_gpu_info");
    const bool available = gpu::available();
    reason = available ? std::string() : gpu::unavailable_reason();
    posenc_gpu_info info;
    std::memset(&info, 0, sizeof info);
    info.backend = gpu::backend_name();
    info.device_count = gpu::device_count();
    info.available = available ? 1 : 0;
    info.unavailable_reason = reason.c_str();
    capi::write_out(out, info);
  });
}

}  // extern "C"

// posenc.h's enum numbers are the ABI; the C++ enums are cast to them in the info structs.
static_assert(static_cast<int>(Pairing::half_split) == POSENC_PAIRING_HALF_SPLIT &&
              static_cast<int>(Pairing::interleaved) == POSENC_PAIRING_INTERLEAVED &&
              static_cast<int>(Pairing::interleaved_to_half) == POSENC_PAIRING_INTERLEAVED_TO_HALF &&
              static_cast<int>(Pairing::half_split_2d) == POSENC_PAIRING_HALF_SPLIT_2D);
static_assert(static_cast<int>(Numerics::hf_compatible) == POSENC_NUMERICS_HF_COMPATIBLE &&
              static_cast<int>(Numerics::hf_fp32_apply) == POSENC_NUMERICS_HF_FP32_APPLY &&
              static_cast<int>(Numerics::accurate) == POSENC_NUMERICS_ACCURATE);
static_assert(static_cast<int>(HfArithmetic::engine) == POSENC_HF_ARITHMETIC_ENGINE &&
              static_cast<int>(HfArithmetic::torch_cpu) == POSENC_HF_ARITHMETIC_TORCH_CPU &&
              static_cast<int>(HfArithmetic::torch_cuda) == POSENC_HF_ARITHMETIC_TORCH_CUDA &&
              static_cast<int>(HfArithmetic::exact) == POSENC_HF_ARITHMETIC_EXACT);
static_assert(static_cast<int>(Scaling::none) == POSENC_SCALING_NONE &&
              static_cast<int>(Scaling::linear) == POSENC_SCALING_LINEAR &&
              static_cast<int>(Scaling::dynamic) == POSENC_SCALING_DYNAMIC &&
              static_cast<int>(Scaling::yarn) == POSENC_SCALING_YARN &&
              static_cast<int>(Scaling::longrope) == POSENC_SCALING_LONGROPE &&
              static_cast<int>(Scaling::llama3) == POSENC_SCALING_LLAMA3 &&
              static_cast<int>(Scaling::table) == POSENC_SCALING_TABLE);
static_assert(POSENC_NEVER_PINNED == glm::never_pinned);

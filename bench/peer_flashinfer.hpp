// The benchmark's peer: FlashInfer's RoPE kernels (headers of the flashinfer-python wheel), called in place as an engine calls them.
//
// bench/peer_flashinfer.cu is compiled only when the headers are found (CMake option
// POSENC_FLASHINFER_INCLUDE; scripts/stage-gpu-deps.sh extracts them into .deps/flashinfer/include);
// posenc_bench_gpu then defines POSENC_BENCH_FLASHINFER=1. Nothing of FlashInfer is committed, and
// this header names none of its types, so bench_gpu.cu compiles without it.
#pragma once

#include <cstdint>
#include <limits>

#include "posenc/dtype.hpp"

namespace posenc::bench::flashinfer_peer {

/// The two entry points an engine calls for Q and K in one launch.
enum class Kernel {
  pos_ids,        ///< BatchQKApplyRotaryPosIds (BatchQKApplyLlama31RotaryPosIds for llama3 scaling):
                  ///< cos/sin from the position, __powf and __sincosf in float32
  cos_sin_cache,  ///< BatchQKApplyRotaryPosIdsCosSinCache: cos/sin read from a float32 [rows, R] cache
};

/// FlashInfer's function name of `k`, as the CSV note gives it.
inline const char* kernel_name(Kernel k) noexcept {
  return k == Kernel::pos_ids ? "BatchQKApplyRotaryPosIds" : "BatchQKApplyRotaryPosIdsCosSinCache";
}

/// Llama 3.1 frequency smoothing (rope_type "llama3"), as FlashInfer takes it.
struct Llama31 {
  float factor = 0;  ///< 0: no llama3 scaling
  float low_freq_factor = 1;
  float high_freq_factor = 4;
  float original_max_position_embeddings = 8192;
};

/// One in-place call: q [tokens, q_heads, head_dim] and k [tokens, kv_heads, head_dim], contiguous,
/// bfloat16 or float16; the first rotary_dim elements of each head rotate.
struct Call {
  void* q = nullptr;
  void* k = nullptr;
  DType dtype = DType::bf16;
  std::int64_t tokens = 0;
  std::int64_t q_heads = 0;
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t rotary_dim = 0;
  bool interleave = false;                   ///< adjacent pairs (GPT-J / GLM); false: rotate_half
  const std::int64_t* positions = nullptr;   ///< device, tokens entries
  float theta = 10000;                       ///< pos_ids
  Llama31 llama31;                           ///< pos_ids
  const float* cos_sin_cache = nullptr;      ///< cos_sin_cache: device, row p = [cos 0..R/2) | sin 0..R/2)]
};

/// True when FlashInfer's kernels take this call (head_dim 64, 128, 256 or 512; 16-bit dtype; sizes
/// within its 32-bit token count and 16-bit grid), with the reason in `why` when they do not.
inline bool supported(const Call& c, const char** why) noexcept {
  const char* reason = nullptr;
  if (c.dtype != DType::bf16 && c.dtype != DType::f16) {
    reason = "FlashInfer's RoPE takes float16 and bfloat16 only";
  } else if (c.head_dim != 64 && c.head_dim != 128 && c.head_dim != 256 && c.head_dim != 512) {
    reason = "FlashInfer's RoPE dispatches head_dim 64, 128, 256 and 512 only";
  } else if (c.rotary_dim <= 0 || c.rotary_dim > c.head_dim || c.rotary_dim % 2 != 0) {
    reason = "rotary_dim must be even and within head_dim";
  } else if (c.tokens > std::numeric_limits<std::uint32_t>::max() / 2 ||
             c.q_heads + c.kv_heads > std::numeric_limits<std::uint16_t>::max()) {
    reason = "sizes beyond FlashInfer's 32-bit token count and 16-bit grid";
  }
  if (why != nullptr) *why = reason;
  return reason == nullptr;
}

/// Enqueues one rotation of Q and K in place on `stream` (a cudaStream_t). Throws
/// std::runtime_error with FlashInfer's error string when the launch fails.
void launch(Kernel k, const Call& c, void* stream);

}  // namespace posenc::bench::flashinfer_peer

// FlashInfer's RoPE entry points instantiated for the benchmark's peer rows (the only file that includes FlashInfer).
#include "peer_flashinfer.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda/std/version>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// FlashInfer 0.7's fastdiv.cuh wraps cuda::fast_mod_div, which the CCCL of CUDA 13.0 (3.0.x) does
// not have yet. pos_enc.cuh includes it through page.cuh for the paged-cache kernels, which the
// bench never instantiates; where the CCCL lacks it, the same type is given here with plain
// division (bench build only: the two entry points timed below never divide by a uint_fastdiv).
#if CCCL_MAJOR_VERSION < 3 || (CCCL_MAJOR_VERSION == 3 && CCCL_MINOR_VERSION < 1)
#define FLASHINFER_FASTDIV_CUH_
namespace flashinfer {
struct uint_fastdiv {
  __host__ __device__ uint_fastdiv() : d_(0) {}
  __host__ uint_fastdiv(uint32_t d) : d_(d) {}
  __host__ __device__ __forceinline__ operator unsigned int() const { return d_; }
  __host__ __device__ __forceinline__ void divmod(uint32_t n, uint32_t& q, uint32_t& r) const {
    q = n / d_;
    r = n - q * d_;
  }
  uint32_t d_;
};
__host__ __device__ __forceinline__ uint32_t operator/(const uint32_t n, const uint_fastdiv& d) { return n / d.d_; }
__host__ __device__ __forceinline__ uint32_t operator%(const uint32_t n, const uint_fastdiv& d) { return n % d.d_; }
}  // namespace flashinfer
#endif

#include <flashinfer/pos_enc.cuh>

namespace posenc::bench::flashinfer_peer {
namespace {

template <typename T>
cudaError_t launch_typed(Kernel kernel, const Call& c, cudaStream_t stream) {
  T* q = static_cast<T*>(c.q);
  T* k = static_cast<T*>(c.k);
  auto* pos = const_cast<std::int64_t*>(c.positions);  // FlashInfer takes non-const pointers
  const auto nnz = static_cast<uint32_t>(c.tokens);
  const auto hq = static_cast<uint32_t>(c.q_heads);
  const auto hk = static_cast<uint32_t>(c.kv_heads);
  const auto r = static_cast<uint32_t>(c.rotary_dim);
  const auto d = static_cast<uint32_t>(c.head_dim);
  const auto q_n = static_cast<size_t>(c.q_heads * c.head_dim), k_n = static_cast<size_t>(c.kv_heads * c.head_dim);
  const auto h = static_cast<size_t>(c.head_dim);
  // In place, as engines call it (q_rope = q, k_rope = k, same strides).
  if (kernel == Kernel::cos_sin_cache) {
    return flashinfer::BatchQKApplyRotaryPosIdsCosSinCache<T, std::int64_t>(
        q, k, q, k, const_cast<float*>(c.cos_sin_cache), pos, nnz, hq, hk, r, d, q_n, h, k_n, h, q_n, h, k_n, h,
        c.interleave, stream);
  }
  if (c.llama31.factor > 0) {
    return flashinfer::BatchQKApplyLlama31RotaryPosIds<T, std::int64_t>(
        q, k, q, k, pos, nnz, hq, hk, r, d, q_n, h, k_n, h, q_n, h, k_n, h, c.interleave, c.llama31.factor, c.theta,
        c.llama31.low_freq_factor, c.llama31.high_freq_factor, c.llama31.original_max_position_embeddings, stream);
  }
  return flashinfer::BatchQKApplyRotaryPosIds<T, std::int64_t>(q, k, q, k, pos, nnz, hq, hk, r, d, q_n, h, k_n, h,
                                                               q_n, h, k_n, h, c.interleave, 1.0f, c.theta, stream);
}

}  // namespace

void launch(Kernel k, const Call& c, void* stream) {
  const char* why = nullptr;
  if (!supported(c, &why)) throw std::runtime_error(std::string("FlashInfer peer: ") + why);
  const auto s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaSuccess;
  try {
    e = c.dtype == DType::bf16 ? launch_typed<__nv_bfloat16>(k, c, s) : launch_typed<__half>(k, c, s);
  } catch (const std::exception& x) {  // FLASHINFER_ERROR throws flashinfer::Error
    throw std::runtime_error(std::string(kernel_name(k)) + ": " + x.what());
  }
  if (e != cudaSuccess) throw std::runtime_error(std::string(kernel_name(k)) + ": " + cudaGetErrorString(e));
}

}  // namespace posenc::bench::flashinfer_peer

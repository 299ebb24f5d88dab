// The one CUDA/HIP switch: includes the vendor runtime and maps the CUDA spellings used by posenc to HIP.
//
// Every other GPU file is written once, in CUDA spelling, and includes this header. Nothing else
// in the tree may test for CUDA versus HIP. Add a mapping line here when a new runtime call is used.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(POSENC_WITH_HIP)

#include <hip/hip_runtime.h>

// Types and constants.
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaErrorMemoryAllocation hipErrorOutOfMemory
#define cudaErrorNotReady hipErrorNotReady
#define cudaStream_t hipStream_t
#define cudaStreamNonBlocking hipStreamNonBlocking
#define cudaDeviceProp hipDeviceProp_t
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost
#define cudaMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define cudaStreamCaptureStatus hipStreamCaptureStatus
#define cudaStreamCaptureStatusNone hipStreamCaptureStatusNone
#define cudaStreamCaptureModeGlobal hipStreamCaptureModeGlobal
#define cudaStreamCaptureModeThreadLocal hipStreamCaptureModeThreadLocal
#define cudaGraph_t hipGraph_t
#define cudaGraphExec_t hipGraphExec_t
#define cudaEvent_t hipEvent_t

// Errors.
#define cudaGetErrorString hipGetErrorString
#define cudaGetErrorName hipGetErrorName
#define cudaGetLastError hipGetLastError
#define cudaPeekAtLastError hipPeekAtLastError

// Devices.
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaGetDevice hipGetDevice
#define cudaSetDevice hipSetDevice
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaDeviceSynchronize hipDeviceSynchronize
#define cudaMemGetInfo hipMemGetInfo
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor hipOccupancyMaxActiveBlocksPerMultiprocessor

// Streams and graphs.
#define cudaStreamCreateWithFlags hipStreamCreateWithFlags
#define cudaStreamDestroy hipStreamDestroy
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaStreamQuery hipStreamQuery
#define cudaStreamIsCapturing hipStreamIsCapturing
#define cudaStreamBeginCapture hipStreamBeginCapture
#define cudaStreamEndCapture hipStreamEndCapture
#define cudaGraphInstantiate hipGraphInstantiateWithFlags
#define cudaGraphLaunch hipGraphLaunch
#define cudaGraphExecDestroy hipGraphExecDestroy
#define cudaGraphDestroy hipGraphDestroy

// Events (bench/, engine counters).
#define cudaEventCreate hipEventCreate
#define cudaEventDestroy hipEventDestroy
#define cudaEventRecord hipEventRecord
#define cudaEventSynchronize hipEventSynchronize
#define cudaEventQuery hipEventQuery
#define cudaEventElapsedTime hipEventElapsedTime

// Memory.
#define cudaMalloc hipMalloc
#define cudaFree hipFree
#define cudaMemcpyAsync hipMemcpyAsync
#define cudaMemsetAsync hipMemsetAsync

namespace posenc::gpu {
/// Name of the vendor runtime, for messages ("HIP error ...").
inline constexpr const char* vendor_name = "HIP";
inline constexpr const char* vendor_backend = "hip";
#if defined(__HIPCC__)
/// An L2 prefetch hint; none is mapped for HIP (the kernels are correct without it).
__device__ __forceinline__ void device_prefetch_l2(const void*) {}
/// Orders the shared-memory accesses of a group of 32 lanes that work on one row (norm_kernels.cuh).
/// A wavefront executes in lockstep; the fences keep the compiler from moving LDS accesses across.
__device__ __forceinline__ void device_sync_warp() {
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "wavefront");
  __builtin_amdgcn_wave_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "wavefront");
}
/// Exchanges among the 32 lanes of a row's group (a 64-wide wavefront holds two groups): the value
/// of lane + delta, of lane ^ mask, of lane `src`.
__device__ __forceinline__ float device_shfl_down(float v, int delta) { return __shfl_down(v, delta, 32); }
__device__ __forceinline__ float device_shfl_xor(float v, int mask) { return __shfl_xor(v, mask, 32); }
__device__ __forceinline__ float device_shfl(float v, int src) { return __shfl(v, src, 32); }
#endif
}  // namespace posenc::gpu

#else

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

namespace posenc::gpu {
inline constexpr const char* vendor_name = "CUDA";
inline constexpr const char* vendor_backend = "cuda";

#if defined(__CUDACC__)
// Hardware round-to-nearest-even conversions (cvt.rn.bf16.f32 / cvt.rn.f16.f32). They give the
// same bits as rope_math.hpp's integer emulation for every non-NaN float, in a handful of
// instructions instead of a dozen; rope_math.hpp uses them in device code when this is defined.
// (Include this header before core/rope_math.hpp.)
#define POSENC_DEVICE_ROUNDING 1
/// Orders the shared-memory accesses of the 32 lanes of a warp that work on one row (norm_kernels.cuh).
__device__ __forceinline__ void device_sync_warp() { __syncwarp(); }
/// Exchanges among the 32 lanes of a warp (every lane takes part): the value of lane + delta, of
/// lane ^ mask, of lane `src`.
__device__ __forceinline__ float device_shfl_down(float v, int delta) { return __shfl_down_sync(0xffffffffu, v, delta); }
__device__ __forceinline__ float device_shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
__device__ __forceinline__ float device_shfl(float v, int src) { return __shfl_sync(0xffffffffu, v, src); }
/// Fetches the line holding `p` into L2 without occupying a register (prefetch.global.L2).
__device__ __forceinline__ void device_prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
__device__ __forceinline__ float device_round_bf16(float f) {
  return __bfloat162float(__float2bfloat16_rn(f));
}
__device__ __forceinline__ float device_round_f16(float f) { return __half2float(__float2half_rn(f)); }
// Two values in one packed conversion (cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32).
__device__ __forceinline__ void device_round_bf16x2(float& x, float& y) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  x = __low2float(h);
  y = __high2float(h);
}
__device__ __forceinline__ void device_round_f16x2(float& x, float& y) {
  const __half2 h = __floats2half2_rn(x, y);
  x = __low2float(h);
  y = __high2float(h);
}
__device__ __forceinline__ std::uint16_t device_f16_bits(float f) {
  return __half_as_ushort(__float2half_rn(f));
}
__device__ __forceinline__ float device_f16_value(std::uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}

// float -> OCP E4M3FN bits by the hardware conversion (cvt.rn.satfinite.e4m3x2.f32 on sm_89 and
// later; cuda_fp8.h emulates it on older targets): round to nearest even, saturating to +-448,
// infinities included: conversions.hpp's to_e4m3_bits for every non-NaN float, in a few
// instructions instead of about fifteen. Its NaN is 0x7f whatever the sign; to_e4m3_bits keeps
// the sign (0x7f | sign), and so does this. element.hpp's fp8 encoder uses it in device code.
#define POSENC_DEVICE_E4M3 1
__device__ __forceinline__ std::uint8_t device_e4m3_bits(float f) {
  const auto r = static_cast<std::uint8_t>(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3));
  return f != f ? static_cast<std::uint8_t>(0x7fu | (__float_as_uint(f) >> 24 & 0x80u)) : r;
}

// hf_compatible rotation of two pairs at once in native 16-bit arithmetic:
//   a' = R(R(a*c) - R(b*s)),  b' = R(R(b*c) + R(a*s))     (R: round to nearest even)
// with a, b, c, s each two 16-bit values in one 32-bit word (low half = first pair). The product
// of two bf16 (or f16) values is exact in float32, and so is rounding their float32 sum or
// difference once more: no double rounding can land on a 16-bit midpoint. So the _rn
// instructions (one rounding of the exact result, never fused) give exactly the bits of
// rope_math.hpp's rotate_hf, in 6 instructions per two pairs instead of about 30.
#define POSENC_DEVICE_PACKED_ROTATION 1
template <typename T2>
__device__ __forceinline__ T2 device_word_as(std::uint32_t w) {
  T2 v;
  __builtin_memcpy(&v, &w, 4);
  return v;
}
template <typename T2>
__device__ __forceinline__ std::uint32_t device_as_word(T2 v) {
  std::uint32_t w;
  __builtin_memcpy(&w, &v, 4);
  return w;
}
/// Two floats, already representable in the 16-bit type, as one word (low half = x).
template <bool Bf16>
__device__ __forceinline__ std::uint32_t device_pack2(float x, float y) {
  if constexpr (Bf16) {
    return device_as_word(__floats2bfloat162_rn(x, y));
  } else {
    return device_as_word(__floats2half2_rn(x, y));
  }
}
template <bool Bf16>
__device__ __forceinline__ void device_rotate_hf_x2(std::uint32_t a, std::uint32_t b, std::uint32_t c,
                                                    std::uint32_t s, std::uint32_t& a_out,
                                                    std::uint32_t& b_out) {
  using T2 = std::conditional_t<Bf16, __nv_bfloat162, __half2>;
  const T2 av = device_word_as<T2>(a);
  const T2 bv = device_word_as<T2>(b);
  const T2 cv = device_word_as<T2>(c);
  const T2 sv = device_word_as<T2>(s);
  a_out = device_as_word(__hsub2_rn(__hmul2_rn(av, cv), __hmul2_rn(bv, sv)));
  b_out = device_as_word(__hadd2_rn(__hmul2_rn(bv, cv), __hmul2_rn(av, sv)));
}
#endif
}  // namespace posenc::gpu

#endif

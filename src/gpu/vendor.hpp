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
/// Tells the compiler that `p` points to global memory; nothing to tell on HIP.
__device__ __forceinline__ void device_assume_global(const void*) {}
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
/// sin and cos of x as the vendor's float sinf/cosf give them (torch's cos/sin on this GPU);
/// see the CUDA definition below for why CUDA needs more than a call.
__device__ __forceinline__ void device_torch_sincos(float x, float* s, float* c) { sincosf(x, s, c); }
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
/// Tells the compiler that `p` points to global memory (a pointer read from shared memory is
/// otherwise accessed with generic loads and stores, which resolve the address space each time).
__device__ __forceinline__ void device_assume_global(const void* p) { __builtin_assume(__isGlobal(p)); }
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

// sin and cos of a float with exactly the bits of CUDA's sincosf (= its sinf and cosf), which is
// what torch's float cos/sin kernels compute on CUDA (HfArithmetic::torch_cuda).
//
// CUDA's sincosf reduces |x| < 105615 by a three-part float Cody-Waite step and evaluates its
// polynomials on the reduced value. At and above 105615 it reduces with the exact product of
// the mantissa and the bits of 2/pi, built in a 7-word array indexed by the exponent, which ptxas
// may place in local memory (a stack frame in the kernel); with positions past ~1e5 the low
// frequencies of every token take that path. device_torch_sincos does that large reduction in
// registers and produces the same (quadrant, reduced float) pair as the library, then lets the
// library's own sincosf evaluate the reduced value, whose |r| <= pi/4 makes the library's
// reduction the identity (quadrant 0; at the largest r, float(pi/4) * float(2/pi) rounds to
// exactly 0.5, and the round-half-even conversion gives 0). The quadrant's swap and sign changes
// are applied afterwards, as sincosf applies its own. tests/test_gpu_trig.cu compares all 2^32
// float bit patterns with sincosf, sinf and cosf bit for bit.
//
// The numeric facts of the library's large path (read from CUDA 13's libdevice; test_gpu_trig
// checks them against whichever toolkit builds the tests):
//   * mantissa m = (bits << 8) | 2^31 (32 bits, the leading one at the top) times the 192 most
//     significant bits of 2/pi, an exact 224-bit product p (7 words, p0 least significant);
//   * with e = biased exponent - 128 (15..127 here), the 64-bit window (hi, lo) is the words
//     p[idx + 2], p[idx + 1] shifted left by e % 32 with the bits of p[idx + 1], p[idx] moving
//     in, idx = 4 - e / 32;
//   * the quadrant is the window's top 2 bits, plus 1 when the next bit (the fraction's first)
//     is set, in which case the 62 fraction bits (moved to the top of 64) are complemented and
//     the sign flips; the quadrant is negated for negative x;
//   * the fraction as a signed 64-bit integer is converted to double (round to nearest), times
//     the double nearest pi/2 * 2^-64, rounded to float, negated when the sign says so;
//   * infinities reduce to (quadrant 0, x * 0 = NaN); NaN stays on the small path (the 105615
//     comparison is false).
namespace trig_detail {
/// The float at and above which (in magnitude) CUDA's sincosf/sinf/cosf take the large reduction.
inline constexpr float large_reduction_min = 105615.0f;

/// A large argument reduced as the library reduces it.
struct Reduced {
  float r;             ///< x - quadrant * pi/2, |r| <= pi/4
  unsigned quadrant;  ///< modulo 4
};

/// The (quadrant, reduced value) of finite x with |x| >= large_reduction_min, as sincosf's large
/// path gives them. Fully unrolled, no indexed array: instead of forming all seven product words
/// and picking three, the words of 2/pi are moved up by k = e / 32 words
/// (immediates picked by selects; zero below), so the three wanted words are always the top ones
/// of the product and the lower ones only pass their carry on.
__device__ __forceinline__ Reduced reduce_large(float x) {
  const unsigned bits = __float_as_uint(x);
  const unsigned long long m = (bits << 8) | 0x80000000u;
  const unsigned e = ((bits >> 23) & 0xffu) - 128u;  // 15..127
  const unsigned k = e >> 5;                          // 0..3: the window starts at word 4 - k
  // 2/pi's words, least significant first: t(j) is word j - k of them (0 when j < k).
  const auto t = [k](unsigned w0, unsigned w1, unsigned w2, unsigned w3) -> unsigned long long {
    return k == 0 ? w0 : k == 1 ? w1 : k == 2 ? w2 : w3;
  };
  constexpr unsigned c0 = 0x3C439041u, c1 = 0xDB629599u, c2 = 0xF534DDC0u;
  constexpr unsigned c3 = 0xFC2757D1u, c4 = 0x4E441529u, c5 = 0xA2F9836Eu;
  // m * (2/pi << 32k), word by word; each step's 64-bit sum cannot overflow. Word 6 needs its
  // low half only (the bits above it are whole turns).
  unsigned long long acc = t(c0, 0, 0, 0) * m;
  acc = t(c1, c0, 0, 0) * m + (acc >> 32);
  acc = t(c2, c1, c0, 0) * m + (acc >> 32);
  acc = t(c3, c2, c1, c0) * m + (acc >> 32);
  const unsigned w0 = static_cast<unsigned>(acc = t(c4, c3, c2, c1) * m + (acc >> 32));
  const unsigned w1 = static_cast<unsigned>(acc = t(c5, c4, c3, c2) * m + (acc >> 32));
  const unsigned w2 = static_cast<unsigned>(t(0, c5, c4, c3)) * static_cast<unsigned>(m) + static_cast<unsigned>(acc >> 32);
  const unsigned hi = __funnelshift_l(w1, w2, e);  // shift by e % 32; 0 leaves w2
  const unsigned lo = __funnelshift_l(w0, w1, e);
  // The 62 fraction bits at the top of 64; the first of them rounds the quadrant up.
  unsigned long long f = (static_cast<unsigned long long>(hi) << 34) | (static_cast<unsigned long long>(lo) << 2);
  const unsigned up = static_cast<unsigned>(f >> 63);
  const unsigned q = (hi >> 30) + up;
  const unsigned negative = bits >> 31;
  f ^= 0ull - up;  // complement when rounded up: then 1 - fraction, and the sign flips
  const double scaled = __dmul_rn(__ll2double_rn(static_cast<long long>(f)), 0x1.921fb54442d19p-64);
  const float r = __double2float_rn(scaled);
  return {(negative ^ up) != 0 ? -r : r, negative != 0 ? 0u - q : q};
}
}  // namespace trig_detail

/// sin (*s) and cos (*c) of x with exactly the bits of sincosf(x) (and of sinf(x), cosf(x)) for
/// every float x, without the library's local-memory array for |x| >= 105615 (see above).
__device__ __forceinline__ void device_torch_sincos(float x, float* s, float* c) {
  // Below 105615 (and NaN) the argument goes to sincosf unchanged, quadrant 0 here; above, the
  // reduced value and its quadrant. Infinities give the library's NaN.
  float a = x;
  unsigned q = 0;
  if (fabsf(x) >= trig_detail::large_reduction_min) {
    const trig_detail::Reduced red = isinf(x) ? trig_detail::Reduced{x * 0.0f, 0u} : trig_detail::reduce_large(x);
    a = red.r;
    q = red.quadrant;
  }
  // True on both sides; stated in the library's own comparison, it lets the compiler drop the
  // library's large path from the one sincosf below (no local memory, one copy of the
  // polynomials). For a = r the library's reduction is the identity (quadrant 0).
  __builtin_assume(!(fabsf(a) >= trig_detail::large_reduction_min));
  float sa;
  float ca;
  sincosf(a, &sa, &ca);
  const float s1 = (q & 1u) != 0 ? ca : sa;
  const float c1 = (q & 1u) != 0 ? sa : ca;
  *s = (q & 2u) != 0 ? -s1 : s1;
  *c = ((q + 1u) & 2u) != 0 ? -c1 : c1;
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
/// Two floats rounded to nearest even into one word of the 16-bit type (low half = x); exact for
/// values already representable (cos/sin table entries).
template <bool Bf16>
__device__ __forceinline__ std::uint32_t device_pack2(float x, float y) {
  if constexpr (Bf16) {
    return device_as_word(__floats2bfloat162_rn(x, y));
  } else {
    return device_as_word(__floats2half2_rn(x, y));
  }
}
// device_rotate_first_hf_x2: a' alone, R(R(a*c) - R(b*s)) per half (rope_math.hpp's rotate_first;
// the QK norm's register path, norm_kernels.cuh, computes one output per lane). device_mul_hf_x2:
// the weight step R(w * y) of two already rounded values (qk_norm.hpp's norm_weighted, rms form),
// one exact product and one rounding.
template <bool Bf16>
__device__ __forceinline__ std::uint32_t device_rotate_first_hf_x2(std::uint32_t a, std::uint32_t b,
                                                                   std::uint32_t c, std::uint32_t s) {
  using T2 = std::conditional_t<Bf16, __nv_bfloat162, __half2>;
  return device_as_word(__hsub2_rn(__hmul2_rn(device_word_as<T2>(a), device_word_as<T2>(c)),
                                   __hmul2_rn(device_word_as<T2>(b), device_word_as<T2>(s))));
}
template <bool Bf16>
__device__ __forceinline__ void device_rotate_hf_x2(std::uint32_t a, std::uint32_t b, std::uint32_t c,
                                                    std::uint32_t s, std::uint32_t& a_out,
                                                    std::uint32_t& b_out) {
  using T2 = std::conditional_t<Bf16, __nv_bfloat162, __half2>;
  a_out = device_rotate_first_hf_x2<Bf16>(a, b, c, s);
  b_out = device_as_word(__hadd2_rn(__hmul2_rn(device_word_as<T2>(b), device_word_as<T2>(c)),
                                    __hmul2_rn(device_word_as<T2>(a), device_word_as<T2>(s))));
}
template <bool Bf16>
__device__ __forceinline__ std::uint32_t device_mul_hf_x2(std::uint32_t a, std::uint32_t b) {
  using T2 = std::conditional_t<Bf16, __nv_bfloat162, __half2>;
  return device_as_word(__hmul2_rn(device_word_as<T2>(a), device_word_as<T2>(b)));
}
#endif
}  // namespace posenc::gpu

#endif

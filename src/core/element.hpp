// The element types posenc computes with, defined once for host and device: storage, size, exact load, store, rounding and vector width of each activation dtype, and the encoding of each cache dtype.
//
// The reference, the CPU engine and the GPU kernels all read and write activations through
// Element<D> and round through round_act<D>, so they cannot disagree on a bit. A DType or
// CacheDType without a specialisation here does not compile (the primary templates are only
// declared); the static_asserts tie each row to the public size_of.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/conversions.hpp"
#include "posenc/dtype.hpp"
#include "posenc/kv_cache.hpp"

namespace posenc::detail {

/// Whether round_act below uses the device's hardware conversions (checked by the GPU kernels,
/// which must include gpu/vendor.hpp first).
#if POSENC_DEVICE_PASS && defined(POSENC_DEVICE_ROUNDING)
#define POSENC_MATH_HAS_DEVICE_ROUNDING 1
#else
#define POSENC_MATH_HAS_DEVICE_ROUNDING 0
#endif
/// Whether the fp8 cache encoder below uses the device's hardware conversion (vendor.hpp).
#if POSENC_DEVICE_PASS && defined(POSENC_DEVICE_E4M3)
#define POSENC_MATH_HAS_DEVICE_E4M3 1
#else
#define POSENC_MATH_HAS_DEVICE_E4M3 0
#endif

/// Two values handled together (a rotation pair, or two roundings in one conversion).
struct Pair {
  float a;
  float b;
};

/// One activation dtype as a compile-time type:
///   Storage               how one element is held in memory (f16/bf16 travel as their bits)
///   widen(s)              the element's value as float (exact)
///   narrow(f)             f rounded to nearest even, as storage (PyTorch's cast)
///   narrow_rounded(f)     f already rounded to this dtype (every rotation ends in round_act), as
///                         storage: exact, and cheaper than narrow (bf16: the high half of f)
///   round(f)              f rounded to nearest even, staying in float
/// Device code uses the hardware conversions where the vendor header provides them
/// (POSENC_DEVICE_ROUNDING): the same bits for every input, at a fraction of the instructions.
template <DType D>
struct Element;

template <>
struct Element<DType::f32> {
  using Storage = float;
  static POSENC_HD float widen(float s) { return s; }
  static POSENC_HD float narrow(float f) { return f; }
  static POSENC_HD float narrow_rounded(float f) { return f; }
  static POSENC_HD float round(float f) { return f; }
};

template <>
struct Element<DType::bf16> {
  using Storage = std::uint16_t;
  static POSENC_HD float widen(std::uint16_t s) { return from_bf16_bits(s); }
  static POSENC_HD std::uint16_t narrow(float f) { return to_bf16_bits(f); }
  /// bf16_round leaves the low 16 bits zero (NaN included): the bits are the high half, with no
  /// second rounding or NaN check.
  static POSENC_HD std::uint16_t narrow_rounded(float f) { return static_cast<std::uint16_t>(float_bits(f) >> 16); }
  static POSENC_HD float round(float f) {
#if POSENC_MATH_HAS_DEVICE_ROUNDING
    return posenc::gpu::device_round_bf16(f);
#else
    return bf16_round(f);
#endif
  }
};

template <>
struct Element<DType::f16> {
  using Storage = std::uint16_t;
  static POSENC_HD float widen(std::uint16_t s) {
#if POSENC_MATH_HAS_DEVICE_ROUNDING
    return posenc::gpu::device_f16_value(s);
#else
    return from_f16_bits(s);
#endif
  }
  static POSENC_HD std::uint16_t narrow(float f) { return to_f16_bits(f); }
  static POSENC_HD std::uint16_t narrow_rounded(float f) {
#if POSENC_MATH_HAS_DEVICE_ROUNDING
    return posenc::gpu::device_f16_bits(f);
#else
    return to_f16_bits(f);
#endif
  }
  static POSENC_HD float round(float f) {
#if POSENC_MATH_HAS_DEVICE_ROUNDING
    return posenc::gpu::device_round_f16(f);
#else
    return f16_round(f);
#endif
  }
};

template <DType D>
using storage_t = typename Element<D>::Storage;

/// Bytes of one vector access of the GPU's vectorized instantiations.
inline constexpr std::int64_t vector_bytes = 16;

/// Elements in one vector access: the width of the GPU's vectorized instantiations.
template <DType D>
inline constexpr int vector_width = static_cast<int>(vector_bytes / static_cast<std::int64_t>(sizeof(storage_t<D>)));

static_assert(sizeof(storage_t<DType::f32>) == size_of(DType::f32));
static_assert(sizeof(storage_t<DType::f16>) == size_of(DType::f16));
static_assert(sizeof(storage_t<DType::bf16>) == size_of(DType::bf16));

/// Host access to element `index` of a buffer of D's, as float (exact). memcpy: any alignment,
/// no aliasing question.
template <DType D>
inline float load_at(const void* data, std::int64_t index) {
  storage_t<D> s;
  std::memcpy(&s, static_cast<const char*>(data) + index * static_cast<std::int64_t>(sizeof s), sizeof s);
  return Element<D>::widen(s);
}

/// Host store of `value` rounded to nearest even as element `index` of a buffer of D's.
template <DType D>
inline void store_at(void* data, std::int64_t index, float value) {
  const storage_t<D> s = Element<D>::narrow(value);
  std::memcpy(static_cast<char*>(data) + index * static_cast<std::int64_t>(sizeof s), &s, sizeof s);
}

/// Rounds f to the nearest value of the activation dtype (RNE), staying in float.
template <DType D>
POSENC_HD float round_act(float f) {
  return Element<D>::round(f);
}

/// {round_act(x), round_act(y)}: on the device a single packed conversion (cvt.rn.bf16x2.f32 /
/// f16x2) rounds both, halving the conversion instructions, which bound the 16-bit kernels.
template <DType D>
POSENC_HD Pair round_act2(float x, float y) {
#if POSENC_MATH_HAS_DEVICE_ROUNDING
  if constexpr (D == DType::bf16) {
    posenc::gpu::device_round_bf16x2(x, y);
    return {x, y};
  } else if constexpr (D == DType::f16) {
    posenc::gpu::device_round_f16x2(x, y);
    return {x, y};
  }
#endif
  return {round_act<D>(x), round_act<D>(y)};
}

/// One cache dtype (kv_cache.hpp) as a compile-time type: its storage and how a float value is
/// encoded into it (`scale` is fp8's; the others require 1 and ignore it).
template <CacheDType C>
struct CacheElement;

template <>
struct CacheElement<CacheDType::f32> {
  using Storage = float;
  static POSENC_HD float encode(float x, float /*scale*/) { return x; }
};

template <>
struct CacheElement<CacheDType::f16> {
  using Storage = std::uint16_t;
  static POSENC_HD std::uint16_t encode(float x, float /*scale*/) { return to_f16_bits(x); }
};

template <>
struct CacheElement<CacheDType::bf16> {
  using Storage = std::uint16_t;
  static POSENC_HD std::uint16_t encode(float x, float /*scale*/) { return to_bf16_bits(x); }
};

/// An fp8 scale the encoder may divide by (KvCacheView::k_scale, the per-head arrays, q_out's):
/// finite and > 0. One definition for the host's validation and the GPU kernel's per-head check.
POSENC_HD constexpr bool fp8_scale_ok(float scale) { return scale > 0.0f && scale <= 3.402823466e38f; }

template <>
struct CacheElement<CacheDType::fp8_e4m3> {
  using Storage = std::uint8_t;
  /// e4m3(fl32(x / scale)), saturating (kv_cache.hpp); in device code by the hardware conversion
  /// where vendor.hpp provides one (the same bits: test_gpu_append compares every 16-bit input).
  static POSENC_HD std::uint8_t encode(float x, float scale) {
#if POSENC_MATH_HAS_DEVICE_E4M3
    return ::posenc::gpu::device_e4m3_bits(div_rn(x, scale));
#else
    return to_e4m3_bits(div_rn(x, scale));
#endif
  }
};

static_assert(sizeof(CacheElement<CacheDType::f32>::Storage) == size_of(CacheDType::f32));
static_assert(sizeof(CacheElement<CacheDType::f16>::Storage) == size_of(CacheDType::f16));
static_assert(sizeof(CacheElement<CacheDType::bf16>::Storage) == size_of(CacheDType::bf16));
static_assert(sizeof(CacheElement<CacheDType::fp8_e4m3>::Storage) == size_of(CacheDType::fp8_e4m3));

}  // namespace posenc::detail

// The CPU engine's kernels, specialised at compile time on dtype x pairing x numerics; included once per instruction set by engine.cpp.
//
// No include guard on purpose: engine.cpp includes this file twice, with POSENC_CPU_ISA naming a
// different namespace each time and, the second time, inside `#pragma GCC target("avx2,fma")`.
// The per-element arithmetic comes from rope_math.hpp (included before any target pragma, so
// its inline functions stay baseline code that the AVX2 kernels may inline); the loops here are
// written so the compiler vectorizes them: load a head's window into float arrays, rotate, store.
#ifndef POSENC_CPU_ISA
#error "define POSENC_CPU_ISA (the namespace of this instantiation) before including kernels.hpp"
#endif
#ifndef POSENC_CPU_F16C
#error "define POSENC_CPU_F16C (1 where the instantiation's target has F16C) before including kernels.hpp"
#endif

namespace posenc::cpu_detail::POSENC_CPU_ISA {

using detail::Act;

/// How an activation element is stored: float for f32, its 16 bits for f16/bf16.
template <Act A>
using Storage = std::conditional_t<A == Act::f32, float, std::uint16_t>;

template <Act A>
inline float to_float(Storage<A> v) {
  if constexpr (A == Act::f32) {
    return v;
  } else if constexpr (A == Act::bf16) {
    return detail::from_bf16_bits(v);
  } else {
    return detail::from_f16_bits(v);
  }
}

/// `v` has already been rounded to A by the rotation; this only re-encodes it (exactly). For bf16
/// that rounding (bf16_round) leaves the low 16 bits zero, NaN included, so the stored bits are
/// the high half: no second rounding and NaN check per element.
template <Act A>
inline Storage<A> to_storage(float v) {
  if constexpr (A == Act::f32) {
    return v;
  } else if constexpr (A == Act::bf16) {
    return static_cast<std::uint16_t>(detail::float_bits(v) >> 16);
  } else {
    return detail::to_f16_bits(v);
  }
}

template <Act A, Numerics N>
inline detail::Pair rotate(float a, float b, float c, float s) {
  if constexpr (N == Numerics::hf_compatible) {
    return detail::rotate_hf<A>(a, b, {c, s});
  } else if constexpr (N == Numerics::hf_fp32_apply) {
    return detail::rotate_fp32<A>(a, b, {c, s});
  } else {
    return detail::rotate_accurate<A>(a, b, {c, s});
  }
}

template <Act A, Numerics N>
inline detail::CosSin pair_cos_sin(const KernelCall& call, float inv_freq, std::int64_t position) {
  if constexpr (N == Numerics::accurate) {
    return detail::cos_sin_accurate(inv_freq, position, call.attention_factor);
  } else {
    return detail::cos_sin_hf<A>(inv_freq, position, call.attention_factor_f32);
  }
}

/// cos/sin of one pair before the rounding to the activation dtype (what RowCache stores).
template <Numerics N>
inline detail::CosSin pair_cos_sin_unrounded(const KernelCall& call, float inv_freq, std::int64_t position) {
  if constexpr (N == Numerics::accurate) {
    return detail::cos_sin_accurate(inv_freq, position, call.attention_factor);
  } else {
    return detail::cos_sin_hf<Act::f32>(inv_freq, position, call.attention_factor_f32);
  }
}

/// The cached (unrounded) row of `position`, computing and publishing it on a miss.
template <Numerics N>
inline void cached_row(const KernelCall& call, std::int64_t position, const float*& c, const float*& s,
                       float* scratch_c, float* scratch_s) {
  c = call.rows->cos_row(position);
  if (c != nullptr) {
    s = call.rows->sin_row(position);
    return;
  }
  for (std::int64_t i = 0; i < call.half; ++i) {
    const detail::CosSin cs = pair_cos_sin_unrounded<N>(call, call.inv_freq[i], position);
    scratch_c[i] = cs.c;
    scratch_s[i] = cs.s;
  }
  call.rows->publish(position, scratch_c, scratch_s);
  c = scratch_c;
  s = scratch_s;
}

/// One token's cos/sin row, shared by every head of Q and K. Single-stream calls use the token's
/// one position for every pair; multi-axis calls (M-RoPE, 2-D) read the token's position in each
/// stream once and give pair i the one of its stream. With a row cache the rows come from it (and
/// are rounded to the activation dtype here: the same bits as computing them, see row_cache.hpp).
template <Act A, Numerics N>
inline void cos_sin_row(const KernelCall& call, std::int64_t t, float* cos_row, float* sin_row) {
  std::int64_t stream_position[max_streams];
  const std::int32_t streams = call.pair_stream == nullptr ? 1 : call.positions.streams;
  for (std::int32_t st = 0; st < streams; ++st) stream_position[st] = detail::position_at(call.positions, st, t);
  if (call.rows != nullptr) {
    const float* c[max_streams];
    const float* s[max_streams];
    alignas(64) float scratch[2 * max_streams][max_half];
    for (std::int32_t st = 0; st < streams; ++st) {
      cached_row<N>(call, stream_position[st], c[st], s[st], scratch[2 * st], scratch[2 * st + 1]);
    }
    // hf modes round cos/sin to the activation dtype (cos_sin_hf<A> does it inside); accurate
    // keeps float32 cos/sin.
    constexpr Act R = N == Numerics::accurate ? Act::f32 : A;
    if (call.pair_stream == nullptr) {
      for (std::int64_t i = 0; i < call.half; ++i) {
        cos_row[i] = detail::round_act<R>(c[0][i]);
        sin_row[i] = detail::round_act<R>(s[0][i]);
      }
    } else {
      for (std::int64_t i = 0; i < call.half; ++i) {
        const std::uint8_t st = call.pair_stream[i];
        cos_row[i] = detail::round_act<R>(c[st][i]);
        sin_row[i] = detail::round_act<R>(s[st][i]);
      }
    }
    return;
  }
  for (std::int64_t i = 0; i < call.half; ++i) {
    const std::int64_t position = stream_position[call.pair_stream == nullptr ? 0 : call.pair_stream[i]];
    const detail::CosSin cs = pair_cos_sin<A, N>(call, call.inv_freq[i], position);
    cos_row[i] = cs.c;
    sin_row[i] = cs.s;
  }
}

#if POSENC_CPU_F16C
/// Eight floats rounded to float16 and back with the F16C conversions (vcvtps2ph with
/// round-to-nearest-even, vcvtph2ps): the same bits as rope_math.hpp's f16_round for every
/// float (tests/test_large.cpp compares all 2^32), in two instructions instead of a dozen
/// integer operations per lane.
inline __m256 f16_round8(__m256 x) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/// Whether the F16C float16 path of rotate_window applies; for interleaved pairs it takes cos/sin
/// rows with every entry twice ([c0 c0 c1 c1 ...], built once per token by rotate_tokens).
template <Act A, Pairing P, Numerics N>
inline constexpr bool f16c_path = POSENC_CPU_F16C != 0 && A == Act::f16 && N == Numerics::hf_compatible &&
                                  (P == Pairing::half_split || P == Pairing::interleaved);

/// hf_compatible float16 rotation of interleaved pairs [0, n4) (n4 a multiple of 4) with F16C,
/// on the interleaved layout itself: x = [a0 b0 a1 b1 ...] times duplicated cos, x with each pair
/// swapped times duplicated sin, and `addsub` gives a' = R(ac) - R(bs) in the even lanes and
/// b' = R(bc) + R(as) in the odd ones (rotate_hf's roundings). Each group of four pairs is read
/// before it is written, so in place is safe.
inline void rotate_f16c_interleaved(const std::uint16_t* src, const float* cos2, const float* sin2, std::int64_t n4,
                                    std::uint16_t* dst) {
  constexpr int rne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (std::int64_t i = 0; i < n4; i += 4) {
    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i)));
    const __m256 swapped = _mm256_permute_ps(x, 0xb1);
    const __m256 xc = f16_round8(_mm256_mul_ps(x, _mm256_loadu_ps(cos2 + 2 * i)));
    const __m256 xs = f16_round8(_mm256_mul_ps(swapped, _mm256_loadu_ps(sin2 + 2 * i)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), _mm256_cvtps_ph(_mm256_addsub_ps(xc, xs), rne));
  }
}

/// hf_compatible float16 rotation of half-split pairs [0, n8) (n8 a multiple of 8) with F16C,
/// straight from `src` to `dst`: rotate_hf's roundings, the last one straight into the stored
/// bits. Each group of eight pairs is read before it is written and no other group reads it, so
/// in place is safe.
inline void rotate_f16c_half_split(const std::uint16_t* src, const float* cos_row, const float* sin_row,
                                   std::int64_t n8, std::int64_t half, std::uint16_t* dst) {
  constexpr int rne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (std::int64_t i = 0; i < n8; i += 8) {
    const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    const __m256 b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + half)));
    const __m256 c = _mm256_loadu_ps(cos_row + i);
    const __m256 s = _mm256_loadu_ps(sin_row + i);
    const __m256 ac = f16_round8(_mm256_mul_ps(a, c));
    const __m256 bs = f16_round8(_mm256_mul_ps(b, s));
    const __m256 bc = f16_round8(_mm256_mul_ps(b, c));
    const __m256 as = f16_round8(_mm256_mul_ps(a, s));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_sub_ps(ac, bs), rne));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i + half), _mm256_cvtps_ph(_mm256_add_ps(bc, as), rne));
  }
}
#else
template <Act A, Pairing P, Numerics N>
inline constexpr bool f16c_path = false;
#endif

/// Rotates the window of one head. `src` and `dst` point at the window's first element and may be
/// the same memory (in place): the window is loaded into `xa`/`xb` before anything is stored.
template <Act A, Pairing P, Numerics N>
inline void rotate_window(const Storage<A>* src, Storage<A>* dst, const float* __restrict cos_row,
                          const float* __restrict sin_row, std::int64_t half, float* __restrict xa,
                          float* __restrict xb) {
  if constexpr (P == Pairing::half_split_2d) {
    // Two half-split windows of half/2 pairs each (ChatGLM-6B 2-D). They are disjoint, and each is
    // loaded before it is stored, so in place stays correct.
    const std::int64_t q = half / 2;
    rotate_window<A, Pairing::half_split, N>(src, dst, cos_row, sin_row, q, xa, xb);
    rotate_window<A, Pairing::half_split, N>(src + half, dst + half, cos_row + q, sin_row + q, q, xa, xb);
    return;
  }
  std::int64_t first = 0;  // pairs before it were rotated by a specialised loop
  std::int64_t cs_step = 1;  // the F16C interleaved path gets every cos/sin entry twice
#if POSENC_CPU_F16C
  if constexpr (f16c_path<A, P, N> && P == Pairing::interleaved) {
    first = half - half % 4;
    cs_step = 2;
    rotate_f16c_interleaved(src, cos_row, sin_row, first, dst);
  } else if constexpr (f16c_path<A, P, N>) {
    first = half - half % 8;
    rotate_f16c_half_split(src, cos_row, sin_row, first, half, dst);
  }
#endif
  if constexpr (P == Pairing::half_split) {
    for (std::int64_t i = first; i < half; ++i) {
      xa[i] = to_float<A>(src[i]);
      xb[i] = to_float<A>(src[i + half]);
    }
  } else {
    for (std::int64_t i = first; i < half; ++i) {
      xa[i] = to_float<A>(src[2 * i]);
      xb[i] = to_float<A>(src[2 * i + 1]);
    }
  }
  if constexpr (P == Pairing::interleaved) {
    for (std::int64_t i = first; i < half; ++i) {
      const detail::Pair r = rotate<A, N>(xa[i], xb[i], cos_row[cs_step * i], sin_row[cs_step * i]);
      dst[2 * i] = to_storage<A>(r.a);
      dst[2 * i + 1] = to_storage<A>(r.b);
    }
  } else {  // half_split and interleaved_to_half write (y[i], y[i + H])
    for (std::int64_t i = first; i < half; ++i) {
      const detail::Pair r = rotate<A, N>(xa[i], xb[i], cos_row[i], sin_row[i]);
      dst[i] = to_storage<A>(r.a);
      dst[i + half] = to_storage<A>(r.b);
    }
  }
}

/// Every head of one tensor at token t.
template <Act A, Pairing P, Numerics N>
inline void rotate_heads(const KernelCall& call, const KernelTensor& x, std::int64_t t, const float* cos_row,
                         const float* sin_row, float* xa, float* xb) {
  using S = Storage<A>;
  const std::int64_t rotary = 2 * call.half;
  const std::int64_t tail = call.head_dim - call.offset - rotary;
  const S* src_token = static_cast<const S*>(x.src) + t * x.src_token_stride;
  S* dst_token = static_cast<S*>(x.dst) + t * x.dst_token_stride;
  for (std::int64_t h = 0; h < x.heads; ++h) {
    const S* src = src_token + h * x.src_head_stride;
    S* dst = dst_token + h * x.dst_head_stride;
    rotate_window<A, P, N>(src + call.offset, dst + call.offset, cos_row, sin_row, call.half, xa, xb);
    if (x.copy_pass) {  // out of place: the pass-through elements are copied bit for bit
      if (call.offset > 0) std::memcpy(dst, src, static_cast<std::size_t>(call.offset) * sizeof(S));
      if (tail > 0) {
        std::memcpy(dst + call.offset + rotary, src + call.offset + rotary, static_cast<std::size_t>(tail) * sizeof(S));
      }
    }
  }
}

/// The kernel: tokens [begin, end) of a call; cos/sin computed once per token for Q and K.
/// `flatten` inlines the whole call tree (rope_math.hpp's helpers are plain `inline`, and GCC
/// otherwise keeps rotate_hf out of line, which stops the rotation loop from vectorizing).
template <Act A, Pairing P, Numerics N>
[[gnu::flatten]] void rotate_tokens(const void* context, std::int64_t begin, std::int64_t end) noexcept {
  const KernelCall& call = *static_cast<const KernelCall*>(context);
  alignas(64) float cos_row[max_half];
  alignas(64) float sin_row[max_half];
  alignas(64) float xa[max_half];
  alignas(64) float xb[max_half];
  for (std::int64_t t = begin; t < end; ++t) {
    cos_sin_row<A, N>(call, t, cos_row, sin_row);
    if constexpr (f16c_path<A, P, N> && P == Pairing::interleaved) {
      // Every entry twice, once per token for all its heads (rotate_f16c_interleaved).
      alignas(64) float cos2[2 * max_half];
      alignas(64) float sin2[2 * max_half];
      for (std::int64_t i = 0; i < call.half; ++i) {
        cos2[2 * i] = cos2[2 * i + 1] = cos_row[i];
        sin2[2 * i] = sin2[2 * i + 1] = sin_row[i];
      }
      rotate_heads<A, P, N>(call, call.q, t, cos2, sin2, xa, xb);
      if (call.has_k) rotate_heads<A, P, N>(call, call.k, t, cos2, sin2, xa, xb);
      continue;
    }
    rotate_heads<A, P, N>(call, call.q, t, cos_row, sin_row, xa, xb);
    if (call.has_k) rotate_heads<A, P, N>(call, call.k, t, cos_row, sin_row, xa, xb);
  }
}

template <Act A, Pairing P>
KernelFn select_numerics(Numerics n) noexcept {
  switch (n) {
    case Numerics::hf_compatible:
      return &rotate_tokens<A, P, Numerics::hf_compatible>;
    case Numerics::hf_fp32_apply:
      return &rotate_tokens<A, P, Numerics::hf_fp32_apply>;
    case Numerics::accurate:
      return &rotate_tokens<A, P, Numerics::accurate>;
  }
  return nullptr;
}

template <Act A>
KernelFn select_pairing(Pairing p, Numerics n) noexcept {
  switch (p) {
    case Pairing::half_split:
      return select_numerics<A, Pairing::half_split>(n);
    case Pairing::interleaved:
      return select_numerics<A, Pairing::interleaved>(n);
    case Pairing::interleaved_to_half:
      return select_numerics<A, Pairing::interleaved_to_half>(n);
    case Pairing::half_split_2d:
      return select_numerics<A, Pairing::half_split_2d>(n);
  }
  return nullptr;
}

/// The kernel for a (dtype, pairing, numerics) combination; nullptr for values outside the enums.
inline KernelFn select_kernel(DType d, Pairing p, Numerics n) noexcept {
  switch (d) {
    case DType::f32:
      return select_pairing<Act::f32>(p, n);
    case DType::f16:
      return select_pairing<Act::f16>(p, n);
    case DType::bf16:
      return select_pairing<Act::bf16>(p, n);
  }
  return nullptr;
}

}  // namespace posenc::cpu_detail::POSENC_CPU_ISA

// The CPU engine's kernels, specialised at compile time on dtype x pairing x numerics; included once per instruction set by engine.cpp.
//
// No include guard on purpose: engine.cpp includes this file once per kernel build, with
// POSENC_CPU_ISA naming a different namespace each time and, after the baseline one,
// POSENC_CPU_TARGET the instruction set it is compiled for (`#pragma GCC target`, here). The
// macros are undefined at the end, ready for the next inclusion.
// The per-element arithmetic comes from rope_math.hpp (included before any target pragma, so
// its inline functions stay baseline code that the AVX2 kernels may inline); the loops here are
// written so the compiler vectorizes them: load a head's window into float arrays, rotate, store.
#ifndef POSENC_CPU_ISA
#error "define POSENC_CPU_ISA (the namespace of this instantiation) before including kernels.hpp"
#endif
#ifndef POSENC_CPU_F16C
#error "define POSENC_CPU_F16C (lanes per F16C conversion: 0 none, 8 ymm, 16 zmm) before including kernels.hpp"
#endif
#ifndef POSENC_CPU_BF16
#error "define POSENC_CPU_BF16 (1 for the AVX512-BF16 instantiation) before including kernels.hpp"
#endif
#ifdef POSENC_CPU_TARGET
#define POSENC_CPU_PRAGMA_TEXT(text) #text
#define POSENC_CPU_PRAGMA(text) _Pragma(POSENC_CPU_PRAGMA_TEXT(text))
#pragma GCC push_options
POSENC_CPU_PRAGMA(GCC target(POSENC_CPU_TARGET))
#endif

namespace posenc::cpu_detail::POSENC_CPU_ISA {

using detail::Element;
using detail::storage_t;

template <DType A, Numerics N>
inline detail::CosSin pair_cos_sin(const KernelCall& call, float inv_freq, std::int64_t position) {
  return detail::cos_sin<A, N>(inv_freq, position, call.attention_factor, call.attention_factor_f32);
}

/// cos/sin of one pair before the rounding to the activation dtype (what RowCache stores).
template <Numerics N>
inline detail::CosSin pair_cos_sin_unrounded(const KernelCall& call, float inv_freq, std::int64_t position) {
  return pair_cos_sin<DType::f32, N>(call, inv_freq, position);
}

/// hf numerics, torch_cpu arithmetic: one row of cos/sin, unrounded (fl32(cos * af), as RowCache
/// holds them) when A is f32, else rounded to A. Pair i's angle uses position[stream(i)]:
/// `positions` holds one position per stream, `pair_stream` picks it (nullptr: stream 0).
template <DType A>
inline void torch_cpu_row(const KernelCall& call, const std::int64_t* positions, const std::uint8_t* pair_stream,
                          float* cos_row, float* sin_row) {
  alignas(64) float angle[max_half];
  for (std::int64_t i = 0; i < call.half; ++i)
    angle[i] = detail::hf_angle(call.inv_freq[i], positions[pair_stream == nullptr ? 0 : pair_stream[i]]);
  detail::torch_cpu_cos_sin(angle, call.half, cos_row, sin_row);  // MKL, a whole row per call
  for (std::int64_t i = 0; i < call.half; ++i) {
    const detail::CosSin cs = detail::cos_sin_hf_scaled<A>(cos_row[i], sin_row[i], call.attention_factor_f32);
    cos_row[i] = cs.c;
    sin_row[i] = cs.s;
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
  if (N != Numerics::accurate && call.torch_cpu_trig) {
    torch_cpu_row<DType::f32>(call, &position, nullptr, scratch_c, scratch_s);
  } else {
    for (std::int64_t i = 0; i < call.half; ++i) {
      const detail::CosSin cs = pair_cos_sin_unrounded<N>(call, call.inv_freq[i], position);
      scratch_c[i] = cs.c;
      scratch_s[i] = cs.s;
    }
  }
  call.rows->publish(position, scratch_c, scratch_s);
  c = scratch_c;
  s = scratch_s;
}

/// One token's cos/sin row from the caller's cos/sin cache of dtype C: entries i and R/2 + i of
/// the row of the token's position (validated to lie in [0, rows)), rounded as cos_sin_from_cache.
template <DType A, Numerics N, DType C>
inline void cos_sin_cache_row(const KernelCall& call, std::int64_t t, float* cos_row, float* sin_row) {
  using S = detail::storage_t<C>;
  const CosSinCacheView& c = call.cos_sin;
  const S* row = static_cast<const S*>(c.data) + detail::position_at(call.positions, t) * c.row_stride;
  for (std::int64_t i = 0; i < call.half; ++i) {
    const detail::CosSin cs = detail::cos_sin_from_cache<A, N>(detail::Element<C>::widen(row[i]),
                                                               detail::Element<C>::widen(row[call.half + i]));
    cos_row[i] = cs.c;
    sin_row[i] = cs.s;
  }
}

#if POSENC_CPU_F16C
// ---- float16 hf_compatible on F16C --------------------------------------------------------------
//
// The rotation's roundings to float16 are vcvtps2ph (round to nearest even) + vcvtph2ps: the same
// bits as rope_math.hpp's f16_round for every float (tests/test_large.cpp compares all 2^32, in
// both widths), in two instructions instead of a dozen integer operations per lane. The kernels are
// written once over the vector type below: eight lanes (ymm) in the AVX2 build, sixteen (zmm, the
// EVEX forms of the same conversions) in the AVX-512 builds, because a zmm conversion costs about
// what a ymm one does, for twice the lanes (docs/PERFORMANCE.md, CPU variant C5-f16).
#if POSENC_CPU_F16C == 16
using F16Vec = __m512;
inline constexpr std::int64_t f16c_lanes = 16;
/// The masked forms with every lane on are the plain instructions; GCC 12's unmasked intrinsics read
/// an undefined vector, which -Wmaybe-uninitialized reports.
inline F16Vec f16c_load(const std::uint16_t* p) {
  return _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m256i f16c_pack(F16Vec x) {
  return _mm512_maskz_cvtps_ph(0xffff, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline void f16c_store(std::uint16_t* p, F16Vec x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), f16c_pack(x));
}
inline F16Vec f16c_round(F16Vec x) { return _mm512_maskz_cvtph_ps(0xffff, f16c_pack(x)); }
inline F16Vec load_floats(const float* p) { return _mm512_loadu_ps(p); }
inline void store_floats(float* p, F16Vec x) { _mm512_storeu_ps(p, x); }
inline F16Vec swap_pairs(F16Vec x) { return _mm512_shuffle_ps(x, x, 0xb1); }
inline F16Vec fma(F16Vec x, F16Vec y, F16Vec z) { return _mm512_fmadd_ps(x, y, z); }
inline F16Vec fms(F16Vec x, F16Vec y, F16Vec z) { return _mm512_fmsub_ps(x, y, z); }
inline F16Vec fma_add(F16Vec x, F16Vec y) { return _mm512_fmadd_ps(x, _mm512_set1_ps(1.0f), y); }
inline F16Vec fma_sub(F16Vec x, F16Vec y) { return _mm512_fnmadd_ps(y, _mm512_set1_ps(1.0f), x); }
using WordVec = __m512i;  // 2 * f16c_lanes 16-bit words
inline WordVec load_words(const std::uint16_t* p) { return _mm512_loadu_si512(p); }
inline void store_words(std::uint16_t* p, WordVec w) { _mm512_storeu_si512(p, w); }
inline WordVec as_words(F16Vec x) { return _mm512_castps_si512(x); }
inline F16Vec as_floats(WordVec w) { return _mm512_castsi512_ps(w); }
inline WordVec words_set1(std::uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
inline WordVec words_add(WordVec x, WordVec y) { return _mm512_add_epi32(x, y); }
inline WordVec words_and(WordVec x, WordVec y) { return _mm512_and_si512(x, y); }
inline WordVec words_or(WordVec x, WordVec y) { return _mm512_or_si512(x, y); }
inline WordVec words_shl16(WordVec x) { return _mm512_maskz_slli_epi32(0xffff, x, 16); }
inline WordVec words_shr16(WordVec x) { return _mm512_maskz_srli_epi32(0xffff, x, 16); }
#else
using F16Vec = __m256;
inline constexpr std::int64_t f16c_lanes = 8;
inline F16Vec f16c_load(const std::uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m128i f16c_pack(F16Vec x) { return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline void f16c_store(std::uint16_t* p, F16Vec x) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), f16c_pack(x)); }
inline F16Vec f16c_round(F16Vec x) { return _mm256_cvtph_ps(f16c_pack(x)); }
inline F16Vec load_floats(const float* p) { return _mm256_loadu_ps(p); }
inline void store_floats(float* p, F16Vec x) { _mm256_storeu_ps(p, x); }
inline F16Vec swap_pairs(F16Vec x) { return _mm256_permute_ps(x, 0xb1); }
inline F16Vec fma(F16Vec x, F16Vec y, F16Vec z) { return _mm256_fmadd_ps(x, y, z); }
inline F16Vec fms(F16Vec x, F16Vec y, F16Vec z) { return _mm256_fmsub_ps(x, y, z); }
inline F16Vec fma_add(F16Vec x, F16Vec y) { return _mm256_fmadd_ps(x, _mm256_set1_ps(1.0f), y); }
inline F16Vec fma_sub(F16Vec x, F16Vec y) { return _mm256_fnmadd_ps(y, _mm256_set1_ps(1.0f), x); }
using WordVec = __m256i;
inline WordVec load_words(const std::uint16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline void store_words(std::uint16_t* p, WordVec w) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), w); }
inline WordVec as_words(F16Vec x) { return _mm256_castps_si256(x); }
inline F16Vec as_floats(WordVec w) { return _mm256_castsi256_ps(w); }
inline WordVec words_set1(std::uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
inline WordVec words_add(WordVec x, WordVec y) { return _mm256_add_epi32(x, y); }
inline WordVec words_and(WordVec x, WordVec y) { return _mm256_and_si256(x, y); }
inline WordVec words_or(WordVec x, WordVec y) { return _mm256_or_si256(x, y); }
inline WordVec words_shl16(WordVec x) { return _mm256_slli_epi32(x, 16); }
inline WordVec words_shr16(WordVec x) { return _mm256_srli_epi32(x, 16); }
#endif
// fma_add(x, y) = x*1 + y and fma_sub(x, y) = -(y*1) + x, rounded once: x + y and x - y to the bit
// (a product by 1 is exact, zeros keep their signs), NaN payloads aside (which NaN of two comes
// back is not specified; tests compare any NaN as equal). They run on the multiply-add units
// rather than the adders, which the F16C conversions occupy (docs/PERFORMANCE.md, CPU variant C6).

/// hf_fp32_apply and accurate rotations of vectors of pairs, as rope_math.hpp's rotate_fp32 and
/// rotate_accurate: half-split a' and b' from a, b, cos, sin in the same lanes, and interleaved
/// x = [a0 b0 a1 b1 ...] times duplicated cos plus x with each pair swapped times (-s, s), which
/// holds ac and b(-s) = -(bs) in the even lanes, bc and as in the odd ones (x + (-y) is x - y).
template <Numerics N>
inline F16Vec float_rotation_a(F16Vec a, F16Vec b, F16Vec c, F16Vec s) {
  if constexpr (N == Numerics::hf_fp32_apply) return fma_sub(a * c, b * s);
  return fms(a, c, b * s);  // accurate: fma(a, c, -(bs))
}
template <Numerics N>
inline F16Vec float_rotation_b(F16Vec a, F16Vec b, F16Vec c, F16Vec s) {
  if constexpr (N == Numerics::hf_fp32_apply) return fma_add(b * c, a * s);
  return fma(b, c, a * s);
}
template <Numerics N>
inline F16Vec float_rotation_interleaved(F16Vec x, const float* cos2, const float* sin2n) {
  const F16Vec xs = swap_pairs(x) * load_floats(sin2n);
  if constexpr (N == Numerics::hf_fp32_apply) return fma_add(x * load_floats(cos2), xs);
  return fma(x, load_floats(cos2), xs);
}

/// Whether the F16C float16 path of rotate_window applies (every numerics: loads widen with
/// vcvtph2ps, the one rounding of hf_fp32_apply and accurate is the storing vcvtps2ph, and
/// hf_compatible's product roundings are round trips); for interleaved pairs it takes lane rows
/// (lane_rows): each cos entry twice, [c0 c0 c1 c1 ...], then the sin entries as [-s0 s0 -s1 s1 ...].
template <DType A, Pairing P, Numerics N>
inline constexpr bool f16c_path = A == DType::f16 && (P == Pairing::half_split || P == Pairing::interleaved);

/// float16 rotation of interleaved pairs [0, n) (n a multiple of f16c_lanes / 2) under numerics N,
/// on the interleaved layout itself (float_rotation_interleaved); hf_compatible rounds both
/// products first (rotate_hf; R is odd: R(b(-s)) = -R(bs)). Each group of pairs is read before it
/// is written, so in place is safe.
template <Numerics N>
inline void rotate_f16c_interleaved(const std::uint16_t* src, const float* cos2, const float* sin2n, std::int64_t n,
                                    std::uint16_t* dst) {
  for (std::int64_t i = 0; i < 2 * n; i += f16c_lanes) {
    const F16Vec x = f16c_load(src + i);
    if constexpr (N == Numerics::hf_compatible) {
      const F16Vec xc = f16c_round(x * load_floats(cos2 + i));
      f16c_store(dst + i, fma_add(xc, f16c_round(swap_pairs(x) * load_floats(sin2n + i))));
    } else {
      f16c_store(dst + i, float_rotation_interleaved<N>(x, cos2 + i, sin2n + i));
    }
  }
}

/// float16 rotation of half-split pairs [0, n) (n a multiple of f16c_lanes) under numerics N,
/// straight from `src` to `dst` with rope_math.hpp's operations (the last rounding is the store).
/// Each group of pairs is read before it is written and no other group reads it, so in place is safe.
template <Numerics N>
inline void rotate_f16c_half_split(const std::uint16_t* src, const float* cos_row, const float* sin_row,
                                   std::int64_t n, std::int64_t half, std::uint16_t* dst) {
  for (std::int64_t i = 0; i < n; i += f16c_lanes) {
    const F16Vec a = f16c_load(src + i);
    const F16Vec b = f16c_load(src + i + half);
    const F16Vec c = load_floats(cos_row + i);
    const F16Vec s = load_floats(sin_row + i);
    if constexpr (N == Numerics::hf_compatible) {
      f16c_store(dst + i, fma_sub(f16c_round(a * c), f16c_round(b * s)));
      f16c_store(dst + i + half, fma_add(f16c_round(b * c), f16c_round(a * s)));
    } else {
      f16c_store(dst + i, float_rotation_a<N>(a, b, c, s));
      f16c_store(dst + i + half, float_rotation_b<N>(a, b, c, s));
    }
  }
}

/// Whether the float32 vector path of rotate_window applies: the same arithmetic on float lanes
/// loaded and stored as they are (the compiler-vectorized rotate_pairs stages each head through
/// stack arrays, which cost about as much again; docs/PERFORMANCE.md, CPU variant C9). Interleaved
/// pairs take the float16 path's lane rows.
template <DType A, Pairing P, Numerics N>
inline constexpr bool f32_path = A == DType::f32 && (P == Pairing::half_split || P == Pairing::interleaved);

/// The numerics whose float_rotation_* gives N's float32 results: hf_compatible's roundings to
/// float32 change nothing, which leaves hf_fp32_apply's arithmetic.
template <Numerics N>
inline constexpr Numerics f32_numerics = N == Numerics::accurate ? Numerics::accurate : Numerics::hf_fp32_apply;

/// float32 rotation of half-split pairs [0, n) (n a multiple of f16c_lanes); in place is safe.
template <Numerics N>
inline void rotate_f32_half_split(const float* src, const float* cos_row, const float* sin_row, std::int64_t n,
                                  std::int64_t half, float* dst) {
  constexpr Numerics M = f32_numerics<N>;
  for (std::int64_t i = 0; i < n; i += f16c_lanes) {
    const F16Vec a = load_floats(src + i);
    const F16Vec b = load_floats(src + i + half);
    const F16Vec c = load_floats(cos_row + i);
    const F16Vec s = load_floats(sin_row + i);
    store_floats(dst + i, float_rotation_a<M>(a, b, c, s));
    store_floats(dst + i + half, float_rotation_b<M>(a, b, c, s));
  }
}

/// float32 rotation of interleaved pairs [0, n) (n a multiple of f16c_lanes / 2); in place is safe.
template <Numerics N>
inline void rotate_f32_interleaved(const float* src, const float* cos2, const float* sin2n, std::int64_t n, float* dst) {
  for (std::int64_t i = 0; i < 2 * n; i += f16c_lanes) {
    store_floats(dst + i, float_rotation_interleaved<f32_numerics<N>>(load_floats(src + i), cos2 + i, sin2n + i));
  }
}

// ---- bfloat16 on integer lanes (the AVX2 and AVX-512 builds) --------------------------------------
//
// Without AVX512-BF16 the rounding to bfloat16 is bf16_round's own integer arithmetic on vector
// lanes: the float's bits plus 0x7fff plus bit 16 leave the rounded bfloat16 (to nearest even) in
// the high half, for normal and subnormal floats, infinities and overflow alike. NaN is the one
// case bf16_round treats apart, and every NaN these kernels meet is quiet with its low 16 bits
// zero: bfloat16 inputs and cos/sin rounded to bfloat16 widen so, an operation only sets the quiet
// bit (a NaN it makes is the default NaN), and accurate's float32 cos/sin from a caller's cache
// have their NaNs made so once per token (cos_sin_row: a NaN with low bits set would be carried
// into the sign bit; test_cos_sin_cache SpecialEntriesEqualReference). The addition then leaves a
// NaN's high half as bf16_round's quiet NaN. The 16-bit words are widened with a shift (even words, the low halves of the 32-bit
// lanes) and an AND (odd words), with no shuffles: interleaved pairs then hold a in the even-word
// floats and b in the odd-word ones, and half-split blocks of 2 x f16c_lanes pairs take cos/sin
// rearranged once per token into the same even/odd order (lane_rows). Results go back with a shift
// and an OR. Before, these kernels were the compiler-vectorized emulation (docs/PERFORMANCE.md,
// CPU variant C10).

inline constexpr std::uint32_t bf16_high_half = 0xffff0000u;

/// bf16_round's sum: the high half is the float rounded to bfloat16 (see above); the low half is
/// not cleared. AVX-512 adds the tie-breaking bit 16 under a test mask: 3 instructions instead of 4,
/// about 10 % of the hf_compatible kernel's time (docs/PERFORMANCE.md, CPU variant C10).
inline WordVec bf16_carry(F16Vec x) {
  const WordVec u = as_words(x);
#if POSENC_CPU_F16C == 16
  const WordVec t = words_add(u, words_set1(0x7fffu));
  return _mm512_mask_add_epi32(t, _mm512_test_epi32_mask(u, words_set1(0x10000u)), t, words_set1(1u));
#else
  return words_add(words_add(u, words_set1(0x7fffu)), words_and(words_shr16(u), words_set1(1u)));
#endif
}
/// The float lanes rounded to bfloat16 (and widened back), for the NaNs described above.
inline F16Vec bf16_round_lanes(F16Vec x) { return as_floats(words_and(bf16_carry(x), words_set1(bf16_high_half))); }
/// The even-word and odd-word floats of 2 x f16c_lanes bfloat16 words.
inline F16Vec widen_even_words(WordVec w) { return as_floats(words_shl16(w)); }
inline F16Vec widen_odd_words(WordVec w) { return as_floats(words_and(w, words_set1(bf16_high_half))); }
/// 2 x f16c_lanes words: `even` rounded into the even words, `odd` into the odd ones.
inline WordVec bf16_pack(F16Vec even, F16Vec odd) {
  return words_or(words_shr16(bf16_carry(even)), words_and(bf16_carry(odd), words_set1(bf16_high_half)));
}

/// a' and b' before their last rounding: hf_compatible rounds the products (rotate_hf; a plain
/// subtract and add, measured as fast here as fma_sub / fma_add), the other numerics are
/// float_rotation_*.
template <Numerics N>
inline F16Vec bf16_rotation_a(F16Vec a, F16Vec b, F16Vec c, F16Vec s) {
  if constexpr (N == Numerics::hf_compatible) return bf16_round_lanes(a * c) - bf16_round_lanes(b * s);
  return float_rotation_a<N>(a, b, c, s);
}
template <Numerics N>
inline F16Vec bf16_rotation_b(F16Vec a, F16Vec b, F16Vec c, F16Vec s) {
  if constexpr (N == Numerics::hf_compatible) return bf16_round_lanes(b * c) + bf16_round_lanes(a * s);
  return float_rotation_b<N>(a, b, c, s);
}

/// bfloat16 rotation of interleaved pairs [0, n) (n a multiple of f16c_lanes) under numerics N,
/// with the token's cos/sin rows as they are; in place is safe (each block is read first).
template <Numerics N>
inline void rotate_bf16_words_interleaved(const std::uint16_t* src, const float* cos_row, const float* sin_row,
                                          std::int64_t n, std::uint16_t* dst) {
  for (std::int64_t i = 0; i < n; i += f16c_lanes) {
    const WordVec x = load_words(src + 2 * i);
    const F16Vec a = widen_even_words(x);
    const F16Vec b = widen_odd_words(x);
    const F16Vec c = load_floats(cos_row + i);
    const F16Vec s = load_floats(sin_row + i);
    store_words(dst + 2 * i, bf16_pack(bf16_rotation_a<N>(a, b, c, s), bf16_rotation_b<N>(a, b, c, s)));
  }
}

/// bfloat16 rotation of half-split pairs [0, n) (n a multiple of 2 x f16c_lanes) under numerics N,
/// with cos/sin in even/odd order per block (lane_rows); in place is safe.
template <Numerics N>
inline void rotate_bf16_words_half_split(const std::uint16_t* src, const float* cos_eo, const float* sin_eo,
                                         std::int64_t n, std::int64_t half, std::uint16_t* dst) {
  for (std::int64_t i = 0; i < n; i += 2 * f16c_lanes) {
    const WordVec a = load_words(src + i);
    const WordVec b = load_words(src + half + i);
    const F16Vec ae = widen_even_words(a), ao = widen_odd_words(a);
    const F16Vec be = widen_even_words(b), bo = widen_odd_words(b);
    const F16Vec ce = load_floats(cos_eo + i), co = load_floats(cos_eo + i + f16c_lanes);
    const F16Vec se = load_floats(sin_eo + i), so = load_floats(sin_eo + i + f16c_lanes);
    store_words(dst + i, bf16_pack(bf16_rotation_a<N>(ae, be, ce, se), bf16_rotation_a<N>(ao, bo, co, so)));
    store_words(dst + half + i, bf16_pack(bf16_rotation_b<N>(ae, be, ce, se), bf16_rotation_b<N>(ao, bo, co, so)));
  }
}

/// Whether rotate_window takes the integer-lane bfloat16 path: the builds without AVX512-BF16 (the
/// AVX512-BF16 build has its own kernels for these combinations).
template <DType A, Pairing P, Numerics N>
inline constexpr bool bf16_word_path = POSENC_CPU_BF16 == 0 && A == DType::bf16 &&
                                       (P == Pairing::half_split || P == Pairing::interleaved);
#else
template <DType A, Pairing P, Numerics N>
inline constexpr bool f16c_path = false;
template <DType A, Pairing P, Numerics N>
inline constexpr bool f32_path = false;
template <DType A, Pairing P, Numerics N>
inline constexpr bool bf16_word_path = false;
#endif

#if POSENC_CPU_BF16
// ---- bfloat16 hf_compatible on AVX512-BF16 -------------------------------------------------------
//
// vcvtne2ps2bf16 rounds 32 floats to bfloat16 (round to nearest even) in one instruction. It gives
// bf16_round's bits for every float except the subnormals, which it takes as zero whatever MXCSR
// says (tests/test_large.cpp checks all 2^32 floats). So this path only runs where no rounding can
// see a subnormal: cos/sin entries 0 or of magnitude >= 2^-40 (checked once per token) and
// activations 0 or >= 2^-79 (checked per block; a block with a smaller one takes the emulation).
// Then every product is 0 or >= 2^-119 in magnitude, its rounding a multiple of 2^-126, and so is
// the sum of two such roundings: 0 or normal. NaN and infinity round as bf16_round does.
//
// Each rotated element is the sum of two rounded products, a' = R(ac) + R(-bs) (the bits of
// R(ac) - R(bs): R is odd, x + (-y) is x - y) and b' = R(as) + R(bc), rounded once more. The
// activations are spread into floats so that each float vector alternates the a and b of its pairs,
// [a0 b0 a1 b1 ...] (one word permutation per 16 floats, from either layout); times the lane rows
// [c0 -s0 c1 -s1 ...] and [s0 c0 s1 c1 ...] they give, side by side, the two products of one
// result. vcvtne2ps2bf16 rounds 32 of them into 16 adjacent pairs of words, and vdpbf16ps against
// (1, 1) with a -0 accumulator adds each pair in float: a product by 1 is exact, -0 + x is x, and
// the sum is rounded once to nearest even (it denormalizes nothing here: both terms are 0 or normal
// and their sum is 0 or normal, by the bounds above). So the sums need no widening of the rounded
// words, and half-split results come out in order. (Before, C5: the rounded products were widened
// again and added with vaddps, 32 vs 22 vector instructions per 32 pairs; docs/PERFORMANCE.md, C6.)

/// Word w of `round2(high, low)` holds lane w % 16 of `low` (w < 16) or of `high` (vcvtne2ps2bf16).
inline __m512i round2(__m512 high, __m512 low) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(high, low));
}

/// Lane k: the sum of words 2k and 2k + 1 of `w`, rounded once to float (vdpbf16ps, see above).
inline __m512 bf16_pair_sums(__m512i w) {
  return _mm512_dpbf16_ps(_mm512_set1_ps(-0.0f), reinterpret_cast<__m512bh>(w),
                          reinterpret_cast<__m512bh>(_mm512_set1_epi32(0x3f803f80)));  // bfloat16 1.0, twice
}

/// Lanes of 32 bfloat16 words that are nonzero and below 2^-79 in magnitude (exponent field < 48).
inline __mmask32 bf16_tiny(__m512i w) {
  const __m512i twice = _mm512_add_epi16(w, w);  // the magnitude times two: the sign drops out
  return _mm512_cmp_epu16_mask(_mm512_sub_epi16(twice, _mm512_set1_epi16(1)), _mm512_set1_epi16(0x2fff),
                               _MM_CMPINT_LT);
}

/// Whether cos/sin entries [0, n) are all 0 or at least 2^-40 in magnitude (n a multiple of 16).
inline bool bf16_rows_usable(const float* c, const float* s, std::int64_t n) {
  const __m512 limit = _mm512_set1_ps(0x1p-40f);
  const __m512 zero = _mm512_setzero_ps();
  auto tiny = [&](__m512 x) {
    return _mm512_cmp_ps_mask(x, zero, _CMP_NEQ_UQ) & _mm512_cmp_ps_mask(_mm512_abs_ps(x), limit, _CMP_LT_OQ);
  };
  __mmask16 found = 0;
  for (std::int64_t i = 0; i < n; i += 16) found |= tiny(_mm512_loadu_ps(c + i)) | tiny(_mm512_loadu_ps(s + i));
  return found == 0;
}

/// Word permutation indices that spread 16 words into the high halves of 16 floats (the low
/// halves are zeroed by the mask bf16_odd_words): float l takes word `pick(l)` of the sources.
inline constexpr __mmask32 bf16_odd_words = 0xaaaaaaaau;
template <class Pick>
consteval std::array<std::int16_t, 32> bf16_spread(Pick pick) {
  std::array<std::int16_t, 32> out{};
  for (int l = 0; l < 16; ++l) out[static_cast<std::size_t>(2 * l + 1)] = static_cast<std::int16_t>(pick(l));
  return out;
}

/// x with lanes 1, 3, 5, ... negated.
inline __m512 bf16_negate_odd(__m512 x) { return _mm512_mask_xor_ps(x, 0xaaaa, x, _mm512_set1_ps(-0.0f)); }

/// Words 0-15 / 16-31 of one vector, in order.
inline constexpr std::array<std::int16_t, 32> bf16_spread_low = bf16_spread([](int l) { return l; });
inline constexpr std::array<std::int16_t, 32> bf16_spread_high = bf16_spread([](int l) { return 16 + l; });

/// One 32-pair half-split block, [a0..a31] and [b0..b31]: float vector k alternates the a and b of
/// pairs 8k..8k+7 (index < 32: a word, else b).
consteval std::array<std::array<std::int16_t, 32>, 4> bf16_half_split_spread() {
  std::array<std::array<std::int16_t, 32>, 4> out{};
  for (int k = 0; k < 4; ++k) {
    out[static_cast<std::size_t>(k)] = bf16_spread([k](int l) { return (l % 2 == 0 ? 0 : 32) + 8 * k + l / 2; });
  }
  return out;
}
inline constexpr std::int64_t bf16_half_split_block = 32;

/// hf_compatible bfloat16 rotation of half-split pairs [0, n) (n a multiple of 32) with the lane
/// rows `cs` = [c0 -s0 c1 -s1 ...] and `sc` = [s0 c0 s1 c1 ...]; a block with an activation below
/// 2^-79 takes `fallback` (the emulation). Each block is read before it is written and no other
/// block reads it, so in place is safe.
template <class Fallback>
inline void rotate_bf16_half_split(const std::uint16_t* src, const float* cs, const float* sc, std::int64_t n,
                                   std::int64_t half, std::uint16_t* dst, Fallback&& fallback) {
  static constexpr std::array<std::array<std::int16_t, 32>, 4> spread = bf16_half_split_spread();
  const __m512i i0 = _mm512_loadu_si512(spread[0].data());
  const __m512i i1 = _mm512_loadu_si512(spread[1].data());
  const __m512i i2 = _mm512_loadu_si512(spread[2].data());
  const __m512i i3 = _mm512_loadu_si512(spread[3].data());
  for (std::int64_t i = 0; i < n; i += bf16_half_split_block) {
    const __m512i a = _mm512_loadu_si512(src + i);
    const __m512i b = _mm512_loadu_si512(src + half + i);
    if ((bf16_tiny(a) | bf16_tiny(b)) != 0) {
      fallback(i, i + bf16_half_split_block);
      continue;
    }
    const __m512 v0 = _mm512_castsi512_ps(_mm512_maskz_permutex2var_epi16(bf16_odd_words, a, i0, b));
    const __m512 v1 = _mm512_castsi512_ps(_mm512_maskz_permutex2var_epi16(bf16_odd_words, a, i1, b));
    const __m512 v2 = _mm512_castsi512_ps(_mm512_maskz_permutex2var_epi16(bf16_odd_words, a, i2, b));
    const __m512 v3 = _mm512_castsi512_ps(_mm512_maskz_permutex2var_epi16(bf16_odd_words, a, i3, b));
    const float* c = cs + 2 * i;
    const float* s = sc + 2 * i;
    // Word pair k of each rounding: the two products of pair k (pairs 0-15, then 16-31).
    const __m512 a_lo = bf16_pair_sums(round2(v1 * _mm512_loadu_ps(c + 16), v0 * _mm512_loadu_ps(c)));
    const __m512 a_hi = bf16_pair_sums(round2(v3 * _mm512_loadu_ps(c + 48), v2 * _mm512_loadu_ps(c + 32)));
    const __m512 b_lo = bf16_pair_sums(round2(v1 * _mm512_loadu_ps(s + 16), v0 * _mm512_loadu_ps(s)));
    const __m512 b_hi = bf16_pair_sums(round2(v3 * _mm512_loadu_ps(s + 48), v2 * _mm512_loadu_ps(s + 32)));
    _mm512_storeu_si512(dst + i, round2(a_hi, a_lo));
    _mm512_storeu_si512(dst + half + i, round2(b_hi, b_lo));
  }
}

/// Interleaved blocks: 16 pairs, 32 words [a0 b0 a1 b1 ...], spread in order (float l: word l, or
/// 16 + l); the results [a'0..a'15 | b'0..b'15] are interleaved back by one permutation.
inline constexpr std::int64_t bf16_interleaved_block = 16;

/// hf_compatible bfloat16 rotation of interleaved pairs [0, n) (n a multiple of 16), as above.
template <class Fallback>
inline void rotate_bf16_interleaved(const std::uint16_t* src, const float* cs, const float* sc, std::int64_t n,
                                    std::uint16_t* dst, Fallback&& fallback) {
  static constexpr std::array<std::int16_t, 32> order = [] {
    std::array<std::int16_t, 32> out{};
    for (int p = 0; p < 16; ++p) {
      out[static_cast<std::size_t>(2 * p)] = static_cast<std::int16_t>(p);
      out[static_cast<std::size_t>(2 * p + 1)] = static_cast<std::int16_t>(16 + p);
    }
    return out;
  }();
  const __m512i i0 = _mm512_loadu_si512(bf16_spread_low.data());
  const __m512i i1 = _mm512_loadu_si512(bf16_spread_high.data());
  const __m512i out_index = _mm512_loadu_si512(order.data());
  for (std::int64_t i = 0; i < n; i += bf16_interleaved_block) {
    const __m512i x = _mm512_loadu_si512(src + 2 * i);
    if (bf16_tiny(x) != 0) {
      fallback(i, i + bf16_interleaved_block);
      continue;
    }
    const __m512 v0 = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(bf16_odd_words, i0, x));
    const __m512 v1 = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(bf16_odd_words, i1, x));
    const float* c = cs + 2 * i;
    const float* s = sc + 2 * i;
    const __m512 a = bf16_pair_sums(round2(v1 * _mm512_loadu_ps(c + 16), v0 * _mm512_loadu_ps(c)));
    const __m512 b = bf16_pair_sums(round2(v1 * _mm512_loadu_ps(s + 16), v0 * _mm512_loadu_ps(s)));
    _mm512_storeu_si512(dst + 2 * i, _mm512_permutexvar_epi16(out_index, round2(b, a)));
  }
}

// bfloat16 hf_fp32_apply and accurate: products and sums in float (float_rotation_*), then one
// rounding by vcvtne2ps2bf16, which is bf16_round unless the float it rounds is subnormal: a block
// with a subnormal result (vfpclassps) takes the emulation. Activations are spread into floats in
// order, so half-split needs no lane rows and the results come out in order.

/// Whether a result vector has a subnormal lane.
inline bool bf16_any_subnormal(__m512 x) { return _mm512_fpclass_ps_mask(x, 0x20) != 0; }

/// The floats of words 0-15 / 16-31 of w, in order.
inline __m512 bf16_low_floats(__m512i w) {
  const __m512i index = _mm512_loadu_si512(bf16_spread_low.data());
  return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(bf16_odd_words, index, w));
}
inline __m512 bf16_high_floats(__m512i w) {
  const __m512i index = _mm512_loadu_si512(bf16_spread_high.data());
  return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(bf16_odd_words, index, w));
}

/// hf_fp32_apply / accurate bfloat16 rotation of half-split pairs [0, n) (n a multiple of 32).
template <Numerics N, class Fallback>
inline void rotate_bf16_float_half_split(const std::uint16_t* src, const float* cos_row, const float* sin_row,
                                         std::int64_t n, std::int64_t half, std::uint16_t* dst, Fallback&& fallback) {
  for (std::int64_t i = 0; i < n; i += 32) {
    const __m512i a = _mm512_loadu_si512(src + i);
    const __m512i b = _mm512_loadu_si512(src + half + i);
    const __m512 a0 = bf16_low_floats(a), a1 = bf16_high_floats(a);
    const __m512 b0 = bf16_low_floats(b), b1 = bf16_high_floats(b);
    const __m512 c0 = _mm512_loadu_ps(cos_row + i), c1 = _mm512_loadu_ps(cos_row + i + 16);
    const __m512 s0 = _mm512_loadu_ps(sin_row + i), s1 = _mm512_loadu_ps(sin_row + i + 16);
    const __m512 ra0 = float_rotation_a<N>(a0, b0, c0, s0), ra1 = float_rotation_a<N>(a1, b1, c1, s1);
    const __m512 rb0 = float_rotation_b<N>(a0, b0, c0, s0), rb1 = float_rotation_b<N>(a1, b1, c1, s1);
    if (bf16_any_subnormal(ra0) || bf16_any_subnormal(ra1) || bf16_any_subnormal(rb0) || bf16_any_subnormal(rb1)) {
      fallback(i, i + 32);
      continue;
    }
    _mm512_storeu_si512(dst + i, round2(ra1, ra0));
    _mm512_storeu_si512(dst + half + i, round2(rb1, rb0));
  }
}

/// hf_fp32_apply / accurate bfloat16 rotation of interleaved pairs [0, n) (n a multiple of 16),
/// with the float16 path's lane rows (duplicated cos, then (-s, s)).
template <Numerics N, class Fallback>
inline void rotate_bf16_float_interleaved(const std::uint16_t* src, const float* cos2, const float* sin2n,
                                          std::int64_t n, std::uint16_t* dst, Fallback&& fallback) {
  for (std::int64_t i = 0; i < n; i += 16) {
    const __m512i x = _mm512_loadu_si512(src + 2 * i);
    const __m512 r0 = float_rotation_interleaved<N>(bf16_low_floats(x), cos2 + 2 * i, sin2n + 2 * i);
    const __m512 r1 = float_rotation_interleaved<N>(bf16_high_floats(x), cos2 + 2 * i + 16, sin2n + 2 * i + 16);
    if (bf16_any_subnormal(r0) || bf16_any_subnormal(r1)) {
      fallback(i, i + 16);
      continue;
    }
    _mm512_storeu_si512(dst + 2 * i, round2(r1, r0));
  }
}

template <DType A, Pairing P, Numerics N>
inline constexpr bool bf16_float_path = A == DType::bf16 && N != Numerics::hf_compatible &&
                                        (P == Pairing::half_split || P == Pairing::interleaved);

template <DType A, Pairing P, Numerics N>
inline constexpr bool bf16_path = A == DType::bf16 && N == Numerics::hf_compatible &&
                                  (P == Pairing::half_split || P == Pairing::interleaved);
#else
template <DType A, Pairing P, Numerics N>
inline constexpr bool bf16_path = false;
template <DType A, Pairing P, Numerics N>
inline constexpr bool bf16_float_path = false;
#endif

/// Entries [0, n) of the cached rows `c`, `s` rounded to R (round_act<R>), into cos_row / sin_row.
/// The F16C builds round float16 with the hardware round trip (bit-identical to f16_round for every
/// float: tests/test_large.cpp) and bfloat16 with bf16_round's integer arithmetic on vector lanes:
/// per token this replaces 2 x half scalar roundings (docs/PERFORMANCE.md, CPU variants C6, C10).
template <DType R>
inline void round_rows(const float* c, const float* s, std::int64_t n, float* cos_row, float* sin_row) {
  std::int64_t i = 0;
#if POSENC_CPU_F16C
  if constexpr (R == DType::f16) {
    for (; i + f16c_lanes <= n; i += f16c_lanes) {
      store_floats(cos_row + i, f16c_round(load_floats(c + i)));
      store_floats(sin_row + i, f16c_round(load_floats(s + i)));
    }
  } else if constexpr (R == DType::bf16) {
    // (Cached rows are cos/sin of finite angles times a finite attention factor: no NaN.)
    for (; i + f16c_lanes <= n; i += f16c_lanes) {
      store_floats(cos_row + i, bf16_round_lanes(load_floats(c + i)));
      store_floats(sin_row + i, bf16_round_lanes(load_floats(s + i)));
    }
  }
#endif
  for (; i < n; ++i) {
    cos_row[i] = detail::round_act<R>(c[i]);
    sin_row[i] = detail::round_act<R>(s[i]);
  }
}

/// One token's cos/sin row, shared by every head of Q and K. Single-stream calls use the token's
/// one position for every pair; multi-axis calls (M-RoPE, 2-D) read the token's position in each
/// stream once and give pair i the one of its stream. With a row cache the rows come from it (and
/// are rounded to the activation dtype here: the same bits as computing them, see row_cache.hpp).
template <DType A, Numerics N>
inline void cos_sin_row(const KernelCall& call, std::int64_t t, float* cos_row, float* sin_row) {
  if (call.cos_sin.present()) {  // its dtype was validated: one of the three
    if (call.cos_sin.dtype == DType::f32) {
      cos_sin_cache_row<A, N, DType::f32>(call, t, cos_row, sin_row);
    } else if (call.cos_sin.dtype == DType::bf16) {
      cos_sin_cache_row<A, N, DType::bf16>(call, t, cos_row, sin_row);
    } else {
      cos_sin_cache_row<A, N, DType::f16>(call, t, cos_row, sin_row);
    }
    if constexpr (A == DType::bf16 && N == Numerics::accurate) {
      // The cache's cos/sin stay float32 here, and a NaN among them may have low payload bits,
      // which the bfloat16 integer-lane rounding cannot take (see the kernels above): made
      // bf16_round's quiet NaN, which gives every result that meets it the same bfloat16 bits.
      for (std::int64_t i = 0; i < call.half; ++i) {
        if (std::isnan(cos_row[i])) cos_row[i] = detail::bf16_round(cos_row[i]);
        if (std::isnan(sin_row[i])) sin_row[i] = detail::bf16_round(sin_row[i]);
      }
    }
    return;
  }
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
    constexpr DType R = N == Numerics::accurate ? DType::f32 : A;
    if (call.pair_stream == nullptr) {
      round_rows<R>(c[0], s[0], call.half, cos_row, sin_row);
    } else {
      for (std::int64_t i = 0; i < call.half; ++i) {
        const std::uint8_t st = call.pair_stream[i];
        cos_row[i] = detail::round_act<R>(c[st][i]);
        sin_row[i] = detail::round_act<R>(s[st][i]);
      }
    }
    return;
  }
  if (N != Numerics::accurate && call.torch_cpu_trig) {
    torch_cpu_row<A>(call, stream_position, call.pair_stream, cos_row, sin_row);
    return;
  }
  for (std::int64_t i = 0; i < call.half; ++i) {
    const std::int64_t position = stream_position[call.pair_stream == nullptr ? 0 : call.pair_stream[i]];
    const detail::CosSin cs = pair_cos_sin<A, N>(call, call.inv_freq[i], position);
    cos_row[i] = cs.c;
    sin_row[i] = cs.s;
  }
}

/// Whether rotate_window takes per-token lane rows (the token's cos/sin rearranged for a vector path).
template <DType A, Pairing P, Numerics N>
inline constexpr bool uses_lane_rows =
    bf16_path<A, P, N> || (bf16_word_path<A, P, N> && P == Pairing::half_split) ||
    ((f16c_path<A, P, N> || f32_path<A, P, N> || bf16_float_path<A, P, N>) && P == Pairing::interleaved);

/// Builds the lane rows of one token from its cos/sin rows; returns nullptr where the vector path
/// must not run for this token (bfloat16: a cos/sin entry below 2^-40).
template <DType A, Pairing P, Numerics N>
inline const float* lane_rows(const float* cos_row, const float* sin_row, std::int64_t half, float* lanes) {
#if POSENC_CPU_BF16
  if constexpr (bf16_path<A, P, N>) {
    // [c0 -s0 c1 -s1 ...] then [s0 c0 s1 c1 ...] (rotate_bf16_*), 16 pairs at a time.
    const std::int64_t n = half - half % 16;
    if (!bf16_rows_usable(cos_row, sin_row, n)) return nullptr;
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high = _mm512_add_epi32(low, _mm512_set1_epi32(8));
    float* sc = lanes + 2 * half;
    for (std::int64_t i = 0; i < n; i += 16) {
      const __m512 c = _mm512_loadu_ps(cos_row + i);
      const __m512 s = _mm512_loadu_ps(sin_row + i);
      _mm512_storeu_ps(lanes + 2 * i, bf16_negate_odd(_mm512_permutex2var_ps(c, low, s)));
      _mm512_storeu_ps(lanes + 2 * i + 16, bf16_negate_odd(_mm512_permutex2var_ps(c, high, s)));
      _mm512_storeu_ps(sc + 2 * i, _mm512_permutex2var_ps(s, low, c));
      _mm512_storeu_ps(sc + 2 * i + 16, _mm512_permutex2var_ps(s, high, c));
    }
    return lanes;
  }
#endif
#if POSENC_CPU_F16C
  if constexpr (bf16_word_path<A, P, N> && P == Pairing::half_split) {
    // Per block of 2 x f16c_lanes pairs: the even entries, then the odd ones (cos, then sin from
    // lanes + half; rotate_bf16_words_half_split).
    constexpr std::int64_t block = 2 * f16c_lanes;
    const std::int64_t n = half - half % block;
    for (std::int64_t i = 0; i < n; i += block) {
      for (std::int64_t l = 0; l < f16c_lanes; ++l) {
        lanes[i + l] = cos_row[i + 2 * l];
        lanes[i + f16c_lanes + l] = cos_row[i + 2 * l + 1];
        lanes[half + i + l] = sin_row[i + 2 * l];
        lanes[half + i + f16c_lanes + l] = sin_row[i + 2 * l + 1];
      }
    }
    return lanes;
  }
#endif
  if constexpr ((f16c_path<A, P, N> || f32_path<A, P, N> || bf16_float_path<A, P, N>) && P == Pairing::interleaved) {
    // Each cos entry twice, then each sin entry negated and as is (rotate_f16c_interleaved).
    for (std::int64_t i = 0; i < half; ++i) {
      lanes[2 * i] = lanes[2 * i + 1] = cos_row[i];
      lanes[2 * half + 2 * i] = -sin_row[i];
      lanes[2 * half + 2 * i + 1] = sin_row[i];
    }
    return lanes;
  }
  (void)cos_row, (void)sin_row, (void)half;
  return nullptr;
}

/// Rotates pairs [begin, end) of one head's window with rope_math.hpp's arithmetic, written so the
/// compiler vectorizes it: the pairs (pair_places, a compile-time layout here) are loaded into
/// `xa`/`xb` before anything is stored, so `src` and `dst` may be the same memory.
template <DType A, Pairing P, Numerics N>
inline void rotate_pairs(const storage_t<A>* src, storage_t<A>* dst, const float* __restrict cos_row,
                         const float* __restrict sin_row, std::int64_t half, std::int64_t begin, std::int64_t end,
                         float* __restrict xa, float* __restrict xb) {
  for (std::int64_t i = begin; i < end; ++i) {
    const PairPlaces at = pair_places(P, half, i);
    xa[i] = Element<A>::widen(src[at.read_a]);
    xb[i] = Element<A>::widen(src[at.read_b]);
  }
  for (std::int64_t i = begin; i < end; ++i) {
    const detail::Pair r = detail::rotate<A, N>(xa[i], xb[i], {cos_row[i], sin_row[i]});
    const PairPlaces at = pair_places(P, half, i);
    dst[at.write_a] = Element<A>::narrow_rounded(r.a);
    dst[at.write_b] = Element<A>::narrow_rounded(r.b);
  }
}

/// Rotates the window of one head. `src` and `dst` point at the window's first element and may be
/// the same memory (in place). `lanes` are the token's lane rows (lane_rows), or nullptr.
template <DType A, Pairing P, Numerics N>
inline void rotate_window(const storage_t<A>* src, storage_t<A>* dst, const float* __restrict cos_row,
                          const float* __restrict sin_row, const float* lanes, std::int64_t half,
                          float* __restrict xa, float* __restrict xb) {
  if constexpr (P == Pairing::half_split_2d) {
    // pair_places' two half-split windows of half/2 pairs (ChatGLM-6B 2-D), each rotated as a
    // half-split window so that its loops vectorize. They are disjoint, and each is loaded before
    // it is stored, so in place stays correct.
    const std::int64_t q = half / 2;
    rotate_window<A, Pairing::half_split, N>(src, dst, cos_row, sin_row, nullptr, q, xa, xb);
    rotate_window<A, Pairing::half_split, N>(src + half, dst + half, cos_row + q, sin_row + q, nullptr, q, xa, xb);
    return;
  }
  std::int64_t first = 0;  // pairs before it were rotated by a specialised loop
#if POSENC_CPU_BF16
  if constexpr (bf16_path<A, P, N>) {
    if (lanes != nullptr) {
      // The emulation for a block with a tiny activation.
      auto fallback = [&](std::int64_t begin, std::int64_t end) {
        rotate_pairs<A, P, N>(src, dst, cos_row, sin_row, half, begin, end, xa, xb);
      };
      if constexpr (P == Pairing::interleaved) {
        first = half - half % bf16_interleaved_block;
        rotate_bf16_interleaved(src, lanes, lanes + 2 * half, first, dst, fallback);
      } else {
        first = half - half % bf16_half_split_block;
        rotate_bf16_half_split(src, lanes, lanes + 2 * half, first, half, dst, fallback);
      }
    }
  } else if constexpr (bf16_float_path<A, P, N>) {
    auto fallback = [&](std::int64_t begin, std::int64_t end) {
      rotate_pairs<A, P, N>(src, dst, cos_row, sin_row, half, begin, end, xa, xb);
    };
    if constexpr (P == Pairing::interleaved) {
      first = half - half % 16;
      rotate_bf16_float_interleaved<N>(src, lanes, lanes + 2 * half, first, dst, fallback);
    } else {
      first = half - half % 32;
      rotate_bf16_float_half_split<N>(src, cos_row, sin_row, first, half, dst, fallback);
    }
  }
#endif
#if POSENC_CPU_F16C
  if constexpr (f16c_path<A, P, N> && P == Pairing::interleaved) {
    first = half - half % (f16c_lanes / 2);
    rotate_f16c_interleaved<N>(src, lanes, lanes + 2 * half, first, dst);
  } else if constexpr (f16c_path<A, P, N>) {
    first = half - half % f16c_lanes;
    rotate_f16c_half_split<N>(src, cos_row, sin_row, first, half, dst);
  } else if constexpr (f32_path<A, P, N> && P == Pairing::interleaved) {
    first = half - half % (f16c_lanes / 2);
    rotate_f32_interleaved<N>(src, lanes, lanes + 2 * half, first, dst);
  } else if constexpr (f32_path<A, P, N>) {
    first = half - half % f16c_lanes;
    rotate_f32_half_split<N>(src, cos_row, sin_row, first, half, dst);
  } else if constexpr (bf16_word_path<A, P, N> && P == Pairing::interleaved) {
    first = half - half % f16c_lanes;
    rotate_bf16_words_interleaved<N>(src, cos_row, sin_row, first, dst);
  } else if constexpr (bf16_word_path<A, P, N>) {
    if (lanes != nullptr) {  // (half_split_2d's windows come without lane rows)
      first = half - half % (2 * f16c_lanes);
      rotate_bf16_words_half_split<N>(src, lanes, lanes + half, first, half, dst);
    }
  }
#endif
  (void)lanes;
  rotate_pairs<A, P, N>(src, dst, cos_row, sin_row, half, first, half, xa, xb);
}

/// The QK-norm stage of one head (core/qk_norm.hpp, the reference's arithmetic): elements
/// [norm_first, norm_first + norm_width) of `src` normalised with `weight` (as float), the rest
/// copied, into `normed` (a whole head of activation elements).
/// Out of line (noinline stops rotate_tokens' `flatten` from copying the norm's loops into every
/// kernel of every instruction set, which multiplied engine.cpp's compile time; one call per head
/// costs nothing next to the norm itself).
template <DType A>
[[gnu::noinline]] void normalise_head(const KernelCall& call, const storage_t<A>* src, const float* weight,
                                      storage_t<A>* normed) {
  alignas(64) float x[max_head_dim];
  alignas(64) float square[max_head_dim];
  std::memcpy(normed, src, static_cast<std::size_t>(call.head_dim) * sizeof(storage_t<A>));
  const std::int64_t n = call.norm_width;
  const storage_t<A>* in = src + call.norm_first;
  for (std::int64_t j = 0; j < n; ++j) x[j] = Element<A>::widen(in[j]);
  detail::norm_row_host<A>(call.norm, call.norm_arithmetic, x, weight, static_cast<int>(n), square);
  for (std::int64_t j = 0; j < n; ++j) normed[call.norm_first + j] = Element<A>::narrow_rounded(x[j]);
}

/// Every head of one tensor at token t. `norm_weight`: the tensor's QK-norm weights as float, or
/// nullptr (no norm stage).
template <DType A, Pairing P, Numerics N>
inline void rotate_heads(const KernelCall& call, const KernelTensor& x, std::int64_t t, const float* cos_row,
                         const float* sin_row, const float* lanes, float* xa, float* xb,
                         const float* norm_weight) {
  using S = storage_t<A>;
  alignas(64) S normed[max_head_dim];  // the QK-norm stage's head (uninitialised: no cost without it)
  const std::int64_t rotary = 2 * call.half;
  const std::int64_t tail = call.head_dim - call.offset - rotary;
  const S* src_token = static_cast<const S*>(x.src) + t * x.src_token_stride;
  S* dst_token = static_cast<S*>(x.dst) + t * x.dst_token_stride;
  // The QK-norm stage writes its normalised pass-through elements in place too.
  const bool write_pass = x.copy_pass || (norm_weight != nullptr && !call.norm.rotary_only);
  for (std::int64_t h = 0; h < x.heads; ++h) {
    const S* src = src_token + h * x.src_head_stride;
    S* dst = dst_token + h * x.dst_head_stride;
    if (norm_weight != nullptr) {
      // The head normalised into `normed` (activation dtype; rotary_only leaves the other
      // elements as they were), which the rotation and the pass-through then read.
      normalise_head<A>(call, src, norm_weight, normed);
      src = normed;
    }
    // One rotate_window per head whatever the stage: `flatten` copies it into every kernel.
    rotate_window<A, P, N>(src + call.offset, dst + call.offset, cos_row, sin_row, lanes, call.half, xa, xb);
    if (write_pass) {  // out of place (bit for bit), or normalised
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
template <DType A, Pairing P, Numerics N>
[[gnu::flatten]] void rotate_tokens(const void* context, std::int64_t begin, std::int64_t end) noexcept {
  const KernelCall& call = *static_cast<const KernelCall*>(context);
  alignas(64) float cos_row[max_half];
  alignas(64) float sin_row[max_half];
  alignas(64) float xa[max_half];
  alignas(64) float xb[max_half];
  alignas(64) float lane_storage[uses_lane_rows<A, P, N> ? 4 * max_half : 1];
  // The QK-norm weights as float, once per chunk of tokens (nullptr: no norm stage).
  alignas(64) float q_weight[max_head_dim];
  alignas(64) float k_weight[max_head_dim];
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  if (call.norm.enabled()) {
    for (std::int64_t j = 0; j < call.norm_width; ++j) {
      q_weight[j] = Element<A>::widen(static_cast<const storage_t<A>*>(call.q.norm_weight)[j]);
      if (call.has_k) k_weight[j] = Element<A>::widen(static_cast<const storage_t<A>*>(call.k.norm_weight)[j]);
    }
    q_norm = q_weight;
    k_norm = k_weight;
  }
  for (std::int64_t t = begin; t < end; ++t) {
    cos_sin_row<A, N>(call, t, cos_row, sin_row);
    const float* lanes = nullptr;
    if constexpr (uses_lane_rows<A, P, N>) lanes = lane_rows<A, P, N>(cos_row, sin_row, call.half, lane_storage);
    rotate_heads<A, P, N>(call, call.q, t, cos_row, sin_row, lanes, xa, xb, q_norm);
    if (call.has_k) rotate_heads<A, P, N>(call, call.k, t, cos_row, sin_row, lanes, xa, xb, k_norm);
  }
}

/// The kernel for a (dtype, pairing, numerics) combination; throws Error for values outside the
/// enums. The AVX512-BF16 build holds only the combinations it specialises (nullptr for the others,
/// which the AVX-512 build serves), so that its inclusion does not compile every kernel a fourth time.
inline KernelFn select_kernel(DType d, Pairing p, Numerics n) {
  return detail::visit(d, p, n, [](auto dtype, auto pairing, auto numerics) -> KernelFn {
    if constexpr (POSENC_CPU_BF16 == 0 || bf16_path<dtype.value, pairing.value, numerics.value> ||
                  bf16_float_path<dtype.value, pairing.value, numerics.value>) {
      return &rotate_tokens<dtype.value, pairing.value, numerics.value>;
    } else {
      return nullptr;
    }
  });
}

}  // namespace posenc::cpu_detail::POSENC_CPU_ISA

#ifdef POSENC_CPU_TARGET
#pragma GCC pop_options
#undef POSENC_CPU_PRAGMA
#undef POSENC_CPU_PRAGMA_TEXT
#undef POSENC_CPU_TARGET
#endif
#undef POSENC_CPU_BF16
#undef POSENC_CPU_F16C
#undef POSENC_CPU_ISA

// GPU RoPE device code: the rotation kernel (plain and fused with the KV-cache append) and its helpers (no host code).
//
// The per-element arithmetic is rope_math.hpp, shared with the CPU engine, so hf_compatible is
// bit-identical between the engines. This file only decides which thread touches which bytes.
//
// Thread mapping of rope_kernel (one launch rotates Q and K):
//   tile    = tile_tokens consecutive tokens; blocks grid-stride over tiles. The block computes
//             the tile's cos/sin once per (token, pair) into shared memory, shared by all heads.
//   row     = (token, head) of the tile; blockDim.y row groups take rows in turn, rows_in_flight_for
//             rows per thread and batch with all their loads issued before the first store.
//   lane    = threadIdx.x within the row. Lanes [0, rotary_lanes) each own V consecutive pairs of
//             the rotary window; the remaining lanes (out of place only) copy the pass-through dims.
// Memory: each element is read once and written once. A rotary lane moves two V-element vectors
// (16 bytes each in the vectorized instantiation, V = 1 in the generic one):
//   half_split           A = x[off + i .. +V],  B = x[off + H + i .. +V]   pairs (A[v], B[v])
//   interleaved          A||B = x[off + 2i .. +2V]                           pairs (e[2v], e[2v+1])
//   interleaved_to_half  read as interleaved, write A' to y[off + i ..], B' to y[off + H + i ..]
//   half_split_2d        half_split inside each half of the window
// (the lane's offsets come from pair_places, rope.hpp's one layout definition), so no lane
// re-reads its partner's data. interleaved_to_half writes other lanes' input bytes
// when in place, so its rows load, synchronize the block, then store.
#pragma once

#include <cstdint>

// vendor.hpp first: it provides the hardware conversions element.hpp uses in device code.
#include "gpu/vendor.hpp"
#include "core/rope_math.hpp"
#include "gpu/rope_params.hpp"
#include "posenc/kv_cache.hpp"
#include "posenc/rope.hpp"

#if POSENC_DEVICE_PASS && defined(POSENC_DEVICE_ROUNDING) && !POSENC_MATH_HAS_DEVICE_ROUNDING
#error "core/element.hpp was included before gpu/vendor.hpp: device code would round in software"
#endif

namespace posenc::gpu::detail {

using posenc::detail::CosSin;
using posenc::detail::Element;
using posenc::detail::Pair;
using posenc::detail::rotate;
using posenc::detail::storage_t;
using posenc::detail::vector_width;

/// N elements moved as one access (16 bytes for the vectorized width).
template <typename S, int N>
struct alignas(sizeof(S) * N) Packed {
  S v[N];
};

template <typename S, int N>
__device__ __forceinline__ Packed<S, N> load_packed(const S* p) {
  return *reinterpret_cast<const Packed<S, N>*>(p);
}

template <typename S, int N>
__device__ __forceinline__ void store_packed(S* p, const Packed<S, N>& value) {
  *reinterpret_cast<Packed<S, N>*>(p) = value;
}

template <DType A, Numerics N>
__device__ __forceinline__ CosSin cos_sin(float inv_freq, std::int64_t pos,
                                          const RopeKernelParams& p) {
  return posenc::detail::cos_sin<A, N>(inv_freq, pos, p.attention_factor, p.attention_factor_f32);
}

/// The hf numerics as torch computes them on this GPU (HfArithmetic::torch_cuda, docs/NUMERICS.md):
/// the angle is the float32 product of the frequency and the float32 position, cos and sin are
/// the vendor math library's float cosf/sinf of it (what ATen's cos/sin kernels call; no fast-math
/// in either build), then each is multiplied by the float32 attention factor and rounded to the
/// activation dtype. device_torch_sincos (vendor.hpp) gives the bits of cosf and sinf with one
/// argument reduction, and reduces large angles in registers (no local-memory array).
template <DType A>
__device__ __forceinline__ CosSin cos_sin_vendor_trig(float inv_freq, std::int64_t pos, float attention_factor) {
  const float angle = posenc::detail::mul_rn(inv_freq, static_cast<float>(pos));
  float s;
  float c;
  device_torch_sincos(angle, &s, &c);
  const Pair r = posenc::detail::round_act2<A>(posenc::detail::mul_rn(c, attention_factor),
                                               posenc::detail::mul_rn(s, attention_factor));
  return {r.a, r.b};
}

__device__ __forceinline__ std::int64_t load_position(const void* positions, bool is_i64,
                                                      std::int64_t token) {
  return is_i64 ? static_cast<const std::int64_t*>(positions)[token]
                : static_cast<const std::int32_t*>(positions)[token];
}

/// Records an out-of-range position or slot `pos` of `token` in the fault word pair at `fault`
/// (see fault_words). A plain read first keeps the atomics off the common path when many tokens
/// are bad: the words only decrease.
__device__ __forceinline__ void record_bad_value(unsigned long long* fault, std::int64_t token,
                                                 std::int64_t pos) {
  const auto index = static_cast<unsigned long long>(token);
  if (index >= *static_cast<volatile unsigned long long*>(&fault[0])) return;
  constexpr unsigned long long index_cap = 0xffffffffull;
  constexpr std::int64_t lo = -2147483647LL - 1;
  constexpr std::int64_t hi = 2147483647LL;
  const std::int64_t clamped = pos < lo ? lo : (pos > hi ? hi : pos);
  const auto biased = static_cast<unsigned long long>(static_cast<std::uint32_t>(
      static_cast<std::uint32_t>(static_cast<std::int32_t>(clamped)) ^ 0x80000000u));
  const unsigned long long key = ((index < index_cap ? index : index_cap) << 32) | biased;
  atomicMin(&fault[0], index);
  atomicMin(&fault[1], key);
}

/// Records a position outside [0, limit) of a caller's cos/sin cache at the cache's fault words
/// (rope_params.hpp fault_words: the pair of record_bad_value, then the token's limit).
__device__ __forceinline__ void record_cos_sin_fault(unsigned long long* fault, std::int64_t token,
                                                     std::int64_t pos, std::int64_t limit) {
  const auto index = static_cast<unsigned long long>(token);
  if (index >= *static_cast<volatile unsigned long long*>(&fault[0])) return;
  record_bad_value(fault, token, pos);
  constexpr unsigned long long cap = 0xffffffffull;
  const auto l = static_cast<unsigned long long>(limit);
  atomicMin(&fault[2], ((index < cap ? index : cap) << 32) | (l < cap ? l : cap));
}

/// Table entry i (= token * half + pair) of the tile starting at `first_token` from the caller's
/// cos/sin cache: elements pair and half + pair of the row of `position`. A position outside
/// [0, cos_sin_limit) never indexes the cache: it is recorded and the entry is the identity
/// rotation (cos 1, sin 0), so the token's rows are written as they were read.
template <DType A, Numerics N>
__device__ __forceinline__ CosSin cache_table_entry(const RopeKernelParams& p, std::int64_t first_token, int i,
                                                    std::int64_t position) {
  const int token = static_cast<int>(divide(static_cast<std::uint32_t>(i), p.by_half));
  if (position < 0 || position >= p.cos_sin_limit) {
    record_cos_sin_fault(p.fault + cos_sin_fault, first_token + token, position, p.cos_sin_limit);
    return {1.0f, 0.0f};
  }
  const std::int64_t at = position * p.cos_sin_row_stride + (i - token * p.half);
  const auto dtype = static_cast<DType>(p.cos_sin_dtype);
  const float c = posenc::detail::cos_sin_cache_entry(p.cos_sin, dtype, at);
  const float s = posenc::detail::cos_sin_cache_entry(p.cos_sin, dtype, at + p.half);
  return posenc::detail::cos_sin_from_cache<A, N>(c, s);
}

/// What one cos/sin table entry (token of the tile, pair) is computed from.
struct TableEntry {
  std::int64_t position = 0;
  float inv_freq = 0.0f;
};

/// Loads entry i of the tile starting at `first_token`: i = token * half + pair.
__device__ __forceinline__ TableEntry load_table_entry(const RopeKernelParams& p, std::int64_t first_token,
                                                       int i) {
  TableEntry e;
  const int token = static_cast<int>(divide(static_cast<std::uint32_t>(i), p.by_half));
  const int pair = i - token * p.half;
  // The frequency first: it does not depend on the position (it used to wait for it, behind the
  // range check's branch).
  e.inv_freq = p.inv_freq[pair];
  const std::int64_t stream = p.pair_stream != nullptr ? p.pair_stream[pair] : 0;
  e.position = load_position(p.positions, p.positions_i64 != 0, stream * p.stream_stride + first_token + token);
  return e;
}

/// Where row (token, head) of a launch is read and written.
template <typename S>
struct HeadPointers {
  /// Q rows and K rows of a plain rotation: S elements. K and V rows of an append: the cache row
  /// (bytes), written through store_cache. One pointer for both keeps four rows' worth of row
  /// state within the register budget.
  void* dst;
  const S* src;
  bool copy_pass_through;
  bool rotate;    ///< false for V rows, which are copied as they are
  bool to_cache;  ///< dst is a cache row (or a q_out row): written through store_cache
  float scale;    ///< store_cache's scale: k_scale, v_scale or q_out's (rows with to_cache)
};

/// The row pointers of head `h` (combined Q+K index) of `token`.
template <typename S>
__device__ __forceinline__ HeadPointers<S> head_pointers(const RopeKernelParams& p,
                                                         std::int64_t token, int h) {
  // Selects field by field: indexing the parameter block by a runtime choice of struct would make
  // the compiler copy it to local memory.
  const bool is_q = h < p.q_heads;
  const std::int64_t head = is_q ? h : h - p.q_heads;
  S* dst = static_cast<S*>(is_q ? p.q.dst : p.k.dst);
  const S* src = static_cast<const S*>(is_q ? p.q.src : p.k.src);
  const std::int64_t dts = is_q ? p.q.dst_token_stride : p.k.dst_token_stride;
  const std::int64_t dhs = is_q ? p.q.dst_head_stride : p.k.dst_head_stride;
  const std::int64_t sts = is_q ? p.q.src_token_stride : p.k.src_token_stride;
  const std::int64_t shs = is_q ? p.q.src_head_stride : p.k.src_head_stride;
  const bool copy = (is_q ? p.q.copy_pass_through : p.k.copy_pass_through) != 0;
  return {dst + token * dts + head * dhs, src + token * sts + head * shs, copy, true, false, 1.0f};
}

__device__ __forceinline__ int cache_element_bytes(std::int32_t dtype) {
  return static_cast<int>(size_of(static_cast<CacheDType>(dtype)));
}

/// The scale of head `head` from a per-head array (KernelCache::k_head_scales, ...), or `scale`
/// without one. A per-head scale that is not finite and > 0 is recorded (scale_fault) and makes
/// the row inactive: nothing is written for it.
__device__ __forceinline__ float head_scale(const RopeKernelParams& p, const float* scales, float scale,
                                            ScaleArray which, std::int64_t head, bool& active) {
  if (scales == nullptr) return scale;
  const float s = scales[head];
  if (!posenc::detail::fp8_scale_ok(s)) {
    record_bad_value(p.fault + scale_fault, scale_fault_index(which, head),
                     static_cast<std::int32_t>(posenc::detail::float_bits(s)));
    active = false;
  }
  return s;
}

/// Row pointers of an append launch, whose heads are [Q..., K..., V...]. A K or V row whose
/// token has slot -1 is inactive; a slot outside [0, slot_limit) is recorded and inactive, so
/// no slot value can make the kernel write outside the cache (kv_cache.hpp draws the layouts).
template <typename S>
__device__ __forceinline__ HeadPointers<S> append_row_pointers(const RopeKernelParams& p,
                                                               std::int64_t token, int h,
                                                               bool& active) {
  const KernelCache& c = p.cache;
  if (h < p.q_heads) {
    if (c.q_out == nullptr) return head_pointers<S>(p, token, h);
    // q_out: the row read from Q (launched in place) and written whole, quantized as the cache is.
    unsigned char* row = static_cast<unsigned char*>(c.q_out) +
                         (token * c.q_out_token_stride + h * c.q_out_head_stride) * cache_element_bytes(c.dtype);
    const float scale = head_scale(p, c.q_head_scales, c.q_scale, ScaleArray::q_out, h, active);
    return {row, static_cast<const S*>(p.q.src) + token * p.q.src_token_stride + h * p.q.src_head_stride, true, true,
            true, scale};
  }
  const bool is_k = h < p.q_heads + c.kv_heads;
  const std::int64_t head = h - p.q_heads - (is_k ? 0 : c.kv_heads);
  const std::int64_t slot = c.slots[token];
  if (slot < 0 || slot >= c.slot_limit) {
    if (slot != -1) record_bad_value(p.fault + slot_fault, token, slot);
    active = false;
    return HeadPointers<S>{nullptr, nullptr, false, false, false, 1.0f};
  }
  std::int64_t element;  // of the row's first element in the cache tensor
  if (c.latent_dim != 0) {
    // mla: [latent | k_pe] per slot; V row `head` is the latent's head-th piece of head_dim.
    element = slot * (c.latent_dim + c.head_dim) + (is_k ? c.latent_dim : head * c.head_dim);
  } else if (c.head_major != 0) {
    const std::int64_t block = slot / c.block_len;
    element = ((block * c.kv_heads + head) * c.block_len + (slot - block * c.block_len)) * c.head_dim;
  } else {
    element = (slot * c.kv_heads + head) * c.head_dim;
  }
  const std::int64_t offset = element * cache_element_bytes(c.dtype);
  const S* src = is_k ? static_cast<const S*>(p.k.src) + token * p.k.src_token_stride + head * p.k.src_head_stride
                      : static_cast<const S*>(c.v_src) + token * c.v_token_stride + head * c.v_head_stride;
  unsigned char* cache = static_cast<unsigned char*>(is_k ? c.k : c.v) + offset;
  const float scale = is_k ? head_scale(p, c.k_head_scales, c.k_scale, ScaleArray::k, head, active)
                           : head_scale(p, c.v_head_scales, c.v_scale, ScaleArray::v, head, active);
  return {cache, src, true, is_k, true, scale};
}

/// Stores V consecutive values encoded as cache dtype C (element.hpp: CacheElement), in accesses of
/// at most 16 bytes.
template <CacheDType C, int V>
__device__ __forceinline__ void store_converted(unsigned char* row, int offset, const float (&f)[V], float scale) {
  using Out = typename posenc::detail::CacheElement<C>::Storage;
  Out* dst = reinterpret_cast<Out*>(row) + offset;
  constexpr int chunk = V * static_cast<int>(sizeof(Out)) > 16 ? 16 / static_cast<int>(sizeof(Out)) : V;
#pragma unroll
  for (int c = 0; c < V; c += chunk) {
    Packed<Out, chunk> out;
#pragma unroll
    for (int i = 0; i < chunk; ++i) out.v[i] = posenc::detail::CacheElement<C>::encode(f[c + i], scale);
    store_packed<Out, chunk>(dst + c, out);
  }
}

/// store_cache's casting path, out of line: it needs a dozen registers for the conversion, and
/// inlined into rope_kernel's row loop those would be held across the whole loop, costing the
/// append kernels a resident block per SM. A cache of the activation dtype, the common case, never
/// calls it.
template <DType A, int V>
__device__ __noinline__ void store_cache_cast(unsigned char* row, int offset, Packed<storage_t<A>, V> x,
                                              std::int32_t dtype, float scale) {
  float f[V];
#pragma unroll
  for (int v = 0; v < V; ++v) f[v] = Element<A>::widen(x.v[v]);
  if (dtype == static_cast<std::int32_t>(CacheDType::f32)) {
    store_converted<CacheDType::f32, V>(row, offset, f, scale);
  } else if (dtype == static_cast<std::int32_t>(CacheDType::f16)) {
    store_converted<CacheDType::f16, V>(row, offset, f, scale);
  } else if (dtype == static_cast<std::int32_t>(CacheDType::bf16)) {
    store_converted<CacheDType::bf16, V>(row, offset, f, scale);
  } else if (dtype == static_cast<std::int32_t>(CacheDType::fp8_e4m3)) {
    store_converted<CacheDType::fp8_e4m3, V>(row, offset, f, scale);
  }
}

/// Writes V activation elements at element `offset` of a cache row, cast as kv_cache.hpp says
/// (exactly write_row of the CPU path: a cache of the activation dtype receives the bits).
template <DType A, int V>
__device__ __forceinline__ void store_cache(unsigned char* row, int offset,
                                            const Packed<storage_t<A>, V>& x, std::int32_t dtype,
                                            float scale) {
  using S = storage_t<A>;
  constexpr CacheDType same = cache_dtype_of(A);
  if (dtype == static_cast<std::int32_t>(same)) {
    store_packed<S, V>(reinterpret_cast<S*>(row) + offset, x);
  } else {
    store_cache_cast<A, V>(row, offset, x, dtype, scale);
  }
}

/// Rotates Q and K. A = activation dtype, P = pairing, N = numerics, V = pairs per lane (and
/// elements per access): vector_width<A> when the launcher proved 16-byte alignment, else 1.
#if defined(POSENC_DEVICE_PACKED_ROTATION)
inline constexpr bool has_packed_rotation = true;
#else
inline constexpr bool has_packed_rotation = false;
#endif

/// Element e of the concatenation x||y of two V-element vectors, as 32-bit word w (elements 2w, 2w+1).
template <typename S, int V>
__device__ __forceinline__ std::uint32_t word_of(const Packed<S, V>& x, const Packed<S, V>& y, int w) {
  const Packed<S, V>& src = 2 * w < V ? x : y;
  const int i = 2 * w < V ? 2 * w : 2 * w - V;
  return static_cast<std::uint32_t>(src.v[i]) | (static_cast<std::uint32_t>(src.v[i + 1]) << 16);
}

template <typename S, int V>
__device__ __forceinline__ void set_word(Packed<S, V>& x, Packed<S, V>& y, int w, std::uint32_t value) {
  Packed<S, V>& dst = 2 * w < V ? x : y;
  const int i = 2 * w < V ? 2 * w : 2 * w - V;
  dst.v[i] = static_cast<S>(value & 0xffffu);
  dst.v[i + 1] = static_cast<S>(value >> 16);
}

/// Rotates the V pairs of one row that a lane holds in (va, vb) by the lane's V cos/sin entries
/// `cs`, into (ra, rb) laid out as they were read (or de-interleaved, interleaved_to_half).
/// hf_compatible on 16-bit data rotates two pairs per instruction where the vendor allows it.
template <DType A, Pairing P, Numerics N, int V>
__device__ __forceinline__ void rotate_vectors(const Packed<storage_t<A>, V>& va, const Packed<storage_t<A>, V>& vb,
                                               const CosSin* cs, Packed<storage_t<A>, V>& ra,
                                               Packed<storage_t<A>, V>& rb) {
  using S = storage_t<A>;
  constexpr bool packed = has_packed_rotation && N == Numerics::hf_compatible && A != DType::f32 && V % 2 == 0;
  if constexpr (packed) {
    // Two pairs per step in native 16-bit arithmetic (vendor.hpp: same bits as rotate_hf).
    // A word holds elements (2w, 2w+1); pairs (2q, 2q+1) need a's in one word, b's in another.
#pragma unroll
    for (int q = 0; q < V / 2; ++q) {
      std::uint32_t aw;
      std::uint32_t bw;
      if constexpr (P == Pairing::half_split || P == Pairing::half_split_2d) {
        aw = word_of<S, V>(va, va, q);
        bw = word_of<S, V>(vb, vb, q);
      } else {
        const std::uint32_t w0 = word_of<S, V>(va, vb, 2 * q);      // a_2q, b_2q
        const std::uint32_t w1 = word_of<S, V>(va, vb, 2 * q + 1);  // a_2q+1, b_2q+1
        aw = __byte_perm(w0, w1, 0x5410);
        bw = __byte_perm(w0, w1, 0x7632);
      }
      const std::uint32_t cw = device_pack2<A == DType::bf16>(cs[2 * q].c, cs[2 * q + 1].c);
      const std::uint32_t sw = device_pack2<A == DType::bf16>(cs[2 * q].s, cs[2 * q + 1].s);
      std::uint32_t ao;
      std::uint32_t bo;
      device_rotate_hf_x2<A == DType::bf16>(aw, bw, cw, sw, ao, bo);
      if constexpr (P == Pairing::interleaved) {
        set_word<S, V>(ra, rb, 2 * q, __byte_perm(ao, bo, 0x5410));
        set_word<S, V>(ra, rb, 2 * q + 1, __byte_perm(ao, bo, 0x7632));
      } else {
        set_word<S, V>(ra, ra, q, ao);
        set_word<S, V>(rb, rb, q, bo);
      }
    }
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float a;
      float b2;
      if constexpr (P == Pairing::half_split || P == Pairing::half_split_2d) {
        a = Element<A>::widen(va.v[v]);
        b2 = Element<A>::widen(vb.v[v]);
      } else {
        // Pair v is elements 2v, 2v+1 of the concatenation va||vb.
        const int e = 2 * v;
        a = Element<A>::widen(e < V ? va.v[e] : vb.v[e - V]);
        b2 = Element<A>::widen(e + 1 < V ? va.v[e + 1] : vb.v[e + 1 - V]);
      }
      const Pair r = rotate<A, N>(a, b2, cs[v]);
      if constexpr (P == Pairing::interleaved) {
        const int e = 2 * v;
        (e < V ? ra.v[e] : rb.v[e - V]) = Element<A>::narrow_rounded(r.a);
        (e + 1 < V ? ra.v[e + 1] : rb.v[e + 1 - V]) = Element<A>::narrow_rounded(r.b);
      } else {
        ra.v[v] = Element<A>::narrow_rounded(r.a);
        rb.v[v] = Element<A>::narrow_rounded(r.b);
      }
    }
  }
}

/// Blocks of vector_block_threads per SM the launch bounds ask of an instantiation (each thread
/// then gets at most 65536 / (blocks * 256) registers): five for the vectorized rotations of
/// float32 and of hf_compatible on 16-bit data (packed native arithmetic, the fewest registers);
/// four for accurate and hf_fp32_apply on 16-bit data, which take every element through float32,
/// and for the appends (cache row addressing and the casts). A cap below a kernel's need makes it
/// spill inside the row loop, which costs more than the extra block gains (docs/PERFORMANCE.md,
/// variant 14). The generic (V = 1) kernels are not capped.
template <DType A, Numerics N, int V, bool Append>
inline constexpr int min_blocks =
    V == 1 ? 1 : (!Append && (A == DType::f32 || N == Numerics::hf_compatible) ? 5 : 4);

/// Rotates Q and K. A = activation dtype, P = pairing, N = numerics, V = pairs per lane (and
/// elements per access): vector_width<A> when the launcher proved 16-byte alignment, else 1.
/// Append: the fused RoPE + KV-cache append; the rows are [Q..., K..., V...] and K/V rows go to
/// the cache (append_row_pointers, store_cache).
///
/// Per tile: the loads of the first batch of rows are issued, then the block computes the tile's
/// cos/sin table cooperatively (each (token, pair) once, spread over all threads, overlapping the
/// loads' latency), synchronizes, and every row reads its lane's V entries from the table.
template <DType A, Pairing P, Numerics N, int V, bool Append>
__global__ void __launch_bounds__(V == 1 ? max_block_threads : vector_block_threads, (min_blocks<A, N, V, Append>))
    rope_kernel(const RopeKernelParams p) {
  using S = storage_t<A>;
  using Vec = Packed<S, V>;
  constexpr bool deinterleave = P == Pairing::interleaved_to_half;
  constexpr int U = rows_in_flight_for(V > 1);
  extern __shared__ unsigned char tile_bytes[];
  static_assert(sizeof(CosSin) == table_entry_bytes);
  CosSin* const table = reinterpret_cast<CosSin*>(tile_bytes);

  const int lane = static_cast<int>(threadIdx.x);
  const bool rotary_lane = lane < p.rotary_lanes;
  const int row_group = static_cast<int>(threadIdx.y);  // the block's rows in flight: blockDim.y groups of lanes
  const int row_groups = static_cast<int>(blockDim.y);
  const int tid = row_group * static_cast<int>(blockDim.x) + lane;
  const int threads = row_groups * static_cast<int>(blockDim.x);

  // Where this lane's two vectors live inside a head (element offsets). A rotary lane moves pairs
  // [lane * V, lane * V + V).
  int in_a = 0;
  int in_b = 0;
  int out_a = 0;
  int out_b = 0;
  if (rotary_lane) {
    // pair_places of the lane's first pair (rope.hpp, the one layout definition); a layout that
    // keeps a pair's two elements adjacent holds the lane's 2V elements as two consecutive vectors.
    constexpr bool adjacent_reads = pair_places(P, 8, 0).read_b == 1;
    constexpr bool adjacent_writes = pair_places(P, 8, 0).write_b == 1;
    const PairPlaces first = pair_places(P, p.half, lane * V);
    in_a = p.rotary_offset + static_cast<int>(first.read_a);
    in_b = adjacent_reads ? in_a + V : p.rotary_offset + static_cast<int>(first.read_b);
    out_a = p.rotary_offset + static_cast<int>(first.write_a);
    out_b = adjacent_writes ? out_a + V : p.rotary_offset + static_cast<int>(first.write_b);
  } else {
    // Pass-through lane: one vector of the dims outside [off, off + R), which are V-aligned.
    const int j = (lane - p.rotary_lanes) * V;
    in_a = j < p.rotary_offset ? j : j + p.rotary_dim;
    out_a = in_a;
  }

  // gridDim.y blocks share a tile's rows (decode: one row per thread); each computes the table.
  const auto splits = static_cast<std::uint32_t>(gridDim.y);
  const auto split = static_cast<std::uint32_t>(blockIdx.y);
  // Row index of batch b, row u of this thread: neighbouring row groups take neighbouring rows (of
  // this split). Unsigned: it may pass INT_MAX for the last batch of a tile of ~2^31 rows.
  auto row_index = [&](int b, int u) {
    return ((static_cast<std::uint32_t>(b * U + u) * static_cast<std::uint32_t>(row_groups) +
             static_cast<std::uint32_t>(row_group)) * splits) + split;
  };

  // Loop bounds depend only on the tile, so every barrier below is reached by the whole block.
  for (std::int64_t tile = blockIdx.x; tile < p.tiles; tile += gridDim.x) {
    const std::int64_t first_token = tile * p.tile_tokens;
    const std::int64_t left = p.tokens - first_token;
    const int tile_count = left < p.tile_tokens ? static_cast<int>(left) : p.tile_tokens;
    const auto rows = static_cast<std::uint32_t>(tile_count * p.total_heads);  // >= 1
    const int batches = static_cast<int>(divide(rows - 1, p.by_batch)) + 1;

    // The position and frequency of this thread's first cos/sin entry, loaded before the rows:
    // position -> sincos -> barrier is the longest chain of a small call (decode), so its load
    // goes out first and the row loads overlap it.
    const int entries = tile_count * p.half;
    TableEntry entry;
    if (tid < entries) entry = load_table_entry(p, first_token, tid);

    for (int b = 0; b < batches; ++b) {
      HeadPointers<S> hp[U];
      Vec va[U];
      Vec vb[U];
      int row_token[U];
      bool active[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const std::uint32_t r = row_index(b, u);
        active[u] = r < rows;
        row_token[u] = 0;
        hp[u] = HeadPointers<S>{nullptr, nullptr, false, true, false, 1.0f};
        if (active[u]) {
          const int t = static_cast<int>(divide(r, p.by_heads));
          row_token[u] = t;
          if constexpr (Append) {
            hp[u] = append_row_pointers<S>(p, first_token + t, static_cast<int>(r) - t * p.total_heads, active[u]);
          } else {
            hp[u] = head_pointers<S>(p, first_token + t, static_cast<int>(r) - t * p.total_heads);
          }
        }
        if (active[u]) {
          if (rotary_lane) {
            va[u] = load_packed<S, V>(hp[u].src + in_a);
            vb[u] = load_packed<S, V>(hp[u].src + in_b);
          } else if (hp[u].copy_pass_through) {
            va[u] = load_packed<S, V>(hp[u].src + in_a);
          }
        }
      }
      // The next batch's rows into L2 while this one computes and stores: their loads cannot be
      // issued before this batch's stores (they may alias, as far as the compiler knows), and a
      // prefetch holds no register, so they then wait for L2 rather than DRAM. float32 does
      // without: it moves twice the bytes per instruction, is at the copy floor already, and the
      // prefetch slowed it (docs/PERFORMANCE.md, variant 8).
      if (A != DType::f32 && rotary_lane && b + 1 < batches) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const std::uint32_t r = row_index(b + 1, u);
          if (r >= rows) break;
          const int t = static_cast<int>(divide(r, p.by_heads));
          const int h = static_cast<int>(r) - t * p.total_heads;
          const S* src;
          if constexpr (Append) {
            const bool v_row = h >= p.q_heads + p.cache.kv_heads;
            src = v_row ? static_cast<const S*>(p.cache.v_src) + (first_token + t) * p.cache.v_token_stride +
                              (h - p.q_heads - p.cache.kv_heads) * p.cache.v_head_stride
                        : head_pointers<S>(p, first_token + t, h).src;
          } else {
            src = head_pointers<S>(p, first_token + t, h).src;
          }
          device_prefetch_l2(src + in_a);
          device_prefetch_l2(src + in_b);
        }
      }
      if (b == 0) {
        if (tile != static_cast<std::int64_t>(blockIdx.x)) {
          __syncthreads();  // the previous tile's rows are done reading the table
        }
        // The tile's cos/sin, each (token, pair) once. The angle comes from the position value
        // itself (no table indexed by position), so any position is memory-safe. Each entry's
        // loads are issued before the previous entry's sincos. A caller's cos/sin cache replaces
        // the angle by its row, indexed only by positions inside it. The branch is taken once per
        // tile rather than per entry: inside the loop it costs the 16-bit float32-rotation kernels
        // registers, as two loops it costs none.
        // The vendor-trig branch (hf numerics reproducing torch on this GPU) is a third such loop.
        auto fill_table = [&](auto entry_value) {
          for (int i = tid; i < entries; i += threads) {
            const TableEntry e = entry;
            if (i + threads < entries) entry = load_table_entry(p, first_token, i + threads);
            table[i] = entry_value(i, e);
          }
        };
        auto check_position = [&](int i, std::int64_t position) {
          if (position < 0 || position >= p.position_limit) {
            const auto t = static_cast<std::int64_t>(divide(static_cast<std::uint32_t>(i), p.by_half));
            record_bad_value(p.fault + position_fault, first_token + t, position);
          }
        };
        if (p.cos_sin != nullptr) {
          fill_table([&](int i, const TableEntry& e) { return cache_table_entry<A, N>(p, first_token, i, e.position); });
        } else if (N != Numerics::accurate && p.vendor_trig != 0) {
          fill_table([&](int i, const TableEntry& e) {
            check_position(i, e.position);
            return cos_sin_vendor_trig<A>(e.inv_freq, e.position, p.attention_factor_f32);
          });
        } else {
          fill_table([&](int i, const TableEntry& e) {
            check_position(i, e.position);
            return cos_sin<A, N>(e.inv_freq, e.position, p);
          });
        }
        __syncthreads();  // also orders every load above before any store below (deinterleave)
      } else if constexpr (deinterleave) {
        __syncthreads();  // in place, this batch's stores overwrite other lanes' inputs
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (!active[u]) continue;
        if (!rotary_lane) {
          if (!hp[u].copy_pass_through) continue;
          if constexpr (Append) {
            if (hp[u].to_cache) {
              store_cache<A, V>(static_cast<unsigned char*>(hp[u].dst), out_a, va[u], p.cache.dtype, hp[u].scale);
              continue;
            }
          }
          store_packed<S, V>(static_cast<S*>(hp[u].dst) + out_a, va[u]);
          continue;
        }
        const CosSin* cs = table + row_token[u] * p.half + lane * V;
        Vec ra;
        Vec rb;
        if (!hp[u].rotate) {
          // A V row of an append: copied to the cache where it was read.
          if constexpr (Append) {
            unsigned char* row = static_cast<unsigned char*>(hp[u].dst);
            store_cache<A, V>(row, in_a, va[u], p.cache.dtype, hp[u].scale);
            store_cache<A, V>(row, in_b, vb[u], p.cache.dtype, hp[u].scale);
          }
          continue;
        }
        rotate_vectors<A, P, N, V>(va[u], vb[u], cs, ra, rb);
        if constexpr (Append) {
          if (hp[u].to_cache) {
            unsigned char* row = static_cast<unsigned char*>(hp[u].dst);
            store_cache<A, V>(row, out_a, ra, p.cache.dtype, hp[u].scale);
            store_cache<A, V>(row, out_b, rb, p.cache.dtype, hp[u].scale);
            continue;
          }
        }
        store_packed<S, V>(static_cast<S*>(hp[u].dst) + out_a, ra);
        store_packed<S, V>(static_cast<S*>(hp[u].dst) + out_b, rb);
      }
    }
  }
}

}  // namespace posenc::gpu::detail

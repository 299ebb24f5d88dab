// GPU device code of the QK-norm + RoPE kernel (RopeSpec::qk_norm): per-head RMSNorm, rotation and (append) the cache write in one launch (no host code).
//
// Thread mapping: one block per token (grid-stride over tokens; in a small call gridDim.y blocks
// share a token, each taking every gridDim.y-th group of rows). The block first computes the
// token's cos/sin (one entry per pair, shared by all its heads) into shared memory, then each warp
// takes rows (heads) in turn over [Q heads..., K heads...] (appends: [Q..., K..., V...]):
//   1. the warp loads the head into its shared row as floats (coalesced);
//   2. the mean of squares in torch's CUDA order (core/qk_norm.hpp): lane j computes the partial
//      of torch lanes j, j + 32, ...; the halving tree over torch's lanes runs in shared memory,
//      level by level, so every addition is the one torch makes. The exact arithmetic sums in
//      double in index order on one lane (the CPU's order);
//   3. every lane normalises its elements (the weight step of norm_weighted) in place;
//   4. lanes rotate pairs i = lane, lane + 32, ... from the normalised row (pair_places) and write
//      them, with the pass-through elements, to Q or to the cache row.
// The rows stay in shared memory between the steps, so each element is read once from global
// memory and written once.
//
// The common shape takes a second path with no row in shared memory (norm_tokens_in_registers, when
// launch_shape.hpp norm_uses_registers holds: Qwen3's whole-head norm and rotation at head_dim 128 or
// 256, torch's 32-lane reduction, aligned rows): each lane holds the four-element vectors torch's
// lane reads, torch's reduction tree is a butterfly of shuffles, the half_split partner a shuffle,
// hf_compatible 16-bit rows are weighted and rotated two elements per instruction, a plain
// rotation's row addresses are 32-bit multiply-adds, and the next row's loads go out before the
// current row is computed. That path walks its block's tokens
// itself, so that a warp's next row may be the first row of the block's next token: those loads
// are in flight across the barrier and the next token's table (norm_tokens_in_registers says how).
// Both paths make the same additions and roundings (test_gpu_qk_norm compares them bit for bit).
#pragma once

#include <cstdint>

#include "gpu/rope_kernels.cuh"  // first: it includes vendor.hpp before element.hpp
#include "core/qk_norm.hpp"

namespace posenc::gpu::detail {

/// The mean of squares of x[0..n) as the norm's arithmetic computes it, spread over the warp;
/// every lane returns it. `partial` is the warp's scratch.
__device__ __forceinline__ float norm_mean_square(const KernelNorm& norm, bool is_q, const float* x, int n,
                                                  float* partial, int lane) {
  if (norm.torch_cuda == 0) {
    if (lane == 0) partial[0] = posenc::detail::exact_mean_square(x, n);
    device_sync_warp();
    const float mean = partial[0];
    device_sync_warp();
    return mean;
  }
  posenc::detail::TorchCudaReduceShape shape;
  shape.lanes = is_q ? norm.q_lanes : norm.k_lanes;
  shape.vectorized = norm.vectorized_sum != 0;
  for (int l = lane; l < shape.lanes; l += 32) partial[l] = posenc::detail::torch_cuda_lane_sum(x, n, shape, l);
  for (int o = shape.lanes / 2; o > 0; o /= 2) {
    device_sync_warp();
    for (int l = lane; l < o; l += 32) partial[l] = posenc::detail::add_rn(partial[l], partial[l + o]);
  }
  device_sync_warp();
  const float sum = partial[0];
  device_sync_warp();
  return posenc::detail::mul_rn(sum, is_q ? norm.q_factor : norm.k_factor);
}

/// Entry i (pair i) of `token`'s cos/sin: from the caller's cos/sin cache, or from the frequency and
/// position (an out-of-range position recorded). Both paths' tables. (load_table_entry's index is
/// token * half + pair; here a tile of one token starting at `token`.)
template <DType A, Numerics N>
__device__ __forceinline__ CosSin norm_table_entry(const RopeKernelParams& p, std::int64_t token, int i) {
  const TableEntry e = load_table_entry(p, token, i);
  if (p.cos_sin != nullptr) return cache_table_entry<A, N>(p, token, i, e.position);
  if (e.position < 0 || e.position >= p.position_limit) record_bad_value(p.fault + position_fault, token, e.position);
  return N != Numerics::accurate && p.vendor_trig != 0
             ? cos_sin_vendor_trig<A>(e.inv_freq, e.position, p.attention_factor_f32)
             : cos_sin<A, N>(e.inv_freq, e.position, p);
}

/// Groups of 128 elements a lane's row registers cover (head_dim 128 or 256).
inline constexpr int register_groups_max = 2;

/// The register path's table has head_dim / 2 <= 64 * register_groups_max entries: one a thread.
static_assert(64 * register_groups_max <= norm_block_threads);

/// A block's rows held in registers (KernelNorm::register_rows): the common shape, where torch's
/// CUDA reduction has 32 lanes reading 4-float vectors and the norm and the rotation cover the whole
/// head (head_dim 128 or 256, half_split or interleaved pairs, aligned rows). Lane l holds elements
/// 128 g + 4 l + k (g < head_dim / 128, k < 4): exactly the vectors torch's lane l reads, so its
/// partial sum and a shuffle-down tree make torch's additions in torch's order (the shared-memory
/// path's arithmetic, without shared memory). A half_split partner is 64 elements away at head_dim
/// 128 (lane ^ 16, a shuffle) and 128 away at 256 (the lane's other group). 16-bit rows of head_dim
/// 128 are held by half-warps instead: lane l of a half holds torch's lanes l and l + 16, elements
/// 64 g + 4 l + k, as a head_dim-256 row's lane holds its two groups.
///
/// The block walks its tokens (blockIdx.x, + gridDim.x, ...); of each, the warp takes rows
/// `first_row`, `first_row + row_stride`, ... (in warps; a warp of half-warp rows takes rows 2 f and
/// 2 f + 1 for each f of these) ... Each row's loads are issued before the previous row
/// is computed, and the row after a token's last is the first of the block's next token: its loads
/// (and an append's slot load before them) go out before that token's barrier and table, so a warp
/// keeps a row in flight while the block waits for the table. The table is double-buffered
/// (`tables`: two of half entries): token t's is written while slower warps may still read token
/// t - 1's, and the one barrier per token (table written) also orders the reuse of a buffer, since
/// every thread passes it only after its rows of token t - 1, the last readers of buffer (t + 1) % 2.
/// Thread i < half computes entry i of every table. (Loading token t + 1's position during token
/// t's rows would hold it in registers across the row loop, a few more than the launch bounds
/// leave; the rows in flight already cover the table's latency.)
/// G: head_dim / 128. Kind: the norm form as a template argument, so that a row issues only its own
/// form's roundings (as a run-time value the compiler predicates both forms for every element), or
/// QkNormKind::none to read it at run time (the appends and float32: with two inlined copies ptxas
/// spilled 64 bytes in most appends and 16 in float32's head_dim-128 kernels; float32's forms differ
/// by a multiply, not by roundings).
template <DType A, Numerics N, bool Append, int G, QkNormKind Kind>
__device__ __forceinline__ void norm_tokens_in_registers(const NormKernelParams& params, CosSin* tables,
                                                         int first_row, int row_stride, int lane) {
  static_assert(G >= 1 && G <= register_groups_max);
  using S = storage_t<A>;
  using Vec = Packed<S, 4>;
  // Rows and weights are held as the 32-bit words they are loaded into and unpacked to elements
  // only where they are used: held as elements, 16-bit data is split into a register per element
  // right after its load, so the warp waits for the load there (the next row's loads were not in
  // flight while the current row computed) and holds twice the registers.
  constexpr int W = static_cast<int>(sizeof(Vec) / sizeof(std::uint32_t));
  using Words = Packed<std::uint32_t, W>;
  static_assert(sizeof(Words) == sizeof(Vec) && alignof(Words) == alignof(Vec));
  auto load_words = [](const S* at) { return load_packed<std::uint32_t, W>(reinterpret_cast<const std::uint32_t*>(at)); };
  auto elements = [](const Words& w) { return __builtin_bit_cast(Vec, w); };
  const RopeKernelParams& p = params.rope;
  const KernelNorm& norm = params.norm;
  const QkNormKind kind = Kind == QkNormKind::none ? static_cast<QkNormKind>(norm.kind) : Kind;
  const bool interleaved = static_cast<Pairing>(norm.pairing) == Pairing::interleaved;
  // A 16-bit row of head_dim 128 is held by a half-warp: lane l of a half holds torch's lanes l and
  // l + 16 (elements 4 l + k and 64 + 4 l + k), so torch's first reduction step and every half_split
  // partner are in the lane, and each warp instruction serves two rows. float32 rows (twice the
  // registers) and head_dim 256 take the whole warp.
  constexpr bool half_warp = norm_rows_per_warp(true, sizeof(S), 128 * G) == 2;  // (the grid's rows too)
  constexpr int NG = half_warp ? 2 : G;     // groups of four elements a lane holds
  constexpr int GS = half_warp ? 64 : 128;  // elements from a lane's group to its next
  constexpr int R = half_warp ? 2 : 1;      // rows a warp holds at once
  const int sub = half_warp ? lane % 16 : lane;   // the lane within its row
  const int row_in_warp = half_warp ? lane / 16 : 0;
  const int base = 4 * sub;  // element of (group 0, k = 0)
  // hf_compatible 16-bit rows take the weight step and the rotation two elements per instruction
  // where the vendor has them (vendor.hpp, as the rotation kernel's rotate_vectors).
  constexpr bool packed = has_packed_rotation && N == Numerics::hf_compatible && A != DType::f32;
  // This lane's weights of Q's norm and of K's (absent in a Q-only call), loaded once per block and
  // held as stored (half the registers of floats at 16 bits; widening is exact), widened at use.
  Words wq[NG] = {};
  Words wk[NG] = {};
  const S* const q_weight = static_cast<const S*>(norm.q_weight);
  const S* const k_weight = static_cast<const S*>(norm.k_weight);
#pragma unroll
  for (int g = 0; g < NG; ++g) {
    wq[g] = load_words(q_weight + GS * g + base);
    if (k_weight != nullptr) wk[g] = load_words(k_weight + GS * g + base);
  }

  // A plain rotation addresses its rows from the warp's copy of KernelNorm::rows in shared memory
  // (after the block's two tables): one shared load of Q's or K's bases and 32-bit byte strides and
  // two 32 x 32 -> 64-bit multiply-adds a pointer, where head_pointers selects eight 64-bit
  // parameters and multiplies in 64 bits (about 70 instructions a row, 40 % of it, before).
  RegisterRowAddress* const addresses =
      reinterpret_cast<RegisterRowAddress*>(tables + 2 * p.half) + 2 * (static_cast<int>(threadIdx.x) / 32);
  if constexpr (!Append) {
    if (lane < 2) addresses[lane] = lane == 0 ? norm.rows[0] : norm.rows[1];
    device_sync_warp();
  }
  // Token indices: 32-bit in a plain rotation (fewer than 2^31 tokens there, NormPathInput::
  // narrow_rows), so that the loop's arithmetic and a row's address multiply are 32-bit.
  using Token = std::conditional_t<Append, std::int64_t, std::int32_t>;
  auto load = [&](Token token, int h, HeadPointers<S>& hp, bool& active, Words (&x)[NG]) {
    active = h < p.total_heads;  // (a half-warp's second row may lie past the last)
    if (!active) return;
    if constexpr (Append) {
      hp = append_row_pointers<S>(p, token, h, active);
      if (!active) return;
    } else {
      const bool is_q = h < p.q_heads;
      const RegisterRowAddress a = addresses[is_q ? 0 : 1];
      const std::int32_t head = is_q ? h : h - p.q_heads;
      hp.src = reinterpret_cast<const S*>(static_cast<const unsigned char*>(a.src) +
                                          std::int64_t{token} * a.src_token_bytes + std::int64_t{head} * a.src_head_bytes);
      hp.dst = static_cast<unsigned char*>(a.dst) + std::int64_t{token} * a.dst_token_bytes +
               std::int64_t{head} * a.dst_head_bytes;
      device_assume_global(hp.src);
      hp.copy_pass_through = false;  // the whole head is written
      hp.rotate = true;
      hp.to_cache = false;
      hp.scale = 1.0f;
    }
#pragma unroll
    for (int g = 0; g < NG; ++g) x[g] = load_words(hp.src + GS * g + base);
  };
  auto store = [&](const HeadPointers<S>& hp, int g, const Vec& out) {
    if (Append && hp.to_cache) {
      store_cache<A, 4>(static_cast<unsigned char*>(hp.dst), GS * g + base, out, p.cache.dtype, hp.scale);
    } else {
      if constexpr (!Append) device_assume_global(hp.dst);  // (read from shared memory, see load)
      store_packed<S, 4>(static_cast<S*>(hp.dst) + GS * g + base, out);
    }
  };

  const Token tokens = static_cast<Token>(p.tokens);
  const Token token_stride = static_cast<Token>(gridDim.x);
  const int entry = static_cast<int>(threadIdx.x);  // of every table, on threads < half
  Token token = static_cast<Token>(blockIdx.x);
  // Rows in warp steps: the warp's first row and its stride (R rows a warp, the lane's the
  // row_in_warp-th of them).
  const int warp_first = first_row * R;
  const int warp_stride = row_stride * R;
  HeadPointers<S> next{};
  bool next_active = false;
  Words next_x[NG] = {};
  if (warp_first < p.total_heads && token < tokens) load(token, warp_first + row_in_warp, next, next_active, next_x);

  for (int buffer = 0; token < tokens; token += token_stride, buffer ^= 1) {
    CosSin* const table = tables + buffer * p.half;
    if (entry < p.half) {
      const CosSin cs = norm_table_entry<A, N>(p, token, entry);
      if constexpr (packed) {
        // As 16-bit values in groups of four pairs, [c0 c1 c2 c3 s0 s1 s2 s3]: a lane's four pairs
        // are one 16-byte load (packed_group), already in the words the packed rotation takes.
        S* const group = reinterpret_cast<S*>(table) + 8 * (entry / 4);
        group[entry % 4] = Element<A>::narrow(cs.c);
        group[4 + entry % 4] = Element<A>::narrow(cs.s);
      } else {
        table[entry] = cs;
      }
    }
    __syncthreads();  // the table written (and, double-buffered, token t - 1's rows done with the other)

    for (int h0 = warp_first; h0 < p.total_heads; h0 += warp_stride) {
      const int h = h0 + row_in_warp;
      const HeadPointers<S> hp = next;
      const bool active = next_active;
      Words x[NG];
#pragma unroll
      for (int g = 0; g < NG; ++g) x[g] = next_x[g];
      // The next row, in flight while this one computes: the token's next, else the first of the
      // block's next token (across its barrier and table).
      int next_h0 = h0 + warp_stride;
      Token next_token = token;
      if (next_h0 >= p.total_heads) {
        next_h0 = warp_first;
        next_token = token + token_stride;
      }
      if (next_token < tokens) load(next_token, next_h0 + row_in_warp, next, next_active, next_x);
      if constexpr (!half_warp) {
        if (!active) continue;  // the warp agrees: one row
        if (!hp.rotate) {
          // A V row of an append: its bits copied to the cache (cast there when the cache's dtype differs).
#pragma unroll
          for (int g = 0; g < G; ++g) store(hp, g, elements(x[g]));
          continue;
        }
      }
      // (Two rows a warp: both halves compute, whatever their rows, since the reduction's shuffles
      // need every lane; each half stores its own row's result, or a V row's input, or nothing.)
      const bool is_q = h < p.q_heads;
      float v[NG][4];
      float part;
      if constexpr (half_warp) {
        // torch's lanes l and l + 16 each sum their four squares in order; torch's first step adds
        // lane l + 16's sum to lane l's, here in the lane.
        float sums[2];
#pragma unroll
        for (int g = 0; g < 2; ++g) {
          float acc[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            v[g][k] = Element<A>::widen(elements(x[g]).v[k]);
            acc[k] = posenc::detail::mul_rn(v[g][k], v[g][k]);
          }
          sums[g] = posenc::detail::torch_cuda_accumulators_sum(acc);
        }
        part = posenc::detail::add_rn(sums[0], sums[1]);
      } else {
        float acc[4];  // torch's lane sums start at 0; 0 + x x is x x (never -0), so group 0 starts them
#pragma unroll
        for (int g = 0; g < G; ++g) {
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            v[g][k] = Element<A>::widen(elements(x[g]).v[k]);
            const float sq = posenc::detail::mul_rn(v[g][k], v[g][k]);
            acc[k] = g == 0 ? sq : posenc::detail::add_rn(acc[k], sq);
          }
        }
        part = posenc::detail::torch_cuda_accumulators_sum(acc);
      }
      // torch's shuffle-down tree as a butterfly: for l < o, lane l ^ o is lane l + o, so lane 0 makes
      // torch's additions in torch's order, and at each step lanes l and l ^ o add the same two
      // values (a + b is b + a, bit for bit), so every lane ends with lane 0's sum (no broadcast).
      // A half-warp's row starts at step 8 (step 16 was in the lane), and stays within its half.
#pragma unroll
      for (int o = half_warp ? 8 : 16; o > 0; o /= 2) part = posenc::detail::add_rn(part, device_shfl_xor(part, o));
      const float mean = posenc::detail::mul_rn(part, is_q ? norm.q_factor : norm.k_factor);
      const float r = rsqrtf(posenc::detail::add_rn(mean, norm.epsilon));
      if constexpr (packed) {
        // hf_compatible 16-bit: the weight step and the rotation on words of two elements
        // (vendor.hpp; the same roundings as norm_weighted and rotate / rotate_first).
        constexpr bool bf16 = A == DType::bf16;
        Words y[NG];  // the normalised row, rounded to A
#pragma unroll
        for (int g = 0; g < NG; ++g) {
#pragma unroll
          for (int i = 0; i < W; ++i) {
            const float a = posenc::detail::mul_rn(v[g][2 * i], r);
            const float b = posenc::detail::mul_rn(v[g][2 * i + 1], r);
            const std::uint32_t w = is_q ? wq[g].v[i] : wk[g].v[i];
            if (kind == QkNormKind::rms) {
              y[g].v[i] = device_mul_hf_x2<bf16>(w, device_pack2<bf16>(a, b));
            } else {  // Gemma's y (1 + w), in float32, rounded once
              const float wa = Element<A>::widen(static_cast<S>(w & 0xffffu));
              const float wb = Element<A>::widen(static_cast<S>(w >> 16));
              y[g].v[i] = device_pack2<bf16>(posenc::detail::mul_rn(a, posenc::detail::add_rn(1.0f, wa)),
                                             posenc::detail::mul_rn(b, posenc::detail::add_rn(1.0f, wb)));
            }
          }
        }
        // Group q of the 16-bit table: words {c(4q) c(4q+1), c(4q+2) c(4q+3), s(4q) s(4q+1), s(4q+2) s(4q+3)}.
        const auto* const groups = reinterpret_cast<const std::uint32_t*>(table);
        auto packed_group = [&](int q) { return load_packed<std::uint32_t, 4>(groups + 4 * q); };
        Words o[NG];
        if (interleaved) {
          // A word is a pair (a, b): a' = R(R(ac) - R(bs)) low, b' = R(R(bc) - R(a (-s))) high. The
          // lane's pairs GS g / 2 + 2 sub + i are half of group GS g / 8 + sub / 2.
#pragma unroll
          for (int g = 0; g < NG; ++g) {
            const Packed<std::uint32_t, 4> cs = packed_group(GS * g / 8 + sub / 2);
            const std::uint32_t cw = sub % 2 == 0 ? cs.v[0] : cs.v[1];
            const std::uint32_t sw = sub % 2 == 0 ? cs.v[2] : cs.v[3];
#pragma unroll
            for (int i = 0; i < W; ++i) {
              const std::uint32_t dup = i == 0 ? 0x1010u : 0x3232u;  // pair i's value in both halves
              o[g].v[i] = device_rotate_first_hf_x2<bf16>(y[g].v[i], __byte_perm(y[g].v[i], 0, 0x1032),
                                                          __byte_perm(cw, 0, dup), __byte_perm(sw, 0, dup) ^ 0x80000000u);
            }
          }
        } else {
          static_assert(NG == 2);  // (16-bit rows of head_dim 128 are half-warp rows)
          // Element e of group 0 pairs with the same lane's e of group 1 (GS elements on): pairs
          // 4 sub .. 4 sub + 3, table group `sub`.
          const Packed<std::uint32_t, 4> cs = packed_group(sub);
#pragma unroll
          for (int i = 0; i < W; ++i)
            device_rotate_hf_x2<bf16>(y[0].v[i], y[1].v[i], cs.v[i], cs.v[2 + i], o[0].v[i], o[1].v[i]);
        }
        if (!active) continue;
        if (Append && !hp.rotate) {  // a V row (half-warp rows only: full-warp V rows left above)
#pragma unroll
          for (int g = 0; g < NG; ++g) store(hp, g, elements(x[g]));
          continue;
        }
#pragma unroll
        for (int g = 0; g < NG; ++g) store(hp, g, elements(o[g]));
        continue;
      } else {
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          // (selected word by word: a run-time choice of array would put both in local memory)
          Words w;
#pragma unroll
          for (int i = 0; i < W; ++i) w.v[i] = is_q ? wq[g].v[i] : wk[g].v[i];
          const Vec weight = elements(w);
#pragma unroll
          for (int k = 0; k < 4; ++k)
            v[g][k] = posenc::detail::norm_weighted<A>(kind, posenc::detail::mul_rn(v[g][k], r), Element<A>::widen(weight.v[k]));
        }
        float out[NG][4];
        if (interleaved) {
#pragma unroll
          for (int g = 0; g < NG; ++g) {
#pragma unroll
            for (int k = 0; k < 4; k += 2) {
              const Pair rotated = rotate<A, N>(v[g][k], v[g][k + 1], table[(GS * g + base + k) / 2]);
              out[g][k] = rotated.a;
              out[g][k + 1] = rotated.b;
            }
          }
        } else if constexpr (NG == 1) {
          // float32, head_dim 128: element e < 64 is the first of pair e, its partner e + 64 in lane ^ 16.
          // Each lane computes only its own element's output (rotate_first, with sin negated for the second).
          const bool first = lane < 16;
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const float other = device_shfl_xor(v[0][k], 16);
            const CosSin cs = table[(first ? base : base - 64) + k];
            out[0][k] = posenc::detail::rotate_first<A, N>(v[0][k], other, cs.c, first ? cs.s : -cs.s);
          }
        } else {
          static_assert(NG == 2);
          // Element e of group 0 pairs with the same lane's e of group 1 (GS elements on).
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const Pair rotated = rotate<A, N>(v[0][k], v[1][k], table[base + k]);
            out[0][k] = rotated.a;
            out[1][k] = rotated.b;
          }
        }
        if (!active) continue;
        if (Append && !hp.rotate) {  // a V row (half-warp rows only: full-warp V rows left above)
#pragma unroll
          for (int g = 0; g < NG; ++g) store(hp, g, elements(x[g]));
          continue;
        }
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          Vec o;
#pragma unroll
          for (int k = 0; k < 4; ++k) o.v[k] = Element<A>::narrow_rounded(out[g][k]);
          store(hp, g, o);
        }
      }
    }
  }
}

/// Blocks of norm_block_threads per SM the launch bounds ask of rope_norm_kernel<A, N, Append, G>:
/// the most at which each instantiation compiles without spilling (48 registers a thread at five,
/// 64 at four, 80 at three). Without a bound the compiler gives the pipelined register path 64 to
/// 100 registers, three or four blocks. float32 rows take twice the registers of 16-bit ones; the
/// 16-bit appends hold eight elements a lane at head_dim 128 too (half-warp rows), as at 256.
template <DType A, Numerics N, bool Append, int G>
inline constexpr int norm_min_blocks =
    A == DType::f32 ? (G == 1 ? (Append ? 4 : 5) : (Append ? 3 : 4))
                    : (Append ? 4 : 5);

/// QK norm, then RoPE (and for Append the KV-cache write) of every row of a call. G: the register
/// path's groups of 128 elements (norm_tokens_in_registers); the launcher picks the instantiation
/// with head_dim == 128 G where the register path may run (any G serves the shared-memory path).
template <DType A, Numerics N, bool Append, int G>
__global__ void __launch_bounds__(norm_block_threads, (norm_min_blocks<A, N, Append, G>))
    rope_norm_kernel(const NormKernelParams params) {
  using S = storage_t<A>;
  const RopeKernelParams& p = params.rope;
  const KernelNorm& norm = params.norm;
  extern __shared__ unsigned char norm_shared[];
  CosSin* const table = reinterpret_cast<CosSin*>(norm_shared);
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
  float* const row = reinterpret_cast<float*>(norm_shared + p.half * table_entry_bytes) +
                     warp * (norm.head_dim + norm_max_torch_lanes);
  float* const partial = row + norm.head_dim;
  const int head_dim = norm.head_dim;
  const int window_end = p.rotary_offset + p.rotary_dim;
  // gridDim.y blocks share a token's rows (small calls: more warps than one block has), each with
  // the token's table; the warps of all of them take the rows in turn.
  const int first_row = warp + static_cast<int>(blockIdx.y) * warps;
  const int row_stride = warps * static_cast<int>(gridDim.y);
  if (norm.register_rows != 0) {  // head_dim == 128 G; shared memory: two tables (norm_shared_bytes)
    if constexpr (Append || A == DType::f32) {
      norm_tokens_in_registers<A, N, Append, G, QkNormKind::none>(params, table, first_row, row_stride, lane);
    } else if (static_cast<QkNormKind>(norm.kind) == QkNormKind::rms) {  // uniform: one copy runs
      norm_tokens_in_registers<A, N, Append, G, QkNormKind::rms>(params, table, first_row, row_stride, lane);
    } else {
      norm_tokens_in_registers<A, N, Append, G, QkNormKind::rms_one_plus>(params, table, first_row, row_stride, lane);
    }
    return;
  }

  for (std::int64_t token = blockIdx.x; token < p.tokens; token += gridDim.x) {
    if (token != static_cast<std::int64_t>(blockIdx.x)) __syncthreads();  // the last token's rows read the table
    // The token's cos/sin, one entry per pair.
    for (int i = static_cast<int>(threadIdx.x); i < p.half; i += static_cast<int>(blockDim.x))
      table[i] = norm_table_entry<A, N>(p, token, i);
    __syncthreads();

    for (int h = first_row; h < p.total_heads; h += row_stride) {
      bool active = true;
      HeadPointers<S> hp;
      if constexpr (Append) hp = append_row_pointers<S>(p, token, h, active);
      else hp = head_pointers<S>(p, token, h);
      if (!active) continue;  // a K or V row of a token without a slot (the warp agrees: one row)
      if (!hp.rotate) {
        // A V row of an append: copied to the cache as it is (no norm).
        if constexpr (Append) {
          for (int j = lane; j < head_dim; j += 32) {
            Packed<S, 1> x;
            x.v[0] = hp.src[j];
            store_cache<A, 1>(static_cast<unsigned char*>(hp.dst), j, x, p.cache.dtype, hp.scale);
          }
        }
        continue;
      }
      // 1. The head into the warp's row.
      for (int j = lane; j < head_dim; j += 32) row[j] = Element<A>::widen(hp.src[j]);
      device_sync_warp();
      // 2.-3. The norm over [first, first + width).
      const bool is_q = h < p.q_heads;
      float* const x = row + norm.first;
      const float mean = norm_mean_square(norm, is_q, x, norm.width, partial, lane);
      const float v = posenc::detail::add_rn(mean, norm.epsilon);
      const float r = norm.torch_cuda != 0 ? rsqrtf(v) : posenc::detail::exact_rsqrt(v);
      const S* const weight = static_cast<const S*>(is_q ? norm.q_weight : norm.k_weight);
      const auto kind = static_cast<QkNormKind>(norm.kind);
      for (int j = lane; j < norm.width; j += 32)
        x[j] = posenc::detail::norm_weighted<A>(kind, posenc::detail::mul_rn(x[j], r), Element<A>::widen(weight[j]));
      device_sync_warp();
      // 4. The rotation from the normalised row, and the other elements.
      const bool to_cache = Append && hp.to_cache;
      const float scale = hp.scale;
      auto store = [&](int j, float value) {
        Packed<S, 1> out;
        out.v[0] = Element<A>::narrow_rounded(value);
        if (to_cache) store_cache<A, 1>(static_cast<unsigned char*>(hp.dst), j, out, p.cache.dtype, scale);
        else static_cast<S*>(hp.dst)[j] = out.v[0];
      };
      for (int i = lane; i < p.half; i += 32) {
        const PairPlaces at = pair_places(static_cast<Pairing>(norm.pairing), p.half, i);
        const Pair rotated = rotate<A, N>(row[p.rotary_offset + at.read_a], row[p.rotary_offset + at.read_b], table[i]);
        store(p.rotary_offset + static_cast<int>(at.write_a), rotated.a);
        store(p.rotary_offset + static_cast<int>(at.write_b), rotated.b);
      }
      // Elements outside the window: normalised ones always, the others out of place (and into a cache row).
      const bool pass_normalised = norm.first == 0 && norm.width == head_dim;
      if (pass_normalised || hp.copy_pass_through) {
        for (int j = lane; j < head_dim; j += 32)
          if (j < p.rotary_offset || j >= window_end) store(j, row[j]);
      }
      device_sync_warp();  // the row is reused by the warp's next head
    }
  }
}

}  // namespace posenc::gpu::detail

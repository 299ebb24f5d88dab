// Fused RoPE + KV-cache append: rotate Q, rotate K and write it with V into a contiguous or paged KV cache, with an optional cast.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"

namespace posenc {

// ------------------------------------------------------------------------------------------------
// Cache layouts
//
// A cache holds two tensors of equal shape, K and V. Each token of an append call names one
// *slot*; the slot says where that token's kv_heads rows of head_dim elements go:
//
//   contiguous  [batch, max_len, kv_heads, head_dim]          blocks = batch, block_len = max_len
//               slot = b * max_len + t   (sequence b, cache position t)
//               row (slot, h) at  (slot * kv_heads + h) * head_dim
//
//   paged_nhd   [num_blocks, page_size, kv_heads, head_dim]   blocks = num_blocks, block_len = page_size
//               slot = block * page_size + offset   (vLLM's slot_mapping)
//               row (slot, h) at  (slot * kv_heads + h) * head_dim         (same formula as contiguous)
//
//   paged_hnd   [num_blocks, kv_heads, page_size, head_dim]
//               slot = block * page_size + offset
//               row (slot, h) at  ((block * kv_heads + h) * page_size + offset) * head_dim
//
// Drawn for kv_heads = 2, page_size = 2, one block (h0/h1: heads, o0/o1: offsets in the page):
//   NHD  [o0h0 o0h1 | o1h0 o1h1]        HND  [h0o0 h0o1 | h1o0 h1o1]
//
//   mla         [num_blocks, page_size, latent_dim + head_dim]   one tensor: cache.k (cache.v is null)
//               slot = block * page_size + offset; kv_heads = 1
//               row of slot at  slot * (latent_dim + head_dim):
//                 [ c_kv: latent_dim elements (the call's V, copied) | k_pe: head_dim elements (the call's K, rotated) ]
//   Multi-head latent attention (DeepSeek-V2/V3/R1, Kimi K2): the cache FlashMLA and vLLM read, e.g.
//   576 = 512 + 64 per slot ([num_blocks, page_size, 1, 576] in FlashMLA is the same bytes). In an
//   append with this layout K is k_pe `[tokens, 1, head_dim]` (the decoupled RoPE key, shared by all
//   heads; head_dim = the spec's head_dim = qk_rope_head_dim), V is the compressed latent c_kv
//   `[tokens, 1, latent_dim]` exactly as the caller gives it (engines apply kv_a_layernorm before),
//   and Q is usually the rope slice of the full query (docs/ARCHITECTURE.md "MLA"): a TensorView of
//   head_dim = qk_rope_head_dim whose head_stride is qk_nope_head_dim + qk_rope_head_dim, pointing
//   at element qk_nope_head_dim of head 0, rotated in place while the nope part is untouched.
//   latent_dim must be a multiple of head_dim (512 = 8 x 64; the GPU kernel copies the latent in
//   pieces of head_dim).
//   fp8_e4m3: c_kv is stored with v_scale and k_pe with k_scale. vLLM's fp8 MLA cache uses one scale
//   for the whole 576-element row: pass the same value as both.
//
// Slot -1 means "no slot": the token's K and V are not written (padding tokens of a batch replayed
// through a CUDA graph). Q is still rotated for every token.
//
// Element types (CacheDType): f32, f16 and bf16 store the value rounded to nearest even, as
// PyTorch's `.to(dtype)`; a cache of the activation dtype receives the activation bits unchanged.
// fp8_e4m3 (OCP E4M3FN: 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no infinities, NaN
// 0x7f/0xff, largest finite 448) stores  e4m3(fl32(x / scale)),  where e4m3 rounds to nearest
// even and saturates: finite values beyond +-448 (and +-inf) become +-448, NaN becomes 0x7f with
// the sign bit of the input. This is PyTorch's `(x / scale).clamp(-448, 448).to(torch.float8_e4m3fn)`
// computed in float32. Read a value back as  e4m3_bits_to_float(bits) * scale.
// ------------------------------------------------------------------------------------------------

/// Where a slot's rows live (drawn above).
enum class CacheLayout : std::uint8_t { contiguous, paged_nhd, paged_hnd, mla };

/// Element type of the cache.
enum class CacheDType : std::uint8_t { f32, f16, bf16, fp8_e4m3 };

/// Bytes of one cache element (0 for a value outside the enum, which validation rejects first).
constexpr std::int64_t size_of(CacheDType t) noexcept {
  switch (t) {
    case CacheDType::f32: return 4;
    case CacheDType::f16: return 2;
    case CacheDType::bf16: return 2;
    case CacheDType::fp8_e4m3: return 1;
  }
  return 0;
}

/// The cache dtype that holds activations of `t` unchanged (the append copies their bits).
constexpr CacheDType cache_dtype_of(DType t) noexcept {
  switch (t) {
    case DType::f32: return CacheDType::f32;
    case DType::f16: return CacheDType::f16;
    case DType::bf16: return CacheDType::bf16;
  }
  return CacheDType::f32;
}

/// "contiguous", "paged_nhd", "paged_hnd", "mla" / "float32", "float16", "bfloat16", "float8_e4m3fn".
const char* to_string(CacheLayout layout) noexcept;
const char* to_string(CacheDType dtype) noexcept;

/// float -> OCP E4M3FN bits: round to nearest even with saturation to +-448 (inf included);
/// NaN -> 0x7f | sign. The rounding step is PyTorch's c10 fp8e4m3fn_from_fp32_value, applied
/// after the clamp that makes it saturate. (The same code converts on the GPU.)
std::uint8_t float_to_e4m3_bits(float f) noexcept;

/// OCP E4M3FN bits -> float (exact; 0x7f/0xff -> NaN).
float e4m3_bits_to_float(std::uint8_t bits) noexcept;

/// A KV cache in host memory (CpuEngine) or device memory (gpu::GpuEngine): two tensors K and V
/// of the same layout, dtype and shape, or (CacheLayout::mla) one tensor `k` whose rows hold the
/// latent and the rotated k_pe. Not owned.
struct KvCacheView {
  void* k = nullptr;
  void* v = nullptr;
  CacheDType dtype = CacheDType::bf16;
  CacheLayout layout = CacheLayout::paged_nhd;
  std::int64_t kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t blocks = 0;     ///< batch (contiguous) or num_blocks (paged)
  std::int64_t block_len = 0;  ///< max_len (contiguous) or page_size (paged)
  /// fp8_e4m3 only: the cache stores e4m3(x / scale); must be finite and > 0. Other dtypes
  /// require 1 (a scale that would be ignored is an error, not a silent no-op).
  float k_scale = 1.0f;
  float v_scale = 1.0f;
  /// fp8_e4m3 only, optional: one scale per KV head (kv_heads floats, in the engine's memory as the
  /// slots are: host memory for CpuEngine, device memory for gpu::GpuEngine). Head h of K is stored
  /// as e4m3(x / k_head_scales[h]) (V with v_head_scales), and k_scale (v_scale) must then be 1.
  /// Each must be finite and > 0: CpuEngine refuses the call naming the head and the value;
  /// gpu::GpuEngine checks them on the device, leaves that head's rows unwritten and reports the
  /// first such head at check(). Not with the mla layout (one head: k_scale and v_scale serve).
  const float* k_head_scales = nullptr;
  const float* v_head_scales = nullptr;
  /// CacheLayout::mla only: elements of the latent c_kv in each row (kv_lora_rank, 512 for
  /// DeepSeek-V3), a multiple of head_dim; the row is latent_dim + head_dim elements. Other layouts
  /// require 0.
  std::int64_t latent_dim = 0;

  /// Slots the cache holds: blocks * block_len (valid slots are [0, slots())).
  std::int64_t slots() const noexcept { return blocks * block_len; }
};

/// Q quantized by an append (AppendArgs::q_out), for fp8 serving: an fp8 attention kernel reads Q
/// in the cache's dtype with a per-tensor scale. `[tokens, heads, head_dim]` with head_dim
/// contiguous and strides in elements, as TensorView:
///
///     element (t, h, d) lives at  data + (t * token_stride + h * head_stride + d) * size_of(dtype)
///
/// Every element of every head (the rotated window and the pass-through dims) receives
/// dtype(x / scale), x the rotated Q value in the activation dtype: the cast the cache applies to
/// K (float_to_e4m3_bits for fp8: saturating). In the engine's memory; not owned.
struct QuantizedOutput {
  void* data = nullptr;
  CacheDType dtype = CacheDType::fp8_e4m3;  ///< must equal the cache's dtype
  std::int64_t token_stride = 0;            ///< elements between token t and t+1
  std::int64_t head_stride = 0;             ///< elements between head h and h+1
  float scale = 1.0f;                       ///< fp8: finite and > 0; other dtypes: 1
  /// fp8 only, optional: one scale per Q head (q's heads floats, in the engine's memory), used
  /// instead of `scale` (which must then be 1), as KvCacheView::k_head_scales is for K.
  const float* head_scales = nullptr;

  bool present() const noexcept { return data != nullptr; }
};

/// Everything one append call reads and writes. Tokens: positions.count.
///
/// - Q (`q`, `[tokens, q_heads, head_dim]`) is rotated in place, or from `q_src` into `q` when
///   `q_src` is present (same rules as RopeArgs).
/// - K (`k`, `[tokens, kv_heads, head_dim]`) is rotated and written to the cache at the token's
///   slot; `k` itself is not written.
/// - V (`v`, same shape as K) is copied to the cache at the same slot. With CacheLayout::mla, K
///   is k_pe `[tokens, 1, head_dim]` and V the latent c_kv `[tokens, 1, cache.latent_dim]`.
/// - `slots[i]` (positions.count entries; host memory for CpuEngine, device memory for
///   gpu::GpuEngine) is token i's slot, or -1 to skip its K/V.
/// - Q, K and V share one activation dtype; the cache may have any CacheDType (the cast is
///   applied on the way in).
/// - `cos_sin` (optional): Q and K are rotated by the caller's cos/sin cache instead of the spec's
///   frequencies, exactly as RopeArgs::cos_sin (tensor.hpp); it must not overlap Q or the KV cache.
/// - `q_out` (optional): the rotated Q goes to q_out, quantized as the cache is (QuantizedOutput),
///   instead of back into `q`: `q` is then the input and is not written, `q_src` must be absent,
///   q_out's dtype must equal the cache's and q_out must share no byte with any other argument.
struct AppendArgs {
  TensorView q;
  ConstTensorView q_src;
  ConstTensorView k;
  ConstTensorView v;
  PositionsView positions;
  const std::int64_t* slots = nullptr;
  KvCacheView cache;
  CosSinCacheView cos_sin;
  NormWeights norm{};  ///< QK-norm weights (RopeArgs::norm): Q and K are normalised before the rotation
  QuantizedOutput q_out{};  ///< Q written quantized instead of in place (see above)
};

/// Validates an append call in one pass without writing anything: the rotation of Q and K exactly
/// as validate_args checks it; V's shape and dtype equal to K's (mla: V's head_dim equal to
/// cache.latent_dim); the cache's shape (kv_heads and head_dim equal to K's; mla: kv_heads 1,
/// latent_dim a positive multiple of head_dim, cache.v null; other layouts: latent_dim 0), dtype,
/// layout, alignment, size in 64 bits and scales; q_out (when present: q_src absent, its dtype the
/// cache's, its strides, extent and scale, no overlap with any other argument); no overlap between
/// the cache and any input or Q; every slot -1 or in [0, cache.slots()) (Error(out_of_range)
/// naming the token index, the slot and the limit); no non-negative slot given twice (naming both
/// token indices). Throws posenc::Error.
void validate_append_args(const RopeSpec& spec, const AppendArgs& args);

/// The definition of the fused append: validate, apply_reference to Q and to K (into a scratch
/// buffer of K's dtype; Q too when q_out is present), then for every token with a slot cast the
/// rotated K and V row by row into the cache (and every token's rotated Q into q_out). Plain scalar loops, no threads. CpuEngine::append (cpu.hpp) is tested against it.
void append_reference(const RopeSpec& spec, const AppendArgs& args);

/// Builds a vLLM-style slot mapping from a block table, on the host.
///
/// - `block_table`: row-major `[batch, blocks_per_seq]` physical block ids; row b lists sequence
///   b's blocks in order (cache position p of sequence b lives in block_table[b][p / page_size]).
/// - `token_seq[i]`: the sequence of token i, or -1 for a padding token (its slot is -1).
/// - `token_pos[i]`: the cache position of token i within its sequence (for a decode step, the
///   sequence's length before the step; for a prefill chunk, start + i).
/// - `page_size`: slots per block; `num_blocks`: blocks in the cache.
///
/// Returns slot[i] = block_table[token_seq[i]][token_pos[i] / page_size] * page_size +
/// token_pos[i] % page_size. Throws Error(out_of_range) naming the token index and value for a
/// sequence outside [0, batch), a position outside [0, blocks_per_seq * page_size) or a block id
/// outside [0, num_blocks); Error(invalid_argument) for a table whose size is not a multiple of
/// blocks_per_seq, mismatched token_seq/token_pos lengths, or non-positive sizes.
std::vector<std::int64_t> slots_from_block_table(std::span<const std::int64_t> block_table,
                                                 std::int64_t blocks_per_seq,
                                                 std::span<const std::int64_t> token_seq,
                                                 std::span<const std::int64_t> token_pos, std::int64_t page_size,
                                                 std::int64_t num_blocks);

}  // namespace posenc

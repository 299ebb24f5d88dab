// Non-owning views of Q/K tensors and position ids, and the argument bundle of one apply call.
#pragma once

#include <cstdint>

#include "posenc/dtype.hpp"

namespace posenc {

/// A `[tokens, heads, head_dim]` view with head_dim contiguous. Strides are in elements, so Q and
/// K can be slices of a fused QKV buffer:
///
///     element (t, h, d) lives at  data + (t * token_stride + h * head_stride + d) * size_of(dtype)
///
/// A view can also cover only part of each head: MLA's query (DeepSeek-V3, Kimi K2) is
/// `[tokens, heads, nope + rope]` (128 + 64) and only its last `rope` elements are rotated; the view
/// {data + nope elements, dtype, tokens, heads, head_dim = rope, token_stride = heads * (nope + rope),
/// head_stride = nope + rope} rotates them in place and never touches the nope part
/// (kv_cache.hpp's mla layout, docs/ARCHITECTURE.md "MLA").
///
/// The view does not own memory. `data == nullptr` means "absent" (an optional K, an in-place call).
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  std::int64_t tokens = 0;
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t token_stride = 0;  ///< elements between token t and t+1
  std::int64_t head_stride = 0;   ///< elements between head h and h+1

  bool present() const noexcept { return data != nullptr; }

  /// A dense `[tokens, heads, head_dim]` view (token_stride = heads * head_dim).
  static TensorView contiguous(void* data, DType dtype, std::int64_t tokens, std::int64_t heads,
                               std::int64_t head_dim) noexcept {
    return {data, dtype, tokens, heads, head_dim, heads * head_dim, head_dim};
  }
};

/// Read-only twin of TensorView, used for out-of-place sources.
struct ConstTensorView {
  const void* data = nullptr;
  DType dtype = DType::f32;
  std::int64_t tokens = 0;
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t token_stride = 0;
  std::int64_t head_stride = 0;

  ConstTensorView() = default;
  ConstTensorView(const void* d, DType t, std::int64_t n, std::int64_t h, std::int64_t hd,
                  std::int64_t ts, std::int64_t hs) noexcept
      : data(d), dtype(t), tokens(n), heads(h), head_dim(hd), token_stride(ts), head_stride(hs) {}
  ConstTensorView(const TensorView& v) noexcept  // NOLINT(google-explicit-constructor)
      : ConstTensorView(v.data, v.dtype, v.tokens, v.heads, v.head_dim, v.token_stride,
                        v.head_stride) {}

  bool present() const noexcept { return data != nullptr; }
};

/// Position ids, int32 or int64, one per token and stream. The caller flattens batches: a ragged
/// batch, a padded batch and a decode step are all just "one position per token".
///
/// Most models have one stream. Multi-axis schemes take several (RopeSpec::position_streams()):
/// ChatGLM-6B's 2-D RoPE (position, block position) and M-RoPE (t, h, w). Stream s of token t is
///
///     data[s * stream_stride + t]          (stream-major, as posenc::glm::PositionIds holds them)
struct PositionsView {
  const void* data = nullptr;
  IndexType type = IndexType::i64;
  std::int64_t count = 0;          ///< tokens
  std::int32_t streams = 1;
  std::int64_t stream_stride = 0;  ///< elements between streams (>= count when streams > 1)
};

/// A caller's cos/sin cache, as vLLM's and sgl-kernel's `rotary_embedding(positions, query, key,
/// head_size, cos_sin_cache, is_neox)` take it: `[rows, rotary_dim]`, row p holding the cos of the
/// R/2 pairs of position p, then their sin (R = rotary_dim):
///
///     row p:  [ c_0  c_1 ... c_{R/2-1} | s_0  s_1 ... s_{R/2-1} ]
///     element (p, j) lives at  data + (p * row_stride + j) * size_of(dtype)
///
/// With a cache, pair i of a token at position p is rotated by (c_i, s_i) of row p instead of the
/// angle the spec's frequencies give: the cache already holds any scaling and attention factor,
/// so theta, scaling and attention_factor of the spec are ignored (rope.hpp "Caller's cos/sin
/// cache" gives the arithmetic). The dtype (f32, f16, bf16) may differ from the activation dtype.
/// Positions must lie in [0, rows): the CPU engine rejects others before writing anything, the
/// GPU engine never reads the cache for them (gpu.hpp). Not owned.
struct CosSinCacheView {
  const void* data = nullptr;
  DType dtype = DType::f32;
  std::int64_t rows = 0;        ///< valid positions are [0, rows)
  std::int64_t rotary_dim = 0;  ///< R: elements of a row that are read (R/2 cos, then R/2 sin)
  std::int64_t row_stride = 0;  ///< elements between row p and row p+1 (>= rotary_dim)

  bool present() const noexcept { return data != nullptr; }

  /// A dense `[rows, rotary_dim]` cache (row_stride = rotary_dim).
  static CosSinCacheView contiguous(const void* data, DType dtype, std::int64_t rows,
                                    std::int64_t rotary_dim) noexcept {
    return {data, dtype, rows, rotary_dim, rotary_dim};
  }
};

/// The weights of a spec's QK-norm stage (RopeSpec::qk_norm): `q` for Q's heads and `k` for K's,
/// each a dense vector of the norm's width (head_dim, or rotary_dim with rotary_only) in the
/// activation dtype, in the engine's memory (host for CpuEngine, device for gpu::GpuEngine). Both
/// are required when the spec normalises (`k` only when K is present) and must be absent
/// otherwise; they must not overlap a destination. Not owned.
struct NormWeights {
  const void* q = nullptr;
  const void* k = nullptr;
};

/// Everything one `apply` call reads and writes.
///
/// - `q` is written. `k` is written when present (K is optional: MLA-style Q-only calls).
/// - In place: leave `q_src`/`k_src` absent; `q`/`k` are read and overwritten.
/// - Out of place: `q_src` (and `k_src` when `k` is present) give the input; they must have the
///   same dtype and shape as their destination but may have other strides, and must not overlap
///   any destination unless they are exactly the same view.
/// - Q and K may have different head counts (GQA/MQA); both have `positions.count` tokens.
/// - `cos_sin` (optional): rotate by the caller's cos/sin cache instead of the spec's frequencies
///   (CosSinCacheView). Only single-stream pairings take one (half_split, interleaved,
///   interleaved_to_half; no M-RoPE); its rotary_dim must equal the spec's, and it must not
///   overlap a destination.
/// - `norm`: the QK-norm weights when the spec normalises Q and K before rotating (NormWeights).
struct RopeArgs {
  TensorView q;
  TensorView k;
  ConstTensorView q_src;
  ConstTensorView k_src;
  PositionsView positions;
  CosSinCacheView cos_sin;
  NormWeights norm{};
};

}  // namespace posenc

// One-pass validation of an apply call and the per-call helpers the CPU and GPU engines share (internal).
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>

#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"

namespace posenc::detail {

/// What validation learned about a call, so no engine has to look at the arguments twice.
struct CallInfo {
  std::int64_t tokens = 0;
  /// Largest position of the call when positions were read (check_positions), else -1.
  std::int64_t max_position = -1;
  bool q_in_place = true;  ///< q_src absent or exactly the q view
  bool k_in_place = true;  ///< k absent, or k_src absent or exactly the k view
};

/// Everything validate_args checks except spec.validate(): engines validate their spec once, at
/// construction, and call this per apply. Throws posenc::Error; reads positions only when
/// `check_positions`, in the same single pass that finds their maximum.
CallInfo validate_call(const RopeSpec& spec, const RopeArgs& args, bool check_positions);

/// Checks every position of every stream of a host positions view against [0, limit) and returns
/// the largest over all streams (HF takes max(position_ids) over the whole tensor). Throws
/// Error(out_of_range) "position P at token index I is outside [0, L)" for the first bad one, with
/// " of stream S" after P when the view has several streams. Usable by GPU code on a host copy of
/// its positions.
///
/// `limit_name`, when given, says in parentheses what the limit is ("rows of the cos/sin cache").
std::int64_t scan_positions(const PositionsView& positions, std::int64_t limit, const char* limit_name = nullptr);

/// Checks a present cos/sin cache (tensor.hpp CosSinCacheView) against the spec: a single-stream
/// pairing, rotary_dim equal to the spec's, rows >= 1, row_stride >= rotary_dim, a known dtype,
/// aligned data, and an extent that fits in 64 bits and in the address space. Returns the extent
/// in bytes (from data to one past the last element read). Throws posenc::Error.
std::int64_t check_cos_sin(const RopeSpec& spec, const CosSinCacheView& cache);

/// Positions a call with cache `cache` may use: [0, cos_sin_limit) = [0, min(rows, position_limit)).
inline std::int64_t cos_sin_limit(const RopeSpec& spec, const CosSinCacheView& cache) noexcept {
  return cache.rows < spec.position_limit ? cache.rows : spec.position_limit;
}

/// Checks a present read-only view the way validate_call checks K: dtype known, head_dim equal to
/// `head_dim` (named `head_dim_name` in the message: "spec.head_dim", or "cache.latent_dim" for an
/// MLA latent), tokens equal to positions.count, strides, extent and self-overlap. Messages name
/// the view `name` (used for V of a KV-cache append).
void check_input(const char* name, const ConstTensorView& v, std::int64_t head_dim, const char* head_dim_name,
                 const PositionsView& positions);

/// Throws Error(invalid_argument) naming both views and `why` when `a` and `b` may share a byte
/// (exact per token for equal token strides, as for Q/K/V slices of one fused buffer).
void check_disjoint(const char* a_name, const ConstTensorView& a, const char* b_name, const ConstTensorView& b,
                    const char* why);

/// A view with the name messages give it.
struct NamedView {
  const char* name;
  ConstTensorView view;
};

/// Checks a destination of `elem`-byte elements shaped as `shape` (tokens, heads, head_dim) with
/// its own element strides (AppendArgs::q_out): data present and aligned, strides >= 0, extent in
/// checked 64-bit arithmetic, no self-overlap; then that it shares no byte with any present view of
/// `inputs` (Error naming both and `why`). Returns its extent in bytes.
std::int64_t check_output_rows(const char* name, void* data, std::int64_t elem, std::int64_t token_stride,
                               std::int64_t head_stride, const ConstTensorView& shape,
                               std::initializer_list<NamedView> inputs, const char* why);

/// Position of token `i` of a host positions view (int32 or int64), stream 0.
inline std::int64_t position_at(const PositionsView& positions, std::int64_t i) noexcept {
  if (positions.type == IndexType::i32) {
    std::int32_t v;
    std::memcpy(&v, static_cast<const char*>(positions.data) + i * 4, 4);
    return v;
  }
  std::int64_t v;
  std::memcpy(&v, static_cast<const char*>(positions.data) + i * 8, 8);
  return v;
}

/// Position of token `i` in stream `s`: element s * stream_stride + i.
inline std::int64_t position_at(const PositionsView& positions, std::int32_t s, std::int64_t i) noexcept {
  return position_at(positions, s * positions.stream_stride + i);
}

/// The attention factor a call uses: the spec's override when given, else the scheme's.
inline double effective_attention_factor(const RopeSpec& spec, const FrequencyTable& table) noexcept {
  return spec.attention_factor ? *spec.attention_factor : table.attention_factor;
}

}  // namespace posenc::detail

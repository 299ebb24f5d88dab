// Internals of the fused RoPE + KV-cache append shared by append_reference and CpuEngine::append: validation and the cast-and-scatter pass.
#pragma once

#include <cstdint>

#include "core/validate.hpp"
#include "posenc/kv_cache.hpp"

namespace posenc::detail {

/// validate_append_args without spec.validate() (engines validate their spec at construction).
/// Returns what validate_call learned about the rotation of Q (in place or not, largest position).
/// `device_data`: positions and slots live in device memory and are not read (the GPU engine's
/// kernel checks them); everything else is checked the same way.
CallInfo validate_append(const RopeSpec& spec, const AppendArgs& args, bool device_data = false);

/// The rotation an append performs before its scatter: Q as the caller gave it, K from the
/// caller's K into `rotated_k` (a dense scratch, so the caller's K is not written), same positions.
/// With q_out, Q goes from the caller's Q into `rotated_q` (a dense scratch too, absent otherwise: q is then only
/// read), which the scatter casts into q_out.
inline RopeArgs append_rotation(const AppendArgs& args, const TensorView& rotated_k, const TensorView& rotated_q) {
  RopeArgs rope;
  rope.q = args.q;
  rope.q_src = args.q_src;
  if (args.q_out.present()) {
    rope.q = rotated_q;
    rope.q_src = args.q;
  }
  rope.k = rotated_k;
  rope.k_src = args.k;
  rope.positions = args.positions;
  rope.cos_sin = args.cos_sin;
  rope.norm = args.norm;
  return rope;
}

/// One cast-and-scatter pass: token t's rotated K rows (from `k`, the scratch apply wrote) and V
/// rows go to the cache rows of slots[t]; slot -1 skips the token. With q_out, every token's rotated
/// Q rows (from `q`) are cast into q_out, whatever its slot. Lives in the caller's frame
/// while the pool runs.
struct ScatterCall {
  ConstTensorView k;  ///< rotated K, activation dtype
  ConstTensorView v;
  const std::int64_t* slots = nullptr;
  KvCacheView cache;
  ConstTensorView q;      ///< with q_out: rotated Q (the scratch apply wrote), cast into q_out for every token
  QuantizedOutput q_out;

  /// Bytes of one dense scratch tensor shaped as `v` (in 4-byte words, as the engines hold them).
  static std::int64_t scratch_words(const ConstTensorView& v) noexcept {
    return (v.tokens * v.heads * v.head_dim * size_of(v.dtype) + 3) / 4;  // fits: check_view bounded the extent
  }
};

/// The scatter of an append whose rotation wrote `rotated_k` (and, with q_out, `rotated_q`).
inline ScatterCall scatter_call(const AppendArgs& args, const TensorView& rotated_k, const TensorView& rotated_q) {
  return ScatterCall{rotated_k, args.v, args.slots, args.cache, rotated_q, args.q_out};
}

/// Writes tokens [begin, end) of the ScatterCall `context` (ThreadPool::Task's signature). Slots
/// are distinct (validated), so tokens can be written by different threads in any order.
void scatter_tokens(const void* context, std::int64_t begin, std::int64_t end) noexcept;

}  // namespace posenc::detail

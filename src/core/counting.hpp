// The operation counters both engines keep (counters.hpp) and the byte counts they add per call.
#pragma once

#include <atomic>
#include <cstdint>

#include "core/validate.hpp"
#include "posenc/counters.hpp"
#include "posenc/kv_cache.hpp"
#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"

namespace posenc::detail {

/// Calls, tokens and bytes as relaxed atomics; `on` gates them so that they cost one relaxed
/// load per call when off. Safe to read while other threads count.
struct CounterSet {
  std::atomic<bool> on{false};
  std::atomic<std::int64_t> calls{0};
  std::atomic<std::int64_t> tokens{0};
  std::atomic<std::int64_t> bytes{0};

  bool enabled() const noexcept { return on.load(std::memory_order_relaxed); }
  void count(std::int64_t call_count, std::int64_t token_count, std::int64_t byte_count) noexcept {
    calls.fetch_add(call_count, std::memory_order_relaxed);
    tokens.fetch_add(token_count, std::memory_order_relaxed);
    bytes.fetch_add(byte_count, std::memory_order_relaxed);
  }
  OperationCounters read() const noexcept {
    OperationCounters c;
    c.calls = calls.load(std::memory_order_relaxed);
    c.tokens = tokens.load(std::memory_order_relaxed);
    c.bytes = bytes.load(std::memory_order_relaxed);
    return c;
  }
  void reset() noexcept {
    calls.store(0, std::memory_order_relaxed);
    tokens.store(0, std::memory_order_relaxed);
    bytes.store(0, std::memory_order_relaxed);
  }
};

/// Bytes a rotation reads and writes (OperationCounters::bytes): in place only the rotary window
/// moves; out of place whole heads are read and written. Sizes were validated to fit in 64 bits.
inline std::int64_t moved_bytes(const RopeArgs& args, const CallInfo& info, const RopeSpec& spec) noexcept {
  const std::int64_t element = size_of(args.q.dtype);
  const auto tensor_bytes = [&](const TensorView& v, bool in_place) {
    const std::int64_t per_head = in_place ? spec.rotary() : spec.head_dim;
    return 2 * info.tokens * v.heads * per_head * element;
  };
  std::int64_t bytes = tensor_bytes(args.q, info.q_in_place);
  if (args.k.present()) bytes += tensor_bytes(args.k, info.k_in_place);
  return bytes;
}

/// Bytes an append moves beyond the rotation of Q: the K and V rows read and the cache rows
/// written, for every token (padding slots included: an upper bound). V has K's shape, except
/// with the mla layout (one latent of cache.latent_dim per token).
inline std::int64_t append_extra_bytes(const AppendArgs& args) noexcept {
  const ConstTensorView& k = args.k;
  const ConstTensorView& v = args.v;
  const std::int64_t kv = args.positions.count * (k.heads * k.head_dim + v.heads * v.head_dim) *
                          (size_of(k.dtype) + size_of(args.cache.dtype));
  // With q_out, Q's write (counted by the rotation as Q's own dtype) is q_out's instead.
  const TensorView& q = args.q;
  const std::int64_t q_out = args.q_out.present() ? q.tokens * q.heads * q.head_dim *
                                                        (size_of(args.q_out.dtype) - size_of(q.dtype))
                                                  : 0;
  return kv + q_out;
}

}  // namespace posenc::detail

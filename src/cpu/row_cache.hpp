// The CPU engine's cos/sin rows by position: filled lazily, once per position, shared by every later call.
//
// With a fixed frequency table (every scheme but dynamic and longrope), a token's cos/sin row
// depends on its position alone, and positions recur constantly: every layer of a step rotates
// the same positions, and every sequence of a batch starts at 0. The row is the double-precision
// sincos posenc uses so that CPU and GPU round identically, which costs more than streaming a
// head through memory; caching it makes the engine memory-bound. Rows hold the values before any
// rounding to the activation dtype (hf modes: fl32(cos * af); accurate: its float cos/sin), so
// one cache serves every dtype and results are bit-identical to computing the row each time.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace posenc::cpu_detail {

class RowCache {
 public:
  /// Rows for positions [0, positions) of `half` pairs each.
  RowCache(std::int64_t positions, std::int64_t half)
      : positions_(positions),
        half_(half),
        cos_(new float[static_cast<std::size_t>(positions * half)]),
        sin_(new float[static_cast<std::size_t>(positions * half)]),
        state_(new std::atomic<std::uint8_t>[static_cast<std::size_t>(positions)]) {
    for (std::int64_t p = 0; p < positions; ++p) state_[p].store(empty, std::memory_order_relaxed);
  }

  std::int64_t positions() const noexcept { return positions_; }

  /// Bytes a cache of `positions` rows of `half` pairs allocates (cos, sin and a state byte per row).
  static constexpr std::int64_t bytes(std::int64_t positions, std::int64_t half) noexcept {
    return positions * (half * 2 * std::int64_t{sizeof(float)} + 1);
  }

  /// The row of `p`, or nullptr when it is not (yet) cached or p is outside the cache.
  const float* cos_row(std::int64_t p) const noexcept {
    if (p < 0 || p >= positions_ || state_[p].load(std::memory_order_acquire) != ready) return nullptr;
    return cos_.get() + p * half_;
  }
  const float* sin_row(std::int64_t p) const noexcept { return sin_.get() + p * half_; }

  /// Stores a computed row for `p` unless another thread is storing or has stored it (the values
  /// are the same either way).
  void publish(std::int64_t p, const float* cos_values, const float* sin_values) const noexcept {
    if (p < 0 || p >= positions_) return;
    std::uint8_t expected = empty;
    if (!state_[p].compare_exchange_strong(expected, filling, std::memory_order_acq_rel)) return;
    for (std::int64_t i = 0; i < half_; ++i) {
      cos_[p * half_ + i] = cos_values[i];
      sin_[p * half_ + i] = sin_values[i];
    }
    state_[p].store(ready, std::memory_order_release);
  }

 private:
  static constexpr std::uint8_t empty = 0;
  static constexpr std::uint8_t filling = 1;
  static constexpr std::uint8_t ready = 2;
  std::int64_t positions_;
  std::int64_t half_;
  std::unique_ptr<float[]> cos_;
  std::unique_ptr<float[]> sin_;
  std::unique_ptr<std::atomic<std::uint8_t>[]> state_;
};

}  // namespace posenc::cpu_detail

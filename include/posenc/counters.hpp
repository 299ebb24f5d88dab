// Operation counters an engine keeps for monitoring (CpuEngine, gpu::GpuEngine).
#pragma once

#include <cstdint>

namespace posenc {

/// What an engine has done since its counters were enabled or reset.
struct OperationCounters {
  std::int64_t calls = 0;   ///< apply and append calls
  std::int64_t tokens = 0;  ///< tokens rotated
  /// Bytes the calls read and wrote: in place 2 x the rotary windows of Q and K (the pass-through
  /// dims are not touched), out of place 2 x the whole heads; an append also counts the K and V
  /// rows it reads and the cache rows it writes (padding slots included: an upper bound).
  std::int64_t bytes = 0;
  /// GPU engines with device timing on: calls whose device time has been collected, and their
  /// sum in milliseconds (from events recorded around each launch; see GpuEngine::enable_counters).
  /// Always 0 on the CPU.
  std::int64_t timed_calls = 0;
  double device_ms = 0.0;
};

}  // namespace posenc

// The argument block of the device position-tracker step: plain data packed by tracker_launch.cu, read by tracker_kernels.cuh.
#pragma once

#include <cstdint>

namespace posenc::gpu::detail {

/// Threads of the (single-block) step kernel.
inline constexpr int tracker_block_threads = 1024;
/// Entries of one step (GpuPositionTracker::max_entries): their offsets live in shared memory.
inline constexpr int tracker_max_entries = 4096;

/// What went wrong with an entry, as recorded in the fault word (see tracker_fault_key).
enum class TrackerFault : std::uint32_t {
  none = 0,
  bad_slot = 1,          ///< value: the slot
  repeated_slot = 2,     ///< value: the slot
  bad_new_tokens = 3,    ///< value: new_tokens
  position_range = 4,    ///< value: the first position (or block) outside [0, limit)
  too_many_tokens = 5,   ///< value: the step's total; nothing was written
  planned_mismatch = 6,  ///< value: the device's total (the host planned another)
};

/// One 64-bit key per fault, so atomicMin keeps the first entry's fault with its own value:
/// entry (bits 63..40) | kind (39..32) | value biased into uint32 (31..0), clamped to int32.
inline constexpr unsigned long long tracker_no_fault = ~0ull;

struct TrackerStepParams {
  const std::int32_t* slots = nullptr;
  const std::int32_t* new_tokens = nullptr;
  std::int64_t entries = 0;
  std::int64_t planned_tokens = 0;
  std::int64_t* lengths = nullptr;
  const std::int64_t* rope_deltas = nullptr;
  const std::int64_t* pin_froms = nullptr;
  const std::int64_t* pin_values = nullptr;
  std::int32_t* first_entry = nullptr;  ///< per slot; INT32_MAX between steps
  unsigned long long* fault = nullptr;
  std::int64_t* out = nullptr;
  std::int64_t slot_count = 0;
  std::int64_t max_tokens = 0;
  std::int64_t position_limit = 0;
  std::int32_t streams = 1;
};

}  // namespace posenc::gpu::detail

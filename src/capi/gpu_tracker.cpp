// C ABI: the device position tracker for continuous batching (gpu::GpuPositionTracker), streams as void*.
#include <string>

#include "capi/common.hpp"

using namespace posenc;
using capi::guard;

extern "C" {

posenc_status posenc_gpu_position_tracker_create(const posenc_position_tracker* host, int32_t device,
                                                 int64_t max_tokens, posenc_gpu_position_tracker** out) {
  return guard(__func__, [&] {
    capi::require(host, "host");
    capi::require(out, "out");
    *out = new posenc_gpu_position_tracker{gpu::GpuPositionTracker(host->tracker, capi::open_device(device), max_tokens)};
  });
}

void posenc_gpu_position_tracker_destroy(posenc_gpu_position_tracker* tracker) { delete tracker; }

posenc_status posenc_gpu_position_tracker_step(posenc_gpu_position_tracker* tracker, const int32_t* slots,
                                               const int32_t* new_tokens, size_t entry_count, int64_t total_tokens,
                                               int64_t* positions, void* stream) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    // Checked here too (the C++ call checks its int64 count) so that no size_t wraps into a
    // negative count.
    constexpr auto limit = static_cast<size_t>(gpu::GpuPositionTracker::max_entries);
    if (entry_count > limit)
      throw Error(ErrorKind::invalid_argument, "entry_count " + std::to_string(entry_count) + " is above " +
                                                   std::to_string(limit) + ", the entries one step may hold");
    if (entry_count > 0) {
      capi::require(slots, "slots");
      capi::require(new_tokens, "new_tokens");
      capi::require(positions, "positions");
    }
    tracker->tracker.step(slots, new_tokens, static_cast<int64_t>(entry_count), total_tokens, positions,
                          capi::stream_ref(stream));
  });
}

posenc_status posenc_gpu_position_tracker_positions(const posenc_gpu_position_tracker* tracker,
                                                    const int64_t* positions, int64_t total_tokens,
                                                    posenc_positions* out) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    capi::require(positions, "positions");
    capi::require(out, "out");
    const int64_t max_tokens = tracker->tracker.max_tokens();
    if (total_tokens < 0 || total_tokens > max_tokens)
      throw Error(ErrorKind::invalid_argument, "total_tokens " + std::to_string(total_tokens) +
                                                   " is outside [0, " + std::to_string(max_tokens) + "] (max_tokens)");
    const PositionsView view = tracker->tracker.positions(positions, total_tokens);
    posenc_positions value;
    std::memset(&value, 0, sizeof value);
    value.data = view.data;
    value.type = POSENC_INDEX_I64;
    value.streams = view.streams;
    value.count = view.count;
    value.stream_stride = view.stream_stride;
    *out = value;
  });
}

posenc_status posenc_gpu_position_tracker_check(const posenc_gpu_position_tracker* tracker, void* stream) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    tracker->tracker.check(capi::stream_ref(stream));
  });
}

posenc_status posenc_gpu_position_tracker_lengths(const posenc_gpu_position_tracker* tracker, int64_t* out,
                                                  size_t capacity, void* stream) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    const auto needed = static_cast<size_t>(tracker->tracker.slots());
    if (needed > 0) capi::require(out, "out");
    if (capacity < needed)
      throw Error(ErrorKind::invalid_argument, "capacity " + std::to_string(capacity) + " is below the " +
                                                   std::to_string(needed) + " slots of the tracker");
    const std::vector<int64_t> lengths = tracker->tracker.lengths(capi::stream_ref(stream));
    std::copy(lengths.begin(), lengths.end(), out);
  });
}

posenc_status posenc_gpu_position_tracker_streams(const posenc_gpu_position_tracker* tracker, int32_t* out) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    capi::require(out, "out");
    *out = tracker->tracker.streams();
  });
}

posenc_status posenc_gpu_position_tracker_slots(const posenc_gpu_position_tracker* tracker, int64_t* out) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    capi::require(out, "out");
    *out = tracker->tracker.slots();
  });
}

posenc_status posenc_gpu_position_tracker_max_tokens(const posenc_gpu_position_tracker* tracker, int64_t* out) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    capi::require(out, "out");
    *out = tracker->tracker.max_tokens();
  });
}

}  // extern "C"

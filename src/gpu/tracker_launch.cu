// GpuPositionTracker: uploads a host tracker's slots once, then launches one step kernel per step (host code only).
#include <algorithm>
#include <climits>
#include <cstdint>
#include <new>
#include <span>
#include <string>
#include <vector>

#include "core/memory.hpp"
#include "gpu/check.hpp"
#include "gpu/tracker_kernels.cuh"
#include "gpu/tracker_params.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"

namespace posenc::gpu {

/// Device layout: lengths, rope_deltas, pin_froms, pin_values (int64 each, `slots` entries), then
/// first_entry (int32, `slots`), then the fault word (8-byte aligned).
struct GpuPositionTracker::State {
  Device device;
  int streams = 1;
  std::int64_t slots = 0;
  std::int64_t max_tokens = 0;
  std::int64_t position_limit = 0;
  std::int64_t layout = 1;  ///< entries per array: max(slots, 1)
  DeviceBuffer memory;
  std::int64_t* array(int i) const { return static_cast<std::int64_t*>(memory.data()) + i * layout; }
  std::int64_t* lengths() const { return array(0); }
  std::int32_t* first_entry() const { return reinterpret_cast<std::int32_t*>(array(4)); }
  unsigned long long* fault() const {
    // after first_entry, rounded up to 8 bytes
    return reinterpret_cast<unsigned long long*>(array(4) + (layout + 1) / 2);
  }
};

namespace {
constexpr const char* step_op = "posenc position tracker step";
}  // namespace

GpuPositionTracker::GpuPositionTracker(const glm::PositionTracker& host, const Device& device,
                                       std::int64_t max_tokens) try
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  if (max_tokens < 1 || max_tokens > INT_MAX) {
    throw Error(ErrorKind::invalid_argument, "GpuPositionTracker: max_tokens " + std::to_string(max_tokens) +
                                                 " is outside [1, " + std::to_string(INT_MAX) + "]");
  }
  s.device = device;
  s.streams = host.streams();
  s.slots = host.size();
  s.max_tokens = max_tokens;
  s.position_limit = host.position_limit();

  // One allocation for everything, at construction; step() allocates nothing.
  const std::int64_t n = std::max<std::int64_t>(s.slots, 1);
  s.layout = n;
  const std::int64_t words = 4 * n + (n + 1) / 2 + 1;
  std::vector<std::int64_t> image = posenc::detail::allocating(
      "the GpuPositionTracker's host image of its slots", words * std::int64_t{sizeof(std::int64_t)},
      [&] { return std::vector<std::int64_t>(static_cast<std::size_t>(words), 0); });
  const auto put = [&](int array, std::span<const std::int64_t> values) {
    std::copy(values.begin(), values.end(), image.begin() + array * n);
  };
  put(0, host.lengths());
  put(1, host.rope_deltas());
  put(2, host.pin_froms());
  put(3, host.pin_values());
  auto* first = reinterpret_cast<std::int32_t*>(image.data() + 4 * n);
  for (std::int64_t i = 0; i < n; ++i) first[i] = INT32_MAX;
  image.back() = static_cast<std::int64_t>(detail::tracker_no_fault);
  s.memory = DeviceBuffer(device, static_cast<std::int64_t>(image.size() * sizeof(std::int64_t)));
  Stream setup(device);
  s.memory.upload(image.data(), s.memory.size_bytes(), setup.ref());
  setup.synchronize();
} catch (const std::bad_alloc&) {
  posenc::detail::throw_out_of_host_memory("the GpuPositionTracker's state");
}

GpuPositionTracker::~GpuPositionTracker() = default;
GpuPositionTracker::GpuPositionTracker(GpuPositionTracker&&) noexcept = default;
GpuPositionTracker& GpuPositionTracker::operator=(GpuPositionTracker&&) noexcept = default;

int GpuPositionTracker::streams() const noexcept { return state_->streams; }
std::int64_t GpuPositionTracker::slots() const noexcept { return state_->slots; }
std::int64_t GpuPositionTracker::max_tokens() const noexcept { return state_->max_tokens; }

void GpuPositionTracker::step(const std::int32_t* slots, const std::int32_t* new_tokens,
                              std::int64_t entries, std::int64_t total_tokens, std::int64_t* out,
                              StreamRef stream) {
  if (!state_) throw Error(ErrorKind::invalid_argument, "GpuPositionTracker::step on a moved-from tracker");
  State& s = *state_;
  if (entries < 0 || entries > max_entries) {
    throw Error(ErrorKind::invalid_argument, "GpuPositionTracker::step: " + std::to_string(entries) +
                                                 " entries, outside [0, " + std::to_string(max_entries) + "]");
  }
  if (total_tokens < 0 || total_tokens > s.max_tokens) {
    throw Error(ErrorKind::invalid_argument, "GpuPositionTracker::step: total_tokens " +
                                                 std::to_string(total_tokens) + " is outside [0, " +
                                                 std::to_string(s.max_tokens) + "] (max_tokens)");
  }
  if (entries > 0 && (slots == nullptr || new_tokens == nullptr || out == nullptr)) {
    throw Error(ErrorKind::invalid_argument, "GpuPositionTracker::step: null slots, new_tokens or out pointer");
  }
  if (entries == 0) return;

  detail::TrackerStepParams p;
  p.slots = slots;
  p.new_tokens = new_tokens;
  p.entries = entries;
  p.planned_tokens = total_tokens;
  p.lengths = s.lengths();
  p.rope_deltas = s.array(1);
  p.pin_froms = s.array(2);
  p.pin_values = s.array(3);
  p.first_entry = s.first_entry();
  p.fault = s.fault();
  p.out = out;
  p.slot_count = s.slots;
  p.max_tokens = s.max_tokens;
  p.position_limit = s.position_limit;
  p.streams = s.streams;

  detail::LaunchRecord record;
  record.op = step_op;
  record.tokens = total_tokens;
  const auto native = static_cast<cudaStream_t>(stream.native());
  detail::record_launch(native, record);
  detail::tracker_step_kernel<<<1, detail::tracker_block_threads, 0, native>>>(p);
  POSENC_GPU_CHECK_LAUNCH(record);
}

void GpuPositionTracker::check(StreamRef stream) const {
  if (!state_) throw Error(ErrorKind::invalid_argument, "GpuPositionTracker::check on a moved-from tracker");
  const State& s = *state_;
  stream.synchronize();
  const auto native = static_cast<cudaStream_t>(stream.native());
  unsigned long long key = 0;
  POSENC_GPU_CHECK(cudaMemcpyAsync(&key, s.fault(), sizeof(key), cudaMemcpyDeviceToHost, native));
  POSENC_GPU_CHECK(cudaStreamSynchronize(native));
  if (key == detail::tracker_no_fault) return;
  const unsigned long long clear = detail::tracker_no_fault;
  POSENC_GPU_CHECK(cudaMemcpyAsync(s.fault(), &clear, sizeof(clear), cudaMemcpyHostToDevice, native));
  POSENC_GPU_CHECK(cudaStreamSynchronize(native));

  const auto entry = static_cast<std::int64_t>(key >> 40);
  const auto kind = static_cast<detail::TrackerFault>((key >> 32) & 0xffu);
  const auto value = static_cast<std::int32_t>(static_cast<std::uint32_t>(key) ^ 0x80000000u);
  const std::string at = "GPU position tracker: entry " + std::to_string(entry);
  switch (kind) {
    case detail::TrackerFault::bad_slot:
      throw Error(ErrorKind::out_of_range, at + " names slot " + std::to_string(value) + ", outside [0, " +
                                               std::to_string(s.slots) + ")");
    case detail::TrackerFault::repeated_slot:
      throw Error(ErrorKind::invalid_argument,
                  at + " repeats slot " + std::to_string(value) + " (a slot may appear once per step)");
    case detail::TrackerFault::bad_new_tokens:
      throw Error(ErrorKind::invalid_argument, at + " has new_tokens " + std::to_string(value) + " (must be >= 1)");
    case detail::TrackerFault::position_range:
      throw Error(ErrorKind::out_of_range, at + " would produce position " + std::to_string(value) +
                                               ", outside [0, " + std::to_string(s.position_limit) + ")");
    case detail::TrackerFault::too_many_tokens:
      throw Error(ErrorKind::out_of_range, "GPU position tracker: the step's entries add up to " +
                                               std::to_string(value) + " tokens, more than max_tokens " +
                                               std::to_string(s.max_tokens) + " (nothing was written)");
    case detail::TrackerFault::planned_mismatch:
      throw Error(ErrorKind::invalid_argument, "GPU position tracker: the step's entries add up to " +
                                                   std::to_string(value) +
                                                   " tokens, not the total_tokens the host passed");
    case detail::TrackerFault::none:
      break;
  }
  throw Error(ErrorKind::vendor, "GPU position tracker: unreadable fault word");
}

std::vector<std::int64_t> GpuPositionTracker::lengths(StreamRef stream) const {
  const State& s = *state_;
  std::vector<std::int64_t> out(static_cast<std::size_t>(s.slots));
  if (s.slots == 0) return out;
  s.memory.download(out.data(), s.slots * std::int64_t{sizeof(std::int64_t)}, stream);
  stream.synchronize();
  return out;
}

}  // namespace posenc::gpu

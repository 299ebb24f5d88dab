// gpu.hpp for builds without CUDA: nothing is available, and every operation says posenc was built without GPU support.
#include <string>

#include "gpu/alloc_faults.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"

namespace posenc::gpu {
namespace {

constexpr const char* reason = "posenc was built without GPU support (no CUDA compiler at configure time)";

[[noreturn]] void unsupported(const char* what) {
  throw Error(ErrorKind::unsupported, std::string(what) + ": " + reason);
}

}  // namespace

bool available() noexcept { return false; }
int device_count() noexcept { return 0; }
std::string unavailable_reason() { return reason; }
const char* backend_name() noexcept { return "none"; }

Device Device::open(int) { unsupported("Device::open"); }
MemoryInfo Device::memory_info() const { unsupported("Device::memory_info"); }
void Device::make_current() const { unsupported("Device::make_current"); }
void Device::synchronize() const { unsupported("Device::synchronize"); }

void StreamRef::synchronize() const { unsupported("StreamRef::synchronize"); }

Stream::Stream(const Device&) { unsupported("Stream"); }
Stream::~Stream() = default;
Stream::Stream(Stream&& other) noexcept : stream_(other.stream_), ordinal_(other.ordinal_) {}
Stream& Stream::operator=(Stream&&) noexcept { return *this; }

DeviceBuffer::DeviceBuffer(const Device&, std::int64_t) { unsupported("DeviceBuffer"); }
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer::DeviceBuffer(DeviceBuffer&&) noexcept {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&&) noexcept { return *this; }
void DeviceBuffer::upload(const void*, std::int64_t, StreamRef, std::int64_t) {
  unsupported("DeviceBuffer::upload");
}
void DeviceBuffer::download(void*, std::int64_t, StreamRef, std::int64_t) const {
  unsupported("DeviceBuffer::download");
}
void DeviceBuffer::fill_bytes(unsigned char, StreamRef) { unsupported("DeviceBuffer::fill_bytes"); }

struct MemoryPool::State {};
MemoryPool::MemoryPool(const Device&) { unsupported("MemoryPool"); }
MemoryPool::~MemoryPool() = default;
DeviceBuffer MemoryPool::acquire(std::int64_t) { unsupported("MemoryPool::acquire"); }
void MemoryPool::release(DeviceBuffer&&) { unsupported("MemoryPool::release"); }
void MemoryPool::trim() { unsupported("MemoryPool::trim"); }
std::int64_t MemoryPool::cached_bytes() const { unsupported("MemoryPool::cached_bytes"); }
std::int64_t MemoryPool::allocation_count() const { unsupported("MemoryPool::allocation_count"); }

struct GpuEngine::State {};
GpuEngine::GpuEngine(const RopeSpec&, const Device&) { unsupported("GpuEngine"); }
GpuEngine::~GpuEngine() = default;
GpuEngine::GpuEngine(GpuEngine&&) noexcept = default;
GpuEngine& GpuEngine::operator=(GpuEngine&&) noexcept = default;
void GpuEngine::apply(const RopeArgs&, StreamRef) const { unsupported("GpuEngine::apply"); }
void GpuEngine::append(const AppendArgs&, StreamRef) const { unsupported("GpuEngine::append"); }
void GpuEngine::check(StreamRef) const { unsupported("GpuEngine::check"); }
void GpuEngine::enable_counters(bool, bool) const { unsupported("GpuEngine::enable_counters"); }
OperationCounters GpuEngine::counters() const { unsupported("GpuEngine::counters"); }
void GpuEngine::reset_counters() const { unsupported("GpuEngine::reset_counters"); }
const RopeSpec& GpuEngine::spec() const noexcept {
  static const RopeSpec none;
  return none;
}
const FrequencyTable& GpuEngine::frequencies() const noexcept {
  static const FrequencyTable none;
  return none;
}
const Device& GpuEngine::device() const noexcept {
  static const Device none;
  return none;
}

struct GpuPositionTracker::State {};
GpuPositionTracker::GpuPositionTracker(const glm::PositionTracker&, const Device&, std::int64_t) {
  unsupported("GpuPositionTracker");
}
GpuPositionTracker::~GpuPositionTracker() = default;
GpuPositionTracker::GpuPositionTracker(GpuPositionTracker&&) noexcept = default;
GpuPositionTracker& GpuPositionTracker::operator=(GpuPositionTracker&&) noexcept = default;
int GpuPositionTracker::streams() const noexcept { return 0; }
std::int64_t GpuPositionTracker::slots() const noexcept { return 0; }
std::int64_t GpuPositionTracker::max_tokens() const noexcept { return 0; }
void GpuPositionTracker::step(const std::int32_t*, const std::int32_t*, std::int64_t, std::int64_t,
                              std::int64_t*, StreamRef) {
  unsupported("GpuPositionTracker::step");
}
void GpuPositionTracker::check(StreamRef) const { unsupported("GpuPositionTracker::check"); }
std::vector<std::int64_t> GpuPositionTracker::lengths(StreamRef) const {
  unsupported("GpuPositionTracker::lengths");
}

namespace detail {
// No device allocation ever happens in this build; the seam exists so its tests link.
void fail_device_allocations(std::int64_t, std::int64_t) noexcept {}
std::int64_t device_allocation_attempts() noexcept { return 0; }
}  // namespace detail

}  // namespace posenc::gpu

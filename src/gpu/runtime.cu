// The GPU runtime of gpu.hpp (device, streams, buffers, caching pool) and the error/launch-record machinery of check.hpp.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "core/memory.hpp"
#include "gpu/alloc_faults.hpp"
#include "gpu/check.hpp"
#include "gpu/device_scope.hpp"
#include "gpu/vendor.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"

namespace posenc::gpu {
namespace detail {
namespace {

/// "src/gpu/runtime.cu" rather than the build machine's absolute path.
const char* short_path(const char* file) {
  const char* best = file;
  for (const char* p = file; *p != '\0'; ++p) {
    if (std::strncmp(p, "src/", 4) == 0 || std::strncmp(p, "tests/", 6) == 0) best = p;
  }
  return best;
}

std::string vendor_error_text(cudaError_t error) {
  std::string text = vendor_name;
  text += " error: ";
  text += cudaGetErrorString(error);
  text += " (";
  text += cudaGetErrorName(error);
  text += ", code ";
  text += std::to_string(static_cast<int>(error));
  text += ")";
  return text;
}

std::string where(const char* file, int line) {
  return std::string(short_path(file)) + ":" + std::to_string(line);
}

// ---- the launch registry ------------------------------------------------------------------------
//
// A fixed table of the latest posenc launch per stream. Recording copies a POD under a mutex:
// no allocation and no formatting on the launch path. Streams beyond the table's size evict the
// least recently recorded one; a fault on such a stream falls back to the latest launch anywhere.

constexpr int registry_slots = 64;

struct RegistryEntry {
  cudaStream_t stream = nullptr;
  LaunchRecord record;
  std::uint64_t sequence = 0;  // 0 = unused
};

struct Registry {
  std::mutex mutex;
  RegistryEntry entries[registry_slots];
  std::uint64_t sequence = 0;
};

Registry& registry() {
  static Registry instance;
  return instance;
}

/// Latest record for `stream` (or, when `any_stream` or none matches, the latest of all).
bool find_launch(cudaStream_t stream, bool any_stream, LaunchRecord* out) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const RegistryEntry* best = nullptr;
  const RegistryEntry* latest = nullptr;
  for (const RegistryEntry& e : r.entries) {
    if (e.sequence == 0) continue;
    if (latest == nullptr || e.sequence > latest->sequence) latest = &e;
    if (!any_stream && e.stream == stream) best = &e;
  }
  if (best == nullptr) best = latest;
  if (best == nullptr) return false;
  *out = best->record;
  return true;
}

}  // namespace

void record_launch(cudaStream_t stream, const LaunchRecord& record) noexcept {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  RegistryEntry* slot = nullptr;
  RegistryEntry* oldest = &r.entries[0];
  for (RegistryEntry& e : r.entries) {
    if (e.sequence != 0 && e.stream == stream) {
      slot = &e;
      break;
    }
    if (e.sequence < oldest->sequence) oldest = &e;
  }
  if (slot == nullptr) slot = oldest;
  slot->stream = stream;
  slot->record = record;
  slot->sequence = ++r.sequence;
}

void forget_stream(cudaStream_t stream) noexcept {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (RegistryEntry& e : r.entries) {
    if (e.sequence != 0 && e.stream == stream) e = RegistryEntry{};
  }
}

std::string describe(const LaunchRecord& rec) {
  // Appends rather than `"[" + std::to_string(...)`, which trips GCC 12's -Wrestrict false positive.
  const auto dims = [](std::int64_t t, std::int64_t h, std::int64_t d) {
    std::string text = "[";
    text += std::to_string(t);
    text += ",";
    text += std::to_string(h);
    text += ",";
    text += std::to_string(d);
    text += "]";
    return text;
  };
  std::string s = "q=" + dims(rec.tokens, rec.q_heads, rec.head_dim);
  s += rec.k_heads > 0 ? " k=" + dims(rec.tokens, rec.k_heads, rec.head_dim) : std::string(" k=none");
  s += " ";
  s += to_string(rec.dtype);
  s += " ";
  s += to_string(rec.pairing);
  s += " ";
  s += to_string(rec.numerics);
  s += " rotary=" + std::to_string(rec.rotary_dim) + "@" + std::to_string(rec.rotary_offset);
  s += rec.in_place ? " in-place" : " out-of-place";
  s += " ";
  s += to_string(rec.positions);
  s += " positions";
  s += rec.vectorized ? " vectorized" : " generic";
  return s;
}

ErrorKind error_kind(cudaError_t error) noexcept {
  return error == cudaErrorMemoryAllocation ? ErrorKind::out_of_memory : ErrorKind::vendor;
}

void throw_vendor_error(cudaError_t error, const char* call, const char* file, int line) {
  (void)cudaGetLastError();  // clear a recoverable error so it does not resurface later
  throw Error(error_kind(error), vendor_error_text(error) + " in `" + call + "` at " + where(file, line));
}

// ---- device allocation, and its fault-injection seam (alloc_faults.hpp) --------------------------

namespace {
std::atomic<std::int64_t> allocation_attempts{0};
std::atomic<std::int64_t> fail_from{0};   // attempts numbered [fail_from, fail_until) fail
std::atomic<std::int64_t> fail_until{0};
}  // namespace

void fail_device_allocations(std::int64_t skip, std::int64_t count) noexcept {
  const std::int64_t from = allocation_attempts.load() + std::max<std::int64_t>(skip, 0);
  fail_until.store(0);
  fail_from.store(from);
  fail_until.store(count > 0 ? from + count : 0);
}

std::int64_t device_allocation_attempts() noexcept { return allocation_attempts.load(); }

cudaError_t device_malloc(void** ptr, std::int64_t bytes) noexcept {
  const std::int64_t attempt = allocation_attempts.fetch_add(1);
  if (attempt >= fail_from.load() && attempt < fail_until.load()) [[unlikely]] {
    return cudaErrorMemoryAllocation;  // injected: the vendor allocator is not called
  }
  return cudaMalloc(ptr, static_cast<std::size_t>(bytes));
}

void throw_launch_error(cudaError_t error, const LaunchRecord& record, const char* file,
                        int line) {
  (void)cudaGetLastError();
  throw Error(ErrorKind::vendor, vendor_error_text(error) + " launching " + record.op + " (" +
                                     describe(record) + ") at " + where(file, line));
}

void throw_async_fault(cudaError_t error, cudaStream_t stream, bool any_stream, const char* what,
                       const char* file, int line) {
  (void)cudaGetLastError();
  LaunchRecord record;
  std::string context;
  if (find_launch(stream, any_stream, &record)) {
    context = std::string(" after ") + record.op + " launch (" + describe(record) + ")";
  } else {
    context = " (no posenc launch recorded)";
  }
  throw Error(ErrorKind::vendor, vendor_error_text(error) + context + ", reported by " + what +
                                     " at " + where(file, line));
}

}  // namespace detail

namespace {

using detail::DeviceScope;

void check_range(const char* what, std::int64_t offset, std::int64_t bytes, std::int64_t size) {
  if (offset < 0 || bytes < 0 || offset > size || bytes > size - offset) {
    throw Error(ErrorKind::out_of_range,
                std::string(what) + ": range [" + std::to_string(offset) + ", " +
                    std::to_string(offset) + " + " + std::to_string(bytes) +
                    ") lies outside the buffer of " + std::to_string(size) + " bytes");
  }
}

}  // namespace

// ---- availability -------------------------------------------------------------------------------

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

bool available() noexcept { return device_count() > 0; }

std::string unavailable_reason() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no ") + vendor_name + " device: " + cudaGetErrorString(error) + " (" +
           cudaGetErrorName(error) + ")";
  }
  if (count == 0) return std::string("no ") + vendor_name + " device is visible";
  return "";
}

const char* backend_name() noexcept { return vendor_backend; }

// ---- Device -------------------------------------------------------------------------------------

Device Device::open(int ordinal) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();
    throw Error(ErrorKind::unsupported, std::string("cannot open GPU ") + std::to_string(ordinal) +
                                            ": " + detail::vendor_error_text(error));
  }
  if (ordinal < 0 || ordinal >= count) {
    throw Error(ErrorKind::unsupported, std::string("cannot open GPU ") + std::to_string(ordinal) +
                                            ": " + std::to_string(count) + " " + vendor_name +
                                            " device(s) visible");
  }
  cudaDeviceProp prop{};
  POSENC_GPU_CHECK(cudaGetDeviceProperties(&prop, ordinal));
  Device d;
  d.ordinal_ = ordinal;
  d.name_ = prop.name;
  d.sm_count_ = prop.multiProcessorCount;
  d.cc_ = prop.major * 10 + prop.minor;
  d.l2_bytes_ = prop.l2CacheSize;
  d.total_bytes_ = static_cast<std::int64_t>(prop.totalGlobalMem);
  return d;
}

MemoryInfo Device::memory_info() const {
  DeviceScope scope(ordinal_);
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
  POSENC_GPU_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return {static_cast<std::int64_t>(free_bytes), static_cast<std::int64_t>(total_bytes)};
}

void Device::make_current() const { POSENC_GPU_CHECK(cudaSetDevice(ordinal_)); }

void Device::synchronize() const {
  DeviceScope scope(ordinal_);
  const cudaError_t error = cudaDeviceSynchronize();
  if (error != cudaSuccess) {
    detail::throw_async_fault(error, nullptr, true, "cudaDeviceSynchronize", __FILE__, __LINE__);
  }
}

// ---- streams ------------------------------------------------------------------------------------

void StreamRef::synchronize() const {
  const auto stream = static_cast<cudaStream_t>(stream_);
  const cudaError_t error = cudaStreamSynchronize(stream);
  if (error != cudaSuccess) {
    detail::throw_async_fault(error, stream, false, "cudaStreamSynchronize", __FILE__, __LINE__);
  }
}

Stream::Stream(const Device& device) : ordinal_(device.ordinal()) {
  DeviceScope scope(ordinal_);
  cudaStream_t stream = nullptr;
  POSENC_GPU_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_ = stream;
}

Stream::~Stream() {
  if (stream_ == nullptr) return;
  const auto stream = static_cast<cudaStream_t>(stream_);
  detail::forget_stream(stream);
  DeviceScope scope(ordinal_, std::nothrow);
  // Pending work still completes; the handle is released when it has.
  if (cudaStreamDestroy(stream) != cudaSuccess) (void)cudaGetLastError();
}

Stream::Stream(Stream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)), ordinal_(other.ordinal_) {}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    Stream old(std::move(*this));
    stream_ = std::exchange(other.stream_, nullptr);
    ordinal_ = other.ordinal_;
  }
  return *this;
}

// ---- DeviceBuffer -------------------------------------------------------------------------------

DeviceBuffer::DeviceBuffer(const Device& device, std::int64_t bytes) : ordinal_(device.ordinal()) {
  if (bytes < 0) {
    throw Error(ErrorKind::invalid_argument,
                "DeviceBuffer: negative size " + std::to_string(bytes) + " bytes");
  }
  if (bytes == 0) return;
  DeviceScope scope(ordinal_);
  void* ptr = nullptr;
  const cudaError_t error = detail::device_malloc(&ptr, bytes);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();
    throw Error(detail::error_kind(error), detail::vendor_error_text(error) + " in `cudaMalloc` allocating " +
                                       std::to_string(bytes) + " bytes on GPU " +
                                       std::to_string(ordinal_) + " (" + device.name() + ")");
  }
  ptr_ = ptr;
  bytes_ = bytes;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ == nullptr) return;
  DeviceScope scope(ordinal_, std::nothrow);
  if (cudaFree(ptr_) != cudaSuccess) (void)cudaGetLastError();
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      ordinal_(other.ordinal_) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    DeviceBuffer old(std::move(*this));
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    ordinal_ = other.ordinal_;
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, std::int64_t bytes, StreamRef stream,
                          std::int64_t offset) {
  check_range("DeviceBuffer::upload", offset, bytes, bytes_);
  if (bytes == 0) return;
  if (host == nullptr) throw Error(ErrorKind::invalid_argument, "DeviceBuffer::upload: host is null");
  DeviceScope scope(ordinal_);
  POSENC_GPU_CHECK(cudaMemcpyAsync(static_cast<char*>(ptr_) + offset, host,
                                   static_cast<std::size_t>(bytes), cudaMemcpyHostToDevice,
                                   static_cast<cudaStream_t>(stream.native())));
}

void DeviceBuffer::download(void* host, std::int64_t bytes, StreamRef stream,
                            std::int64_t offset) const {
  check_range("DeviceBuffer::download", offset, bytes, bytes_);
  if (bytes == 0) return;
  if (host == nullptr) {
    throw Error(ErrorKind::invalid_argument, "DeviceBuffer::download: host is null");
  }
  DeviceScope scope(ordinal_);
  POSENC_GPU_CHECK(cudaMemcpyAsync(host, static_cast<const char*>(ptr_) + offset,
                                   static_cast<std::size_t>(bytes), cudaMemcpyDeviceToHost,
                                   static_cast<cudaStream_t>(stream.native())));
}

void DeviceBuffer::fill_bytes(unsigned char value, StreamRef stream) {
  if (bytes_ == 0) return;
  DeviceScope scope(ordinal_);
  POSENC_GPU_CHECK(cudaMemsetAsync(ptr_, value, static_cast<std::size_t>(bytes_),
                                   static_cast<cudaStream_t>(stream.native())));
}

// ---- MemoryPool ---------------------------------------------------------------------------------

namespace {

constexpr std::int64_t pool_min_class = 512;
constexpr std::int64_t pool_octave_split_from = std::int64_t{1} << 20;
constexpr std::int64_t pool_max_request = std::int64_t{1} << 60;

/// Size classes: powers of two up to 1 MiB, then 8 steps per octave (waste at most 1/8).
std::int64_t size_class(std::int64_t bytes) {
  if (bytes <= pool_min_class) return pool_min_class;
  const auto u = static_cast<std::uint64_t>(bytes);
  if (bytes <= pool_octave_split_from) return static_cast<std::int64_t>(std::bit_ceil(u));
  const std::uint64_t step = std::bit_floor(u) / 8;
  return static_cast<std::int64_t>((u + step - 1) / step * step);
}

}  // namespace

struct MemoryPool::State {
  Device device;
  mutable std::mutex mutex;
  std::map<std::int64_t, std::vector<void*>> free_blocks;  // size class -> cached blocks
  std::int64_t cached = 0;
  std::int64_t allocations = 0;

  /// Frees every cached block; the caller holds the mutex.
  void free_all() noexcept {
    DeviceScope scope(device.ordinal(), std::nothrow);
    for (auto& [size, blocks] : free_blocks) {
      for (void* p : blocks) {
        if (cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
      }
    }
    free_blocks.clear();
    cached = 0;
  }
};

MemoryPool::MemoryPool(const Device& device) try : state_(std::make_unique<State>()) {
  state_->device = device;
} catch (const std::bad_alloc&) {
  posenc::detail::throw_out_of_host_memory("a MemoryPool's state", sizeof(State));
}

MemoryPool::~MemoryPool() {
  if (!state_) return;
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->free_all();
}

DeviceBuffer MemoryPool::acquire(std::int64_t bytes) {
  if (bytes < 0 || bytes > pool_max_request) {
    throw Error(ErrorKind::invalid_argument, "MemoryPool::acquire: cannot serve " +
                                                 std::to_string(bytes) + " bytes (limit 0.." +
                                                 std::to_string(pool_max_request) + ")");
  }
  DeviceBuffer buffer;
  buffer.ordinal_ = state_->device.ordinal();
  if (bytes == 0) return buffer;
  const std::int64_t cls = size_class(bytes);
  std::lock_guard<std::mutex> lock(state_->mutex);
  auto it = state_->free_blocks.find(cls);
  if (it != state_->free_blocks.end() && !it->second.empty()) {
    buffer.ptr_ = it->second.back();
    buffer.bytes_ = cls;
    it->second.pop_back();
    state_->cached -= cls;
    return buffer;
  }
  DeviceScope scope(state_->device.ordinal());
  void* ptr = nullptr;
  cudaError_t error = detail::device_malloc(&ptr, cls);
  if (error == cudaErrorMemoryAllocation && state_->cached > 0) {
    // Blocks of other classes are cached: give them back and try once more.
    (void)cudaGetLastError();
    state_->free_all();
    error = detail::device_malloc(&ptr, cls);
  }
  if (error != cudaSuccess) {
    (void)cudaGetLastError();
    throw Error(detail::error_kind(error), detail::vendor_error_text(error) +
                                       " in `cudaMalloc` for MemoryPool::acquire(" +
                                       std::to_string(bytes) + ") (size class " +
                                       std::to_string(cls) + " bytes) on GPU " +
                                       std::to_string(buffer.ordinal_));
  }
  ++state_->allocations;
  buffer.ptr_ = ptr;
  buffer.bytes_ = cls;
  return buffer;
}

void MemoryPool::release(DeviceBuffer&& buffer) {
  if (buffer.ptr_ == nullptr) return;
  if (buffer.ordinal_ != state_->device.ordinal()) {
    throw Error(ErrorKind::invalid_argument,
                "MemoryPool::release: buffer lives on GPU " + std::to_string(buffer.ordinal_) +
                    ", the pool on GPU " + std::to_string(state_->device.ordinal()));
  }
  std::lock_guard<std::mutex> lock(state_->mutex);
  try {
    state_->free_blocks[buffer.bytes_].push_back(buffer.ptr_);
  } catch (const std::bad_alloc&) {
    return;  // no host memory to remember the block: `buffer` still owns it and frees it
  }
  state_->cached += buffer.bytes_;
  buffer.ptr_ = nullptr;
  buffer.bytes_ = 0;
}

void MemoryPool::trim() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->free_all();
}

std::int64_t MemoryPool::cached_bytes() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->cached;
}

std::int64_t MemoryPool::allocation_count() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->allocations;
}

}  // namespace posenc::gpu

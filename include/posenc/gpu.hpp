// The GPU runtime (device, stream, buffers, pool) and the GPU RoPE engine; no vendor header leaks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "posenc/counters.hpp"
#include "posenc/glm.hpp"
#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"

namespace posenc {
struct AppendArgs;  // kv_cache.hpp
}  // namespace posenc

namespace posenc::gpu {

/// True when posenc was built with CUDA or HIP and at least one device is visible.
bool available() noexcept;

/// Number of visible devices (0 when built without GPU support or none is present).
int device_count() noexcept;

/// Why no GPU can be used ("built without CUDA/HIP", "no CUDA device: <vendor string>"), or "".
std::string unavailable_reason();

/// "cuda" or "hip" (the backend this build was compiled for), or "none".
const char* backend_name() noexcept;

struct MemoryInfo {
  std::int64_t free_bytes = 0;
  std::int64_t total_bytes = 0;
};

/// A device handle: which GPU, and the properties launch shapes are chosen from. Cheap to copy.
class Device {
 public:
  /// Opens device `ordinal`; throws posenc::Error(unsupported/vendor) when there is none.
  static Device open(int ordinal = 0);

  int ordinal() const noexcept { return ordinal_; }
  const std::string& name() const noexcept { return name_; }
  int multiprocessor_count() const noexcept { return sm_count_; }
  int compute_capability() const noexcept { return cc_; }  ///< major * 10 + minor
  std::int64_t l2_bytes() const noexcept { return l2_bytes_; }
  std::int64_t total_memory_bytes() const noexcept { return total_bytes_; }

  /// Free and total device memory now.
  MemoryInfo memory_info() const;
  /// Makes this the calling thread's current device.
  void make_current() const;
  /// Waits for all work on the device; surfaces asynchronous faults as posenc::Error(vendor).
  void synchronize() const;

 private:
  int ordinal_ = -1;
  std::string name_;
  int sm_count_ = 0;
  int cc_ = 0;
  std::int64_t l2_bytes_ = 0;
  std::int64_t total_bytes_ = 0;
};

/// Non-owning reference to a vendor stream (cudaStream_t / hipStream_t), passed last to every GPU
/// operation. Constructing one from 0 or nullptr is a compile error: the legacy default stream
/// must be asked for by name.
class StreamRef {
 public:
  explicit StreamRef(void* native_stream) noexcept : stream_(native_stream) {}
  StreamRef(int) = delete;
  StreamRef(std::nullptr_t) = delete;

  /// The legacy default stream, explicitly.
  static StreamRef legacy_default() noexcept { return StreamRef(static_cast<void*>(nullptr), 0); }

  void* native() const noexcept { return stream_; }
  /// Waits for the stream. An asynchronous fault of an earlier posenc launch on this stream is
  /// reported as posenc::Error(vendor) naming that operation and its dimensions.
  void synchronize() const;

 private:
  StreamRef(void* s, int) noexcept : stream_(s) {}
  void* stream_;
};

/// An owning stream (non-blocking with respect to the legacy default stream). Move-only.
class Stream {
 public:
  explicit Stream(const Device& device);
  ~Stream();
  Stream(Stream&&) noexcept;
  Stream& operator=(Stream&&) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  StreamRef ref() const noexcept { return StreamRef(stream_); }
  void synchronize() const { ref().synchronize(); }

 private:
  void* stream_ = nullptr;
  int ordinal_ = -1;
};

/// Move-only owner of one device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  /// Allocates `bytes` on `device`; throws posenc::Error with the vendor string and the size on
  /// failure: kind out_of_memory when the device is out of memory, else vendor.
  DeviceBuffer(const Device& device, std::int64_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&&) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&&) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const noexcept { return ptr_; }
  std::int64_t size_bytes() const noexcept { return bytes_; }

  /// Host <-> device copies, asynchronous on `stream` (the host memory must stay valid until the
  /// stream reaches them). These are for setup and tests, never called by an apply.
  void upload(const void* host, std::int64_t bytes, StreamRef stream, std::int64_t offset = 0);
  void download(void* host, std::int64_t bytes, StreamRef stream, std::int64_t offset = 0) const;
  /// Sets every byte to `value` on `stream`.
  void fill_bytes(unsigned char value, StreamRef stream);

 private:
  friend class MemoryPool;
  void* ptr_ = nullptr;
  std::int64_t bytes_ = 0;
  int ordinal_ = -1;
};

/// A caching pool: released blocks are kept by size class and handed out again, so steady-state
/// workloads stop calling the vendor allocator. Thread-safe. Blocks are returned with `release`.
class MemoryPool {
 public:
  explicit MemoryPool(const Device& device);
  ~MemoryPool();
  MemoryPool(const MemoryPool&) = delete;
  MemoryPool& operator=(const MemoryPool&) = delete;

  /// A buffer of at least `bytes` (rounded up to the size class). When the device is out of
  /// memory and blocks are cached, they are freed and the allocation is tried once more; if that
  /// fails too, posenc::Error(out_of_memory) names the request and its size class, and the pool
  /// is left empty but usable.
  DeviceBuffer acquire(std::int64_t bytes);
  /// Gives a buffer back to the pool for reuse; the caller must ensure no pending work uses it.
  /// When there is no host memory to record the block, it is freed instead.
  void release(DeviceBuffer&& buffer);
  /// Frees every cached block.
  void trim();
  std::int64_t cached_bytes() const;
  std::int64_t allocation_count() const;  ///< vendor allocations made so far

 private:
  struct State;
  std::unique_ptr<State> state_;
};

/// GPU RoPE engine, built once per (RopeSpec, device). Its frequency data is computed on the host
/// and uploaded once, at construction; `apply` then allocates nothing, copies nothing between
/// host and device and never waits, so calls can be captured in a CUDA/HIP graph.
///
/// Positions: angles are computed from the position inside the kernel (no table indexed by
/// position), so no position value can make a kernel read or write outside a buffer. Positions
/// outside [0, spec.position_limit) are still rotated by their angle, and the first one seen is
/// recorded in a device-side fault word; `check` reports it as posenc::Error(out_of_range) with
/// the token index, the value and the limit.
///
/// A caller's cos/sin cache (RopeArgs::cos_sin, AppendArgs::cos_sin; device memory) is different:
/// it is indexed by position, so a position outside [0, min(cos_sin.rows, spec.position_limit))
/// never indexes it. That token's rows get the identity rotation (cos 1, sin 0: written as they
/// were read, for finite inputs), and `check` reports the first such token as
/// posenc::Error(out_of_range) with its index, the value and the limit (the cache's rows). The
/// cache's entries are read in the kernel's cos/sin table step, once per (token, pair) and tile,
/// in place of the angle computation; everything else is the spec path's launch.
///
/// A spec with a QK norm (RopeSpec::qk_norm; weights RopeArgs::norm / AppendArgs::norm, device
/// memory) runs another kernel in the same single launch: one block per token, one warp per row,
/// which normalises the head in torch's CUDA summation order (hf_arithmetic torch_cuda) or exactly,
/// rotates it and (append) writes the cache row (docs/NUMERICS.md §3.6).
class GpuEngine {
 public:
  GpuEngine(const RopeSpec& spec, const Device& device);
  ~GpuEngine();
  GpuEngine(GpuEngine&&) noexcept;
  GpuEngine& operator=(GpuEngine&&) noexcept;
  GpuEngine(const GpuEngine&) = delete;
  GpuEngine& operator=(const GpuEngine&) = delete;

  /// Rotates Q and K (one launch for both) on `stream`. Pointers are device pointers. Shapes,
  /// strides and dtypes are validated on the host before the launch (nothing is written when it
  /// throws); positions are not read on the host.
  void apply(const RopeArgs& args, StreamRef stream) const;

  /// Fused RoPE + KV-cache append (kv_cache.hpp; include it to build AppendArgs), one launch on
  /// `stream`: Q is rotated in place (or from q_src into q), K is rotated and written with V into
  /// the cache rows of each token's slot, cast to the cache dtype (fp8_e4m3 with its per-tensor
  /// scale). Every pointer is a device pointer, `args.slots` included (positions.count int64
  /// values). The cache receives exactly `apply`'s K bits and V's bits, cast as kv_cache.hpp
  /// says: bit-identical to CpuEngine::append / append_reference in the hf numerics (`accurate`
  /// differs from the CPU as `apply` does, by the device's double-precision sin/cos).
  ///
  /// Host validation is validate_append_args' except what would need device data: positions
  /// and slots are not read on the host. In the kernel a slot outside [-1, cache.slots())
  /// writes nothing (its token's Q is still rotated) and is recorded; `check` reports the first
  /// such token as Error(out_of_range) with its index, the slot and the limit. Slot -1 skips the
  /// token's K and V (padding). Two tokens given the same slot both write that row, in an
  /// unspecified order (the CPU engine rejects this; on the device it would cost a pass over all
  /// slots). Like apply: no allocation, no copy, no synchronization; graph-capturable.
  void append(const AppendArgs& args, StreamRef stream) const;

  /// Synchronizes `stream`, then throws if a kernel fault, a recorded bad position (outside the
  /// spec's limit, or outside a caller's cos/sin cache) or a recorded bad slot is pending (and
  /// clears the record). Cheap enough to call once per step, not meant
  /// for the hot path.
  void check(StreamRef stream) const;

  /// Operation counters (counters.hpp), off by default. Off, a call pays one relaxed atomic
  /// load; on, three relaxed atomic adds. With `device_timing`, each apply/append outside graph
  /// capture also records a pair of events around its launches on the call's stream (events the
  /// engine creates here, once; the hot path still allocates nothing and never waits). Timings
  /// are collected by `counters()` without waiting: pairs whose work has finished are added to
  /// device_ms. While all `timing_pairs` pairs are still pending a call goes untimed (it is
  /// still counted in calls). Turning timing off keeps the events until the engine is destroyed.
  static constexpr int timing_pairs = 256;
  void enable_counters(bool on, bool device_timing = false) const;
  /// Reads the counters (and collects finished device timings). Safe while other threads apply.
  OperationCounters counters() const;
  /// Zeroes the counters; timings still pending are dropped.
  void reset_counters() const;

  const RopeSpec& spec() const noexcept;
  const FrequencyTable& frequencies() const noexcept;
  const Device& device() const noexcept;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

/// The device mirror of glm::PositionTracker for continuous batching: per-slot state (length,
/// rope_delta, pin_from, pin_value) lives in device memory, and each step turns a device-side list
/// of (slot, new_tokens) entries into the step's positions, on the stream, without a host round
/// trip, so a scheduler running on the device (or a captured graph) can feed GpuEngine directly.
///
/// The step follows glm::PositionTracker's contract exactly (glm.hpp): entries in order, outputs
/// placed by the exclusive prefix sum of new_tokens, token n of a slot gets
///     position(n) = n < pin_from ? n + rope_delta : pin_value
///     block(n)    = n < pin_from ? 0 : n - pin_from + 1       (stream 1 of 2-stream trackers)
/// (3-stream trackers write position(n) to all three axes), written stream-major with stride
/// `max_tokens`, then each slot's length grows by its new_tokens.
///
/// Bad entries cannot write out of bounds: a slot outside [0, slots()), a slot repeated within
/// one step, new_tokens < 1, a step longer than max_tokens or with more than max_entries entries,
/// or a position outside [0, position_limit) is recorded in a device fault word instead (the
/// offending entry writes nothing and its length is unchanged; other entries proceed), and
/// `check` reports the first one as posenc::Error naming the entry, the value and the limit.
class GpuPositionTracker {
 public:
  /// Entries one step may hold (the step runs in one block; its offsets live in shared memory).
  static constexpr std::int64_t max_entries = 4096;

  /// Uploads `host`'s slots (slot i on the device = host slot i). `max_tokens` bounds one step's
  /// output (the stream stride of the positions it writes).
  GpuPositionTracker(const glm::PositionTracker& host, const Device& device, std::int64_t max_tokens);
  ~GpuPositionTracker();
  GpuPositionTracker(GpuPositionTracker&&) noexcept;
  GpuPositionTracker& operator=(GpuPositionTracker&&) noexcept;
  GpuPositionTracker(const GpuPositionTracker&) = delete;
  GpuPositionTracker& operator=(const GpuPositionTracker&) = delete;

  int streams() const noexcept;
  std::int64_t slots() const noexcept;
  std::int64_t max_tokens() const noexcept;

  /// One step on `stream`. `slots` and `new_tokens` are device arrays of `entries` int32 values;
  /// `total_tokens` (host) is the sum of new_tokens the caller planned, which sizes the launch;
  /// the device recomputes it and records a fault when they differ. `out` is a device int64
  /// buffer of streams() * max_tokens() values. Allocates, copies and waits for nothing.
  void step(const std::int32_t* slots, const std::int32_t* new_tokens, std::int64_t entries,
            std::int64_t total_tokens, std::int64_t* out, StreamRef stream);

  /// The positions `step` wrote, as GpuEngine takes them.
  PositionsView positions(const std::int64_t* out, std::int64_t total_tokens) const noexcept {
    return {out, IndexType::i64, total_tokens, streams(), max_tokens()};
  }

  /// Synchronizes `stream`; throws posenc::Error(out_of_range / invalid_argument) for the first
  /// fault recorded since the last check, and clears it.
  void check(StreamRef stream) const;

  /// Copies the device lengths back (synchronizes; for tests and monitoring, not the hot path).
  std::vector<std::int64_t> lengths(StreamRef stream) const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace posenc::gpu

// Allocation failure on the GPU side: every device allocation (through src/gpu/alloc_faults.hpp) and every host allocation (the injecting allocator) of engine, tracker and pool construction fails cleanly, leaks nothing and leaves the device usable.
//
// Device: the seam makes the Nth posenc device allocation fail as the vendor allocator does when
// the device is out of memory; each construction is swept over its device allocations and must
// throw Error(out_of_memory) naming the size, with device free memory unchanged afterwards and the
// next construction working. apply/append must not allocate at all: they succeed with every
// device allocation failing. Host: support/injecting_allocator.hpp fails each host allocation of
// the same constructions in turn (the contract is written there). Skips without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "gpu/alloc_faults.hpp"
#include "gpu_support.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/glm.hpp"
#include "posenc/gpu.hpp"
#include "posenc/kv_cache.hpp"
#include "support/injecting_allocator.hpp"
#include "support/specs.hpp"

namespace posenc::test {
namespace {

using gpu::DeviceBuffer;
using gpu::GpuEngine;
using gpu::MemoryPool;
namespace seam = gpu::detail;

/// Clears any injected device failure when a test ends, whatever happened.
class GpuAllocFault : public GpuTest {
 protected:
  void TearDown() override { seam::fail_device_allocations(0, 0); }

  /// Device allocations `build` makes (it must succeed when none fails).
  template <typename Fn>
  std::int64_t device_allocations_of(Fn&& build) {
    const std::int64_t before = seam::device_allocation_attempts();
    build();
    return seam::device_allocation_attempts() - before;
  }

  /// Fails each of `build`'s device allocations in turn: Error(out_of_memory) naming the bytes,
  /// device free memory unchanged. Returns the number of allocations swept.
  template <typename Fn>
  std::int64_t sweep_device(const std::string& name, Fn&& build) {
    const std::int64_t count = device_allocations_of(build);
    EXPECT_GT(count, 0) << name << " made no device allocation";
    device.synchronize();
    const std::int64_t free_before = device.memory_info().free_bytes;
    for (std::int64_t k = 0; k < count; ++k) {
      seam::fail_device_allocations(k, 1);
      try {
        build();
        ADD_FAILURE() << name << ": device allocation " << k + 1 << " of " << count << " failed unreported";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::out_of_memory) << name << ": " << e.what();
        const std::string m = e.what();
        EXPECT_NE(m.find("out of memory"), std::string::npos) << m;
        EXPECT_NE(m.find("bytes"), std::string::npos) << m;
      }
      seam::fail_device_allocations(0, 0);
    }
    device.synchronize();
    // Device-wide free memory means nothing when other processes share the device
    // (scripts/gpu-sanitize.sh runs several at once; there memcheck's leak check stands in).
    if (std::getenv("POSENC_TEST_DEVICE_SHARED") == nullptr) {
      EXPECT_EQ(device.memory_info().free_bytes, free_before) << name << ": device memory leaked";
    }
    EXPECT_NO_THROW(build()) << name << ": the device is not usable after the failures";
    return count;
  }
};

std::vector<RopeSpec> engine_specs() {
  std::vector<RopeSpec> specs{scheme_spec(Scaling::none, 128), scheme_spec(Scaling::longrope, 96),
                              scheme_spec(Scaling::dynamic, 64), scheme_spec(Scaling::yarn, 128)};
  RopeSpec mrope = scheme_spec(Scaling::none, 128);
  mrope.mrope_section = {16, 24, 24};
  specs.push_back(mrope);
  return specs;
}

TEST_F(GpuAllocFault, EngineConstructionFailsCleanlyAtEachDeviceAllocation) {
  for (const RopeSpec& spec : engine_specs()) {
    sweep_device(std::string("GpuEngine(") + to_string(spec.scaling) + ")", [&] { const GpuEngine e(spec, device); });
  }
}

TEST_F(GpuAllocFault, TrackerConstructionFailsCleanly) {
  glm::PositionTracker host(1, std::int64_t{1} << 20);
  for (int i = 0; i < 8; ++i) host.add_sequence(16 + i);
  sweep_device("GpuPositionTracker", [&] { const gpu::GpuPositionTracker t(host, device, 256); });
}

TEST_F(GpuAllocFault, DeviceBufferNamesTheSize) {
  seam::fail_device_allocations(0, 1);
  try {
    const DeviceBuffer b(device, 12345);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::out_of_memory);
    EXPECT_NE(std::string(e.what()).find("12345 bytes"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(DeviceBuffer(device, 12345));  // one failure only
}

TEST_F(GpuAllocFault, PoolRetriesAfterFreeingItsCacheThenReportsAndStaysUsable) {
  MemoryPool pool(device);
  pool.release(pool.acquire(4096));  // one cached block of another size class
  ASSERT_EQ(pool.cached_bytes(), 4096);
  ASSERT_EQ(pool.allocation_count(), 1);

  // One failure: the pool frees its cache and the retry succeeds.
  seam::fail_device_allocations(0, 1);
  DeviceBuffer a = pool.acquire(1 << 20);
  EXPECT_EQ(a.size_bytes(), 1 << 20);
  EXPECT_EQ(pool.cached_bytes(), 0);
  EXPECT_EQ(pool.allocation_count(), 2);
  pool.release(std::move(a));

  // Two failures: the first attempt and the retry both fail; the error names request and class.
  seam::fail_device_allocations(0, 2);
  try {
    (void)pool.acquire(3 << 20);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::out_of_memory);
    const std::string m = e.what();
    EXPECT_NE(m.find("MemoryPool::acquire(" + std::to_string(3 << 20) + ")"), std::string::npos) << m;
    EXPECT_NE(m.find("size class"), std::string::npos) << m;
  }
  EXPECT_EQ(pool.cached_bytes(), 0);  // freed by the retry
  EXPECT_EQ(pool.allocation_count(), 2);

  // Usable afterwards.
  seam::fail_device_allocations(0, 0);
  DeviceBuffer b = pool.acquire(3 << 20);
  EXPECT_GE(b.size_bytes(), 3 << 20);
  EXPECT_EQ(pool.allocation_count(), 3);
}

TEST_F(GpuAllocFault, ApplyAndAppendAllocateNothing) {
  // With every device allocation failing, the hot paths still run: they never allocate.
  const RopeSpec spec = scheme_spec(Scaling::longrope, 64);
  const GpuEngine engine(spec, device);
  QkLayout input = make_layout(DType::bf16, 8, 4, 2, 64, LayoutKind::separate, 0);
  fill_random(input.q, 1);
  fill_random(input.k, 2);
  QkLayout values = make_layout(DType::bf16, 8, 2, 0, 64, LayoutKind::separate, 0);
  fill_random(values.q, 3);
  DeviceMirror d(device, input.buffer, ref());
  DeviceMirror dv(device, values.buffer, ref());
  const HostPositions positions(random_positions(8, 8192, 4), IndexType::i64);
  const DevicePositions d_positions(device, positions, ref());
  DeviceBuffer slots(device, 8 * 8);
  const std::vector<std::int64_t> host_slots{0, 1, 2, 3, -1, 5, 6, 7};
  slots.upload(host_slots.data(), 8 * 8, ref());
  DeviceBuffer cache_k(device, 2 * 4 * 2 * 64 * 2);
  DeviceBuffer cache_v(device, 2 * 4 * 2 * 64 * 2);

  RopeArgs args;
  args.q = d.map(input.q);
  args.k = d.map(input.k);
  args.positions = d_positions.view;
  AppendArgs append;
  append.q = d.map(input.q);
  append.k = d.map(ConstTensorView(input.k));
  append.v = dv.map(ConstTensorView(values.q));
  append.positions = d_positions.view;
  append.slots = static_cast<const std::int64_t*>(slots.data());
  append.cache = KvCacheView{cache_k.data(), cache_v.data(), CacheDType::bf16, CacheLayout::paged_nhd, 2, 64, 2, 4};
  ref().synchronize();

  seam::fail_device_allocations(0, std::int64_t{1} << 40);
  const std::int64_t before = seam::device_allocation_attempts();
  EXPECT_NO_THROW(engine.apply(args, ref()));
  EXPECT_NO_THROW(engine.append(append, ref()));
  EXPECT_NO_THROW(engine.check(ref()));
  EXPECT_EQ(seam::device_allocation_attempts(), before);
}

// ---- host allocations of the GPU-side constructions (the injecting allocator) --------------------

TEST_F(GpuAllocFault, HostAllocationFailuresInGpuConstructionsAreReportedWithoutLeaks) {
  for (const RopeSpec& spec : engine_specs()) {
    Scenario s;
    s.op = [&] { const GpuEngine e(spec, device); };
    sweep(std::string("GpuEngine(") + to_string(spec.scaling) + ") host side", s);
    if (HasFailure()) return;
  }
  glm::PositionTracker host(2, std::int64_t{1} << 20);
  for (int i = 0; i < 4; ++i) host.add_sequence(8 + i);
  Scenario tracker;
  tracker.op = [&] { const gpu::GpuPositionTracker t(host, device, 64); };
  sweep("GpuPositionTracker host side", tracker);
  Scenario pool;
  pool.may_absorb = true;  // release frees a block it has no host memory to record
  pool.op = [&] {
    MemoryPool p(device);
    p.release(p.acquire(4096));
    p.release(p.acquire(1 << 16));
  };
  sweep("MemoryPool host side", pool);
}

}  // namespace
}  // namespace posenc::test

// GPU runtime tests: availability, Device, Stream, DeviceBuffer and MemoryPool (moves, pool reuse, errors with vendor strings).
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "gpu_support.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"

namespace posenc::test {
namespace {

using gpu::DeviceBuffer;
using gpu::MemoryPool;
using gpu::Stream;

/// The message and kind of the posenc::Error `fn` throws.
template <typename Fn>
std::string error_message(Fn&& fn, ErrorKind kind) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no posenc::Error thrown";
  return "";
}

// Runs where no GPU is usable (or posenc was built without one): the "unavailable" contract.
TEST(GpuUnavailable, SaysWhyAndEveryEntryPointThrows) {
  if (gpu::available()) GTEST_SKIP() << "a GPU is present; the unavailable path is exercised on machines without one";
  EXPECT_EQ(gpu::device_count(), 0);
  EXPECT_FALSE(gpu::unavailable_reason().empty());
  const std::string message = error_message([] { (void)gpu::Device::open(0); }, ErrorKind::unsupported);
  EXPECT_FALSE(message.empty());
}

class GpuRuntime : public GpuTest {};

TEST_F(GpuRuntime, ReportsTheBackendAndTheDevice) {
  EXPECT_TRUE(gpu::available());
  EXPECT_GE(gpu::device_count(), 1);
  EXPECT_EQ(gpu::unavailable_reason(), "");
  EXPECT_NE(std::string(gpu::backend_name()), "none");
  EXPECT_EQ(device.ordinal(), 0);
  EXPECT_FALSE(device.name().empty());
  EXPECT_GT(device.multiprocessor_count(), 0);
  EXPECT_GE(device.compute_capability(), 60);
  EXPECT_GT(device.l2_bytes(), 0);
  EXPECT_GT(device.total_memory_bytes(), 0);
  const gpu::MemoryInfo info = device.memory_info();
  EXPECT_GT(info.free_bytes, 0);
  EXPECT_LE(info.free_bytes, info.total_bytes);
  EXPECT_EQ(info.total_bytes, device.total_memory_bytes());
  EXPECT_NO_THROW(device.make_current());
  EXPECT_NO_THROW(device.synchronize());
}

TEST_F(GpuRuntime, OpeningAMissingDeviceSaysHowManyThereAre) {
  const std::string message =
      error_message([] { (void)gpu::Device::open(gpu::device_count()); }, ErrorKind::unsupported);
  EXPECT_NE(message.find("visible"), std::string::npos) << message;
  error_message([] { (void)gpu::Device::open(-1); }, ErrorKind::unsupported);
}

TEST_F(GpuRuntime, StreamsMoveAndSynchronize) {
  Stream a(device);
  void* native = a.ref().native();
  EXPECT_NE(native, nullptr);
  Stream b(std::move(a));
  EXPECT_EQ(b.ref().native(), native);
  Stream c(device);
  c = std::move(b);
  EXPECT_EQ(c.ref().native(), native);
  EXPECT_NO_THROW(c.synchronize());
  EXPECT_NO_THROW(gpu::StreamRef::legacy_default().synchronize());
}

TEST_F(GpuRuntime, BuffersRoundTripFillAndMove) {
  constexpr std::int64_t n = 4099;
  std::vector<std::uint8_t> host(n);
  for (std::int64_t i = 0; i < n; ++i) host[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i * 7 + 3);
  DeviceBuffer a(device, n);
  ASSERT_NE(a.data(), nullptr);
  EXPECT_EQ(a.size_bytes(), n);
  a.upload(host.data(), n, ref());
  std::vector<std::uint8_t> back(n, 0);
  a.download(back.data(), n, ref());
  ref().synchronize();
  EXPECT_EQ(back, host);

  // Partial copies at an offset.
  a.download(back.data(), 10, ref(), 100);
  ref().synchronize();
  EXPECT_EQ(0, std::memcmp(back.data(), host.data() + 100, 10));

  a.fill_bytes(0xab, ref());
  a.download(back.data(), n, ref());
  ref().synchronize();
  EXPECT_EQ(back, std::vector<std::uint8_t>(n, 0xab));

  void* p = a.data();
  DeviceBuffer b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  EXPECT_EQ(a.size_bytes(), 0);
  DeviceBuffer c(device, 16);
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.size_bytes(), n);

  DeviceBuffer empty(device, 0);
  EXPECT_EQ(empty.data(), nullptr);
}

TEST_F(GpuRuntime, BufferMisuseIsRejectedWithTheLimit) {
  DeviceBuffer a(device, 64);
  std::vector<std::uint8_t> host(128);
  std::string m = error_message([&] { a.upload(host.data(), 65, ref()); }, ErrorKind::out_of_range);
  EXPECT_NE(m.find("64 bytes"), std::string::npos) << m;
  m = error_message([&] { a.download(host.data(), 8, ref(), 60); }, ErrorKind::out_of_range);
  EXPECT_NE(m.find("64 bytes"), std::string::npos) << m;
  error_message([&] { a.upload(host.data(), -1, ref()); }, ErrorKind::out_of_range);
  error_message([&] { DeviceBuffer bad(device, -5); }, ErrorKind::invalid_argument);
}

TEST_F(GpuRuntime, OutOfMemoryCarriesTheVendorStringAndLeavesTheDeviceUsable) {
  constexpr std::int64_t petabyte = std::int64_t{1} << 50;
  const std::string m = error_message([&] { DeviceBuffer huge(device, petabyte); }, ErrorKind::out_of_memory);
  EXPECT_NE(m.find("out of memory"), std::string::npos) << m;
  EXPECT_NE(m.find(std::to_string(petabyte)), std::string::npos) << m;
  EXPECT_NE(m.find("Malloc"), std::string::npos) << m;
  // The error was not sticky: the device still works.
  DeviceBuffer small(device, 1024);
  small.fill_bytes(0, ref());
  EXPECT_NO_THROW(ref().synchronize());
  EXPECT_NO_THROW(device.synchronize());

  MemoryPool pool(device);
  const std::string pm = error_message([&] { (void)pool.acquire(petabyte); }, ErrorKind::out_of_memory);
  EXPECT_NE(pm.find("out of memory"), std::string::npos) << pm;
  EXPECT_EQ(pool.allocation_count(), 0);
}

TEST_F(GpuRuntime, PoolReusesBlocksBySizeClass) {
  MemoryPool pool(device);
  DeviceBuffer a = pool.acquire(1000);
  EXPECT_GE(a.size_bytes(), 1000);
  void* p = a.data();
  EXPECT_EQ(pool.allocation_count(), 1);
  EXPECT_EQ(pool.cached_bytes(), 0);
  const std::int64_t block = a.size_bytes();
  pool.release(std::move(a));
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(pool.cached_bytes(), block);

  DeviceBuffer b = pool.acquire(900);  // same class: the cached block comes back
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(pool.allocation_count(), 1);
  EXPECT_EQ(pool.cached_bytes(), 0);

  DeviceBuffer c = pool.acquire(3 << 20);  // another class: a new allocation
  EXPECT_GE(c.size_bytes(), 3 << 20);
  EXPECT_LE(c.size_bytes(), (3 << 20) + (3 << 20) / 8);  // waste bounded by the class step
  EXPECT_EQ(pool.allocation_count(), 2);
  pool.release(std::move(b));
  pool.release(std::move(c));
  EXPECT_GT(pool.cached_bytes(), 0);
  pool.trim();
  EXPECT_EQ(pool.cached_bytes(), 0);
  DeviceBuffer d = pool.acquire(1000);  // trimmed: allocates again
  EXPECT_EQ(pool.allocation_count(), 3);
  pool.release(std::move(d));

  DeviceBuffer zero = pool.acquire(0);
  EXPECT_EQ(zero.data(), nullptr);
  error_message([&] { (void)pool.acquire(-1); }, ErrorKind::invalid_argument);
}

TEST_F(GpuRuntime, PoolIsThreadSafe) {
  MemoryPool pool(device);
  constexpr int threads = 8;
  constexpr int rounds = 200;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int r = 0; r < rounds; ++r) {
        DeviceBuffer b = pool.acquire(4096 * (1 + (t + r) % 3));
        pool.release(std::move(b));
      }
    });
  }
  for (std::thread& w : workers) w.join();
  // At most one block per (thread, class) is ever outstanding.
  EXPECT_LE(pool.allocation_count(), threads * 3);
  EXPECT_EQ(pool.cached_bytes() > 0, true);
}

TEST_F(GpuRuntime, FreeMemoryIsStableOverBufferChurn) {
  {
    DeviceBuffer warm(device, 1 << 20);
  }
  const std::int64_t before = device.memory_info().free_bytes;
  for (int i = 0; i < 1000; ++i) DeviceBuffer b(device, (1 << 20) + i);
  EXPECT_EQ(device.memory_info().free_bytes, before);
}

}  // namespace
}  // namespace posenc::test

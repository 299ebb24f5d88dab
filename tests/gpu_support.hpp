// GPU test helpers: the skip-when-no-GPU fixture, device mirrors of host test buffers, Q/K layouts, parallel fills.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "posenc/gpu.hpp"
#include "support/host_tensor.hpp"
#include "support/reference64.hpp"

namespace posenc::test {

/// Every GPU test derives from this: SetUp skips with unavailable_reason() when no GPU can be
/// used, so a machine without one reports SKIPPED with the cause rather than passing silently.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override;

  gpu::Device device;
  std::optional<gpu::Stream> stream;
  gpu::StreamRef ref() const { return stream->ref(); }
};

/// How Q and K sit in memory.
enum class LayoutKind {
  separate,  ///< two dense tensors in one buffer (K after Q, 256-byte aligned)
  fused,     ///< slices of one fused QKV buffer [T, Hq + 2*Hk, D] plus `pad` elements per token
};

/// Q and (optionally) K views into one poisoned host buffer; in the fused layout the V slice and
/// the padding are never a destination, so tests can check they stay untouched.
struct QkLayout {
  HostBuffer buffer;
  TensorView q;
  TensorView k;  ///< absent (data == nullptr) when k_heads == 0

  std::vector<ConstTensorView> views() const;
};

QkLayout make_layout(DType dtype, std::int64_t tokens, std::int64_t q_heads, std::int64_t k_heads,
                     std::int64_t head_dim, LayoutKind kind, std::int64_t pad);

/// A byte-for-byte copy of `from` (same views, rebased onto the new buffer).
QkLayout clone(const QkLayout& from);

/// fill_random, split over the host's cores by token ranges (same values as fill_random).
void fill_random_parallel(const TensorView& v, std::uint64_t seed);

/// A device copy of one host buffer, and the translation of host views into it.
class DeviceMirror {
 public:
  DeviceMirror(const gpu::Device& device, const HostBuffer& host, gpu::StreamRef stream);

  void* map(const void* host_ptr) const;
  TensorView map(const TensorView& v) const;
  ConstTensorView map(const ConstTensorView& v) const;

  /// Copies the device bytes back into `into` (same size) and waits for the stream.
  void download(HostBuffer& into, gpu::StreamRef stream) const;
  gpu::DeviceBuffer& buffer() { return device_; }

 private:
  const std::byte* host_base_;
  gpu::DeviceBuffer device_;
};

/// Positions uploaded to the device, as int32 or int64.
struct DevicePositions {
  gpu::DeviceBuffer buffer;
  PositionsView view;

  DevicePositions(const gpu::Device& device, const HostPositions& host, gpu::StreamRef stream);
};

/// The values of `v` as an Expected64 (to compare two implementations with near64).
Expected64 expected_from(const ConstTensorView& v);

}  // namespace posenc::test

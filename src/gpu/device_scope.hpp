// DeviceScope: makes a device the calling thread's current one for a scope and restores the previous one after (host code).
#pragma once

#include <new>

#include "gpu/check.hpp"
#include "gpu/vendor.hpp"

namespace posenc::gpu::detail {

/// Kernels must be launched, and buffers, streams and events created, with their device current.
/// The plain constructor throws Error(vendor) when it cannot switch; the std::nothrow form, for
/// destructors (which must not throw), ignores failures and clears the error they leave.
/// Restoring the previous device never throws.
class DeviceScope {
 public:
  explicit DeviceScope(int ordinal) : ordinal_(ordinal) {
    POSENC_GPU_CHECK(cudaGetDevice(&previous_));
    if (previous_ != ordinal_) POSENC_GPU_CHECK(cudaSetDevice(ordinal_));
  }
  DeviceScope(int ordinal, std::nothrow_t /*unused*/) noexcept : ordinal_(ordinal), previous_(ordinal) {
    int current = ordinal;
    if (cudaGetDevice(&current) != cudaSuccess) {
      (void)cudaGetLastError();
      return;  // nothing to restore
    }
    previous_ = current;
    if (previous_ != ordinal_ && cudaSetDevice(ordinal_) != cudaSuccess) (void)cudaGetLastError();
  }
  ~DeviceScope() {
    if (previous_ != ordinal_ && cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int ordinal_;
  int previous_ = -1;
};

}  // namespace posenc::gpu::detail

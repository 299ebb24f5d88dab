// Test seam (internal, not installed): make posenc's device allocations fail on demand, to test out-of-memory paths.
//
// Every device allocation posenc makes (DeviceBuffer, MemoryPool::acquire, and through them the
// engines and the position tracker) goes through one function of src/gpu/runtime.cu, which
// consults this seam before calling the vendor allocator. Builds without a GPU define it too
// (src/gpu/unavailable.cpp), so a test using it links everywhere and skips at run time.
#pragma once

#include <cstdint>

namespace posenc::gpu::detail {

/// After `skip` more device allocation attempts, the next `count` fail as the vendor allocator
/// fails when the device is out of memory (cudaErrorMemoryAllocation / hipErrorOutOfMemory),
/// without calling it. count = 0 clears the injection. Process-wide; for tests only.
void fail_device_allocations(std::int64_t skip, std::int64_t count) noexcept;

/// Device allocation attempts posenc has made in this process (injected failures included).
std::int64_t device_allocation_attempts() noexcept;

}  // namespace posenc::gpu::detail

// Error checks for every vendor runtime call and every launch, and the record of posenc launches per stream.
//
// POSENC_GPU_CHECK(call) turns a failed runtime call into posenc::Error(vendor) carrying the call
// text, the vendor's error string, name and code, and file:line. POSENC_GPU_CHECK_LAUNCH(record)
// follows every kernel launch. The launch record is plain data kept in a small fixed table (no
// allocation, no formatting per launch) so that a fault surfacing later, at a synchronization,
// can still say which posenc launch ran on that stream and with which dimensions.
#pragma once

#include <cstdint>
#include <string>

#include "gpu/vendor.hpp"
#include "posenc/dtype.hpp"
#include "posenc/error.hpp"
#include "posenc/rope.hpp"

namespace posenc::gpu::detail {

/// What a posenc launch was: POD, formatted only when an error is reported.
struct LaunchRecord {
  const char* op = nullptr;  ///< static string, e.g. "posenc rope"
  std::int64_t tokens = 0;
  std::int64_t q_heads = 0;
  std::int64_t k_heads = 0;  ///< 0 when K is absent
  std::int64_t head_dim = 0;
  std::int64_t rotary_dim = 0;
  std::int64_t rotary_offset = 0;
  DType dtype = DType::f32;
  Pairing pairing = Pairing::half_split;
  Numerics numerics = Numerics::hf_compatible;
  IndexType positions = IndexType::i64;
  bool in_place = true;
  bool vectorized = true;
};

/// The kind of a failed vendor call: out_of_memory for cudaErrorMemoryAllocation, else vendor.
ErrorKind error_kind(cudaError_t error) noexcept;

/// Every device allocation posenc makes: cudaMalloc, unless the test seam of alloc_faults.hpp
/// injects a failure. Does not clear the vendor's last error.
cudaError_t device_malloc(void** ptr, std::int64_t bytes) noexcept;

/// Throws posenc::Error(vendor, or out_of_memory for cudaErrorMemoryAllocation): "<vendor> error: <string> (<name>, code N) in `<call>` at file:line".
/// Clears the vendor's last-error state first, so a recoverable error (bad argument, out of memory)
/// does not resurface on the next unrelated call; sticky faults cannot be cleared and stay reported.
[[noreturn]] void throw_vendor_error(cudaError_t error, const char* call, const char* file, int line);

inline void check_vendor(cudaError_t error, const char* call, const char* file, int line) {
  if (error != cudaSuccess) [[unlikely]] {
    throw_vendor_error(error, call, file, line);
  }
}

/// Throws posenc::Error(vendor) for a failed launch, naming the operation and its dimensions.
[[noreturn]] void throw_launch_error(cudaError_t error, const LaunchRecord& record, const char* file,
                                     int line);

/// The check that follows every launch: configuration errors (bad grid, missing device code for
/// this architecture, ...) are reported here, synchronously, with the launch's description.
inline void check_launch(const LaunchRecord& record, const char* file, int line) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) [[unlikely]] {
    throw_launch_error(error, record, file, line);
  }
}

/// Remembers `record` as the latest posenc launch on `stream` (fixed table, mutex, no allocation).
void record_launch(cudaStream_t stream, const LaunchRecord& record) noexcept;

/// Forgets `stream` (called when an owning Stream is destroyed, so a reused handle value does not
/// inherit a stale record).
void forget_stream(cudaStream_t stream) noexcept;

/// Throws posenc::Error(vendor) for an asynchronous fault found by `what` (e.g. "cudaStreamSynchronize"):
/// "<vendor string> after posenc rope launch (q=[T,Hq,D] k=[T,Hk,D] bf16 half_split ...)", using the
/// latest launch recorded on `stream`, or the latest on any stream when `stream` has none.
[[noreturn]] void throw_async_fault(cudaError_t error, cudaStream_t stream, bool any_stream,
                                    const char* what, const char* file, int line);

/// "q=[T,Hq,D] k=[T,Hk,D] bf16 half_split hf_compatible rotary=R@O in-place i64 positions".
std::string describe(const LaunchRecord& record);

}  // namespace posenc::gpu::detail

/// Checks one vendor runtime call; throws posenc::Error(vendor) with the call text on failure.
#define POSENC_GPU_CHECK(call) ::posenc::gpu::detail::check_vendor((call), #call, __FILE__, __LINE__)

/// Checks the launch that was just issued; `record` is the LaunchRecord describing it.
#define POSENC_GPU_CHECK_LAUNCH(record) ::posenc::gpu::detail::check_launch((record), __FILE__, __LINE__)

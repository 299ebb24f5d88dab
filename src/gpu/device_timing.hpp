// DeviceTiming: the ring of event pairs behind GpuEngine's device timing (gpu.hpp enable_counters), created once, never waited on (host code).
#pragma once

#include <cstdint>
#include <mutex>

#include "gpu/check.hpp"
#include "gpu/vendor.hpp"
#include "posenc/gpu.hpp"

namespace posenc::gpu::detail {

/// Device timing of the counters (gpu.hpp enable_counters): a ring of event pairs, created once.
/// A pair is free, being recorded (its stop event is not yet enqueued: not collectable), or
/// pending until its stop event has completed and its time is collected.
struct DeviceTiming {
  enum class PairState : std::uint8_t { free, recording, pending };
  std::mutex mutex;
  int ordinal = -1;
  cudaEvent_t start[GpuEngine::timing_pairs] = {};
  cudaEvent_t stop[GpuEngine::timing_pairs] = {};
  PairState state[GpuEngine::timing_pairs] = {};
  int next = 0;
  std::int64_t timed_calls = 0;
  double device_ms = 0.0;

  explicit DeviceTiming(int device) : ordinal(device) {
    for (int i = 0; i < GpuEngine::timing_pairs; ++i) {
      POSENC_GPU_CHECK(cudaEventCreate(&start[i]));
      POSENC_GPU_CHECK(cudaEventCreate(&stop[i]));
    }
  }
  ~DeviceTiming() {
    for (int i = 0; i < GpuEngine::timing_pairs; ++i) {
      if (start[i] != nullptr) (void)cudaEventDestroy(start[i]);
      if (stop[i] != nullptr) (void)cudaEventDestroy(stop[i]);
    }
  }
  DeviceTiming(const DeviceTiming&) = delete;
  DeviceTiming& operator=(const DeviceTiming&) = delete;

  /// Adds pair i's time if its stop event has completed (caller holds the mutex). Never waits.
  bool collect(int i) {
    if (state[i] != PairState::pending) return state[i] == PairState::free;
    const cudaError_t ready = cudaEventQuery(stop[i]);
    if (ready == cudaErrorNotReady) return false;
    POSENC_GPU_CHECK(ready);
    float ms = 0.0f;
    POSENC_GPU_CHECK(cudaEventElapsedTime(&ms, start[i], stop[i]));
    device_ms += static_cast<double>(ms);
    ++timed_calls;
    state[i] = PairState::free;
    return true;
  }

  /// Records the start event of a timed call on `stream` and returns its pair, or -1 when the
  /// stream is being captured or every pair is still pending (the call goes untimed).
  int begin(cudaStream_t stream) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    POSENC_GPU_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone) return -1;
    std::lock_guard<std::mutex> lock(mutex);
    const int i = next;
    if (!collect(i)) return -1;
    POSENC_GPU_CHECK(cudaEventRecord(start[i], stream));
    state[i] = PairState::recording;
    next = (next + 1) % GpuEngine::timing_pairs;
    return i;
  }

  void end(int i, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex);
    POSENC_GPU_CHECK(cudaEventRecord(stop[i], stream));
    state[i] = PairState::pending;
  }
};

}  // namespace posenc::gpu::detail

// Choosing CPU or GPU for a CLI command, and running one spec on host-resident Q/K through either engine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "posenc/dtype.hpp"
#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"

namespace CLI {
class App;
}

namespace posenc::cli {

enum class DeviceKind { cpu, gpu };

/// The device a command runs on, and why (printed so a CPU fallback is never silent).
struct DeviceChoice {
  DeviceKind kind = DeviceKind::cpu;
  std::string reason;
};

/// Adds --device auto|cpu|gpu to `app`.
void add_device_option(CLI::App& app, std::string& device);

/// Resolves --device: auto = the GPU when posenc::gpu::available(), else the CPU. Asking for
/// `gpu` where none is usable is a runtime failure (exit 1) that gives the reason.
DeviceChoice choose_device(const std::string& requested);

/// Dense host tensors of one apply call: Q [tokens, q_heads, head_dim], optional K
/// [tokens, k_heads, head_dim] (k_heads = 0: no K), `position_streams` positions per token,
/// stream-major ([streams, tokens]; one stream for most models, 3 for M-RoPE).
struct HostBatch {
  DType dtype = DType::bf16;
  std::int64_t tokens = 0;
  std::int64_t q_heads = 0;
  std::int64_t k_heads = 0;
  std::int64_t head_dim = 0;
  IndexType position_type = IndexType::i64;
  std::int32_t position_streams = 1;
  std::vector<std::byte> q;
  std::vector<std::byte> k;
  std::vector<std::byte> positions;
  /// The QK-norm weights (head_dim or rotary_dim elements of `dtype` each) when the spec
  /// normalises Q and K; empty otherwise.
  std::vector<std::byte> q_norm_weight;
  std::vector<std::byte> k_norm_weight;

  std::int64_t q_bytes() const noexcept { return tokens * q_heads * head_dim * size_of(dtype); }
  std::int64_t k_bytes() const noexcept { return tokens * k_heads * head_dim * size_of(dtype); }
  /// Allocates q, k and positions for the shape fields (contents unspecified).
  void allocate();
};

/// Runs one spec in place on a HostBatch through the CPU engine (on the batch itself) or the GPU
/// engine (on device copies uploaded at construction). Engines, buffers and the stream are made
/// once, so repeated apply() calls time the engine alone.
class EngineRunner {
 public:
  EngineRunner(const RopeSpec& spec, const DeviceChoice& device, int cpu_threads, HostBatch& batch);
  ~EngineRunner();
  EngineRunner(const EngineRunner&) = delete;
  EngineRunner& operator=(const EngineRunner&) = delete;

  /// One in-place apply: done on return on the CPU, queued on the stream on the GPU.
  void apply();
  /// Waits for queued work (GPU stream synchronize); nothing on the CPU.
  void wait();
  /// Waits and reports any GPU fault or out-of-range position (GpuEngine::check).
  void check();
  /// Copies the rotated Q/K back into the host batch (the CPU engine already worked there).
  void download();

  /// "cpu (CpuEngine, 2 threads)" or "gpu 0: <name> (cuda, 132 SMs)".
  std::string description() const;
  DeviceKind kind() const noexcept;
  /// The frequency table the engine built at construction.
  const FrequencyTable& frequencies() const noexcept;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace posenc::cli

// Device choice and the EngineRunner: one code path for the CLI over CpuEngine and GpuEngine.
#include "device.hpp"

#include <CLI/CLI.hpp>

#include <optional>

#include "command.hpp"
#include "posenc/cpu.hpp"
#include "posenc/gpu.hpp"

namespace posenc::cli {

void add_device_option(CLI::App& app, std::string& device) {
  app.add_option("--device", device, "where to apply: auto (GPU when available), cpu or gpu")
      ->check(CLI::IsMember({"auto", "cpu", "gpu"}))
      ->capture_default_str();
}

DeviceChoice choose_device(const std::string& requested) {
  if (requested == "cpu") return {DeviceKind::cpu, "--device cpu"};
  const bool usable = gpu::available();
  if (requested == "gpu") {
    if (!usable) run_failure("--device gpu: no GPU available (" + gpu::unavailable_reason() + ")");
    return {DeviceKind::gpu, "--device gpu"};
  }
  if (usable) return {DeviceKind::gpu, "auto: a GPU is available"};
  return {DeviceKind::cpu, "auto: no GPU (" + gpu::unavailable_reason() + ")"};
}

void HostBatch::allocate() {
  q.resize(static_cast<std::size_t>(q_bytes()));
  k.resize(static_cast<std::size_t>(k_bytes()));
  positions.resize(static_cast<std::size_t>(tokens * position_streams * size_of(position_type)));
}

namespace {

/// In-place RopeArgs over dense buffers at `q`, `k` (null: no K) and `positions`.
RopeArgs dense_args(const HostBatch& batch, void* q, void* k, const void* positions) {
  RopeArgs args;
  args.q = TensorView::contiguous(q, batch.dtype, batch.tokens, batch.q_heads, batch.head_dim);
  if (batch.k_heads > 0) {
    args.k = TensorView::contiguous(k, batch.dtype, batch.tokens, batch.k_heads, batch.head_dim);
  }
  args.positions.data = positions;
  args.positions.type = batch.position_type;
  args.positions.count = batch.tokens;
  args.positions.streams = batch.position_streams;
  args.positions.stream_stride = batch.position_streams > 1 ? batch.tokens : 0;
  if (!batch.q_norm_weight.empty())
    args.norm = NormWeights{batch.q_norm_weight.data(), k != nullptr ? batch.k_norm_weight.data() : nullptr};
  return args;
}

/// Device copies of a batch and the engine that rotates them.
struct GpuSide {
  gpu::Device device;
  gpu::Stream stream;
  gpu::GpuEngine engine;
  gpu::DeviceBuffer q;
  gpu::DeviceBuffer k;
  gpu::DeviceBuffer positions;
  gpu::DeviceBuffer q_norm_weight;
  gpu::DeviceBuffer k_norm_weight;
  RopeArgs args;

  GpuSide(const RopeSpec& spec, const HostBatch& batch)
      : device(gpu::Device::open(0)),
        stream(device),
        engine(spec, device),
        q(device, batch.q_bytes()),
        k(batch.k_heads > 0 ? gpu::DeviceBuffer(device, batch.k_bytes()) : gpu::DeviceBuffer()),
        positions(device, static_cast<std::int64_t>(batch.positions.size())) {
    q.upload(batch.q.data(), batch.q_bytes(), stream.ref());
    if (batch.k_heads > 0) k.upload(batch.k.data(), batch.k_bytes(), stream.ref());
    positions.upload(batch.positions.data(), static_cast<std::int64_t>(batch.positions.size()),
                     stream.ref());
    if (!batch.q_norm_weight.empty()) {
      const auto bytes = static_cast<std::int64_t>(batch.q_norm_weight.size());
      q_norm_weight = gpu::DeviceBuffer(device, bytes);
      q_norm_weight.upload(batch.q_norm_weight.data(), bytes, stream.ref());
      if (batch.k_heads > 0) {
        k_norm_weight = gpu::DeviceBuffer(device, bytes);
        k_norm_weight.upload(batch.k_norm_weight.data(), bytes, stream.ref());
      }
    }
    stream.synchronize();  // the host buffers may change after construction
    args = dense_args(batch, q.data(), batch.k_heads > 0 ? k.data() : nullptr, positions.data());
    if (!batch.q_norm_weight.empty())
      args.norm = NormWeights{q_norm_weight.data(), batch.k_heads > 0 ? k_norm_weight.data() : nullptr};
  }
};

}  // namespace

struct EngineRunner::State {
  HostBatch& batch;
  std::optional<CpuEngine> cpu;
  std::unique_ptr<GpuSide> gpu_side;
  RopeArgs cpu_args;

  explicit State(HostBatch& b) : batch(b) {}
};

EngineRunner::EngineRunner(const RopeSpec& spec, const DeviceChoice& device, int cpu_threads,
                           HostBatch& batch)
    : state_(std::make_unique<State>(batch)) {
  if (device.kind == DeviceKind::gpu) {
    state_->gpu_side = std::make_unique<GpuSide>(spec, batch);
  } else {
    state_->cpu.emplace(spec, CpuOptions{cpu_threads});
    state_->cpu_args = dense_args(batch, batch.q.data(), batch.k_heads > 0 ? batch.k.data() : nullptr,
                                  batch.positions.data());
  }
}

EngineRunner::~EngineRunner() = default;

void EngineRunner::apply() {
  if (state_->gpu_side) {
    state_->gpu_side->engine.apply(state_->gpu_side->args, state_->gpu_side->stream.ref());
  } else {
    state_->cpu->apply(state_->cpu_args);
  }
}

void EngineRunner::wait() {
  if (state_->gpu_side) state_->gpu_side->stream.synchronize();
}

void EngineRunner::check() {
  if (state_->gpu_side) state_->gpu_side->engine.check(state_->gpu_side->stream.ref());
}

void EngineRunner::download() {
  if (!state_->gpu_side) return;
  GpuSide& g = *state_->gpu_side;
  HostBatch& b = state_->batch;
  g.q.download(b.q.data(), b.q_bytes(), g.stream.ref());
  if (b.k_heads > 0) g.k.download(b.k.data(), b.k_bytes(), g.stream.ref());
  g.stream.synchronize();
}

std::string EngineRunner::description() const {
  if (state_->gpu_side) {
    const gpu::Device& d = state_->gpu_side->device;
    const int cc = d.compute_capability();
    return "gpu " + std::to_string(d.ordinal()) + ": " + d.name() + " (" + gpu::backend_name() + ", compute " +
           std::to_string(cc / 10) + "." + std::to_string(cc % 10) + ", " + std::to_string(d.multiprocessor_count()) +
           " SMs, " + std::to_string(d.total_memory_bytes() >> 20) + " MiB)";
  }
  return "cpu (CpuEngine, " + std::to_string(state_->cpu->threads()) + " threads, " +
         std::string(state_->cpu->kernel_build(state_->batch.dtype)) + " kernels)";
}

DeviceKind EngineRunner::kind() const noexcept {
  return state_->gpu_side ? DeviceKind::gpu : DeviceKind::cpu;
}

const FrequencyTable& EngineRunner::frequencies() const noexcept {
  return state_->gpu_side ? state_->gpu_side->engine.frequencies() : state_->cpu->frequencies();
}

}  // namespace posenc::cli

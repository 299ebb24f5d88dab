// Example: the GLM-4 attention layer on the GPU (cuBLAS + posenc's GpuEngine, paged KV cache), float32 or bfloat16, checked against HF fixtures.
#include <cstdio>
#include <exception>
#include <optional>
#include <string>

#include "glm4_attention_gpu_layer.hpp"
#include "schedule_run.hpp"
#include "posenc/dtype.hpp"

namespace ex = posenc::examples;

namespace {

/// Largest error per step allowed against the float32 transformers outputs, relative to the
/// step's max|output| (README "GPU example" explains both numbers).
double tolerance_for(posenc::DType dtype) { return dtype == posenc::DType::f32 ? 1e-5 : 3e-2; }

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--dtype float32|bfloat16] [FIXTURE_DIR]   (e.g. tests/golden/glm_attention)\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) try {
  posenc::DType dtype = posenc::DType::f32;
  std::optional<std::string> fixture_dir;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--dtype" && i + 1 < argc) {
      dtype = posenc::parse_dtype(argv[++i]);
    } else if (arg.rfind("--dtype=", 0) == 0) {
      dtype = posenc::parse_dtype(arg.c_str() + 8);
    } else if (arg.rfind("--", 0) != 0 && !fixture_dir) {
      fixture_dir = arg;
    } else {
      return usage(argv[0]);
    }
  }
  if (dtype != posenc::DType::f32 && dtype != posenc::DType::bf16) return usage(argv[0]);

  const ex::GlmAttentionConfig config;
  // With a fixture directory: HF's weights, inputs and outputs; without: random weights, same schedule.
  std::optional<ex::GlmAttentionFixture> fixture;
  if (fixture_dir) fixture = ex::GlmAttentionFixture::load(*fixture_dir, config);
  const auto schedule = fixture ? ex::schedule_from_tokens(fixture->steps, fixture->seq_ids) : ex::default_schedule();
  ex::GlmGpuOptions options;
  options.dtype = dtype;
  ex::GlmAttentionGpuLayer layer(config, fixture ? fixture->weights : ex::GlmAttentionWeights::random(config, 1), options);
  std::printf("device %s, dtype %s, paged KV cache: %lld pages of %lld slots\n", layer.device().name().c_str(),
              posenc::to_string(dtype), static_cast<long long>(layer.page_count()),
              static_cast<long long>(options.page_size));

  const double tolerance = tolerance_for(dtype);
  const bool ok = ex::run_schedule(layer, config, schedule, fixture ? &*fixture : nullptr, tolerance);

  // The engine's counters: one append per step; device_ms sums the appends' own device time
  // (events around each launch), not the GEMMs or the attention kernel.
  const posenc::OperationCounters counters = layer.counters();
  std::printf("GpuEngine counters: calls %lld  tokens %lld  bytes %lld  device_ms %.4f over %lld timed calls\n",
              static_cast<long long>(counters.calls), static_cast<long long>(counters.tokens),
              static_cast<long long>(counters.bytes), counters.device_ms, static_cast<long long>(counters.timed_calls));
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "glm4_attention_gpu: %s\n", e.what());
  return 1;
}

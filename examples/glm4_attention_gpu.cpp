// Example: the GLM-4 attention layer on the GPU (cuBLAS + posenc's GpuEngine, paged KV cache), float32 or bfloat16, checked against HF fixtures.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "glm4_attention_gpu_layer.hpp"
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
  std::vector<float> hidden;
  std::vector<float> out;
  double worst = 0.0;
  bool ok = true;
  for (std::size_t s = 0; s < schedule.size(); ++s) {
    const auto& step = schedule[s];
    for (const auto& e : step.entries) {
      if (!layer.contains(e.seq_id)) layer.add_sequence(e.seq_id);  // prefill of a new sequence
    }
    const auto width = static_cast<std::size_t>(config.hidden_size);
    const auto first = static_cast<std::size_t>(step.first) * width;
    const auto rows = static_cast<std::size_t>(step.count) * width;
    if (fixture) {
      hidden.assign(fixture->hidden.begin() + static_cast<std::ptrdiff_t>(first),
                    fixture->hidden.begin() + static_cast<std::ptrdiff_t>(first + rows));
    } else {
      hidden.resize(rows);
      for (std::size_t i = 0; i < rows; ++i) hidden[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(first + i)));
    }
    out.resize(rows);
    const auto positions = layer.step(step.entries, hidden, out);

    std::string pos_text;
    for (const auto p : positions.stream(0)) {
      if (!pos_text.empty()) pos_text += ' ';
      pos_text.append(std::to_string(p));  // append, not operator+: g++ 12 -Wrestrict false positive
    }
    if (fixture) {
      double err = 0.0;
      double scale = 0.0;
      bool same_positions = positions.tokens() == step.count;
      for (std::size_t i = 0; i < rows; ++i) {
        err = std::max(err, std::abs(static_cast<double>(out[i]) - fixture->output[first + i]));
        scale = std::max(scale, std::abs(static_cast<double>(fixture->output[first + i])));
      }
      for (std::int64_t t = 0; same_positions && t < step.count; ++t) {
        same_positions &= positions.at(0, t) == fixture->positions[static_cast<std::size_t>(step.first + t)];
      }
      const bool within = err <= tolerance * scale;
      worst = std::max(worst, err / scale);
      std::printf("step %2zu  tokens %2lld  max|err| %.3e  (relative %.3e%s)  positions %s [%s]\n", s,
                  static_cast<long long>(step.count), err, err / scale, within ? "" : " > TOLERANCE",
                  same_positions ? "match" : "DIFFER", pos_text.c_str());
      ok &= within && same_positions;
    } else {
      double norm = 0.0;
      for (const float v : out) norm += static_cast<double>(v) * v;
      std::printf("step %2zu  tokens %2lld  |out| %.6f  positions [%s]\n", s, static_cast<long long>(step.count),
                  std::sqrt(norm), pos_text.c_str());
    }
  }
  if (fixture) std::printf("worst relative error over all steps: %.3e (tolerance %.0e)\n", worst, tolerance);

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

// Example: a GLM-4 attention layer on posenc (prefill + 32 continuous-batching decode steps), checked against HF fixtures.
#include <cstdio>
#include <exception>
#include <optional>

#include "glm4_attention_layer.hpp"
#include "schedule_run.hpp"

namespace ex = posenc::examples;

int main(int argc, char** argv) try {
  if (argc > 2) {
    std::fprintf(stderr, "usage: %s [FIXTURE_DIR]   (e.g. tests/golden/glm_attention)\n", argv[0]);
    return 2;
  }
  const ex::GlmAttentionConfig config;
  // With a fixture directory: HF's weights, inputs and outputs; without: random weights, same schedule.
  std::optional<ex::GlmAttentionFixture> fixture;
  if (argc == 2) fixture = ex::GlmAttentionFixture::load(argv[1], config);
  const auto schedule = fixture ? ex::schedule_from_tokens(fixture->steps, fixture->seq_ids) : ex::default_schedule();
  ex::GlmAttentionLayer layer(config, fixture ? fixture->weights : ex::GlmAttentionWeights::random(config, 1));

  // 1e-5 of the step's max|output|, as tests/test_glm_attention_example.cpp (examples/README.md).
  return ex::run_schedule(layer, config, schedule, fixture ? &*fixture : nullptr, 1e-5) ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "glm4_attention: %s\n", e.what());
  return 1;
}

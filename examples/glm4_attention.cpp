// Example: a GLM-4 attention layer on posenc (prefill + 32 continuous-batching decode steps), checked against HF fixtures.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "glm4_attention_layer.hpp"

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

  std::vector<float> hidden;
  std::vector<float> out;
  double worst = 0.0;
  for (std::size_t s = 0; s < schedule.size(); ++s) {
    const auto& step = schedule[s];
    for (const auto& e : step.entries) {
      if (!layer.tracker().contains(e.seq_id)) layer.add_sequence(e.seq_id);  // prefill of a new sequence
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
      bool same_positions = true;
      for (std::size_t i = 0; i < rows; ++i) {
        err = std::max(err, std::abs(static_cast<double>(out[i]) - fixture->output[first + i]));
        scale = std::max(scale, std::abs(static_cast<double>(fixture->output[first + i])));
      }
      for (std::int64_t t = 0; t < step.count; ++t) {
        same_positions &= positions.at(0, t) == fixture->positions[static_cast<std::size_t>(step.first + t)];
      }
      worst = std::max(worst, err / scale);
      std::printf("step %2zu  tokens %2lld  max|err| %.3e  (relative %.3e)  positions %s [%s]\n", s,
                  static_cast<long long>(step.count), err, err / scale, same_positions ? "match" : "DIFFER",
                  pos_text.c_str());
      if (!same_positions) return 1;
    } else {
      double norm = 0.0;
      for (const float v : out) norm += static_cast<double>(v) * v;
      std::printf("step %2zu  tokens %2lld  |out| %.6f  positions [%s]\n", s, static_cast<long long>(step.count),
                  std::sqrt(norm), pos_text.c_str());
    }
  }
  if (fixture) std::printf("worst relative error over all steps: %.3e\n", worst);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "glm4_attention: %s\n", e.what());
  return 1;
}

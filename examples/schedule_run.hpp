// Runs the fixture schedule through a GLM-4 attention layer (CPU or GPU) and prints each step against the transformers fixtures; shared by the two example programs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "glm4_attention_layer.hpp"

namespace posenc::examples {

/// The step's largest |output| in the fixture (the scale its errors are measured against).
inline double step_scale(const GlmAttentionFixture& fixture, const ScheduleStep& step, std::size_t width) {
  const auto first = static_cast<std::size_t>(step.first) * width;
  const auto rows = static_cast<std::size_t>(step.count) * width;
  double scale = 0.0;
  for (std::size_t i = 0; i < rows; ++i) scale = std::max(scale, std::abs(static_cast<double>(fixture.output[first + i])));
  return scale;
}

/// Max |out - fixture| of each token of the step (`out` holds the step's rows only).
inline std::vector<double> token_errors(std::span<const float> out, const GlmAttentionFixture& fixture,
                                        const ScheduleStep& step, std::size_t width) {
  const auto first = static_cast<std::size_t>(step.first) * width;
  std::vector<double> errors(static_cast<std::size_t>(step.count), 0.0);
  for (std::size_t t = 0; t < errors.size(); ++t) {
    for (std::size_t d = 0; d < width; ++d) {
      const std::size_t i = t * width + d;
      errors[t] = std::max(errors[t], std::abs(static_cast<double>(out[i]) - fixture.output[first + i]));
    }
  }
  return errors;
}

/// Runs `schedule` through `layer` (GlmAttentionLayer or GlmAttentionGpuLayer: anything with
/// contains(seq_id), add_sequence(seq_id) and step(entries, hidden, out) -> glm::PositionIds).
/// A sequence is added at its first step (its prefill). With a fixture, each step's hidden rows
/// come from it and a line reports the max error relative to the step's max|output| and whether
/// the positions equal transformers'; without, the inputs are deterministic and the line gives
/// the output's norm. Returns true when every step is within `tolerance` and every position
/// matches (always true without a fixture).
template <typename Layer>
bool run_schedule(Layer& layer, const GlmAttentionConfig& config, const std::vector<ScheduleStep>& schedule,
                  const GlmAttentionFixture* fixture, double tolerance) {
  std::vector<float> hidden;
  std::vector<float> out;
  double worst = 0.0;
  bool ok = true;
  for (std::size_t s = 0; s < schedule.size(); ++s) {
    const ScheduleStep& step = schedule[s];
    for (const auto& e : step.entries) {
      if (!layer.contains(e.seq_id)) layer.add_sequence(e.seq_id);
    }
    const auto width = static_cast<std::size_t>(config.hidden_size);
    const auto first = static_cast<std::size_t>(step.first) * width;
    const auto rows = static_cast<std::size_t>(step.count) * width;
    if (fixture != nullptr) {
      hidden.assign(fixture->hidden.begin() + static_cast<std::ptrdiff_t>(first),
                    fixture->hidden.begin() + static_cast<std::ptrdiff_t>(first + rows));
    } else {
      hidden.resize(rows);
      for (std::size_t i = 0; i < rows; ++i) hidden[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(first + i)));
    }
    out.resize(rows);
    const glm::PositionIds positions = layer.step(step.entries, hidden, out);

    std::string pos_text;
    for (const auto p : positions.stream(0)) {
      if (!pos_text.empty()) pos_text += ' ';
      pos_text.append(std::to_string(p));  // append, not operator+: g++ 12 -Wrestrict false positive
    }
    if (fixture == nullptr) {
      double norm = 0.0;
      for (const float v : out) norm += static_cast<double>(v) * v;
      std::printf("step %2zu  tokens %2lld  |out| %.6f  positions [%s]\n", s, static_cast<long long>(step.count),
                  std::sqrt(norm), pos_text.c_str());
      continue;
    }
    const std::vector<double> errors = token_errors(out, *fixture, step, width);
    const double err = errors.empty() ? 0.0 : *std::max_element(errors.begin(), errors.end());
    const double scale = step_scale(*fixture, step, width);
    bool same_positions = positions.tokens() == step.count;
    for (std::int64_t t = 0; same_positions && t < step.count; ++t) {
      same_positions = positions.at(0, t) == fixture->positions[static_cast<std::size_t>(step.first + t)];
    }
    const bool within = err <= tolerance * scale;
    worst = std::max(worst, err / scale);
    std::printf("step %2zu  tokens %2lld  max|err| %.3e  (relative %.3e%s)  positions %s [%s]\n", s,
                static_cast<long long>(step.count), err, err / scale, within ? "" : " > TOLERANCE",
                same_positions ? "match" : "DIFFER", pos_text.c_str());
    ok = ok && within && same_positions;
  }
  if (fixture != nullptr) std::printf("worst relative error over all steps: %.3e (tolerance %.0e)\n", worst, tolerance);
  return ok;
}

}  // namespace posenc::examples

// The GLM-4 attention example (examples/glm4_attention_layer) against transformers' GlmAttention at every step.
//
// Fixtures: tests/golden/glm_attention, written by scripts/golden/glm_attention.py (prefill of
// three sequences, 32 decode steps, a fourth sequence joining with a prefill chunk at step 10).
//
// Why the attention output is compared with a tolerance: the projections, QK^T, softmax and PV
// sums are accumulated in another order (and here in float64) than PyTorch's float32 GEMMs, so
// the last bits differ. The tolerance is max|err| <= 1e-5 * max|HF output| per step (float32 eps
// is 1.2e-7; observed at most 5e-7 relative, transformers 5.17 / torch 2.11).
//
// The RoPE part is checked on its own, with HF's own pre-RoPE K (captured inside forward) fed
// through CpuEngine::append and compared with HF's DynamicCache: Numerics::hf_compatible
// reproduces HF's arithmetic (float32 angle, products and sum rounded as HF rounds them), so the
// pass-through half of every head is bit-exact and the rotated half differs only through cos/sin:
// transformers' CPU cos/sin (SLEEF, up to 1 ulp) is not correctly rounded and posenc's is. The
// bound is therefore test_golden's float32 one, 2^-21 * max|x| of the head; in bf16/fp16 the same
// arithmetic is bit-exact (test_golden). Most elements are bit-identical here too (printed).
// The suite is named glm_attention_example (not CamelCase) so `ctest -R glm_attention` selects it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "glm4_attention_layer.hpp"
#include "schedule_run.hpp"
#include "posenc/cpu.hpp"
#include "posenc/kv_cache.hpp"

namespace ex = posenc::examples;

namespace {

constexpr double relative_tolerance = 1e-5;

ex::GlmAttentionFixture load_fixture(const ex::GlmAttentionConfig& config) {
  return ex::GlmAttentionFixture::load(POSENC_GLM_ATTENTION_DIR, config);
}

}  // namespace

TEST(glm_attention_example, MatchesTransformersAtEveryStep) {
  const ex::GlmAttentionConfig config;
  const auto fixture = load_fixture(config);
  const auto schedule = ex::schedule_from_tokens(fixture.steps, fixture.seq_ids);
  ASSERT_EQ(schedule.size(), 33u);  // prefill + 32 decode steps
  ex::GlmAttentionLayer layer(config, fixture.weights);

  const auto width = static_cast<std::size_t>(config.hidden_size);
  std::int64_t checked_tokens = 0;
  bool saw_mixed_step = false;
  for (std::size_t s = 0; s < schedule.size(); ++s) {
    const auto& step = schedule[s];
    for (const auto& e : step.entries) {
      if (!layer.tracker().contains(e.seq_id)) layer.add_sequence(e.seq_id);
      saw_mixed_step |= s > 0 && e.new_tokens > 1;
    }
    const auto first = static_cast<std::size_t>(step.first) * width;
    const auto rows = static_cast<std::size_t>(step.count) * width;
    const std::vector<float> hidden(fixture.hidden.begin() + static_cast<std::ptrdiff_t>(first),
                                    fixture.hidden.begin() + static_cast<std::ptrdiff_t>(first + rows));
    std::vector<float> out(rows);
    const auto positions = layer.step(step.entries, hidden, out);

    // The tracker's positions must be exactly the ones HF's rotary module was given.
    ASSERT_EQ(positions.tokens(), step.count) << "step " << s;
    for (std::int64_t t = 0; t < step.count; ++t) {
      ASSERT_EQ(positions.at(0, t), fixture.positions[static_cast<std::size_t>(step.first + t)])
          << "step " << s << " token " << t;
    }
    // Per token (so every sequence of the step is checked on its own), relative to the step's scale.
    const double scale = ex::step_scale(fixture, step, width);
    ASSERT_GT(scale, 0.0);
    const std::vector<double> errors = ex::token_errors(out, fixture, step, width);
    for (std::int64_t t = 0; t < step.count; ++t) {
      const double err = errors[static_cast<std::size_t>(t)];
      EXPECT_LE(err, relative_tolerance * scale)
          << "step " << s << " token " << t << " (sequence " << fixture.seq_ids[static_cast<std::size_t>(step.first + t)]
          << ", position " << positions.at(0, t) << ")";
      ++checked_tokens;
    }
  }
  EXPECT_EQ(checked_tokens, fixture.tokens);
  EXPECT_TRUE(saw_mixed_step) << "the schedule should contain a decode step with a joining prefill chunk";

  // The layer's K cache holds rotated keys computed from its own projection: close to HF's cache.
  const std::int64_t kv = config.kv_heads * config.head_dim;
  std::vector<std::int64_t> seen(4, 0);
  for (std::int64_t i = 0; i < fixture.tokens; ++i) {
    const auto seq = fixture.seq_ids[static_cast<std::size_t>(i)];
    const auto row = (layer.cache_block(seq) * config.max_len + seen[static_cast<std::size_t>(seq)]++) * kv;
    for (std::int64_t d = 0; d < kv; ++d) {
      EXPECT_NEAR(layer.k_cache()[static_cast<std::size_t>(row + d)], fixture.k_rope[static_cast<std::size_t>(i * kv + d)],
                  1e-5)
          << "token " << i << " element " << d;
    }
  }
}

TEST(glm_attention_example, RopeAndCacheWriteMatchHfCache) {
  const ex::GlmAttentionConfig config;
  const auto fixture = load_fixture(config);
  const std::int64_t tokens = fixture.tokens;
  const std::int64_t kv = config.kv_heads * config.head_dim;

  // All of HF's pre-RoPE keys in one append call, one slot per token (slot = token index).
  std::vector<float> q(static_cast<std::size_t>(tokens * kv), 0.0f);  // Q is required; reuse K's shape
  std::vector<float> v(static_cast<std::size_t>(tokens * kv), 0.0f);
  std::vector<float> k_cache(static_cast<std::size_t>(tokens * kv), -1.0f);
  std::vector<float> v_cache(k_cache.size(), -1.0f);
  std::vector<std::int64_t> slots(static_cast<std::size_t>(tokens));
  for (std::int64_t i = 0; i < tokens; ++i) slots[static_cast<std::size_t>(i)] = i;

  posenc::AppendArgs args;
  args.q = posenc::TensorView::contiguous(q.data(), posenc::DType::f32, tokens, config.kv_heads, config.head_dim);
  args.k = posenc::ConstTensorView(fixture.k_proj.data(), posenc::DType::f32, tokens, config.kv_heads, config.head_dim,
                                   kv, config.head_dim);
  args.v = posenc::ConstTensorView(v.data(), posenc::DType::f32, tokens, config.kv_heads, config.head_dim, kv,
                                   config.head_dim);
  args.positions = posenc::PositionsView{fixture.positions.data(), posenc::IndexType::i64, tokens, 1, 0};
  args.slots = slots.data();
  args.cache = posenc::KvCacheView{k_cache.data(), v_cache.data(), posenc::CacheDType::f32,
                                   posenc::CacheLayout::contiguous, config.kv_heads, config.head_dim, 1, tokens};
  const auto spec = ex::glm_rope_spec(config);
  ASSERT_EQ(spec.numerics, posenc::Numerics::hf_compatible);
  ASSERT_EQ(spec.rotary(), 8);
  posenc::CpuEngine(spec).append(args);

  const auto rotary = static_cast<std::size_t>(spec.rotary());
  const auto head_dim = static_cast<std::size_t>(config.head_dim);
  std::int64_t exact = 0;
  std::int64_t failures = 0;
  for (std::size_t head = 0; head < k_cache.size() / head_dim; ++head) {
    double max_x = 0.0;
    for (std::size_t d = 0; d < head_dim; ++d) max_x = std::max(max_x, std::abs(static_cast<double>(fixture.k_proj[head * head_dim + d])));
    for (std::size_t d = 0; d < head_dim; ++d) {
      const std::size_t i = head * head_dim + d;
      const bool same = std::memcmp(&k_cache[i], &fixture.k_rope[i], sizeof(float)) == 0;
      exact += same;
      // Outside the rotary window (GLM's partial RoPE) nothing may change a bit.
      const double bound = d < rotary ? std::ldexp(max_x, -21) : 0.0;
      if (!same && std::abs(static_cast<double>(k_cache[i]) - fixture.k_rope[i]) > bound && failures++ < 10) {
        ADD_FAILURE() << "token " << i / static_cast<std::size_t>(kv) << " element " << i % static_cast<std::size_t>(kv)
                      << ": posenc " << k_cache[i] << " vs HF " << fixture.k_rope[i] << " (bound " << bound << ")";
      }
    }
  }
  EXPECT_EQ(failures, 0);
  std::cout << "[ NOTE     ] rotated K: " << exact << "/" << k_cache.size() << " elements bit-identical to HF's cache\n";
}

TEST(glm_attention_example, DefaultScheduleMatchesFixtureSchedule) {
  const ex::GlmAttentionConfig config;
  const auto fixture = load_fixture(config);
  const auto a = ex::default_schedule();
  const auto b = ex::schedule_from_tokens(fixture.steps, fixture.seq_ids);
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t s = 0; s < a.size(); ++s) {
    ASSERT_EQ(a[s].first, b[s].first) << "step " << s;
    ASSERT_EQ(a[s].entries.size(), b[s].entries.size()) << "step " << s;
    for (std::size_t e = 0; e < a[s].entries.size(); ++e) {
      EXPECT_EQ(a[s].entries[e].seq_id, b[s].entries[e].seq_id) << "step " << s;
      EXPECT_EQ(a[s].entries[e].new_tokens, b[s].entries[e].new_tokens) << "step " << s;
    }
  }
}

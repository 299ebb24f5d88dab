// The C ABI's GLM builders and masks against posenc::glm on random inputs: the same ids, findings and tracker states, or the same error.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "posenc/error.hpp"
#include "posenc/glm.hpp"
#include "posenc/posenc.h"

namespace posenc::glm {
namespace {

using Ids = std::vector<std::int64_t>;

constexpr int rounds = 300;

/// A builder's handle, destroyed on scope exit, with its info read once.
struct Built {
  posenc_glm_positions* handle = nullptr;
  posenc_glm_positions_info info = posenc_glm_positions_info_make();
  Built() = default;
  Built(const Built&) = delete;
  Built& operator=(const Built&) = delete;
  ~Built() { posenc_glm_positions_destroy(handle); }

  PositionIds ids() const {
    return PositionIds(info.streams, info.tokens, Ids(info.values, info.values + info.streams * info.tokens));
  }
  std::vector<std::uint8_t> valid() const {
    if (info.valid == nullptr) return {};
    return {info.valid, info.valid + info.batch * info.length};
  }
  Ids list(const int64_t* p, std::int64_t n) const { return p == nullptr ? Ids{} : Ids(p, p + n); }
};

/// Per builder: how many rounds gave ids and how many an error (both must occur, see Coverage).
std::map<std::string, std::pair<int, int>>& outcomes() {
  static std::map<std::string, std::pair<int, int>> counts;
  return counts;
}

/// The random inputs of a test reached both outcomes of each builder it ran (ctest runs each test
/// in its own process, so the counts are the test's own).
void expect_both_outcomes(std::size_t builders) {
  EXPECT_EQ(outcomes().size(), builders);
  for (const auto& [name, counts] : outcomes()) {
    EXPECT_GE(counts.first, 10) << name << ": too few rounds gave ids";
    EXPECT_GE(counts.second, 1) << name << ": no round gave an error";
  }
  outcomes().clear();
}

/// Runs the C++ builder and the C builder; where the C++ one throws, the C one must fail with the
/// status of the same name as that error's kind and a message holding its text; otherwise `compare` checks the results.
template <class Cpp, class C, class Compare>
void same_result(const std::string& what, Cpp cpp, C c, Compare compare) {
  SCOPED_TRACE(what);
  Built built;
  std::string cpp_error;
  ErrorKind kind{};
  bool threw = false;
  try {
    auto expected = cpp();
    const posenc_status status = c(&built.handle);
    ASSERT_EQ(status, POSENC_OK) << posenc_last_error();
    ASSERT_NE(built.handle, nullptr);
    ASSERT_EQ(posenc_glm_positions_get_info(built.handle, &built.info), POSENC_OK);
    compare(expected, built);
    ++outcomes()[what].first;
    // The view an engine call takes is the same buffer.
    posenc_positions view;
    ASSERT_EQ(posenc_glm_positions_view(built.handle, &view), POSENC_OK);
    EXPECT_EQ(view.data, static_cast<const void*>(built.info.values));
    EXPECT_EQ(view.streams, built.info.streams);
    EXPECT_EQ(view.count, built.info.tokens);
    EXPECT_EQ(view.stream_stride, built.info.tokens);
    return;
  } catch (const Error& e) {
    threw = true;
    kind = e.kind();
    cpp_error = e.what();
  }
  ASSERT_TRUE(threw);
  ++outcomes()[what].second;
  posenc_glm_positions* untouched = reinterpret_cast<posenc_glm_positions*>(&built);
  posenc_glm_positions* out = untouched;
  EXPECT_STREQ(posenc_status_name(c(&out)), to_string(kind)) << cpp_error;
  EXPECT_EQ(out, untouched) << "a failed builder wrote its out-pointer";
  EXPECT_NE(std::string(posenc_last_error()).find(cpp_error), std::string::npos)
      << posenc_last_error() << " lacks " << cpp_error;
}

void expect_state(const Built& built, const SequenceState& want) {
  posenc_sequence_state s = posenc_sequence_state_make();
  ASSERT_EQ(posenc_glm_positions_tracker_state(built.handle, &s), POSENC_OK) << posenc_last_error();
  EXPECT_EQ((SequenceState{s.length, s.rope_delta, s.pin_from, s.pin_value}), want);
}

void expect_no_state(const Built& built) {
  posenc_sequence_state s = posenc_sequence_state_make();
  EXPECT_EQ(posenc_glm_positions_tracker_state(built.handle, &s), POSENC_ERROR_INVALID_ARGUMENT);
}

posenc_glm_special_tokens to_c(const GlmSpecialTokens& t) {
  posenc_glm_special_tokens c = posenc_glm_special_tokens_make();
  c.mask = t.mask;
  c.gmask = t.gmask;
  c.smask = t.smask;
  c.sop = t.sop;
  c.eop = t.eop;
  c.begin_of_image = t.begin_of_image;
  c.end_of_image = t.end_of_image;
  return c;
}

posenc_glm_vision_grid to_c(const VisionGrid& g) {
  posenc_glm_vision_grid c = posenc_glm_vision_grid_make(g.t, g.h, g.w);
  c.spatial_merge_size = g.spatial_merge_size;
  c.temporal_interval = g.temporal_interval;
  c.seconds_per_grid = g.seconds_per_grid;
  c.tokens_per_second = g.tokens_per_second;
  return c;
}

class CapiGlm : public ::testing::Test {
 protected:
  std::mt19937_64 rng{0x5eed'61a7'c0deULL};
  std::int64_t uniform(std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  }
  bool coin(double p = 0.5) { return std::bernoulli_distribution(p)(rng); }

  /// Text ids 11..20 mixed with the vocabulary's special tokens (so prompts with and without a
  /// mask, a <sop>, several masks, ... all occur).
  std::vector<TokenId> tokens(const GlmSpecialTokens& sp, std::int64_t max_len) {
    const TokenId pool[] = {sp.mask, sp.gmask, sp.smask, sp.sop, sp.eop, sp.begin_of_image, sp.end_of_image};
    std::vector<TokenId> out(static_cast<std::size_t>(uniform(0, max_len)));
    for (TokenId& t : out) {
      t = coin(0.75) ? uniform(11, 20) : pool[uniform(0, 6)];
      if (t == no_token) t = 11;
    }
    return out;
  }
  std::vector<std::uint8_t> mask01(std::int64_t n) {
    std::vector<std::uint8_t> m(static_cast<std::size_t>(n));
    for (auto& v : m) v = coin(0.7) ? 1 : 0;
    if (n > 0 && coin(0.05)) m[static_cast<std::size_t>(uniform(0, n - 1))] = 2;  // refused by both
    return m;
  }
  VisionGrid grid() {
    VisionGrid g;
    g.t = uniform(1, 3);
    g.spatial_merge_size = uniform(1, 2);
    g.h = g.spatial_merge_size * uniform(1, 3);
    g.w = g.spatial_merge_size * uniform(1, 3);
    if (coin(0.05)) g.h += 1;  // not divisible by the merge: refused by both
    g.temporal_interval = uniform(1, 3);
    if (coin(0.2)) {
      g.seconds_per_grid = 0.5f * static_cast<float>(uniform(1, 4));
      g.tokens_per_second = static_cast<float>(uniform(1, 4));
    }
    return g;
  }
};

TEST_F(CapiGlm, VocabulariesAreTheCppOnes) {
  const std::pair<int32_t, GlmSpecialTokens> vocabularies[] = {
      {POSENC_GLM_TOKENS_CHATGLM_6B, GlmSpecialTokens::chatglm_6b()},
      {POSENC_GLM_TOKENS_CHATGLM_6B_FIRST_RELEASE, GlmSpecialTokens::chatglm_6b_first_release()},
      {POSENC_GLM_TOKENS_GLM_130B, GlmSpecialTokens::glm_130b()},
      {POSENC_GLM_TOKENS_CHATGLM2, GlmSpecialTokens::chatglm2()},
      {POSENC_GLM_TOKENS_GLM4, GlmSpecialTokens::glm4()}};
  for (const auto& [id, want] : vocabularies) {
    posenc_glm_special_tokens got = posenc_glm_special_tokens_make();
    ASSERT_EQ(posenc_glm_special_tokens_get(id, &got), POSENC_OK);
    const posenc_glm_special_tokens expected = to_c(want);
    EXPECT_EQ(std::memcmp(&got, &expected, sizeof got), 0) << "vocabulary " << id;
  }
  const std::pair<int32_t, VisionTokens> families[] = {{POSENC_GLM_VISION_QWEN2_VL, VisionTokens::qwen2_vl()},
                                                       {POSENC_GLM_VISION_GLM4V, VisionTokens::glm4v()}};
  for (const auto& [id, want] : families) {
    posenc_glm_vision_tokens got = posenc_glm_vision_tokens_make();
    ASSERT_EQ(posenc_glm_vision_tokens_get(id, &got), POSENC_OK);
    EXPECT_EQ(got.image, want.image);
    EXPECT_EQ(got.video, want.video);
  }
}

TEST_F(CapiGlm, PlainAndPaddedBatches) {
  const auto same_batch = [](const BatchPositions& want, const Built& got) {
    EXPECT_EQ(got.ids(), want.positions);
    EXPECT_EQ(got.info.batch, want.batch);
    EXPECT_EQ(got.info.length, want.length);
    EXPECT_EQ(got.valid(), want.valid);
  };
  for (int round = 0; round < rounds; ++round) {
    const std::int64_t past = coin(0.05) ? -1 : uniform(0, 100), count = uniform(0, 9);
    same_result(
        "arange", [&] { return arange_positions(past, count); },
        [&](posenc_glm_positions** out) { return posenc_glm_arange(past, count, out); },
        [&](const PositionIds& want, const Built& got) {
          EXPECT_EQ(got.ids(), want);
          EXPECT_EQ(got.info.batch, 1);
          EXPECT_EQ(got.info.next_position, past + count);
          expect_no_state(got);
        });

    Ids lengths(static_cast<std::size_t>(uniform(0, 5)));
    for (auto& l : lengths) l = coin(0.03) ? -1 : uniform(0, 7);
    const std::int64_t fill = uniform(0, 1);
    same_result(
        "left_padded_arange", [&] { return left_padded_arange(lengths, fill); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_left_padded_arange(lengths.data(), lengths.size(), fill, out);
        },
        same_batch);

    const std::int64_t batch = uniform(0, 4), length = uniform(0, 6), new_tokens = uniform(0, 3);
    const std::vector<std::uint8_t> mask = mask01(batch * length);
    same_result(
        "positions_from_attention_mask", [&] { return positions_from_attention_mask(mask, batch, length, fill); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_positions_from_attention_mask(mask.data(), batch, length, fill, out);
        },
        same_batch);
    same_result(
        "next_positions_from_attention_mask",
        [&] { return next_positions_from_attention_mask(mask, batch, length, new_tokens); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_next_positions_from_attention_mask(mask.data(), batch, length, new_tokens, out);
        },
        same_batch);
  }
  expect_both_outcomes(4);
}

TEST_F(CapiGlm, ChatGlm6bGlm130bAndBlankInfilling) {
  for (int round = 0; round < rounds; ++round) {
    const GlmSpecialTokens six = coin() ? GlmSpecialTokens::chatglm_6b() : GlmSpecialTokens::chatglm_6b_first_release();
    const posenc_glm_special_tokens c_six = to_c(six);
    const bool defaults = six.mask == GlmSpecialTokens::chatglm_6b().mask && coin();  // NULL: ChatGLM-6B's own
    std::vector<TokenId> prompt = tokens(six, 7);
    if (coin()) prompt.insert(prompt.end(), {six.gmask, six.sop});
    const auto rule = coin() ? MaskTokenRule::mask_first : MaskTokenRule::gmask_first;
    const int32_t c_rule = rule == MaskTokenRule::mask_first ? POSENC_GLM_RULE_MASK_FIRST : POSENC_GLM_RULE_GMASK_FIRST;
    same_result(
        "chatglm6b_positions", [&] { return chatglm6b_positions(prompt, six, rule); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_chatglm6b_positions(prompt.data(), prompt.size(), defaults ? nullptr : &c_six, c_rule,
                                                out);
        },
        [&](const ChatGlm6bPositions& want, const Built& got) {
          EXPECT_EQ(got.ids(), want.positions);
          EXPECT_EQ(got.info.prefix_len, want.context_length);
          EXPECT_EQ(got.info.mask_position, want.mask_position);
          EXPECT_EQ(got.info.mask_token, want.mask_token);
          EXPECT_EQ(got.info.next_position, want.next().position);
          EXPECT_EQ(got.info.next_block, want.next().block);
          expect_state(got, tracker_state(want));
        });

    std::vector<std::vector<TokenId>> rows(static_cast<std::size_t>(uniform(0, 4)));
    Ids lengths, flat;
    for (auto& row : rows) {
      row = tokens(six, 6);
      if (coin(0.8)) row.insert(row.end(), {six.gmask, six.sop});  // most rows are valid prompts
      lengths.push_back(static_cast<std::int64_t>(row.size()));
      flat.insert(flat.end(), row.begin(), row.end());
    }
    same_result(
        "chatglm6b_batch", [&] { return chatglm6b_batch(rows, six, rule); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_chatglm6b_batch(flat.data(), lengths.data(), lengths.size(), &c_six, c_rule, out);
        },
        [&](const ChatGlm6bBatch& want, const Built& got) {
          EXPECT_EQ(got.ids(), want.padded.positions);
          EXPECT_EQ(got.info.batch, want.padded.batch);
          EXPECT_EQ(got.info.length, want.padded.length);
          EXPECT_EQ(got.valid(), want.padded.valid);
          EXPECT_EQ(got.info.mask_position_count, want.padded.batch);
          EXPECT_EQ(got.list(got.info.mask_positions, got.info.mask_position_count), want.mask_positions);
          EXPECT_EQ(got.list(got.info.pad_counts, got.info.batch), want.pad_counts);
          EXPECT_EQ(got.list(got.info.prefix_lens, got.info.batch), want.prefix_lens);
          expect_no_state(got);
        });

    const GlmSpecialTokens big = GlmSpecialTokens::glm_130b();
    const posenc_glm_special_tokens c_big = to_c(big);
    std::vector<TokenId> context = tokens(big, 7);
    if (coin()) context.insert(context.end(), {big.mask, big.sop});
    same_result(
        "glm130b_positions", [&] { return glm130b_positions(context, big); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_glm130b_positions(context.data(), context.size(), coin() ? nullptr : &c_big, out);
        },
        [&](const Glm130bPositions& want, const Built& got) {
          EXPECT_EQ(got.ids(), want.positions);
          EXPECT_EQ(got.info.prefix_len, want.sop_index);
          EXPECT_EQ(got.info.mask_position, want.mask_position);
          EXPECT_EQ(got.info.mask_token, want.mask_token);
          EXPECT_EQ(got.info.pinned, want.pinned ? 1 : 0);
          EXPECT_EQ(got.info.next_position, want.next_position(want.positions.tokens()));
          expect_state(got, tracker_state(want));
        });

    same_result(
        "blank_infilling_context", [&] { return blank_infilling_context(prompt, six); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_blank_infilling_context(prompt.data(), prompt.size(), &c_six, out);
        },
        [&](const BlankInfillingContext& want, const Built& got) {
          EXPECT_EQ(got.ids(), want.positions);
          EXPECT_EQ(got.info.prefix_len, want.sep);
          EXPECT_EQ(got.list(got.info.mask_positions, got.info.mask_position_count), want.mask_positions);
          expect_no_state(got);
        });
    const std::int64_t mask_position = uniform(-1, 8), first_block = uniform(0, 4), count = uniform(0, 4);
    same_result(
        "blank_infilling_generation", [&] { return blank_infilling_generation(mask_position, first_block, count); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_blank_infilling_generation(mask_position, first_block, count, out);
        },
        [&](const PositionIds& want, const Built& got) {
          EXPECT_EQ(got.ids(), want);
          EXPECT_EQ(got.info.next_position, mask_position);
          EXPECT_EQ(got.info.next_block, first_block + count);
        });
  }
  expect_both_outcomes(5);
}

TEST_F(CapiGlm, MropeFromSegmentsTokensAndDecode) {
  const VisionTokens vt = coin() ? VisionTokens::qwen2_vl() : VisionTokens::glm4v();
  posenc_glm_vision_tokens c_vt = posenc_glm_vision_tokens_make();
  c_vt.image = vt.image;
  c_vt.video = vt.video;
  for (int round = 0; round < rounds; ++round) {
    // Segments with their grids, and the token sequence they stand for.
    std::vector<MropeSegment> segments;
    std::vector<posenc_glm_mrope_segment> c_segments;
    std::vector<VisionGrid> grids, images, videos;
    std::vector<TokenId> toks;
    const auto layout = coin() ? VideoLayout::whole : VideoLayout::per_frame;
    for (std::int64_t n = uniform(0, 4); n > 0; --n) {
      if (coin()) {
        const std::int64_t text = coin(0.03) ? 0 : uniform(1, 3);  // 0 is refused by both
        segments.push_back(MropeSegment::text(text));
        c_segments.push_back({POSENC_GLM_SEGMENT_TEXT, 0, text});
        toks.insert(toks.end(), static_cast<std::size_t>(std::max<std::int64_t>(text, 0)), 11);
      } else {
        const VisionGrid g = grid();
        segments.push_back(MropeSegment::vision(g));
        c_segments.push_back({POSENC_GLM_SEGMENT_VISION, 0, static_cast<std::int64_t>(grids.size())});
        grids.push_back(g);
        const bool video = coin();
        (video ? videos : images).push_back(g);
        const std::int64_t merged = g.h % g.spatial_merge_size == 0 && g.w % g.spatial_merge_size == 0
                                        ? g.t * (g.h / g.spatial_merge_size) * (g.w / g.spatial_merge_size)
                                        : 1;
        toks.insert(toks.end(), static_cast<std::size_t>(merged), video ? vt.video : vt.image);
        if (video && layout == VideoLayout::per_frame && coin()) toks.push_back(12);  // ends the frames early
      }
    }
    if (!toks.empty() && coin(0.1)) toks.pop_back();  // a short last run
    std::vector<posenc_glm_vision_grid> c_grids, c_images, c_videos;
    for (const auto& g : grids) c_grids.push_back(to_c(g));
    for (const auto& g : images) c_images.push_back(to_c(g));
    for (const auto& g : videos) c_videos.push_back(to_c(g));
    const auto rule = coin() ? NextTextStart::max_plus_one : NextTextStart::spatial_extent;
    const int32_t c_rule =
        rule == NextTextStart::max_plus_one ? POSENC_GLM_NEXT_TEXT_MAX_PLUS_ONE : POSENC_GLM_NEXT_TEXT_SPATIAL_EXTENT;
    const auto compare = [&](const MropePositions& want, const Built& got) {
      EXPECT_EQ(got.ids(), want.positions);
      EXPECT_EQ(got.info.rope_delta, want.rope_delta);
      EXPECT_EQ(got.info.next_position, want.next_position);
      expect_state(got, tracker_state(want));
    };
    same_result(
        "mrope_positions", [&] { return mrope_positions(segments, rule); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_mrope_positions(c_segments.data(), c_segments.size(), c_grids.data(), c_grids.size(),
                                            c_rule, out);
        },
        compare);
    same_result(
        "mrope_positions_from_tokens",
        [&] { return mrope_positions_from_tokens(toks, vt, images, videos, rule, layout); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_mrope_positions_from_tokens(
              toks.data(), toks.size(), &c_vt, c_images.data(), c_images.size(), c_videos.data(), c_videos.size(),
              c_rule, layout == VideoLayout::whole ? POSENC_GLM_VIDEO_WHOLE : POSENC_GLM_VIDEO_PER_FRAME, out);
        },
        compare);

    const std::int64_t past = uniform(0, 20), delta = uniform(-25, 5), count = uniform(0, 3);
    same_result(
        "mrope_decode_positions", [&] { return mrope_decode_positions(past, delta, count); },
        [&](posenc_glm_positions** out) { return posenc_glm_mrope_decode_positions(past, delta, count, out); },
        [&](const PositionIds& want, const Built& got) {
          EXPECT_EQ(got.ids(), want);
          EXPECT_EQ(got.info.next_position, past + delta + count);
        });

    const GlmSpecialTokens four = GlmSpecialTokens::glm4();
    std::vector<TokenId> image_prompt = tokens(four, 4);
    if (coin(0.8)) image_prompt.insert(image_prompt.end(), {four.begin_of_image, 0, four.end_of_image, 11});
    const std::int64_t patches = uniform(0, 5);
    same_result(
        "glm4v_remote_positions", [&] { return glm4v_remote_positions(image_prompt, patches, four); },
        [&](posenc_glm_positions** out) {
          return posenc_glm_glm4v_remote_positions(image_prompt.data(), image_prompt.size(), patches, nullptr, out);
        },
        [&](const Glm4vRemotePositions& want, const Built& got) {
          EXPECT_EQ(got.ids(), want.positions);
          EXPECT_EQ(got.info.rope_delta, want.rope_delta);
          EXPECT_EQ(got.info.boi_index, want.boi_index);
          EXPECT_EQ(got.info.num_patches, want.num_patches);
          EXPECT_EQ(got.info.next_position, want.positions.tokens() + want.rope_delta);
          expect_state(got, tracker_state(want));
        });
  }
  expect_both_outcomes(4);
}

/// A custom predicate with some structure (several ranges per row).
int32_t stripes(void* context, int64_t q, int64_t k) {
  const auto period = *static_cast<const std::int64_t*>(context);
  return (q + k) % period != 0 ? 1 : 0;
}

TEST_F(CapiGlm, MasksMatchRangesAndDense) {
  std::int64_t period = 3;
  int built = 0, refused = 0;
  for (int round = 0; round < rounds; ++round) {
    MaskGeometry g;
    g.batch = uniform(1, 3);
    g.k_len = uniform(0, 9);
    g.q_len = coin(0.05) ? g.k_len + 1 : uniform(0, g.k_len);  // q_len > k_len: refused by both
    if (coin()) g.valid = mask01(g.batch * g.k_len);
    g.empty_rows = coin() ? EmptyRows::masked : EmptyRows::all_visible;
    std::vector<AttentionPattern> patterns;
    std::vector<posenc_glm_attention_pattern> c_patterns;
    std::vector<Ids> globals;
    globals.reserve(3);
    for (std::int64_t n = coin() ? 1 : g.batch; n > 0; --n) {
      const auto kind = static_cast<int32_t>(uniform(0, 5));
      posenc_glm_attention_pattern c = posenc_glm_pattern_make(kind);
      c.prefix_len = uniform(0, g.k_len + 1);
      c.window = uniform(0, 4);
      globals.push_back({uniform(0, g.k_len), uniform(0, g.k_len)});
      c.global_positions = globals.back().data();
      c.global_count = globals.back().size();
      c.predicate = stripes;
      c.context = &period;
      c_patterns.push_back(c);
      switch (kind) {
        case POSENC_GLM_PATTERN_CAUSAL: patterns.push_back(AttentionPattern::causal()); break;
        case POSENC_GLM_PATTERN_BIDIRECTIONAL: patterns.push_back(AttentionPattern::bidirectional()); break;
        case POSENC_GLM_PATTERN_PREFIX_LM: patterns.push_back(AttentionPattern::prefix_lm(c.prefix_len)); break;
        case POSENC_GLM_PATTERN_LOCAL_WINDOW: patterns.push_back(AttentionPattern::local_window(c.window)); break;
        case POSENC_GLM_PATTERN_GLOBAL_LOCAL:
          patterns.push_back(AttentionPattern::global_local(globals.back(), c.window));
          break;
        default:
          patterns.push_back(AttentionPattern::custom([&](std::int64_t q, std::int64_t k) {
            return stripes(&period, q, k) != 0;
          }));
      }
    }
    posenc_glm_mask_geometry c_g = posenc_glm_mask_geometry_make();
    c_g.batch = g.batch;
    c_g.q_len = g.q_len;
    c_g.k_len = g.k_len;
    c_g.valid = g.valid.empty() ? nullptr : g.valid.data();
    c_g.empty_rows = g.empty_rows == EmptyRows::masked ? POSENC_GLM_EMPTY_ROWS_MASKED : POSENC_GLM_EMPTY_ROWS_ALL_VISIBLE;

    SCOPED_TRACE("round " + std::to_string(round));
    posenc_glm_mask* mask = nullptr;
    const posenc_status status = posenc_glm_mask_create(c_patterns.data(), c_patterns.size(), &c_g, &mask);
    MaskRanges want;
    try {
      want = mask_ranges(patterns, g);
    } catch (const Error& e) {
      EXPECT_STREQ(posenc_status_name(status), to_string(e.kind())) << e.what();
      EXPECT_NE(std::string(posenc_last_error()).find(e.what()), std::string::npos) << posenc_last_error();
      EXPECT_EQ(mask, nullptr);
      ++refused;
      continue;
    }
    ASSERT_EQ(status, POSENC_OK) << posenc_last_error();
    posenc_glm_mask_info info = posenc_glm_mask_info_make();
    ASSERT_EQ(posenc_glm_mask_get_info(mask, &info), POSENC_OK);
    EXPECT_EQ(info.batch, want.batch);
    EXPECT_EQ(info.q_len, want.q_len);
    EXPECT_EQ(info.k_len, want.k_len);
    EXPECT_EQ(Ids(info.row_offsets, info.row_offsets + want.rows() + 1), want.row_offsets);
    ASSERT_EQ(info.range_count, static_cast<std::int64_t>(want.ranges.size()));
    for (std::size_t i = 0; i < want.ranges.size(); ++i) {
      EXPECT_EQ(info.ranges[i].begin, want.ranges[i].begin) << "range " << i;
      EXPECT_EQ(info.ranges[i].end, want.ranges[i].end) << "range " << i;
    }
    const DenseMask dense = to_dense(want);
    std::vector<float> got(dense.values.size() + 1, 7.0f);  // one poisoned element past the end
    EXPECT_EQ(posenc_glm_mask_dense(mask, got.data(), got.size()), POSENC_OK) << posenc_last_error();
    EXPECT_EQ(got.back(), 7.0f);
    if (!dense.values.empty()) {  // memcmp of an empty vector's data() (null) is undefined behaviour
      EXPECT_EQ(std::memcmp(got.data(), dense.values.data(), dense.values.size() * sizeof(float)), 0);
      EXPECT_EQ(posenc_glm_mask_dense(mask, got.data(), dense.values.size() - 1), POSENC_ERROR_INVALID_ARGUMENT);
    }
    posenc_glm_mask_destroy(mask);
    ++built;
  }
  EXPECT_GE(built, 10);
  EXPECT_GE(refused, 1);
}

}  // namespace
}  // namespace posenc::glm

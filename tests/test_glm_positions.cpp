// GLM position ids per generation: every worked example of docs/NUMERICS.md §7 exactly, and clear errors for bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "posenc/error.hpp"
#include "posenc/glm.hpp"
#include "support/specs.hpp"

namespace posenc::glm {
namespace {

using Ids = std::vector<std::int64_t>;

using test::expect_error;

Ids stream(const PositionIds& p, int s) {
  const auto v = p.stream(s);
  return {v.begin(), v.end()};
}

// Token ids used as ordinary text in the examples (well below every special id).
constexpr TokenId t0 = 11, t1 = 12, t2 = 13, t3 = 14, t4 = 15, t5 = 16;

// ---- PositionIds -----------------------------------------------------------------------------

TEST(glmPositionIds, StreamMajorLayoutAndAccessors) {
  PositionIds p(2, 3, {0, 1, 2, 10, 11, 12});
  EXPECT_EQ(p.streams(), 2);
  EXPECT_EQ(p.tokens(), 3);
  EXPECT_EQ(p.at(0, 2), 2);
  EXPECT_EQ(p.at(1, 0), 10);
  EXPECT_EQ(stream(p, 1), (Ids{10, 11, 12}));
  const PositionsView v = p.view(1);
  EXPECT_EQ(v.count, 3);
  EXPECT_EQ(v.type, IndexType::i64);
  EXPECT_EQ(static_cast<const std::int64_t*>(v.data), p.data() + 3);
  p.set(0, 1, 7);
  EXPECT_EQ(p.values(), (Ids{0, 7, 2, 10, 11, 12}));
}

TEST(glmPositionIds, AppendConcatenatesPerStream) {
  PositionIds a(2, 2, {0, 1, 5, 6});
  a.append(PositionIds(2, 1, {2, 7}));
  EXPECT_EQ(a.values(), (Ids{0, 1, 2, 5, 6, 7}));
  PositionIds empty;
  empty.append(PositionIds(3, 1, {4, 4, 4}));
  EXPECT_EQ(empty.streams(), 3);
  EXPECT_EQ(empty.values(), (Ids{4, 4, 4}));
}

TEST(glmPositionIds, BadShapesAreClearErrors) {
  expect_error(
      [] {
        PositionIds(2, 3, {0, 1, 2});
      },
      ErrorKind::invalid_argument, {"3 values", "2 streams", "3 tokens", "expected 6"});
  expect_error([] { PositionIds(4, 1); }, ErrorKind::invalid_argument,
               {"streams is 4", "1, 2 or 3"});
  expect_error([] { PositionIds(1, -1); }, ErrorKind::invalid_argument, {"tokens is -1"});
  expect_error(
      [] {
        PositionIds a(1, 2);
        a.append(PositionIds(2, 2));
      },
      ErrorKind::invalid_argument, {"mismatched streams", "2 streams appended to 1 streams"});
  expect_error([] { (void)PositionIds(2, 2).at(2, 0); }, ErrorKind::out_of_range,
               {"stream 2", "2 streams"});
  expect_error([] { (void)PositionIds(2, 2).at(1, 2); }, ErrorKind::out_of_range,
               {"token 2", "2 tokens"});
}

TEST(glmPositionIds, ValidateNamesStreamTokenValueAndLimit) {
  PositionIds p(2, 3, {0, 1, 2, 0, 1, 9});
  EXPECT_NO_THROW(p.validate(10));
  expect_error([&] { p.validate(9); }, ErrorKind::out_of_range,
               {"position 9", "stream 1", "token 2", "[0, 9)"});
  PositionIds neg(1, 2, {0, -1});
  expect_error([&] { neg.validate(100); }, ErrorKind::out_of_range, {"position -1", "token 1"});
}

TEST(glmPositionIds, ArangeIsPastLenPlusIndex) {
  EXPECT_EQ(stream(arange_positions(0, 4), 0), (Ids{0, 1, 2, 3}));
  // HF forward without position_ids on a left-padded row: past_len + arange(S), pads counted.
  EXPECT_EQ(stream(arange_positions(5, 3), 0), (Ids{5, 6, 7}));
  expect_error([] { arange_positions(-1, 2); }, ErrorKind::invalid_argument, {"past_len is -1"});
}

// ---- special tokens --------------------------------------------------------------------------

TEST(glmSpecialTokens, DefaultsPerGeneration) {
  const GlmSpecialTokens c6 = GlmSpecialTokens::chatglm_6b();
  EXPECT_EQ(c6.mask, 130000);
  EXPECT_EQ(c6.gmask, 130001);
  EXPECT_EQ(c6.sop, 130004);
  EXPECT_EQ(c6.eop, 130005);
  const GlmSpecialTokens first = GlmSpecialTokens::chatglm_6b_first_release();
  EXPECT_EQ(first.mask, 150000);
  EXPECT_EQ(first.gmask, 150001);
  EXPECT_EQ(first.sop, 150004);
  EXPECT_EQ(GlmSpecialTokens::glm_130b().smask, 150002);
  EXPECT_EQ(GlmSpecialTokens::chatglm2().gmask, 64790);
  EXPECT_EQ(GlmSpecialTokens::chatglm2().sop, 64792);
  const GlmSpecialTokens g4 = GlmSpecialTokens::glm4();
  EXPECT_EQ(g4.gmask, 151331);
  EXPECT_EQ(g4.sop, 151333);
  EXPECT_EQ(g4.begin_of_image, 151339);
  EXPECT_EQ(g4.end_of_image, 151340);
  for (const auto& t : {c6, first, GlmSpecialTokens::chatglm2(), g4}) EXPECT_NO_THROW(t.validate());
}

TEST(glmSpecialTokens, DuplicateOrNegativeIdsAreErrors) {
  GlmSpecialTokens t;
  t.sop = t.gmask;
  expect_error([&] { t.validate(); }, ErrorKind::invalid_argument, {"<sop>", "[gMASK]", "130001"});
  GlmSpecialTokens n;
  n.eop = -7;
  expect_error([&] { n.validate(); }, ErrorKind::invalid_argument, {"<eop>", "-7"});
}

// ---- original GLM blank infilling (docs/NUMERICS.md §7.1) -------------------------------------

TEST(glmBlankInfilling, WorkedExampleSixTokensTwoSpans) {
  // Text x1..x6, spans {x3} and {x5, x6}; Part B in the shuffled order (span 1, then span 0).
  const GlmSpecialTokens sp;
  const std::vector<TokenId> x = {t0, t1, t2, t3, t4, t5};
  const std::vector<BlankSpan> spans = {{2, 1}, {4, 2}};
  const std::vector<std::int64_t> order = {1, 0};
  const BlankInfillingSample s = make_blank_infilling(x, spans, order, sp);

  const TokenId M = sp.mask, S = sp.sop, E = sp.eop;
  // Part A [x1 x2 M x4 M]; Part B [s x5 x6] [s x3].
  EXPECT_EQ(s.tokens, (std::vector<TokenId>{t0, t1, M, t3, M, S, t4, t5, S, t2}));
  EXPECT_EQ(s.sep, 5);
  EXPECT_EQ(stream(s.positions, 0), (Ids{0, 1, 2, 3, 4, 4, 4, 4, 2, 2}));
  EXPECT_EQ(stream(s.positions, 1), (Ids{0, 0, 0, 0, 0, 1, 2, 3, 1, 2}));
  EXPECT_EQ(s.targets, (std::vector<TokenId>{t0, t1, M, t3, M, t4, t5, E, t2, E}));
  EXPECT_EQ(s.loss_mask, (std::vector<std::uint8_t>{0, 0, 0, 0, 0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(s.mask_positions, (Ids{2, 4}));
  EXPECT_EQ(s.block_starts, (Ids{5, 8}));
  EXPECT_EQ(s.attention().kind, MaskPattern::prefix_lm);
  EXPECT_EQ(s.attention().prefix_len, 5);
}

TEST(glmBlankInfilling, DefaultOrderTrailingTextAndMaskKinds) {
  const GlmSpecialTokens sp;
  const std::vector<TokenId> x = {t0, t1, t2, t3, t4, t5};
  // Spans given out of text order; Part B follows the given order when part_b_order is empty.
  const std::vector<BlankSpan> spans = {{3, 2, BlankKind::gmask}, {0, 1, BlankKind::smask}};
  const BlankInfillingSample s = make_blank_infilling(x, spans, {}, sp);
  // Part A [sM x2 x3 gM x6]: the text after the last span stays.
  EXPECT_EQ(s.tokens,
            (std::vector<TokenId>{sp.smask, t1, t2, sp.gmask, t5, sp.sop, t3, t4, sp.sop, t0}));
  EXPECT_EQ(s.sep, 5);
  EXPECT_EQ(s.mask_positions, (Ids{3, 0}));
  EXPECT_EQ(stream(s.positions, 0), (Ids{0, 1, 2, 3, 4, 3, 3, 3, 0, 0}));
  EXPECT_EQ(stream(s.positions, 1), (Ids{0, 0, 0, 0, 0, 1, 2, 3, 1, 2}));
}

TEST(glmBlankInfilling, BadSpansAreClearErrors) {
  const GlmSpecialTokens sp;
  const std::vector<TokenId> x = {t0, t1, t2, t3, t4, t5};
  const auto build = [&](std::vector<BlankSpan> spans, std::vector<std::int64_t> order = {}) {
    return make_blank_infilling(x, spans, order, sp);
  };
  expect_error([&] { build({}); }, ErrorKind::invalid_argument, {"no spans"});
  expect_error(
      [&] {
        build({{1, 3}, {2, 1}});
      },
      ErrorKind::invalid_argument, {"span 1 [2, 3) overlaps span 0 [1, 4)"});
  expect_error(
      [&] {
        build({{5, 2}});
      },
      ErrorKind::out_of_range, {"span 0", "[5, 5 + 2)", "[0, 6)"});
  expect_error([&] { build({{-1, 1}}); }, ErrorKind::out_of_range, {"span 0", "-1"});
  expect_error(
      [&] {
        build({{1, 1}, {3, 0}});
      },
      ErrorKind::invalid_argument, {"span 1", "length 0"});
  expect_error(
      [&] {
        build({{1, 1}, {3, 1}}, {0, 0});
      },
      ErrorKind::invalid_argument, {"part_b_order[1] = 0", "repeats"});
  expect_error(
      [&] {
        build({{1, 1}, {3, 1}}, {0, 5});
      },
      ErrorKind::out_of_range, {"part_b_order[1] = 5", "[0, 2)"});
  expect_error(
      [&] {
        build({{1, 1}, {3, 1}}, {0});
      },
      ErrorKind::invalid_argument, {"1 entries for 2 spans"});
}

TEST(glmBlankInfilling, InferenceContextAndGeneration) {
  const GlmSpecialTokens sp;
  const std::vector<TokenId> ctx = {t0, t1, sp.mask, t3, sp.gmask};
  const BlankInfillingContext c = blank_infilling_context(ctx, sp);
  EXPECT_EQ(c.sep, 5);
  EXPECT_EQ(c.mask_positions, (Ids{2, 4}));
  EXPECT_EQ(stream(c.positions, 0), (Ids{0, 1, 2, 3, 4}));
  EXPECT_EQ(stream(c.positions, 1), (Ids{0, 0, 0, 0, 0}));
  // Generating into mask 2: <sop> then generated tokens, all at position 2, blocks 1, 2, 3.
  const PositionIds gen = blank_infilling_generation(2, 1, 3);
  EXPECT_EQ(stream(gen, 0), (Ids{2, 2, 2}));
  EXPECT_EQ(stream(gen, 1), (Ids{1, 2, 3}));
  // A decode step continues the block count.
  EXPECT_EQ(stream(blank_infilling_generation(2, 4, 1), 1), (Ids{4}));

  const std::vector<TokenId> plain = {t0, t1};
  expect_error([&] { blank_infilling_context(plain, sp); }, ErrorKind::invalid_argument,
               {"no mask token", "[MASK]=130000", "[sMASK]=130002", "[gMASK]=130001"});
  expect_error([] { blank_infilling_generation(2, 0, 1); }, ErrorKind::invalid_argument,
               {"first_block is 0"});
}

// ---- GLM-130B (docs/NUMERICS.md §7.2) ---------------------------------------------------------

TEST(glmGlm130b, MaskPinsPositionsFromSop) {
  const GlmSpecialTokens sp = GlmSpecialTokens::glm_130b();
  // context [t0 t1 [MASK] t3] + <sop> + two generated tokens
  const std::vector<TokenId> seq = {t0, t1, sp.mask, t3, sp.sop, t4, t5};
  const Glm130bPositions p = glm130b_positions(seq, sp);
  EXPECT_TRUE(p.pinned);
  EXPECT_EQ(p.mask_position, 2);
  EXPECT_EQ(p.sop_index, 4);
  EXPECT_EQ(p.mask_token, sp.mask);
  EXPECT_EQ(stream(p.positions, 0), (Ids{0, 1, 2, 3, 2, 2, 2}));
  EXPECT_EQ(p.next_position(7), 2);
  EXPECT_EQ(p.attention().prefix_len, 4);  // columns [0, context_length - 1) visible to all
}

TEST(glmGlm130b, GmaskContinuesPositions) {
  const GlmSpecialTokens sp = GlmSpecialTokens::glm_130b();
  const std::vector<TokenId> seq = {t0, t1, t2, sp.gmask, sp.sop, t4};
  const Glm130bPositions p = glm130b_positions(seq, sp);
  EXPECT_FALSE(p.pinned);
  EXPECT_EQ(p.mask_position, 3);
  EXPECT_EQ(stream(p.positions, 0), (Ids{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(p.next_position(6), 6);
}

TEST(glmGlm130b, MaskPriorityIsMaskThenSmaskThenGmask) {
  const GlmSpecialTokens sp = GlmSpecialTokens::glm_130b();
  const std::vector<TokenId> a = {sp.gmask, t1, sp.mask, sp.sop};
  EXPECT_EQ(glm130b_positions(a, sp).mask_position, 2);
  const std::vector<TokenId> b = {sp.gmask, sp.smask, t2, sp.sop, t4};
  const Glm130bPositions pb = glm130b_positions(b, sp);
  EXPECT_EQ(pb.mask_position, 1);
  EXPECT_TRUE(pb.pinned);
  EXPECT_EQ(stream(pb.positions, 0), (Ids{0, 1, 2, 1, 1}));
}

TEST(glmGlm130b, MissingTokensAreClearErrors) {
  const GlmSpecialTokens sp = GlmSpecialTokens::glm_130b();
  const std::vector<TokenId> no_mask = {t0, t1, sp.sop};
  expect_error([&] { glm130b_positions(no_mask, sp); }, ErrorKind::invalid_argument,
               {"no mask token", "[MASK]=150000", "[sMASK]=150002", "[gMASK]=150001"});
  // A mask after <sop> is a generated token, not the context's mask.
  const std::vector<TokenId> late = {t0, sp.sop, sp.mask};
  expect_error([&] { glm130b_positions(late, sp); }, ErrorKind::invalid_argument,
               {"no mask token before <sop> at index 1"});
  const std::vector<TokenId> no_sop = {t0, sp.mask, t2};
  expect_error([&] { glm130b_positions(no_sop, sp); }, ErrorKind::invalid_argument,
               {"no <sop>", "150004"});
}

// ---- ChatGLM-6B (docs/NUMERICS.md §7.3) -------------------------------------------------------

TEST(glmChatGlm6b, PromptWithGmaskAndDecodeSteps) {
  const GlmSpecialTokens sp;
  const std::vector<TokenId> prompt = {t0, t1, t2, sp.gmask, sp.sop};
  const ChatGlm6bPositions p = chatglm6b_positions(prompt, sp);
  EXPECT_EQ(stream(p.positions, 0), (Ids{0, 1, 2, 3, 3}));
  EXPECT_EQ(stream(p.positions, 1), (Ids{0, 0, 0, 0, 1}));
  EXPECT_EQ(p.context_length, 4);
  EXPECT_EQ(p.mask_position, 3);
  EXPECT_EQ(p.mask_token, sp.gmask);
  const Position2d d1 = p.next();
  EXPECT_EQ(d1, (Position2d{3, 2}));
  EXPECT_EQ(chatglm6b_decode_step(d1), (Position2d{3, 3}));

  // Prompt plus generated tokens in one call gives the same ids the decode steps give.
  const std::vector<TokenId> longer = {t0, t1, t2, sp.gmask, sp.sop, t4, t5};
  const ChatGlm6bPositions q = chatglm6b_positions(longer, sp);
  EXPECT_EQ(stream(q.positions, 0), (Ids{0, 1, 2, 3, 3, 3, 3}));
  EXPECT_EQ(stream(q.positions, 1), (Ids{0, 0, 0, 0, 1, 2, 3}));
}

TEST(glmChatGlm6b, PrefixMaskSeesColumnsBeforeSop) {
  const GlmSpecialTokens sp;
  const std::vector<TokenId> prompt = {t0, t1, t2, sp.gmask, sp.sop};
  const ChatGlm6bPositions p = chatglm6b_positions(prompt, sp);
  const DenseMask m = dense_mask(p.attention(), 5, 5);
  for (std::int64_t q = 0; q < 5; ++q) {
    for (std::int64_t k = 0; k < 5; ++k) {
      // tril(ones) with columns 0..3 set visible for every row.
      const bool visible = k <= 3 || k <= q;
      EXPECT_EQ(m.at(0, q, k), visible ? 0.0f : -INFINITY) << "q " << q << " k " << k;
    }
  }
}

TEST(glmChatGlm6b, MaskAndGmaskTokenizerVersusModelRule) {
  const GlmSpecialTokens sp;
  // [MASK] at index 1 plus the appended [gMASK] <sop>.
  const std::vector<TokenId> prompt = {t0, sp.mask, t2, sp.gmask, sp.sop, t5};
  const ChatGlm6bPositions tok = chatglm6b_positions(prompt, sp, MaskTokenRule::mask_first);
  EXPECT_EQ(tok.mask_position, 1);
  EXPECT_EQ(stream(tok.positions, 0), (Ids{0, 1, 2, 3, 1, 1}));
  EXPECT_EQ(stream(tok.positions, 1), (Ids{0, 0, 0, 0, 1, 2}));
  // The model-side fallback picks [gMASK] first: the two disagree.
  const ChatGlm6bPositions model = chatglm6b_positions(prompt, sp, MaskTokenRule::gmask_first);
  EXPECT_EQ(model.mask_position, 3);
  EXPECT_EQ(stream(model.positions, 0), (Ids{0, 1, 2, 3, 3, 3}));
  // Without [gMASK], gmask_first falls back to [MASK].
  const std::vector<TokenId> only_mask = {t0, sp.mask, sp.sop};
  EXPECT_EQ(chatglm6b_positions(only_mask, sp, MaskTokenRule::gmask_first).mask_position, 1);
}

TEST(glmChatGlm6b, FirstReleaseIdsAndErrors) {
  const GlmSpecialTokens first = GlmSpecialTokens::chatglm_6b_first_release();
  const std::vector<TokenId> prompt = {t0, first.gmask, first.sop};
  EXPECT_EQ(stream(chatglm6b_positions(prompt, first).positions, 0), (Ids{0, 1, 1}));
  // Final-vocabulary ids do not match first-release prompts.
  expect_error([&] { chatglm6b_positions(prompt, GlmSpecialTokens::chatglm_6b()); },
               ErrorKind::invalid_argument, {"no <sop>", "130004"});
  const GlmSpecialTokens sp;
  const std::vector<TokenId> no_mask = {t0, t1, sp.sop};
  expect_error([&] { chatglm6b_positions(no_mask, sp); }, ErrorKind::invalid_argument,
               {"no mask token before <sop> at index 2", "[MASK]=130000", "[gMASK]=130001"});
}

// ---- M-RoPE (docs/NUMERICS.md §7.5) -----------------------------------------------------------

VisionGrid grid(std::int64_t t, std::int64_t h, std::int64_t w, std::int64_t merge = 2) {
  VisionGrid g;
  g.t = t;
  g.h = h;
  g.w = w;
  g.spatial_merge_size = merge;
  return g;
}

TEST(glmMrope, Qwen2VlImageWorkedExample) {
  // 3 text tokens, an image 1x4x4 (merge 2 -> 2x2), 2 trailing text tokens: 9 tokens.
  const std::vector<MropeSegment> segs = {
      MropeSegment::text(3), MropeSegment::vision(grid(1, 4, 4)), MropeSegment::text(2)};
  for (NextTextStart rule : {NextTextStart::max_plus_one, NextTextStart::spatial_extent}) {
    const MropePositions m = mrope_positions(segs, rule);
    ASSERT_EQ(m.positions.streams(), 3);
    ASSERT_EQ(m.positions.tokens(), 9);
    EXPECT_EQ(stream(m.positions, 0), (Ids{0, 1, 2, 3, 3, 3, 3, 5, 6}));
    EXPECT_EQ(stream(m.positions, 1), (Ids{0, 1, 2, 3, 3, 4, 4, 5, 6}));
    EXPECT_EQ(stream(m.positions, 2), (Ids{0, 1, 2, 3, 4, 3, 4, 5, 6}));
    EXPECT_EQ(m.rope_delta, -2);  // 7 - 9
    EXPECT_EQ(m.next_position, 7);
    // The first decode token: past_len 9 + rope_delta -2 = 7 on every axis.
    const PositionIds d = mrope_decode_positions(9, m.rope_delta, 2);
    for (int s = 0; s < 3; ++s) EXPECT_EQ(stream(d, s), (Ids{7, 8})) << "axis " << s;
  }
}

TEST(glmMrope, VideoLongerThanWideExposesVersionDifference) {
  // Video T = 3 of a 1x1 merged grid: t-ids run to start + 2 while max(H', W') = 1.
  const std::vector<MropeSegment> segs = {
      MropeSegment::text(1), MropeSegment::vision(grid(3, 2, 2)), MropeSegment::text(1)};
  const MropePositions v4 = mrope_positions(segs, NextTextStart::max_plus_one);
  EXPECT_EQ(stream(v4.positions, 0), (Ids{0, 1, 2, 3, 4}));
  EXPECT_EQ(stream(v4.positions, 1), (Ids{0, 1, 1, 1, 4}));
  EXPECT_EQ(stream(v4.positions, 2), (Ids{0, 1, 1, 1, 4}));
  EXPECT_EQ(v4.rope_delta, 0);
  const MropePositions v5 = mrope_positions(segs, NextTextStart::spatial_extent);
  EXPECT_EQ(stream(v5.positions, 0), (Ids{0, 1, 2, 3, 2}));
  EXPECT_EQ(stream(v5.positions, 1), (Ids{0, 1, 1, 1, 2}));
  EXPECT_EQ(v5.rope_delta, -1);  // max id 3 + 1 - 5 tokens
}

TEST(glmMrope, TemporalIntervalAndQwen25FloatRule) {
  VisionGrid g = grid(4, 2, 2);
  g.temporal_interval = 2;
  const std::vector<MropeSegment> a = {MropeSegment::vision(g)};
  EXPECT_EQ(stream(mrope_positions(a, NextTextStart::max_plus_one).positions, 0),
            (Ids{0, 2, 4, 6}));
  // 4.x Qwen2.5-VL: int64(float(ti) * 0.5 * 3) = 0, 1, 3, 4.
  g.seconds_per_grid = 0.5f;
  g.tokens_per_second = 3.0f;
  const std::vector<MropeSegment> b = {MropeSegment::vision(g)};
  EXPECT_EQ(stream(mrope_positions(b, NextTextStart::max_plus_one).positions, 0),
            (Ids{0, 1, 3, 4}));
}

TEST(glmMrope, FromTokensMatchesSegments) {
  const VisionTokens vt = VisionTokens::qwen2_vl();
  const TokenId I = vt.image;
  const std::vector<TokenId> toks = {t0, t1, t2, I, I, I, I, t3, t4};
  const std::vector<VisionGrid> images = {grid(1, 4, 4)};
  const MropePositions m =
      mrope_positions_from_tokens(toks, vt, images, {}, NextTextStart::spatial_extent);
  EXPECT_EQ(stream(m.positions, 1), (Ids{0, 1, 2, 3, 3, 4, 4, 5, 6}));
  EXPECT_EQ(m.rope_delta, -2);
}

TEST(glmMrope, PerFrameVideoLayout) {
  // GLM-4.1V / Qwen3-VL: a 2-frame video (merged 1x2 per frame) with a timestamp token between.
  const VisionTokens vt = VisionTokens::glm4v();
  const TokenId V = vt.video;
  const std::vector<TokenId> toks = {t0, V, V, t1, V, V, t2};
  const std::vector<VisionGrid> videos = {grid(2, 2, 4)};
  const MropePositions m = mrope_positions_from_tokens(
      toks, vt, {}, videos, NextTextStart::spatial_extent, VideoLayout::per_frame);
  EXPECT_EQ(stream(m.positions, 0), (Ids{0, 1, 1, 3, 4, 4, 6}));
  EXPECT_EQ(stream(m.positions, 1), (Ids{0, 1, 1, 3, 4, 4, 6}));
  EXPECT_EQ(stream(m.positions, 2), (Ids{0, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(m.rope_delta, 0);
}

TEST(glmMrope, BadInputsAreClearErrors) {
  const VisionTokens vt = VisionTokens::qwen2_vl();
  const TokenId I = vt.image;
  const std::vector<VisionGrid> images = {grid(1, 4, 4)};
  const std::vector<TokenId> short_run = {t0, I, I, I, t1};
  expect_error(
      [&] {
        mrope_positions_from_tokens(short_run, vt, images, {}, NextTextStart::spatial_extent);
      },
      ErrorKind::invalid_argument, {"image grid 0 needs 4 tokens", "from index 1", "index 4"});
  const std::vector<TokenId> two = {I, I, I, I, t0, I};
  expect_error(
      [&] { mrope_positions_from_tokens(two, vt, images, {}, NextTextStart::spatial_extent); },
      ErrorKind::invalid_argument, {"image token at index 5", "only 1 image grids"});
  const std::vector<TokenId> none = {t0, t1};
  expect_error(
      [&] { mrope_positions_from_tokens(none, vt, images, {}, NextTextStart::spatial_extent); },
      ErrorKind::invalid_argument, {"1 image grids given but only 0"});
  const std::vector<MropeSegment> odd = {MropeSegment::vision(grid(1, 3, 4))};
  expect_error([&] { mrope_positions(odd, NextTextStart::spatial_extent); },
               ErrorKind::invalid_argument, {"segment 0", "h 3", "spatial_merge_size 2"});
  const std::vector<MropeSegment> empty_text = {MropeSegment::text(0)};
  expect_error([&] { mrope_positions(empty_text, NextTextStart::spatial_extent); },
               ErrorKind::invalid_argument, {"segment 0", "0 tokens"});
  expect_error([] { mrope_decode_positions(1, -3, 1); }, ErrorKind::out_of_range,
               {"negative position"});
}

TEST(glmMrope, HostileRatesAndIdsPastInt64AreErrorsNotUndefinedBehaviour) {
  // fuzz_positions: a float32 temporal offset past int64 was converted anyway (undefined
  // behaviour); NaN and infinite rates passed the "not negative" check; an id of int64's maximum
  // made next_position overflow. Each is now an Error naming the value.
  VisionGrid g = grid(3, 2, 2);
  g.seconds_per_grid = 1e30f;
  g.tokens_per_second = 1.0f;
  expect_error([&] { mrope_positions(std::vector{MropeSegment::vision(g)}, NextTextStart::max_plus_one); },
               ErrorKind::overflow, {"temporal offset of index 1", "1e+30", "64 bits"});
  for (const float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    g.seconds_per_grid = bad;
    expect_error([&] { mrope_positions(std::vector{MropeSegment::vision(g)}, NextTextStart::max_plus_one); },
                 ErrorKind::invalid_argument, {"segment 0", "must be finite and not negative"});
    g.seconds_per_grid = 0.5f;
    g.tokens_per_second = bad;
    expect_error([&] { mrope_positions(std::vector{MropeSegment::vision(g)}, NextTextStart::max_plus_one); },
                 ErrorKind::invalid_argument, {"segment 0", "must be finite and not negative"});
    g.tokens_per_second = 1.0f;
  }
  // Temporal ids up to int64's maximum - 1 are fine (the next position is the maximum itself) ...
  VisionGrid far = grid(2, 2, 2);
  far.temporal_interval = std::numeric_limits<std::int64_t>::max() - 1;
  const MropePositions ok = mrope_positions(std::vector{MropeSegment::vision(far)}, NextTextStart::max_plus_one);
  EXPECT_EQ(ok.next_position, std::numeric_limits<std::int64_t>::max());
  // ... one more and the next position does not fit; nor does text after such a block.
  far.temporal_interval = std::numeric_limits<std::int64_t>::max();
  expect_error([&] { mrope_positions(std::vector{MropeSegment::vision(far)}, NextTextStart::max_plus_one); },
               ErrorKind::overflow, {"M-RoPE", "9223372036854775807 + 1", "does not fit in 64 bits"});
  far.temporal_interval = std::numeric_limits<std::int64_t>::max() - 1;
  expect_error(
      [&] {
        mrope_positions(std::vector{MropeSegment::vision(far), MropeSegment::text(1)}, NextTextStart::max_plus_one);
      },
      ErrorKind::overflow, {"M-RoPE text"});
  // A grid asking for nearly int64's maximum of tokens, three tokens in: the run check's end
  // (from + need) overflowed before it was refused.
  const VisionTokens vt = VisionTokens::qwen2_vl();
  const std::vector<TokenId> run = {t0, t0, t0, vt.image};
  const std::vector<VisionGrid> huge = {grid(std::numeric_limits<std::int64_t>::max() - 1, 2, 2)};
  expect_error([&] { mrope_positions_from_tokens(run, vt, huge, {}, NextTextStart::max_plus_one); },
               ErrorKind::invalid_argument, {"needs 9223372036854775806 tokens", "index 4 is past the end"});
}

TEST(glmPositions, AttentionMaskOfEmptyRowsTakesNoTimeWhateverTheBatch) {
  // A batch of 2^62 rows of length 0 holds nothing; fuzz_positions found the rows looped over.
  // (An optimizing build drops the empty loop; the -O0 sanitizer build, as CI runs it, hangs on it.)
  const std::int64_t rows = std::int64_t{1} << 62;
  const BatchPositions p = positions_from_attention_mask({}, rows, 0, 0);
  EXPECT_EQ(p.positions.tokens(), 0);
  EXPECT_EQ(p.batch, rows);
}

TEST(glmMrope, Glm4vRemoteImageTakesOnePosition) {
  const GlmSpecialTokens sp = GlmSpecialTokens::glm4();
  // boi at 5, one placeholder, eoi at 7, then two text tokens; 4 patches.
  const std::vector<TokenId> toks = {t0, t1, t2, t3, t4, sp.begin_of_image, 0, sp.end_of_image,
                                     t5, t5};
  const Glm4vRemotePositions g = glm4v_remote_positions(toks, 4, sp);
  EXPECT_EQ(g.boi_index, 5);
  EXPECT_EQ(stream(g.positions, 0), (Ids{0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 7, 8, 9}));
  EXPECT_EQ(g.rope_delta, -3);
  EXPECT_EQ(g.positions.tokens() + g.rope_delta, 10);  // decode continues at the original count

  const std::vector<TokenId> no_boi = {t0, t1};
  expect_error([&] { glm4v_remote_positions(no_boi, 4, sp); }, ErrorKind::invalid_argument,
               {"no <|begin_of_image|>", "151339"});
  const std::vector<TokenId> far = {sp.begin_of_image, 0, 0, sp.end_of_image};
  expect_error([&] { glm4v_remote_positions(far, 4, sp); }, ErrorKind::invalid_argument,
               {"must be at index 2", "found at 3"});
}

// ---- scheme description ----------------------------------------------------------------------

TEST(glmScheme, ModelTypesMapToSchemes) {
  const GlmScheme c6 = glm_scheme_for("chatglm", true);
  EXPECT_EQ(c6.generation, "ChatGLM-6B");
  EXPECT_EQ(c6.streams, 2);
  EXPECT_EQ(c6.mask, MaskPattern::prefix_lm);
  const GlmScheme c2 = glm_scheme_for("chatglm", false);
  EXPECT_EQ(c2.streams, 1);
  EXPECT_EQ(c2.mask, MaskPattern::causal);
  EXPECT_EQ(glm_scheme_for("glm4v").streams, 3);
  EXPECT_NE(glm_scheme_for("glm4_moe").rotation.find("half_split"), std::string::npos);
  EXPECT_NE(glm_scheme_for("glm").rotation.find("interleaved"), std::string::npos);
  EXPECT_EQ(glm_scheme_for("glm-130b").mask, MaskPattern::prefix_lm);
  expect_error([] { glm_scheme_for("llama"); }, ErrorKind::config, {"\"llama\"", "known:"});
}

}  // namespace
}  // namespace posenc::glm

// Padded batches and decode: HF attention-mask positions, left padding, ChatGLM-6B batches, PositionTracker.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
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

constexpr TokenId t0 = 11, t1 = 12, t2 = 13, t3 = 14;

// ---- HF attention-mask positions (docs/NUMERICS.md §7.4) ---------------------------------------

TEST(glmBatches, LeftPaddedMaskWorkedExample) {
  const std::vector<std::uint8_t> mask = {0, 0, 1, 1, 1, /**/ 1, 1, 1, 1, 1};
  const BatchPositions v4 = positions_from_attention_mask(mask, 2, 5, hf_pad_fill_v4);
  EXPECT_EQ(stream(v4.positions, 0), (Ids{1, 1, 0, 1, 2, 0, 1, 2, 3, 4}));
  const BatchPositions v5 = positions_from_attention_mask(mask, 2, 5, hf_pad_fill_v5);
  EXPECT_EQ(stream(v5.positions, 0), (Ids{0, 0, 0, 1, 2, 0, 1, 2, 3, 4}));
  EXPECT_EQ(v5.valid, mask);
  EXPECT_EQ(v5.at(0, 0, 2), 0);
  EXPECT_EQ(v5.at(0, 1, 4), 4);
  // Decode step: [[3], [5]]; two tokens at once continue by 1.
  const BatchPositions d = next_positions_from_attention_mask(mask, 2, 5);
  EXPECT_EQ(d.length, 1);
  EXPECT_EQ(stream(d.positions, 0), (Ids{3, 5}));
  EXPECT_EQ(stream(next_positions_from_attention_mask(mask, 2, 5, 2).positions, 0),
            (Ids{3, 4, 5, 6}));
}

TEST(glmBatches, RightAndInnerPaddingCountOnlyRealTokens) {
  const std::vector<std::uint8_t> mask = {1, 1, 0, 0, /**/ 1, 0, 1, 1};
  const BatchPositions p = positions_from_attention_mask(mask, 2, 4, 7);
  EXPECT_EQ(stream(p.positions, 0), (Ids{0, 1, 7, 7, 0, 7, 1, 2}));
  EXPECT_EQ(stream(next_positions_from_attention_mask(mask, 2, 4).positions, 0), (Ids{2, 3}));
}

TEST(glmBatches, BadMasksAreClearErrors) {
  const std::vector<std::uint8_t> bad = {1, 1, 1, 1, 1, /**/ 1, 1, 1, 2, 1};
  expect_error([&] { positions_from_attention_mask(bad, 2, 5, 0); }, ErrorKind::invalid_argument,
               {"mask value 2", "[1, 3]", "not 0 or 1"});
  const std::vector<std::uint8_t> short_mask = {1, 1, 1};
  expect_error([&] { positions_from_attention_mask(short_mask, 2, 5, 0); },
               ErrorKind::invalid_argument, {"3 entries", "batch 2", "length 5", "needs 10"});
  const std::vector<std::uint8_t> ok = {1, 1};
  expect_error([&] { next_positions_from_attention_mask(ok, 1, 2, 0); },
               ErrorKind::invalid_argument, {"new_tokens is 0"});
}

TEST(glmBatches, ChatGlm2LeftPaddedArange) {
  const std::vector<std::int64_t> lengths = {3, 5, 1};
  const BatchPositions p = left_padded_arange(lengths);
  EXPECT_EQ(p.batch, 3);
  EXPECT_EQ(p.length, 5);
  EXPECT_EQ(stream(p.positions, 0), (Ids{0, 0, 0, 1, 2, /**/ 0, 1, 2, 3, 4, /**/ 0, 0, 0, 0, 0}));
  EXPECT_EQ(p.valid, (std::vector<std::uint8_t>{0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1}));
  // The same positions as HF's cumsum rule with pad fill 0 on that mask.
  EXPECT_EQ(positions_from_attention_mask(p.valid, 3, 5, 0).positions, p.positions);
  const std::vector<std::int64_t> negative = {2, -1};
  expect_error([&] { left_padded_arange(negative); }, ErrorKind::invalid_argument,
               {"length -1", "index 1"});
}

// ---- ChatGLM-6B left-padded batch (docs/NUMERICS.md §7.3, tokenizer _pad) -----------------------

TEST(glmBatches, ChatGlm6bBatchPadsWithZerosAndKeepsTokenizerMask) {
  const GlmSpecialTokens sp;
  const std::vector<std::vector<TokenId>> seqs = {{t0, t1, t2, sp.gmask, sp.sop},
                                                  {t0, sp.gmask, sp.sop}};
  const ChatGlm6bBatch b = chatglm6b_batch(seqs, sp);
  EXPECT_EQ(b.padded.batch, 2);
  EXPECT_EQ(b.padded.length, 5);
  EXPECT_EQ(stream(b.padded.positions, 0), (Ids{0, 1, 2, 3, 3, /**/ 0, 0, 0, 1, 1}));
  EXPECT_EQ(stream(b.padded.positions, 1), (Ids{0, 0, 0, 0, 1, /**/ 0, 0, 0, 0, 1}));
  EXPECT_EQ(b.padded.valid, (std::vector<std::uint8_t>{1, 1, 1, 1, 1, 0, 0, 1, 1, 1}));
  EXPECT_EQ(b.pad_counts, (Ids{0, 2}));
  EXPECT_EQ(b.prefix_lens, (Ids{4, 4}));
  EXPECT_EQ(b.mask_positions, (Ids{3, 1}));

  // The tokenizer's mask for row 1, written out: unpadded 3x3 = tril with columns [0, 2) visible,
  // then np.pad with "masked" on the left of both axes (pad rows and columns all masked).
  const bool unpadded[3][3] = {{true, true, false}, {true, true, false}, {true, true, true}};
  MaskGeometry g;
  g.batch = 2;
  g.q_len = 5;
  g.k_len = 5;
  g.valid = b.padded.valid;
  const DenseMask d = dense_mask(b.attention(), g);
  for (std::int64_t q = 0; q < 5; ++q) {
    for (std::int64_t k = 0; k < 5; ++k) {
      const bool want = q >= 2 && k >= 2 && unpadded[q - 2][k - 2];
      EXPECT_EQ(d.at(1, q, k), want ? 0.0f : -INFINITY) << "q " << q << " k " << k;
      const bool want0 = k < 4 || k <= q;
      EXPECT_EQ(d.at(0, q, k), want0 ? 0.0f : -INFINITY) << "row 0 q " << q << " k " << k;
    }
  }
}

TEST(glmBatches, ChatGlm6bBatchNamesTheBadSequence) {
  const GlmSpecialTokens sp;
  const std::vector<std::vector<TokenId>> seqs = {{t0, sp.gmask, sp.sop}, {t0, t1}};
  expect_error([&] { chatglm6b_batch(seqs, sp); }, ErrorKind::invalid_argument,
               {"sequence 1", "no <sop>"});
}

// ---- PositionTracker -------------------------------------------------------------------------

TEST(glmTracker, PlainPrefillChunksAndDecode) {
  PositionTracker tr(1, 1024);
  tr.add_sequence(1);
  tr.add_sequence(2);
  const std::vector<StepEntry> prefill = {{1, 3}, {2, 2}};
  EXPECT_EQ(stream(tr.step(prefill), 0), (Ids{0, 1, 2, 0, 1}));
  const std::vector<StepEntry> decode = {{2, 1}, {1, 1}};
  EXPECT_EQ(stream(tr.step(decode), 0), (Ids{2, 3}));
  EXPECT_EQ(tr.state(1).length, 4);
  EXPECT_EQ(tr.state(2).length, 3);

  // A prefill cut into chunks gives the same positions as one chunk.
  PositionTracker one(1, 1024);
  PositionTracker chunked(1, 1024);
  one.add_sequence(9);
  chunked.add_sequence(9);
  const std::vector<StepEntry> all = {{9, 5}};
  const std::vector<StepEntry> c1 = {{9, 2}};
  const std::vector<StepEntry> c2 = {{9, 3}};
  PositionIds joined = chunked.step(c1);
  joined.append(chunked.step(c2));
  EXPECT_EQ(joined, one.step(all));
}

TEST(glmTracker, ChatGlm6bPrefillAndDecodeMatchTheGenerationRule) {
  const GlmSpecialTokens sp;
  const std::vector<TokenId> prompt = {t0, t1, t2, sp.gmask, sp.sop};
  const ChatGlm6bPositions p = chatglm6b_positions(prompt, sp);

  // Prefill through the tracker: same ids as chatglm6b_positions.
  PositionTracker tr(2, 2048);
  tr.add_sequence(5, SequenceState{0, 0, p.context_length, p.mask_position});
  const std::vector<StepEntry> prefill = {{5, 5}};
  EXPECT_EQ(tr.step(prefill), p.positions);
  // Decode: (3, 2), (3, 3).
  const std::vector<StepEntry> one = {{5, 1}};
  EXPECT_EQ(tr.step(one).values(), (Ids{3, 2}));
  EXPECT_EQ(tr.step(one).values(), (Ids{3, 3}));

  // Registering after a prefill done elsewhere gives the same next ids.
  PositionTracker tr2(2, 2048);
  tr2.add_sequence(5, tracker_state(p));
  EXPECT_EQ(tr2.step(one).values(), (Ids{p.next().position, p.next().block}));
}

TEST(glmTracker, Glm130bAndMropeAndGlm4vRemoteStates) {
  const GlmSpecialTokens sp = GlmSpecialTokens::glm_130b();
  const std::vector<TokenId> seq = {t0, sp.mask, t2, sp.sop};
  const Glm130bPositions g = glm130b_positions(seq, sp);
  PositionTracker tr1(1, 2048);
  tr1.add_sequence(0, SequenceState{0, 0, g.sop_index, g.mask_position});
  const std::vector<StepEntry> all = {{0, 4}};
  EXPECT_EQ(tr1.step(all), g.positions);
  const std::vector<StepEntry> one = {{0, 1}};
  EXPECT_EQ(stream(tr1.step(one), 0), (Ids{g.next_position(4)}));

  // M-RoPE: the Qwen2-VL example, 9 tokens, rope_delta -2 -> first decode token 7 on all axes.
  VisionGrid img;
  img.h = 4;
  img.w = 4;
  const std::vector<MropeSegment> segs = {MropeSegment::text(3), MropeSegment::vision(img),
                                          MropeSegment::text(2)};
  const MropePositions m = mrope_positions(segs, NextTextStart::spatial_extent);
  PositionTracker tr3(3, 2048);
  tr3.add_sequence(4, tracker_state(m));
  const std::vector<StepEntry> step4 = {{4, 2}};
  const PositionIds d = tr3.step(step4);
  EXPECT_EQ(d, mrope_decode_positions(9, -2, 2));
  EXPECT_EQ(stream(d, 1), (Ids{7, 8}));

  // glm-4v-9b: decode continues at the original token count (10).
  const GlmSpecialTokens g4 = GlmSpecialTokens::glm4();
  const std::vector<TokenId> toks = {t0, t1, t2, t3, t0, g4.begin_of_image, 0, g4.end_of_image,
                                     t1, t2};
  PositionTracker tr4(1, 2048);
  tr4.add_sequence(1, tracker_state(glm4v_remote_positions(toks, 4, g4)));
  EXPECT_EQ(stream(tr4.step(std::vector<StepEntry>{{1, 1}}), 0), (Ids{10}));
}

TEST(glmTracker, BlankInfillingRepinsPerSpan) {
  // Context of 5 tokens with masks at 2 and 4: fill span at 2 (sop + 2 tokens), then span at 4.
  PositionTracker tr(2, 64);
  tr.add_sequence(3, SequenceState{5});
  tr.pin(3, 2);
  const PositionIds first = tr.step(std::vector<StepEntry>{{3, 3}});
  EXPECT_EQ(first, blank_infilling_generation(2, 1, 3));
  tr.pin(3, 4);
  const PositionIds second = tr.step(std::vector<StepEntry>{{3, 2}});
  EXPECT_EQ(second, blank_infilling_generation(4, 1, 2));
}

TEST(glmTracker, LimitErrorsNameSequenceTokenValueAndChangeNothing) {
  PositionTracker tr(1, 4);
  tr.add_sequence(1, SequenceState{3});
  tr.add_sequence(2);
  const std::vector<StepEntry> too_far = {{2, 1}, {1, 2}};
  expect_error(
      [&] { tr.step(too_far); }, ErrorKind::out_of_range,
      {"sequence 1", "entry 1", "token 1", "index 4", "position 4", "[0, 4)", "position_limit"});
  EXPECT_EQ(tr.state(1).length, 3);  // nothing committed, not even entry 0
  EXPECT_EQ(tr.state(2).length, 0);
  // The block stream is checked too (it is a rotation position in 2-D RoPE).
  PositionTracker tr2(2, 4);
  tr2.add_sequence(1, SequenceState{3, 0, 0, 0});  // pinned from 0: block = n + 1
  expect_error(
      [&] {
        tr2.step(std::vector<StepEntry>{{1, 1}});
      },
      ErrorKind::out_of_range, {"block position 4"});
  // A negative rope_delta that reaches below 0.
  PositionTracker tr3(3, 100);
  tr3.add_sequence(1, SequenceState{0, -1});
  expect_error(
      [&] {
        tr3.step(std::vector<StepEntry>{{1, 1}});
      },
      ErrorKind::out_of_range, {"position -1"});
}

TEST(glmTracker, AStepOfHugeTokenCountsIsRefusedBeforeItsOutputIsAllocated) {
  // 2^40 tokens would need 8 TiB of output. Every id is checked from each part's ends first, so the
  // error names the first token past the limit, as a token-by-token check would, and nothing of
  // the step's size is allocated (fuzz_tracker found the 64 GiB allocation this replaced).
  const std::int64_t huge = std::int64_t{1} << 40;
  PositionTracker tr(1, 100);
  tr.add_sequence(1, SequenceState{10, 5});  // positions n + 5: token 85 (index 95) gets 100
  expect_error(
      [&] {
        tr.step(std::vector<StepEntry>{{1, huge}});
      },
      ErrorKind::out_of_range, {"sequence 1", "token 85 (index 95", "position 100", "[0, 100)"});
  PositionTracker two(2, 100);
  two.add_sequence(1, SequenceState{10, 0, 4, 2});  // pinned from 4: block n - 3
  expect_error(
      [&] {
        two.peek(std::vector<StepEntry>{{1, huge}});
      },
      ErrorKind::out_of_range, {"token 93 (index 103", "block position 100"});
  tr.add_sequence(2, SequenceState{0, std::numeric_limits<std::int64_t>::min() + 1});
  expect_error(
      [&] {
        tr.step(std::vector<StepEntry>{{2, huge}});
      },
      ErrorKind::out_of_range, {"token 0 (index 0", "position -9223372036854775807"});
  EXPECT_EQ(tr.state(1).length, 10);
  EXPECT_EQ(tr.state(2).length, 0);
  // A pinned one-stream sequence's ids stay in range however long it grows: a step too large to
  // hold is out_of_memory, not an exception of another type.
  PositionTracker pinned(1, 100);
  pinned.add_sequence(1, SequenceState{0, 0, 0, 7});
  expect_error(
      [&] {
        pinned.step(std::vector<StepEntry>{{1, std::numeric_limits<std::int64_t>::max() / 2}});
      },
      ErrorKind::out_of_memory, {"PositionIds"});
  EXPECT_EQ(pinned.state(1).length, 0);
}

TEST(glmTracker, BadStepsAndSequencesAreClearErrors) {
  PositionTracker tr(1, 100);
  tr.add_sequence(7);
  expect_error([&] { tr.add_sequence(7); }, ErrorKind::invalid_argument,
               {"sequence 7", "already tracked"});
  expect_error([&] { tr.remove_sequence(8); }, ErrorKind::invalid_argument,
               {"sequence 8", "not tracked"});
  expect_error(
      [&] {
        tr.step(std::vector<StepEntry>{{8, 1}});
      },
      ErrorKind::invalid_argument, {"entry 0", "sequence 8", "not tracked"});
  expect_error(
      [&] {
        tr.step(std::vector<StepEntry>{{7, 1}, {7, 1}});
      },
      ErrorKind::invalid_argument, {"entry 1 repeats sequence 7"});
  expect_error(
      [&] {
        tr.step(std::vector<StepEntry>{{7, 0}});
      },
      ErrorKind::invalid_argument, {"new_tokens 0"});
  expect_error([&] { tr.add_sequence(9, SequenceState{-2}); }, ErrorKind::invalid_argument,
               {"length is -2"});
  expect_error(
      [&] {
        tr.add_sequence(9, SequenceState{0, 0, 0, 100});
      },
      ErrorKind::out_of_range, {"pin_value 100", "[0, 100)"});
  expect_error([] { PositionTracker(4, 10); }, ErrorKind::invalid_argument, {"streams is 4"});
  expect_error([] { PositionTracker(1, 0); }, ErrorKind::invalid_argument, {"position_limit is 0"});
}

TEST(glmTracker, RemoveKeepsArraysDenseAndPeekDoesNotCommit) {
  PositionTracker tr(1, 100);
  tr.add_sequence(10, SequenceState{1});
  tr.add_sequence(20, SequenceState{2});
  tr.add_sequence(30, SequenceState{3});
  tr.remove_sequence(10);
  EXPECT_EQ(tr.size(), 2);
  EXPECT_FALSE(tr.contains(10));
  EXPECT_EQ(tr.slot_of(30), 0);  // the last slot moved into the freed one
  EXPECT_EQ(Ids(tr.seq_ids().begin(), tr.seq_ids().end()), (Ids{30, 20}));
  EXPECT_EQ(Ids(tr.lengths().begin(), tr.lengths().end()), (Ids{3, 2}));
  const std::vector<StepEntry> s = {{20, 1}};
  EXPECT_EQ(stream(tr.peek(s), 0), (Ids{2}));
  EXPECT_EQ(stream(tr.peek(s), 0), (Ids{2}));
  EXPECT_EQ(stream(tr.step(s), 0), (Ids{2}));
  EXPECT_EQ(stream(tr.step(s), 0), (Ids{3}));
}

TEST(glmTracker, StepContractFromThePlainArrays) {
  // What a device mirror does: only the five arrays and the step entries, the documented rule.
  PositionTracker tr(2, 1 << 20);
  tr.add_sequence(100, SequenceState{0});
  tr.add_sequence(200, SequenceState{7, 0, 9, 4});
  tr.add_sequence(300, SequenceState{2, 5});
  tr.add_sequence(400, SequenceState{12, 0, 10, 3});
  const std::vector<std::vector<StepEntry>> steps = {
      {{100, 4}, {200, 3}, {300, 1}, {400, 2}}, {{400, 1}, {100, 1}}, {{300, 6}, {200, 1}}};
  for (const auto& entries : steps) {
    // Mirror: copy the arrays before the step.
    const Ids ids(tr.seq_ids().begin(), tr.seq_ids().end());
    const Ids len(tr.lengths().begin(), tr.lengths().end());
    const Ids delta(tr.rope_deltas().begin(), tr.rope_deltas().end());
    const Ids from(tr.pin_froms().begin(), tr.pin_froms().end());
    const Ids value(tr.pin_values().begin(), tr.pin_values().end());
    Ids want_pos;
    Ids want_block;
    for (const StepEntry& e : entries) {
      std::size_t s = 0;
      while (ids[s] != e.seq_id) ++s;
      for (std::int64_t j = 0; j < e.new_tokens; ++j) {
        const std::int64_t n = len[s] + j;
        want_pos.push_back(n < from[s] ? n + delta[s] : value[s]);
        want_block.push_back(n < from[s] ? 0 : n - from[s] + 1);
      }
    }
    const PositionIds got = tr.step(entries);
    EXPECT_EQ(stream(got, 0), want_pos);
    EXPECT_EQ(stream(got, 1), want_block);
  }
}

}  // namespace
}  // namespace posenc::glm

// Attention patterns: every element of dense masks and ranges against predicates written here, and clear errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "posenc/error.hpp"
#include "posenc/glm.hpp"
#include "support/specs.hpp"

namespace posenc::glm {
namespace {

using Oracle = std::function<bool(std::int64_t q, std::int64_t k)>;

using test::expect_error;

/// Checks the structural promises of MaskRanges: offsets well formed, each row's ranges sorted,
/// non-empty, inside [0, k_len), and neither overlapping nor touching.
void expect_well_formed(const MaskRanges& m) {
  ASSERT_EQ(static_cast<std::int64_t>(m.row_offsets.size()), m.rows() + 1);
  ASSERT_EQ(m.row_offsets.front(), 0);
  ASSERT_EQ(m.row_offsets.back(), static_cast<std::int64_t>(m.ranges.size()));
  for (std::int64_t i = 0; i < m.rows(); ++i) {
    const std::int64_t first = m.row_offsets[static_cast<std::size_t>(i)];
    const std::int64_t last = m.row_offsets[static_cast<std::size_t>(i) + 1];
    ASSERT_LE(first, last) << "row " << i;
    for (std::int64_t j = first; j < last; ++j) {
      const KeyRange& r = m.ranges[static_cast<std::size_t>(j)];
      EXPECT_GE(r.begin, 0) << "row " << i;
      EXPECT_LT(r.begin, r.end) << "row " << i << " has an empty range";
      EXPECT_LE(r.end, m.k_len) << "row " << i;
      if (j > first) {
        EXPECT_GT(r.begin, m.ranges[static_cast<std::size_t>(j) - 1].end)
            << "row " << i << ": ranges overlap or touch (not merged)";
      }
    }
  }
}

/// The dense mask expanded here, independently of the library, from the ranges.
std::vector<float> expand(const MaskRanges& m) {
  std::vector<float> d(static_cast<std::size_t>(m.rows() * m.k_len), -INFINITY);
  for (std::int64_t i = 0; i < m.rows(); ++i) {
    for (std::int64_t j = m.row_offsets[static_cast<std::size_t>(i)];
         j < m.row_offsets[static_cast<std::size_t>(i) + 1]; ++j) {
      for (std::int64_t k = m.ranges[static_cast<std::size_t>(j)].begin;
           k < m.ranges[static_cast<std::size_t>(j)].end; ++k) {
        d[static_cast<std::size_t>(i * m.k_len + k)] = 0.0f;
      }
    }
  }
  return d;
}

/// Every element of one sequence's mask against `oracle` (q, k are key slots), for the dense
/// form, the ranges' visible(), and the ranges expanded here.
void check_single(const std::string& name, const AttentionPattern& p, const Oracle& oracle,
                  std::int64_t q_len, std::int64_t k_len) {
  SCOPED_TRACE(name + " q_len " + std::to_string(q_len) + " k_len " + std::to_string(k_len));
  const MaskRanges r = mask_ranges(p, q_len, k_len);
  const DenseMask d = dense_mask(p, q_len, k_len);
  expect_well_formed(r);
  ASSERT_EQ(d.values.size(), static_cast<std::size_t>(q_len * k_len));
  const std::vector<float> e = expand(r);
  for (std::int64_t row = 0; row < q_len; ++row) {
    const std::int64_t q = k_len - q_len + row;
    for (std::int64_t k = 0; k < k_len; ++k) {
      const bool want = oracle(q, k);
      EXPECT_EQ(d.at(0, row, k), want ? 0.0f : -INFINITY) << "dense row " << row << " key " << k;
      EXPECT_EQ(r.visible(0, row, k), want) << "ranges row " << row << " key " << k;
      EXPECT_EQ(e[static_cast<std::size_t>(row * k_len + k)], d.at(0, row, k))
          << "dense != ranges at row " << row << " key " << k;
    }
  }
}

struct Case {
  std::string name;
  AttentionPattern pattern;
  Oracle oracle;
};

std::vector<Case> all_cases() {
  const std::vector<std::int64_t> globals = {3, 0};
  const auto is_global = [globals](std::int64_t x) {
    for (std::int64_t g : globals)
      if (g == x) return true;
    return false;
  };
  return {
      {"causal", AttentionPattern::causal(), [](std::int64_t q, std::int64_t k) { return k <= q; }},
      {"bidirectional", AttentionPattern::bidirectional(),
       [](std::int64_t, std::int64_t) { return true; }},
      {"prefix_lm 3", AttentionPattern::prefix_lm(3),
       [](std::int64_t q, std::int64_t k) { return k < 3 || k <= q; }},
      {"prefix_lm 0", AttentionPattern::prefix_lm(0),
       [](std::int64_t q, std::int64_t k) { return k <= q; }},
      {"local_window 1", AttentionPattern::local_window(1),
       [](std::int64_t q, std::int64_t k) { return k == q; }},
      {"local_window 3", AttentionPattern::local_window(3),
       [](std::int64_t q, std::int64_t k) { return q - 3 < k && k <= q; }},
      {"global_local {3,0} w2", AttentionPattern::global_local(globals, 2),
       [is_global](std::int64_t q, std::int64_t k) {
         return k <= q && (is_global(q) || is_global(k) || q - k < 2);
       }},
      {"custom", AttentionPattern::custom([](std::int64_t q, std::int64_t k) {
         return k <= q && (q + k) % 3 != 0;
       }),
       [](std::int64_t q, std::int64_t k) { return k <= q && (q + k) % 3 != 0; }},
  };
}

TEST(glmMasks, EveryPatternEveryElementSquareAndKvOffset) {
  // Square calls, decode-like calls (q_len 1) and chunks with a KV offset; k_len >= 8 so every
  // prefix and global slot above is a key.
  const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {
      {8, 8}, {1, 8}, {3, 9}, {0, 8}, {9, 9}};
  for (const Case& c : all_cases()) {
    for (const auto& [q_len, k_len] : shapes)
      check_single(c.name, c.pattern, c.oracle, q_len, k_len);
  }
}

TEST(glmMasks, LocalWindowIsCausalUnlikeTheEarlierModule) {
  const DenseMask d = dense_mask(AttentionPattern::local_window(2), 6, 6);
  // Row 3 sees keys 2 and 3 only. The earlier module's |i - j| <= 2 also opened keys 1, 4, 5:
  // keys 4 and 5 are the future of a causal decoder.
  EXPECT_EQ(d.at(0, 3, 2), 0.0f);
  EXPECT_EQ(d.at(0, 3, 3), 0.0f);
  for (std::int64_t k : {0, 1, 4, 5}) EXPECT_EQ(d.at(0, 3, k), -INFINITY) << "key " << k;
  const MaskRanges r = mask_ranges(AttentionPattern::local_window(2), 6, 6);
  ASSERT_EQ(r.row(0, 3).size(), 1u);
  EXPECT_EQ(r.row(0, 3)[0], (KeyRange{2, 4}));
  ASSERT_EQ(r.row(0, 0).size(), 1u);
  EXPECT_EQ(r.row(0, 0)[0], (KeyRange{0, 1}));
}

TEST(glmMasks, GlobalLocalRangesListGlobalsThenTheWindow) {
  const MaskRanges r = mask_ranges(AttentionPattern::global_local({0, 3}, 2), 8, 8);
  // Row 7 (not global): global keys 0 and 3, then the window [6, 8).
  const auto row7 = r.row(0, 7);
  ASSERT_EQ(row7.size(), 3u);
  EXPECT_EQ(row7[0], (KeyRange{0, 1}));
  EXPECT_EQ(row7[1], (KeyRange{3, 4}));
  EXPECT_EQ(row7[2], (KeyRange{6, 8}));
  // Row 3 is global: everything up to itself.
  ASSERT_EQ(r.row(0, 3).size(), 1u);
  EXPECT_EQ(r.row(0, 3)[0], (KeyRange{0, 4}));
  // Row 4: global 0, then [3, 5) merged from global 3 and the window.
  const auto row4 = r.row(0, 4);
  ASSERT_EQ(row4.size(), 2u);
  EXPECT_EQ(row4[0], (KeyRange{0, 1}));
  EXPECT_EQ(row4[1], (KeyRange{3, 5}));
}

TEST(glmMasks, BatchWithPaddingAndPerSequencePatterns) {
  // Three rows of 6 slots, queries = the last 4 slots. Row 0: 2 left pads, prefix-LM over slots
  // [0, 5). Row 1: no padding, causal. Row 2: 2 right pads, bidirectional: its padding query rows
  // would see keys 0..3 if only keys were masked; padding masks the query rows too.
  MaskGeometry g;
  g.batch = 3;
  g.q_len = 4;
  g.k_len = 6;
  g.valid = {0, 0, 1, 1, 1, 1, /**/ 1, 1, 1, 1, 1, 1, /**/ 1, 1, 1, 1, 0, 0};
  const std::vector<AttentionPattern> patterns = {AttentionPattern::prefix_lm(5),
                                                  AttentionPattern::causal(),
                                                  AttentionPattern::bidirectional()};
  const std::vector<Oracle> pattern_oracles = {
      [](std::int64_t q, std::int64_t k) { return k < 5 || k <= q; },
      [](std::int64_t q, std::int64_t k) { return k <= q; },
      [](std::int64_t, std::int64_t) { return true; }};
  const MaskRanges r = mask_ranges(patterns, g);
  const DenseMask d = dense_mask(patterns, g);
  expect_well_formed(r);
  const std::vector<float> e = expand(r);
  for (std::int64_t b = 0; b < 3; ++b) {
    const auto valid = [&](std::int64_t slot) {
      return g.valid[static_cast<std::size_t>(b * 6 + slot)] == 1;
    };
    for (std::int64_t row = 0; row < 4; ++row) {
      const std::int64_t q = 6 - 4 + row;
      for (std::int64_t k = 0; k < 6; ++k) {
        const bool want =
            valid(q) && valid(k) && pattern_oracles[static_cast<std::size_t>(b)](q, k);
        EXPECT_EQ(d.at(b, row, k), want ? 0.0f : -INFINITY)
            << "b " << b << " row " << row << " k " << k;
        EXPECT_EQ(r.visible(b, row, k), want) << "b " << b << " row " << row << " k " << k;
        EXPECT_EQ(e[static_cast<std::size_t>((b * 4 + row) * 6 + k)], d.at(b, row, k));
      }
    }
  }
  EXPECT_TRUE(r.row(2, 2).empty());  // slot 4 is padding
  EXPECT_TRUE(r.row(2, 3).empty());
}

TEST(glmMasks, SharedPatternWithPaddingAndEmptyRowPolicy) {
  // Causal over 5 slots. Row 0: 3 left pads. Row 1: 1 left pad. Row 2: 2 right pads.
  MaskGeometry g;
  g.batch = 3;
  g.q_len = 5;
  g.k_len = 5;
  g.valid = {0, 0, 0, 1, 1, /**/ 0, 1, 1, 1, 1, /**/ 1, 1, 1, 0, 0};
  const std::vector<AttentionPattern> causal = {AttentionPattern::causal()};
  const MaskRanges kept = mask_ranges(causal, g);
  expect_well_formed(kept);
  // Padding query rows see nothing and stay masked (the ChatGLM-6B tokenizer's _pad mask).
  for (std::int64_t row = 0; row < 3; ++row) EXPECT_TRUE(kept.row(0, row).empty()) << "row " << row;
  EXPECT_TRUE(kept.row(1, 0).empty());
  EXPECT_TRUE(kept.row(2, 3).empty());
  EXPECT_TRUE(kept.row(2, 4).empty());
  ASSERT_EQ(kept.row(0, 4).size(), 1u);
  EXPECT_EQ(kept.row(0, 4)[0], (KeyRange{3, 5}));
  ASSERT_EQ(kept.row(2, 2).size(), 1u);
  EXPECT_EQ(kept.row(2, 2)[0], (KeyRange{0, 3}));
  // all_visible: exactly the empty rows see every slot (ChatGLM2/3 remote code), others unchanged.
  g.empty_rows = EmptyRows::all_visible;
  const MaskRanges open = mask_ranges(causal, g);
  expect_well_formed(open);
  const DenseMask d = to_dense(open);
  for (std::int64_t b = 0; b < 3; ++b) {
    for (std::int64_t row = 0; row < 5; ++row) {
      const bool empty_before = kept.row(b, row).empty();
      for (std::int64_t k = 0; k < 5; ++k) {
        const bool want = empty_before || kept.visible(b, row, k);
        EXPECT_EQ(d.at(b, row, k), want ? 0.0f : -INFINITY)
            << "b " << b << " row " << row << " k " << k;
      }
    }
  }
}

TEST(glmMasks, BadPatternsAndShapesAreClearErrors) {
  expect_error([] { mask_ranges(AttentionPattern::local_window(0), 4, 4); },
               ErrorKind::invalid_argument, {"local_window", "window 0", "at least 1"});
  expect_error([] { mask_ranges(AttentionPattern::global_local({1}, 0), 4, 4); },
               ErrorKind::invalid_argument, {"global_local", "window 0"});
  expect_error([] { mask_ranges(AttentionPattern::local_window(-2), 4, 4); },
               ErrorKind::invalid_argument, {"window -2"});
  expect_error([] { mask_ranges(AttentionPattern::causal(), 5, 3); }, ErrorKind::invalid_argument,
               {"q_len 5 exceeds k_len 3"});
  expect_error([] { mask_ranges(AttentionPattern::prefix_lm(7), 4, 6); }, ErrorKind::out_of_range,
               {"prefix_len 7", "k_len 6"});
  expect_error(
      [] {
        mask_ranges(AttentionPattern::global_local({1, 9}, 2), 4, 6);
      },
      ErrorKind::out_of_range, {"global_positions[1] = 9", "[0, 6)"});
  expect_error([] { mask_ranges(AttentionPattern::custom(nullptr), 2, 2); },
               ErrorKind::invalid_argument, {"predicate is empty"});

  MaskGeometry g;
  g.batch = 3;
  g.q_len = 2;
  g.k_len = 2;
  const std::vector<AttentionPattern> two = {AttentionPattern::causal(),
                                             AttentionPattern::causal()};
  expect_error([&] { mask_ranges(two, g); }, ErrorKind::invalid_argument,
               {"2 patterns for batch 3"});
  const std::vector<AttentionPattern> one = {AttentionPattern::causal()};
  g.valid = {1, 1, 1};
  expect_error([&] { mask_ranges(one, g); }, ErrorKind::invalid_argument, {"3 entries", "needs 6"});
  g.valid = {1, 1, 1, 1, 2, 1};
  expect_error([&] { mask_ranges(one, g); }, ErrorKind::invalid_argument, {"value 2 at [2, 0]"});
}

TEST(glmMasks, SizeGuards) {
  constexpr std::int64_t big = std::int64_t{1} << 20;
  // 2^40 dense elements: refused before anything is allocated.
  expect_error([] { dense_mask(AttentionPattern::causal(), big, big); },
               ErrorKind::invalid_argument, {"exceeds the limit", "1073741824", "mask_ranges"});
  MaskGeometry g;
  g.batch = std::int64_t{1} << 40;
  g.q_len = std::int64_t{1} << 30;
  g.k_len = std::int64_t{1} << 30;
  const std::vector<AttentionPattern> one = {AttentionPattern::causal()};
  expect_error([&] { mask_ranges(one, g); }, ErrorKind::overflow, {"does not fit in 64 bits"});
  expect_error([&] { dense_mask(one, g); }, ErrorKind::overflow, {"does not fit in 64 bits"});
  // A custom predicate over 2^20 x 2^20 would be 2^40 calls.
  expect_error(
      [] {
        mask_ranges(AttentionPattern::custom([](std::int64_t, std::int64_t) { return true; }), big,
                    big);
      },
      ErrorKind::invalid_argument, {"predicate calls", "limit"});
  // The ranges of a long causal call are cheap: one range per row.
  const MaskRanges r = mask_ranges(AttentionPattern::causal(), 4, big);
  EXPECT_EQ(r.ranges.size(), 4u);
  EXPECT_EQ(r.row(0, 3)[0], (KeyRange{0, big}));
}

TEST(glmMasks, AccessorsAreBoundsChecked) {
  const MaskRanges r = mask_ranges(AttentionPattern::causal(), 2, 3);
  expect_error([&] { (void)r.row(0, 2); }, ErrorKind::out_of_range, {"row [0, 2]"});
  expect_error([&] { (void)r.visible(0, 0, 3); }, ErrorKind::out_of_range, {"key 3", "[0, 3)"});
  const DenseMask d = to_dense(r);
  expect_error([&] { (void)d.at(1, 0, 0); }, ErrorKind::out_of_range, {"[1, 0, 0]"});
}

TEST(glmMasks, NoQueryRowsTakeNoTimeWhateverTheBatch) {
  // q_len 0 over a batch of 2^62 sequences has no rows; fuzz_positions found the sequences looped
  // over (each with its padding runs: a hang in every build).
  MaskGeometry g;
  g.batch = std::int64_t{1} << 62;
  g.q_len = 0;
  g.k_len = 4;
  const std::vector<AttentionPattern> causal = {AttentionPattern::causal()};
  const MaskRanges m = mask_ranges(causal, g);
  EXPECT_EQ(m.rows(), 0);
  EXPECT_EQ(m.row_offsets, (std::vector<std::int64_t>{0}));
  EXPECT_TRUE(m.ranges.empty());
}

}  // namespace
}  // namespace posenc::glm

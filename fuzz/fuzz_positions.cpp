// Fuzz target: the GLM and M-RoPE position builders (token lists, vision grids, counts) on hostile input, each result checked against the PositionTracker that continues it.
//
// The input picks one builder per iteration (up to 8): glm130b_positions, chatglm6b_positions (both
// mask rules), glm4v_remote_positions, mrope_positions_from_tokens, mrope_positions on segments,
// arange_positions, blank_infilling_generation, mrope_decode_positions, left_padded_arange,
// next_positions_from_attention_mask, make_blank_infilling, blank_infilling_context,
// chatglm6b_batch, and mask_ranges / to_dense. Token lists are drawn from the builder's special
// tokens and a few ordinary ids; grids, counts, deltas and float rates from small to hostile (0,
// negative, 2^62, int64 limits, inf, NaN). Properties:
//   - every builder returns or throws posenc::Error, nothing else (UBSan reports any signed
//     overflow or out-of-range float conversion on the way);
//   - a result has the documented number of tokens and streams and no negative id; a
//     chatglm6b_batch row equals chatglm6b_positions of its sequence after its left pads;
//   - a prompt's tracker_state, added to a PositionTracker, gives the decode step the builder's own
//     next-token rule gives (Glm130bPositions::next_position, ChatGlm6bPositions::next, M-RoPE's
//     next_position and mrope_decode_positions, glm-4v's original token count);
//   - mask_ranges and to_dense agree, element by element, with the patterns' stated semantics and
//     the padding rule (small calls);
//   - a call that would return more than 2^20 ids is not made (the allocation is the caller's
//     request); one whose sizes overflow must be refused without allocating them.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "posenc/error.hpp"
#include "posenc/glm.hpp"

namespace {

using namespace posenc::glm;
using posenc::fuzz::require;
using posenc::fuzz::result_or_error;
using i128 = __int128;

constexpr std::int64_t int64_max = std::numeric_limits<std::int64_t>::max();
constexpr i128 max_ids = i128{1} << 20;

/// A count, grid side, delta or position: mostly small, sometimes zero, negative or at a 32/64-bit
/// boundary. None lies in (2^16, 2^61): such a value is a legitimate request too large to hold,
/// which libFuzzer's malloc limit would report (the harness's size checks cover products).
std::int64_t number(FuzzedDataProvider& in, std::int64_t small_max = 12) {
  switch (in.ConsumeIntegralInRange<int>(0, 9)) {
    case 7:
      return -in.ConsumeIntegralInRange<std::int64_t>(0, 3);
    case 8:
      return in.PickValueInArray<std::int64_t>({std::int64_t{1} << 61, std::int64_t{1} << 62, int64_max,
                                                int64_max - 1, std::numeric_limits<std::int64_t>::min()});
    case 9:
      return in.ConsumeIntegralInRange<std::int64_t>(0, std::int64_t{1} << 16);
    default:
      return in.ConsumeIntegralInRange<std::int64_t>(0, small_max);
  }
}

float rate(FuzzedDataProvider& in) {
  return in.PickValueInArray<float>({0.0f, 0.0f, 0.5f, 1.0f, 2.0f, 25.0f, 1e30f, -1.0f,
                                     std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                                     std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min()});
}

/// Tokens drawn from `alphabet` (special ids) and a few ordinary ids.
std::vector<TokenId> tokens(FuzzedDataProvider& in, const std::vector<TokenId>& alphabet) {
  std::vector<TokenId> out(in.ConsumeIntegralInRange<std::size_t>(0, 40));
  for (TokenId& t : out) {
    t = in.ConsumeIntegralInRange<int>(0, 2) == 0 ? in.ConsumeIntegralInRange<TokenId>(0, 3)
                                                  : alphabet[in.ConsumeIntegralInRange<std::size_t>(0, alphabet.size() - 1)];
  }
  return out;
}

VisionGrid grid(FuzzedDataProvider& in) {
  VisionGrid g;
  g.t = number(in, 3);
  g.h = number(in, 6);
  g.w = number(in, 6);
  g.spatial_merge_size = in.ConsumeBool() ? 2 : number(in, 3);
  g.temporal_interval = in.ConsumeBool() ? 1 : number(in, 4);
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
    g.seconds_per_grid = rate(in);
    g.tokens_per_second = rate(in);
  }
  return g;
}

/// The tokens a grid stands for when its fields are sane, in 128-bit arithmetic; nullopt for a
/// grid llm_tokens must refuse.
std::optional<i128> grid_tokens(const VisionGrid& g) {
  if (g.t < 1 || g.h < 1 || g.w < 1 || g.spatial_merge_size < 1 || g.temporal_interval < 0) return std::nullopt;
  if (g.h % g.spatial_merge_size != 0 || g.w % g.spatial_merge_size != 0) return std::nullopt;
  // Saturated past int64 (a product of three int64 values can pass even 128 bits).
  const i128 hw = i128{g.h / g.spatial_merge_size} * (g.w / g.spatial_merge_size);
  return hw > int64_max ? i128{int64_max} + 1 : std::min<i128>(hw * g.t, i128{int64_max} + 1);
}

void require_ids(const PositionIds& p, int streams, i128 tokens, const char* name) {
  require(p.streams() == streams && p.tokens() == tokens, std::string(name) + ": wrong shape");
  for (const std::int64_t v : p.values()) require(v >= 0, std::string(name) + ": a negative id");
}

/// The ids a tracker holding `state` gives the next token (1 step of 1 token), when the largest id
/// leaves room for a limit; nullopt otherwise.
std::optional<std::vector<std::int64_t>> tracker_next(int streams, const SequenceState& state, const PositionIds& prompt,
                                                      std::int64_t expected_max) {
  std::int64_t largest = expected_max;
  for (const std::int64_t v : prompt.values()) largest = std::max(largest, v);
  if (largest >= int64_max - 1) return std::nullopt;
  PositionTracker tracker(streams, largest + 2);
  try {
    tracker.add_sequence(7, state);
  } catch (const posenc::Error& e) {
    require(false, std::string("a builder's tracker_state was refused: ") + e.what());
  }
  const StepEntry step{7, 1};
  try {
    return tracker.step(std::span<const StepEntry>(&step, 1)).values();
  } catch (const posenc::Error& e) {
    require(false, std::string("the step after a prompt was refused: ") + e.what());
  }
  return std::nullopt;
}

/// Whether query slot q sees key k under `p` (the semantics glm.hpp states; `globals` for
/// global_local).
bool pattern_sees(const AttentionPattern& p, std::int64_t q, std::int64_t k) {
  const auto is_global = [&](std::int64_t x) {
    return std::find(p.global_positions.begin(), p.global_positions.end(), x) != p.global_positions.end();
  };
  switch (p.kind) {
    case MaskPattern::causal: return k <= q;
    case MaskPattern::bidirectional: return true;
    case MaskPattern::prefix_lm: return k < p.prefix_len || k <= q;
    case MaskPattern::local_window: return q - p.window < k && k <= q;
    case MaskPattern::global_local: return k <= q && (is_global(q) || is_global(k) || q - k < p.window);
    case MaskPattern::custom: return p.predicate(q, k);
  }
  return false;
}

AttentionPattern pattern(FuzzedDataProvider& in, std::int64_t k_len) {
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0: return AttentionPattern::causal();
    case 1: return AttentionPattern::bidirectional();
    case 2: return AttentionPattern::prefix_lm(in.ConsumeBool() ? in.ConsumeIntegralInRange<std::int64_t>(0, k_len) : number(in));
    case 3: return AttentionPattern::local_window(number(in, 4));
    case 4: {
      std::vector<std::int64_t> globals(in.ConsumeIntegralInRange<std::size_t>(0, 3));
      for (std::int64_t& g : globals) g = in.ConsumeBool() ? in.ConsumeIntegralInRange<std::int64_t>(0, 8) : number(in);
      return AttentionPattern::global_local(globals, number(in, 4));
    }
    default: {
      const std::int64_t m = in.ConsumeIntegralInRange<std::int64_t>(2, 4);
      return AttentionPattern::custom([m](std::int64_t q, std::int64_t k) { return (q + 2 * k) % m != 0; });
    }
  }
}

/// mask_ranges and to_dense on a fuzzed batch, checked element by element against the patterns'
/// semantics with padding applied (glm.hpp) when the call is small enough to enumerate.
void fuzz_mask(FuzzedDataProvider& in) {
  MaskGeometry g;
  g.batch = number(in, 3);
  g.q_len = number(in, 5);
  g.k_len = in.ConsumeBool() && g.q_len < int64_max - 3 ? g.q_len + in.ConsumeIntegralInRange<std::int64_t>(0, 3)
                                                         : number(in, 8);
  g.empty_rows = in.ConsumeBool() ? EmptyRows::masked : EmptyRows::all_visible;
  // batch x q_len x k_len, saturated (three int64 factors can pass 128 bits); 0 when one is negative.
  const i128 rows_128 = std::max<i128>(0, i128{g.batch} * std::max<std::int64_t>(0, g.q_len));
  const i128 cells = rows_128 > (i128{1} << 64) ? (i128{1} << 100) : rows_128 * std::max<std::int64_t>(0, g.k_len);
  if (in.ConsumeBool() && g.batch >= 1 && g.k_len >= 0 && i128{g.batch} * g.k_len <= 64) {
    g.valid.resize(static_cast<std::size_t>(g.batch * g.k_len) + (in.ConsumeIntegralInRange<int>(0, 9) == 0 ? 1 : 0));
    for (std::uint8_t& v : g.valid) v = in.ConsumeIntegralInRange<std::uint8_t>(0, in.ConsumeIntegralInRange<int>(0, 9) == 0 ? 2 : 1);
  }
  std::vector<AttentionPattern> patterns(in.ConsumeBool() || g.batch > 4 || g.batch < 1 ? 1 : static_cast<std::size_t>(g.batch));
  for (AttentionPattern& p : patterns) p = pattern(in, std::max<std::int64_t>(g.k_len, 0));
  // A sane call of more than 2^16 rows, or cells for custom predicates, is a caller's large request.
  const bool sane = g.batch >= 1 && g.q_len >= 0 && g.k_len >= g.q_len;
  if (sane && (i128{g.batch} * g.q_len > (i128{1} << 16) || cells > (i128{1} << 20))) return;
  const auto m = result_or_error([&] { return mask_ranges(patterns, g); }, "mask_ranges");
  if (!m) return;
  require(m->batch == g.batch && m->q_len == g.q_len && m->k_len == g.k_len &&
              static_cast<i128>(m->row_offsets.size()) == i128{g.batch} * g.q_len + 1,
          "mask_ranges: wrong shape");
  if (cells > 4096 || g.batch > 4096) return;
  const auto dense = result_or_error([&] { return to_dense(*m); }, "to_dense");
  require(dense.has_value(), "to_dense refused a small mask");
  for (std::int64_t b = 0; b < g.batch; ++b) {
    const AttentionPattern& p = patterns[patterns.size() == 1 ? 0 : static_cast<std::size_t>(b)];
    const auto valid = [&](std::int64_t slot) {
      return g.valid.empty() || g.valid[static_cast<std::size_t>(b * g.k_len + slot)] != 0;
    };
    for (std::int64_t r = 0; r < g.q_len; ++r) {
      const std::int64_t q = g.k_len - g.q_len + r;
      bool any = false;
      for (std::int64_t k = 0; k < g.k_len; ++k) any = any || (valid(q) && valid(k) && pattern_sees(p, q, k));
      for (std::int64_t k = 0; k < g.k_len; ++k) {
        const bool expected = (valid(q) && valid(k) && pattern_sees(p, q, k)) ||
                              (!any && g.empty_rows == EmptyRows::all_visible);
        require(m->visible(b, r, k) == expected, "mask_ranges differs from the pattern's semantics");
        require((dense->at(b, r, k) == 0.0f) == expected, "to_dense differs from mask_ranges");
      }
    }
  }
}

/// make_blank_infilling (spans and Part B order from small to hostile), blank_infilling_context and
/// chatglm6b_batch: shapes as documented, and the batch's rows equal chatglm6b_positions of each
/// sequence after its left pads.
void fuzz_blank_and_batch(FuzzedDataProvider& in) {
  const GlmSpecialTokens sp = GlmSpecialTokens::chatglm_6b();
  if (in.ConsumeBool()) {
    const std::vector<TokenId> text = tokens(in, {sp.eop});
    std::vector<BlankSpan> spans(in.ConsumeIntegralInRange<std::size_t>(0, 4));
    for (BlankSpan& b : spans) {
      b.start = in.ConsumeBool() ? in.ConsumeIntegralInRange<std::int64_t>(0, 12) : number(in);
      b.length = in.ConsumeBool() ? in.ConsumeIntegralInRange<std::int64_t>(1, 4) : number(in);
      b.kind = in.PickValueInArray({BlankKind::mask, BlankKind::smask, BlankKind::gmask});
    }
    std::vector<std::int64_t> order;
    if (in.ConsumeBool()) {
      order.resize(in.ConsumeIntegralInRange<std::size_t>(0, 5));
      for (std::int64_t& o : order) o = in.ConsumeBool() ? in.ConsumeIntegralInRange<std::int64_t>(0, 4) : number(in);
    }
    const auto r = result_or_error([&] { return make_blank_infilling(text, spans, order, sp); }, "make_blank_infilling");
    if (r) {
      // Part A replaces each span by one mask; Part B adds <sop> + span per span.
      const auto n = static_cast<i128>(text.size() + 2 * spans.size());
      i128 part_a = static_cast<i128>(text.size());
      for (const BlankSpan& b : spans) part_a -= b.length - 1;
      require(static_cast<i128>(r->tokens.size()) == n && r->targets.size() == r->tokens.size() &&
                  r->loss_mask.size() == r->tokens.size() && r->sep == part_a,
              "make_blank_infilling: wrong sizes");
      require_ids(r->positions, 2, n, "make_blank_infilling");
      require(r->mask_positions.size() == spans.size() && r->block_starts.size() == spans.size(),
              "make_blank_infilling: one mask position and one block per span");
    }
    const auto c = result_or_error([&] { return blank_infilling_context(text, sp); }, "blank_infilling_context");
    if (c) require_ids(c->positions, 2, static_cast<i128>(text.size()), "blank_infilling_context");
    return;
  }
  std::vector<std::vector<TokenId>> sequences(in.ConsumeIntegralInRange<std::size_t>(0, 4));
  for (auto& q : sequences) q = tokens(in, {sp.mask, sp.gmask, sp.sop, sp.eop});
  const MaskTokenRule rule = in.ConsumeBool() ? MaskTokenRule::mask_first : MaskTokenRule::gmask_first;
  const auto r = result_or_error([&] { return chatglm6b_batch(sequences, sp, rule); }, "chatglm6b_batch");
  if (!r) return;
  std::size_t longest = 0;
  for (const auto& q : sequences) longest = std::max(longest, q.size());
  const BatchPositions& p = r->padded;
  require(p.batch == static_cast<std::int64_t>(sequences.size()) && p.length == static_cast<std::int64_t>(longest),
          "chatglm6b_batch: wrong shape");
  require_ids(p.positions, 2, static_cast<i128>(sequences.size() * longest), "chatglm6b_batch");
  for (std::size_t b = 0; b < sequences.size(); ++b) {
    const ChatGlm6bPositions one = chatglm6b_positions(sequences[b], sp, rule);
    const std::int64_t pads = static_cast<std::int64_t>(longest - sequences[b].size());
    require(r->pad_counts[b] == pads, "chatglm6b_batch: pad count");
    for (std::int64_t t = 0; t < static_cast<std::int64_t>(sequences[b].size()); ++t) {
      const auto at = static_cast<std::int64_t>(b) * p.length + pads + t;
      require(p.positions.at(0, at) == one.positions.at(0, t) && p.positions.at(1, at) == one.positions.at(1, t) &&
                  p.valid[static_cast<std::size_t>(at)] == 1,
              "chatglm6b_batch: a row differs from chatglm6b_positions of its sequence");
    }
  }
}

void fuzz_one(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 11)) {
    case 10:
      fuzz_mask(in);
      return;
    case 11:
      fuzz_blank_and_batch(in);
      return;
    case 0: {
      const GlmSpecialTokens sp = GlmSpecialTokens::glm_130b();
      const std::vector<TokenId> t = tokens(in, {sp.mask, sp.smask, sp.gmask, sp.sop, sp.eop});
      const auto r = result_or_error([&] { return glm130b_positions(t, sp); }, "glm130b_positions");
      if (!r) return;
      require_ids(r->positions, 1, static_cast<i128>(t.size()), "glm130b_positions");
      const std::int64_t next = r->next_position(static_cast<std::int64_t>(t.size()));
      const auto got = tracker_next(1, tracker_state(*r), r->positions, next);
      require(!got || *got == std::vector<std::int64_t>{next}, "glm130b: the tracker's next position differs");
      return;
    }
    case 1: {
      const GlmSpecialTokens sp = GlmSpecialTokens::chatglm_6b();
      const std::vector<TokenId> t = tokens(in, {sp.mask, sp.gmask, sp.smask, sp.sop, sp.eop});
      const MaskTokenRule rule = in.ConsumeBool() ? MaskTokenRule::mask_first : MaskTokenRule::gmask_first;
      const auto r = result_or_error([&] { return chatglm6b_positions(t, sp, rule); }, "chatglm6b_positions");
      if (!r) return;
      require_ids(r->positions, 2, static_cast<i128>(t.size()), "chatglm6b_positions");
      const Position2d next = r->next();
      const auto got = tracker_next(2, tracker_state(*r), r->positions, std::max(next.position, next.block));
      require(!got || *got == std::vector<std::int64_t>{next.position, next.block},
              "chatglm6b: the tracker's next ids differ from next()");
      return;
    }
    case 2: {
      const GlmSpecialTokens sp = GlmSpecialTokens::glm4();
      const std::vector<TokenId> t = tokens(in, {sp.begin_of_image, sp.end_of_image, sp.gmask, sp.sop});
      const std::int64_t patches = number(in, 8);
      if (patches > max_ids) return;
      const auto r = result_or_error([&] { return glm4v_remote_positions(t, patches, sp); }, "glm4v_remote_positions");
      if (!r) return;
      require_ids(r->positions, 1, static_cast<i128>(t.size()) - 1 + patches, "glm4v_remote_positions");
      const auto original = static_cast<std::int64_t>(t.size());
      const auto got = tracker_next(1, tracker_state(*r), r->positions, original);
      require(!got || *got == std::vector<std::int64_t>{original},
              "glm-4v: the tracker's next position is not the original token count");
      return;
    }
    case 3:
    case 4: {
      const VisionTokens vision = VisionTokens::qwen2_vl();
      const std::vector<TokenId> t = tokens(in, {vision.image, vision.video});
      std::vector<VisionGrid> images(in.ConsumeIntegralInRange<std::size_t>(0, 3));
      for (VisionGrid& g : images) g = grid(in);
      std::vector<VisionGrid> videos(in.ConsumeIntegralInRange<std::size_t>(0, 2));
      for (VisionGrid& g : videos) g = grid(in);
      const NextTextStart rule = in.ConsumeBool() ? NextTextStart::max_plus_one : NextTextStart::spatial_extent;
      const VideoLayout layout = in.ConsumeBool() ? VideoLayout::whole : VideoLayout::per_frame;
      std::optional<MropePositions> r;
      i128 expected = 0;
      if (in.ConsumeBool()) {
        r = result_or_error([&] { return mrope_positions_from_tokens(t, vision, images, videos, rule, layout); },
                    "mrope_positions_from_tokens");
        expected = static_cast<i128>(t.size());
      } else {
        std::vector<MropeSegment> segments;
        for (const VisionGrid& g : images) {
          segments.push_back(MropeSegment::text(number(in, 5)));
          segments.push_back(MropeSegment::vision(g));
        }
        bool sane = true;
        for (const MropeSegment& s : segments) {
          const std::optional<i128> n = s.is_vision ? grid_tokens(s.grid) : std::optional<i128>(s.text_tokens);
          if (!n || *n < 1) sane = false;
          if (n) expected += *n;
        }
        if (sane && expected > max_ids && expected <= int64_max) return;  // a caller's huge request
        r = result_or_error([&] { return mrope_positions(segments, rule); }, "mrope_positions");
      }
      if (!r) return;
      require_ids(r->positions, 3, expected, "mrope_positions");
      require(r->next_position == r->positions.tokens() + r->rope_delta, "M-RoPE: next_position != tokens + rope_delta");
      const auto got = tracker_next(3, tracker_state(*r), r->positions, r->next_position);
      const std::int64_t n = r->next_position;
      require(!got || *got == std::vector<std::int64_t>{n, n, n}, "M-RoPE: the tracker's next ids differ");
      const auto decode =
          result_or_error([&] { return mrope_decode_positions(r->positions.tokens(), r->rope_delta, 1); }, "mrope_decode_positions");
      require(decode && decode->values() == std::vector<std::int64_t>{n, n, n},
              "M-RoPE: mrope_decode_positions differs from next_position");
      return;
    }
    case 5: {
      const std::int64_t past = number(in);
      const std::int64_t count = number(in);
      if (count > max_ids && count < (std::int64_t{1} << 61)) return;
      const auto r = result_or_error([&] { return arange_positions(past, count); }, "arange_positions");
      if (r) require_ids(*r, 1, count, "arange_positions");
      return;
    }
    case 6: {
      const std::int64_t mask = number(in);
      const std::int64_t first_block = number(in);
      const std::int64_t count = number(in);
      if (count > max_ids && count < (std::int64_t{1} << 61)) return;
      const auto r =
          result_or_error([&] { return blank_infilling_generation(mask, first_block, count); }, "blank_infilling_generation");
      if (r) require_ids(*r, 2, count, "blank_infilling_generation");
      return;
    }
    case 7: {
      const std::int64_t past = number(in);
      const std::int64_t magnitude = number(in);
      const std::int64_t delta = in.ConsumeBool() && magnitude > std::numeric_limits<std::int64_t>::min() ? -magnitude : magnitude;
      const std::int64_t count = number(in);
      if (count > max_ids / 3 && count < (std::int64_t{1} << 61)) return;
      const auto r = result_or_error([&] { return mrope_decode_positions(past, delta, count); }, "mrope_decode_positions");
      if (r) require_ids(*r, 3, count, "mrope_decode_positions");
      return;
    }
    case 8: {
      std::vector<std::int64_t> lengths(in.ConsumeIntegralInRange<std::size_t>(0, 5));
      for (std::int64_t& l : lengths) l = number(in);
      const std::int64_t pad_fill = in.ConsumeBool() ? 0 : 1;
      i128 longest = 0;
      for (const std::int64_t l : lengths) longest = std::max<i128>(longest, l);
      const i128 total = longest * static_cast<i128>(lengths.size());
      if (total > max_ids && total <= int64_max) return;
      const auto r = result_or_error([&] { return left_padded_arange(lengths, pad_fill); }, "left_padded_arange");
      if (r) require_ids(r->positions, 1, total, "left_padded_arange");
      return;
    }
    default: {
      const std::int64_t batch = number(in, 3);
      const std::int64_t length = number(in, 5);
      std::vector<std::uint8_t> mask(in.ConsumeIntegralInRange<std::size_t>(0, 16));
      for (std::uint8_t& m : mask) m = in.ConsumeIntegralInRange<std::uint8_t>(0, 2);
      const std::int64_t new_tokens = number(in, 3);
      const i128 total = i128{batch} * new_tokens;
      if (total > max_ids && total <= int64_max) return;
      const auto r = result_or_error([&] { return next_positions_from_attention_mask(mask, batch, length, new_tokens); },
                             "next_positions_from_attention_mask");
      if (r) require_ids(r->positions, 1, total, "next_positions_from_attention_mask");
      const auto p = result_or_error([&] { return positions_from_attention_mask(mask, batch, length, 0); },
                             "positions_from_attention_mask");
      if (p) require_ids(p->positions, 1, static_cast<i128>(mask.size()), "positions_from_attention_mask");
      return;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  for (int i = 0; i < 8 && in.remaining_bytes() > 0; ++i) fuzz_one(in);
  return 0;
}

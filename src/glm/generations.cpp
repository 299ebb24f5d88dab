// Position ids of the token-driven GLM generations: original GLM blank infilling, GLM-130B, ChatGLM-6B (2-D).
#include <algorithm>
#include <numeric>
#include <vector>

#include "glm/detail.hpp"
#include "posenc/glm.hpp"

namespace posenc::glm {

using detail::fail;

namespace {

TokenId mask_token_of(BlankKind kind, const GlmSpecialTokens& t) {
  switch (kind) {
    case BlankKind::mask: return t.mask;
    case BlankKind::smask: return t.smask;
    case BlankKind::gmask: return t.gmask;
  }
  return t.mask;
}

const char* name_of(BlankKind kind) {
  switch (kind) {
    case BlankKind::mask: return "[MASK]";
    case BlankKind::smask: return "[sMASK]";
    case BlankKind::gmask: return "[gMASK]";
  }
  return "?";
}

void require_token(TokenId id, const char* name, const char* who) {
  if (id == no_token) {
    fail(ErrorKind::invalid_argument, who, ": the special token ", name,
         " is not set (no_token) in GlmSpecialTokens");
  }
}

}  // namespace

// ---- original GLM blank infilling ---------------------------------------------------------------

BlankInfillingSample make_blank_infilling(std::span<const TokenId> text,
                                          std::span<const BlankSpan> spans,
                                          std::span<const std::int64_t> part_b_order,
                                          const GlmSpecialTokens& tokens) {
  constexpr const char* who = "make_blank_infilling";
  tokens.validate();
  require_token(tokens.sop, "<sop>", who);
  require_token(tokens.eop, "<eop>", who);
  const auto text_len = static_cast<std::int64_t>(text.size());
  const auto n = static_cast<std::int64_t>(spans.size());
  if (n == 0)
    fail(ErrorKind::invalid_argument, who, ": no spans given; at least one span is needed");

  for (std::int64_t i = 0; i < n; ++i) {
    const BlankSpan& s = spans[static_cast<std::size_t>(i)];
    require_token(mask_token_of(s.kind, tokens), name_of(s.kind), who);
    if (s.length < 1) {
      fail(ErrorKind::invalid_argument, who, ": span ", i, " (start ", s.start, ") has length ",
           s.length, "; spans must hold at least 1 token");
    }
    if (s.start < 0 || s.start > text_len || s.length > text_len - s.start) {
      fail(ErrorKind::out_of_range, who, ": span ", i, " [", s.start, ", ", s.start, " + ",
           s.length, ") lies outside the text [0, ", text_len, ")");
    }
  }
  // Part A needs the spans in text order; overlaps show up as neighbours in that order.
  std::vector<std::int64_t> by_start(static_cast<std::size_t>(n));
  std::iota(by_start.begin(), by_start.end(), 0);
  std::stable_sort(by_start.begin(), by_start.end(), [&](std::int64_t a, std::int64_t b) {
    return spans[static_cast<std::size_t>(a)].start < spans[static_cast<std::size_t>(b)].start;
  });
  for (std::size_t j = 1; j < by_start.size(); ++j) {
    const BlankSpan& prev = spans[static_cast<std::size_t>(by_start[j - 1])];
    const BlankSpan& cur = spans[static_cast<std::size_t>(by_start[j])];
    if (cur.start < prev.start + prev.length) {
      fail(ErrorKind::invalid_argument, who, ": span ", by_start[j], " [", cur.start, ", ",
           cur.start + cur.length, ") overlaps span ", by_start[j - 1], " [", prev.start, ", ",
           prev.start + prev.length, ")");
    }
  }

  std::vector<std::int64_t> order;
  if (part_b_order.empty()) {
    order.resize(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
  } else {
    if (static_cast<std::int64_t>(part_b_order.size()) != n) {
      fail(ErrorKind::invalid_argument, who, ": part_b_order has ", part_b_order.size(),
           " entries for ", n, " spans");
    }
    std::vector<bool> seen(static_cast<std::size_t>(n), false);
    for (std::size_t j = 0; j < part_b_order.size(); ++j) {
      const std::int64_t v = part_b_order[j];
      if (v < 0 || v >= n) {
        fail(ErrorKind::out_of_range, who, ": part_b_order[", j, "] = ", v,
             " is not a span index in [0, ", n, ")");
      }
      if (seen[static_cast<std::size_t>(v)]) {
        fail(ErrorKind::invalid_argument, who, ": part_b_order[", j, "] = ", v,
             " repeats a span already listed");
      }
      seen[static_cast<std::size_t>(v)] = true;
    }
    order.assign(part_b_order.begin(), part_b_order.end());
  }

  BlankInfillingSample out;
  out.mask_positions.assign(static_cast<std::size_t>(n), 0);
  std::vector<std::int64_t> pos;    // stream 0
  std::vector<std::int64_t> block;  // stream 1

  // Part A: text with each span collapsed to its mask; a position is the index in Part A.
  std::int64_t cursor = 0;
  auto copy_text = [&](std::int64_t from, std::int64_t to) {
    for (std::int64_t i = from; i < to; ++i) {
      out.tokens.push_back(text[static_cast<std::size_t>(i)]);
      pos.push_back(static_cast<std::int64_t>(pos.size()));
    }
  };
  for (std::int64_t idx : by_start) {
    const BlankSpan& s = spans[static_cast<std::size_t>(idx)];
    copy_text(cursor, s.start);
    out.mask_positions[static_cast<std::size_t>(idx)] =
        static_cast<std::int64_t>(out.tokens.size());
    out.tokens.push_back(mask_token_of(s.kind, tokens));
    pos.push_back(static_cast<std::int64_t>(pos.size()));
    cursor = s.start + s.length;
  }
  copy_text(cursor, text_len);
  out.sep = static_cast<std::int64_t>(out.tokens.size());
  out.targets = out.tokens;
  out.loss_mask.assign(out.tokens.size(), 0);
  block.assign(out.tokens.size(), 0);

  // Part B: [sop] + span for each span in the chosen order, all at the span's mask position.
  for (std::int64_t idx : order) {
    const BlankSpan& s = spans[static_cast<std::size_t>(idx)];
    const std::int64_t mask_pos = out.mask_positions[static_cast<std::size_t>(idx)];
    out.block_starts.push_back(static_cast<std::int64_t>(out.tokens.size()));
    out.tokens.push_back(tokens.sop);
    for (std::int64_t i = 0; i < s.length; ++i) {
      out.tokens.push_back(text[static_cast<std::size_t>(s.start + i)]);
      out.targets.push_back(text[static_cast<std::size_t>(s.start + i)]);
    }
    out.targets.push_back(tokens.eop);
    for (std::int64_t i = 0; i <= s.length; ++i) {
      pos.push_back(mask_pos);
      block.push_back(i + 1);
      out.loss_mask.push_back(1);
    }
  }

  const auto total = static_cast<std::int64_t>(out.tokens.size());
  std::vector<std::int64_t> values = std::move(pos);
  values.insert(values.end(), block.begin(), block.end());
  out.positions = PositionIds(2, total, std::move(values));
  return out;
}

BlankInfillingContext blank_infilling_context(std::span<const TokenId> context,
                                              const GlmSpecialTokens& tokens) {
  tokens.validate();
  BlankInfillingContext out;
  const auto len = static_cast<std::int64_t>(context.size());
  for (std::int64_t i = 0; i < len; ++i) {
    const TokenId t = context[static_cast<std::size_t>(i)];
    if (t != no_token && (t == tokens.mask || t == tokens.smask || t == tokens.gmask)) {
      out.mask_positions.push_back(i);
    }
  }
  if (out.mask_positions.empty()) {
    fail(ErrorKind::invalid_argument, "blank_infilling_context: no mask token in the ", len,
         " context tokens; searched for [MASK]=", tokens.mask, ", [sMASK]=", tokens.smask,
         ", [gMASK]=", tokens.gmask);
  }
  out.positions = PositionIds(2, len);
  auto p = out.positions.stream(0);
  for (std::int64_t i = 0; i < len; ++i) p[static_cast<std::size_t>(i)] = i;
  out.sep = len;
  return out;
}

PositionIds blank_infilling_generation(std::int64_t mask_position, std::int64_t first_block,
                                       std::int64_t count) {
  detail::require_at_least(mask_position, 0, "blank_infilling_generation: mask_position");
  detail::require_at_least(first_block, 1, "blank_infilling_generation: first_block");
  detail::require_at_least(count, 0, "blank_infilling_generation: count");
  detail::add(first_block, count, "blank_infilling_generation: first_block + count");
  PositionIds out(2, count);
  auto p = out.stream(0);
  auto b = out.stream(1);
  for (std::int64_t i = 0; i < count; ++i) {
    p[static_cast<std::size_t>(i)] = mask_position;
    b[static_cast<std::size_t>(i)] = first_block + i;
  }
  return out;
}

// ---- GLM-130B -----------------------------------------------------------------------------------

std::int64_t Glm130bPositions::next_position(std::int64_t tokens_so_far) const {
  detail::require_at_least(tokens_so_far, sop_index + 1,
                           "Glm130bPositions::next_position: tokens_so_far");
  return pinned ? mask_position : tokens_so_far;
}

Glm130bPositions glm130b_positions(std::span<const TokenId> tokens,
                                   const GlmSpecialTokens& special) {
  special.validate();
  require_token(special.sop, "<sop>", "glm130b_positions");
  const auto len = static_cast<std::int64_t>(tokens.size());
  const std::int64_t sop = detail::find_token(tokens, special.sop, len);
  if (sop < 0) {
    fail(ErrorKind::invalid_argument, "glm130b_positions: no <sop> (id ", special.sop, ") in the ",
         len, " tokens; the input must be context + <sop> (+ generated tokens)");
  }
  // generate.py fill_blanks: [MASK] wins over [sMASK], which wins over [gMASK].
  Glm130bPositions out;
  out.sop_index = sop;
  const std::int64_t m = detail::find_token(tokens, special.mask, sop);
  const std::int64_t sm = detail::find_token(tokens, special.smask, sop);
  const std::int64_t g = detail::find_token(tokens, special.gmask, sop);
  if (m >= 0) {
    out.mask_position = m;
    out.mask_token = special.mask;
    out.pinned = true;
  } else if (sm >= 0) {
    out.mask_position = sm;
    out.mask_token = special.smask;
    out.pinned = true;
  } else if (g >= 0) {
    out.mask_position = g;
    out.mask_token = special.gmask;
    out.pinned = false;
  } else {
    fail(ErrorKind::invalid_argument, "glm130b_positions: no mask token before <sop> at index ",
         sop, "; searched for [MASK]=", special.mask, ", [sMASK]=", special.smask,
         ", [gMASK]=", special.gmask);
  }
  out.positions = PositionIds(1, len);
  auto p = out.positions.stream(0);
  for (std::int64_t i = 0; i < len; ++i) {
    p[static_cast<std::size_t>(i)] = (out.pinned && i >= sop) ? out.mask_position : i;
  }
  return out;
}

// ---- ChatGLM-6B ---------------------------------------------------------------------------------

Position2d ChatGlm6bPositions::next() const {
  const std::int64_t last = positions.tokens() - 1;
  if (last < context_length) {
    // Nothing from <sop> on yet cannot happen (the <sop> itself is there), but keep the rule total.
    return {mask_position, 1};
  }
  return chatglm6b_decode_step({positions.at(0, last), positions.at(1, last)});
}

Position2d chatglm6b_decode_step(Position2d last) {
  return {last.position, detail::add(last.block, 1, "chatglm6b_decode_step: block")};
}

ChatGlm6bPositions chatglm6b_positions(std::span<const TokenId> tokens,
                                       const GlmSpecialTokens& special, MaskTokenRule rule) {
  special.validate();
  require_token(special.sop, "<sop>", "chatglm6b_positions");
  const auto len = static_cast<std::int64_t>(tokens.size());
  const std::int64_t sop = detail::find_token(tokens, special.sop, len);
  if (sop < 0) {
    fail(ErrorKind::invalid_argument, "chatglm6b_positions: no <sop> (id ", special.sop,
         ") in the ", len, " tokens; the tokenizer appends [gMASK] <sop> to every prompt");
  }
  const std::int64_t m = detail::find_token(tokens, special.mask, sop);
  const std::int64_t g = detail::find_token(tokens, special.gmask, sop);
  ChatGlm6bPositions out;
  out.context_length = sop;
  const bool take_mask = rule == MaskTokenRule::mask_first ? m >= 0 : (m >= 0 && g < 0);
  if (take_mask) {
    out.mask_position = m;
    out.mask_token = special.mask;
  } else if (g >= 0) {
    out.mask_position = g;
    out.mask_token = special.gmask;
  } else {
    fail(ErrorKind::invalid_argument, "chatglm6b_positions: no mask token before <sop> at index ",
         sop, "; searched for [MASK]=", special.mask, ", [gMASK]=", special.gmask);
  }
  out.positions = PositionIds(2, len);
  auto p = out.positions.stream(0);
  auto b = out.positions.stream(1);
  for (std::int64_t i = 0; i < len; ++i) {
    const auto k = static_cast<std::size_t>(i);
    p[k] = i < sop ? i : out.mask_position;
    b[k] = i < sop ? 0 : i - sop + 1;
  }
  return out;
}

std::vector<AttentionPattern> ChatGlm6bBatch::attention() const {
  std::vector<AttentionPattern> out;
  out.reserve(prefix_lens.size());
  for (std::int64_t p : prefix_lens) out.push_back(AttentionPattern::prefix_lm(p));
  return out;
}

ChatGlm6bBatch chatglm6b_batch(std::span<const std::vector<TokenId>> sequences,
                               const GlmSpecialTokens& special, MaskTokenRule rule) {
  std::vector<ChatGlm6bPositions> rows;
  rows.reserve(sequences.size());
  std::int64_t longest = 0;
  for (std::size_t b = 0; b < sequences.size(); ++b) {
    try {
      rows.push_back(chatglm6b_positions(sequences[b], special, rule));
    } catch (const Error& e) {
      fail(e.kind(), "chatglm6b_batch: sequence ", b, ": ", e.what());
    }
    longest = std::max(longest, static_cast<std::int64_t>(sequences[b].size()));
  }
  const auto batch = static_cast<std::int64_t>(sequences.size());
  const std::int64_t total = detail::mul(batch, longest, "chatglm6b_batch size");
  ChatGlm6bBatch out;
  // _pad: positions (both rows) padded with 0 on the left, attention mask padded as masked.
  out.padded = BatchPositions{batch, longest, PositionIds(2, total),
                              std::vector<std::uint8_t>(static_cast<std::size_t>(total), 0)};
  for (std::int64_t b = 0; b < batch; ++b) {
    const ChatGlm6bPositions& r = rows[static_cast<std::size_t>(b)];
    const std::int64_t pads = longest - r.positions.tokens();
    for (std::int64_t t = 0; t < r.positions.tokens(); ++t) {
      const std::int64_t i = b * longest + pads + t;
      out.padded.positions.set(0, i, r.positions.at(0, t));
      out.padded.positions.set(1, i, r.positions.at(1, t));
      out.padded.valid[static_cast<std::size_t>(i)] = 1;
    }
    out.pad_counts.push_back(pads);
    out.prefix_lens.push_back(pads + r.context_length);
    out.mask_positions.push_back(r.mask_position);
  }
  return out;
}

}  // namespace posenc::glm

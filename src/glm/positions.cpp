// PositionIds (the stream-major multi-stream position buffer), special-token sets, plain and padded-batch positions.
#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <utility>

#include "core/memory.hpp"
#include "glm/detail.hpp"
#include "posenc/glm.hpp"

namespace posenc::glm {

using detail::fail;

// ---- special tokens ----------------------------------------------------------------------------

GlmSpecialTokens GlmSpecialTokens::chatglm_6b() noexcept {
  return GlmSpecialTokens{};
}

GlmSpecialTokens GlmSpecialTokens::chatglm_6b_first_release() noexcept {
  return {.mask = 150000, .gmask = 150001, .smask = 150002, .sop = 150004, .eop = 150005};
}

GlmSpecialTokens GlmSpecialTokens::glm_130b() noexcept {
  return chatglm_6b_first_release();
}

GlmSpecialTokens GlmSpecialTokens::chatglm2() noexcept {
  return {.mask = 64789, .gmask = 64790, .smask = 64791, .sop = 64792, .eop = 64793};
}

GlmSpecialTokens GlmSpecialTokens::glm4() noexcept {
  return {.mask = 151330,
          .gmask = 151331,
          .smask = 151332,
          .sop = 151333,
          .eop = 151334,
          .begin_of_image = 151339,
          .end_of_image = 151340};
}

void GlmSpecialTokens::validate() const {
  const std::array<std::pair<const char*, TokenId>, 7> ids{{{"[MASK]", mask},
                                                            {"[gMASK]", gmask},
                                                            {"[sMASK]", smask},
                                                            {"<sop>", sop},
                                                            {"<eop>", eop},
                                                            {"<|begin_of_image|>", begin_of_image},
                                                            {"<|end_of_image|>", end_of_image}}};
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i].second < no_token) {
      fail(ErrorKind::invalid_argument, "GlmSpecialTokens: ", ids[i].first, " id ", ids[i].second,
           " is negative (use no_token = -1 for an absent token)");
    }
    if (ids[i].second == no_token) continue;
    for (std::size_t j = 0; j < i; ++j) {
      if (ids[j].second == ids[i].second) {
        fail(ErrorKind::invalid_argument, "GlmSpecialTokens: ", ids[i].first, " and ", ids[j].first,
             " have the same id ", ids[i].second);
      }
    }
  }
}

// ---- PositionIds -------------------------------------------------------------------------------

namespace {

void check_streams(int streams) {
  if (streams < 1 || streams > PositionIds::max_streams) {
    fail(ErrorKind::invalid_argument, "PositionIds: streams is ", streams,
         "; it must be 1, 2 or 3");
  }
}

}  // namespace

PositionIds::PositionIds(int streams, std::int64_t tokens) : streams_(streams), tokens_(tokens) {
  check_streams(streams);
  detail::require_at_least(tokens, 0, "PositionIds: tokens");
  const std::int64_t values = detail::mul(streams, tokens, "PositionIds size");
  const std::int64_t bytes = values > std::numeric_limits<std::int64_t>::max() / 8 ? -1 : values * 8;
  posenc::detail::allocating("PositionIds", bytes, [&] { values_.assign(static_cast<std::size_t>(values), 0); });
}

PositionIds::PositionIds(int streams, std::int64_t tokens, std::vector<std::int64_t> values)
    : streams_(streams), tokens_(tokens), values_(std::move(values)) {
  check_streams(streams);
  detail::require_at_least(tokens, 0, "PositionIds: tokens");
  const std::int64_t expected = detail::mul(streams, tokens, "PositionIds size");
  if (static_cast<std::int64_t>(values_.size()) != expected) {
    fail(ErrorKind::invalid_argument, "PositionIds: ", values_.size(), " values given for ",
         streams, " streams x ", tokens, " tokens (expected ", expected, ")");
  }
}

std::span<const std::int64_t> PositionIds::stream(int s) const {
  if (s < 0 || s >= streams_) {
    fail(ErrorKind::out_of_range, "PositionIds: stream ", s, " requested of ", streams_,
         " streams");
  }
  return {values_.data() + static_cast<std::size_t>(s) * static_cast<std::size_t>(tokens_),
          static_cast<std::size_t>(tokens_)};
}

std::span<std::int64_t> PositionIds::stream(int s) {
  const auto c = std::as_const(*this).stream(s);
  return {const_cast<std::int64_t*>(c.data()), c.size()};
}

PositionsView PositionIds::view(int s) const {
  const auto c = stream(s);
  return PositionsView{c.data(), IndexType::i64, tokens_};
}

std::int64_t PositionIds::at(int s, std::int64_t t) const {
  const auto c = stream(s);
  if (t < 0 || t >= tokens_) {
    fail(ErrorKind::out_of_range, "PositionIds: token ", t, " requested of ", tokens_, " tokens");
  }
  return c[static_cast<std::size_t>(t)];
}

void PositionIds::set(int s, std::int64_t t, std::int64_t value) {
  const auto c = stream(s);
  if (t < 0 || t >= tokens_) {
    fail(ErrorKind::out_of_range, "PositionIds: token ", t, " written of ", tokens_, " tokens");
  }
  c[static_cast<std::size_t>(t)] = value;
}

void PositionIds::append(const PositionIds& other) {
  if (tokens_ == 0 && values_.empty()) streams_ = other.streams_;
  if (other.streams_ != streams_) {
    fail(ErrorKind::invalid_argument, "PositionIds::append: mismatched streams: ", other.streams_,
         " streams appended to ", streams_, " streams");
  }
  const std::int64_t total = detail::add(tokens_, other.tokens_, "PositionIds::append tokens");
  std::vector<std::int64_t> merged(
      static_cast<std::size_t>(detail::mul(streams_, total, "PositionIds size")));
  for (int s = 0; s < streams_; ++s) {
    const auto a = stream(s);
    const auto b = other.stream(s);
    auto out = merged.begin() + static_cast<std::ptrdiff_t>(s) * total;
    out = std::copy(a.begin(), a.end(), out);
    std::copy(b.begin(), b.end(), out);
  }
  values_ = std::move(merged);
  tokens_ = total;
}

void PositionIds::validate(std::int64_t position_limit) const {
  for (int s = 0; s < streams_; ++s) {
    const auto c = stream(s);
    for (std::int64_t t = 0; t < tokens_; ++t) {
      const std::int64_t v = c[static_cast<std::size_t>(t)];
      if (v < 0 || v >= position_limit) {
        fail(ErrorKind::out_of_range, "position ", v, " of stream ", s, " at token ", t,
             " lies outside [0, ", position_limit, ") (position_limit)");
      }
    }
  }
}

PositionIds arange_positions(std::int64_t past_len, std::int64_t count) {
  detail::require_at_least(past_len, 0, "arange_positions: past_len");
  detail::require_at_least(count, 0, "arange_positions: count");
  detail::add(past_len, count, "arange_positions: past_len + count");
  PositionIds ids(1, count);
  auto s = ids.stream(0);
  for (std::int64_t i = 0; i < count; ++i) s[static_cast<std::size_t>(i)] = past_len + i;
  return ids;
}

std::int64_t BatchPositions::at(int s, std::int64_t b, std::int64_t t) const {
  if (b < 0 || b >= batch || t < 0 || t >= length) {
    fail(ErrorKind::out_of_range, "BatchPositions: [", b, ", ", t, "] outside [", batch, ", ",
         length, "]");
  }
  return positions.at(s, b * length + t);
}

// ---- masks of a padded batch (HF attention_mask) -----------------------------------------------

void detail::check_binary_mask(std::span<const std::uint8_t> mask, std::int64_t batch,
                               std::int64_t length, const char* what) {
  require_at_least(batch, 0, cat(what, ": batch").c_str());
  require_at_least(length, 0, cat(what, ": length").c_str());
  const std::int64_t expected = mul(batch, length, what);
  if (static_cast<std::int64_t>(mask.size()) != expected) {
    fail(ErrorKind::invalid_argument, what, ": mask has ", mask.size(), " entries; batch ", batch,
         " x length ", length, " needs ", expected);
  }
  for (std::int64_t i = 0; i < expected; ++i) {
    const unsigned v = mask[static_cast<std::size_t>(i)];
    if (v > 1) {
      fail(ErrorKind::invalid_argument, what, ": mask value ", v, " at [", i / length, ", ",
           i % length, "] is not 0 or 1");
    }
  }
}

BatchPositions positions_from_attention_mask(std::span<const std::uint8_t> mask, std::int64_t batch,
                                             std::int64_t length, std::int64_t pad_fill) {
  detail::check_binary_mask(mask, batch, length, "positions_from_attention_mask");
  BatchPositions out{batch, length, PositionIds(1, batch * length), {mask.begin(), mask.end()}};
  auto s = out.positions.stream(0);
  // Rows of length 0 hold nothing: not a loop over a batch that may be as large as int64 allows.
  for (std::int64_t b = 0; length > 0 && b < batch; ++b) {
    std::int64_t real = 0;  // running cumsum
    for (std::int64_t t = 0; t < length; ++t) {
      const auto i = static_cast<std::size_t>(b * length + t);
      real += mask[i];
      s[i] = mask[i] != 0 ? real - 1 : pad_fill;
    }
  }
  return out;
}

BatchPositions next_positions_from_attention_mask(std::span<const std::uint8_t> mask,
                                                  std::int64_t batch, std::int64_t length,
                                                  std::int64_t new_tokens) {
  detail::check_binary_mask(mask, batch, length, "next_positions_from_attention_mask");
  detail::require_at_least(new_tokens, 1, "next_positions_from_attention_mask: new_tokens");
  const std::int64_t total = detail::mul(batch, new_tokens, "next_positions_from_attention_mask");
  BatchPositions out{batch, new_tokens, PositionIds(1, total),
                     std::vector<std::uint8_t>(static_cast<std::size_t>(total), 1)};
  auto s = out.positions.stream(0);
  for (std::int64_t b = 0; b < batch; ++b) {
    // cumsum - 1 over the mask grown by new_tokens ones: the real tokens counted so far, + i.
    std::int64_t real = 0;
    for (std::int64_t t = 0; t < length; ++t)
      real += mask[static_cast<std::size_t>(b * length + t)];
    for (std::int64_t i = 0; i < new_tokens; ++i) {
      s[static_cast<std::size_t>(b * new_tokens + i)] = real + i;
    }
  }
  return out;
}

BatchPositions left_padded_arange(std::span<const std::int64_t> lengths, std::int64_t pad_fill) {
  std::int64_t longest = 0;
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    if (lengths[b] < 0) {
      fail(ErrorKind::invalid_argument, "left_padded_arange: length ", lengths[b], " at index ", b,
           " is negative");
    }
    longest = std::max(longest, lengths[b]);
  }
  const auto batch = static_cast<std::int64_t>(lengths.size());
  const std::int64_t total = detail::mul(batch, longest, "left_padded_arange size");
  BatchPositions out{batch, longest, PositionIds(1, total),
                     std::vector<std::uint8_t>(static_cast<std::size_t>(total), 0)};
  auto s = out.positions.stream(0);
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t pads = longest - lengths[static_cast<std::size_t>(b)];
    for (std::int64_t t = 0; t < longest; ++t) {
      const auto i = static_cast<std::size_t>(b * longest + t);
      const bool real = t >= pads;
      s[i] = real ? t - pads : pad_fill;
      out.valid[i] = real ? 1 : 0;
    }
  }
  return out;
}

}  // namespace posenc::glm

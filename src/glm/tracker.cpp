// PositionTracker: per-sequence position state for continuous batching, kept as plain arrays a device can mirror.
#include <algorithm>
#include <utility>
#include <vector>

#include "glm/detail.hpp"
#include "posenc/glm.hpp"

namespace posenc::glm {

using detail::fail;

SequenceState tracker_state(const ChatGlm6bPositions& prompt) {
  return {prompt.positions.tokens(), 0, prompt.context_length, prompt.mask_position};
}

SequenceState tracker_state(const Glm130bPositions& prompt) {
  return {prompt.positions.tokens(), 0, prompt.pinned ? prompt.sop_index : never_pinned,
          prompt.pinned ? prompt.mask_position : 0};
}

SequenceState tracker_state(const MropePositions& prompt) {
  return {prompt.positions.tokens(), prompt.rope_delta, never_pinned, 0};
}

SequenceState tracker_state(const Glm4vRemotePositions& prompt) {
  return {prompt.positions.tokens(), prompt.rope_delta, never_pinned, 0};
}

PositionTracker::PositionTracker(int streams, std::int64_t position_limit)
    : streams_(streams), position_limit_(position_limit) {
  if (streams < 1 || streams > PositionIds::max_streams) {
    fail(ErrorKind::invalid_argument, "PositionTracker: streams is ", streams,
         "; it must be 1, 2 or 3");
  }
  detail::require_at_least(position_limit, 1, "PositionTracker: position_limit");
}

void PositionTracker::add_sequence(std::int64_t seq_id, const SequenceState& s) {
  if (contains(seq_id)) {
    fail(ErrorKind::invalid_argument, "PositionTracker: sequence ", seq_id,
         " is already tracked (slot ", slot_of(seq_id), ")");
  }
  detail::require_at_least(s.length, 0, "PositionTracker::add_sequence: length");
  detail::require_at_least(s.pin_from, 0, "PositionTracker::add_sequence: pin_from");
  if (s.pin_from != never_pinned && (s.pin_value < 0 || s.pin_value >= position_limit_)) {
    fail(ErrorKind::out_of_range, "PositionTracker::add_sequence: sequence ", seq_id, " pin_value ",
         s.pin_value, " lies outside [0, ", position_limit_, ") (position_limit)");
  }
  slots_.emplace(seq_id, size());
  seq_ids_.push_back(seq_id);
  lengths_.push_back(s.length);
  rope_deltas_.push_back(s.rope_delta);
  pin_froms_.push_back(s.pin_from);
  pin_values_.push_back(s.pin_value);
}

void PositionTracker::remove_sequence(std::int64_t seq_id) {
  const std::int64_t slot = slot_of(seq_id);
  const std::int64_t last = size() - 1;
  // Move the last slot into the freed one so the arrays stay dense.
  if (slot != last) {
    const auto s = static_cast<std::size_t>(slot);
    const auto l = static_cast<std::size_t>(last);
    seq_ids_[s] = seq_ids_[l];
    lengths_[s] = lengths_[l];
    rope_deltas_[s] = rope_deltas_[l];
    pin_froms_[s] = pin_froms_[l];
    pin_values_[s] = pin_values_[l];
    slots_[seq_ids_[s]] = slot;
  }
  seq_ids_.pop_back();
  lengths_.pop_back();
  rope_deltas_.pop_back();
  pin_froms_.pop_back();
  pin_values_.pop_back();
  slots_.erase(seq_id);
}

bool PositionTracker::contains(std::int64_t seq_id) const noexcept {
  return slots_.count(seq_id) != 0;
}

std::int64_t PositionTracker::slot_of(std::int64_t seq_id) const {
  const auto it = slots_.find(seq_id);
  if (it == slots_.end()) {
    fail(ErrorKind::invalid_argument, "PositionTracker: sequence ", seq_id, " is not tracked (",
         size(), " sequences are)");
  }
  return it->second;
}

SequenceState PositionTracker::state(std::int64_t seq_id) const {
  const auto s = static_cast<std::size_t>(slot_of(seq_id));
  return {lengths_[s], rope_deltas_[s], pin_froms_[s], pin_values_[s]};
}

void PositionTracker::pin(std::int64_t seq_id, std::int64_t pin_value) {
  const auto s = static_cast<std::size_t>(slot_of(seq_id));
  if (pin_value < 0 || pin_value >= position_limit_) {
    fail(ErrorKind::out_of_range, "PositionTracker::pin: sequence ", seq_id, " pin_value ",
         pin_value, " lies outside [0, ", position_limit_, ") (position_limit)");
  }
  pin_froms_[s] = lengths_[s];
  pin_values_[s] = pin_value;
}

PositionIds PositionTracker::peek(std::span<const StepEntry> entries) const {
  // Validate every entry before computing anything, so errors name the entry, not a token.
  std::vector<std::size_t> slot(entries.size());  // of each entry
  std::vector<bool> used(seq_ids_.size(), false);
  std::int64_t total = 0;
  for (std::size_t e = 0; e < entries.size(); ++e) {
    const StepEntry& en = entries[e];
    const auto it = slots_.find(en.seq_id);
    if (it == slots_.end()) {
      fail(ErrorKind::invalid_argument, "PositionTracker step: entry ", e, " names sequence ",
           en.seq_id, ", which is not tracked");
    }
    slot[e] = static_cast<std::size_t>(it->second);
    if (used[slot[e]]) {
      fail(ErrorKind::invalid_argument, "PositionTracker step: entry ", e, " repeats sequence ",
           en.seq_id);
    }
    used[slot[e]] = true;
    if (en.new_tokens < 1) {
      fail(ErrorKind::invalid_argument, "PositionTracker step: entry ", e, " (sequence ", en.seq_id,
           ") has new_tokens ", en.new_tokens, "; it must be at least 1");
    }
    total = detail::add(total, en.new_tokens, "PositionTracker step: total tokens");
  }

  // Token n of slot s: position n + rope_delta before pin_from, pin_value from it on; block 0
  // before, n - pin_from + 1 from it on.
  auto ids = [&](std::size_t s, std::int64_t n) {
    const bool pinned = n >= pin_froms_[s];
    const std::int64_t p =
        pinned ? pin_values_[s] : detail::add(n, rope_deltas_[s], "PositionTracker: n + rope_delta");
    return std::pair{p, pinned ? n - pin_froms_[s] + 1 : std::int64_t{0}};
  };
  // Throws naming entry e's token n when one of its ids leaves the limit.
  auto check_ids = [&](std::size_t e, std::int64_t n) {
    const std::size_t s = slot[e];
    const auto [p, block] = ids(s, n);
    auto check = [&](const char* what, std::int64_t v) {
      if (v < 0 || v >= position_limit_) {
        fail(ErrorKind::out_of_range, "PositionTracker step: sequence ", entries[e].seq_id, " (entry ", e,
             ") token ", n - lengths_[s], " (index ", n, " in the sequence) gets ", what, " ", v,
             ", outside [0, ", position_limit_, ") (position_limit)");
      }
    };
    check("position", p);
    if (streams_ == 2) check("block position", block);
  };

  // Every id in range, before the output is allocated: a refused step allocates nothing in
  // proportion to what it asked for. Positions rise with n before pin_from and blocks rise after
  // it, so each part's first bad token, if any, is found from its ends (the error names the same
  // token a token-by-token check would).
  for (std::size_t e = 0; e < entries.size(); ++e) {
    const std::size_t s = slot[e];
    const std::int64_t first = lengths_[s];
    const std::int64_t end =
        detail::add(first, entries[e].new_tokens, "PositionTracker step: sequence length");
    const std::int64_t pin_from = pin_froms_[s];
    const std::int64_t unpinned_end = std::min(end, pin_from);
    if (first < unpinned_end) {
      // n + rope_delta for n in [first, unpinned_end): the first n at or past the limit.
      check_ids(e, first);
      // The last n below the limit is limit - 1 - rope_delta; past int64 it bounds nothing here.
      std::int64_t last_ok = 0;
      if (!__builtin_sub_overflow(position_limit_ - 1, rope_deltas_[s], &last_ok) && last_ok < unpinned_end - 1) {
        check_ids(e, last_ok + 1);
      }
    }
    const std::int64_t pinned_first = std::max(first, pin_from);
    if (pinned_first < end) {
      check_ids(e, pinned_first);  // pin_value (checked when set) and the first block
      // Blocks n - pin_from + 1: the first n whose block reaches the limit.
      if (streams_ == 2 && end - pin_from > position_limit_ - 1) check_ids(e, pin_from + position_limit_ - 1);
    }
  }

  PositionIds out(streams_, total);
  std::int64_t* const pos = out.data();
  std::int64_t o = 0;
  for (std::size_t e = 0; e < entries.size(); ++e) {
    const std::size_t s = slot[e];
    const std::int64_t end = lengths_[s] + entries[e].new_tokens;  // checked above
    for (std::int64_t n = lengths_[s]; n < end; ++n, ++o) {
      const auto [p, block] = ids(s, n);
      pos[o] = p;
      if (streams_ == 2) pos[total + o] = block;
      if (streams_ == 3) pos[total + o] = pos[2 * total + o] = p;
    }
  }
  return out;
}

PositionIds PositionTracker::step(std::span<const StepEntry> entries) {
  PositionIds out = peek(entries);  // throws before any state changes
  for (const StepEntry& en : entries)
    lengths_[static_cast<std::size_t>(slot_of(en.seq_id))] += en.new_tokens;
  return out;
}

}  // namespace posenc::glm

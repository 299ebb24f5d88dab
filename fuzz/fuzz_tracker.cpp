// Fuzz target: PositionTracker (continuous batching's position bookkeeping) driven by fuzzed operations and checked against a model of its documented rule.
//
// The input picks the stream count and position_limit (valid or hostile), then up to 48
// operations: add (hostile ids, lengths, deltas and pins), remove, pin, step and peek (entries
// with unknown, repeated and hostile new_tokens) and the queries. The model keeps the slots as the
// tracker documents them (add appends, remove moves the last slot into the freed one) and computes
// SequenceState's rule in 128-bit arithmetic. Properties:
//   - every operation returns or throws posenc::Error, nothing else;
//   - it throws exactly when the model finds the request invalid, and then changes nothing (the
//     five slot arrays are as before);
//   - an accepted step or peek returns the model's ids for every stream and token, and a step
//     advances exactly its sequences' lengths; a peek advances nothing;
//   - a refused step allocates nothing in proportion to the tokens it asked for: libFuzzer's
//     malloc limit reports one that does (an accepted step whose output would pass 2^20 values is
//     not made: its allocation is the caller's request);
//   - the slots stay dense: seq_ids()[slot_of(id)] == id for every tracked id.
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

using posenc::fuzz::require;
using posenc::fuzz::returns_or_error;
using posenc::glm::never_pinned;
using posenc::glm::PositionIds;
using posenc::glm::PositionTracker;
using posenc::glm::SequenceState;
using posenc::glm::StepEntry;
using i128 = __int128;

constexpr std::int64_t int64_max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t int64_min = std::numeric_limits<std::int64_t>::min();
constexpr i128 max_output_values = i128{1} << 20;

/// A value for a length, delta, pin, id or token count: mostly small, sometimes next to the
/// position limit, at a 32/64-bit boundary, never_pinned or anything.
std::int64_t value(FuzzedDataProvider& in, std::int64_t limit) {
  switch (in.ConsumeIntegralInRange<int>(0, 11)) {
    case 8: {
      const i128 v = i128{limit} + in.ConsumeIntegralInRange<int>(-2, 1);
      return v > int64_max ? int64_max : static_cast<std::int64_t>(v);
    }
    case 9:
      return in.PickValueInArray<std::int64_t>({std::int64_t{1} << 31, std::int64_t{1} << 32, std::int64_t{1} << 62,
                                                int64_max, int64_max - 1, int64_min, int64_min + 1, -1});
    case 10:
      return -in.ConsumeIntegralInRange<std::int64_t>(1, 40);
    case 11:
      return in.ConsumeIntegral<std::int64_t>();
    default:
      return in.ConsumeIntegralInRange<std::int64_t>(0, 40);
  }
}

struct Slot {
  std::int64_t seq_id;
  SequenceState state;
};

/// The tracker as documented: slots in order, the rule in 128-bit arithmetic.
struct Model {
  int streams;
  std::int64_t limit;
  std::vector<Slot> slots;

  std::optional<std::size_t> find(std::int64_t seq_id) const {
    for (std::size_t s = 0; s < slots.size(); ++s)
      if (slots[s].seq_id == seq_id) return s;
    return std::nullopt;
  }
  bool in_range(i128 v) const { return v >= 0 && v < limit; }
  bool add_ok(std::int64_t seq_id, const SequenceState& s) const {
    return !find(seq_id) && s.length >= 0 && s.pin_from >= 0 && (s.pin_from == never_pinned || in_range(s.pin_value));
  }
  /// The ids of token n of slot s: {position, block}.
  std::pair<i128, i128> ids(std::size_t s, i128 n) const {
    const SequenceState& st = slots[s].state;
    if (n < st.pin_from) return {n + st.rope_delta, 0};
    return {st.pin_value, n - st.pin_from + 1};
  }
  /// Whether the step is valid; its token count in `total`.
  bool step_ok(const std::vector<StepEntry>& entries, i128& total) const {
    std::vector<bool> used(slots.size(), false);
    total = 0;
    for (const StepEntry& e : entries) {
      const auto s = find(e.seq_id);
      if (!s || used[*s] || e.new_tokens < 1) return false;
      used[*s] = true;
      total += e.new_tokens;
      if (total > int64_max) return false;
    }
    for (const StepEntry& e : entries) {
      const std::size_t s = *find(e.seq_id);
      const i128 first = slots[s].state.length;
      const i128 end = first + e.new_tokens;
      if (end > int64_max) return false;
      // Positions rise with n before pin_from and blocks after it: the ends of each part decide.
      const i128 pin_from = slots[s].state.pin_from;
      const i128 unpinned_end = std::min(end, pin_from);
      if (first < unpinned_end) {
        if (!in_range(ids(s, first).first) || !in_range(ids(s, unpinned_end - 1).first)) return false;
      }
      const i128 pinned_first = std::max(first, pin_from);
      if (pinned_first < end) {
        if (!in_range(ids(s, end - 1).first)) return false;
        if (streams == 2 && !in_range(ids(s, end - 1).second)) return false;
      }
    }
    return true;
  }
  /// The stream-major ids of a valid step.
  std::vector<std::int64_t> step_ids(const std::vector<StepEntry>& entries, std::int64_t total) const {
    std::vector<std::int64_t> out(static_cast<std::size_t>(streams * total));
    std::int64_t o = 0;
    for (const StepEntry& e : entries) {
      const std::size_t s = *find(e.seq_id);
      for (std::int64_t j = 0; j < e.new_tokens; ++j, ++o) {
        const auto [p, b] = ids(s, i128{slots[s].state.length} + j);
        out[static_cast<std::size_t>(o)] = static_cast<std::int64_t>(p);
        if (streams == 2) out[static_cast<std::size_t>(total + o)] = static_cast<std::int64_t>(b);
        if (streams == 3) {
          out[static_cast<std::size_t>(total + o)] = static_cast<std::int64_t>(p);
          out[static_cast<std::size_t>(2 * total + o)] = static_cast<std::int64_t>(p);
        }
      }
    }
    return out;
  }
};

/// The tracker's arrays equal the model's slots, and slot_of inverts seq_ids.
void require_same(const PositionTracker& t, const Model& m, const char* after) {
  const std::string where = std::string(" after ") + after;
  require(t.size() == static_cast<std::int64_t>(m.slots.size()), "size" + where);
  for (std::size_t s = 0; s < m.slots.size(); ++s) {
    const SequenceState& st = m.slots[s].state;
    require(t.seq_ids()[s] == m.slots[s].seq_id && t.lengths()[s] == st.length && t.rope_deltas()[s] == st.rope_delta &&
                t.pin_froms()[s] == st.pin_from && t.pin_values()[s] == st.pin_value,
            "slot " + std::to_string(s) + where);
    require(t.contains(m.slots[s].seq_id) && t.slot_of(m.slots[s].seq_id) == static_cast<std::int64_t>(s) &&
                t.state(m.slots[s].seq_id) == st,
            "slot_of / state of slot " + std::to_string(s) + where);
  }
}


}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const int streams = in.ConsumeIntegralInRange<int>(0, 4);
  std::int64_t limit = 0;
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: limit = in.ConsumeIntegralInRange<std::int64_t>(-1, 8); break;
    case 1: limit = in.ConsumeIntegralInRange<std::int64_t>(1, 128); break;
    case 2: limit = in.PickValueInArray<std::int64_t>({131072, std::int64_t{1} << 31, std::int64_t{1} << 62, int64_max}); break;
    default: limit = in.ConsumeIntegral<std::int64_t>(); break;
  }
  std::optional<PositionTracker> tracker;
  const bool made = returns_or_error([&] { tracker.emplace(streams, limit); }, "the constructor");
  require(made == (streams >= 1 && streams <= 3 && limit >= 1), "the constructor accepted or refused wrongly");
  if (!made) return 0;
  PositionTracker& t = *tracker;
  Model m{streams, limit, {}};

  // Ids: a few small ones (so operations meet the same sequences), sometimes hostile.
  auto seq_id = [&] { return in.ConsumeBool() ? in.ConsumeIntegralInRange<std::int64_t>(0, 5) : value(in, limit); };
  for (int op_index = 0; op_index < 48 && in.remaining_bytes() > 0; ++op_index) {
    const int op = in.ConsumeIntegralInRange<int>(0, 5);
    switch (op) {
      case 0: {  // add
        const std::int64_t id = seq_id();
        SequenceState st;
        st.length = value(in, limit);
        st.rope_delta = in.ConsumeBool() ? 0 : value(in, limit);
        st.pin_from = in.ConsumeBool() ? never_pinned : value(in, limit);
        st.pin_value = value(in, limit);
        const bool ok = returns_or_error([&] { t.add_sequence(id, st); }, "add_sequence");
        require(ok == m.add_ok(id, st), "add_sequence accepted or refused wrongly");
        if (ok) m.slots.push_back({id, st});
        require_same(t, m, "add_sequence");
        break;
      }
      case 1: {  // remove
        const std::int64_t id = seq_id();
        const auto s = m.find(id);
        const bool ok = returns_or_error([&] { t.remove_sequence(id); }, "remove_sequence");
        require(ok == s.has_value(), "remove_sequence accepted or refused wrongly");
        if (ok) {
          m.slots[*s] = m.slots.back();
          m.slots.pop_back();
        }
        require(!t.contains(id), "a removed sequence is still tracked");
        require_same(t, m, "remove_sequence");
        break;
      }
      case 2: {  // pin
        const std::int64_t id = seq_id();
        const std::int64_t pin_value = value(in, limit);
        const auto s = m.find(id);
        const bool ok = returns_or_error([&] { t.pin(id, pin_value); }, "pin");
        require(ok == (s.has_value() && m.in_range(pin_value)), "pin accepted or refused wrongly");
        if (ok) {
          m.slots[*s].state.pin_from = m.slots[*s].state.length;
          m.slots[*s].state.pin_value = pin_value;
        }
        require_same(t, m, "pin");
        break;
      }
      case 3:
      case 4: {  // step (3) or peek (4)
        const bool commit = op == 3;
        std::vector<StepEntry> entries(in.ConsumeIntegralInRange<std::size_t>(0, 6));
        for (StepEntry& e : entries) {
          e.seq_id = seq_id();
          e.new_tokens = in.ConsumeIntegralInRange<int>(0, 3) != 0 ? in.ConsumeIntegralInRange<std::int64_t>(1, 8)
                                                                   : value(in, limit);
        }
        i128 total = 0;
        const bool valid = m.step_ok(entries, total);
        if (valid && total * streams > max_output_values) break;  // a caller's huge request, not a finding
        PositionIds ids;
        const bool ok = returns_or_error([&] { ids = commit ? t.step(entries) : t.peek(entries); }, commit ? "step" : "peek");
        require(ok == valid, std::string(commit ? "step" : "peek") + " accepted or refused wrongly");
        if (ok) {
          require(ids.streams() == streams && ids.tokens() == static_cast<std::int64_t>(total),
                  "the step's shape differs from the model's");
          require(ids.values() == m.step_ids(entries, static_cast<std::int64_t>(total)),
                  "the step's ids differ from the model's");
          if (commit) {
            for (const StepEntry& e : entries) m.slots[*m.find(e.seq_id)].state.length += e.new_tokens;
          }
        }
        require_same(t, m, commit ? "step" : "peek");
        break;
      }
      default: {  // queries of an id that may not be tracked
        const std::int64_t id = seq_id();
        const auto s = m.find(id);
        require(t.contains(id) == s.has_value(), "contains differs from the model");
        std::int64_t slot = -1;
        const bool ok = returns_or_error([&] { slot = t.slot_of(id); }, "slot_of");
        require(ok == s.has_value() && (!ok || slot == static_cast<std::int64_t>(*s)), "slot_of differs from the model");
        const bool got_state = returns_or_error([&] { (void)t.state(id); }, "state");
        require(got_state == s.has_value(), "state accepted or refused wrongly");
        break;
      }
    }
  }
  return 0;
}

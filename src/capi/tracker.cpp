// C ABI: the host position tracker for continuous batching (glm::PositionTracker).
#include <span>
#include <vector>

#include "capi/common.hpp"

using namespace posenc;
using capi::guard;

namespace {

std::vector<glm::StepEntry> to_entries(const posenc_step_entry* entries, size_t count) {
  if (count > 0) capi::require(entries, "entries");
  std::vector<glm::StepEntry> out(count);
  for (size_t i = 0; i < count; ++i) out[i] = {entries[i].seq_id, entries[i].new_tokens};
  return out;
}

void copy_positions(const glm::PositionIds& ids, int64_t* positions, int64_t* tokens) {
  const auto& values = ids.values();
  std::copy(values.begin(), values.end(), positions);
  *tokens = ids.tokens();
}

/// The step's positions, after checking that the caller's buffer holds them: step() calls this
/// first (the positions are computed twice, host bookkeeping only) so that a step whose output
/// cannot be written commits nothing.
glm::PositionIds checked_peek(const glm::PositionTracker& tracker, const std::vector<glm::StepEntry>& entries,
                              int64_t* positions, size_t capacity, int64_t* tokens) {
  capi::require(tokens, "tokens");
  glm::PositionIds ids = tracker.peek(entries);
  const std::size_t needed = ids.values().size();
  if (needed > 0) capi::require(positions, "positions");
  if (capacity < needed)
    throw Error(ErrorKind::invalid_argument,
                "capacity " + std::to_string(capacity) + " is below the " + std::to_string(needed) +
                    " positions of the step (" + std::to_string(ids.streams()) + " streams x " +
                    std::to_string(ids.tokens()) + " tokens)");
  return ids;
}

}  // namespace

extern "C" {

posenc_status posenc_position_tracker_create(int32_t streams, int64_t position_limit, posenc_position_tracker** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    *out = new posenc_position_tracker{glm::PositionTracker(streams, position_limit)};
  });
}

void posenc_position_tracker_destroy(posenc_position_tracker* tracker) { delete tracker; }

posenc_status posenc_position_tracker_add(posenc_position_tracker* tracker, int64_t seq_id,
                                          const posenc_sequence_state* state) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    glm::SequenceState s;
    if (state != nullptr) {
      const posenc_sequence_state in =
          capi::read_in(state, sizeof(posenc_sequence_state), "state", "posenc_sequence_state");
      s = {in.length, in.rope_delta, in.pin_from, in.pin_value};
    }
    tracker->tracker.add_sequence(seq_id, s);
  });
}

posenc_status posenc_position_tracker_remove(posenc_position_tracker* tracker, int64_t seq_id) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    tracker->tracker.remove_sequence(seq_id);
  });
}

posenc_status posenc_position_tracker_contains(const posenc_position_tracker* tracker, int64_t seq_id,
                                               int32_t* out) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    capi::require(out, "out");
    *out = tracker->tracker.contains(seq_id) ? 1 : 0;
  });
}

posenc_status posenc_position_tracker_get_state(const posenc_position_tracker* tracker, int64_t seq_id,
                                                posenc_sequence_state* out) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    capi::check_out(out, sizeof(posenc_sequence_state), "out", "posenc_sequence_state");
    const glm::SequenceState s = tracker->tracker.state(seq_id);
    posenc_sequence_state value;
    std::memset(&value, 0, sizeof value);
    value.length = s.length;
    value.rope_delta = s.rope_delta;
    value.pin_from = s.pin_from;
    value.pin_value = s.pin_value;
    capi::write_out(out, value);
  });
}

posenc_status posenc_position_tracker_pin(posenc_position_tracker* tracker, int64_t seq_id, int64_t pin_value) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    tracker->tracker.pin(seq_id, pin_value);
  });
}

posenc_status posenc_position_tracker_size(const posenc_position_tracker* tracker, int64_t* out) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    capi::require(out, "out");
    *out = tracker->tracker.size();
  });
}

posenc_status posenc_position_tracker_streams(const posenc_position_tracker* tracker, int32_t* out) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    capi::require(out, "out");
    *out = tracker->tracker.streams();
  });
}

posenc_status posenc_position_tracker_slot(const posenc_position_tracker* tracker, int64_t seq_id, int64_t* out) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    capi::require(out, "out");
    *out = tracker->tracker.slot_of(seq_id);
  });
}

posenc_status posenc_position_tracker_step(posenc_position_tracker* tracker, const posenc_step_entry* entries,
                                           size_t entry_count, int64_t* positions, size_t capacity,
                                           int64_t* tokens) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    const std::vector<glm::StepEntry> list = to_entries(entries, entry_count);
    checked_peek(tracker->tracker, list, positions, capacity, tokens);
    copy_positions(tracker->tracker.step(list), positions, tokens);
  });
}

posenc_status posenc_position_tracker_peek(const posenc_position_tracker* tracker, const posenc_step_entry* entries,
                                           size_t entry_count, int64_t* positions, size_t capacity,
                                           int64_t* tokens) {
  return guard(__func__, [&] {
    capi::require(tracker, "tracker");
    const std::vector<glm::StepEntry> list = to_entries(entries, entry_count);
    copy_positions(checked_peek(tracker->tracker, list, positions, capacity, tokens), positions, tokens);
  });
}

}  // extern "C"

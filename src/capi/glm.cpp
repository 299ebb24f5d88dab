// C ABI: the GLM position-id builders of every generation, M-RoPE streams and attention masks (posenc::glm).
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "capi/common.hpp"
#include "core/checked.hpp"

using namespace posenc;
using capi::guard;

namespace {

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorKind::invalid_argument, message); }

std::span<const glm::TokenId> token_span(const int64_t* tokens, size_t count) {
  if (count > 0) capi::require(tokens, "tokens");
  return {tokens, count};
}

/// A padded batch's 0/1 mask of batch * length entries (negative sizes are the builder's to name).
std::span<const std::uint8_t> mask_span(const uint8_t* mask, int64_t batch, int64_t length) {
  if (batch < 0 || length < 0) return {};
  const std::int64_t count = detail::checked_mul(batch, length, "mask", " (batch * length)");
  if (count > 0) capi::require(mask, "mask");
  return {mask, static_cast<std::size_t>(count)};
}

/// The caller's special tokens, or the generation's own vocabulary when `in` is NULL.
glm::GlmSpecialTokens to_special(const posenc_glm_special_tokens* in, const glm::GlmSpecialTokens& fallback) {
  if (in == nullptr) return fallback;
  const auto t = capi::read_in(in, sizeof(posenc_glm_special_tokens), "special", "posenc_glm_special_tokens");
  glm::GlmSpecialTokens out;
  out.mask = t.mask;
  out.gmask = t.gmask;
  out.smask = t.smask;
  out.sop = t.sop;
  out.eop = t.eop;
  out.begin_of_image = t.begin_of_image;
  out.end_of_image = t.end_of_image;
  return out;
}

glm::MaskTokenRule to_rule(int32_t value) {
  switch (value) {
    case POSENC_GLM_RULE_MASK_FIRST: return glm::MaskTokenRule::mask_first;
    case POSENC_GLM_RULE_GMASK_FIRST: return glm::MaskTokenRule::gmask_first;
  }
  capi::invalid_enum("rule", value, "POSENC_GLM_RULE_MASK_FIRST (0), POSENC_GLM_RULE_GMASK_FIRST (1)");
}

glm::NextTextStart to_next_text(int32_t value) {
  switch (value) {
    case POSENC_GLM_NEXT_TEXT_MAX_PLUS_ONE: return glm::NextTextStart::max_plus_one;
    case POSENC_GLM_NEXT_TEXT_SPATIAL_EXTENT: return glm::NextTextStart::spatial_extent;
  }
  capi::invalid_enum("rule", value,
                     "POSENC_GLM_NEXT_TEXT_MAX_PLUS_ONE (0), POSENC_GLM_NEXT_TEXT_SPATIAL_EXTENT (1)");
}

glm::VideoLayout to_video_layout(int32_t value) {
  switch (value) {
    case POSENC_GLM_VIDEO_WHOLE: return glm::VideoLayout::whole;
    case POSENC_GLM_VIDEO_PER_FRAME: return glm::VideoLayout::per_frame;
  }
  capi::invalid_enum("video_layout", value, "POSENC_GLM_VIDEO_WHOLE (0), POSENC_GLM_VIDEO_PER_FRAME (1)");
}

std::vector<glm::VisionGrid> to_grids(const posenc_glm_vision_grid* grids, size_t count, const char* name) {
  std::vector<glm::VisionGrid> out;
  for (const posenc_glm_vision_grid& g :
       capi::read_array(grids, count, sizeof(posenc_glm_vision_grid), name, "posenc_glm_vision_grid")) {
    out.push_back({g.t, g.h, g.w, g.spatial_merge_size, g.temporal_interval, g.seconds_per_grid,
                   g.tokens_per_second});
  }
  return out;
}

// ---- results ------------------------------------------------------------------------------------

using Result = std::unique_ptr<posenc_glm_positions>;

/// A single sequence's result (batch 1); the builder adds what it found, then publish() hands it out.
Result single(glm::PositionIds ids) {
  auto r = std::make_unique<posenc_glm_positions>();
  std::memset(&r->info, 0, sizeof r->info);
  r->info.batch = 1;
  r->info.length = ids.tokens();
  r->info.mask_token = POSENC_GLM_NO_TOKEN;
  r->ids = std::move(ids);
  return r;
}

Result batched(glm::BatchPositions b) {
  Result r = single(std::move(b.positions));
  r->info.batch = b.batch;
  r->info.length = b.length;
  r->valid = std::move(b.valid);
  return r;
}

template <class T>
const T* data_or_null(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

/// Points the info at the handle's own arrays and hands the handle to the caller.
void publish(Result r, posenc_glm_positions** out) {
  posenc_glm_positions_info& i = r->info;
  i.struct_size = sizeof i;
  i.streams = r->ids.streams();
  i.tokens = r->ids.tokens();
  i.values = data_or_null(r->ids.values());
  i.valid = data_or_null(r->valid);
  i.mask_position_count = static_cast<int64_t>(r->mask_positions.size());
  i.mask_positions = data_or_null(r->mask_positions);
  i.pad_counts = data_or_null(r->pad_counts);
  i.prefix_lens = data_or_null(r->prefix_lens);
  *out = r.release();
}

/// An M-RoPE prompt's result: its ids, rope_delta, next position and tracker state.
void publish_mrope(glm::MropePositions p, posenc_glm_positions** out) {
  const glm::SequenceState state = glm::tracker_state(p);
  Result r = single(std::move(p.positions));
  r->info.rope_delta = p.rope_delta;
  r->info.next_position = p.next_position;
  r->state = state;
  publish(std::move(r), out);
}

// ---- masks --------------------------------------------------------------------------------------

glm::AttentionPattern to_pattern(const posenc_glm_attention_pattern& p, const std::string& name) {
  capi::check_reserved(p.reserved, name);
  switch (p.kind) {
    case POSENC_GLM_PATTERN_CAUSAL: return glm::AttentionPattern::causal();
    case POSENC_GLM_PATTERN_BIDIRECTIONAL: return glm::AttentionPattern::bidirectional();
    case POSENC_GLM_PATTERN_PREFIX_LM: return glm::AttentionPattern::prefix_lm(p.prefix_len);
    case POSENC_GLM_PATTERN_LOCAL_WINDOW: return glm::AttentionPattern::local_window(p.window);
    case POSENC_GLM_PATTERN_GLOBAL_LOCAL: {
      if (p.global_count > 0) capi::require(p.global_positions, (name + ".global_positions").c_str());
      std::vector<std::int64_t> globals(p.global_positions, p.global_positions + p.global_count);
      return glm::AttentionPattern::global_local(std::move(globals), p.window);
    }
    case POSENC_GLM_PATTERN_CUSTOM: {
      capi::require(reinterpret_cast<const void*>(p.predicate), (name + ".predicate").c_str());
      return glm::AttentionPattern::custom([predicate = p.predicate, context = p.context](int64_t q, int64_t k) {
        return predicate(context, q, k) != 0;
      });
    }
  }
  capi::invalid_enum(name + ".kind", p.kind, "POSENC_GLM_PATTERN_CAUSAL (0) .. POSENC_GLM_PATTERN_CUSTOM (5)");
}

glm::MaskGeometry to_geometry(const posenc_glm_mask_geometry* in) {
  const auto g = capi::read_in(in, sizeof(posenc_glm_mask_geometry), "geometry", "posenc_glm_mask_geometry");
  capi::check_reserved(g.reserved, "geometry");
  glm::MaskGeometry out;
  out.batch = g.batch == 0 ? 1 : g.batch;
  out.q_len = g.q_len;
  out.k_len = g.k_len;
  switch (g.empty_rows) {
    case POSENC_GLM_EMPTY_ROWS_MASKED: out.empty_rows = glm::EmptyRows::masked; break;
    case POSENC_GLM_EMPTY_ROWS_ALL_VISIBLE: out.empty_rows = glm::EmptyRows::all_visible; break;
    default:
      capi::invalid_enum("geometry->empty_rows", g.empty_rows,
                         "POSENC_GLM_EMPTY_ROWS_MASKED (0), POSENC_GLM_EMPTY_ROWS_ALL_VISIBLE (1)");
  }
  if (g.valid != nullptr && out.batch > 0 && out.k_len > 0) {
    const std::int64_t count = detail::checked_mul(out.batch, out.k_len, "geometry->valid", " (batch * k_len)");
    out.valid.assign(g.valid, g.valid + count);
  }
  return out;
}

}  // namespace

extern "C" {

posenc_status posenc_glm_special_tokens_get(int32_t vocabulary, posenc_glm_special_tokens* out) {
  return guard(__func__, [&] {
    capi::check_out(out, sizeof(posenc_glm_special_tokens), "out", "posenc_glm_special_tokens");
    glm::GlmSpecialTokens t;
    switch (vocabulary) {
      case POSENC_GLM_TOKENS_CHATGLM_6B: t = glm::GlmSpecialTokens::chatglm_6b(); break;
      case POSENC_GLM_TOKENS_CHATGLM_6B_FIRST_RELEASE: t = glm::GlmSpecialTokens::chatglm_6b_first_release(); break;
      case POSENC_GLM_TOKENS_GLM_130B: t = glm::GlmSpecialTokens::glm_130b(); break;
      case POSENC_GLM_TOKENS_CHATGLM2: t = glm::GlmSpecialTokens::chatglm2(); break;
      case POSENC_GLM_TOKENS_GLM4: t = glm::GlmSpecialTokens::glm4(); break;
      default:
        capi::invalid_enum("vocabulary", vocabulary, "POSENC_GLM_TOKENS_CHATGLM_6B (0) .. POSENC_GLM_TOKENS_GLM4 (4)");
    }
    posenc_glm_special_tokens value;
    std::memset(&value, 0, sizeof value);
    value.mask = t.mask;
    value.gmask = t.gmask;
    value.smask = t.smask;
    value.sop = t.sop;
    value.eop = t.eop;
    value.begin_of_image = t.begin_of_image;
    value.end_of_image = t.end_of_image;
    capi::write_out(out, value);
  });
}

posenc_status posenc_glm_vision_tokens_get(int32_t family, posenc_glm_vision_tokens* out) {
  return guard(__func__, [&] {
    capi::check_out(out, sizeof(posenc_glm_vision_tokens), "out", "posenc_glm_vision_tokens");
    glm::VisionTokens t;
    switch (family) {
      case POSENC_GLM_VISION_QWEN2_VL: t = glm::VisionTokens::qwen2_vl(); break;
      case POSENC_GLM_VISION_GLM4V: t = glm::VisionTokens::glm4v(); break;
      default:
        capi::invalid_enum("family", family, "POSENC_GLM_VISION_QWEN2_VL (0), POSENC_GLM_VISION_GLM4V (1)");
    }
    posenc_glm_vision_tokens value;
    std::memset(&value, 0, sizeof value);
    value.image = t.image;
    value.video = t.video;
    capi::write_out(out, value);
  });
}

void posenc_glm_positions_destroy(posenc_glm_positions* positions) { delete positions; }

posenc_status posenc_glm_positions_get_info(const posenc_glm_positions* positions, posenc_glm_positions_info* out) {
  return guard(__func__, [&] {
    capi::require(positions, "positions");
    capi::check_out(out, sizeof(posenc_glm_positions_info), "out", "posenc_glm_positions_info");
    capi::write_out(out, positions->info);
  });
}

posenc_status posenc_glm_positions_view(const posenc_glm_positions* positions, posenc_positions* out) {
  return guard(__func__, [&] {
    capi::require(positions, "positions");
    capi::require(out, "out");
    posenc_positions view;
    std::memset(&view, 0, sizeof view);
    view.data = positions->ids.data();
    view.type = POSENC_INDEX_I64;
    view.streams = positions->ids.streams();
    view.count = positions->ids.tokens();
    view.stream_stride = positions->ids.tokens();
    *out = view;
  });
}

posenc_status posenc_glm_positions_tracker_state(const posenc_glm_positions* positions, posenc_sequence_state* out) {
  return guard(__func__, [&] {
    capi::require(positions, "positions");
    capi::check_out(out, sizeof(posenc_sequence_state), "out", "posenc_sequence_state");
    if (!positions->state)
      invalid("these positions continue no tracked sequence: only the ChatGLM-6B, GLM-130B, M-RoPE and glm-4v-9b "
              "prompt builders give a tracker state");
    posenc_sequence_state value;
    std::memset(&value, 0, sizeof value);
    value.length = positions->state->length;
    value.rope_delta = positions->state->rope_delta;
    value.pin_from = positions->state->pin_from;
    value.pin_value = positions->state->pin_value;
    capi::write_out(out, value);
  });
}

posenc_status posenc_glm_arange(int64_t past_len, int64_t count, posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    Result r = single(glm::arange_positions(past_len, count));
    r->info.next_position = past_len + count;  // checked by arange_positions
    publish(std::move(r), out);
  });
}

posenc_status posenc_glm_left_padded_arange(const int64_t* lengths, size_t batch, int64_t pad_fill,
                                            posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    if (batch > 0) capi::require(lengths, "lengths");
    publish(batched(glm::left_padded_arange(std::span<const std::int64_t>(lengths, batch), pad_fill)), out);
  });
}

posenc_status posenc_glm_positions_from_attention_mask(const uint8_t* mask, int64_t batch, int64_t length,
                                                       int64_t pad_fill, posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    publish(batched(glm::positions_from_attention_mask(mask_span(mask, batch, length), batch, length, pad_fill)),
            out);
  });
}

posenc_status posenc_glm_next_positions_from_attention_mask(const uint8_t* mask, int64_t batch, int64_t length,
                                                            int64_t new_tokens, posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    publish(batched(glm::next_positions_from_attention_mask(mask_span(mask, batch, length), batch, length,
                                                            new_tokens)),
            out);
  });
}

posenc_status posenc_glm_chatglm6b_positions(const int64_t* tokens, size_t count,
                                             const posenc_glm_special_tokens* special, int32_t rule,
                                             posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    glm::ChatGlm6bPositions p = glm::chatglm6b_positions(
        token_span(tokens, count), to_special(special, glm::GlmSpecialTokens::chatglm_6b()), to_rule(rule));
    const glm::SequenceState state = glm::tracker_state(p);
    const glm::Position2d next = p.next();
    Result r = single(std::move(p.positions));
    r->info.prefix_len = p.context_length;
    r->info.mask_position = p.mask_position;
    r->info.mask_token = p.mask_token;
    r->info.next_position = next.position;
    r->info.next_block = next.block;
    r->state = state;
    publish(std::move(r), out);
  });
}

posenc_status posenc_glm_chatglm6b_batch(const int64_t* tokens, const int64_t* lengths, size_t batch,
                                         const posenc_glm_special_tokens* special, int32_t rule,
                                         posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    if (batch > 0) capi::require(lengths, "lengths");
    std::vector<std::vector<glm::TokenId>> rows(batch);
    std::int64_t offset = 0;
    for (size_t b = 0; b < batch; ++b) {
      if (lengths[b] < 0)
        invalid("lengths[" + std::to_string(b) + "] is " + std::to_string(lengths[b]) + ", below 0");
      const std::int64_t end = detail::checked_add(offset, lengths[b], "lengths", " (their sum)");
      if (lengths[b] > 0) capi::require(tokens, "tokens");
      rows[b].assign(tokens + offset, tokens + end);
      offset = end;
    }
    glm::ChatGlm6bBatch p =
        glm::chatglm6b_batch(rows, to_special(special, glm::GlmSpecialTokens::chatglm_6b()), to_rule(rule));
    Result r = batched(std::move(p.padded));
    r->mask_positions = std::move(p.mask_positions);
    r->pad_counts = std::move(p.pad_counts);
    r->prefix_lens = std::move(p.prefix_lens);
    publish(std::move(r), out);
  });
}

posenc_status posenc_glm_glm130b_positions(const int64_t* tokens, size_t count,
                                           const posenc_glm_special_tokens* special, posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    glm::Glm130bPositions p =
        glm::glm130b_positions(token_span(tokens, count), to_special(special, glm::GlmSpecialTokens::glm_130b()));
    const glm::SequenceState state = glm::tracker_state(p);
    const std::int64_t next = p.next_position(p.positions.tokens());
    Result r = single(std::move(p.positions));
    r->info.prefix_len = p.sop_index;
    r->info.mask_position = p.mask_position;
    r->info.mask_token = p.mask_token;
    r->info.pinned = p.pinned ? 1 : 0;
    r->info.next_position = next;
    r->state = state;
    publish(std::move(r), out);
  });
}

posenc_status posenc_glm_blank_infilling_context(const int64_t* tokens, size_t count,
                                                 const posenc_glm_special_tokens* special,
                                                 posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    if (special == nullptr)
      invalid("special is NULL: the original GLM has no single vocabulary; pass its tokenizer's ids");
    glm::BlankInfillingContext p =
        glm::blank_infilling_context(token_span(tokens, count), to_special(special, glm::GlmSpecialTokens{}));
    Result r = single(std::move(p.positions));
    r->info.prefix_len = p.sep;
    r->mask_positions = std::move(p.mask_positions);
    publish(std::move(r), out);
  });
}

posenc_status posenc_glm_blank_infilling_generation(int64_t mask_position, int64_t first_block, int64_t count,
                                                    posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    Result r = single(glm::blank_infilling_generation(mask_position, first_block, count));
    r->info.next_position = mask_position;
    r->info.next_block = detail::checked_add(first_block, count, "next_block", " (first_block + count)");
    publish(std::move(r), out);
  });
}

posenc_status posenc_glm_mrope_positions(const posenc_glm_mrope_segment* segments, size_t segment_count,
                                         const posenc_glm_vision_grid* grids, size_t grid_count, int32_t rule,
                                         posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    if (segment_count > 0) capi::require(segments, "segments");
    const std::vector<glm::VisionGrid> grid_list = to_grids(grids, grid_count, "grids");
    std::vector<glm::MropeSegment> list;
    list.reserve(segment_count);
    for (size_t i = 0; i < segment_count; ++i) {
      const posenc_glm_mrope_segment& s = segments[i];
      const std::string name = "segments[" + std::to_string(i) + "]";
      capi::check_reserved(s.reserved, name);
      if (s.kind == POSENC_GLM_SEGMENT_TEXT) {
        list.push_back(glm::MropeSegment::text(s.value));
      } else if (s.kind == POSENC_GLM_SEGMENT_VISION) {
        if (s.value < 0 || static_cast<std::uint64_t>(s.value) >= grid_count)
          throw Error(ErrorKind::out_of_range, name + ".value (a grid index) is " + std::to_string(s.value) +
                                                   ", outside [0, " + std::to_string(grid_count) + ")");
        list.push_back(glm::MropeSegment::vision(grid_list[static_cast<size_t>(s.value)]));
      } else {
        capi::invalid_enum(name + ".kind", s.kind, "POSENC_GLM_SEGMENT_TEXT (0), POSENC_GLM_SEGMENT_VISION (1)");
      }
    }
    publish_mrope(glm::mrope_positions(list, to_next_text(rule)), out);
  });
}

posenc_status posenc_glm_mrope_positions_from_tokens(const int64_t* tokens, size_t count,
                                                     const posenc_glm_vision_tokens* vision,
                                                     const posenc_glm_vision_grid* image_grids, size_t image_grid_count,
                                                     const posenc_glm_vision_grid* video_grids, size_t video_grid_count,
                                                     int32_t rule, int32_t video_layout, posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    const auto v = capi::read_in(vision, sizeof(posenc_glm_vision_tokens), "vision", "posenc_glm_vision_tokens");
    glm::VisionTokens vt;
    vt.image = v.image;
    vt.video = v.video;
    publish_mrope(glm::mrope_positions_from_tokens(token_span(tokens, count), vt,
                                                   to_grids(image_grids, image_grid_count, "image_grids"),
                                                   to_grids(video_grids, video_grid_count, "video_grids"),
                                                   to_next_text(rule), to_video_layout(video_layout)),
                  out);
  });
}

posenc_status posenc_glm_mrope_decode_positions(int64_t past_len, int64_t rope_delta, int64_t count,
                                                posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    Result r = single(glm::mrope_decode_positions(past_len, rope_delta, count));
    r->info.rope_delta = rope_delta;
    r->info.next_position = detail::checked_add(detail::checked_add(past_len, rope_delta, "next_position"), count,
                                                "next_position");
    publish(std::move(r), out);
  });
}

posenc_status posenc_glm_glm4v_remote_positions(const int64_t* tokens, size_t count, int64_t num_patches,
                                                const posenc_glm_special_tokens* special,
                                                posenc_glm_positions** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    glm::Glm4vRemotePositions p = glm::glm4v_remote_positions(
        token_span(tokens, count), num_patches, to_special(special, glm::GlmSpecialTokens::glm4()));
    const glm::SequenceState state = glm::tracker_state(p);
    Result r = single(std::move(p.positions));
    r->info.rope_delta = p.rope_delta;
    r->info.next_position = r->ids.tokens() + p.rope_delta;  // the original token count
    r->info.boi_index = p.boi_index;
    r->info.num_patches = p.num_patches;
    r->state = state;
    publish(std::move(r), out);
  });
}

posenc_status posenc_glm_mask_create(const posenc_glm_attention_pattern* patterns, size_t pattern_count,
                                     const posenc_glm_mask_geometry* geometry, posenc_glm_mask** out) {
  return guard(__func__, [&] {
    capi::require(out, "out");
    const glm::MaskGeometry g = to_geometry(geometry);
    std::vector<glm::AttentionPattern> list;
    const auto raw = capi::read_array(patterns, pattern_count, sizeof(posenc_glm_attention_pattern), "patterns",
                                      "posenc_glm_attention_pattern");
    for (size_t i = 0; i < raw.size(); ++i) list.push_back(to_pattern(raw[i], "patterns[" + std::to_string(i) + "]"));
    auto m = std::make_unique<posenc_glm_mask>();
    m->ranges = glm::mask_ranges(list, g);
    m->c_ranges.reserve(m->ranges.ranges.size());
    for (const glm::KeyRange& k : m->ranges.ranges) m->c_ranges.push_back({k.begin, k.end});
    *out = m.release();
  });
}

void posenc_glm_mask_destroy(posenc_glm_mask* mask) { delete mask; }

posenc_status posenc_glm_mask_get_info(const posenc_glm_mask* mask, posenc_glm_mask_info* out) {
  return guard(__func__, [&] {
    capi::require(mask, "mask");
    capi::check_out(out, sizeof(posenc_glm_mask_info), "out", "posenc_glm_mask_info");
    posenc_glm_mask_info value;
    std::memset(&value, 0, sizeof value);
    value.batch = mask->ranges.batch;
    value.q_len = mask->ranges.q_len;
    value.k_len = mask->ranges.k_len;
    value.range_count = static_cast<int64_t>(mask->c_ranges.size());
    value.row_offsets = mask->ranges.row_offsets.data();
    value.ranges = data_or_null(mask->c_ranges);
    capi::write_out(out, value);
  });
}

posenc_status posenc_glm_mask_dense(const posenc_glm_mask* mask, float* out, size_t capacity) {
  return guard(__func__, [&] {
    capi::require(mask, "mask");
    const glm::MaskRanges& m = mask->ranges;
    // The element limit is to_dense's to name; below it a short buffer is refused before any work.
    const std::int64_t elements = detail::checked_mul(detail::checked_mul(m.batch, m.q_len, "dense mask rows"), m.k_len,
                                                      "dense mask elements");
    if (elements <= glm::max_dense_mask_elements && capacity < static_cast<std::uint64_t>(elements))
      invalid("capacity " + std::to_string(capacity) + " is below the " + std::to_string(elements) +
              " elements of the dense mask (batch " + std::to_string(m.batch) + " x q_len " + std::to_string(m.q_len) +
              " x k_len " + std::to_string(m.k_len) + ")");
    const glm::DenseMask d = glm::to_dense(m);
    if (!d.values.empty()) {
      capi::require(out, "out");
      std::memcpy(out, d.values.data(), d.values.size() * sizeof(float));
    }
  });
}

}  // extern "C"

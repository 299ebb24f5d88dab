// 3-axis M-RoPE position ids (GLM-4.1V/4.5V, Qwen2-VL family) with rope_delta, and the glm-4v-9b remote-code rule.
#include <algorithm>
#include <cmath>
#include <vector>

#include "glm/detail.hpp"
#include "posenc/glm.hpp"

namespace posenc::glm {

using detail::fail;

std::int64_t VisionGrid::llm_tokens() const {
  detail::require_at_least(t, 1, "VisionGrid: t");
  detail::require_at_least(h, 1, "VisionGrid: h");
  detail::require_at_least(w, 1, "VisionGrid: w");
  detail::require_at_least(spatial_merge_size, 1, "VisionGrid: spatial_merge_size");
  detail::require_at_least(temporal_interval, 0, "VisionGrid: temporal_interval");
  if (h % spatial_merge_size != 0 || w % spatial_merge_size != 0) {
    fail(ErrorKind::invalid_argument, "VisionGrid: h ", h, " x w ", w,
         " is not divisible by spatial_merge_size ", spatial_merge_size);
  }
  if (!std::isfinite(seconds_per_grid) || !std::isfinite(tokens_per_second) || seconds_per_grid < 0.0f ||
      tokens_per_second < 0.0f) {
    fail(ErrorKind::invalid_argument, "VisionGrid: seconds_per_grid ", seconds_per_grid,
         " and tokens_per_second ", tokens_per_second, " must be finite and not negative");
  }
  const std::int64_t hw =
      detail::mul(h / spatial_merge_size, w / spatial_merge_size, "VisionGrid tokens");
  return detail::mul(t, hw, "VisionGrid tokens");
}

MropeSegment MropeSegment::text(std::int64_t n) {
  MropeSegment s;
  s.text_tokens = n;
  return s;
}

MropeSegment MropeSegment::vision(const VisionGrid& grid) {
  MropeSegment s;
  s.is_vision = true;
  s.grid = grid;
  return s;
}

VisionTokens VisionTokens::qwen2_vl() noexcept {
  return VisionTokens{};
}

VisionTokens VisionTokens::glm4v() noexcept {
  return VisionTokens{151343, 151344};
}

namespace {

/// Temporal offset of temporal index ti of `g` (llm_tokens has checked its fields).
std::int64_t temporal_offset(const VisionGrid& g, std::int64_t ti) {
  if (g.seconds_per_grid > 0.0f) {
    // Qwen2.5-VL 4.x: (arange * second_per_grid_t * tokens_per_second).long(), float32 throughout.
    const float step = static_cast<float>(ti) * g.seconds_per_grid;
    const float offset = step * g.tokens_per_second;
    // Finite, non-negative rates can still overflow float32 or pass int64 (converting such a
    // value is undefined behaviour; torch's .long() gives garbage there).
    if (!(offset < 9.2233720368547758e18f)) {
      fail(ErrorKind::overflow, "VisionGrid: the temporal offset of index ", ti, " (", ti, " x seconds_per_grid ",
           g.seconds_per_grid, " x tokens_per_second ", g.tokens_per_second, " = ", offset,
           " in float32) does not fit in 64 bits");
    }
    return static_cast<std::int64_t>(offset);
  }
  return detail::mul(ti, g.temporal_interval, "VisionGrid temporal offset");
}

}  // namespace

MropePositions mrope_positions(std::span<const MropeSegment> segments, NextTextStart rule) {
  // Size first, so the output is allocated once and every segment is validated before any work.
  std::int64_t total = 0;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const MropeSegment& seg = segments[i];
    std::int64_t n = 0;
    if (seg.is_vision) {
      try {
        n = seg.grid.llm_tokens();
      } catch (const Error& e) {
        fail(e.kind(), "mrope_positions: segment ", i, ": ", e.what());
      }
    } else {
      if (seg.text_tokens < 1) {
        fail(ErrorKind::invalid_argument, "mrope_positions: segment ", i, " is a text run of ",
             seg.text_tokens, " tokens; text runs hold at least 1 token");
      }
      n = seg.text_tokens;
    }
    total = detail::add(total, n, "mrope_positions: total tokens");
  }

  MropePositions out;
  out.positions = PositionIds(3, total);
  auto pt = out.positions.stream(0);
  auto ph = out.positions.stream(1);
  auto pw = out.positions.stream(2);
  std::int64_t start = 0;  // where the next segment starts
  std::int64_t max_id = -1;
  std::size_t o = 0;
  for (const MropeSegment& seg : segments) {
    // Ids are checked where a segment's largest one is formed; those below it cannot overflow.
    if (!seg.is_vision) {
      const std::int64_t last = detail::add(start, seg.text_tokens - 1, "M-RoPE text id");
      for (std::int64_t i = 0; i < seg.text_tokens; ++i, ++o) {
        pt[o] = ph[o] = pw[o] = start + i;
      }
      max_id = std::max(max_id, last);
      start = detail::add(last, 1, "M-RoPE text start");
      continue;
    }
    const VisionGrid& g = seg.grid;
    const std::int64_t hh = g.h / g.spatial_merge_size;
    const std::int64_t ww = g.w / g.spatial_merge_size;
    std::int64_t block_max = detail::add(start, std::max(hh, ww) - 1, "M-RoPE spatial id");
    for (std::int64_t ti = 0; ti < g.t; ++ti) {
      const std::int64_t t_id = detail::add(start, temporal_offset(g, ti), "M-RoPE temporal id");
      block_max = std::max(block_max, t_id);
      for (std::int64_t i = 0; i < hh; ++i) {
        for (std::int64_t j = 0; j < ww; ++j, ++o) {
          pt[o] = t_id;
          ph[o] = start + i;
          pw[o] = start + j;
        }
      }
    }
    max_id = std::max(max_id, block_max);
    // 4.x continues after everything so far (the temporal extent included); v5.3+ after the
    // spatial extent only. The two agree whenever the block's temporal ids stay below it.
    start = rule == NextTextStart::max_plus_one ? detail::add(max_id, 1, "M-RoPE text start")
                                                : detail::add(start, std::max(hh, ww), "M-RoPE text start");
  }
  // The next position is itself an id a decode step uses: it must fit too.
  out.next_position = detail::add(max_id, 1, "M-RoPE next position");
  out.rope_delta = out.next_position - total;
  return out;
}

MropePositions mrope_positions_from_tokens(std::span<const TokenId> tokens,
                                           const VisionTokens& vision,
                                           std::span<const VisionGrid> image_grids,
                                           std::span<const VisionGrid> video_grids,
                                           NextTextStart rule, VideoLayout video_layout) {
  constexpr const char* who = "mrope_positions_from_tokens";
  if (vision.image == vision.video) {
    fail(ErrorKind::invalid_argument, who, ": image and video token ids are both ", vision.image);
  }
  const auto len = static_cast<std::int64_t>(tokens.size());
  std::vector<MropeSegment> segments;
  std::size_t next_image = 0;
  std::size_t next_video = 0;
  std::int64_t frames_left = 0;  // per_frame: frames of the current video still to come
  VisionGrid frame;              // per_frame: the current video's grid with t = 1

  // Checks that tokens[at, at + need) are all `token`; names the first index that is not.
  auto take_run = [&](std::int64_t at, std::int64_t need, TokenId token, const char* kind,
                      std::size_t grid_index) {
    for (std::int64_t i = at; i - at < need; ++i) {  // not at + need: a grid may ask for int64's maximum
      if (i >= len || tokens[static_cast<std::size_t>(i)] != token) {
        fail(ErrorKind::invalid_argument, who, ": ", kind, " grid ", grid_index, " needs ", need,
             " tokens (id ", token, ") from index ", at, ", but index ", i,
             i >= len ? " is past the end of the sequence" : " holds another token");
      }
    }
  };

  std::int64_t i = 0;
  while (i < len) {
    const TokenId tok = tokens[static_cast<std::size_t>(i)];
    if (tok == vision.image) {
      if (next_image >= image_grids.size()) {
        fail(ErrorKind::invalid_argument, who, ": image token at index ", i, " but only ",
             image_grids.size(), " image grids were given");
      }
      const VisionGrid& g = image_grids[next_image];
      const std::int64_t need = g.llm_tokens();
      take_run(i, need, vision.image, "image", next_image);
      segments.push_back(MropeSegment::vision(g));
      ++next_image;
      i += need;
    } else if (tok == vision.video) {
      if (video_layout == VideoLayout::whole || frames_left == 0) {
        if (next_video >= video_grids.size()) {
          fail(ErrorKind::invalid_argument, who, ": video token at index ", i, " but only ",
               video_grids.size(), " video grids were given");
        }
        frame = video_grids[next_video];
        frames_left = video_layout == VideoLayout::whole ? 1 : frame.t;
        ++next_video;
      }
      VisionGrid g = frame;
      if (video_layout == VideoLayout::per_frame) g.t = 1;
      const std::int64_t need = g.llm_tokens();
      take_run(i, need, vision.video, "video", next_video - 1);
      segments.push_back(MropeSegment::vision(g));
      --frames_left;
      i += need;
    } else {
      std::int64_t j = i;
      while (j < len && tokens[static_cast<std::size_t>(j)] != vision.image &&
             tokens[static_cast<std::size_t>(j)] != vision.video) {
        ++j;
      }
      segments.push_back(MropeSegment::text(j - i));
      i = j;
    }
  }
  if (next_image != image_grids.size()) {
    fail(ErrorKind::invalid_argument, who, ": ", image_grids.size(), " image grids given but only ",
         next_image, " image token runs found");
  }
  if (next_video != video_grids.size() || frames_left != 0) {
    fail(ErrorKind::invalid_argument, who, ": ", video_grids.size(), " video grids given; ",
         next_video, " started and ", frames_left, " frames of the last one missing");
  }
  return mrope_positions(segments, rule);
}

PositionIds mrope_decode_positions(std::int64_t past_len, std::int64_t rope_delta,
                                   std::int64_t count) {
  detail::require_at_least(past_len, 0, "mrope_decode_positions: past_len");
  detail::require_at_least(count, 0, "mrope_decode_positions: count");
  const std::int64_t first =
      detail::add(past_len, rope_delta, "mrope_decode_positions: past_len + rope_delta");
  if (first < 0) {
    fail(ErrorKind::out_of_range, "mrope_decode_positions: past_len ", past_len, " + rope_delta ",
         rope_delta, " = ", first, " is a negative position");
  }
  detail::add(first, count, "mrope_decode_positions: last position");
  PositionIds out(3, count);
  for (int s = 0; s < 3; ++s) {
    auto p = out.stream(s);
    for (std::int64_t i = 0; i < count; ++i) p[static_cast<std::size_t>(i)] = first + i;
  }
  return out;
}

Glm4vRemotePositions glm4v_remote_positions(std::span<const TokenId> tokens,
                                            std::int64_t num_patches,
                                            const GlmSpecialTokens& special) {
  constexpr const char* who = "glm4v_remote_positions";
  special.validate();
  detail::require_at_least(num_patches, 1, "glm4v_remote_positions: num_patches");
  if (special.begin_of_image == no_token || special.end_of_image == no_token) {
    fail(ErrorKind::invalid_argument, who,
         ": begin_of_image / end_of_image are not set in GlmSpecialTokens (glm4() sets "
         "151339/151340)");
  }
  const auto len = static_cast<std::int64_t>(tokens.size());
  const std::int64_t boi = detail::find_token(tokens, special.begin_of_image, len);
  if (boi < 0) {
    fail(ErrorKind::invalid_argument, who, ": no <|begin_of_image|> (id ", special.begin_of_image,
         ") in the ", len, " tokens");
  }
  const std::int64_t eoi = detail::find_token(tokens, special.end_of_image, len);
  if (eoi != boi + 2) {
    fail(ErrorKind::invalid_argument, who, ": <|end_of_image|> (id ", special.end_of_image,
         ") must be at index ", boi + 2, " (one placeholder after <|begin_of_image|> at ", boi,
         "), found at ", eoi);
  }
  const std::int64_t out_len = detail::add(len - 1, num_patches, "glm4v_remote_positions size");
  Glm4vRemotePositions out;
  out.boi_index = boi;
  out.num_patches = num_patches;
  out.rope_delta = 1 - num_patches;
  out.positions = PositionIds(1, out_len);
  auto p = out.positions.stream(0);
  std::size_t o = 0;
  for (std::int64_t i = 0; i <= boi; ++i) p[o++] = i;
  for (std::int64_t k = 0; k < num_patches; ++k) p[o++] = boi + 1;
  for (std::int64_t i = eoi; i < len; ++i) p[o++] = i;
  return out;
}

}  // namespace posenc::glm

// Attention patterns as per-row visible key ranges (CSR) and the dense additive mask expanded from them.
#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "glm/detail.hpp"
#include "posenc/glm.hpp"

namespace posenc::glm {

using detail::fail;

const char* to_string(MaskPattern p) noexcept {
  switch (p) {
    case MaskPattern::causal: return "causal";
    case MaskPattern::bidirectional: return "bidirectional";
    case MaskPattern::prefix_lm: return "prefix_lm";
    case MaskPattern::local_window: return "local_window";
    case MaskPattern::global_local: return "global_local";
    case MaskPattern::custom: return "custom";
  }
  return "unknown";
}

AttentionPattern AttentionPattern::causal() {
  return AttentionPattern{};
}

AttentionPattern AttentionPattern::bidirectional() {
  AttentionPattern p;
  p.kind = MaskPattern::bidirectional;
  return p;
}

AttentionPattern AttentionPattern::prefix_lm(std::int64_t prefix_len) {
  AttentionPattern p;
  p.kind = MaskPattern::prefix_lm;
  p.prefix_len = prefix_len;
  return p;
}

AttentionPattern AttentionPattern::local_window(std::int64_t window) {
  AttentionPattern p;
  p.kind = MaskPattern::local_window;
  p.window = window;
  return p;
}

AttentionPattern AttentionPattern::global_local(std::vector<std::int64_t> global_positions,
                                                std::int64_t window) {
  AttentionPattern p;
  p.kind = MaskPattern::global_local;
  p.global_positions = std::move(global_positions);
  p.window = window;
  return p;
}

AttentionPattern AttentionPattern::custom(
    std::function<bool(std::int64_t, std::int64_t)> predicate) {
  AttentionPattern p;
  p.kind = MaskPattern::custom;
  p.predicate = std::move(predicate);
  return p;
}

std::span<const KeyRange> MaskRanges::row(std::int64_t b, std::int64_t r) const {
  if (b < 0 || b >= batch || r < 0 || r >= q_len) {
    fail(ErrorKind::out_of_range, "MaskRanges: row [", b, ", ", r, "] outside [", batch, ", ",
         q_len, "]");
  }
  const auto i = static_cast<std::size_t>(b * q_len + r);
  return {ranges.data() + row_offsets[i],
          static_cast<std::size_t>(row_offsets[i + 1] - row_offsets[i])};
}

bool MaskRanges::visible(std::int64_t b, std::int64_t r, std::int64_t k) const {
  if (k < 0 || k >= k_len) {
    fail(ErrorKind::out_of_range, "MaskRanges: key ", k, " outside [0, ", k_len, ")");
  }
  const auto rs = row(b, r);
  // First range whose end is beyond k; k is visible iff that range starts at or before k.
  const auto it = std::upper_bound(rs.begin(), rs.end(), k,
                                   [](std::int64_t key, const KeyRange& x) { return key < x.end; });
  return it != rs.end() && it->begin <= k;
}

float DenseMask::at(std::int64_t b, std::int64_t r, std::int64_t k) const {
  if (b < 0 || b >= batch || r < 0 || r >= q_len || k < 0 || k >= k_len) {
    fail(ErrorKind::out_of_range, "DenseMask: [", b, ", ", r, ", ", k, "] outside [", batch, ", ",
         q_len, ", ", k_len, "]");
  }
  return values[static_cast<std::size_t>((b * q_len + r) * k_len + k)];
}

namespace {

/// Rows under construction: appends ranges to the current row, merging with its last range.
struct RowBuilder {
  std::vector<std::int64_t> offsets{0};
  std::vector<KeyRange> ranges;

  void push(std::int64_t begin, std::int64_t end) {
    if (begin >= end) return;
    const bool row_has_ranges = static_cast<std::int64_t>(ranges.size()) > offsets.back();
    if (row_has_ranges && ranges.back().end >= begin) {
      ranges.back().end = std::max(ranges.back().end, end);
      return;
    }
    ranges.push_back({begin, end});
  }
  void end_row() { offsets.push_back(static_cast<std::int64_t>(ranges.size())); }
};

/// Checks a pattern against the call's shape; returns the sorted, unique global slots.
std::vector<std::int64_t> check_pattern(const AttentionPattern& p, std::int64_t k_len,
                                        std::size_t index) {
  std::vector<std::int64_t> globals;
  switch (p.kind) {
    case MaskPattern::causal:
    case MaskPattern::bidirectional: break;
    case MaskPattern::prefix_lm:
      if (p.prefix_len < 0 || p.prefix_len > k_len) {
        fail(ErrorKind::out_of_range, "attention pattern ", index, " (prefix_lm): prefix_len ",
             p.prefix_len, " lies outside [0, k_len ", k_len,
             "]; a bidirectional prefix must be among the keys in full");
      }
      break;
    case MaskPattern::local_window:
    case MaskPattern::global_local:
      if (p.window < 1) {
        fail(ErrorKind::invalid_argument, "attention pattern ", index, " (", to_string(p.kind),
             "): window ", p.window,
             " is not allowed; the window must be at least 1 (a query always sees itself)");
      }
      if (p.kind == MaskPattern::global_local) {
        for (std::size_t i = 0; i < p.global_positions.size(); ++i) {
          const std::int64_t g = p.global_positions[i];
          if (g < 0 || g >= k_len) {
            fail(ErrorKind::out_of_range, "attention pattern ", index,
                 " (global_local): global_positions[", i, "] = ", g,
                 " lies outside the key slots [0, ", k_len, ")");
          }
        }
        globals = p.global_positions;
        std::sort(globals.begin(), globals.end());
        globals.erase(std::unique(globals.begin(), globals.end()), globals.end());
      }
      break;
    case MaskPattern::custom:
      if (!p.predicate) {
        fail(ErrorKind::invalid_argument, "attention pattern ", index,
             " (custom): the predicate is empty");
      }
      break;
  }
  return globals;
}

/// The pattern's ranges for query slot q, pushed into `out` (one row).
void pattern_row(const AttentionPattern& p, const std::vector<std::int64_t>& globals,
                 std::int64_t q, std::int64_t k_len, RowBuilder& out) {
  switch (p.kind) {
    case MaskPattern::causal: out.push(0, q + 1); break;
    case MaskPattern::bidirectional: out.push(0, k_len); break;
    case MaskPattern::prefix_lm: out.push(0, std::max(p.prefix_len, q + 1)); break;
    case MaskPattern::local_window:
      out.push(std::max<std::int64_t>(0, q - p.window + 1), q + 1);
      break;
    case MaskPattern::global_local: {
      if (std::binary_search(globals.begin(), globals.end(), q)) {
        out.push(0, q + 1);
        break;
      }
      const std::int64_t lo = std::max<std::int64_t>(0, q - p.window + 1);
      for (auto it = globals.begin(); it != globals.end() && *it < lo; ++it) out.push(*it, *it + 1);
      out.push(lo, q + 1);
      break;
    }
    case MaskPattern::custom: {
      std::int64_t k = 0;
      while (k < k_len) {
        while (k < k_len && !p.predicate(q, k)) ++k;
        const std::int64_t begin = k;
        while (k < k_len && p.predicate(q, k)) ++k;
        out.push(begin, k);
      }
      break;
    }
  }
}

}  // namespace

MaskRanges mask_ranges(std::span<const AttentionPattern> patterns, const MaskGeometry& g) {
  detail::require_at_least(g.batch, 1, "mask: batch");
  detail::require_at_least(g.q_len, 0, "mask: q_len");
  detail::require_at_least(g.k_len, 0, "mask: k_len");
  if (g.q_len > g.k_len) {
    fail(ErrorKind::invalid_argument, "mask: q_len ", g.q_len, " exceeds k_len ", g.k_len,
         "; the queries are the last q_len of the k_len key slots");
  }
  if (patterns.size() != 1 && static_cast<std::int64_t>(patterns.size()) != g.batch) {
    fail(ErrorKind::invalid_argument, "mask: ", patterns.size(), " patterns for batch ", g.batch,
         "; give one shared pattern or one per sequence");
  }
  if (!g.valid.empty()) detail::check_binary_mask(g.valid, g.batch, g.k_len, "mask: valid");
  const std::int64_t rows = detail::mul(g.batch, g.q_len, "mask rows (batch * q_len)");
  const bool shared = patterns.size() == 1;

  std::vector<std::vector<std::int64_t>> globals(patterns.size());
  std::int64_t predicate_calls = 0;
  for (std::size_t i = 0; i < patterns.size(); ++i) {
    globals[i] = check_pattern(patterns[i], g.k_len, i);
    if (patterns[i].kind == MaskPattern::custom) {
      predicate_calls =
          detail::add(predicate_calls, detail::mul(g.q_len, g.k_len, "mask: q_len * k_len"),
                      "mask: predicate calls");
    }
  }
  if (predicate_calls > max_predicate_calls) {
    fail(ErrorKind::invalid_argument, "mask: a custom pattern over q_len ", g.q_len, " x k_len ",
         g.k_len, " needs ", predicate_calls, " predicate calls, beyond the limit ",
         max_predicate_calls);
  }

  // The pattern's rows are computed once per distinct pattern; padding is applied per sequence.
  auto build_pattern_rows = [&](std::size_t i) {
    RowBuilder rb;
    for (std::int64_t r = 0; r < g.q_len; ++r) {
      pattern_row(patterns[i], globals[i], g.k_len - g.q_len + r, g.k_len, rb);
      rb.end_row();
    }
    return rb;
  };
  RowBuilder shared_rows;
  if (shared) shared_rows = build_pattern_rows(0);

  RowBuilder out;
  out.offsets.reserve(static_cast<std::size_t>(rows) + 1);
  std::vector<KeyRange> valid_runs;
  // q_len 0: no rows at all, however large the batch (not a loop over an int64-sized batch).
  for (std::int64_t b = 0; rows > 0 && b < g.batch; ++b) {
    RowBuilder own;
    const RowBuilder& pr =
        shared ? shared_rows : (own = build_pattern_rows(static_cast<std::size_t>(b)));
    valid_runs.clear();
    const std::uint8_t* v = g.valid.empty() ? nullptr : g.valid.data() + b * g.k_len;
    if (v == nullptr) {
      valid_runs.push_back({0, g.k_len});
    } else {
      for (std::int64_t k = 0; k < g.k_len;) {
        while (k < g.k_len && v[k] == 0) ++k;
        const std::int64_t begin = k;
        while (k < g.k_len && v[k] != 0) ++k;
        if (begin < k) valid_runs.push_back({begin, k});
      }
    }
    for (std::int64_t r = 0; r < g.q_len; ++r) {
      const auto first = static_cast<std::size_t>(pr.offsets[static_cast<std::size_t>(r)]);
      const auto last = static_cast<std::size_t>(pr.offsets[static_cast<std::size_t>(r) + 1]);
      // Intersect two sorted lists of disjoint ranges.
      const std::size_t before = out.ranges.size();
      const bool query_is_padding = v != nullptr && v[g.k_len - g.q_len + r] == 0;
      std::size_t a = query_is_padding ? last : first;  // a padding query row sees nothing
      std::size_t c = 0;
      while (a < last && c < valid_runs.size()) {
        const KeyRange& x = pr.ranges[a];
        const KeyRange& y = valid_runs[c];
        out.push(std::max(x.begin, y.begin), std::min(x.end, y.end));
        if (x.end < y.end)
          ++a;
        else
          ++c;
      }
      if (out.ranges.size() == before && g.empty_rows == EmptyRows::all_visible)
        out.push(0, g.k_len);
      out.end_row();
    }
  }
  MaskRanges m;
  m.batch = g.batch;
  m.q_len = g.q_len;
  m.k_len = g.k_len;
  m.row_offsets = std::move(out.offsets);
  m.ranges = std::move(out.ranges);
  return m;
}

MaskRanges mask_ranges(const AttentionPattern& pattern, std::int64_t q_len, std::int64_t k_len) {
  MaskGeometry g;
  g.q_len = q_len;
  g.k_len = k_len;
  return mask_ranges(std::span<const AttentionPattern>(&pattern, 1), g);
}

namespace {

/// batch * q_len * k_len, or throws when it overflows or exceeds max_dense_mask_elements.
std::int64_t dense_elements(std::int64_t batch, std::int64_t q_len, std::int64_t k_len) {
  const std::int64_t rows = detail::mul(batch, q_len, "dense mask rows (batch * q_len)");
  const std::int64_t elements =
      detail::mul(rows, k_len, "dense mask elements (batch * q_len * k_len)");
  if (elements > max_dense_mask_elements) {
    fail(ErrorKind::invalid_argument, "dense mask: batch ", batch, " x q_len ", q_len, " x k_len ",
         k_len, " = ", elements, " elements exceeds the limit ", max_dense_mask_elements,
         "; use the ranges (mask_ranges) instead");
  }
  return elements;
}

}  // namespace

DenseMask to_dense(const MaskRanges& m) {
  const std::int64_t elements = dense_elements(m.batch, m.q_len, m.k_len);
  const std::int64_t rows = m.batch * m.q_len;
  DenseMask d;
  d.batch = m.batch;
  d.q_len = m.q_len;
  d.k_len = m.k_len;
  d.values.assign(static_cast<std::size_t>(elements), -std::numeric_limits<float>::infinity());
  for (std::int64_t i = 0; i < rows; ++i) {
    float* row = d.values.data() + i * m.k_len;
    for (std::int64_t j = m.row_offsets[static_cast<std::size_t>(i)];
         j < m.row_offsets[static_cast<std::size_t>(i) + 1]; ++j) {
      const KeyRange& r = m.ranges[static_cast<std::size_t>(j)];
      std::fill(row + r.begin, row + r.end, 0.0f);
    }
  }
  return d;
}

DenseMask dense_mask(const AttentionPattern& pattern, std::int64_t q_len, std::int64_t k_len) {
  // Size first: refuse an oversized dense mask before spending time on its ranges.
  if (q_len >= 0 && k_len >= 0) dense_elements(1, q_len, k_len);
  return to_dense(mask_ranges(pattern, q_len, k_len));
}

DenseMask dense_mask(std::span<const AttentionPattern> patterns, const MaskGeometry& geometry) {
  if (geometry.batch >= 1 && geometry.q_len >= 0 && geometry.k_len >= 0) {
    dense_elements(geometry.batch, geometry.q_len, geometry.k_len);
  }
  return to_dense(mask_ranges(patterns, geometry));
}

}  // namespace posenc::glm

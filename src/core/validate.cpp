// validate_args: the single pass that checks an apply call (shapes, strides, overlap, sizes, positions) before anything is written.
#include "core/validate.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdint>
#include <string>
#include <utility>

#include "core/checked.hpp"
#include "core/memory.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"

namespace posenc {
namespace detail {
namespace {

[[noreturn]] void fail(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

std::string str(std::int64_t v) { return std::to_string(v); }

std::string address_text(std::uintptr_t a) {
  char text[2 + 2 * sizeof(a) + 1];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(a));
  return text;
}

bool known(DType t) noexcept { return size_of(t) != 0; }
bool known(IndexType t) noexcept { return size_of(t) != 0; }

/// One tensor view reduced to what the overlap checks need, all sizes in bytes.
struct Extent {
  const char* name = "";
  std::uintptr_t begin = 0;      ///< address of element (0, 0, 0)
  std::int64_t bytes = 0;        ///< from element (0,0,0) to one past the last element
  std::int64_t token_bytes = 0;  ///< token stride in bytes
  std::int64_t span_bytes = 0;   ///< one token: from head 0's first element to one past the last head's last
  std::int64_t tokens = 0;
  std::int64_t token_stride = 0;  ///< elements (identity checks compare strides, not bytes)
  std::int64_t head_stride = 0;

  std::uintptr_t end() const noexcept { return begin + static_cast<std::uintptr_t>(bytes); }
};

/// True when two rows of `width` contiguous elements placed at i*s1 + j*s2 (i < n1, j < n2) share
/// an element for some distinct (i, j) pairs. Exact: a view [T, H, D] with strides (ts, hs, 1) is
/// free of self-overlap iff no (dt, dh) != (0, 0) with |dt| < T, |dh| < H has |dt*ts + dh*hs| < D.
/// Iterates over the smaller count (heads, typically), so it costs O(min(T, H)). Strides are
/// non-negative and (n-1)*s has been checked to fit.
bool rows_overlap(std::int64_t n1, std::int64_t s1, std::int64_t n2, std::int64_t s2, std::int64_t width) noexcept {
  if (n1 > n2) {
    std::swap(n1, n2);
    std::swap(s1, s2);
  }
  // di = 0: two distinct rows along axis 2 are s2*|dj| >= s2 apart.
  if (n2 > 1 && s2 < width) return true;
  for (std::int64_t di = 1; di < n1; ++di) {
    const std::int64_t v = di * s1;  // >= 0; look for dj in [-(n2-1), 0] making |v + dj*s2| < width
    if (n2 == 1 || s2 == 0) {
      if (v < width) return true;
      continue;
    }
    const std::int64_t q = v / s2;
    for (std::int64_t dj : {-q, -q - 1}) {
      dj = std::max(dj, -(n2 - 1));
      const std::int64_t d = v + dj * s2;
      if (d < width && d > -width) return true;
    }
    // Past this point v only grows and no row of axis 2 can reach back.
    if (v >= width + (n2 - 1) * s2) break;
  }
  return false;
}

/// Checks one present view (strides, extents in checked arithmetic, self-overlap, alignment) and
/// returns its byte extent.
/// The view's rows: `elem`-byte elements (a view's dtype, or a quantized output's).
struct RowsView {
  const void* data;
  std::int64_t elem;
  std::int64_t tokens;
  std::int64_t heads;
  std::int64_t head_dim;
  std::int64_t token_stride;
  std::int64_t head_stride;
};

Extent check_rows(const char* name, const RowsView& v) {
  const auto n = [name] { return std::string(name); };  // messages only: no allocation on success
  if (v.heads <= 0) fail(ErrorKind::invalid_argument, n() + " heads " + str(v.heads) + " must be > 0");
  if (v.token_stride < 0) {
    fail(ErrorKind::invalid_argument,
         n() + " token_stride " + str(v.token_stride) + " is negative (strides must be >= 0)");
  }
  if (v.head_stride < 0) {
    fail(ErrorKind::invalid_argument,
         n() + " head_stride " + str(v.head_stride) + " is negative (strides must be >= 0)");
  }
  const std::int64_t elem = v.elem;
  const auto address = reinterpret_cast<std::uintptr_t>(v.data);
  if (address % static_cast<std::uintptr_t>(elem) != 0) {
    fail(ErrorKind::invalid_argument,
         n() + " data address " + address_text(address) + " is not aligned to its " + str(elem) + "-byte elements");
  }

  // Elements spanned: (T-1)*ts + (H-1)*hs + D; a stride does not count along an axis of one.
  const std::int64_t tok = checked_mul(v.tokens - 1, v.token_stride, name, " extent (tokens - 1) * token_stride");
  const std::int64_t head = checked_mul(v.heads - 1, v.head_stride, name, " extent (heads - 1) * head_stride");
  const std::int64_t span = checked_add(head, v.head_dim, name, " extent in elements");
  const std::int64_t elems = checked_add(tok, span, name, " extent in elements");
  Extent e;
  e.name = name;
  e.begin = address;
  e.bytes = checked_mul(elems, elem, name, " extent in bytes");
  e.span_bytes = span * elem;  // <= bytes, cannot overflow
  e.token_bytes = checked_mul(v.token_stride, elem, name, " token stride in bytes");
  e.tokens = v.tokens;
  e.token_stride = v.token_stride;
  e.head_stride = v.head_stride;
  if (address > UINTPTR_MAX - static_cast<std::uintptr_t>(e.bytes)) {
    fail(ErrorKind::overflow, n() + " spans " + str(e.bytes) + " bytes from address " + address_text(address) +
                                  ", past the end of the address space");
  }

  if (rows_overlap(v.tokens, v.token_stride, v.heads, v.head_stride, v.head_dim)) {
    fail(ErrorKind::invalid_argument, n() + " overlaps itself: with tokens " + str(v.tokens) + ", heads " +
                                          str(v.heads) + ", head_dim " + str(v.head_dim) + ", token_stride " +
                                          str(v.token_stride) + " and head_stride " + str(v.head_stride) +
                                          " two (token, head) rows share elements");
  }
  return e;
}

Extent check_view(const char* name, const ConstTensorView& v) {
  return check_rows(name, {v.data, size_of(v.dtype), v.tokens, v.heads, v.head_dim, v.token_stride, v.head_stride});
}

/// Whether two views may share a byte. Exact at the level of per-token spans when both have the
/// same token stride (the fused-QKV case: Q, K, V heads interleave token by token but each token's
/// Q span and K span are disjoint); otherwise a conservative whole-range test.
bool views_overlap(const Extent& a, const Extent& b) noexcept {
  if (a.end() <= b.begin || b.end() <= a.begin) return false;
  if (a.tokens != b.tokens || a.token_bytes != b.token_bytes) return true;
  // Token t of a: [a.begin + t*S, + La); token t' of b: [b.begin + t'*S, + Lb). They meet iff
  // -Lb < base + d*S < La for some d = t' - t in [-(T-1), T-1], base = b.begin - a.begin.
  // Addresses are below 2^63 on every supported platform, so the difference fits in int64.
  const std::int64_t base = static_cast<std::int64_t>(b.begin - a.begin);
  const std::int64_t la = a.span_bytes;
  const std::int64_t lb = b.span_bytes;
  const std::int64_t s = a.token_bytes;
  const std::int64_t t = a.tokens;
  if (t == 1 || s == 0) return base > -lb && base < la;
  // Smallest d with base + d*S > -Lb: floor((-Lb - base) / S) + 1 (floor division).
  const std::int64_t num = -lb - base;
  std::int64_t fl = num / s;
  if (num % s != 0 && num < 0) --fl;
  const std::int64_t d = std::max(fl + 1, -(t - 1));
  return d <= t - 1 && base + d * s < la;
}

bool same_view(const Extent& a, const Extent& b) noexcept {
  return a.begin == b.begin && a.token_stride == b.token_stride && a.head_stride == b.head_stride;
}

/// `head_dim` is what the view's head_dim must be, named `head_dim_name` in the message.
void check_shape(const char* name, const ConstTensorView& v, std::int64_t head_dim, const char* head_dim_name,
                 const PositionsView& positions) {
  const auto n = [name] { return std::string(name); };  // messages only: no allocation on success
  if (!known(v.dtype)) {
    fail(ErrorKind::invalid_argument, n() + " dtype " + str(static_cast<int>(v.dtype)) + " is not a known DType");
  }
  if (v.head_dim != head_dim) {
    fail(ErrorKind::invalid_argument,
         n() + " head_dim " + str(v.head_dim) + " differs from " + head_dim_name + " " + str(head_dim));
  }
  if (v.tokens != positions.count) {
    fail(ErrorKind::invalid_argument,
         n() + " tokens " + str(v.tokens) + " differs from positions.count " + str(positions.count));
  }
}

void check_source(const char* name, const ConstTensorView& src, const char* dst_name, const ConstTensorView& dst) {
  const auto n = [name] { return std::string(name); };  // messages only: no allocation on success
  if (src.dtype != dst.dtype) {
    fail(ErrorKind::invalid_argument,
         n() + " dtype " + to_string(src.dtype) + " differs from " + dst_name + " dtype " + to_string(dst.dtype));
  }
  if (src.tokens != dst.tokens || src.heads != dst.heads || src.head_dim != dst.head_dim) {
    fail(ErrorKind::invalid_argument, n() + " shape [" + str(src.tokens) + ", " + str(src.heads) + ", " +
                                          str(src.head_dim) + "] differs from " + dst_name + " shape [" +
                                          str(dst.tokens) + ", " + str(dst.heads) + ", " + str(dst.head_dim) + "]");
  }
}

[[noreturn]] void fail_overlap(const Extent& a, const Extent& b, const char* why) {
  fail(ErrorKind::invalid_argument, std::string(a.name) + " (" + str(a.bytes) + " bytes at " + address_text(a.begin) +
                                        ") overlaps " + b.name + " (" + str(b.bytes) + " bytes at " +
                                        address_text(b.begin) + "): " + why);
}

}  // namespace

std::int64_t scan_positions(const PositionsView& positions, std::int64_t limit, const char* limit_name) {
  if (positions.data == nullptr) fail(ErrorKind::invalid_argument, "positions.data is null");
  std::int64_t max_position = -1;
  const std::int32_t streams = std::max(positions.streams, 1);
  // One pass per stream: find the maximum and stop at the first bad value (its index makes the message).
  auto scan = [&](const auto* base) {
    for (std::int32_t s = 0; s < streams; ++s) {
      const auto* p = base + s * positions.stream_stride;
      for (std::int64_t i = 0; i < positions.count; ++i) {
        const std::int64_t v = p[i];
        if (v < 0 || v >= limit) {
          fail(ErrorKind::out_of_range, "position " + str(v) + (streams > 1 ? " of stream " + str(s) : std::string()) +
                                            " at token index " + str(i) + " is outside [0, " + str(limit) + ")" +
                                            (limit_name != nullptr ? " (" + std::string(limit_name) + ")" : std::string()));
        }
        max_position = std::max(max_position, v);
      }
    }
  };
  if (positions.type == IndexType::i32) {
    scan(static_cast<const std::int32_t*>(positions.data));
  } else {
    scan(static_cast<const std::int64_t*>(positions.data));
  }
  return max_position;
}

std::int64_t check_cos_sin(const RopeSpec& spec, const CosSinCacheView& c) {
  if (spec.pairing == Pairing::half_split_2d || !spec.mrope_section.empty()) {
    fail(ErrorKind::invalid_argument,
         std::string("a cos/sin cache gives one row per position: it needs a single-stream spec, but spec.pairing is ") +
             to_string(spec.pairing) + " with " + str(spec.position_streams()) +
             " position stream(s) (half_split_2d and M-RoPE take their angles from the spec)");
  }
  if (!known(c.dtype)) {
    fail(ErrorKind::invalid_argument, "cos_sin dtype " + str(static_cast<int>(c.dtype)) + " is not a known DType");
  }
  if (c.rows < 1) {
    fail(ErrorKind::invalid_argument, "cos_sin rows " + str(c.rows) + " must be >= 1 (one row per position)");
  }
  if (c.rotary_dim != spec.rotary()) {
    fail(ErrorKind::invalid_argument, "cos_sin rotary_dim " + str(c.rotary_dim) + " differs from the spec's rotary_dim " +
                                          str(spec.rotary()) + " (a row holds rotary_dim / 2 cos, then as many sin)");
  }
  if (c.row_stride < c.rotary_dim) {
    fail(ErrorKind::invalid_argument, "cos_sin row_stride " + str(c.row_stride) + " is less than its rotary_dim " +
                                          str(c.rotary_dim) + ": rows would overlap");
  }
  const std::int64_t elem = size_of(c.dtype);
  const auto address = reinterpret_cast<std::uintptr_t>(c.data);
  if (address % static_cast<std::uintptr_t>(elem) != 0) {
    fail(ErrorKind::invalid_argument,
         "cos_sin data address " + address_text(address) + " is not aligned to its " + str(elem) + "-byte elements");
  }
  // Elements spanned: (rows - 1) * row_stride + rotary_dim.
  const std::int64_t lead = checked_mul(c.rows - 1, c.row_stride, "cos_sin", " extent (rows - 1) * row_stride");
  const std::int64_t elems = checked_add(lead, c.rotary_dim, "cos_sin", " extent in elements");
  const std::int64_t bytes = checked_mul(elems, elem, "cos_sin", " extent in bytes");
  if (address > UINTPTR_MAX - static_cast<std::uintptr_t>(bytes)) {
    fail(ErrorKind::overflow, "cos_sin spans " + str(bytes) + " bytes from address " + address_text(address) +
                                  ", past the end of the address space");
  }
  return bytes;
}

/// Fails when `bytes` bytes at `data`, read while Q and K are written, share memory with the Q or
/// the K destination (`k` null: no K). A whole-range test: such inputs never legitimately lie
/// inside an activation buffer.
void check_disjoint_input(const char* name, const void* data, std::int64_t bytes, const Extent& q, const Extent* k,
                          const char* why) {
  Extent e;
  e.name = name;
  e.begin = reinterpret_cast<std::uintptr_t>(data);
  e.bytes = bytes;
  e.tokens = -1;  // never equal to a view's: views_overlap compares whole ranges
  if (views_overlap(e, q)) fail_overlap(e, q, why);
  if (k != nullptr && views_overlap(e, *k)) fail_overlap(e, *k, why);
}

/// The QK-norm weights (RopeArgs::norm): present exactly when the spec normalises (k only with K),
/// aligned to their elements, and sharing no byte with a destination (they are read while Q and
/// K are written).
void check_norm_weights(const RopeSpec& spec, const RopeArgs& args, const Extent& q, const Extent* k) {
  const NormWeights& w = args.norm;
  if (!spec.qk_norm.enabled()) {
    if (w.q != nullptr || w.k != nullptr)
      fail(ErrorKind::invalid_argument, std::string("norm.") + (w.q != nullptr ? "q" : "k") +
                                            " is given but the spec has no QK norm (qk_norm.kind none)");
    return;
  }
  const std::int64_t width = spec.qk_norm_width();
  const std::int64_t elem = size_of(args.q.dtype);
  auto check_one = [&](const char* name, const void* data) {
    if (data == nullptr)
      fail(ErrorKind::invalid_argument, std::string(name) + " is absent: the spec's QK norm (" +
                                            to_string(spec.qk_norm.kind) + ") needs a weight of " + str(width) +
                                            " " + to_string(args.q.dtype) + " elements");
    const auto address = reinterpret_cast<std::uintptr_t>(data);
    if (address % static_cast<std::uintptr_t>(elem) != 0)
      fail(ErrorKind::invalid_argument, std::string(name) + " address " + address_text(address) +
                                            " is not aligned to its " + str(elem) + "-byte elements");
    check_disjoint_input(name, data, width * elem, q, k, "a QK-norm weight must not share memory with a destination");
  };
  check_one("norm.q", w.q);
  if (args.k.present()) check_one("norm.k", w.k);
  else if (w.k != nullptr) fail(ErrorKind::invalid_argument, "norm.k is given but the call has no K");
}

CallInfo validate_call(const RopeSpec& spec, const RopeArgs& args, bool check_positions) {
  const PositionsView& pos = args.positions;
  if (!args.q.present()) fail(ErrorKind::invalid_argument, "q is absent (q.data is null); q is required");
  if (!args.k.present() && args.k_src.present()) {
    fail(ErrorKind::invalid_argument, "k_src is given but k is absent: a source needs a destination");
  }
  if (pos.count <= 0) {
    fail(ErrorKind::invalid_argument,
         "positions.count " + str(pos.count) + " must be > 0: an apply needs at least one token");
  }
  if (pos.data == nullptr) fail(ErrorKind::invalid_argument, "positions.data is null");
  if (!known(pos.type)) {
    fail(ErrorKind::invalid_argument,
         "positions.type " + str(static_cast<int>(pos.type)) + " is not a known IndexType");
  }
  if (reinterpret_cast<std::uintptr_t>(pos.data) % static_cast<std::uintptr_t>(size_of(pos.type)) != 0) {
    fail(ErrorKind::invalid_argument,
         "positions.data is not aligned to its " + str(size_of(pos.type)) + "-byte elements");
  }
  // Multi-axis specs (M-RoPE, 2-D) read one position per stream and token.
  const std::int32_t streams = spec.position_streams();
  if (pos.streams != streams) {
    fail(ErrorKind::invalid_argument, "positions.streams " + str(pos.streams) + " differs from the " + str(streams) +
                                          " position stream" + (streams == 1 ? "" : "s") +
                                          " the spec needs (RopeSpec::position_streams())");
  }
  if (streams > 1) {
    if (pos.stream_stride < pos.count) {
      fail(ErrorKind::invalid_argument, "positions.stream_stride " + str(pos.stream_stride) +
                                            " is less than positions.count " + str(pos.count) +
                                            ": the streams would overlap");
    }
    // Elements spanned: (streams - 1) * stream_stride + count.
    const std::int64_t lead = checked_mul(streams - 1, pos.stream_stride, "positions extent (streams - 1) * stream_stride");
    const std::int64_t elems = checked_add(lead, pos.count, "positions extent in elements");
    checked_mul(elems, size_of(pos.type), "positions size in bytes");
  } else {
    checked_mul(pos.count, size_of(pos.type), "positions size in bytes");
  }
  if (spec.head_dim <= 0 || spec.head_dim > max_head_dim) {
    fail(ErrorKind::invalid_argument,
         "spec.head_dim " + str(spec.head_dim) + " is outside [1, " + str(max_head_dim) + "]");
  }

  CallInfo info;
  info.tokens = pos.count;

  // Shapes and dtypes first: they make the clearest messages.
  check_shape("q", args.q, spec.head_dim, "spec.head_dim", pos);
  if (args.k.present()) {
    check_shape("k", args.k, spec.head_dim, "spec.head_dim", pos);
    if (args.k.dtype != args.q.dtype) {
      fail(ErrorKind::invalid_argument,
           std::string("k dtype ") + to_string(args.k.dtype) + " differs from q dtype " + to_string(args.q.dtype));
    }
  }
  if (args.q_src.present()) check_source("q_src", args.q_src, "q", args.q);
  if (args.k_src.present()) check_source("k_src", args.k_src, "k", args.k);

  // Strides, extents (checked 64-bit) and self-overlap of each view.
  const Extent q = check_view("q", args.q);
  Extent k;
  if (args.k.present()) k = check_view("k", args.k);
  if (args.k.present() && views_overlap(q, k)) {
    fail_overlap(q, k, "the Q and K destinations must not share memory");
  }
  if (args.q_src.present()) {
    const Extent qs = check_view("q_src", args.q_src);
    info.q_in_place = same_view(qs, q);
    if (!info.q_in_place) {
      if (views_overlap(qs, q)) fail_overlap(qs, q, "a source must be its destination exactly or not overlap it");
      if (args.k.present() && views_overlap(qs, k))
        fail_overlap(qs, k, "a source must not overlap another destination");
    }
  }
  if (args.k_src.present()) {
    const Extent ks = check_view("k_src", args.k_src);
    info.k_in_place = same_view(ks, k);
    if (!info.k_in_place) {
      if (views_overlap(ks, k)) fail_overlap(ks, k, "a source must be its destination exactly or not overlap it");
      if (views_overlap(ks, q)) fail_overlap(ks, q, "a source must not overlap another destination");
    }
  }

  std::int64_t limit = spec.position_limit;
  const char* limit_name = nullptr;
  if (args.cos_sin.present()) {
    // The cache is read while Q and K are written: it must share no byte with them (a whole-range
    // test; a cache never legitimately lies inside an activation buffer).
    check_disjoint_input("cos_sin", args.cos_sin.data, check_cos_sin(spec, args.cos_sin), q,
                         args.k.present() ? &k : nullptr, "the cos/sin cache must not share memory with a destination");
    limit = cos_sin_limit(spec, args.cos_sin);
    limit_name = limit == args.cos_sin.rows ? "rows of the cos/sin cache" : "spec.position_limit";
  }
  check_norm_weights(spec, args, q, args.k.present() ? &k : nullptr);
  if (check_positions) info.max_position = scan_positions(pos, limit, limit_name);
  return info;
}

void check_input(const char* name, const ConstTensorView& v, std::int64_t head_dim, const char* head_dim_name,
                 const PositionsView& positions) {
  if (v.data == nullptr) fail(ErrorKind::invalid_argument, std::string(name) + " is absent (data is null); it is required");
  check_shape(name, v, head_dim, head_dim_name, positions);
  check_view(name, v);
}

void check_disjoint(const char* a_name, const ConstTensorView& a, const char* b_name, const ConstTensorView& b,
                    const char* why) {
  const Extent ea = check_view(a_name, a);
  const Extent eb = check_view(b_name, b);
  if (views_overlap(ea, eb)) fail_overlap(ea, eb, why);
}

std::int64_t check_output_rows(const char* name, void* data, std::int64_t elem, std::int64_t token_stride,
                               std::int64_t head_stride, const ConstTensorView& shape,
                               std::initializer_list<NamedView> inputs, const char* why) {
  const Extent out =
      check_rows(name, {data, elem, shape.tokens, shape.heads, shape.head_dim, token_stride, head_stride});
  for (const NamedView& input : inputs) {
    if (!input.view.present()) continue;
    const Extent e = check_view(input.name, input.view);
    if (views_overlap(out, e)) fail_overlap(out, e, why);
  }
  return out.bytes;
}

}  // namespace detail

void validate_args(const RopeSpec& spec, const RopeArgs& args, bool check_positions) try {
  spec.validate();
  detail::validate_call(spec, args, check_positions);
} catch (const std::bad_alloc&) {  // the names and numbers of its checks are strings
  detail::throw_out_of_host_memory("the working memory of validate_args");
}

}  // namespace posenc

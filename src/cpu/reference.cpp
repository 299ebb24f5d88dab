// apply_reference: the definition of RoPE in posenc, written as plain scalar loops to be read (every other path is tested against it).
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dispatch.hpp"
#include "core/hf_arithmetic.hpp"
#include "core/memory.hpp"
#include "core/qk_norm.hpp"
#include "core/rope_math.hpp"
#include "core/validate.hpp"
#include "posenc/cpu.hpp"

namespace posenc {
namespace {

/// Element offset of (t, h, d) in a view: t * token_stride + h * head_stride + d.
std::int64_t offset_of(std::int64_t token_stride, std::int64_t head_stride, std::int64_t t, std::int64_t h,
                       std::int64_t d) {
  return t * token_stride + h * head_stride + d;
}

/// Where a token's cos/sin come from: the spec's frequencies (per pair inv_freq and position
/// stream, and the attention factor), or the caller's cos/sin cache when `cache` is present.
struct AngleSource {
  const PairAxes* axes = nullptr;
  double attention_factor = 1.0;
  bool torch_cpu = false;  ///< hf numerics with HfArithmetic::torch_cpu: cos/sin from torch's CPU library
  CosSinCacheView cache;
};

/// cos/sin of pair i of token t under numerics N (rope.hpp).
template <DType A, Numerics N>
detail::CosSin token_cos_sin(const PositionsView& positions, const AngleSource& from, std::int64_t t,
                             std::int64_t i) {
  if (from.cache.present()) {
    // Row of the token's position (validated to lie in [0, rows)): cos at i, sin at R/2 + i.
    const std::int64_t row = detail::position_at(positions, t) * from.cache.row_stride;
    const float c = detail::cos_sin_cache_entry(from.cache.data, from.cache.dtype, row + i);
    const float s = detail::cos_sin_cache_entry(from.cache.data, from.cache.dtype, row + from.cache.rotary_dim / 2 + i);
    return detail::cos_sin_from_cache<A, N>(c, s);
  }
  const std::int64_t p = detail::position_at(positions, from.axes->stream[i], t);
  return detail::cos_sin<A, N>(from.axes->inv_freq[i], p, from.attention_factor,
                               static_cast<float>(from.attention_factor));
}

/// The QK-norm stage of one tensor: the spec's norm, the arithmetic of its mean and rsqrt
/// (torch_cpu or exact) and the tensor's weight vector (activation dtype); weight == nullptr: none.
struct NormStage {
  QkNorm norm;
  HfArithmetic arithmetic = HfArithmetic::exact;
  const void* weight = nullptr;
};

/// The per-pair rows rotate_tensor works in: a token's H cos/sin values and a head's H pairs, and
/// for torch_cpu a token's H angles and MKL's cos/sin of them. Allocated once per call, before
/// anything is written, so a failed allocation writes nothing.
struct PairRows {
  std::vector<detail::CosSin> cs;
  std::vector<float> a;
  std::vector<float> b;
  std::vector<float> angle;
  std::vector<float> c;
  std::vector<float> s;
  std::vector<float> head;    ///< the QK-norm stage: one head's values, then normalised
  std::vector<float> weight;  ///< the norm's weights as float
  std::vector<float> square;  ///< scratch for the norm's squares

  PairRows(std::int64_t half, std::int64_t head_dim, bool norm)
      : cs(static_cast<std::size_t>(half)),
        a(static_cast<std::size_t>(half)),
        b(static_cast<std::size_t>(half)),
        angle(static_cast<std::size_t>(half)),
        c(static_cast<std::size_t>(half)),
        s(static_cast<std::size_t>(half)),
        head(norm ? static_cast<std::size_t>(head_dim) : 0),
        weight(norm ? static_cast<std::size_t>(head_dim) : 0),
        square(norm ? static_cast<std::size_t>(head_dim) : 0) {}
};

/// The cos/sin of every pair of token t, into rows.cs. torch_cpu evaluates a token's angles in one
/// call of torch's CPU cos/sin (each value depends on its angle alone).
template <DType A, Numerics N>
void token_row(const PositionsView& positions, const AngleSource& from, std::int64_t t, PairRows& rows) {
  const auto half = static_cast<std::int64_t>(rows.cs.size());
  if (N == Numerics::accurate || !from.torch_cpu || from.cache.present()) {
    for (std::int64_t i = 0; i < half; ++i) rows.cs[i] = token_cos_sin<A, N>(positions, from, t, i);
    return;
  }
  for (std::int64_t i = 0; i < half; ++i)
    rows.angle[i] = detail::hf_angle(from.axes->inv_freq[i], detail::position_at(positions, from.axes->stream[i], t));
  detail::torch_cpu_cos_sin(rows.angle.data(), half, rows.c.data(), rows.s.data());
  for (std::int64_t i = 0; i < half; ++i)
    rows.cs[i] = detail::cos_sin_hf_scaled<A>(rows.c[i], rows.s[i], static_cast<float>(from.attention_factor));
}
/// Rotates every head of one tensor (Q or K). `src` is the input (the destination itself when in
/// place); rows.cs holds the token's H cos/sin values, shared by every head of Q and K. Pair i
/// takes its angle from position stream axes.stream[i] with frequency axes.inv_freq[i], or its
/// cos/sin from the caller's cache.
template <DType A, Numerics N>
void rotate_tensor(const RopeSpec& spec, const PositionsView& positions, const AngleSource& from,
                   const ConstTensorView& src, const TensorView& dst, bool in_place, const NormStage& stage,
                   PairRows& rows) {
  const std::int64_t head_dim = spec.head_dim;
  const std::int64_t rotary = spec.rotary();
  const std::int64_t half = rotary / 2;  // H: pairs per head
  const std::int64_t window = spec.rotary_offset;
  std::vector<detail::CosSin>& cs = rows.cs;
  std::vector<float>& a = rows.a;
  std::vector<float>& b = rows.b;
  // The QK-norm stage normalises elements [norm_first, norm_first + norm_width) of each head.
  const bool norm = stage.weight != nullptr;
  const std::int64_t norm_first = spec.qk_norm_first();
  const std::int64_t norm_width = spec.qk_norm_width();
  if (norm) {
    for (std::int64_t j = 0; j < norm_width; ++j) rows.weight[j] = detail::load_at<A>(stage.weight, j);
  }

  for (std::int64_t t = 0; t < dst.tokens; ++t) {
    token_row<A, N>(positions, from, t, rows);
    for (std::int64_t h = 0; h < dst.heads; ++h) {
      if (norm) {
        // Q/K-norm first (QkNorm): the head's values, normalised in the dtype's arithmetic; the
        // rotation and the pass-through then read these instead of the source.
        for (std::int64_t d = 0; d < head_dim; ++d)
          rows.head[d] = detail::load_at<A>(src.data, offset_of(src.token_stride, src.head_stride, t, h, d));
        float* x = rows.head.data() + norm_first;
        detail::norm_row_host<A>(spec.qk_norm, stage.arithmetic, x, rows.weight.data(), static_cast<int>(norm_width),
                                 rows.square.data());
      }
      auto input = [&](std::int64_t d) {
        return norm ? rows.head[d] : detail::load_at<A>(src.data, offset_of(src.token_stride, src.head_stride, t, h, d));
      };
      for (std::int64_t i = 0; i < half; ++i) {
        const PairPlaces at = pair_places(spec.pairing, half, i);
        a[i] = input(window + at.read_a);
        b[i] = input(window + at.read_b);
      }
      // The whole window is read before any of it is written, so an in-place interleaved_to_half
      // (which writes pair i where pair i/2 was read) sees only inputs.
      for (std::int64_t i = 0; i < half; ++i) {
        const detail::Pair r = detail::rotate<A, N>(a[i], b[i], cs[i]);
        const PairPlaces at = pair_places(spec.pairing, half, i);
        detail::store_at<A>(dst.data, offset_of(dst.token_stride, dst.head_stride, t, h, window + at.write_a), r.a);
        detail::store_at<A>(dst.data, offset_of(dst.token_stride, dst.head_stride, t, h, window + at.write_b), r.b);
      }
      // Elements outside the window pass through: copied bit for bit out of place, untouched in place
      // (normalised ones are written either way).
      if (norm && !spec.qk_norm.rotary_only) {
        for (std::int64_t d = 0; d < head_dim; ++d) {
          if (d >= window && d < window + rotary) continue;
          detail::store_at<A>(dst.data, offset_of(dst.token_stride, dst.head_stride, t, h, d), rows.head[d]);
        }
      } else if (!in_place) {
        const std::int64_t elem = size_of(dst.dtype);
        for (std::int64_t d = 0; d < head_dim; ++d) {
          if (d >= window && d < window + rotary) continue;
          std::memcpy(static_cast<char*>(dst.data) + offset_of(dst.token_stride, dst.head_stride, t, h, d) * elem,
                      static_cast<const char*>(src.data) + offset_of(src.token_stride, src.head_stride, t, h, d) * elem,
                      static_cast<std::size_t>(elem));
        }
      }
    }
  }
}

template <DType A, Numerics N>
void rotate_call(const RopeSpec& spec, const RopeArgs& args, const detail::CallInfo& info, const AngleSource& from,
                 HfArithmetic norm_arithmetic, PairRows& rows) {
  NormStage stage{spec.qk_norm, norm_arithmetic, spec.qk_norm.enabled() ? args.norm.q : nullptr};
  const ConstTensorView q_src = args.q_src.present() ? args.q_src : ConstTensorView(args.q);
  rotate_tensor<A, N>(spec, args.positions, from, q_src, args.q, info.q_in_place, stage, rows);
  if (args.k.present()) {
    stage.weight = spec.qk_norm.enabled() ? args.norm.k : nullptr;
    const ConstTensorView k_src = args.k_src.present() ? args.k_src : ConstTensorView(args.k);
    rotate_tensor<A, N>(spec, args.positions, from, k_src, args.k, info.k_in_place, stage, rows);
  }
}

}  // namespace

// A function-try-block: validation's strings are small allocations too.
void apply_reference(const RopeSpec& spec, const RopeArgs& args) try {
  // 1. Validate everything (spec, shapes, strides, overlap, positions, the cos/sin cache) before
  //    writing anything.
  spec.validate();
  const detail::CallInfo info = detail::validate_call(spec, args, /*check_positions=*/true);
  // The arithmetic of the CPU engine: torch on this CPU for `engine`, or the spec's own (a
  // caller's cos/sin cache needs none).
  const HfArithmetic arithmetic = detail::effective_arithmetic(spec, HfArithmetic::torch_cpu);
  if (!args.cos_sin.present() || spec.qk_norm.enabled()) detail::require_host_arithmetic(arithmetic, "apply_reference");
  // The norm's mean and rsqrt follow torch on this CPU (or exact); `accurate` uses exact.
  const HfArithmetic norm_arithmetic = arithmetic;

  // 2. Where cos/sin come from: the caller's cache, or the frequency table of this call.
  //    seq_len = largest position + 1 matters only for dynamic and longrope, whose table HF
  //    re-selects per forward from max(position_ids) + 1 (the largest position of any stream).
  AngleSource from;
  PairAxes axes;
  if (args.cos_sin.present()) {
    from.cache = args.cos_sin;
  } else {
    detail::allocating("apply_reference's frequency table", spec.rotary() * std::int64_t{2 * sizeof(float)}, [&] {
      const FrequencyTable table = compute_frequencies(spec, info.max_position + 1);
      from.attention_factor = detail::effective_attention_factor(spec, table);
      axes = pair_axes(spec, table);  // per pair: inv_freq and position stream
    });
    from.torch_cpu = arithmetic == HfArithmetic::torch_cpu;
    from.axes = &axes;
  }
  const std::int64_t half = spec.rotary() / 2;
  const bool norm = spec.qk_norm.enabled();
  PairRows rows = detail::allocating("apply_reference's per-pair rows",
                                     half * std::int64_t{sizeof(detail::CosSin) + 5 * sizeof(float)} +
                                         (norm ? 3 * spec.head_dim * std::int64_t{sizeof(float)} : 0),
                                     [&] { return PairRows(half, spec.head_dim, norm); });

  // 3. Rotate Q, then K, with the arithmetic of rope_math.hpp in the activation dtype (every
  //    allocation is behind us: nothing below can fail).
  detail::visit(args.q.dtype, [&](auto dtype) {
    detail::visit(spec.numerics,
                  [&](auto numerics) { rotate_call<dtype.value, numerics.value>(spec, args, info, from, norm_arithmetic, rows); });
  });
} catch (const std::bad_alloc&) {
  detail::throw_out_of_host_memory("the working memory of apply_reference");
}

}  // namespace posenc

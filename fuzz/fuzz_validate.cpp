// Fuzz target: the one-pass validation of apply and append calls (validate_args, validate_append_args) on fuzzed shapes, strides, dtypes, positions and slots over small host buffers.
//
// The input picks a spec (valid or not), views into one small arena (offsets, dtypes, counts and
// strides from small to hostile: negative, zero, 2^31, 2^63 - 1), positions and, for appends, a
// cache and slots. Validation reads only the positions and slots, which always lie in buffers of
// the size the call describes (otherwise the call is validated with check_positions = false, as
// the GPU engine does). Properties:
//   - validation returns or throws posenc::Error, nothing else;
//   - a call it accepts whose views the harness finds inside the arena is then run twice, by the
//     reference (apply_reference / append_reference) and by the CPU engine, on two copies of the
//     buffers: both succeed, the results are equal byte for byte, and every byte outside the
//     destinations (Q, K or the cache rows of the call's slots) is unchanged. The arena and the
//     cache are exact-size heap blocks, so AddressSanitizer reports any access past them.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"
#include "posenc/rope.hpp"

namespace {

using posenc::fuzz::require;

constexpr std::size_t arena_bytes = std::size_t{1} << 14;
constexpr std::int64_t max_elements = std::int64_t{1} << 16;  ///< per view, for the harness's own loops

/// A count or stride: mostly small, sometimes zero, negative or at a 32/64-bit boundary.
std::int64_t dimension(FuzzedDataProvider& in, std::int64_t small_max) {
  switch (in.ConsumeIntegralInRange<int>(0, 9)) {
    case 7:
      return -in.ConsumeIntegralInRange<std::int64_t>(1, 3);
    case 8:
      return in.PickValueInArray<std::int64_t>({std::int64_t{1} << 31, (std::int64_t{1} << 31) - 1,
                                                std::int64_t{1} << 32, std::int64_t{1} << 62,
                                                std::numeric_limits<std::int64_t>::max(),
                                                std::numeric_limits<std::int64_t>::min()});
    case 9:
      return in.ConsumeIntegral<std::int64_t>();
    default:
      return in.ConsumeIntegralInRange<std::int64_t>(0, small_max);
  }
}

posenc::RopeSpec make_spec(FuzzedDataProvider& in) {
  posenc::RopeSpec spec;
  spec.head_dim = in.PickValueInArray<std::int64_t>({2, 4, 8, 16, 32, 64, 6, 10, 3, 0, -2, 2048});
  spec.rotary_dim = in.PickValueInArray<std::int64_t>({0, 0, 2, 4, 8, spec.head_dim / 2, 3, -4});
  spec.rotary_offset = in.PickValueInArray<std::int64_t>({0, 0, 2, spec.head_dim / 4, -1});
  spec.pairing = static_cast<posenc::Pairing>(in.ConsumeIntegralInRange<int>(0, 4));
  spec.numerics = static_cast<posenc::Numerics>(in.ConsumeIntegralInRange<int>(0, 3));
  const std::int64_t half = spec.frequency_dim() / 2;
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 1:
      spec.scaling = posenc::Scaling::dynamic;
      spec.params.factor = 2.0;
      spec.params.max_position_embeddings = in.PickValueInArray<std::int64_t>({4, 16, 1 << 20});
      break;
    case 2:
      spec.scaling = posenc::Scaling::longrope;
      spec.params.factor = 8.0;
      spec.params.original_max_position_embeddings = in.PickValueInArray<std::int64_t>({4, 16, 1 << 20});
      if (half > 0 && half <= 512) {
        spec.params.short_factor.assign(static_cast<std::size_t>(half), 1.5);
        spec.params.long_factor.assign(static_cast<std::size_t>(half), 3.0);
      }
      break;
    case 3:
      spec.mrope_section = {std::max<std::int64_t>(half - 2, 1), 1, 1};
      break;
    default:
      break;
  }
  spec.position_limit = in.PickValueInArray<std::int64_t>(
      {std::int64_t{1} << 31, 64, 1, 0, std::numeric_limits<std::int64_t>::max()});
  return spec;
}

/// The shape a call's views share when the input does not say otherwise.
struct Shape {
  std::int64_t tokens = 0;
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;
};

/// A view into the arena with fuzzed dtype, offset, counts and strides; absent when `optional`
/// and the input says so. Each count is `hint`'s unless the input picks another (an exhausted
/// input keeps the hint, so short inputs make consistent calls that get past validation).
posenc::TensorView make_view(FuzzedDataProvider& in, std::byte* arena, bool optional, Shape hint) {
  posenc::TensorView v;
  if (optional && in.ConsumeBool()) return v;
  v.data = arena + in.ConsumeIntegralInRange<std::size_t>(0, arena_bytes - 1);
  v.dtype = static_cast<posenc::DType>(in.ConsumeIntegralInRange<int>(0, 3));
  v.tokens = !in.ConsumeBool() ? hint.tokens : dimension(in, 6);
  v.heads = !in.ConsumeBool() ? hint.heads : dimension(in, 4);
  v.head_dim = !in.ConsumeBool() ? hint.head_dim : dimension(in, 64);
  v.head_stride = !in.ConsumeBool() ? v.head_dim : dimension(in, 128);
  std::int64_t dense = 0;  // heads * head_stride; INT64_MAX on overflow (one more hostile stride)
  if (__builtin_mul_overflow(v.heads, v.head_stride, &dense)) dense = std::numeric_limits<std::int64_t>::max();
  v.token_stride = !in.ConsumeBool() ? dense : dimension(in, 512);
  return v;
}

/// Byte offsets of every element of `v` in the arena, or nothing when one lies outside it (the
/// harness only runs calls whose views it can bound itself; validation does not know the arena).
std::optional<std::vector<std::size_t>> element_bytes(const posenc::ConstTensorView& v, const std::byte* arena) {
  std::vector<std::size_t> out;
  if (!v.present()) return out;
  const auto item = static_cast<std::size_t>(posenc::size_of(v.dtype));
  if (v.tokens < 0 || v.heads < 0 || v.head_dim < 0 || v.token_stride < 0 || v.head_stride < 0) return std::nullopt;
  // Bounded counts and strides keep the offsets below far from overflowing.
  constexpr auto arena_limit = static_cast<std::int64_t>(arena_bytes);
  if (v.tokens > max_elements || v.heads > max_elements || v.head_dim > max_elements ||
      v.tokens * v.heads * v.head_dim > max_elements || v.token_stride > arena_limit || v.head_stride > arena_limit) {
    return std::nullopt;
  }
  const std::size_t base = static_cast<std::size_t>(static_cast<const std::byte*>(v.data) - arena);
  for (std::int64_t t = 0; t < v.tokens; ++t) {
    for (std::int64_t h = 0; h < v.heads; ++h) {
      for (std::int64_t d = 0; d < v.head_dim; ++d) {
        const std::int64_t e = t * v.token_stride + h * v.head_stride + d;
        const std::size_t at = base + static_cast<std::size_t>(e) * item;
        if (at + item > arena_bytes) return std::nullopt;
        for (std::size_t b = 0; b < item; ++b) out.push_back(at + b);
      }
    }
  }
  return out;
}

/// Bytes every dtype reads as a finite number (any 16- or 32-bit word of bytes 0x30..0x3f is a
/// finite float16, bfloat16 and float32), so NaN payloads never make two correct paths differ.
void fill_finite(std::vector<std::byte>& bytes, std::uint32_t seed) {
  std::uint32_t x = seed * 2654435761u + 1;
  for (std::byte& b : bytes) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<std::byte>(0x30u | (x >> 28));
  }
}

/// Positions from the input: values in [0, limit) mostly, sometimes anything.
struct Positions {
  std::vector<std::int64_t> i64;
  std::vector<std::int32_t> i32;
  posenc::PositionsView view;
  bool readable = false;  ///< the view's extent lies inside the buffer
};

Positions make_positions(FuzzedDataProvider& in, const posenc::RopeSpec& spec, std::int64_t tokens) {
  Positions p;
  const bool wide = in.ConsumeBool();
  // Enough values for every stream unless the input asks for a short buffer.
  const std::size_t enough = static_cast<std::size_t>(std::max<std::int64_t>(tokens, 0) * spec.position_streams());
  const std::size_t n = !in.ConsumeBool() ? std::min<std::size_t>(enough, 32) : in.ConsumeIntegralInRange<std::size_t>(0, 32);
  const std::int64_t limit = std::max<std::int64_t>(spec.position_limit, 1);
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t value = in.ConsumeIntegralInRange<int>(0, 15) == 15
                                   ? in.ConsumeIntegral<std::int64_t>()
                                   : in.ConsumeIntegralInRange<std::int64_t>(0, std::min<std::int64_t>(limit - 1, 1 << 30));
    p.i64.push_back(value);
    p.i32.push_back(static_cast<std::int32_t>(value));
  }
  p.view.type = wide ? posenc::IndexType::i64 : posenc::IndexType::i32;
  p.view.data = n == 0 ? nullptr : (wide ? static_cast<const void*>(p.i64.data()) : p.i32.data());
  p.view.count = !in.ConsumeBool() ? tokens : dimension(in, 8);
  p.view.streams = !in.ConsumeBool() ? spec.position_streams() : static_cast<std::int32_t>(dimension(in, 4));
  p.view.stream_stride = !in.ConsumeBool() ? p.view.count : dimension(in, 16);
  if (p.view.count >= 0 && p.view.count <= 32 && p.view.streams >= 1 && p.view.streams <= 4 &&
      p.view.stream_stride >= 0 && p.view.stream_stride <= 32) {
    const std::int64_t extent = p.view.count == 0 ? 0 : (p.view.streams - 1) * p.view.stream_stride + p.view.count;
    p.readable = extent <= static_cast<std::int64_t>(n);
  }
  return p;
}

/// Arena bytes the call may write (`destinations`' elements); all others must keep their value.
void require_unchanged_outside(const std::vector<std::byte>& before, const std::vector<std::byte>& after,
                               const std::vector<std::vector<std::size_t>>& destinations, const char* what) {
  std::vector<bool> writable(before.size(), false);
  for (const auto& d : destinations) {
    for (const std::size_t b : d) writable[b] = true;
  }
  for (std::size_t i = 0; i < before.size(); ++i) {
    require(writable[i] || before[i] == after[i], std::string(what) + " wrote byte " + std::to_string(i) +
                                                      " outside its destinations");
  }
}

int fuzz_apply(FuzzedDataProvider& in, const posenc::RopeSpec& spec) {
  std::vector<std::byte> arena(arena_bytes);
  fill_finite(arena, 1);
  const std::int64_t tokens = in.ConsumeIntegralInRange<std::int64_t>(1, 6);
  const Shape q_shape{tokens, in.ConsumeIntegralInRange<std::int64_t>(1, 4), spec.head_dim};
  const Shape k_shape{tokens, in.ConsumeIntegralInRange<std::int64_t>(1, 4), spec.head_dim};
  posenc::RopeArgs args;
  args.q = make_view(in, arena.data(), false, q_shape);
  args.k = make_view(in, arena.data(), true, k_shape);
  if (in.ConsumeBool()) args.q_src = make_view(in, arena.data(), false, q_shape);
  if (in.ConsumeBool()) args.k_src = make_view(in, arena.data(), false, k_shape);
  Positions positions = make_positions(in, spec, tokens);
  args.positions = positions.view;

  try {
    posenc::validate_args(spec, args, positions.readable);
  } catch (const posenc::Error&) {
    return 0;
  }
  if (!positions.readable) return 0;
  const auto q = element_bytes(args.q, arena.data());
  const auto k = element_bytes(args.k, arena.data());
  const auto q_src = element_bytes(args.q_src, arena.data());
  const auto k_src = element_bytes(args.k_src, arena.data());
  if (!q || !k || !q_src || !k_src) return 0;

  // The same call on a second arena, by the engine.
  std::vector<std::byte> other = arena;
  const auto rebase = [&](auto view) {
    if (view.present()) view.data = other.data() + (static_cast<const std::byte*>(view.data) - arena.data());
    return view;
  };
  posenc::RopeArgs engine_args = args;
  engine_args.q = rebase(args.q);
  engine_args.k = rebase(args.k);
  engine_args.q_src = rebase(args.q_src);
  engine_args.k_src = rebase(args.k_src);

  const std::vector<std::byte> before = arena;
  try {
    posenc::apply_reference(spec, args);
  } catch (const posenc::Error& e) {
    require(false, std::string("validate_args accepted a call apply_reference refuses: ") + e.what());
  }
  try {
    const posenc::CpuEngine engine(spec, posenc::CpuOptions{1});
    engine.apply(engine_args);
  } catch (const posenc::Error& e) {
    require(false, std::string("validate_args accepted a call the CPU engine refuses: ") + e.what());
  }
  require(arena == other, "the CPU engine and apply_reference differ on a validated call");
  require_unchanged_outside(before, arena, {*q, *k}, "apply");
  return 0;
}

int fuzz_append(FuzzedDataProvider& in, const posenc::RopeSpec& spec) {
  std::vector<std::byte> arena(arena_bytes);
  fill_finite(arena, 2);
  const std::int64_t tokens = in.ConsumeIntegralInRange<std::int64_t>(1, 6);
  const Shape q_shape{tokens, in.ConsumeIntegralInRange<std::int64_t>(1, 4), spec.head_dim};
  const Shape kv_shape{tokens, in.ConsumeIntegralInRange<std::int64_t>(1, 4), spec.head_dim};
  posenc::AppendArgs args;
  args.q = make_view(in, arena.data(), false, q_shape);
  if (in.ConsumeBool()) args.q_src = make_view(in, arena.data(), false, q_shape);
  args.k = make_view(in, arena.data(), true, kv_shape);
  posenc::TensorView v_view = make_view(in, arena.data(), true, kv_shape);
  if (!in.ConsumeBool()) v_view.dtype = args.k.dtype;  // V shares K's dtype unless the input says otherwise
  args.v = v_view;
  Positions positions = make_positions(in, spec, tokens);
  args.positions = positions.view;

  // The cache: its own exact-size buffers when its described size is small, else a token buffer
  // (validation must still refuse or bound it).
  posenc::KvCacheView& c = args.cache;
  c.dtype = static_cast<posenc::CacheDType>(in.ConsumeIntegralInRange<int>(0, 4));
  c.layout = static_cast<posenc::CacheLayout>(in.ConsumeIntegralInRange<int>(0, 3));
  c.kv_heads = !in.ConsumeBool() ? kv_shape.heads : dimension(in, 4);
  c.head_dim = !in.ConsumeBool() ? spec.head_dim : dimension(in, 64);
  c.blocks = !in.ConsumeBool() ? in.ConsumeIntegralInRange<std::int64_t>(1, 4) : dimension(in, 4);
  c.block_len = !in.ConsumeBool() ? in.ConsumeIntegralInRange<std::int64_t>(1, 8) : dimension(in, 8);
  if (c.dtype == posenc::CacheDType::fp8_e4m3 && in.ConsumeBool()) {
    c.k_scale = in.PickValueInArray<float>({0.5f, 3.0f, 0.0f, -1.0f, 1e-30f});
    c.v_scale = in.PickValueInArray<float>({0.25f, 7.0f, 0.0f});
  }
  std::int64_t cache_bytes = 64;
  bool cache_sized = false;
  if (c.kv_heads >= 0 && c.head_dim >= 0 && c.blocks >= 0 && c.block_len >= 0 && c.kv_heads <= 64 &&
      c.head_dim <= 1024 && c.blocks <= 64 && c.block_len <= 64 &&
      static_cast<int>(c.dtype) <= static_cast<int>(posenc::CacheDType::fp8_e4m3)) {
    cache_bytes = std::max<std::int64_t>(c.blocks * c.block_len * c.kv_heads * c.head_dim * posenc::size_of(c.dtype), 1);
    cache_sized = cache_bytes <= (std::int64_t{1} << 20);
    if (!cache_sized) cache_bytes = 64;
  }
  std::vector<std::byte> cache_k(static_cast<std::size_t>(cache_bytes));
  std::vector<std::byte> cache_v(static_cast<std::size_t>(cache_bytes));
  fill_finite(cache_k, 3);
  fill_finite(cache_v, 4);
  c.k = cache_k.data();
  c.v = cache_v.data();

  // Slots: host memory, read by validation for positions.count entries.
  // Slots: distinct ones in order (-1 past the cache) unless the input picks any value.
  std::vector<std::int64_t> slots;
  const std::int64_t slot_limit = c.blocks > 0 && c.block_len > 0 && c.blocks <= 64 && c.block_len <= 64
                                      ? c.blocks * c.block_len
                                      : 1;
  const std::size_t slot_count = !in.ConsumeBool() ? static_cast<std::size_t>(tokens)
                                                   : in.ConsumeIntegralInRange<std::size_t>(0, 32);
  const std::int64_t first_slot = in.ConsumeIntegralInRange<std::int64_t>(0, slot_limit - 1);
  for (std::size_t i = 0; i < slot_count; ++i) {
    const std::int64_t ordered = first_slot + static_cast<std::int64_t>(i) < slot_limit ? first_slot + static_cast<std::int64_t>(i) : -1;
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 6:
        slots.push_back(in.ConsumeIntegralInRange<std::int64_t>(-1, slot_limit - 1));
        break;
      case 7:
        slots.push_back(in.ConsumeIntegral<std::int64_t>());
        break;
      default:
        slots.push_back(ordered);
    }
  }
  args.slots = slots.empty() ? nullptr : slots.data();
  const bool slots_readable = positions.view.count >= 0 && positions.view.count <= static_cast<std::int64_t>(slots.size());
  if (!positions.readable || !slots_readable) return 0;  // validate_append_args reads both

  // q_out (Q written quantized, fp8 serving): its own buffer, exactly as large as its fuzzed shape
  // and strides say (so an accepted call cannot write past it), or laid over the cache, which
  // validation must refuse.
  std::vector<std::byte> q_out_buffer;
  bool q_out_over_cache = false;
  if (in.ConsumeBool()) {
    posenc::QuantizedOutput& o = args.q_out;
    o.dtype = in.ConsumeBool() ? c.dtype : static_cast<posenc::CacheDType>(in.ConsumeIntegralInRange<int>(0, 4));
    o.token_stride = !in.ConsumeBool() ? q_shape.heads * spec.head_dim : in.ConsumeIntegralInRange<std::int64_t>(-2, 512);
    o.head_stride = !in.ConsumeBool() ? spec.head_dim : in.ConsumeIntegralInRange<std::int64_t>(-2, 256);
    o.scale = in.PickValueInArray<float>({1.0f, 0.125f, 3.0f, 0.0f, -2.0f, 1e-30f});
    const std::int64_t elem = static_cast<int>(o.dtype) <= 3 ? posenc::size_of(o.dtype) : 1;
    const std::int64_t extent =
        o.token_stride >= 0 && o.head_stride >= 0 && q_shape.head_dim <= 1024
            ? ((q_shape.tokens - 1) * o.token_stride + (q_shape.heads - 1) * o.head_stride + q_shape.head_dim) * elem
            : 64;
    q_out_buffer.assign(static_cast<std::size_t>(std::max<std::int64_t>(extent, 1)), std::byte{0x5a});
    q_out_over_cache = in.ConsumeIntegralInRange<int>(0, 7) == 0;
    o.data = q_out_over_cache ? cache_k.data() : static_cast<void*>(q_out_buffer.data());
  }

  // Per-head fp8 scales: arrays as long as their fuzzed head counts (so that a call validation
  // accepts reads no further), good and bad values; the per-tensor scales stay as fuzzed.
  std::vector<float> k_head_scales, v_head_scales, q_head_scales;
  const auto draw_scales = [&](std::vector<float>& scales, std::int64_t heads) -> const float* {
    if (heads <= 0 || heads > 64) return nullptr;
    scales.resize(static_cast<std::size_t>(heads));
    for (float& x : scales) {
      x = in.PickValueInArray<float>({1.0f, 0.5f, 4.0f, 1e-30f, 0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(),
                                      std::numeric_limits<float>::infinity()});
    }
    return scales.data();
  };
  const std::int64_t kv_heads = args.cache.kv_heads;
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) args.cache.k_head_scales = draw_scales(k_head_scales, kv_heads);
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) args.cache.v_head_scales = draw_scales(v_head_scales, kv_heads);
  if (args.q_out.present() && in.ConsumeBool()) args.q_out.head_scales = draw_scales(q_head_scales, args.q.heads);

  try {
    posenc::validate_append_args(spec, args);
  } catch (const posenc::Error&) {
    return 0;
  }
  require(!q_out_over_cache, "validate_append_args accepted a q_out laid over the KV cache");
  require(cache_sized, "validate_append_args accepted a cache larger than its buffer could be");
  const auto q = element_bytes(args.q, arena.data());
  const auto q_src = element_bytes(args.q_src, arena.data());
  const auto k = element_bytes(args.k, arena.data());
  const auto v = element_bytes(args.v, arena.data());
  if (!q || !q_src || !k || !v) return 0;

  std::vector<std::byte> other = arena;
  std::vector<std::byte> other_k = cache_k;
  std::vector<std::byte> other_v = cache_v;
  const auto rebase = [&](auto view) {
    if (view.present()) view.data = other.data() + (static_cast<const std::byte*>(view.data) - arena.data());
    return view;
  };
  std::vector<std::byte> other_q_out = q_out_buffer;
  posenc::AppendArgs engine_args = args;
  engine_args.q = rebase(args.q);
  engine_args.q_src = rebase(args.q_src);
  engine_args.k = rebase(args.k);
  engine_args.v = rebase(args.v);
  engine_args.cache.k = other_k.data();
  engine_args.cache.v = other_v.data();
  if (args.q_out.present()) engine_args.q_out.data = other_q_out.data();

  const std::vector<std::byte> before = arena;
  try {
    posenc::append_reference(spec, args);
  } catch (const posenc::Error& e) {
    require(false, std::string("validate_append_args accepted a call append_reference refuses: ") + e.what());
  }
  try {
    const posenc::CpuEngine engine(spec, posenc::CpuOptions{1});
    engine.append(engine_args);
  } catch (const posenc::Error& e) {
    require(false, std::string("validate_append_args accepted a call the CPU engine refuses: ") + e.what());
  }
  require(arena == other, "CpuEngine::append and append_reference differ on Q");
  require(cache_k == other_k && cache_v == other_v, "CpuEngine::append and append_reference differ on the cache");
  require(q_out_buffer == other_q_out, "CpuEngine::append and append_reference differ on q_out");
  if (args.q_out.present()) {
    require(arena == before, "an append with q_out wrote its inputs (q is only read)");
  } else {
    require_unchanged_outside(before, arena, {*q}, "append");
  }
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const bool append = in.ConsumeBool();
  const posenc::RopeSpec spec = make_spec(in);
  try {
    spec.validate();
  } catch (const posenc::Error&) {
    // An invalid spec: validation of any call must refuse it, naming the spec (never crash).
    posenc::RopeArgs args;
    try {
      posenc::validate_args(spec, args, false);
      require(false, "validate_args accepted a call with an invalid spec");
    } catch (const posenc::Error&) {
    }
    return 0;
  }
  return append ? fuzz_append(in, spec) : fuzz_apply(in, spec);
}

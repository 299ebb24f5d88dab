// KV-cache append: one-pass validation of an append call, the cast-and-scatter pass into the cache layouts, and slots_from_block_table.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/checked.hpp"
#include "core/kv_detail.hpp"
#include "core/dispatch.hpp"
#include "core/element.hpp"
#include "core/memory.hpp"
#include "core/validate.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"

namespace posenc {

const char* to_string(CacheLayout layout) noexcept {
  switch (layout) {
    case CacheLayout::contiguous:
      return "contiguous";
    case CacheLayout::paged_nhd:
      return "paged_nhd";
    case CacheLayout::paged_hnd:
      return "paged_hnd";
    case CacheLayout::mla:
      return "mla";
  }
  return "unknown";
}

const char* to_string(CacheDType dtype) noexcept {
  switch (dtype) {
    case CacheDType::f32:
      return "float32";
    case CacheDType::f16:
      return "float16";
    case CacheDType::bf16:
      return "bfloat16";
    case CacheDType::fp8_e4m3:
      return "float8_e4m3fn";
  }
  return "unknown";
}

std::uint8_t float_to_e4m3_bits(float f) noexcept { return detail::to_e4m3_bits(f); }
float e4m3_bits_to_float(std::uint8_t bits) noexcept { return detail::from_e4m3_bits(bits); }

namespace detail {
namespace {

[[noreturn]] void fail(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

std::string str(std::int64_t v) { return std::to_string(v); }

bool known(CacheDType t) noexcept { return size_of(t) != 0; }
bool known(CacheLayout l) noexcept {
  return l == CacheLayout::contiguous || l == CacheLayout::paged_nhd || l == CacheLayout::paged_hnd ||
         l == CacheLayout::mla;
}

/// A byte range [begin, begin + bytes), for the conservative cache-versus-input overlap checks.
struct Range {
  const char* name;
  std::uintptr_t begin;
  std::uint64_t bytes;
  bool meets(const Range& o) const noexcept {
    return bytes != 0 && o.bytes != 0 && begin < o.begin + o.bytes && o.begin < begin + bytes;
  }
};

/// The bytes of a per-head scale array (empty when absent).
Range scales_range(const char* name, const float* scales, std::int64_t heads) {
  return {name, reinterpret_cast<std::uintptr_t>(scales),
          scales != nullptr ? static_cast<std::uint64_t>(heads) * sizeof(float) : 0};
}

/// Bytes a validated view spans (check_view has proven it fits in 64 bits).
Range view_range(const char* name, const ConstTensorView& v) {
  const std::int64_t elems = (v.tokens - 1) * v.token_stride + (v.heads - 1) * v.head_stride + v.head_dim;
  return {name, reinterpret_cast<std::uintptr_t>(v.data), static_cast<std::uint64_t>(elems * size_of(v.dtype))};
}

void check_scale(const char* name, float scale, CacheDType dtype) {
  if (dtype == CacheDType::fp8_e4m3) {
    if (!fp8_scale_ok(scale)) {
      fail(ErrorKind::invalid_argument,
           std::string(name) + " " + std::to_string(scale) + " must be finite and > 0 for an fp8 cache");
    }
  } else if (scale != 1.0f) {
    fail(ErrorKind::invalid_argument, std::string(name) + " " + std::to_string(scale) +
                                          " must be 1: scales apply only to an fp8_e4m3 cache, this one is " +
                                          to_string(dtype));
  }
}

/// A per-head scale array (KvCacheView::k_head_scales, v_head_scales, QuantizedOutput::head_scales):
/// only for an fp8 cache (the cache's own arrays: not the mla layout), with the per-tensor scale
/// `scale_name` left at 1, aligned to its floats. Its values are checked where the engine's memory
/// is the host's (check_head_scale_values); the GPU kernel checks them on the device.
void check_head_scales(const char* name, const float* scales, const char* scale_name, float scale, CacheDType dtype,
                       bool mla_cache) {
  if (scales == nullptr) return;
  if (dtype != CacheDType::fp8_e4m3) {
    fail(ErrorKind::invalid_argument, std::string(name) + " is set: per-head scales apply only to an fp8_e4m3 cache, "
                                                          "this one is " + to_string(dtype));
  }
  if (mla_cache) {
    fail(ErrorKind::invalid_argument, std::string(name) + " is set with the mla layout, whose one head takes "
                                                          "cache.k_scale and cache.v_scale");
  }
  if (scale != 1.0f) {
    fail(ErrorKind::invalid_argument, std::string(scale_name) + " " + std::to_string(scale) + " must be 1 when " +
                                          name + " is set: the per-head scales replace it");
  }
  if (reinterpret_cast<std::uintptr_t>(scales) % alignof(float) != 0) {
    fail(ErrorKind::invalid_argument, std::string(name) + " is not aligned to its 4-byte floats");
  }
}

/// The values of a per-head scale array in host memory: each finite and > 0.
void check_head_scale_values(const char* name, const float* scales, std::int64_t heads) {
  if (scales == nullptr) return;
  for (std::int64_t h = 0; h < heads; ++h) {
    if (!fp8_scale_ok(scales[h])) {
      fail(ErrorKind::invalid_argument, std::string(name) + "[" + str(h) + "] = " + std::to_string(scales[h]) +
                                            " must be finite and > 0 (one of " + str(heads) + " per-head fp8 scales)");
    }
  }
}

/// Largest CacheLayout::mla latent_dim (elements per row; far above any model's kv_lora_rank, and
/// small enough for the GPU kernel's 32-bit row arithmetic).
constexpr std::int64_t max_latent_dim = std::int64_t{1} << 24;

/// The mla layout's own rules (kv_heads 1, one tensor, a latent of whole head_dim pieces), and
/// latent_dim 0 for every other layout. Runs after the layout and head_dim are known to be valid.
void check_latent(const KvCacheView& c) {
  if (c.layout != CacheLayout::mla) {
    if (c.latent_dim != 0) {
      fail(ErrorKind::invalid_argument, "cache.latent_dim " + str(c.latent_dim) +
                                            " must be 0: only the mla layout has a latent, this cache is " +
                                            to_string(c.layout));
    }
    return;
  }
  if (c.kv_heads != 1) {
    fail(ErrorKind::invalid_argument, "cache.kv_heads " + str(c.kv_heads) +
                                          " must be 1 for the mla layout (one shared k_pe and one latent per slot)");
  }
  if (c.v != nullptr) {
    fail(ErrorKind::invalid_argument,
         "cache.v must be null for the mla layout: cache.k holds each slot's latent and k_pe in one row");
  }
  if (c.latent_dim <= 0 || c.latent_dim > max_latent_dim || c.latent_dim % c.head_dim != 0) {
    fail(ErrorKind::invalid_argument, "cache.latent_dim " + str(c.latent_dim) + " must be a multiple of head_dim " +
                                          str(c.head_dim) + " in [" + str(c.head_dim) + ", " + str(max_latent_dim) +
                                          "] for the mla layout");
  }
}

/// Checks the cache and returns the bytes of one of its tensors (both K and V; mla: the one tensor).
std::int64_t check_cache(const KvCacheView& c, const RopeSpec& spec) {
  if (c.k == nullptr) fail(ErrorKind::invalid_argument, "cache.k is null");
  if (c.v == nullptr && c.layout != CacheLayout::mla) fail(ErrorKind::invalid_argument, "cache.v is null");
  if (!known(c.dtype)) {
    fail(ErrorKind::invalid_argument, "cache.dtype " + str(static_cast<int>(c.dtype)) + " is not a known CacheDType");
  }
  if (!known(c.layout)) {
    fail(ErrorKind::invalid_argument,
         "cache.layout " + str(static_cast<int>(c.layout)) + " is not a known CacheLayout");
  }
  if (c.kv_heads <= 0) fail(ErrorKind::invalid_argument, "cache.kv_heads " + str(c.kv_heads) + " must be > 0");
  if (c.head_dim != spec.head_dim) {
    fail(ErrorKind::invalid_argument,
         "cache.head_dim " + str(c.head_dim) + " differs from spec.head_dim " + str(spec.head_dim));
  }
  check_latent(c);
  if (c.blocks <= 0) fail(ErrorKind::invalid_argument, "cache.blocks " + str(c.blocks) + " must be > 0");
  if (c.block_len <= 0) fail(ErrorKind::invalid_argument, "cache.block_len " + str(c.block_len) + " must be > 0");
  const std::int64_t slots = checked_mul(c.blocks, c.block_len, "cache", " slots (blocks * block_len)");
  const std::int64_t rows = checked_mul(slots, c.kv_heads, "cache", " rows (slots * kv_heads)");
  // mla: kv_heads is 1 and each slot's row is latent_dim + head_dim elements.
  const std::int64_t row_elems = c.head_dim + c.latent_dim;
  const std::int64_t elems = checked_mul(rows, row_elems, "cache", " elements");
  const std::int64_t bytes = checked_mul(elems, size_of(c.dtype), "cache", " bytes");
  for (const auto& [name, p] : {std::pair<const char*, void*>{"cache.k", c.k}, {"cache.v", c.v}}) {
    if (p == nullptr) continue;  // mla's absent cache.v (check_latent)
    const auto address = reinterpret_cast<std::uintptr_t>(p);
    if (address % static_cast<std::uintptr_t>(size_of(c.dtype)) != 0) {
      fail(ErrorKind::invalid_argument, std::string(name) + " is not aligned to its " + str(size_of(c.dtype)) +
                                            "-byte " + to_string(c.dtype) + " elements");
    }
    if (address > UINTPTR_MAX - static_cast<std::uintptr_t>(bytes)) {
      fail(ErrorKind::overflow, std::string(name) + " spans " + str(bytes) + " bytes, past the end of the address space");
    }
  }
  check_scale("cache.k_scale", c.k_scale, c.dtype);
  check_scale("cache.v_scale", c.v_scale, c.dtype);
  const bool mla = c.layout == CacheLayout::mla;
  check_head_scales("cache.k_head_scales", c.k_head_scales, "cache.k_scale", c.k_scale, c.dtype, mla);
  check_head_scales("cache.v_head_scales", c.v_head_scales, "cache.v_scale", c.v_scale, c.dtype, mla);
  return bytes;
}

/// The slots pointer is usable (host or device memory).
void check_slots_pointer(const std::int64_t* slots) {
  if (slots == nullptr) fail(ErrorKind::invalid_argument, "slots is null (one slot per token is required; -1 skips)");
  if (reinterpret_cast<std::uintptr_t>(slots) % alignof(std::int64_t) != 0) {
    fail(ErrorKind::invalid_argument, "slots is not aligned to its 8-byte elements");
  }
}

/// Every slot is -1 or in [0, limit), and no non-negative slot appears twice (host memory).
void check_slots(const std::int64_t* slots, std::int64_t tokens, std::int64_t limit) {
  check_slots_pointer(slots);
  // (slot, token index); per thread and grow-only, so a steady stream of calls allocates nothing.
  thread_local std::vector<std::pair<std::int64_t, std::int64_t>> used;
  used.clear();
  allocating("the duplicate-slot check's table", tokens * std::int64_t{sizeof(used[0])},
             [&] { used.reserve(static_cast<std::size_t>(tokens)); });
  for (std::int64_t i = 0; i < tokens; ++i) {
    const std::int64_t s = slots[i];
    if (s == -1) continue;
    if (s < 0 || s >= limit) {
      fail(ErrorKind::out_of_range, "slot " + str(s) + " at token index " + str(i) + " is outside [0, " + str(limit) +
                                        ") (the cache's blocks * block_len; -1 skips a token)");
    }
    used.emplace_back(s, i);
  }
  // Two tokens writing one slot would race on the CPU and GPU alike, and the survivor would depend
  // on scheduling: reject it.
  std::sort(used.begin(), used.end());
  for (std::size_t j = 1; j < used.size(); ++j) {
    if (used[j].first == used[j - 1].first) {
      fail(ErrorKind::invalid_argument, "slot " + str(used[j].first) + " is given to token index " +
                                            str(used[j - 1].second) + " and token index " + str(used[j].second) +
                                            ": each slot may be written once per call");
    }
  }
}

}  // namespace

CallInfo validate_append(const RopeSpec& spec, const AppendArgs& a, bool device_data) {
  if (!a.k.present()) fail(ErrorKind::invalid_argument, "k is absent (k.data is null); an append needs K");
  // Q and K exactly as apply validates them: K as a destination (its scratch copy is, and K must
  // not overlap Q, which is written while K is read).
  RopeArgs rope;
  rope.q = a.q;
  rope.q_src = a.q_src;
  rope.k = TensorView{const_cast<void*>(a.k.data), a.k.dtype, a.k.tokens, a.k.heads,
                      a.k.head_dim, a.k.token_stride, a.k.head_stride};
  rope.positions = a.positions;
  rope.cos_sin = a.cos_sin;
  rope.norm = a.norm;
  const CallInfo info = validate_call(spec, rope, /*check_positions=*/!device_data);
  // The cache before V: with the mla layout it says what V's head_dim must be.
  const std::int64_t cache_bytes = check_cache(a.cache, spec);

  const bool mla = a.cache.layout == CacheLayout::mla;
  check_input("v", a.v, mla ? a.cache.latent_dim : spec.head_dim, mla ? "cache.latent_dim" : "spec.head_dim",
              a.positions);
  if (a.v.dtype != a.k.dtype) {
    fail(ErrorKind::invalid_argument,
         std::string("v dtype ") + to_string(a.v.dtype) + " differs from k dtype " + to_string(a.k.dtype));
  }
  check_disjoint("q", a.q, "v", a.v, "V is read after Q is written");
  for (const auto& [name, heads] : {std::pair<const char*, std::int64_t>{"k", a.k.heads}, {"v", a.v.heads}}) {
    if (heads != a.cache.kv_heads) {
      fail(ErrorKind::invalid_argument,
           std::string(name) + " heads " + str(heads) + " differ from cache.kv_heads " + str(a.cache.kv_heads));
    }
  }

  // q_out: Q's rows quantized as the cache is; written while Q, K and V are read.
  std::int64_t q_out_bytes = 0;
  if (a.q_out.present()) {
    const QuantizedOutput& o = a.q_out;
    if (a.q_src.present()) {
      fail(ErrorKind::invalid_argument,
           "q_src is present with q_out: with q_out, q is the input (read, not written) and the rotated Q goes to q_out");
    }
    if (o.dtype != a.cache.dtype) {
      fail(ErrorKind::invalid_argument, std::string("q_out.dtype ") + to_string(o.dtype) + " differs from cache.dtype " +
                                            to_string(a.cache.dtype) + ": Q is quantized as the cache is");
    }
    check_scale("q_out.scale", o.scale, o.dtype);
    check_head_scales("q_out.head_scales", o.head_scales, "q_out.scale", o.scale, o.dtype, /*mla_cache=*/false);
    q_out_bytes = check_output_rows("q_out", o.data, size_of(o.dtype), o.token_stride, o.head_stride, a.q,
                                    {{"q", a.q}, {"k", a.k}, {"v", a.v}},
                                    "q_out is written while Q, K and V are read");
  }

  // The cache is written while everything else is read: no byte may be shared (conservative, by
  // whole ranges; a cache never legitimately overlaps activations).
  const Range cache_k{"cache.k", reinterpret_cast<std::uintptr_t>(a.cache.k), static_cast<std::uint64_t>(cache_bytes)};
  const Range cache_v{"cache.v", reinterpret_cast<std::uintptr_t>(a.cache.v),
                      mla ? 0 : static_cast<std::uint64_t>(cache_bytes)};  // mla: one tensor
  const std::int64_t streams = std::max(a.positions.streams, 1);
  // validate_call checked that the norm weights are present exactly when the spec normalises.
  const std::int64_t norm_bytes =
      spec.qk_norm.enabled() ? spec.qk_norm_width() * size_of(a.k.dtype) : 0;
  // Read while the cache (and q_out) is written; q_out was checked against the views above.
  const Range side[] = {
      {"positions", reinterpret_cast<std::uintptr_t>(a.positions.data),
       static_cast<std::uint64_t>(((streams - 1) * a.positions.stream_stride + a.positions.count) *
                                  size_of(a.positions.type))},
      {"slots", reinterpret_cast<std::uintptr_t>(a.slots),
       static_cast<std::uint64_t>(a.positions.count) * sizeof(std::int64_t)},
      // validate_call checked the cos/sin cache, so its extent is known to fit.
      a.cos_sin.present() ? Range{"cos_sin", reinterpret_cast<std::uintptr_t>(a.cos_sin.data),
                                  static_cast<std::uint64_t>(check_cos_sin(spec, a.cos_sin))}
                          : Range{"cos_sin", 0, 0},
      {"norm.q", reinterpret_cast<std::uintptr_t>(a.norm.q), static_cast<std::uint64_t>(norm_bytes)},
      {"norm.k", reinterpret_cast<std::uintptr_t>(a.norm.k), static_cast<std::uint64_t>(norm_bytes)},
      scales_range("cache.k_head_scales", a.cache.k_head_scales, a.cache.kv_heads),
      scales_range("cache.v_head_scales", a.cache.v_head_scales, a.cache.kv_heads),
      scales_range("q_out.head_scales", a.q_out.present() ? a.q_out.head_scales : nullptr, a.q.heads),
  };
  const Range q_out{"q_out", reinterpret_cast<std::uintptr_t>(a.q_out.data), static_cast<std::uint64_t>(q_out_bytes)};
  const Range views[] = {
      view_range("q", a.q),
      a.q_src.present() ? view_range("q_src", a.q_src) : Range{"q_src", 0, 0},
      view_range("k", a.k),
      view_range("v", a.v),
      q_out,
  };
  if (cache_k.meets(cache_v)) {
    fail(ErrorKind::invalid_argument, "cache.k and cache.v (" + str(cache_bytes) + " bytes each) overlap");
  }
  const auto apart_from_cache = [&](const Range& o) {
    for (const Range& c : {cache_k, cache_v}) {
      if (c.meets(o)) {
        fail(ErrorKind::invalid_argument, std::string(c.name) + " (" + str(cache_bytes) + " bytes) overlaps " + o.name +
                                              " (" + str(static_cast<std::int64_t>(o.bytes)) +
                                              " bytes): the cache must not share memory with the call's other arguments");
      }
    }
  };
  for (const Range& o : views) apart_from_cache(o);
  for (const Range& o : side) apart_from_cache(o);
  for (const Range& o : side) {
    if (q_out.meets(o)) {
      fail(ErrorKind::invalid_argument, "q_out (" + str(q_out_bytes) + " bytes) overlaps " + o.name + " (" +
                                            str(static_cast<std::int64_t>(o.bytes)) +
                                            " bytes): q_out is written while the call's inputs are read");
    }
  }
  if (device_data) {
    check_slots_pointer(a.slots);  // the values are checked by the kernel (gpu.hpp GpuEngine::append)
  } else {
    check_slots(a.slots, a.positions.count, a.cache.slots());
    check_head_scale_values("cache.k_head_scales", a.cache.k_head_scales, a.cache.kv_heads);
    check_head_scale_values("cache.v_head_scales", a.cache.v_head_scales, a.cache.kv_heads);
    if (a.q_out.present()) check_head_scale_values("q_out.head_scales", a.q_out.head_scales, a.q.heads);
  }
  return info;
}

namespace {

/// Element offset of row (slot, head) in a cache tensor (the layouts drawn in kv_cache.hpp).
std::int64_t row_offset(const KvCacheView& c, std::int64_t slot, std::int64_t h) noexcept {
  if (c.layout == CacheLayout::paged_hnd) {
    const std::int64_t block = slot / c.block_len;
    const std::int64_t offset = slot % c.block_len;
    return ((block * c.kv_heads + h) * c.block_len + offset) * c.head_dim;
  }
  return (slot * c.kv_heads + h) * c.head_dim;
}

/// The fp8 scale of head h: its per-head scale where the array is given, else the per-tensor one.
float scale_of_head(const float* head_scales, float scale, std::int64_t h) noexcept {
  return head_scales != nullptr ? head_scales[h] : scale;
}

/// Writes one row of head_dim elements, cast to the cache dtype (scale: fp8 only). A cache of the
/// activation's own dtype receives its bits.
void write_row(DType from, const void* src, CacheDType to, void* dst, std::int64_t head_dim, float scale) {
  if (cache_dtype_of(from) == to) {
    std::memcpy(dst, src, static_cast<std::size_t>(head_dim * size_of(from)));
    return;
  }
  visit(from, [&](auto a) {
    visit(to, [&](auto c) {
      using Out = typename CacheElement<c.value>::Storage;
      for (std::int64_t d = 0; d < head_dim; ++d) {
        const Out y = CacheElement<c.value>::encode(load_at<a.value>(src, d), scale);
        std::memcpy(static_cast<char*>(dst) + d * static_cast<std::int64_t>(sizeof y), &y, sizeof y);
      }
    });
  });
}

}  // namespace

void scatter_tokens(const void* context, std::int64_t begin, std::int64_t end) noexcept {
  const auto& call = *static_cast<const ScatterCall*>(context);
  const KvCacheView& c = call.cache;
  const std::int64_t act = size_of(call.k.dtype);
  const std::int64_t elem = size_of(c.dtype);
  for (std::int64_t t = begin; t < end; ++t) {
    if (call.q_out.present()) {
      const QuantizedOutput& o = call.q_out;
      const ConstTensorView& q = call.q;
      const std::int64_t q_elem = size_of(q.dtype);
      for (std::int64_t h = 0; h < q.heads; ++h) {
        write_row(q.dtype, static_cast<const char*>(q.data) + (t * q.token_stride + h * q.head_stride) * q_elem, o.dtype,
                  static_cast<char*>(o.data) + (t * o.token_stride + h * o.head_stride) * size_of(o.dtype), q.head_dim,
                  scale_of_head(o.head_scales, o.scale, h));
      }
    }
    const std::int64_t slot = call.slots[t];
    if (slot < 0) continue;  // -1: padding, nothing written (validation allowed no other negative)
    if (c.layout == CacheLayout::mla) {
      // One row per slot in cache.k: [latent (V) | k_pe (rotated K)]; one head each.
      char* row = static_cast<char*>(c.k) + slot * (c.latent_dim + c.head_dim) * elem;
      const auto* k = static_cast<const char*>(call.k.data) + t * call.k.token_stride * act;
      const auto* v = static_cast<const char*>(call.v.data) + t * call.v.token_stride * act;
      write_row(call.v.dtype, v, c.dtype, row, c.latent_dim, c.v_scale);
      write_row(call.k.dtype, k, c.dtype, row + c.latent_dim * elem, c.head_dim, c.k_scale);
      continue;
    }
    for (std::int64_t h = 0; h < c.kv_heads; ++h) {
      const std::int64_t row = row_offset(c, slot, h) * elem;
      const auto* k = static_cast<const char*>(call.k.data) + (t * call.k.token_stride + h * call.k.head_stride) * act;
      const auto* v = static_cast<const char*>(call.v.data) + (t * call.v.token_stride + h * call.v.head_stride) * act;
      write_row(call.k.dtype, k, c.dtype, static_cast<char*>(c.k) + row, c.head_dim,
                scale_of_head(c.k_head_scales, c.k_scale, h));
      write_row(call.v.dtype, v, c.dtype, static_cast<char*>(c.v) + row, c.head_dim,
                scale_of_head(c.v_head_scales, c.v_scale, h));
    }
  }
}

}  // namespace detail

void validate_append_args(const RopeSpec& spec, const AppendArgs& args) try {
  spec.validate();
  detail::validate_append(spec, args);
} catch (const std::bad_alloc&) {
  detail::throw_out_of_host_memory("the working memory of validate_append_args");
}

std::vector<std::int64_t> slots_from_block_table(std::span<const std::int64_t> block_table,
                                                 std::int64_t blocks_per_seq,
                                                 std::span<const std::int64_t> token_seq,
                                                 std::span<const std::int64_t> token_pos, std::int64_t page_size,
                                                 std::int64_t num_blocks) {
  using detail::fail;
  using detail::str;
  if (blocks_per_seq <= 0) fail(ErrorKind::invalid_argument, "blocks_per_seq " + str(blocks_per_seq) + " must be > 0");
  if (page_size <= 0) fail(ErrorKind::invalid_argument, "page_size " + str(page_size) + " must be > 0");
  if (num_blocks <= 0) fail(ErrorKind::invalid_argument, "num_blocks " + str(num_blocks) + " must be > 0");
  const auto table_size = static_cast<std::int64_t>(block_table.size());
  if (table_size % blocks_per_seq != 0) {
    fail(ErrorKind::invalid_argument, "block_table size " + str(table_size) + " is not a multiple of blocks_per_seq " +
                                          str(blocks_per_seq));
  }
  if (token_seq.size() != token_pos.size()) {
    fail(ErrorKind::invalid_argument, "token_seq has " + str(static_cast<std::int64_t>(token_seq.size())) +
                                          " entries but token_pos has " +
                                          str(static_cast<std::int64_t>(token_pos.size())));
  }
  const std::int64_t batch = table_size / blocks_per_seq;
  const std::int64_t max_pos = detail::checked_mul(blocks_per_seq, page_size, "block table", " positions per sequence");
  std::vector<std::int64_t> slots(token_seq.size());
  for (std::size_t i = 0; i < token_seq.size(); ++i) {
    const std::int64_t b = token_seq[i];
    const auto index = static_cast<std::int64_t>(i);
    if (b == -1) {
      slots[i] = -1;
      continue;
    }
    if (b < 0 || b >= batch) {
      fail(ErrorKind::out_of_range, "token_seq " + str(b) + " at token index " + str(index) + " is outside [0, " +
                                        str(batch) + ") (rows of block_table; -1 marks padding)");
    }
    const std::int64_t p = token_pos[i];
    if (p < 0 || p >= max_pos) {
      fail(ErrorKind::out_of_range, "token_pos " + str(p) + " at token index " + str(index) + " is outside [0, " +
                                        str(max_pos) + ") (blocks_per_seq * page_size)");
    }
    const std::int64_t block = block_table[static_cast<std::size_t>(b * blocks_per_seq + p / page_size)];
    if (block < 0 || block >= num_blocks) {
      fail(ErrorKind::out_of_range, "block id " + str(block) + " at block_table[" + str(b) + "][" + str(p / page_size) +
                                        "] (token index " + str(index) + ") is outside [0, " + str(num_blocks) + ")");
    }
    // block < num_blocks, but num_blocks * page_size need not fit in 64 bits.
    slots[i] = detail::checked_add(detail::checked_mul(block, page_size, "slot", " block id * page_size"), p % page_size,
                                   "slot", " block id * page_size + offset");
  }
  return slots;
}

}  // namespace posenc
